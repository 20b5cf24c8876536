//! `cargo xtask bench pod-start`: static pod start latency through the agent, beside the raw
//! floor measured in the same run (pause + one app created and started directly through the
//! containerd API with the same runtime code, no agent), plus agent RSS idle and with 30 pods.
//!
//! Agent path timed: manifest written → the agent's status says Ready (the agent polls the manifest
//! directory every 100 ms here, so up to ~100 ms of the figure is discovery). Floor timed: netns
//! creation + create/start of pause + create/start of the app joined to its namespaces; it skips
//! CNI, cgroup setup and status, which the agent path includes.

use k8s_openapi::api::core::v1::Pod;
use keelson_agent::runtime::containerd::Containerd as Runtime;
use keelson_agent::runtime::{ContainerRuntime, ContainerSpec, Stdio};
use keelson_tests::agent::Node;
use serde_json::json;
use std::time::{Duration, Instant};

const RUNS: usize = 20;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers: [{{name: app, image: keelson.local/busybox:latest, command: [sleep, '3600']}}]\n"
    )
}

async fn floor(node: &Node) -> anyhow::Result<Vec<f64>> {
    let rt =
        Runtime::connect(&node.containerd.socket(), &format!("{}-floor", node.namespace), &node.path("floor-exec"))
            .await?;
    for img in ["pause.tar", "busybox.tar"] {
        rt.import_archive(&keelson_tests::target_dir().join("images").join(img)).await?;
    }
    let nsdir = node.path("floor-run");
    let mut out = Vec::new();
    for i in 0..RUNS {
        let t0 = Instant::now();
        let netns = keelson_agent::netns::create(&nsdir, &format!("f{i}"))?;
        let pause = ContainerSpec {
            id: format!("floor-pause-{i}"),
            image: "keelson.local/pause:latest".into(),
            labels: Default::default(),
            oci_spec: keelson_tests::agent::minimal_oci_spec(
                &["/pause"],
                vec![
                    json!({"type": "pid"}),
                    json!({"type": "ipc"}),
                    json!({"type": "uts"}),
                    json!({"type": "mount"}),
                    json!({"type": "network", "path": netns}),
                ],
            ),
        };
        rt.create_container(&pause).await?;
        let pid = rt.start(&pause.id, &Stdio::Null).await?;
        let app = ContainerSpec {
            id: format!("floor-app-{i}"),
            image: "keelson.local/busybox:latest".into(),
            labels: Default::default(),
            oci_spec: keelson_tests::agent::minimal_oci_spec(
                &["sleep", "3600"],
                vec![
                    json!({"type": "network", "path": netns}),
                    json!({"type": "ipc", "path": format!("/proc/{pid}/ns/ipc")}),
                    json!({"type": "uts", "path": format!("/proc/{pid}/ns/uts")}),
                    json!({"type": "pid"}),
                    json!({"type": "mount"}),
                ],
            ),
        };
        rt.create_container(&app).await?;
        rt.start(&app.id, &Stdio::Null).await?;
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
        rt.remove(&app.id).await?;
        rt.remove(&pause.id).await?;
        keelson_agent::netns::remove(&netns)?;
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let mut node = Node::start(&["--manifest-poll", "100ms"])?;
    let pid = node.agent_pid().ok_or_else(|| anyhow::anyhow!("no agent pid"))?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = rss_kib(pid);

    // Warm-up (first container of an image pays one-time costs in containerd).
    node.write_manifest("warm.yaml", &manifest("warm"))?;
    keelson_tests::wait_for(Duration::from_secs(60), || node.pod("warm").filter(ready))
        .ok_or_else(|| anyhow::anyhow!("warm-up pod not ready"))?;
    node.remove_manifest("warm.yaml")?;
    keelson_tests::wait_for(Duration::from_secs(60), || node.pods().is_empty().then_some(()));

    let mut agent_ms = Vec::new();
    for i in 0..RUNS {
        let name = format!("b{i}");
        let t0 = Instant::now();
        node.write_manifest(&format!("{name}.yaml"), &manifest(&name))?;
        loop {
            if node.pod(&name).is_some_and(|p| ready(&p)) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("pod {name} not ready after 60 s\n{}", keelson_tests::agent::tail(&node.agent_log(), 40));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        agent_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        node.remove_manifest(&format!("{name}.yaml"))?;
        keelson_tests::wait_for(Duration::from_secs(60), || node.pods().is_empty().then_some(()));
    }

    let floor_ms = tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(floor(&node));
    // The floor's netns are not the agent's: remove them here whatever happened.
    for ns in keelson_agent::netns::list(&node.path("floor-run")).unwrap_or_default() {
        let _ = keelson_agent::netns::remove(&ns);
    }
    let floor_ms = floor_ms?;

    for i in 0..30 {
        node.write_manifest(&format!("r{i}.yaml"), &manifest(&format!("r{i}")))?;
    }
    keelson_tests::wait_for(Duration::from_secs(180), || {
        (node.pods().iter().filter(|p| ready(p)).count() == 30).then_some(())
    })
    .ok_or_else(|| anyhow::anyhow!("30 pods not ready"))?;
    std::thread::sleep(Duration::from_secs(3));
    let rss_30 = rss_kib(pid);
    for i in 0..30 {
        node.remove_manifest(&format!("r{i}.yaml"))?;
    }
    keelson_tests::wait_for(Duration::from_secs(120), || node.pods().is_empty().then_some(()));
    node.kill_agent();

    let (mut a, mut f) = (agent_ms.clone(), floor_ms.clone());
    let (a50, a99, f50, f99) = (pct(&mut a, 0.5), pct(&mut a, 0.99), pct(&mut f, 0.5), pct(&mut f, 0.99));
    println!("\npod-start ({RUNS} runs; manifest written → Ready)            p50 ms   p99 ms");
    println!("  keelson-agent (static pod, pause + 1 busybox, CNI bridge)  {a50:7.1}  {a99:7.1}");
    println!("  floor: containerd API directly (netns + pause + app)       {f50:7.1}  {f99:7.1}");
    println!("  ratio agent / floor                                        {:7.2}  {:7.2}", a50 / f50, a99 / f99);
    println!("\nagent RSS: idle {:.1} MiB, with 30 pods {:.1} MiB", rss_idle as f64 / 1024.0, rss_30 as f64 / 1024.0);
    Ok(())
}
