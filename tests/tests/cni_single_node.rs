//! keelson-cni on one node (a test-created netns; the host netns is never touched): pods reach
//! each other and the node, DEL is idempotent and works without a netns, CHECK notices damage, GC
//! cleans a crashed ADD, Debian's portmap and bandwidth chain after it, and bad input is refused
//! with spec error JSON and nothing left behind.

use std::time::Duration;

use keelson_tests::cni::{Node, ping, pod_ip, tcp_get, tcp_server};
use keelson_tests::{Netns, require_root};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

#[test]
fn two_pods_reach_each_other_and_the_node() {
    require_root();
    let node = Node::new("10.251.1.0/24").expect("node");
    let (a, b) = (Netns::new("pa").expect("pod a"), Netns::new("pb").expect("pod b"));
    let ra = node.add("ctr-a", &a).expect("ADD a");
    let rb = node.add("ctr-b", &b).expect("ADD b");
    let (ipa, ipb) = (pod_ip(&ra), pod_ip(&rb));
    assert_eq!(ra["cniVersion"], "1.1.0");
    assert_eq!(ra["ips"][0]["gateway"], "10.251.1.1", "gateway is the first address of the subnet");
    assert_eq!(ra["interfaces"][2]["sandbox"], a.path().display().to_string());
    assert_ne!(ipa, ipb);
    for ip in [&ipa, &ipb] {
        assert!(!ip.ends_with(".0") && !ip.ends_with(".1") && !ip.ends_with(".255"), "{ip}");
    }

    // bridge, MTU, hairpin, default route, accept_ra=0
    let br = node.ns.exec_ok(&["ip", "-o", "addr", "show", "dev", "kb0"]).expect("bridge");
    assert!(br.contains("10.251.1.1/24"), "{br}");
    let link = a.exec_ok(&["ip", "-o", "link", "show", "eth0"]).expect("eth0");
    assert!(link.contains("mtu 1450"), "{link}");
    let hairpin = node.ns.exec_ok(&["bridge", "-d", "link", "show"]).expect("bridge link");
    assert_eq!(hairpin.matches("hairpin on").count(), 2, "{hairpin}");
    assert!(a.exec_ok(&["ip", "route"]).expect("routes").contains("default via 10.251.1.1 dev eth0"));
    assert_eq!(a.exec_ok(&["cat", "/proc/sys/net/ipv6/conf/eth0/accept_ra"]).expect("sysctl"), "0");

    assert!(ping(&a, &ipb), "pod a → pod b");
    assert!(ping(&b, "10.251.1.1"), "pod b → node");
    assert!(ping(&node.ns, &ipa), "node → pod a");
    let _srv = tcp_server(&b, 8080, "hello-from-b").expect("server");
    assert_eq!(tcp_get(&a, &ipb, 8080, T).as_deref(), Some("hello-from-b"), "TCP pod a → pod b");
    assert_eq!(tcp_get(&node.ns, &ipb, 8080, T).as_deref(), Some("hello-from-b"), "TCP node → pod b");

    node.del("ctr-a", Some(&a)).expect("DEL a");
    node.del("ctr-b", Some(&b)).expect("DEL b");
    assert!(node.ipam_records().is_empty());
    assert!(node.host_veths().expect("veths").is_empty());
}

#[test]
fn del_twice_and_after_the_netns_is_gone() {
    require_root();
    let node = Node::new("10.251.2.0/24").expect("node");
    let a = Netns::new("pa").expect("pod");
    node.add("ctr-a", &a).expect("ADD");
    node.del("ctr-a", Some(&a)).expect("DEL 1");
    node.del("ctr-a", Some(&a)).expect("DEL 2 (idempotent)");
    assert!(a.exec_ok(&["ip", "link", "show", "eth0"]).is_err(), "pod interface gone");

    let b = Netns::new("pb").expect("pod");
    node.add("ctr-b", &b).expect("ADD b");
    assert_eq!(node.ipam_records().len(), 1);
    let path = b.path();
    drop(b); // the runtime deleted the netns before DEL
    let conf = node.conf("1.1.0", "");
    let r = node.cni("DEL", "ctr-b", Some(&path), &conf).expect("run");
    assert_eq!(r.code, 0, "DEL with a vanished netns: {} {}", r.stdout, r.stderr);
    let r = node.cni("DEL", "ctr-b", None, &conf).expect("run");
    assert_eq!(r.code, 0, "DEL without CNI_NETNS: {}", r.stdout);
    assert!(node.ipam_records().is_empty(), "address released without the netns");
    assert!(node.host_veths().expect("veths").is_empty());
}

