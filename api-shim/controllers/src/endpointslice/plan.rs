//! Which endpoints a Service has and how they are cut into EndpointSlices, as pure functions.
//!
//! Upstream's rules (`k8s.io/endpointslice`): a pod is an endpoint of a Service when the
//! selector matches, it is not terminal (Succeeded/Failed) and it has an IP of the slice's
//! address family. Terminating pods stay in the slices (so that proxies can drain them):
//! `serving` is the pod's Ready condition, `terminating` its deletionTimestamp, and `ready` is
//! `serving && !terminating` unless the Service sets `publishNotReadyAddresses`, which makes
//! every endpoint ready. Named target ports are resolved per pod against its container ports,
//! so pods that name a port differently land in different slices (one port set per slice); a
//! pod without the named port is left out of that port's slices. Slices hold at most
//! [`MAX_ENDPOINTS`] endpoints; a Service without endpoints keeps one empty placeholder slice
//! per address family, as upstream does, so that clients can tell "no endpoints" from "not
//! processed yet".
//!
//! [`diff`] turns the desired slices into creates, updates and deletes of the existing ones.
//! It pairs existing and desired slices of the same port set in name order, so an unchanged
//! Service writes nothing.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// At most this many endpoints per slice (upstream's `--max-endpoints-per-slice` default).
pub const MAX_ENDPOINTS: usize = 100;
/// The label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label naming the controller that manages a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's [`MANAGED_BY`] value.
pub const CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// The label set on the slices (and Endpoints) of a headless Service.
pub const HEADLESS: &str = "service.kubernetes.io/headless";

/// One slice as it should be: its address family, port set and endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub address_type: String,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

/// One write of the reconciler.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create a slice (`metadata.generateName` is set, `name` is not).
    Create(EndpointSlice),
    /// Replace an existing slice (its resourceVersion kept, so a concurrent change conflicts).
    Update(EndpointSlice),
    /// Delete the slice with this name.
    Delete(String),
}

/// Does a Service's `spec.selector` select these labels? An empty selector selects nothing
/// (such Services are not managed by this controller).
pub fn selects(selector: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Is the pod's `Ready` condition `True`?
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Succeeded or Failed: the pod will never serve again.
pub fn pod_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The pod's IPs (`status.podIPs`, else `status.podIP`).
pub fn pod_ips(pod: &Pod) -> Vec<String> {
    let Some(s) = pod.status.as_ref() else { return Vec::new() };
    let ips: Vec<String> = s.pod_ips.iter().flatten().map(|p| p.ip.clone()).filter(|ip| !ip.is_empty()).collect();
    if ips.is_empty() { s.pod_ip.iter().filter(|ip| !ip.is_empty()).cloned().collect() } else { ips }
}

/// `IPv4` or `IPv6` for an address, `None` if it is not an IP.
pub fn family(ip: &str) -> Option<&'static str> {
    match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(_) => Some("IPv4"),
        std::net::IpAddr::V6(_) => Some("IPv6"),
    }
}

/// The Service's address families (`spec.ipFamilies`, default IPv4).
pub fn families(svc: &Service) -> Vec<String> {
    let f: Vec<String> = svc.spec.as_ref().and_then(|s| s.ip_families.clone()).unwrap_or_default();
    if f.is_empty() { vec!["IPv4".to_string()] } else { f }
}

/// The container port a Service port's `targetPort` means on this pod: a number as is, a name
/// looked up among the pod's container ports of the same protocol, absent → `port`.
pub fn target_port(pod: &Pod, target: Option<&IntOrString>, port: i32, protocol: &str) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(s)) => match s.parse::<i32>() {
            Ok(n) => Some(n),
            Err(_) => pod.spec.as_ref()?.containers.iter().flat_map(|c| c.ports.iter().flatten()).find_map(|p| {
                (p.name.as_deref() == Some(s.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                    .then_some(p.container_port)
            }),
        },
    }
}

/// The endpoint ports of one pod: every Service port whose target resolves on it.
pub fn pod_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let mut out: Vec<EndpointPort> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".to_string());
            let n = target_port(pod, p.target_port.as_ref(), p.port, &protocol)?;
            Some(EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(n),
                protocol: Some(protocol),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.name, a.port, &a.protocol).cmp(&(&b.name, b.port, &b.protocol)));
    out
}

