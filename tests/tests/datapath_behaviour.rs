//! One behaviour suite, two backends: the same table of (client location, destination, service
//! config, endpoint states) → expected backend set (or refusal) runs against the real kernel for the
//! nftables backend and for the eBPF socket-LB, in namespaces created by the test.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_datapath::datapath::{BackendKind, Datapath, DatapathConfig, Mode};
use keelson_datapath::ebpf::loader::Uplink;
use keelson_datapath::model::{ModelConfig, NodeInfo, ServiceTable};
use keelson_tests::datapath::*;
use keelson_tests::require_root;
use serde_json::{Value, json};
use std::collections::BTreeSet;

fn svc(name: &str, ip: &str, proto: &str, node_port: Option<u16>, extra: Value) -> Service {
    let mut port = json!({"name": "p", "port": 80, "protocol": proto});
    let mut spec = json!({"clusterIP": ip});
    if let Some(np) = node_port {
        port["nodePort"] = json!(np);
        spec["type"] = json!("NodePort");
    }
    spec["ports"] = json!([port]);
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "t"}, "spec": spec})).unwrap()
}

/// Endpoint states: "R" ready, "ST" serving+terminating, "NR" not ready.
fn slice(name: &str, proto: &str, eps: &[(&str, &str, &str)]) -> EndpointSlice {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, node, st)| {
            let c = match *st {
                "R" => json!({"ready": true, "serving": true, "terminating": false}),
                "ST" => json!({"ready": false, "serving": true, "terminating": true}),
                _ => json!({"ready": false, "serving": false, "terminating": false}),
            };
            json!({"addresses": [ip], "nodeName": node, "conditions": c})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-1"), "namespace": "t", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "ports": [{"name": "p", "port": 8080, "protocol": proto}], "endpoints": endpoints}))
    .unwrap()
}

const LOCAL: &str = NODE_NAME;
const REMOTE: &str = "node-b";

fn objects() -> (Vec<Service>, Vec<EndpointSlice>) {
    let both = |n: &str, proto: &str| slice(n, proto, &[(P1_IP, LOCAL, "R"), (P2_IP, REMOTE, "R")]);
    let svcs = vec![
        svc("cluster", "10.96.0.10", "TCP", Some(30010), json!({})),
        svc("itp-local", "10.96.0.11", "TCP", None, json!({"internalTrafficPolicy": "Local"})),
        svc("itp-local-none", "10.96.0.12", "TCP", None, json!({"internalTrafficPolicy": "Local"})),
        svc("terminating", "10.96.0.13", "TCP", None, json!({})),
        svc("no-endpoints", "10.96.0.14", "TCP", None, json!({})),
        svc("etp-local", "10.96.0.15", "TCP", Some(30015), json!({"externalTrafficPolicy": "Local"})),
        svc("etp-local-none", "10.96.0.16", "TCP", Some(30016), json!({"externalTrafficPolicy": "Local"})),
        svc("udp", "10.96.0.17", "UDP", None, json!({})),
        svc("sticky", "10.96.0.18", "TCP", None, json!({"sessionAffinity": "ClientIP"})),
        svc("sctp", "10.96.0.19", "SCTP", None, json!({})),
        svc("hairpin", "10.96.0.21", "TCP", None, json!({})),
    ];
    let slices = vec![
        both("cluster", "TCP"),
        both("itp-local", "TCP"),
        slice("itp-local-none", "TCP", &[(P2_IP, REMOTE, "R")]),
        slice("terminating", "TCP", &[(P1_IP, LOCAL, "NR"), (P2_IP, REMOTE, "ST")]),
        both("etp-local", "TCP"),
        slice("etp-local-none", "TCP", &[(P2_IP, REMOTE, "R")]),
        both("udp", "UDP"),
        both("sticky", "TCP"),
        slice("hairpin", "TCP", &[(P1_IP, LOCAL, "R")]),
    ];
    (svcs, slices)
}

#[derive(Clone, Copy, Debug)]
enum From {
    Pod,
    /// The backend pod p1 itself (hairpin).
    Backend,
    Node,
    External,
}

struct Case {
    name: &'static str,
    from: From,
    dst: &'static str,
    port: u16,
    udp: bool,
    want: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "clusterip spreads over all ready",
        from: From::Pod,
        dst: "10.96.0.10",
        port: 80,
        udp: false,
        want: &["p1", "p2"],
    },
    Case { name: "node-local client", from: From::Node, dst: "10.96.0.10", port: 80, udp: false, want: &["p1", "p2"] },
    Case {
        name: "internalTrafficPolicy Local",
        from: From::Pod,
        dst: "10.96.0.11",
        port: 80,
        udp: false,
        want: &["p1"],
    },
    Case {
        name: "itp Local without local endpoint drops",
        from: From::Pod,
        dst: "10.96.0.12",
        port: 80,
        udp: false,
        want: &[],
    },
    Case {
        name: "serving+terminating fallback",
        from: From::Pod,
        dst: "10.96.0.13",
        port: 80,
        udp: false,
        want: &["p2"],
    },
    Case { name: "no endpoints drops", from: From::Pod, dst: "10.96.0.14", port: 80, udp: false, want: &[] },
    Case {
        name: "external NodePort Cluster",
        from: From::External,
        dst: NODE_IP,
        port: 30010,
        udp: false,
        want: &["p1", "p2"],
    },
    Case {
        name: "external NodePort etp Local",
        from: From::External,
        dst: NODE_IP,
        port: 30015,
        udp: false,
        want: &["p1"],
    },
    Case {
        name: "external NodePort etp Local none",
        from: From::External,
        dst: NODE_IP,
        port: 30016,
        udp: false,
        want: &[],
    },
    Case {
        name: "pod to NodePort on node IP",
        from: From::Pod,
        dst: NODE_IP,
        port: 30010,
        udp: false,
        want: &["p1", "p2"],
    },
    Case {
        name: "udp clusterip, replies from the VIP",
        from: From::Pod,
        dst: "10.96.0.17",
        port: 80,
        udp: true,
        want: &["p1", "p2"],
    },
    Case {
        name: "hairpin: backend reaches itself",
        from: From::Backend,
        dst: "10.96.0.21",
        port: 80,
        udp: false,
        want: &["p1"],
    },
    Case {
        name: "unsupported SCTP port not programmed",
        from: From::Pod,
        dst: "10.96.0.19",
        port: 80,
        udp: false,
        want: &[],
    },
];

