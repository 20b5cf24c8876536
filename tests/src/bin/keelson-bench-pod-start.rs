//! `cargo xtask bench pod-start`: static pod start latency through the agent, beside a floor
//! measured in the same run that does the same work without the agent, plus agent RSS idle and
//! with 30 pods.
//!
//! Agent path timed: manifest written → the agent's status says Ready (the agent polls the
//! manifest directory every 20 ms here, so up to ~20 ms of the figure is discovery).
//!
//! Floor timed: the same steps the agent takes for a pod, called directly through the agent's own
//! library code: netns creation, CNI ADD through the node's conflist (reference bridge +
//! host-local + portmap, plugins run in the node netns as the agent's are), pod cgroup creation,
//! create/start of pause, and create/start of the app in the pod cgroup with its output through
//! `keelson-logger`. The table shows each part. What the floor still skips: OCI spec building from
//! a Pod, status bookkeeping and the Ready probe round-trip.
//!
//! Both sides get the same warm-up: one untimed pod first (the first container of an image pays
//! one-time costs in containerd; the first CNI ADD creates the bridge).

use k8s_openapi::api::core::v1::Pod;
use keelson_agent::cgroups::{CgroupFs, Cgroups, PodCgroup, QosClass, ResourceConfig};
use keelson_agent::cni::{Attachment, CniConfig, CniRuntime};
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

/// Milliseconds spent in each part of one floor pod start.
#[derive(Debug, Clone, Copy, Default)]
struct FloorRun {
    netns: f64,
    cni: f64,
    cgroup: f64,
    pause: f64,
    app: f64,
}

impl FloorRun {
    fn total(&self) -> f64 {
        self.netns + self.cni + self.cgroup + self.pause + self.app
    }
}

/// The agent's steps for one pod, timed part by part, then undone.
struct Floor<'a> {
    node: &'a Node,
    rt: Runtime,
    cni: CniRuntime,
    cgroups: CgroupFs,
    logger: std::path::PathBuf,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

impl Floor<'_> {
    async fn new(node: &Node) -> anyhow::Result<Floor<'_>> {
        let rt =
            Runtime::connect(&node.containerd.socket(), &format!("{}-floor", node.namespace), &node.path("floor-exec"))
                .await?;
        for img in ["pause.tar", "busybox.tar"] {
            rt.import_archive(&keelson_tests::target_dir().join("images").join(img)).await?;
        }
        let cni = CniRuntime::new(CniConfig {
            conf_dir: node.path("cni/net.d"),
            bin_dirs: vec!["/usr/lib/cni".into()],
            cache_dir: node.path("floor-cni-cache"),
            plugin_netns: Some(node.netns.path()),
            exec_timeout: Duration::from_secs(60),
        });
        let cgroups = CgroupFs::detect(&format!("{}-floor", node.cgroup_root))?;
        cgroups.ensure_root()?; // the agent does this once at start-up, untimed
        let logger = keelson_tests::agent::bin("keelson-logger");
        anyhow::ensure!(logger.exists(), "{} missing", logger.display());
        Ok(Floor { node, rt, cni, cgroups, logger })
    }

    async fn pod(&self, i: usize) -> anyhow::Result<FloorRun> {
        let mut r = FloorRun::default();
        let uid = format!("00000000-0000-4000-8000-{i:012}");
        let (pause_id, app_id) = (format!("floor-pause-{i}"), format!("floor-app-{i}"));

        let t = Instant::now();
        let netns = keelson_agent::netns::create(&self.node.path("floor-run"), &format!("f{i}"))?;
        r.netns = ms(t);

        let t = Instant::now();
        let attachment = Attachment {
            container_id: pause_id.clone(),
            netns: Some(netns.clone()),
            ifname: "eth0".into(),
            pod_name: format!("floor-{i}"),
            pod_namespace: "default".into(),
            pod_uid: uid.clone(),
            ..Default::default()
        };
        self.cni.add(&attachment).await?;
        r.cni = ms(t);

        let t = Instant::now();
        let qos = QosClass::BestEffort;
        self.cgroups.ensure_pod(&PodCgroup { uid: uid.clone(), qos, resources: ResourceConfig::default() })?;
        r.cgroup = ms(t);

        let root = self.cgroups.root_name().to_string();
        let with_cgroup = |mut spec: serde_json::Value, id: &str| {
            spec["linux"]["cgroupsPath"] = json!(keelson_agent::cgroups::container_cgroup_path(&root, qos, &uid, id));
            spec
        };
        let t = Instant::now();
        let pause = ContainerSpec {
            id: pause_id.clone(),
            image: "keelson.local/pause:latest".into(),
            labels: Default::default(),
            oci_spec: with_cgroup(
                keelson_tests::agent::minimal_oci_spec(
                    &["/pause"],
                    vec![
                        json!({"type": "pid"}),
                        json!({"type": "ipc"}),
                        json!({"type": "uts"}),
                        json!({"type": "mount"}),
                        json!({"type": "network", "path": netns}),
                    ],
                ),
                &pause_id,
            ),
        };
        self.rt.create_container(&pause).await?;
        let pid = self.rt.start(&pause.id, &Stdio::Null).await?;
        r.pause = ms(t);

        let t = Instant::now();
        let app = ContainerSpec {
            id: app_id.clone(),
            image: "keelson.local/busybox:latest".into(),
            labels: Default::default(),
            oci_spec: with_cgroup(
                keelson_tests::agent::minimal_oci_spec(
                    &["sleep", "3600"],
                    vec![
                        json!({"type": "network", "path": netns}),
                        json!({"type": "ipc", "path": format!("/proc/{pid}/ns/ipc")}),
                        json!({"type": "uts", "path": format!("/proc/{pid}/ns/uts")}),
                        json!({"type": "pid"}),
                        json!({"type": "mount"}),
                    ],
                ),
                &app_id,
            ),
        };
        self.rt.create_container(&app).await?;
        let log = self.node.path(&format!("floor-logs/{i}/app/0.log"));
        std::fs::create_dir_all(log.parent().unwrap_or(&log))?;
        let stdio = Stdio::Binary {
            binary: self.logger.clone(),
            args: vec![("path".into(), log.to_string_lossy().into_owned())],
        };
        self.rt.start(&app.id, &stdio).await?;
        r.app = ms(t);

        // Undo, untimed (the agent path's teardown is not timed either).
        self.rt.remove(&app.id).await?;
        self.rt.remove(&pause.id).await?;
        self.cni.del(&attachment).await?;
        self.cgroups.remove_pod(&uid)?;
        keelson_agent::netns::remove(&netns)?;
        Ok(r)
    }

    /// Best-effort removal of whatever a failed run `i` left.
    async fn cleanup(&self, i: usize) {
        let uid = format!("00000000-0000-4000-8000-{i:012}");
        let _ = self.rt.remove(&format!("floor-app-{i}")).await;
        let _ = self.rt.remove(&format!("floor-pause-{i}")).await;
        let netns = keelson_agent::netns::netns_dir(&self.node.path("floor-run")).join(format!("f{i}"));
        let attachment = Attachment {
            container_id: format!("floor-pause-{i}"),
            netns: netns.exists().then(|| netns.clone()),
            ifname: "eth0".into(),
            ..Default::default()
        };
        let _ = self.cni.del(&attachment).await;
        let _ = self.cgroups.remove_pod(&uid);
        let _ = keelson_agent::netns::remove(&netns);
    }
}