/// Should this pod be an endpoint at all (`ShouldPodBeInEndpoints` upstream)?
pub fn eligible(pod: &Pod, include_terminating: bool) -> bool {
    !pod_terminal(pod) && !pod_ips(pod).is_empty() && (include_terminating || pod.metadata.deletion_timestamp.is_none())
}

/// Upstream's hostname rule: set when the pod names this Service as its subdomain.
pub fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let h = spec.hostname.clone().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref() && pod.metadata.namespace == svc.metadata.namespace)
        .then_some(h)
}

/// A slice's identity for pairing: its address type and port set (name, port, protocol,
/// appProtocol).
pub type GroupKey = (String, Vec<(String, i32, String, String)>);

fn port_key(ports: &[EndpointPort]) -> Vec<(String, i32, String, String)> {
    ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or_default(),
                p.protocol.clone().unwrap_or_default(),
                p.app_protocol.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn endpoint_sort_key(e: &Endpoint) -> (String, String) {
    (e.target_ref.as_ref().and_then(|r| r.name.clone()).unwrap_or_default(), e.addresses.join(","))
}

/// Cuts grouped endpoints into slices of at most [`MAX_ENDPOINTS`]; families without any
/// endpoint get one empty placeholder.
pub fn cut(groups: BTreeMap<GroupKey, Desired>, fams: &[String]) -> Vec<Desired> {
    let mut out = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for (_, mut d) in groups {
        seen.insert(d.address_type.clone());
        d.endpoints.sort_by_key(endpoint_sort_key);
        for chunk in d.endpoints.chunks(MAX_ENDPOINTS) {
            out.push(Desired {
                address_type: d.address_type.clone(),
                ports: d.ports.clone(),
                endpoints: chunk.to_vec(),
            });
        }
    }
    for f in fams {
        if !seen.contains(f) {
            out.push(Desired { address_type: f.clone(), ports: Vec::new(), endpoints: Vec::new() });
        }
    }
    out
}

/// The slices a Service with a selector should have, given the pods of its namespace (pods the
/// selector does not match are ignored here too).
pub fn desired(svc: &Service, pods: &[Pod]) -> Vec<Desired> {
    let spec = svc.spec.clone().unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses == Some(true);
    let fams = families(svc);
    let mut groups: BTreeMap<GroupKey, Desired> = BTreeMap::new();
    for pod in pods {
        if pod.metadata.namespace != svc.metadata.namespace
            || !selects(&selector, pod.metadata.labels.as_ref())
            || !eligible(pod, true)
        {
            continue;
        }
        let ports = pod_ports(svc, pod);
        // A Service with ports but none resolvable on this pod: the pod serves none of them.
        if ports.is_empty() && spec.ports.as_ref().is_some_and(|p| !p.is_empty()) {
            continue;
        }
        let serving = pod_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = publish || (serving && !terminating);
        let ips = pod_ips(pod);
        for fam in &fams {
            // Upstream takes the pod's first IP of the family.
            let Some(ip) = ips.iter().find(|ip| family(ip) == Some(fam.as_str())) else { continue };
            let ep = Endpoint {
                addresses: vec![ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(serving),
                    terminating: Some(terminating),
                }),
                hostname: hostname(svc, pod),
                node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
                target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: pod.metadata.namespace.clone(),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            groups
                .entry((fam.clone(), port_key(&ports)))
                .or_insert_with(|| Desired { address_type: fam.clone(), ports: ports.clone(), endpoints: Vec::new() })
                .endpoints
                .push(ep);
        }
    }
    cut(groups, &fams)
}

/// The labels every slice of this Service carries: the Service's own labels, the Service name,
/// the manager and, for a headless Service, the headless marker.
pub fn labels(svc: &Service, managed_by: &str) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = svc.metadata.labels.clone().unwrap_or_default();
    l.remove(HEADLESS);
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        l.insert(HEADLESS.into(), String::new());
    }
    l.insert(SERVICE_NAME.into(), svc.metadata.name.clone().unwrap_or_default());
    l.insert(MANAGED_BY.into(), managed_by.into());
    l
}

/// How the planned slices are owned and labelled.
#[derive(Debug, Clone)]
pub struct Meta {
    pub namespace: String,
    /// `metadata.generateName` prefix of new slices (`<service>-`).
    pub prefix: String,
    pub labels: BTreeMap<String, String>,
    pub owner: OwnerReference,
}

