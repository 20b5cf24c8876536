//! eBPF map reconciliation against the fake maps: full == model, incremental == full, adoption keeps
//! ids and writes nothing when converged, failures force a full converge.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::model::Protocol;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use crate::test_fixtures::{slice, svc, table_on};

fn node() -> NodeInfo {
    crate::test_fixtures::node(&["192.168.1.1", "192.168.2.1"])
}

fn table(svcs: &[Service], slices: &[EndpointSlice]) -> ServiceTable {
    table_on(&node(), svcs, slices)
}

fn t1() -> ServiceTable {
    table(
        &[svc("web", "10.96.0.10", json!({"type": "NodePort"})), svc("empty", "10.96.0.12", json!({}))],
        &[slice("web", &[("10.1.0.2", "n1"), ("10.2.0.2", "n2")])],
    )
}

fn t2() -> ServiceTable {
    table(
        &[
            svc("web", "10.96.0.10", json!({})),
            svc("sticky", "10.96.0.11", json!({"sessionAffinity": "ClientIP"})),
            svc("empty", "10.96.0.12", json!({})),
        ],
        &[slice("web", &[("10.2.0.2", "n2")]), slice("sticky", &[("10.1.0.3", "n1"), ("10.1.0.4", "n1")])],
    )
}

fn assert_resolves(maps: &FakeLbMaps, t: &ServiceTable) {
    let mut expected_svc_entries = 0;
    for (k, fe) in &t.frontends {
        let want: Vec<String> = fe.backends.iter().map(|b| format!("{}:{}", b.ip, b.port)).collect();
        let ips: Vec<Ipv4Addr> = match k.addr {
            FrontendAddr::Ip(ip) => vec![ip],
            FrontendAddr::NodePort => node().ips,
        };
        for ip in ips {
            expected_svc_entries += if fe.kind.is_external() { 2 } else { 1 };
            assert_eq!(maps.resolve(ip, k.port, k.proto), Some(want.clone()), "frontend {k} on {ip}");
        }
    }
    assert_eq!(maps.svc.len(), expected_svc_entries, "no stale service entries");
    assert_eq!(maps.be.len(), t.backend_count(), "no stale backend slots");
}

#[test]
fn full_sync_matches_model_including_nodeports_on_every_node_ip() {
    let mut p = EbpfProxier::new(FakeLbMaps::default(), node());
    let r = p.sync(&t1()).unwrap();
    assert!(r.full);
    assert_resolves(&p.maps, &t1());
    assert_eq!(p.maps.resolve("192.168.2.1".parse().unwrap(), 30010, Protocol::Tcp).unwrap().len(), 2);
    assert_eq!(p.maps.resolve("10.96.0.12".parse().unwrap(), 80, Protocol::Tcp), Some(vec![]), "refused");
    assert_eq!(p.maps.resolve("10.96.0.12".parse().unwrap(), 80, Protocol::Udp), None);
}

#[test]
fn incremental_updates_converge_like_full() {
    let mut p = EbpfProxier::new(FakeLbMaps::default(), node());
    for (i, t) in [t1(), t2(), ServiceTable::default(), t2(), t1()].iter().enumerate() {
        let r = p.sync(t).unwrap();
        assert_eq!(r.full, i == 0);
        assert_resolves(&p.maps, t);
    }
    let sticky = p.maps.svc.values().find(|v| v.affinity_secs != 0);
    assert!(sticky.is_none(), "t1 has no affinity service");
}

#[test]
fn one_endpoint_change_touches_only_that_frontend() {
    let mut p = EbpfProxier::new(FakeLbMaps::default(), node());
    p.sync(&t2()).unwrap();
    let before = p.maps.writes;
    let next = table(
        &[
            svc("web", "10.96.0.10", json!({})),
            svc("sticky", "10.96.0.11", json!({"sessionAffinity": "ClientIP"})),
            svc("empty", "10.96.0.12", json!({})),
        ],
        &[slice("web", &[("10.2.0.2", "n2")]), slice("sticky", &[("10.1.0.3", "n1")])],
    );
    let r = p.sync(&next).unwrap();
    assert_eq!((r.writes, r.deletes), (2, 1), "1 slot rewrite + 1 service entry, 1 slot delete");
    assert_eq!(p.maps.writes - before, 3);
    assert_resolves(&p.maps, &next);
}

