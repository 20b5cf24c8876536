//! Node-side admission (kubelet's `canAdmitPod` / `GeneralPredicates`). Pure.
//!
//! A pod bound straight to the node (`spec.nodeName`, no scheduler) can ask for more than the node
//! has. As kubelet does, the agent checks each new API pod, in creation order, against the pods it
//! already admitted: resources within allocatable (`OutOfcpu`, `OutOfmemory`, `OutOfpods`), free
//! host ports (`NodePorts`), `nodeSelector` and required node affinity (`NodeAffinity`), and
//! NoExecute taints (`TaintToleration`; like kubelet, NoSchedule is the scheduler's business). A
//! rejected pod never runs: it is reported `Failed` with that reason and message. Once admitted a
//! pod stays admitted; a pod whose API phase is already terminal is not run again.

use crate::source::{CONFIG_SOURCE, PodSet};
use k8s_openapi::api::core::v1::{Container, NodeSelectorRequirement, Pod, PodStatus, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keelson_apimachinery::quantity::{to_bytes, to_milli};
use std::collections::{BTreeMap, BTreeSet};

/// What admission needs to know about the node.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub name: String,
    pub allocatable: BTreeMap<String, Quantity>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

/// Why a pod was not admitted (kubelet's `PodAdmitResult`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

fn reject(reason: &str, message: String) -> Rejection {
    Rejection { reason: reason.into(), message }
}

/// `(cpu millicores, memory bytes)` a container asks for: requests, else limits.
fn container_requests(c: &Container) -> (i64, i64) {
    let r = c.resources.as_ref();
    let get = |name: &str| {
        r.and_then(|r| r.requests.as_ref().and_then(|m| m.get(name)).or_else(|| r.limits.as_ref()?.get(name)))
    };
    let cpu = get("cpu").and_then(|q| to_milli(q).ok()).unwrap_or(0);
    let mem = get("memory").and_then(|q| to_bytes(q).ok()).unwrap_or(0);
    (cpu, mem)
}

/// The pod's effective requests: the sum over app containers, or the largest init container if
/// that is more (init containers run one at a time).
pub fn pod_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = &pod.spec else { return (0, 0) };
    let (mut cpu, mut mem) = (0i64, 0i64);
    for c in &spec.containers {
        let (c, m) = container_requests(c);
        cpu = cpu.saturating_add(c);
        mem = mem.saturating_add(m);
    }
    for c in spec.init_containers.iter().flatten() {
        let (c, m) = container_requests(c);
        cpu = cpu.max(c);
        mem = mem.max(m);
    }
    (cpu, mem)
}

fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    let Some(spec) = &pod.spec else { return Vec::new() };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let hp = p.host_port.filter(|h| *h > 0)?;
            let ip = p.host_ip.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| "0.0.0.0".into());
            Some((p.protocol.clone().unwrap_or_else(|| "TCP".into()), ip, hp))
        })
        .collect()
}

fn ports_conflict(a: &(String, String, i32), b: &(String, String, i32)) -> bool {
    a.0 == b.0 && a.2 == b.2 && (a.1 == b.1 || a.1 == "0.0.0.0" || b.1 == "0.0.0.0")
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.clone().unwrap_or_default();
    let int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => matches!((value.and_then(int), values.first().and_then(|x| int(x))), (Some(v), Some(x)) if v > x),
        "Lt" => matches!((value.and_then(int), values.first().and_then(|x| int(x))), (Some(v), Some(x)) if v < x),
        _ => false,
    }
}

/// `nodeSelector` and required node affinity (any term matches; all requirements of a term).
pub fn node_affinity_matches(pod: &Pod, node: &NodeView) -> bool {
    let Some(spec) = &pod.spec else { return true };
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| node.labels.get(k) == Some(v))
    {
        return false;
    }
    let Some(req) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
    else {
        return true;
    };
    req.node_selector_terms.iter().any(|t| {
        let exprs = t.match_expressions.iter().flatten();
        let fields = t.match_fields.iter().flatten();
        let any = t.match_expressions.as_ref().is_some_and(|e| !e.is_empty())
            || t.match_fields.as_ref().is_some_and(|e| !e.is_empty());
        any && exprs.clone().all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
            && fields.clone().all(|r| r.key == "metadata.name" && requirement_matches(r, Some(&node.name)))
    })
}