#[test]
fn check_notices_removed_address_and_route() {
    require_root();
    let node = Node::new("10.251.3.0/24").expect("node");
    let a = Netns::new("pa").expect("pod");
    let res = node.add("ctr-a", &a).expect("ADD");
    let mut conf = node.conf("1.1.0", "");
    conf["prevResult"] = res.clone();
    let ok = node.cni("CHECK", "ctr-a", Some(&a.path()), &conf).expect("CHECK");
    assert_eq!(ok.code, 0, "healthy CHECK: {}", ok.stdout);

    a.exec_ok(&["ip", "route", "del", "default"]).expect("remove route");
    let r = node.cni("CHECK", "ctr-a", Some(&a.path()), &conf).expect("CHECK");
    assert_ne!(r.code, 0);
    assert!(r.stdout["details"].as_str().unwrap_or("").contains("default route"), "{}", r.stdout);
    a.exec_ok(&["ip", "route", "add", "default", "via", "10.251.3.1"]).expect("restore route");
    assert_eq!(node.cni("CHECK", "ctr-a", Some(&a.path()), &conf).expect("CHECK").code, 0);

    let addr = res["ips"][0]["address"].as_str().expect("address").to_string();
    a.exec_ok(&["ip", "addr", "del", &addr, "dev", "eth0"]).expect("remove address");
    let r = node.cni("CHECK", "ctr-a", Some(&a.path()), &conf).expect("CHECK");
    assert_ne!(r.code, 0);
    assert!(r.stdout["details"].as_str().unwrap_or("").contains("address"), "{}", r.stdout);
    node.del("ctr-a", Some(&a)).expect("DEL");
}