/// The writes that turn `existing` (the slices this manager owns for the Service) into `want`.
pub fn diff(meta: &Meta, want: Vec<Desired>, existing: &[EndpointSlice]) -> Vec<Op> {
    let mut have: BTreeMap<GroupKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in existing {
        have.entry((s.address_type.clone(), port_key(s.ports.as_deref().unwrap_or_default()))).or_default().push(s);
    }
    for v in have.values_mut() {
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    let mut ops = Vec::new();
    let mut used: BTreeMap<GroupKey, usize> = BTreeMap::new();
    for d in want {
        let key = (d.address_type.clone(), port_key(&d.ports));
        let i = used.entry(key.clone()).or_default();
        let old = have.get(&key).and_then(|v| v.get(*i)).copied();
        *i += 1;
        let ports = (!d.ports.is_empty()).then(|| d.ports.clone());
        match old {
            Some(s) => {
                let same_labels = s.metadata.labels.as_ref() == Some(&meta.labels);
                let owned = s.metadata.owner_references.iter().flatten().any(|o| o.uid == meta.owner.uid);
                if s.endpoints != d.endpoints
                    || s.ports.clone().unwrap_or_default() != d.ports
                    || !same_labels
                    || !owned
                {
                    let mut n = s.clone();
                    n.endpoints = d.endpoints;
                    n.ports = ports;
                    n.metadata.labels = Some(meta.labels.clone());
                    if !owned {
                        n.metadata.owner_references = Some(vec![meta.owner.clone()]);
                    }
                    ops.push(Op::Update(n));
                }
            }
            None => ops.push(Op::Create(EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(meta.prefix.clone()),
                    namespace: Some(meta.namespace.clone()),
                    labels: Some(meta.labels.clone()),
                    owner_references: Some(vec![meta.owner.clone()]),
                    ..Default::default()
                },
                address_type: d.address_type,
                endpoints: d.endpoints,
                ports,
            })),
        }
    }
    for (key, slices) in &have {
        let n = used.get(key).copied().unwrap_or_default();
        for s in slices.iter().skip(n) {
            if let Some(name) = &s.metadata.name {
                ops.push(Op::Delete(name.clone()));
            }
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        let mut base = json!({"metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid", "labels": {"app": "web"}},
                              "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
        merge(&mut base, v);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), &b) {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(x) if x.is_object() && v.is_object() => merge(x, v.clone()),
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("{name}-uid"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"name": port_name, "containerPort": port}]}]},
            "status": {"phase": "Running", "podIPs": [{"ip": ip}], "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    fn cond(e: &Endpoint) -> (bool, bool, bool) {
        let c = e.conditions.clone().unwrap();
        (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let mut terminating = pod("c", "10.0.0.3", true, "http", 8080);
        terminating.metadata.deletion_timestamp = Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        let mut done = pod("d", "10.0.0.4", true, "http", 8080);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut no_ip = pod("e", "", true, "http", 8080);
        no_ip.status.as_mut().unwrap().pod_ips = None;
        let pods = vec![
            pod("a", "10.0.0.1", true, "http", 8080),
            pod("b", "10.0.0.2", false, "http", 8080),
            terminating,
            done,
            no_ip,
        ];
        let d = desired(&svc(json!({})), &pods);
        assert_eq!(d.len(), 1);
        let eps = &d[0].endpoints;
        assert_eq!(
            eps.iter().map(|e| e.addresses[0].as_str()).collect::<Vec<_>>(),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        assert_eq!(cond(&eps[0]), (true, true, false));
        assert_eq!(cond(&eps[1]), (false, false, false));
        assert_eq!(cond(&eps[2]), (false, true, true), "terminating: serving but not ready");
        assert_eq!(eps[0].node_name.as_deref(), Some("n1"));
        assert_eq!(eps[0].target_ref.as_ref().unwrap().uid.as_deref(), Some("a-uid"));
        assert_eq!(d[0].ports[0].port, Some(8080));
        assert_eq!(d[0].ports[0].name.as_deref(), Some("http"));

        // publishNotReadyAddresses: everything that is an endpoint is ready.
        let d = desired(&svc(json!({"spec": {"publishNotReadyAddresses": true}})), &pods);
        assert!(d[0].endpoints.iter().all(|e| cond(e).0));
    }

    #[test]
    fn named_ports_resolve_per_pod_into_separate_slices() {
        let pods = vec![
            pod("a", "10.0.0.1", true, "http", 8080),
            pod("b", "10.0.0.2", true, "http", 9090),
            pod("c", "10.0.0.3", true, "other", 7070),
        ];
        let d = desired(&svc(json!({})), &pods);
        let mut got: Vec<(i32, Vec<String>)> = d
            .iter()
            .map(|s| (s.ports[0].port.unwrap(), s.endpoints.iter().map(|e| e.addresses[0].clone()).collect()))
            .collect();
        got.sort();
        assert_eq!(got, vec![(8080, vec!["10.0.0.1".to_string()]), (9090, vec!["10.0.0.2".to_string()])]);
        // A numeric target port is the same on every pod.
        let d = desired(&svc(json!({"spec": {"ports": [{"port": 80, "targetPort": 8000}]}})), &pods);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].endpoints.len(), 3);
        assert_eq!(d[0].ports[0].port, Some(8000));
    }

    #[test]
    fn no_endpoints_leaves_a_placeholder_and_big_services_are_cut() {
        let d = desired(&svc(json!({})), &[]);
        assert_eq!(d, vec![Desired { address_type: "IPv4".into(), ports: vec![], endpoints: vec![] }]);
        let pods: Vec<Pod> = (0..250)
            .map(|i| pod(&format!("p{i:03}"), &format!("10.1.{}.{}", i / 200, i % 200), true, "http", 80))
            .collect();
        let d = desired(&svc(json!({})), &pods);
        assert_eq!(d.iter().map(|s| s.endpoints.len()).collect::<Vec<_>>(), [100, 100, 50]);
        // Other labels, other namespaces: not selected.
        let mut other = pod("x", "10.0.0.9", true, "http", 80);
        other.metadata.namespace = Some("elsewhere".into());
        assert!(desired(&svc(json!({})), &[other])[0].endpoints.is_empty());
    }

    #[test]
    fn diff_creates_updates_and_deletes_only_what_changed() {
        let s = svc(json!({}));
        let meta = Meta {
            namespace: "ns".into(),
            prefix: "web-".into(),
            labels: labels(&s, CONTROLLER),
            owner: OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: "web".into(),
                uid: "svc-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        };
        assert_eq!(meta.labels.get(SERVICE_NAME).map(String::as_str), Some("web"));
        let want = desired(&s, &[pod("a", "10.0.0.1", true, "http", 8080)]);
        let ops = diff(&meta, want.clone(), &[]);
        let Op::Create(mut created) = ops[0].clone() else { panic!("{ops:?}") };
        assert_eq!(ops.len(), 1);
        created.metadata.name = Some("web-abcde".into());
        assert!(diff(&meta, want, std::slice::from_ref(&created)).is_empty(), "nothing changed, nothing written");

        // Readiness flips: the slice is updated in place.
        let want = desired(&s, &[pod("a", "10.0.0.1", false, "http", 8080)]);
        let ops = diff(&meta, want, std::slice::from_ref(&created));
        assert!(matches!(&ops[..], [Op::Update(u)] if u.metadata.name.as_deref() == Some("web-abcde")), "{ops:?}");

        // The port changes: the old slice goes, a new one comes.
        let want = desired(&s, &[pod("a", "10.0.0.1", true, "http", 9999)]);
        let ops = diff(&meta, want, std::slice::from_ref(&created));
        assert_eq!(ops.len(), 2);
        assert!(matches!(&ops[0], Op::Create(_)));
        assert_eq!(ops[1], Op::Delete("web-abcde".into()));
    }

    #[test]
    fn headless_services_are_labelled_and_hostnames_follow_the_subdomain() {
        let s = svc(json!({"spec": {"clusterIP": "None"}}));
        assert_eq!(labels(&s, CONTROLLER).get(HEADLESS).map(String::as_str), Some(""));
        let mut p = pod("a", "10.0.0.1", true, "http", 80);
        p.spec.as_mut().unwrap().hostname = Some("a".into());
        p.spec.as_mut().unwrap().subdomain = Some("web".into());
        assert_eq!(desired(&s, &[p])[0].endpoints[0].hostname.as_deref(), Some("a"));
    }
}
