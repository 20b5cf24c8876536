//! Probes against a real container: a busybox container on a private containerd, running
//! `httpd` in its own network namespace ("pod") that is joined by a veth to a second namespace
//! ("node") from which the probes run — as the agent probes a pod IP from the node. Exec probes go
//! through containerd's exec; httpGet/tcpSocket/grpc cross the veth to the pod IP.
//!
//! Needs root and the busybox image archive (`cargo xtask images`) and nothing on the host
//! network: both namespaces are private and removed on drop.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::core::v1::{Container, ContainerPort, ExecAction, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keelson_agent::probe::{ContainerProber, ContainerProbes, Outcome, ProbeAction, ProbeKind, ProbeStatus};
use keelson_agent::runtime::containerd::Containerd as Runtime;
use keelson_agent::runtime::{ContainerRuntime, ContainerSpec, Stdio};
use keelson_tests::{Containerd, Netns, require_root};
use serde_json::json;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

const POD_IP: &str = "10.213.0.2";
const IMAGE: &str = "keelson.local/busybox:latest";
const SECOND: Duration = Duration::from_secs(1);

/// The pod network: `node` and `pod` namespaces joined by a veth, 10.213.0.1 ↔ 10.213.0.2.
struct PodNet {
    node: Netns,
    pod: Netns,
}

fn pod_net() -> PodNet {
    let node = Netns::new("pbn").unwrap();
    let pod = Netns::new("pbp").unwrap();
    let (a, b) = (keelson_tests::unique_name("pva"), keelson_tests::unique_name("pvb"));
    keelson_tests::run(
        "ip",
        &["link", "add", &a, "netns", node.name(), "type", "veth", "peer", "name", &b, "netns", pod.name()],
    )
    .unwrap();
    node.exec_ok(&["ip", "addr", "add", "10.213.0.1/24", "dev", &a]).unwrap();
    node.exec_ok(&["ip", "link", "set", &a, "up"]).unwrap();
    pod.exec_ok(&["ip", "addr", "add", &format!("{POD_IP}/24"), "dev", &b]).unwrap();
    pod.exec_ok(&["ip", "link", "set", &b, "up"]).unwrap();
    PodNet { node, pod }
}

fn container_spec(id: &str, pod: &Netns) -> ContainerSpec {
    let script =
        "mkdir -p /tmp /www && echo hello > /www/index.html && touch /tmp/healthy && exec httpd -f -p 8080 -h /www";
    ContainerSpec {
        id: id.into(),
        image: IMAGE.into(),
        labels: Default::default(),
        oci_spec: json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", script], "env": ["PATH=/bin"], "cwd": "/",
                        "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}},
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"},
                                     {"type": "network", "path": pod.path().to_string_lossy()}]}
        }),
    }
}

/// Removes the container when dropped, also while unwinding from a failed assertion.
struct RemoveOnDrop<'a> {
    rt: &'a tokio::runtime::Runtime,
    runtime: Arc<Runtime>,
    id: String,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.rt.block_on(self.runtime.remove(&self.id)) {
            eprintln!("removing container {}: {e}", self.id);
        }
    }
}

/// Runs `body` on a current-thread tokio runtime on a thread inside the `node` namespace (so every
/// socket the probes open lives there) with a running container; the container is removed
/// afterwards, also when `body` panics.
fn with_container<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Arc<Runtime>, String) -> Fut + Send,
    Fut: std::future::Future<Output = ()>,
{
    require_root();
    let images = keelson_tests::target_dir().join("images").join("busybox.tar");
    assert!(images.exists(), "{} is missing: run `cargo xtask images` first", images.display());
    let ctrd = Containerd::start().unwrap();
    let net = pod_net();
    let ns = keelson_tests::unique_name("pb");
    let spec = container_spec(&format!("{name}-{ns}"), &net.pod);
    let (socket, scratch, node_path) = (ctrd.socket(), ctrd.dir().join("exec"), net.node.path());

    let result = std::thread::scope(|s| {
        s.spawn(|| {
            let node = std::fs::File::open(&node_path).unwrap();
            // SAFETY: setns on this test-owned thread with a valid netns descriptor; it only
            // changes the network namespace of this thread.
            let rc = unsafe { libc::setns(node.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let runtime = rt.block_on(async {
                let runtime = Runtime::connect(&socket, &ns, &scratch).await.unwrap();
                runtime.import_archive(&images).await.unwrap();
                runtime.create_container(&spec).await.unwrap();
                Arc::new(runtime)
            });
            let _remove = RemoveOnDrop { rt: &rt, runtime: Arc::clone(&runtime), id: spec.id.clone() };
            rt.block_on(async {
                runtime.start(&spec.id, &Stdio::Null).await.unwrap();
                body(runtime, spec.id.clone()).await;
            });
        })
        .join()
    });
    drop(net);
    drop(ctrd);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn argv(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.into()]
}

async fn sh(runtime: &Runtime, id: &str, cmd: &str) {
    let r = runtime.exec(id, &argv(cmd), Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.exit_code, 0, "`{cmd}` failed: {}", String::from_utf8_lossy(&r.output));
}

fn pod_ip() -> IpAddr {
    POD_IP.parse().unwrap()
}

fn web_container(probes: impl FnOnce(&mut Container)) -> Container {
    let mut c = Container {
        name: "web".into(),
        ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: 8080, ..Default::default() }]),
        ..Default::default()
    };
    probes(&mut c);
    c
}

