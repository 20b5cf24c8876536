//! Unit tests of the service model across the matrix endpoint condition × traffic policy × locality,
//! plus every kind of bad input.
#![allow(clippy::unwrap_used)]

use super::*;
use serde_json::{Value, json};

fn node() -> NodeInfo {
    NodeInfo { name: "n1".into(), ips: vec!["192.168.1.1".parse().unwrap()] }
}

fn svc(name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})).unwrap()
}

/// An endpoint: (ip, node, ready, serving, terminating).
type Ep<'a> = (&'a str, &'a str, Option<bool>, Option<bool>, Option<bool>);

fn slice(svc_name: &str, ports: Value, eps: &[Ep<'_>]) -> EndpointSlice {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, node, r, s, t)| {
            json!({"addresses": [ip], "nodeName": node,
                   "conditions": {"ready": r, "serving": s, "terminating": t}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{svc_name}-abc"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc_name}},
        "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
    }))
    .unwrap()
}

fn web_ports() -> Value {
    json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
}

fn cip(ip: &str, port: u16, proto: Protocol) -> FrontendKey {
    FrontendKey { addr: FrontendAddr::Ip(ip.parse().unwrap()), port, proto }
}

fn ips(fe: &Frontend) -> Vec<String> {
    fe.backends.iter().map(|b| format!("{}:{}", b.ip, b.port)).collect()
}

fn build(svcs: &[Service], slices: &[EndpointSlice]) -> ServiceTable {
    ServiceTable::build(svcs, slices, &node(), &ModelConfig::default())
}

fn basic_svc(extra: Value) -> Service {
    let mut spec = json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    svc("web", spec)
}

#[test]
fn clusterip_ready_endpoints_sorted_and_deduplicated() {
    let t = build(
        &[basic_svc(json!({}))],
        &[slice(
            "web",
            web_ports(),
            &[
                ("10.1.0.3", "n2", Some(true), None, None),
                ("10.1.0.2", "n1", None, None, None),
                ("10.1.0.2", "n1", Some(true), None, None),
            ],
        )],
    );
    let fe = &t.frontends[&cip("10.96.0.10", 80, Protocol::Tcp)];
    assert_eq!(ips(fe), vec!["10.1.0.2:8080", "10.1.0.3:8080"]);
    assert!(fe.backends[0].local && !fe.backends[1].local);
    assert_eq!(fe.kind, FrontendKind::ClusterIp);
    assert_eq!(fe.affinity_timeout_s, None);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
}