/// Whether the pod tolerates every NoExecute taint of the node.
pub fn tolerates_no_execute(pod: &Pod, node: &NodeView) -> Option<Taint> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    node.taints
        .iter()
        .filter(|t| t.effect == "NoExecute")
        .find(|t| {
            !tolerations.iter().any(|tol| {
                let key_ok = tol.key.as_deref().is_none_or(|k| k.is_empty() || k == t.key);
                let effect_ok = tol.effect.as_deref().is_none_or(|e| e.is_empty() || e == t.effect);
                let value_ok = match tol.operator.as_deref() {
                    Some("Exists") => true,
                    _ => tol.value.as_deref().unwrap_or("") == t.value.as_deref().unwrap_or(""),
                };
                key_ok && effect_ok && value_ok
            })
        })
        .cloned()
}

/// Admits `pod` on `node` beside the already admitted pods, or says why not.
pub fn admit(pod: &Pod, node: &NodeView, admitted: &[&Pod]) -> Result<(), Rejection> {
    if !node_affinity_matches(pod, node) {
        return Err(reject(
            "NodeAffinity",
            "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector".into(),
        ));
    }
    if let Some(t) = tolerates_no_execute(pod, node) {
        return Err(reject(
            "TaintToleration",
            format!(
                "Predicate TaintToleration failed: node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.unwrap_or_default()
            ),
        ));
    }
    let alloc = |name: &str, f: fn(&Quantity) -> Result<i64, keelson_apimachinery::quantity::QuantityError>| {
        node.allocatable.get(name).and_then(|q| f(q).ok())
    };
    if let Some(max) = alloc("pods", to_bytes)
        && i64::try_from(admitted.len()).unwrap_or(i64::MAX) + 1 > max
    {
        return Err(reject(
            "OutOfpods",
            format!("Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {max}", admitted.len()),
        ));
    }
    let (cpu, mem) = pod_requests(pod);
    let (used_cpu, used_mem) = admitted
        .iter()
        .map(|p| pod_requests(p))
        .fold((0i64, 0i64), |(a, b), (c, m)| (a.saturating_add(c), b.saturating_add(m)));
    if let Some(cap) = alloc("cpu", to_milli)
        && cpu > 0
        && used_cpu.saturating_add(cpu) > cap
    {
        return Err(reject(
            "OutOfcpu",
            format!("Node didn't have enough resource: cpu, requested: {cpu}, used: {used_cpu}, capacity: {cap}"),
        ));
    }
    if let Some(cap) = alloc("memory", to_bytes)
        && mem > 0
        && used_mem.saturating_add(mem) > cap
    {
        return Err(reject(
            "OutOfmemory",
            format!("Node didn't have enough resource: memory, requested: {mem}, used: {used_mem}, capacity: {cap}"),
        ));
    }
    let taken: Vec<_> = admitted.iter().flat_map(|p| host_ports(p)).collect();
    let mine = host_ports(pod);
    for (i, p) in mine.iter().enumerate() {
        if taken.iter().chain(&mine[..i]).any(|t| ports_conflict(p, t)) {
            return Err(reject(
                "NodePorts",
                format!(
                    "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports ({}/{})",
                    p.2, p.0
                ),
            ));
        }
    }
    Ok(())
}

/// The status of a pod kubelet refused: `Failed` with the reason and message.
pub fn rejected_status(r: &Rejection) -> PodStatus {
    PodStatus {
        phase: Some("Failed".into()),
        reason: Some(r.reason.clone()),
        message: Some(format!("Pod was rejected: {}", r.message)),
        ..Default::default()
    }
}

fn from_api(p: &Pod) -> bool {
    p.metadata.annotations.as_ref().and_then(|a| a.get(CONFIG_SOURCE)).is_some_and(|s| s == "api")
}

fn terminal(p: &Pod) -> bool {
    matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Failed" | "Succeeded"))
}

/// Admission state across syncs: which uids were admitted (they stay so).
#[derive(Debug, Default)]
pub struct Admission {
    admitted: BTreeSet<String>,
    decided: BTreeSet<String>,
}

