//! Three node netns on an underlay bridge (itself inside an "underlay" netns, never the host),
//! one pod per node wired by keelson-cni, the VXLAN overlay driven by `keelson-cni overlay`:
//! full-mesh pod↔pod TCP across nodes through the VXLAN devices, then a node's IP/MAC change and
//! a node's removal converge.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keelson_tests::cni::{Bg, Node, plugin_path, pod_ip, tcp_get, tcp_server};
use keelson_tests::{Netns, require_root};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

struct Cluster {
    _underlay: Netns,
    nodes: Vec<Node>,
    pods: Vec<Netns>,
    pod_ips: Vec<String>,
    node_ips: Vec<String>,
    dir: tempfile::TempDir,
    _servers: Vec<Bg>,
}

fn node_ip(i: usize) -> String {
    format!("192.168.61.{}", i + 1)
}

fn cidr(i: usize) -> String {
    format!("10.253.{}.0/24", i + 1)
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        let underlay = Netns::new("ul").expect("underlay");
        underlay.exec_ok(&["ip", "link", "add", "ubr", "type", "bridge"]).expect("bridge");
        underlay.exec_ok(&["ip", "link", "set", "ubr", "up"]).expect("up");
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        let mut pod_ips = Vec::new();
        let mut servers = Vec::new();
        for i in 0..n {
            let node = Node::new(&cidr(i)).expect("node");
            let port = format!("u{i}");
            node.ns
                .exec_ok(&[
                    "ip",
                    "link",
                    "add",
                    "up0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    &underlay.path().display().to_string(),
                ])
                .expect("uplink");
            underlay.exec_ok(&["ip", "link", "set", &port, "master", "ubr", "up"]).expect("attach");
            node.ns.exec_ok(&["ip", "addr", "add", &format!("{}/24", node_ip(i)), "dev", "up0"]).expect("addr");
            node.ns.exec_ok(&["ip", "link", "set", "up0", "up"]).expect("up");
            let pod = Netns::new("op").expect("pod");
            let r = node.add(&format!("pod-{i}"), &pod).expect("ADD");
            pod_ips.push(pod_ip(&r));
            servers.push(tcp_server(&pod, 8080, &format!("pod-{i}")).expect("server"));
            nodes.push(node);
            pods.push(pod);
        }
        let node_ips = (0..n).map(node_ip).collect();
        Cluster {
            _underlay: underlay,
            nodes,
            pods,
            pod_ips,
            node_ips,
            dir: tempfile::tempdir().expect("dir"),
            _servers: servers,
        }
    }

    /// Writes node `i`'s file with the given remotes and runs `keelson-cni overlay` in its netns.
    fn overlay(&self, i: usize, remotes: &[Value]) -> Value {
        let file = self.dir.path().join(format!("node{i}.json"));
        let doc = serde_json::json!({
            "local": { "name": format!("n{i}"), "nodeIP": self.node_ips[i], "podCIDR": cidr(i), "uplink": "up0" },
            "remotes": remotes,
        });
        std::fs::write(&file, doc.to_string()).expect("write nodes file");
        run_overlay(&self.nodes[i].ns, &file)
    }

    fn remote(&self, i: usize, mac: &str) -> Value {
        serde_json::json!({ "name": format!("n{i}"), "nodeIP": self.node_ips[i], "podCIDR": cidr(i), "vtepMAC": mac })
    }
}

