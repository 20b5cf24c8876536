//! The agent as a kubelet: a real keelson-apiserver, a real node (containerd, runc, CNI in a node
//! netns) whose agent joins with `--kubeconfig`, and kubectl 1.33 and 1.27 as the user.
//!
//! The agent lives in the node netns; an [`ApiBridge`] makes the server's loopback port reachable
//! there, so the admin kubeconfig works unchanged.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use keelson_tests::agent::{ApiBridge, Node, tail};
use keelson_tests::api::{ApiServer, write_manifest};
use keelson_tests::wait_for;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn kubectl_json<K: k8s_openapi::serde::de::DeserializeOwned>(api: &ApiServer, args: &[&str]) -> Option<K> {
    let mut full = args.to_vec();
    full.extend_from_slice(&["-o", "json"]);
    let out = api.kubectl("1.33", &full).ok()?;
    serde_json::from_str(&out).ok()
}

fn pod(api: &ApiServer, name: &str) -> Option<Pod> {
    kubectl_json(api, &["get", "pod", name])
}

fn node_ready(api: &ApiServer) -> Option<(String, String)> {
    let n: KubeNode = kubectl_json(api, &["get", "node", "node1"])?;
    let c = n.status?.conditions?.into_iter().find(|c| c.type_ == "Ready")?;
    Some((c.status, c.reason.unwrap_or_default()))
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn container_id_and_restarts(p: &Pod) -> (String, i32) {
    let cs = &p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0];
    (cs.container_id.clone().unwrap_or_default(), cs.restart_count)
}

fn running_ready(p: &Pod) -> bool {
    phase(p) == "Running"
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn wait_pod(api: &ApiServer, node: &Node, name: &str, what: &str, pred: impl Fn(&Pod) -> bool) -> Pod {
    wait_for(T, || pod(api, name).filter(|p| pred(p))).unwrap_or_else(|| {
        panic!(
            "pod {name}: timed out waiting for {what}\npod: {}\nagent log:\n{}",
            serde_json::to_string_pretty(&pod(api, name)).unwrap_or_default(),
            tail(&node.agent_log(), 60)
        )
    })
}

/// A node joined to an API server.
fn joined_node(api: &ApiServer) -> (Node, ApiBridge) {
    let kc = api.kubeconfig();
    let mut node = Node::create(&["--kubeconfig", kc.to_str().unwrap()]).unwrap();
    let bridge = ApiBridge::start(&node.netns, api.port).unwrap();
    node.start_agent().unwrap();
    (node, bridge)
}

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 30
  containers:
  - name: app
    image: keelson.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c]
    args:
    - |
      trap 'if [ -f /tmp/prestop ]; then echo "TERM after preStop"; else echo "TERM before preStop"; fi; exit 0' TERM
      echo started
      while true; do sleep 0.1; done
    lifecycle:
      preStop: {exec: {command: [sh, -c, "echo prestop > /tmp/prestop"]}}
"#;