/// The matrix: (condition of the local endpoint, condition of the remote endpoint, policy Local?) →
/// expected backends. Conditions: R = ready, ST = serving+terminating, NR = not ready, not serving.
#[test]
fn selection_matrix_condition_x_policy_x_locality() {
    #[derive(Clone, Copy, Debug)]
    enum C {
        R,
        ST,
        NR,
    }
    let cond = |c: C| match c {
        C::R => (Some(true), Some(true), Some(false)),
        C::ST => (Some(false), Some(true), Some(true)),
        C::NR => (Some(false), Some(false), Some(false)),
    };
    let cases: &[(C, C, bool, &[&str])] = &[
        (C::R, C::R, false, &["10.1.0.1:8080", "10.2.0.1:8080"]),
        (C::R, C::R, true, &["10.1.0.1:8080"]),
        (C::R, C::ST, false, &["10.1.0.1:8080"]),
        (C::ST, C::R, false, &["10.2.0.1:8080"]),
        (C::ST, C::R, true, &["10.1.0.1:8080"]), // local pool has no ready → local terminating
        (C::ST, C::ST, false, &["10.1.0.1:8080", "10.2.0.1:8080"]),
        (C::NR, C::R, true, &[]), // Local with no local endpoint: drop, never remote
        (C::NR, C::R, false, &["10.2.0.1:8080"]),
        (C::NR, C::NR, false, &[]),
        (C::NR, C::ST, false, &["10.2.0.1:8080"]),
        (C::NR, C::ST, true, &[]),
        (C::R, C::NR, true, &["10.1.0.1:8080"]),
    ];
    for &(local, remote, policy_local, want) in cases {
        for external in [false, true] {
            let pol = if policy_local { "Local" } else { "Cluster" };
            let extra = if external {
                json!({"type": "NodePort", "externalTrafficPolicy": pol,
                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})
            } else {
                json!({"internalTrafficPolicy": pol})
            };
            let (lr, ls, lt) = cond(local);
            let (rr, rs, rt) = cond(remote);
            let t = build(
                &[basic_svc(extra)],
                &[slice("web", web_ports(), &[("10.1.0.1", "n1", lr, ls, lt), ("10.2.0.1", "n2", rr, rs, rt)])],
            );
            let key = if external {
                FrontendKey { addr: FrontendAddr::NodePort, port: 30080, proto: Protocol::Tcp }
            } else {
                cip("10.96.0.10", 80, Protocol::Tcp)
            };
            let fe = &t.frontends[&key];
            assert_eq!(
                ips(fe),
                want,
                "case local={local:?} remote={remote:?} local_policy={policy_local} ext={external}"
            );
            if external {
                assert_eq!(fe.masquerade_external, !policy_local);
                // externalTrafficPolicy never restricts the ClusterIP.
                let c = &t.frontends[&cip("10.96.0.10", 80, Protocol::Tcp)];
                let want_c: Vec<&str> = match (local, remote) {
                    (C::R, C::R) | (C::ST, C::ST) => vec!["10.1.0.1:8080", "10.2.0.1:8080"],
                    (C::R, _) => vec!["10.1.0.1:8080"],
                    (_, C::R) => vec!["10.2.0.1:8080"],
                    (C::NR, C::ST) => vec!["10.2.0.1:8080"],
                    (C::ST, C::NR) => vec!["10.1.0.1:8080"],
                    (C::NR, C::NR) => vec![],
                };
                assert_eq!(ips(c), want_c, "clusterIP under externalTrafficPolicy={pol}");
            }
        }
    }
}

#[test]
fn ports_match_by_name_and_protocol() {
    let s = svc(
        "dns",
        json!({"clusterIP": "10.96.0.53", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "metrics", "port": 9153}]}),
    );
    let sl = slice(
        "dns",
        json!([{"name": "dns", "port": 5353, "protocol": "UDP"},
               {"name": "dns-tcp", "port": 5354, "protocol": "TCP"},
               {"name": "metrics", "port": 9154}]),
        &[("10.1.0.9", "n1", None, None, None)],
    );
    let t = build(&[s], &[sl]);
    assert_eq!(ips(&t.frontends[&cip("10.96.0.53", 53, Protocol::Udp)]), vec!["10.1.0.9:5353"]);
    assert_eq!(ips(&t.frontends[&cip("10.96.0.53", 53, Protocol::Tcp)]), vec!["10.1.0.9:5354"]);
    assert_eq!(ips(&t.frontends[&cip("10.96.0.53", 9153, Protocol::Tcp)]), vec!["10.1.0.9:9154"]);
    assert_eq!(t.frontends.len(), 3);
}

#[test]
fn unnamed_port_matches_unnamed_slice_port() {
    let s = svc("a", json!({"clusterIP": "10.96.0.1", "ports": [{"port": 443}]}));
    let sl = slice("a", json!([{"port": 6443}]), &[("10.1.0.1", "n2", None, None, None)]);
    let t = build(&[s], &[sl]);
    let fe = &t.frontends[&cip("10.96.0.1", 443, Protocol::Tcp)];
    assert_eq!(ips(fe), vec!["10.1.0.1:6443"]);
    assert_eq!(fe.service.to_string(), "default/a:");
}