impl Admission {
    /// Splits the merged desired set into the pods to run and the pods newly rejected (with a
    /// pod carrying their Failed status). Static pods and pods being deleted pass through.
    pub fn filter(&mut self, set: &PodSet, node: &NodeView) -> (PodSet, Vec<(String, Pod)>) {
        self.admitted.retain(|u| set.contains_key(u));
        self.decided.retain(|u| set.contains_key(u));
        let mut run = PodSet::new();
        let mut new: Vec<(&String, &Pod)> = Vec::new();
        for (uid, p) in set {
            if !from_api(p) || self.admitted.contains(uid) {
                run.insert(uid.clone(), p.clone());
            } else if self.decided.contains(uid) {
                continue;
            } else if p.metadata.deletion_timestamp.is_some() {
                // Let the worker finish the deletion (nothing runs; the final delete is sent).
                run.insert(uid.clone(), p.clone());
            } else if terminal(p) {
                self.decided.insert(uid.clone());
            } else {
                new.push((uid, p));
            }
        }
        new.sort_by(|a, b| {
            (a.1.metadata.creation_timestamp.as_ref().map(|t| t.0), a.0)
                .cmp(&(b.1.metadata.creation_timestamp.as_ref().map(|t| t.0), b.0))
        });
        let mut rejected = Vec::new();
        for (uid, p) in new {
            let admitted: Vec<&Pod> = run.values().filter(|p| !terminal(p)).collect();
            self.decided.insert(uid.clone());
            match admit(p, node, &admitted) {
                Ok(()) => {
                    self.admitted.insert(uid.clone());
                    run.insert(uid.clone(), p.clone());
                }
                Err(r) => {
                    let mut failed = p.clone();
                    failed.status = Some(rejected_status(&r));
                    rejected.push((uid.clone(), failed));
                }
            }
        }
        (run, rejected)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, PodSpec, ResourceRequirements, Toleration};

    fn node() -> NodeView {
        NodeView {
            name: "n1".into(),
            allocatable: BTreeMap::from([
                ("cpu".into(), Quantity("2".into())),
                ("memory".into(), Quantity("1Gi".into())),
                ("pods".into(), Quantity("3".into())),
            ]),
            labels: BTreeMap::from([("disk".into(), "ssd".into()), ("kubernetes.io/hostname".into(), "n1".into())]),
            taints: Vec::new(),
        }
    }

    fn pod(uid: &str, cpu: &str, mem: &str) -> Pod {
        let mut c = Container { name: "c".into(), ..Default::default() };
        let mut req = BTreeMap::new();
        if !cpu.is_empty() {
            req.insert("cpu".to_string(), Quantity(cpu.into()));
        }
        if !mem.is_empty() {
            req.insert("memory".to_string(), Quantity(mem.into()));
        }
        c.resources = Some(ResourceRequirements { requests: Some(req), ..Default::default() });
        let mut p = Pod { spec: Some(PodSpec { containers: vec![c], ..Default::default() }), ..Default::default() };
        p.metadata.uid = Some(uid.into());
        p.metadata.name = Some(uid.into());
        p.metadata.annotations = Some(BTreeMap::from([(CONFIG_SOURCE.to_string(), "api".to_string())]));
        p
    }

    #[test]
    fn resources_must_fit_in_allocatable() {
        let a = pod("a", "1500m", "100Mi");
        assert_eq!(admit(&a, &node(), &[]), Ok(()));
        let r = admit(&pod("b", "600m", ""), &node(), &[&a]).unwrap_err();
        assert_eq!(r.reason, "OutOfcpu");
        assert!(r.message.contains("requested: 600, used: 1500, capacity: 2000"), "{}", r.message);
        assert_eq!(admit(&pod("c", "", "2Gi"), &node(), &[]).unwrap_err().reason, "OutOfmemory");
        let (x, y, z) = (pod("x", "", ""), pod("y", "", ""), pod("z", "", ""));
        assert_eq!(admit(&pod("w", "", ""), &node(), &[&x, &y, &z]).unwrap_err().reason, "OutOfpods");
    }

