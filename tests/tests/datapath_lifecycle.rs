//! Datapath lifecycle on the real kernel: restart/adoption (pins and programs survive the process,
//! open connections keep working, the new process converges without flushing), tamper repair, the
//! automatic eBPF → nftables fallback, and the standalone driver binary.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_datapath::datapath::{BackendKind, Datapath, DatapathConfig, Mode};
use keelson_datapath::model::{ModelConfig, NodeInfo, ServiceTable};
use keelson_tests::datapath::*;
use keelson_tests::require_root;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::PathBuf;

const VIP: &str = "10.96.0.10";
const ECHO_VIP: &str = "10.96.0.20";

fn objects() -> (Vec<Service>, Vec<EndpointSlice>) {
    let svc = |name: &str, ip: &str, port: u16| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "t"},
            "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": 80, "targetPort": port}]}}))
        .unwrap()
    };
    let slice = |name: &str, port: u16| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-1"), "namespace": "t", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "p", "port": port}],
            "endpoints": [{"addresses": [P1_IP], "nodeName": NODE_NAME}, {"addresses": [P2_IP], "nodeName": "b"}]}))
        .unwrap()
    };
    (vec![svc("web", VIP, 8080), svc("echo", ECHO_VIP, ECHO_PORT)], vec![slice("web", 8080), slice("echo", ECHO_PORT)])
}

fn node() -> NodeInfo {
    NodeInfo { name: NODE_NAME.into(), ips: vec![NODE_IP.parse().unwrap()] }
}

fn table() -> ServiceTable {
    let (s, e) = objects();
    ServiceTable::build(&s, &e, &node(), &ModelConfig::default())
}

fn cfg(topo: &Topology, cg: &Cgroup2, pins: &BpfPinDir, mode: Mode) -> DatapathConfig {
    DatapathConfig {
        mode,
        node: node(),
        pin_dir: pins.path.clone(),
        cgroup: cg.path.clone(),
        uplink: None,
        nft_table: "keelson".into(),
        nft_netns: Some(topo.node.path()),
    }
}

/// New connections to the VIP reach both backends. Up to three rounds of 8 connections (the union
/// counts): a single round misses one backend by chance 0.8% of the time, and a freshly programmed
/// datapath on a loaded machine may drop the very first connect; a broken datapath fails all rounds.
fn works(topo: &Topology, cg: &Cgroup2) -> bool {
    let want = BTreeSet::from(["p1".to_string(), "p2".to_string()]);
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let (pods, _) = responders(8, || tcp(&topo.client, Some(cg.path.as_path()), VIP, 80));
        seen.extend(pods);
        if seen == want {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!("works(): responders seen {seen:?}");
    false
}

fn restart(mode: Mode) {
    require_root();
    let topo = Topology::new().unwrap();
    let cg = Cgroup2::new().unwrap();
    let pins = BpfPinDir::new().unwrap();
    let c = cfg(&topo, &cg, &pins, mode);
    let mut dp = Datapath::start(&c).unwrap();
    dp.sync(&table()).unwrap();
    assert!(works(&topo, &cg));
    let mut conn = Conn::open(&topo.client, Some(cg.path.as_path()), ECHO_VIP, 80).unwrap();
    assert_eq!(conn.roundtrip("before").unwrap(), "before");
    drop(dp); // the process goes away: only pinned / kernel state remains
    assert_eq!(conn.roundtrip("while-down").unwrap(), "while-down", "open connection survives");
    assert!(works(&topo, &cg), "new connections are balanced while the agent is down");
    let mut dp2 = Datapath::start(&c).unwrap();
    if mode == Mode::Ebpf {
        let rep = dp2.start_report.clone().unwrap();
        assert_eq!(rep.adopted.len(), 4, "all four links adopted: {rep:?}");
        assert!(rep.attached.is_empty(), "nothing re-attached: {rep:?}");
    }
    dp2.sync(&table()).unwrap();
    if mode == Mode::Ebpf {
        let r = dp2.last_ebpf_sync.unwrap();
        assert_eq!((r.full, r.writes, r.deletes), (true, 0, 0), "converged maps are not rewritten");
    }
    assert_eq!(conn.roundtrip("after").unwrap(), "after");
    assert!(works(&topo, &cg));
}

#[test]
fn ebpf_restart_adopts_without_disruption() {
    restart(Mode::Ebpf);
}

#[test]
fn nft_restart_adopts_without_disruption() {
    restart(Mode::Nft);
}

#[test]
fn nft_deleted_table_is_repaired_on_resync() {
    require_root();
    let topo = Topology::new().unwrap();
    let cg = Cgroup2::new().unwrap();
    let pins = BpfPinDir::new().unwrap();
    let mut dp = Datapath::start(&cfg(&topo, &cg, &pins, Mode::Nft)).unwrap();
    dp.sync(&table()).unwrap();
    topo.node.exec_ok(&["nft", "delete", "table", "ip", "keelson"]).unwrap();
    assert!(tcp(&topo.client, None, VIP, 80).is_none(), "tampering took effect");
    dp.check().unwrap();
    dp.sync(&table()).unwrap();
    assert!(works(&topo, &cg));
}

#[test]
fn ebpf_deleted_pins_are_repaired_on_resync() {
    require_root();
    let topo = Topology::new().unwrap();
    let cg = Cgroup2::new().unwrap();
    let pins = BpfPinDir::new().unwrap();
    let mut dp = Datapath::start(&cfg(&topo, &cg, &pins, Mode::Ebpf)).unwrap();
    dp.sync(&table()).unwrap();
    std::fs::remove_file(pins.path.join("link_connect4")).unwrap();
    assert!(tcp(&topo.client, Some(cg.path.as_path()), VIP, 80).is_none(), "link gone: no translation");
    std::fs::remove_file(pins.path.join("kl_be")).unwrap();
    dp.check().unwrap();
    dp.sync(&table()).unwrap();
    assert!(pins.path.join("link_connect4").exists() && pins.path.join("kl_be").exists());
    assert!(works(&topo, &cg));
}

#[test]
fn falls_back_to_nft_when_ebpf_cannot_load() {
    require_root();
    let topo = Topology::new().unwrap();
    let cg = Cgroup2::new().unwrap();
    let pins = BpfPinDir::new().unwrap();
    let mut c = cfg(&topo, &cg, &pins, Mode::Auto);
    c.cgroup = PathBuf::from("/sys/fs/cgroup/unified/keelson-does-not-exist");
    let mut dp = Datapath::start(&c).unwrap();
    assert_eq!(dp.backend(), BackendKind::Nft);
    assert!(dp.fallback_reason.as_deref().unwrap_or("").contains("keelson-does-not-exist"), "{:?}", dp.fallback_reason);
    let m = dp.metrics_text();
    assert!(m.contains("keelson_datapath_backend{backend=\"nft\"} 1"), "{m}");
    assert!(m.contains("keelson_datapath_backend{backend=\"ebpf\"} 0"), "{m}");
    assert!(m.contains("keelson_datapath_fallback 1"), "{m}");
    dp.sync(&table()).unwrap();
    assert!(works(&topo, &cg));
    // Strict eBPF mode reports the failure instead.
    c.mode = Mode::Ebpf;
    assert!(Datapath::start(&c).is_err());
}

#[test]
fn driver_binary_applies_yaml_and_skips_bad_objects() {
    require_root();
    let topo = Topology::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objs.yaml");
    std::fs::write(
        &file,
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: t}}
spec:
  clusterIP: {VIP}
  ports: [{{name: p, port: 80, protocol: TCP}}, {{name: s, port: 81, protocol: SCTP}}]
---
kind: Service
metadata: {{name: broken}}
spec: {{ports: "not-a-list"}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: t
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: p, port: 8080}}]
endpoints:
- addresses: ["{P1_IP}"]
  nodeName: {NODE_NAME}