#[test]
fn sctp_port_rejected_other_ports_kept() {
    let s = svc(
        "m",
        json!({"clusterIP": "10.96.0.7", "ports": [
            {"name": "s", "port": 9, "protocol": "SCTP"}, {"name": "t", "port": 10}]}),
    );
    let t = build(&[s], &[]);
    assert_eq!(t.frontends.len(), 1);
    assert!(t.frontends.contains_key(&cip("10.96.0.7", 10, Protocol::Tcp)));
    assert_eq!(t.errors.len(), 1);
    let msg = t.errors[0].to_string();
    assert!(msg.contains("unsupported protocol SCTP") && msg.contains("port s"), "{msg}");
}

#[test]
fn invalid_ports_and_nodeports_skipped() {
    let s = svc(
        "bad",
        json!({"clusterIP": "10.96.0.8", "type": "NodePort", "ports": [
            {"name": "zero", "port": 0}, {"name": "big", "port": 70000},
            {"name": "np", "port": 81, "nodePort": 99999}, {"name": "dup", "port": 82}, {"name": "dup", "port": 83}]}),
    );
    let t = build(&[s], &[]);
    let keys: Vec<String> = t.frontends.keys().map(|k| k.to_string()).collect();
    assert_eq!(keys, vec!["10.96.0.8:81/tcp", "10.96.0.8:82/tcp"]);
    assert_eq!(t.errors.len(), 4, "{:#?}", t.errors);
    assert!(matches!(t.errors[2], ModelError::InvalidNodePort { value: 99999, .. }));
    assert!(matches!(t.errors[3], ModelError::DuplicatePort { .. }));
}

#[test]
fn nodeport_conflict_first_service_by_name_wins() {
    let a = svc("a", json!({"clusterIP": "10.96.0.1", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30000}]}));
    let b = svc("b", json!({"clusterIP": "10.96.0.2", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30000}]}));
    // Input order must not matter.
    let t = build(&[b, a], &[]);
    let np = &t.frontends[&FrontendKey { addr: FrontendAddr::NodePort, port: 30000, proto: Protocol::Tcp }];
    assert_eq!(np.service.name, "a");
    assert!(t.frontends.contains_key(&cip("10.96.0.2", 80, Protocol::Tcp)), "b's ClusterIP is unaffected");
    assert_eq!(t.errors.len(), 1);
    assert!(matches!(&t.errors[0], ModelError::FrontendConflict { service, owner, .. }
        if service == "default/b" && owner == "default/a:"));
}

#[test]
fn nodeport_same_number_different_protocol_is_not_a_conflict() {
    let s = svc(
        "d",
        json!({"clusterIP": "10.96.0.1", "type": "NodePort", "ports": [
            {"name": "u", "port": 53, "protocol": "UDP", "nodePort": 30053},
            {"name": "t", "port": 53, "protocol": "TCP", "nodePort": 30053}]}),
    );
    let t = build(&[s], &[]);
    assert_eq!(t.frontends.len(), 4);
    assert!(t.errors.is_empty());
}

#[test]
fn clusterip_type_ignores_nodeport_field() {
    let s = svc("c", json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "nodePort": 30001}]}));
    assert_eq!(build(&[s], &[]).frontends.len(), 1);
}

#[test]
fn external_ips_only_when_allowed() {
    let s = basic_svc(json!({"externalIPs": ["203.0.113.5", "garbage"]}));
    let denied = build(std::slice::from_ref(&s), &[]);
    assert_eq!(denied.frontends.len(), 1);
    assert_eq!(denied.errors.len(), 2);
    assert!(denied.errors[0].to_string().contains("CVE-2020-8554"));
    let allowed = ServiceTable::build(&[s], &[], &node(), &ModelConfig { allow_external_ips: true });
    let fe = &allowed.frontends[&cip("203.0.113.5", 80, Protocol::Tcp)];
    assert_eq!(fe.kind, FrontendKind::ExternalIp);
    assert!(fe.masquerade_external);
    assert_eq!(allowed.errors.len(), 1, "the unparsable address is reported");
}