    #[test]
    fn init_containers_count_by_their_maximum() {
        let mut p = pod("a", "500m", "");
        let mut init = p.spec.as_ref().unwrap().containers[0].clone();
        init.resources.as_mut().unwrap().requests.as_mut().unwrap().insert("cpu".into(), Quantity("1".into()));
        p.spec.as_mut().unwrap().init_containers = Some(vec![init.clone(), init]);
        assert_eq!(pod_requests(&p).0, 1000);
    }

    #[test]
    fn host_ports_conflict_on_protocol_port_and_overlapping_ip() {
        let with_port = |uid: &str, port: i32, ip: Option<&str>, proto: &str| {
            let mut p = pod(uid, "", "");
            p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
                container_port: 80,
                host_port: Some(port),
                host_ip: ip.map(String::from),
                protocol: Some(proto.into()),
                ..Default::default()
            }]);
            p
        };
        let a = with_port("a", 8080, None, "TCP");
        assert_eq!(
            admit(&with_port("b", 8080, Some("10.0.0.1"), "TCP"), &node(), &[&a]).unwrap_err().reason,
            "NodePorts"
        );
        assert_eq!(admit(&with_port("c", 8080, None, "UDP"), &node(), &[&a]), Ok(()));
        assert_eq!(admit(&with_port("d", 8081, None, "TCP"), &node(), &[&a]), Ok(()));
    }

    #[test]
    fn node_selector_affinity_and_no_execute_taints() {
        let mut p = pod("a", "", "");
        p.spec.as_mut().unwrap().node_selector = Some(BTreeMap::from([("disk".into(), "hdd".into())]));
        assert_eq!(admit(&p, &node(), &[]).unwrap_err().reason, "NodeAffinity");
        p.spec.as_mut().unwrap().node_selector = Some(BTreeMap::from([("disk".into(), "ssd".into())]));
        assert_eq!(admit(&p, &node(), &[]), Ok(()));
        let req = |op: &str, vals: &[&str]| NodeSelectorRequirement {
            key: "disk".into(),
            operator: op.into(),
            values: Some(vals.iter().map(|s| s.to_string()).collect()),
        };
        assert!(requirement_matches(&req("In", &["ssd"]), Some("ssd")));
        assert!(requirement_matches(&req("NotIn", &["ssd"]), None));
        assert!(!requirement_matches(&req("Gt", &["5"]), Some("3")));
        let mut n = node();
        n.taints = vec![
            Taint { key: "k".into(), value: Some("v".into()), effect: "NoExecute".into(), time_added: None },
            Taint { key: "s".into(), value: None, effect: "NoSchedule".into(), time_added: None },
        ];
        assert_eq!(admit(&p, &n, &[]).unwrap_err().reason, "TaintToleration");
        p.spec.as_mut().unwrap().tolerations =
            Some(vec![Toleration { key: Some("k".into()), operator: Some("Exists".into()), ..Default::default() }]);
        assert_eq!(admit(&p, &n, &[]), Ok(()), "NoSchedule is the scheduler's, not the node's");
    }

    #[test]
    fn admission_is_decided_once_in_creation_order() {
        let mut adm = Admission::default();
        let big = pod("a", "1500m", "");
        let mut set = PodSet::from([("a".to_string(), big)]);
        let (run, rej) = adm.filter(&set, &node());
        assert_eq!((run.len(), rej.len()), (1, 0));
        set.insert("b".into(), pod("b", "1", ""));
        let (run, rej) = adm.filter(&set, &node());
        assert_eq!(run.len(), 1);
        assert_eq!(rej.len(), 1);
        let st = rej[0].1.status.clone().unwrap();
        assert_eq!((st.phase.as_deref(), st.reason.as_deref()), (Some("Failed"), Some("OutOfcpu")));
        // Decided: not reported again, and it does not start when room appears.
        set.remove("a");
        let (run, rej) = adm.filter(&set, &node());
        assert!(run.is_empty() && rej.is_empty());
        // A static pod always runs.
        let mut s = pod("s", "100", "");
        s.metadata.annotations = Some(BTreeMap::from([(CONFIG_SOURCE.to_string(), "file".to_string())]));
        set.insert("s".into(), s);
        assert_eq!(adm.filter(&set, &node()).0.len(), 1);
    }
}