/// Join → node Ready with a Lease; a pod bound by `nodeName` runs with its IP and events; the
/// agent killed and restarted and the API server killed and restarted change nothing in the pod;
/// a graceful delete runs preStop then SIGTERM and the agent removes the pod from the API.
#[test]
fn node_joins_runs_bound_pods_and_deletes_them_gracefully() {
    let api = ApiServer::start(&[]).unwrap();
    let (mut node, _bridge) = joined_node(&api);

    // The Node: Ready, with an InternalIP, in both kubectl versions' wide output.
    wait_for(T, || node_ready(&api).filter(|(s, _)| s == "True")).unwrap_or_else(|| {
        panic!("node not Ready: {:?}\nagent log:\n{}", node_ready(&api), tail(&node.agent_log(), 60))
    });
    for v in ["1.33", "1.27"] {
        let wide = api.kubectl(v, &["get", "nodes", "-o", "wide"]).unwrap();
        let line = wide.lines().find(|l| l.starts_with("node1 ")).unwrap_or_else(|| panic!("{wide}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], "Ready", "kubectl {v}: {wide}");
        assert!(line.contains("192.0.2.10") && line.contains("v1.33.0-keelson"), "kubectl {v}: {wide}");
        assert!(line.contains("containerd://"), "kubectl {v}: {wide}");
    }
    let n: KubeNode = kubectl_json(&api, &["get", "node", "node1"]).unwrap();
    let st = n.status.unwrap();
    let cap = st.capacity.unwrap();
    assert_eq!(cap["pods"].0, "110");
    assert!(cap.contains_key("cpu") && cap.contains_key("memory") && cap.contains_key("ephemeral-storage"));
    let reasons: Vec<String> = st.conditions.unwrap().into_iter().filter_map(|c| c.reason).collect();
    assert!(reasons.contains(&"KubeletHasSufficientMemory".to_string()), "{reasons:?}");
    let lease: Lease =
        wait_for(T, || kubectl_json(&api, &["-n", "kube-node-lease", "get", "lease", "node1"])).expect("node lease");
    let owner = &lease.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", "node1"));
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("node1"));

    // A pod bound by nodeName: Running with its IP, events in describe.
    let file = write_manifest(&api.dir, "web.yaml", WEB).unwrap();
    api.kubectl("1.33", &["apply", "-f", file.to_str().unwrap()]).unwrap();
    let p = wait_pod(&api, &node, "web", "Running and Ready", running_ready);
    let st = p.status.clone().unwrap();
    let ip = st.pod_ip.clone().unwrap();
    assert!(ip.starts_with(&format!("{}.", node.subnet_prefix)), "{ip}");
    assert_eq!(st.host_ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(st.qos_class.as_deref(), Some("BestEffort"));
    assert!(st.start_time.is_some());
    let wide = api.kubectl("1.27", &["get", "pods", "-o", "wide"]).unwrap();
    let line = wide.lines().find(|l| l.starts_with("web ")).unwrap_or_else(|| panic!("{wide}"));
    assert!(line.contains("Running") && line.contains(&ip) && line.contains("node1"), "{wide}");
    for v in ["1.33", "1.27"] {
        let d = wait_for(T, || {
            api.kubectl(v, &["describe", "pod", "web"]).ok().filter(|d| d.contains("Started") && d.contains("Created"))
        })
        .unwrap_or_else(|| {
            panic!("kubectl {v} describe shows no events: {:?}", api.kubectl(v, &["describe", "pod", "web"]))
        });
        assert!(d.contains("kubelet"), "{d}");
    }
    let log = node.log_file(&p, "app", 0);
    wait_for(T, || std::fs::read_to_string(&log).ok().filter(|t| t.contains("started"))).expect("app log");

    // Agent SIGKILL + restart: same container, no restart, status intact.
    let before = container_id_and_restarts(&p);
    let containers = node.containers();
    node.kill_agent();
    node.start_agent().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let p = wait_pod(&api, &node, "web", "Running after agent restart", running_ready);
    assert_eq!(container_id_and_restarts(&p), before);
    assert_eq!(p.status.as_ref().unwrap().pod_ip.as_deref(), Some(ip.as_str()));
    assert_eq!(node.containers(), containers);

    // API server SIGKILL + restart on the same port and data: nothing restarts.
    let (dir, tmp, port) = api.kill9();
    std::thread::sleep(Duration::from_secs(2));
    let api = ApiServer::start_in(&dir, port, &[]).unwrap();
    let _tmp = tmp;
    std::thread::sleep(Duration::from_secs(4));
    let p = wait_pod(&api, &node, "web", "Running after API restart", running_ready);
    assert_eq!(container_id_and_restarts(&p), before);
    assert_eq!(node.containers(), containers);
    wait_for(T, || node_ready(&api).filter(|(s, _)| s == "True")).expect("node Ready after API restart");

    // Graceful delete: preStop, then SIGTERM; the agent deletes the pod (well before the 30 s the
    // API server would wait on its own).
    let t0 = Instant::now();
    api.kubectl("1.33", &["delete", "pod", "web", "--grace-period=30", "--wait=false"]).unwrap();
    let text = wait_for(T, || std::fs::read_to_string(&log).ok().filter(|t| t.contains("TERM ")))
        .unwrap_or_else(|| panic!("no TERM line\nagent log:\n{}", tail(&node.agent_log(), 60)));
    assert!(text.contains("TERM after preStop"), "{text}");
    wait_for(T, || api.kubectl("1.33", &["get", "pods", "-o", "name"]).ok().filter(|o| !o.contains("pod/web")))
        .unwrap_or_else(|| panic!("pod not deleted\nagent log:\n{}", tail(&node.agent_log(), 60)));
    assert!(t0.elapsed() < Duration::from_secs(20), "deleted by the server's grace sweep? {:?}", t0.elapsed());
    wait_for(T, || node.containers().is_empty().then_some(())).expect("containers removed");
}

/// A pod that does not fit in allocatable is Failed with `OutOfcpu` and never runs, while a pod
/// that fits runs; a static pod has a mirror pod; a clean agent stop (SIGTERM) reports the node
/// NotReady.
#[test]
fn unfit_pod_fails_static_pod_is_mirrored_and_sigterm_sets_node_not_ready() {
    let api = ApiServer::start(&[]).unwrap();
    let (mut node, _bridge) = joined_node(&api);
    wait_for(T, || node_ready(&api).filter(|(s, _)| s == "True")).expect("node Ready");
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: greedy}
spec:
  nodeName: node1
  containers:
  - name: app
    image: keelson.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    resources: {requests: {cpu: "1000"}}
---
apiVersion: v1
kind: Pod
metadata: {name: modest}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: keelson.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    resources: {requests: {cpu: "10m"}}
"#;
    let file = write_manifest(&api.dir, "pods.yaml", yaml).unwrap();
    api.kubectl("1.33", &["apply", "-f", file.to_str().unwrap()]).unwrap();
    let p = wait_pod(&api, &node, "greedy", "Failed", |p| phase(p) == "Failed");
    let st = p.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("OutOfcpu"));
    assert!(st.message.unwrap_or_default().contains("cpu"));
    wait_pod(&api, &node, "modest", "Running", running_ready);
    let out = api.kubectl("1.27", &["get", "pod", "greedy"]).unwrap();
    assert!(out.contains("OutOfcpu"), "{out}");
    let d = api.kubectl("1.33", &["describe", "pod", "greedy"]).unwrap();
    assert!(d.contains("OutOfcpu"), "{d}");
    // Only the modest pod's sandbox and container exist.
    assert_eq!(node.containers().len(), 2, "{:?}", node.containers());

    // A static pod appears in the API as a mirror pod with its status; a deleted mirror comes
    // back (new uid) without touching the static pod's containers; removing the manifest removes it.
    node.write_manifest(
        "static.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: static-web}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers: [{name: app, image: keelson.local/busybox:latest, command: [sleep, '3600']}]\n",
    )
    .unwrap();
    let m = wait_pod(&api, &node, "static-web-node1", "mirror Running", running_ready);
    let ann = m.metadata.annotations.clone().unwrap();
    assert!(ann.contains_key("kubernetes.io/config.mirror"), "{ann:?}");
    let owner = &m.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", "node1"));
    let containers = node.containers();
    assert_eq!(containers.len(), 4, "{containers:?}");
    api.kubectl("1.33", &["delete", "pod", "static-web-node1", "--grace-period=0", "--force"]).unwrap();
    let m2 = wait_pod(&api, &node, "static-web-node1", "mirror recreated", |p| {
        p.metadata.uid != m.metadata.uid && running_ready(p)
    });
    assert_eq!(container_id_and_restarts(&m2), container_id_and_restarts(&m));
    assert_eq!(node.containers(), containers);
    node.remove_manifest("static.yaml").unwrap();
    wait_for(T, || api.kubectl("1.33", &["get", "pods", "-o", "name"]).ok().filter(|o| !o.contains("static-web")))
        .unwrap_or_else(|| panic!("mirror not deleted\nagent log:\n{}", tail(&node.agent_log(), 60)));

    node.stop_agent();
    let (s, reason) = node_ready(&api).unwrap();
    assert_eq!((s.as_str(), reason.as_str()), ("False", "KubeletNotReady"));
}