#[test]
fn gc_cleans_up_after_a_crash_mid_add() {
    require_root();
    let node = Node::new("10.251.4.0/24").expect("node");
    let (a, b) = (Netns::new("pa").expect("pod"), Netns::new("pb").expect("pod"));
    let ra = node.add("ctr-a", &a).expect("ADD a");
    // Simulate a plugin killed mid-ADD for ctr-b: the allocation was persisted and the host veth
    // (deterministic name) was created and enslaved, but the pod end was never configured and no
    // result was returned, so the runtime does not know ctr-b.
    let stale_veth = keelson_cni_host_veth("ctr-b");
    let rec = node.data_dir().join(&node.network).join("10.251.4.77");
    std::fs::write(&rec, r#"{"containerID":"ctr-b","ifname":"eth0"}"#).expect("record");
    node.ns
        .exec_ok(&[
            "ip",
            "link",
            "add",
            &stale_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &b.path().display().to_string(),
        ])
        .expect("stale veth");
    node.ns.exec_ok(&["ip", "link", "set", &stale_veth, "master", "kb0"]).expect("enslave");
    assert_eq!(node.ipam_records().len(), 2);

    let conf = node.conf("1.1.0", r#""cni.dev/valid-attachments":[{"containerID":"ctr-a","ifname":"eth0"}]"#);
    let r = node.cni("GC", "", None, &conf).expect("GC");
    assert_eq!(r.code, 0, "GC: {} {}", r.stdout, r.stderr);
    assert_eq!(node.ipam_records(), vec![pod_ip(&ra)], "only the valid attachment keeps its address");
    assert_eq!(node.host_veths().expect("veths"), vec![keelson_cni_host_veth("ctr-a")]);
    assert!(ping(&a, "10.251.4.1"), "the valid pod is untouched");

    // ctr-b retried by the runtime gets a clean ADD
    node.add("ctr-b", &b).expect("ADD b after GC");
    node.del("ctr-b", Some(&b)).expect("DEL b");
    node.del("ctr-a", Some(&a)).expect("DEL a");
}

fn keelson_cni_host_veth(id: &str) -> String {
    keelson_cni::plugin::host_veth_name(id, "eth0")
}

#[test]
fn portmap_chained_after_us_exposes_a_host_port() {
    require_root();
    let node = Node::new("10.251.5.0/24").expect("node");
    let pod = Netns::new("pa").expect("pod");
    let client = Netns::new("ext").expect("client");
    // the node's "external" interface: 192.168.251.1 on the node, client at .2
    node.ns
        .exec_ok(&[
            "ip",
            "link",
            "add",
            "ext0",
            "type",
            "veth",
            "peer",
            "name",
            "c0",
            "netns",
            &client.path().display().to_string(),
        ])
        .expect("veth");
    node.ns.exec_ok(&["ip", "addr", "add", "192.168.251.1/24", "dev", "ext0"]).expect("addr");
    node.ns.exec_ok(&["ip", "link", "set", "ext0", "up"]).expect("up");
    client.exec_ok(&["ip", "addr", "add", "192.168.251.2/24", "dev", "c0"]).expect("addr");
    client.exec_ok(&["ip", "link", "set", "c0", "up"]).expect("up");

    // chain: keelson-cni (rendered as 1.0.0, portmap's newest) then portmap with our prevResult
    let conf = node.conf("1.0.0", "");
    let r = node.cni("ADD", "ctr-p", Some(&pod.path()), &conf).expect("ADD");
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.stdout["cniVersion"], "1.0.0");
    let pm = portmap_conf(&node, &r.stdout);
    let env = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "ctr-p"), ("CNI_IFNAME", "eth0")];
    let netns = pod.path().display().to_string();
    let env_ns: Vec<(&str, &str)> = env.iter().copied().chain([("CNI_NETNS", netns.as_str())]).collect();
    let out = node
        .exec_plugin(std::path::Path::new("/usr/lib/cni/portmap"), &env_ns, pm.to_string().as_bytes())
        .expect("portmap");
    assert_eq!(out.code, 0, "portmap ADD: {} {}", out.stdout, out.stderr);
    assert_eq!(out.stdout["ips"], r.stdout["ips"], "portmap passes our result through");

    let _srv = tcp_server(&pod, 8080, "via-hostport").expect("server");
    assert_eq!(tcp_get(&client, "192.168.251.1", 18080, T).as_deref(), Some("via-hostport"), "hostPort on the node IP");

    let del: Vec<(&str, &str)> =
        env_ns.iter().map(|(k, v)| if *k == "CNI_COMMAND" { (*k, "DEL") } else { (*k, *v) }).collect();
    let out = node
        .exec_plugin(std::path::Path::new("/usr/lib/cni/portmap"), &del, pm.to_string().as_bytes())
        .expect("portmap");
    assert_eq!(out.code, 0, "portmap DEL: {}", out.stdout);
    node.del("ctr-p", Some(&pod)).expect("DEL");
    assert!(node.ipam_records().is_empty());
}

fn portmap_conf(node: &Node, prev: &Value) -> Value {
    serde_json::json!({
        "cniVersion": "1.0.0", "name": node.network, "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]},
        "prevResult": prev,
    })
}

