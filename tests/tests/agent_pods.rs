//! Static pods on a real node: containerd, runc, reference CNI plugins, v1 cgroups.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use keelson_tests::agent::Node;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn cs<'a>(p: &'a Pod, name: &str) -> &'a ContainerStatus {
    p.status.as_ref().unwrap().container_statuses.as_ref().unwrap().iter().find(|c| c.name == name).unwrap()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

/// An init container prepares a page; one app serves it on localhost; a second app fetches it over
/// localhost (shared net namespace) and logs it. Also: env, hostname, resolv.conf, pod IP reachable
/// from the node, CRI log format.
#[test]
fn init_and_two_apps_share_the_pod_network() {
    let node = Node::start(&[]).unwrap();
    node.write_manifest(
        "web.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 2
  initContainers:
  - name: prepare
    image: keelson.local/busybox:latest
    command: [sh, -c, "echo prepared-by-init > /proc/1/root/tmp/x 2>/dev/null; echo init done"]
  containers:
  - name: server
    image: keelson.local/busybox:latest
    command: [httpd, -f, -p, "8080", -h, /var/www]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 1}
  - name: client
    image: keelson.local/busybox:latest
    env:
    - {name: TARGET, value: "127.0.0.1"}
    - {name: MY_POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    command: [sh, -c]
    args:
    - |
      echo "pod=$(MY_POD) ip=$MY_IP host=$(hostname)"
      cat /etc/resolv.conf
      until printf "GET /index.html HTTP/1.0\r\n\r\n" | nc $(TARGET) 8080 | grep hello; do sleep 0.2; done
      sleep 3600
"#,
    )
    .unwrap();
    let p = node.wait_pod("web", "Ready", T, ready);
    assert_eq!(phase(&p), "Running");
    let st = p.status.as_ref().unwrap();
    let ip = st.pod_ip.clone().unwrap();
    assert!(ip.starts_with(&node.subnet_prefix), "{ip}");
    assert_eq!(st.host_ip.as_deref(), Some("192.0.2.10"));
    let init = &st.init_container_statuses.as_ref().unwrap()[0];
    assert_eq!(init.state.as_ref().unwrap().terminated.as_ref().unwrap().reason.as_deref(), Some("Completed"));
    assert!(cs(&p, "server").ready && cs(&p, "client").ready);
    assert_eq!(cs(&p, "server").restart_count, 0);

    // The client's log (CRI format) shows env expansion, hostname, DNS config and the page fetched
    // over localhost.
    let log = node.log_file(&p, "client", 0);
    let text = keelson_tests::wait_for(T, || {
        std::fs::read_to_string(&log).ok().filter(|t| t.contains("hello from a keelson pod"))
    })
    .unwrap_or_else(|| panic!("client log {}: {:?}", log.display(), std::fs::read_to_string(&log)));
    for l in text.lines() {
        let mut f = l.splitn(4, ' ');
        let ts = f.next().unwrap();
        assert!(chrono_like(ts), "timestamp {ts:?} in {l:?}");
        assert!(matches!(f.next(), Some("stdout" | "stderr")), "{l}");
        assert!(matches!(f.next(), Some("F" | "P")), "{l}");
    }
    assert!(text.contains(&format!("stdout F pod=web-node1 ip={ip} host=web-node1")), "{text}");
    assert!(text.contains("nameserver 192.0.2.53"), "{text}");
    let init_log = std::fs::read_to_string(node.log_file(&p, "prepare", 0)).unwrap();
    assert!(init_log.contains("stdout F init done"), "{init_log}");

    // The node reaches the pod IP.
    let page = node
        .exec(&["sh", "-c", &format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | busybox nc {ip} 8080")])
        .unwrap();
    assert!(page.contains("hello from a keelson pod"));

    // Delete → nothing left.
    node.remove_manifest("web.yaml").unwrap();
    keelson_tests::wait_for(T, || node.pods().is_empty().then_some(())).expect("pod removed from status");
    assert_clean(&node);
}

fn chrono_like(ts: &str) -> bool {
    ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T') && (ts.ends_with('Z') || ts.contains('+'))
}

fn assert_clean(node: &Node) {
    let ok = keelson_tests::wait_for(Duration::from_secs(20), || {
        (node.containers().is_empty()
            && node.snapshots().is_empty()
            && node.netns_files().is_empty()
            && node.veths().is_empty()
            && node.ipam_files().is_empty()
            && node.pod_cgroups().is_empty())
        .then_some(())
    });
    assert!(
        ok.is_some(),
        "leftovers: containers {:?} snapshots {:?} netns {:?} veths {:?} ipam {:?} cgroups {:?}",
        node.containers(),
        node.snapshots(),
        node.netns_files(),
        node.veths(),
        node.ipam_files(),
        node.pod_cgroups()
    );
}
