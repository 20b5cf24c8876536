//! 200 pod ADD/DEL cycles through keelson-cni on one node leave nothing behind: no IPAM records,
//! no host veths, no extra IPv4 node routes (any table), no pod interfaces, no nft elements.

use keelson_tests::cni::{Node, pod_ip};
use keelson_tests::{Netns, require_root};

#[test]
fn two_hundred_add_del_cycles_leak_nothing() {
    require_root();
    let node = Node::new("10.252.0.0/26").expect("node");
    // Pods reuse a small set of namespaces (a fresh container id every cycle), like sandboxes
    // being recreated; the /26 (61 addresses) also forces the allocator to wrap around.
    let pods: Vec<Netns> = (0..10).map(|_| Netns::new("ch").expect("pod")).collect();
    let conf = node.conf("1.1.0", r#""ipMasq":true"#);
    // Bridge and nft table exist after the first ADD; take the route baseline then.
    let warm = node.cni("ADD", "warm", Some(&pods[0].path()), &conf).expect("ADD");
    assert_eq!(warm.code, 0, "{}", warm.stdout);
    assert_eq!(node.cni("DEL", "warm", Some(&pods[0].path()), &conf).expect("DEL").code, 0);
    let routes_before = node.ns.exec_ok(&["ip", "-4", "route", "show", "table", "all"]).expect("routes");

    let mut seen = std::collections::BTreeSet::new();
    for round in 0..20 {
        let mut ids = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let id = format!("churn-{round}-{i}");
            let r = node.cni("ADD", &id, Some(&pod.path()), &conf).expect("ADD");
            assert_eq!(r.code, 0, "ADD {id}: {} {}", r.stdout, r.stderr);
            seen.insert(pod_ip(&r.stdout));
            ids.push(id);
        }
        assert_eq!(node.ipam_records().len(), pods.len(), "round {round}: one record per live pod");
        for (id, pod) in ids.iter().zip(&pods) {
            let r = node.cni("DEL", id, Some(&pod.path()), &conf).expect("DEL");
            assert_eq!(r.code, 0, "DEL {id}: {}", r.stdout);
        }
    }
    assert_eq!(seen.len(), 61, "round-robin allocation cycled the whole /26");
    assert!(node.ipam_records().is_empty(), "leaked IPAM records: {:?}", node.ipam_records());
    assert!(node.host_veths().expect("veths").is_empty(), "leaked veths");
    let routes_after = node.ns.exec_ok(&["ip", "-4", "route", "show", "table", "all"]).expect("routes");
    assert_eq!(routes_before, routes_after, "node routes changed");
    for pod in &pods {
        assert!(pod.exec_ok(&["ip", "link", "show", "eth0"]).is_err(), "pod {} still has eth0", pod.name());
    }
    let set = node.ns.exec_ok(&["nft", "list", "set", "ip", "keelson_cni_kt", "pods"]).expect("nft");
    assert!(!set.contains("10.252."), "leaked nft elements: {set}");
    let files: Vec<String> = std::fs::read_dir(node.data_dir().join("kt"))
        .expect("ipam dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let mut files = files;
    files.sort();
    assert_eq!(files, vec!["last_reserved_ip".to_string(), "lock".to_string()], "only bookkeeping files remain");
}