#[test]
fn bandwidth_chained_after_us_shapes_the_pod() {
    require_root();
    let node = Node::new("10.251.6.0/24").expect("node");
    let pod = Netns::new("pa").expect("pod");
    let conf = node.conf("1.0.0", "");
    let r = node.cni("ADD", "ctr-bw", Some(&pod.path()), &conf).expect("ADD");
    assert_eq!(r.code, 0, "{}", r.stdout);
    let bw = serde_json::json!({
        "cniVersion": "1.0.0", "name": node.network, "type": "bandwidth",
        "capabilities": {"bandwidth": true},
        "runtimeConfig": {"bandwidth": {"ingressRate": 8000000, "ingressBurst": 80000, "egressRate": 8000000, "egressBurst": 80000}},
        "prevResult": r.stdout,
    });
    let netns = pod.path().display().to_string();
    let mut env = vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ctr-bw"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", netns.as_str()),
    ];
    let plugin = std::path::Path::new("/usr/lib/cni/bandwidth");
    let out = node.exec_plugin(plugin, &env, bw.to_string().as_bytes()).expect("bandwidth");
    assert_eq!(out.code, 0, "bandwidth ADD: {} {}", out.stdout, out.stderr);
    let host = keelson_cni_host_veth("ctr-bw");
    let q = node.ns.exec_ok(&["tc", "qdisc", "show", "dev", &host]).expect("tc");
    assert!(q.contains("tbf"), "ingress shaping on our host veth: {q}");
    env[0] = ("CNI_COMMAND", "DEL");
    let out = node.exec_plugin(plugin, &env, bw.to_string().as_bytes()).expect("bandwidth");
    assert_eq!(out.code, 0, "bandwidth DEL: {}", out.stdout);
    node.del("ctr-bw", Some(&pod)).expect("DEL");
    let links = node.ns.exec_ok(&["ip", "-o", "link"]).expect("links");
    assert!(!links.contains("bwp") && node.host_veths().expect("veths").is_empty(), "{links}");
}