fn run_suite(mode: Mode, want_backend: BackendKind) {
    require_root();
    let topo = Topology::new().expect("topology");
    let cg = Cgroup2::new().expect("cgroup");
    let pins = BpfPinDir::new().expect("bpffs");
    let node = NodeInfo { name: NODE_NAME.into(), ips: vec![NODE_IP.parse().unwrap()] };
    let cfg = DatapathConfig {
        mode,
        node: node.clone(),
        pin_dir: pins.path.clone(),
        cgroup: cg.path.clone(),
        uplink: Some(Uplink { iface: "uplink".into(), netns: Some(topo.node.path()) }),
        nft_table: "keelson".into(),
        nft_netns: Some(topo.node.path()),
    };
    let mut dp = Datapath::start(&cfg).expect("start datapath");
    assert_eq!(dp.backend(), want_backend, "fallback: {:?}", dp.fallback_reason);
    let (svcs, slices) = objects();
    let table = ServiceTable::build(&svcs, &slices, &node, &ModelConfig::default());
    assert_eq!(table.errors.len(), 1, "only the SCTP port is rejected: {:?}", table.errors);
    dp.sync(&table).expect("sync");
    if want_backend == BackendKind::Ebpf {
        // External traffic must be served by the tc programs, not by nftables.
        let np = topo.node.exec_ok(&["nft", "list", "map", "ip", "keelson", "service-nodeports"]).unwrap();
        assert!(!np.contains("goto"), "eBPF mode with an uplink leaves NodePorts to tc: {np}");
    }

    let mut failures = Vec::new();
    for c in CASES {
        let tries = if c.want.is_empty() { 2 } else { 16 };
        let (pods, peers) = responders(tries, || {
            let (ns, cgroup) = match c.from {
                From::Pod => (&topo.client, Some(cg.path.as_path())),
                From::Backend => (&topo.p1, Some(cg.path.as_path())),
                From::Node => (&topo.node, Some(cg.path.as_path())),
                From::External => (&topo.ext, None),
            };
            if c.udp { udp(ns, cgroup, c.dst, c.port) } else { tcp(ns, cgroup, c.dst, c.port) }
        });
        let want: BTreeSet<String> = c.want.iter().map(|s| s.to_string()).collect();
        if pods != want {
            failures.push(format!("{}: got {pods:?}, want {want:?}", c.name));
        }
        // Client IP: preserved under etp Local, masqueraded under Cluster for external traffic.
        if matches!(c.from, From::External) && !c.want.is_empty() {
            let preserved = peers.iter().all(|p| p.starts_with(EXT_IP));
            let expect_preserved = c.port == 30015;
            if preserved != expect_preserved {
                failures.push(format!("{}: peers {peers:?}, client IP preserved should be {expect_preserved}", c.name));
            }
        }
        if matches!(c.from, From::Pod)
            && c.dst.starts_with("10.96.")
            && !c.want.is_empty()
            && !peers.iter().all(|p| p.starts_with(CLIENT_IP))
        {
            failures.push(format!("{}: pod-to-ClusterIP must keep the pod IP, peers {peers:?}", c.name));
        }
    }
    // ClientIP affinity: every request from the same client lands on the same backend.
    let (sticky, _) = responders(10, || tcp(&topo.client, Some(cg.path.as_path()), "10.96.0.18", 80));
    if sticky.len() != 1 {
        failures.push(format!("sessionAffinity ClientIP: got {sticky:?}, want exactly one backend"));
    }
    // Incremental update: drop p2 from "cluster"; only p1 must answer afterwards.
    let (svcs, mut slices) = objects();
    slices[0] = slice("cluster", "TCP", &[(P1_IP, LOCAL, "R"), (P2_IP, REMOTE, "NR")]);
    let t2 = ServiceTable::build(&svcs, &slices, &node, &ModelConfig::default());
    dp.sync(&t2).expect("incremental sync");
    let (after, _) = responders(10, || tcp(&topo.client, Some(cg.path.as_path()), "10.96.0.10", 80));
    if after != BTreeSet::from(["p1".to_string()]) {
        failures.push(format!("after endpoint removal: got {after:?}, want p1 only"));
    }
    assert!(dp.metrics_text().contains(&format!("keelson_datapath_backend{{backend=\"{}\"}} 1", want_backend.name())));
    assert!(failures.is_empty(), "{:?} backend failures:\n{}", want_backend, failures.join("\n"));
}

#[test]
fn behaviour_nft() {
    run_suite(Mode::Nft, BackendKind::Nft);
}

#[test]
fn behaviour_ebpf() {
    run_suite(Mode::Ebpf, BackendKind::Ebpf);
}