- addresses: ["127.0.0.1"]
"#
        ),
    )
    .unwrap();
    let bin = keelson_tests::target_dir().join("debug/keelson-datapath");
    let metrics = dir.path().join("metrics.prom");
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", topo.node.path().display()))
        .arg("--")
        .arg(&bin)
        .args(["--once", "--mode", "nft", "--node-name", NODE_NAME, "--node-ip", NODE_IP, "--metrics-file"])
        .arg(&metrics)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {} (build it with cargo build -p keelson-datapath): {e}", bin.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "driver failed: {stderr}");
    assert!(stderr.contains("unsupported protocol SCTP"), "{stderr}");
    assert!(stderr.contains("127.0.0.0/8"), "{stderr}");
    assert!(stderr.contains("malformed object skipped"), "{stderr}");
    let (pods, _) = responders(4, || tcp(&topo.client, None, VIP, 80));
    assert_eq!(pods, BTreeSet::from(["p1".to_string()]));
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        m.contains("keelson_datapath_backend{backend=\"nft\"} 1") && m.contains("keelson_datapath_frontends 1"),
        "{m}"
    );
}

#[test]
fn verifier_rejection_surfaces_the_verifier_log() {
    require_root();
    let pins = BpfPinDir::new().unwrap();
    // The real object passes the verifier: all six programs load.
    let ok = keelson_datapath::ebpf::loader::verify_object(keelson_datapath::ebpf::SOCK_LB_OBJ, &pins.path).unwrap();
    assert_eq!(ok.len(), 6, "{ok:?}");
    // A program dereferencing a scalar is rejected; the error must carry the verifier's reasoning.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("bad.bpf.c");
    std::fs::write(
        &src,
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n\
         SEC(\"cgroup/connect4\") int bad(struct bpf_sock_addr *ctx) { return *(int *)(long)ctx->user_ip4; }\n\
         char LICENSE[] SEC(\"license\") = \"GPL\";\n",
    )
    .unwrap();
    let obj = dir.path().join("bad.bpf.o");
    keelson_tests::run(
        "clang",
        &[
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
            src.to_str().unwrap(),
            "-o",
            obj.to_str().unwrap(),
        ],
    )
    .unwrap();
    let bytes = std::fs::read(&obj).unwrap();
    let err = keelson_datapath::ebpf::loader::verify_object(&bytes, &pins.path).unwrap_err().to_string();
    assert!(err.contains("program bad"), "{err}");
    assert!(err.contains("Verifier output") && err.contains("invalid mem access"), "{err}");
}