/// Runs the floor: one warm-up pod, then `RUNS` timed ones. A run that fails is cleaned up and
/// retried under a new id (at most 3 times in all), and the retries are reported: containerd's
/// garbage collector can remove a snapshot between `snapshots.Prepare` and `containers.Create`
/// (the runtime prepares it without a lease), which the agent path would retry the same way.
async fn floor(node: &Node) -> anyhow::Result<(Vec<FloorRun>, Vec<String>)> {
    let f = Floor::new(node).await?;
    let mut failures = Vec::new();
    let mut out = Vec::new();
    let mut next_id = 0;
    for run in 0..=RUNS {
        let r = loop {
            let id = next_id;
            next_id += 1;
            match f.pod(id).await {
                Ok(r) => break r,
                Err(e) => {
                    f.cleanup(id).await;
                    failures.push(format!("run {run} (id {id}): {e}"));
                    anyhow::ensure!(failures.len() < 3, "floor failed 3 times: {failures:#?}");
                }
            }
        };
        if run > 0 {
            out.push(r); // run 0 is the warm-up, as the agent side gets
        }
    }
    Ok((out, failures))
}

fn main() -> anyhow::Result<()> {
    let mut node = Node::start(&["--manifest-poll", "20ms"])?;
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

    let floor_runs = tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(floor(&node));
    // The floor's netns and cgroups are not the agent's: remove them here whatever happened.
    for ns in keelson_agent::netns::list(&node.path("floor-run")).unwrap_or_default() {
        let _ = keelson_agent::netns::remove(&ns);
    }
    keelson_tests::agent::remove_cgroup_tree(&format!("{}-floor", node.cgroup_root));
    let (floor_runs, floor_failures) = floor_runs?;

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

    let mut a = agent_ms.clone();
    let (a50, a99) = (pct(&mut a, 0.5), pct(&mut a, 0.99));
    let part = |f: fn(&FloorRun) -> f64| {
        let mut v: Vec<f64> = floor_runs.iter().map(f).collect();
        (pct(&mut v, 0.5), pct(&mut v, 0.99))
    };
    let (f50, f99) = part(FloorRun::total);
    println!("\npod-start ({RUNS} runs after 1 warm-up each; pause + 1 busybox)          p50 ms   p99 ms");
    println!("  keelson-agent: manifest written → Ready (20 ms manifest poll)    {a50:7.1}  {a99:7.1}");
    println!("  floor: the agent's steps called directly, no agent               {f50:7.1}  {f99:7.1}");
    for (name, f) in [
        ("netns create", (|r: &FloorRun| r.netns) as fn(&FloorRun) -> f64),
        ("CNI ADD (same conflist: bridge + host-local + portmap)", |r| r.cni),
        ("pod cgroup", |r| r.cgroup),
        ("pause create + start", |r| r.pause),
        ("app create + start (keelson-logger, pod cgroup)", |r| r.app),
    ] {
        let (p50, p99) = part(f);
        println!("    {name:<61}{p50:7.1}  {p99:7.1}");
    }
    println!("  ratio agent / floor                                              {:7.2}  {:7.2}", a50 / f50, a99 / f99);
    for f in &floor_failures {
        println!("  (floor run retried: {f})");
    }
    println!("\nagent RSS: idle {:.1} MiB, with 30 pods {:.1} MiB", rss_idle as f64 / 1024.0, rss_30 as f64 / 1024.0);
    Ok(())
}