fn run_overlay(ns: &Netns, file: &Path) -> Value {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg("--")
        .arg(plugin_path())
        .arg("overlay")
        .arg(file)
        .output()
        .expect("spawn overlay");
    assert!(out.status.success(), "overlay failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("overlay prints JSON")
}

fn vtep_mac(v: &Value) -> String {
    v["annotations"]["keelson.io/vtep-mac"].as_str().expect("vtep mac annotation").to_string()
}

fn vxlan_tx_packets(ns: &Netns) -> u64 {
    let j = ns.exec_ok(&["ip", "-s", "-j", "link", "show", "keelson.1"]).expect("stats");
    let v: Value = serde_json::from_str(&j).expect("json");
    v[0]["stats64"]["tx"]["packets"].as_u64().unwrap_or(0)
}

fn converge_all(c: &Cluster, macs: &[String], members: &[usize]) {
    for &i in members {
        let remotes: Vec<Value> = members.iter().filter(|&&j| j != i).map(|&j| c.remote(j, &macs[j])).collect();
        c.overlay(i, &remotes);
    }
}

#[test]
fn three_nodes_full_mesh_over_vxlan_and_changes_converge() {
    require_root();
    let mut c = Cluster::new(3);
    // First pass creates the devices and tells us each VTEP MAC (what the agent publishes).
    let mut macs: Vec<String> = (0..3).map(|i| vtep_mac(&c.overlay(i, &[]))).collect();
    for (i, node) in c.nodes.iter().enumerate() {
        let d = node.ns.exec_ok(&["ip", "-d", "-j", "link", "show", "keelson.1"]).expect("vxlan");
        let v: Value = serde_json::from_str(&d).expect("json");
        let info = &v[0]["linkinfo"]["info_data"];
        assert_eq!(info["id"], 1);
        assert_eq!(info["port"], 8472);
        assert_eq!(info["learning"], false);
        assert_eq!(info["local"], node_ip(i).as_str());
        assert_eq!(v[0]["mtu"], 1450, "uplink 1500 − 50");
        // TX checksum offload off (flannel #1279); checked when ethtool is installed (not a CI dependency).
        if let Ok(k) = node.ns.exec_ok(&["ethtool", "-k", "keelson.1"]) {
            assert!(k.contains("tx-checksumming: off"), "{k}");
        }
        let a = node.ns.exec_ok(&["ip", "-o", "addr", "show", "dev", "keelson.1"]).expect("addr");
        assert!(a.contains(&format!("10.253.{}.0/32", i + 1)), "{a}");
    }
    converge_all(&c, &macs, &[0, 1, 2]);
    let before: Vec<u64> = c.nodes.iter().map(|n| vxlan_tx_packets(&n.ns)).collect();
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                let got = tcp_get(&c.pods[i], &c.pod_ips[j], 8080, T);
                assert_eq!(got.as_deref(), Some(format!("pod-{j}").as_str()), "pod {i} → pod {j} across nodes");
            }
        }
    }
    for (i, n) in c.nodes.iter().enumerate() {
        assert!(vxlan_tx_packets(&n.ns) > before[i], "node {i}: traffic went through the VXLAN device");
    }
    let r = c.nodes[0].ns.exec_ok(&["ip", "route", "show", "10.253.2.0/24"]).expect("route");
    assert!(r.contains("via 10.253.2.0 dev keelson.1") && r.contains("onlink"), "{r}");
    let again = c.overlay(0, &[c.remote(1, &macs[1]), c.remote(2, &macs[2])]);
    assert_eq!(again["report"]["actions"], 0, "converge is idempotent");

    // Node 2 (index 2) moves to a new IP: its device is recreated (new MAC); peers are told.
    c.node_ips[2] = "192.168.61.33".into();
    let n2 = &c.nodes[2].ns;
    n2.exec_ok(&["ip", "addr", "flush", "dev", "up0"]).expect("flush");
    n2.exec_ok(&["ip", "addr", "add", "192.168.61.33/24", "dev", "up0"]).expect("new addr");
    let new_mac = vtep_mac(&c.overlay(2, &[c.remote(0, &macs[0]), c.remote(1, &macs[1])]));
    assert_ne!(new_mac, macs[2], "recreated device has a new VTEP MAC");
    macs[2] = new_mac;
    converge_all(&c, &macs, &[0, 1, 2]);
    let fdb = c.nodes[0].ns.exec_ok(&["bridge", "fdb", "show", "dev", "keelson.1"]).expect("fdb");
    assert!(fdb.contains("dst 192.168.61.33") && !fdb.contains("dst 192.168.61.3 "), "{fdb}");
    for i in [0, 1] {
        assert_eq!(tcp_get(&c.pods[i], &c.pod_ips[2], 8080, T).as_deref(), Some("pod-2"), "pod {i} → moved node");
        assert_eq!(tcp_get(&c.pods[2], &c.pod_ips[i], 8080, T).as_deref(), Some(format!("pod-{i}").as_str()));
    }

    // Node 1 is removed: the others drop its route, neighbour and FDB entry.
    converge_all(&c, &macs, &[0, 2]);
    for i in [0, 2] {
        let ns = &c.nodes[i].ns;
        assert!(ns.exec_ok(&["ip", "route", "show", "10.253.2.0/24"]).expect("route").is_empty(), "node {i} route");
        let neigh = ns.exec_ok(&["ip", "neigh", "show", "dev", "keelson.1"]).expect("neigh");
        assert!(!neigh.contains("10.253.2.0"), "node {i} neighbour: {neigh}");
        let fdb = ns.exec_ok(&["bridge", "fdb", "show", "dev", "keelson.1"]).expect("fdb");
        assert!(!fdb.contains(&macs[1]), "node {i} fdb: {fdb}");
    }
    assert_eq!(tcp_get(&c.pods[0], &c.pod_ips[2], 8080, T).as_deref(), Some("pod-2"), "remaining nodes still talk");
    assert!(tcp_get(&c.pods[0], &c.pod_ips[1], 8080, Duration::from_secs(2)).is_none(), "removed node unreachable");

    for (i, node) in c.nodes.iter().enumerate() {
        node.del(&format!("pod-{i}"), Some(&c.pods[i])).expect("DEL");
    }
}