#[test]
fn restart_adopts_maps_without_rewriting() {
    let mut p = EbpfProxier::new(FakeLbMaps::default(), node());
    p.sync(&t2()).unwrap();
    let kernel = p.maps.clone();
    // A new process with the same pinned maps and the same desired table writes nothing.
    let mut p2 = EbpfProxier::new(kernel.clone(), node());
    let r = p2.sync(&t2()).unwrap();
    assert_eq!((r.full, r.writes, r.deletes), (true, 0, 0));
    assert_eq!(p2.maps.svc, kernel.svc, "ids kept");
    // Then with a changed table: converges, deleting stale entries, keeping surviving ids.
    let mut p3 = EbpfProxier::new(kernel.clone(), node());
    p3.sync(&t1()).unwrap();
    assert_resolves(&p3.maps, &t1());
    let k = SvcKey { addr: net_addr("10.96.0.10".parse().unwrap()), port: net_port(80), proto: 6, scope: 0 };
    assert_eq!(p3.maps.svc[&k].id, kernel.svc[&k].id, "surviving frontend keeps its id");
    // Incremental after adoption works.
    p3.sync(&t2()).unwrap();
    assert_resolves(&p3.maps, &t2());
}

#[test]
fn failed_write_forces_full_converge() {
    let mut p = EbpfProxier::new(FakeLbMaps::default(), node());
    p.sync(&t1()).unwrap();
    p.maps.fail_next = Some("ENOMEM".into());
    assert!(p.sync(&t2()).is_err());
    let r = p.sync(&t2()).unwrap();
    assert!(r.full);
    assert_resolves(&p.maps, &t2());
}

#[test]
fn tampered_map_entries_are_repaired_by_full_sync() {
    let mut p = EbpfProxier::new(FakeLbMaps::default(), node());
    p.sync(&t2()).unwrap();
    p.maps.svc.clear();
    p.maps.be.insert(BeKey { id: 999, slot: 0 }, BeVal { addr: 1, port: 1, pad: 0 });
    p.request_full_sync();
    p.sync(&t2()).unwrap();
    assert_resolves(&p.maps, &t2());
}

#[test]
fn external_frontends_get_tc_scope_entries_with_masquerade_flag() {
    let mut p = EbpfProxier::new(FakeLbMaps::default(), node());
    let t = table(
        &[
            svc("c", "10.96.0.10", json!({"type": "NodePort"})),
            svc("l", "10.96.0.11", json!({"type": "NodePort", "externalTrafficPolicy": "Local"})),
        ],
        &[slice("c", &[("10.1.0.2", "n1")]), slice("l", &[("10.1.0.3", "n1")])],
    );
    p.sync(&t).unwrap();
    let ext: Vec<&SvcVal> = p.maps.svc.iter().filter(|(k, _)| k.scope == SCOPE_EXTERNAL).map(|(_, v)| v).collect();
    assert_eq!(ext.len(), 4, "two NodePorts on two node IPs");
    assert_eq!(ext.iter().filter(|v| v.flags & FLAG_MASQUERADE != 0).count(), 2, "only the Cluster-policy one");
    let no_ext = p.maps.svc.keys().filter(|k| k.scope == SCOPE_EXTERNAL && k.port == net_port(80)).count();
    assert_eq!(no_ext, 0, "ClusterIPs are never reachable from outside");
    // Type change to ClusterIP removes the external entries incrementally.
    let t2 = table(&[svc("c", "10.96.0.10", json!({})), svc("l", "10.96.0.11", json!({}))], &[]);
    p.sync(&t2).unwrap();
    assert!(p.maps.svc.keys().all(|k| k.scope == SCOPE_SOCKET));
    assert_resolves(&p.maps, &t2);
}

#[test]
fn c_struct_layout_matches() {
    assert_eq!(std::mem::size_of::<SvcKey>(), 8);
    assert_eq!(std::mem::size_of::<SvcVal>(), 12);
    assert_eq!(std::mem::size_of::<BeKey>(), 8);
    assert_eq!(std::mem::size_of::<BeVal>(), 8);
}

#[test]
fn object_is_embedded() {
    assert!(!SOCK_LB_OBJ.is_empty(), "clang should have built bpf/sock_lb.bpf.c");
    assert_eq!(&SOCK_LB_OBJ[..4], b"\x7fELF");
}