#[test]
fn ip_masq_uses_an_owned_table_and_follows_pods() {
    require_root();
    let node = Node::new("10.251.7.0/24").expect("node");
    let pod = Netns::new("pa").expect("pod");
    let conf = node.conf("1.1.0", r#""ipMasq":true,"clusterCIDR":"10.251.0.0/16""#);
    let r = node.cni("ADD", "ctr-m", Some(&pod.path()), &conf).expect("ADD");
    assert_eq!(r.code, 0, "{}", r.stdout);
    let set = node.ns.exec_ok(&["nft", "list", "set", "ip", "keelson_cni_kt", "pods"]).expect("set");
    assert!(set.contains(&pod_ip(&r.stdout)), "{set}");
    let chain = node.ns.exec_ok(&["nft", "list", "chain", "ip", "keelson_cni_kt", "postrouting"]).expect("chain");
    assert!(chain.contains("masquerade"), "{chain}");
    let d = node.cni("DEL", "ctr-m", Some(&pod.path()), &conf).expect("DEL");
    assert_eq!(d.code, 0);
    let set = node.ns.exec_ok(&["nft", "list", "set", "ip", "keelson_cni_kt", "pods"]).expect("set");
    assert!(!set.contains(&pod_ip(&r.stdout)), "element removed on DEL: {set}");
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    require_root();
    let node = Node::new("10.251.8.0/24").expect("node");
    let pod = Netns::new("pa").expect("pod");
    let p = plugin();
    let base = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "ctr-x"), ("CNI_IFNAME", "eth0")];
    let netns = pod.path().display().to_string();
    let full: Vec<(&str, &str)> = base.iter().copied().chain([("CNI_NETNS", netns.as_str())]).collect();
    let good = node.conf("1.1.0", "").to_string();

    // (what, environment, stdin, expected spec error code)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u64);
    let cases: Vec<Case<'_>> = vec![
        ("malformed JSON", full.clone(), "{\"cniVersion\":".into(), 6),
        ("unsupported version", full.clone(), node.conf("2.0.0", "").to_string(), 1),
        ("missing CNI_NETNS", base.to_vec(), good.clone(), 4),
        ("missing CNI_COMMAND", full[1..].to_vec(), good.clone(), 4),
        ("bad subnet", full.clone(), node.conf("1.1.0", r#""ipam":{"subnet":"10.0.0.0/40"}"#).to_string(), 7),
        (
            "missing netns",
            base.iter().copied().chain([("CNI_NETNS", "/var/run/netns/keelson-no-such-ns")]).collect(),
            good.clone(),
            3,
        ),
    ];
    for (what, env, stdin, code) in cases {
        let r = node.exec_plugin(&p, &env, stdin.as_bytes()).expect("run");
        assert_ne!(r.code, 0, "{what}");
        assert_eq!(r.err_code(), Some(code), "{what}: {}", r.stdout);
        assert!(r.stdout["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {}", r.stdout);
    }
    // existing interface in the pod
    pod.exec_ok(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]).expect("pre-existing eth0");
    let r = node.exec_plugin(&p, &full, good.as_bytes()).expect("run");
    assert_eq!(r.err_code(), Some(101), "{}", r.stdout);
    assert!(node.ipam_records().is_empty(), "no address leaked");
    assert!(node.host_veths().expect("veths").is_empty(), "no veth leaked");
    // VERSION / STATUS
    let v = node.exec_plugin(&p, &[("CNI_COMMAND", "VERSION")], good.as_bytes()).expect("run");
    assert_eq!(v.stdout["supportedVersions"].as_array().map(Vec::len), Some(5));
    let s = node.exec_plugin(&p, &[("CNI_COMMAND", "STATUS")], good.as_bytes()).expect("run");
    assert_eq!(s.code, 0, "{}", s.stdout);
    let missing = node.conf("1.1.0", r#""ipam":{"subnetFile":"/nonexistent/keelson/subnet.env"}"#).to_string();
    let s = node.exec_plugin(&p, &[("CNI_COMMAND", "STATUS")], missing.as_bytes()).expect("run");
    assert_eq!(s.err_code(), Some(50), "{}", s.stdout);
}

fn plugin() -> std::path::PathBuf {
    keelson_tests::cni::plugin_path()
}

#[test]
fn exhaustion_is_a_clear_error_and_leaks_nothing() {
    require_root();
    // A /30 has exactly one pod address (.2): network .0, gateway .1, broadcast .3.
    let node = Node::new("10.251.9.0/30").expect("node");
    let (a, b) = (Netns::new("pa").expect("pod"), Netns::new("pb").expect("pod"));
    let ra = node.add("ctr-a", &a).expect("ADD a");
    assert_eq!(pod_ip(&ra), "10.251.9.2");
    let r = node.cni("ADD", "ctr-b", Some(&b.path()), &node.conf("1.1.0", "")).expect("run");
    assert_eq!(r.err_code(), Some(100), "{}", r.stdout);
    assert!(r.stdout["details"].as_str().unwrap_or("").contains("10.251.9.0/30"), "{}", r.stdout);
    assert!(b.exec_ok(&["ip", "link", "show", "eth0"]).is_err(), "no pod interface created");
    assert_eq!(node.host_veths().expect("veths").len(), 1, "only pod a's veth");
    node.del("ctr-a", Some(&a)).expect("DEL a");
    node.add("ctr-b", &b).expect("ADD b once an address is free");
    node.del("ctr-b", Some(&b)).expect("DEL b");
}

#[test]
fn subnet_and_mtu_from_the_agents_subnet_file() {
    require_root();
    let node = Node::new("10.251.10.0/24").expect("node");
    let pod = Netns::new("pa").expect("pod");
    let file = node.dir.path().join("subnet.env");
    std::fs::write(&file, "KEELSON_NETWORK=10.251.0.0/16\nKEELSON_SUBNET=10.251.11.0/24\nKEELSON_MTU=1400\n")
        .expect("write");
    let extra =
        format!(r#""mtu":null,"ipam":{{"subnetFile":"{}","dataDir":"{}"}}"#, file.display(), node.data_dir().display());
    let conf = node.conf("1.1.0", &extra);
    let r = node.cni("ADD", "ctr-f", Some(&pod.path()), &conf).expect("ADD");
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.stdout["ips"][0]["address"], "10.251.11.2/24", "subnet from the file, not from any config");
    assert!(pod.exec_ok(&["ip", "-o", "link", "show", "eth0"]).expect("eth0").contains("mtu 1400"));
    assert_eq!(node.cni("DEL", "ctr-f", Some(&pod.path()), &conf).expect("DEL").code, 0);
    std::fs::remove_file(&file).expect("rm");
    let r = node.cni("ADD", "ctr-g", Some(&pod.path()), &conf).expect("ADD");
    assert_eq!(r.err_code(), Some(11), "no subnet file yet → try again later: {}", r.stdout);
    assert!(node.host_veths().expect("veths").is_empty());
}

#[test]
fn sigkill_at_any_point_of_add_leaks_nothing_after_gc() {
    require_root();
    let node = Node::new("10.251.12.0/24").expect("node");
    let conf = node.conf("1.1.0", "").to_string();
    let warm = Netns::new("pw").expect("pod");
    node.add("warm", &warm).expect("ADD warm-up (bridge exists afterwards)");
    node.del("warm", Some(&warm)).expect("DEL warm-up");
    // Kill real ADDs after 0…30 ms: process start, IPAM, veth creation and pod wiring all take a
    // few ms each, so the kills land in every phase; the 400 ms kill lands after a finished ADD
    // whose result the runtime never read (it must be cleaned up just the same).
    let mut kills = Vec::new();
    for (i, delay_ms) in [0u64, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 400].into_iter().enumerate() {
        let pod = Netns::new("pk").expect("pod");
        let id = format!("crash-{i}");
        let mut child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", node.ns.path().display()))
            .arg("--")
            .arg(keelson_tests::cni::plugin_path())
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", pod.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(conf.as_bytes()).expect("write config");
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL: no rollback can run
        let _ = child.wait();
        kills.push((id, delay_ms, pod));
    }
    // What each kill left behind: the host veth (name derived from the id), the IPAM record
    // holding the id, and eth0 in the pod's netns (the netns itself belongs to the runtime).
    let left: Vec<Leftover> = kills.iter().map(|(id, _, pod)| Leftover::probe(&node, id, pod)).collect();
    for ((id, delay, _), l) in kills.iter().zip(&left) {
        eprintln!("kill after {delay:>3} ms ({id}): {l:?}");
    }
    assert!(left.iter().any(Leftover::any), "no kill left anything behind, so recovery was not exercised: {left:?}");
    assert!(left.last().is_some_and(|l| l.ipam && l.host_veth && l.pod_eth0), "a finished ADD left: {:?}", left.last());

    // The runtime retries DEL for the attachments it started (every other one here) …
    for (i, (id, _, pod)) in kills.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        node.del(id, Some(pod)).expect("DEL after a killed ADD");
        let l = Leftover::probe(&node, id, pod);
        assert!(!l.any(), "DEL of {id} (kill point {i}) left {l:?}");
    }
    // … and GC removes the rest, which the runtime knows nothing about.
    let gc = node.conf("1.1.0", r#""cni.dev/valid-attachments":[]"#);
    let r = node.cni("GC", "", None, &gc).expect("GC");
    assert_eq!(r.code, 0, "GC: {} {}", r.stdout, r.stderr);
    for (id, _, pod) in &kills {
        let l = Leftover::probe(&node, id, pod);
        assert!(!l.any(), "after GC, {id} left {l:?}");
    }
    assert!(node.ipam_records().is_empty(), "records left: {:?}", node.ipam_records());
    assert!(node.host_veths().expect("veths").is_empty(), "veths left");
    // and the node is healthy for the next pod
    node.add("after", &warm).expect("ADD after crashes");
    node.del("after", Some(&warm)).expect("DEL");
}

/// The traces of one attachment `id` on the node and in its pod netns.
#[derive(Debug)]
struct Leftover {
    host_veth: bool,
    ipam: bool,
    pod_eth0: bool,
}

impl Leftover {
    fn probe(node: &Node, id: &str, pod: &Netns) -> Leftover {
        let veths = node.host_veths().expect("list veths");
        let dir = node.data_dir().join(&node.network);
        let quoted = format!("\"{id}\"");
        let ipam = node.ipam_records().iter().any(|r| {
            let text = std::fs::read_to_string(dir.join(r)).unwrap_or_else(|e| panic!("read IPAM record {r}: {e}"));
            text.contains(&quoted)
        });
        let links = pod.exec_ok(&["ip", "-o", "link", "show"]).expect("list links in the pod netns");
        Leftover {
            host_veth: veths.contains(&keelson_cni_host_veth(id)),
            ipam,
            pod_eth0: links.lines().any(|l| l.split(": ").nth(1).is_some_and(|n| n.split('@').next() == Some("eth0"))),
        }
    }

    fn any(&self) -> bool {
        self.host_veth || self.ipam || self.pod_eth0
    }
}