#[test]
fn loadbalancer_ingress_ips_and_nodeport() {
    let mut s = basic_svc(json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
        "ports": [{"name": "http", "port": 80, "nodePort": 31000}]}));
    s.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [
            {"ip": "198.51.100.1"}, {"hostname": "lb.example"}, {"ip": "198.51.100.2", "ipMode": "Proxy"}]}}))
        .unwrap(),
    );
    let t = build(&[s], &[slice("web", web_ports(), &[("10.2.0.1", "n2", None, None, None)])]);
    let lb = &t.frontends[&cip("198.51.100.1", 80, Protocol::Tcp)];
    assert_eq!(lb.kind, FrontendKind::LoadBalancer);
    assert!(lb.backends.is_empty(), "Local policy, only a remote endpoint: drop");
    assert!(!lb.masquerade_external);
    assert!(!t.frontends.contains_key(&cip("198.51.100.2", 80, Protocol::Tcp)));
    assert_eq!(ips(&t.frontends[&cip("10.96.0.10", 80, Protocol::Tcp)]), vec!["10.2.0.1:8080"]);
    assert_eq!(t.frontends.len(), 3);
}

#[test]
fn session_affinity_default_custom_and_invalid() {
    let d = build(&[basic_svc(json!({"sessionAffinity": "ClientIP"}))], &[]);
    assert_eq!(d.frontends.values().next().unwrap().affinity_timeout_s, Some(10_800));
    let c = build(
        &[basic_svc(json!({"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}))],
        &[],
    );
    assert_eq!(c.frontends.values().next().unwrap().affinity_timeout_s, Some(60));
    let bad = build(
        &[basic_svc(json!({"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}))],
        &[],
    );
    assert!(bad.frontends.is_empty());
    assert!(matches!(bad.errors[0], ModelError::BadAffinityTimeout { value: 0, .. }));
    let none = build(&[basic_svc(json!({"sessionAffinity": "None"}))], &[]);
    assert_eq!(none.frontends.values().next().unwrap().affinity_timeout_s, None);
}

#[test]
fn headless_externalname_and_unallocated_skipped_silently() {
    let headless = svc("h", json!({"clusterIP": "None", "ports": [{"port": 80}]}));
    let extname = svc("e", json!({"type": "ExternalName", "externalName": "example.com"}));
    let pending = svc("p", json!({"ports": [{"port": 80}]}));
    let v6 = svc("v6", json!({"clusterIP": "fd00::1", "ports": [{"port": 80}]}));
    let t = build(&[headless, extname, pending, v6], &[]);
    assert!(t.frontends.is_empty());
    assert!(t.errors.is_empty(), "{:?}", t.errors);
}

#[test]
fn malformed_services_reported_not_fatal() {
    let noname: Service = serde_json::from_value(json!({"metadata": {}, "spec": {"clusterIP": "10.96.0.1"}})).unwrap();
    let nospec: Service = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    let badip = svc("y", json!({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}));
    let good = svc("z", json!({"clusterIP": "10.96.0.4", "ports": [{"port": 80}]}));
    let t = build(&[noname, nospec, badip, good], &[]);
    assert_eq!(t.frontends.len(), 1);
    assert_eq!(t.errors.len(), 3, "{:#?}", t.errors);
}

#[test]
fn forbidden_endpoint_ranges_rejected() {
    let t = build(
        &[basic_svc(json!({}))],
        &[slice(
            "web",
            web_ports(),
            &[
                ("127.0.0.1", "n1", None, None, None),
                ("169.254.169.254", "n1", None, None, None),
                ("0.0.0.0", "n1", None, None, None),
                ("not-an-ip", "n1", None, None, None),
                ("10.1.0.5", "n1", None, None, None),
            ],
        )],
    );
    assert_eq!(ips(&t.frontends[&cip("10.96.0.10", 80, Protocol::Tcp)]), vec!["10.1.0.5:8080"]);
    assert_eq!(t.errors.len(), 4);
    assert!(t.errors[0].to_string().contains("127.0.0.0/8"));
    assert!(t.errors[1].to_string().contains("169.254.0.0/16"));
}

#[test]
fn bad_slices_skipped() {
    let mut unlabeled = slice("web", web_ports(), &[("10.1.0.1", "n1", None, None, None)]);
    unlabeled.metadata.labels = None;
    let mut v6 = slice("web", web_ports(), &[("fd00::1", "n1", None, None, None)]);
    v6.address_type = "IPv6".into();
    let badport = slice("web", json!([{"name": "http", "port": 0}]), &[("10.1.0.2", "n1", None, None, None)]);
    let t = build(&[basic_svc(json!({}))], &[unlabeled, v6, badport]);
    assert!(t.frontends.values().next().unwrap().backends.is_empty());
    assert_eq!(t.errors.len(), 2, "{:#?}", t.errors);
}

#[test]
fn endpoints_from_multiple_slices_are_merged() {
    let mut s2 = slice("web", web_ports(), &[("10.1.0.7", "n2", None, None, None)]);
    s2.metadata.name = Some("web-def".into());
    let t = build(&[basic_svc(json!({}))], &[slice("web", web_ports(), &[("10.1.0.6", "n1", None, None, None)]), s2]);
    assert_eq!(ips(&t.frontends[&cip("10.96.0.10", 80, Protocol::Tcp)]), vec!["10.1.0.6:8080", "10.1.0.7:8080"]);
}

#[test]
fn slice_in_other_namespace_does_not_leak() {
    let mut other = slice("web", web_ports(), &[("10.1.0.6", "n1", None, None, None)]);
    other.metadata.namespace = Some("prod".into());
    let t = build(&[basic_svc(json!({}))], &[other]);
    assert!(t.frontends.values().next().unwrap().backends.is_empty());
}

#[test]
fn diff_is_minimal() {
    let s1 = svc("a", json!({"clusterIP": "10.96.0.1", "ports": [{"name": "p", "port": 80}]}));
    let s2 = svc("b", json!({"clusterIP": "10.96.0.2", "ports": [{"name": "p", "port": 80}]}));
    let s3 = svc("c", json!({"clusterIP": "10.96.0.3", "ports": [{"name": "p", "port": 80}]}));
    let ports = json!([{"name": "p", "port": 8080}]);
    let old = build(
        &[s1.clone(), s2.clone()],
        &[
            slice("a", ports.clone(), &[("10.1.0.1", "n1", None, None, None)]),
            slice("b", ports.clone(), &[("10.1.0.2", "n1", None, None, None)]),
        ],
    );
    assert!(ServiceTable::diff(&old, &old).is_empty());
    let new = build(
        &[s1, s3],
        &[
            slice("a", ports.clone(), &[("10.1.0.1", "n1", None, None, None), ("10.1.0.9", "n2", None, None, None)]),
            slice("c", ports, &[]),
        ],
    );
    let changes = ServiceTable::diff(&old, &new);
    let shown: Vec<String> = changes
        .iter()
        .map(|c| match c {
            Change::Upsert(k, f) => format!("+{k}={}", f.backends.len()),
            Change::Remove(k) => format!("-{k}"),
        })
        .collect();
    assert_eq!(shown, vec!["+10.96.0.1:80/tcp=2", "+10.96.0.3:80/tcp=0", "-10.96.0.2:80/tcp"]);
    // Applying the diff to old yields new.
    let mut applied = old.frontends.clone();
    for c in changes {
        match c {
            Change::Upsert(k, f) => {
                applied.insert(k, f);
            }
            Change::Remove(k) => {
                applied.remove(&k);
            }
        }
    }
    assert_eq!(applied, new.frontends);
}

#[test]
fn build_is_deterministic_under_input_order() {
    let a = svc("a", json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}));
    let b = svc("b", json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}));
    assert_eq!(build(&[a.clone(), b.clone()], &[]), build(&[b, a], &[]));
}