fn action(probe: Probe) -> ProbeAction {
    ProbeAction::from_probe(&probe, &web_container(|_| {}), pod_ip(), "spec.containers[web].livenessProbe").unwrap()
}

/// Waits until httpd answers TCP on the pod IP.
async fn wait_listening(runtime: &Runtime, id: &str) {
    let tcp = ProbeAction::TcpSocket { host: POD_IP.into(), port: 8080 };
    for _ in 0..100 {
        if tcp.run(runtime, id, SECOND).await == Outcome::Success {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("httpd in the container never listened on {POD_IP}:8080");
}

/// Waits up to 30 s for the prober status to satisfy `f`.
async fn wait(
    rx: &mut tokio::sync::watch::Receiver<ProbeStatus>,
    what: &str,
    f: impl FnMut(&ProbeStatus) -> bool,
) -> ProbeStatus {
    let r = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(f)).await;
    r.unwrap_or_else(|_| panic!("timed out waiting for {what}")).unwrap().clone()
}

#[test]
fn each_handler_against_a_real_container() {
    with_container("handlers", |runtime, id| async move {
        let rt: &Runtime = &runtime;
        wait_listening(rt, &id).await;

        // exec through containerd: exit status decides, a hung command times out.
        let exec = |cmd: &str| ProbeAction::Exec { command: argv(cmd) };
        assert_eq!(exec("test -f /tmp/healthy").run(rt, &id, SECOND).await, Outcome::Success);
        let failed = exec("echo not there; test -f /tmp/missing").run(rt, &id, SECOND).await;
        assert_eq!(
            failed,
            Outcome::Failure(
                "command [\"sh\", \"-c\", \"echo not there; test -f /tmp/missing\"] exited with 1: not there".into()
            )
        );
        let slow = exec("sleep 30").run(rt, &id, Duration::from_millis(500)).await;
        assert!(matches!(&slow, Outcome::Failure(m) if m.contains("timed out")), "{slow:?}");

        // httpGet to the pod IP (the default host) across the veth, port by name.
        let http = |path: &str| {
            action(Probe {
                http_get: Some(HTTPGetAction {
                    port: IntOrString::String("http".into()),
                    path: Some(path.into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        assert_eq!(http("/index.html").run(rt, &id, SECOND).await, Outcome::Success);
        let missing = http("/missing.html").run(rt, &id, SECOND).await;
        assert!(
            matches!(&missing, Outcome::Failure(m) if m.starts_with("HTTP probe failed with statuscode: 404")),
            "{missing:?}"
        );

        // tcpSocket: open and closed ports.
        let tcp = |port: u16| ProbeAction::TcpSocket { host: POD_IP.into(), port };
        assert_eq!(tcp(8080).run(rt, &id, SECOND).await, Outcome::Success);
        assert!(matches!(tcp(8081).run(rt, &id, SECOND).await, Outcome::Failure(_)));

        // grpc against a server that speaks HTTP/1 only: a failure, not a hang or a success.
        let grpc = ProbeAction::Grpc { host: POD_IP.into(), port: 8080, service: None };
        assert!(matches!(grpc.run(rt, &id, SECOND).await, Outcome::Failure(_)));
    });
}

#[test]
fn prober_gates_on_startup_flips_ready_and_reports_liveness_failure() {
    with_container("prober", |runtime, id| async move {
        wait_listening(&runtime, &id).await;
        let exec_probe = |cmd: &str, failure_threshold: i32| Probe {
            exec: Some(ExecAction { command: Some(argv(cmd)) }),
            period_seconds: Some(1),
            failure_threshold: Some(failure_threshold),
            ..Default::default()
        };
        let container = web_container(|c| {
            c.startup_probe = Some(exec_probe("test -f /tmp/started", 60));
            c.liveness_probe = Some(exec_probe("test -f /tmp/healthy", 2));
            c.readiness_probe = Some(Probe {
                http_get: Some(HTTPGetAction {
                    port: IntOrString::String("http".into()),
                    path: Some("/index.html".into()),
                    ..Default::default()
                }),
                period_seconds: Some(1),
                failure_threshold: Some(1),
                ..Default::default()
            });
        });
        let probes = ContainerProbes::from_container(&container, pod_ip(), "spec.containers[web]").unwrap();
        let dyn_runtime: Arc<dyn ContainerRuntime> = runtime.clone();
        let prober = ContainerProber::spawn(dyn_runtime, id.clone(), probes, tokio::time::Instant::now());
        let mut rx = prober.subscribe();

        // Not started: neither liveness (which would pass) nor readiness (which would pass) count.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(prober.status(), ProbeStatus { started: false, ready: false, failure: None });

        sh(&runtime, &id, "touch /tmp/started").await;
        let s = wait(&mut rx, "started and ready", |s| s.started && s.ready).await;
        assert_eq!(s.failure, None);

        sh(&runtime, &id, "mv /www/index.html /www/gone.html").await;
        wait(&mut rx, "not ready", |s| !s.ready).await;
        sh(&runtime, &id, "mv /www/gone.html /www/index.html").await;
        wait(&mut rx, "ready again", |s| s.ready).await;

        sh(&runtime, &id, "rm /tmp/healthy").await;
        let s = wait(&mut rx, "liveness failure", |s| s.failure.is_some()).await;
        let failure = s.failure.unwrap();
        assert_eq!(failure.kind, ProbeKind::Liveness);
        assert!(failure.message.contains("test -f /tmp/healthy"), "{}", failure.message);
        assert!(s.ready, "readiness is unaffected by the liveness failure");
    });
}
