//! Filters: may this pod go to this node? Upstream's default filter plugins, in upstream's order,
//! stopping at the first that fails (its reasons are what the user reads in the message).
//!
//! Each failure carries upstream's exact reason strings (the `FailedScheduling` message is read
//! by people and matched by tools) and whether preemption could help: `Unresolvable` is
//! upstream's `UnschedulableAndUnresolvable` (removing pods cannot fix a taint or a selector),
//! `Unschedulable` could be fixed by evicting pods (resources, ports, anti-affinity).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration};

use super::snapshot::{NodeInfo, PodInfo};

pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const REASON_NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const REASON_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const REASON_NODE_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";

/// Whether evicting pods could make the node fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unschedulable,
    Unresolvable,
}

/// Why a node was filtered out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub plugin: &'static str,
    pub code: Code,
    pub reasons: Vec<String>,
}

impl Failure {
    pub fn new(plugin: &'static str, code: Code, reason: impl Into<String>) -> Failure {
        Failure { plugin, code, reasons: vec![reason.into()] }
    }
}

/// The per-node filters that need nothing but the pod and the node, in upstream's order.
pub fn node_filters(pod: &PodInfo, node: &NodeInfo) -> Result<(), Failure> {
    node_unschedulable(&pod.pod, node)?;
    node_name(&pod.pod, node)?;
    taint_toleration(&pod.pod, node)?;
    node_affinity(&pod.pod, node)?;
    node_ports(pod, node)?;
    resources_fit(pod, node)
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default()
}

/// Upstream's `Toleration.ToleratesTaint`: same effect (or any), then an empty key with
/// `Exists` matches every key, `Exists` any value, `Equal` (the default) the same value.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect.as_deref().is_some_and(|e| !e.is_empty() && e != taint.effect) {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "" | "Equal" => {
            key == taint.key && t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

pub fn tolerated(pod: &Pod, taint: &Taint) -> bool {
    tolerations(pod).iter().any(|t| tolerates(t, taint))
}

fn node_unschedulable(pod: &Pod, node: &NodeInfo) -> Result<(), Failure> {
    let taint =
        Taint { key: "node.kubernetes.io/unschedulable".into(), effect: "NoSchedule".into(), ..Default::default() };
    if node.unschedulable() && !tolerated(pod, &taint) {
        return Err(Failure::new("NodeUnschedulable", Code::Unresolvable, REASON_UNSCHEDULABLE));
    }
    Ok(())
}

fn node_name(pod: &Pod, node: &NodeInfo) -> Result<(), Failure> {
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(n) if !n.is_empty() && n != node.name => {
            Err(Failure::new("NodeName", Code::Unresolvable, REASON_NODE_NAME))
        }
        _ => Ok(()),
    }
}

fn taint_toleration(pod: &Pod, node: &NodeInfo) -> Result<(), Failure> {
    let hard = |t: &&Taint| t.effect == "NoSchedule" || t.effect == "NoExecute";
    match node.taints().iter().filter(hard).find(|t| !tolerated(pod, t)) {
        Some(t) => Err(Failure::new(
            "TaintToleration",
            Code::Unresolvable,
            format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.as_deref().unwrap_or_default()),
        )),
        None => Ok(()),
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(want)) = (value.and_then(int), values.first().and_then(|s| int(s))) else {
                return false;
            };
            if r.operator == "Gt" { have > want } else { have < want }
        }
        _ => false,
    }
}

/// A node selector term: every expression on labels and every field (only `metadata.name`)
/// must hold; a term with neither matches nothing, as upstream.
pub fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && requirement_matches(r, Some(name)))
}

/// `spec.nodeSelector` and the required node affinity terms (ORed) both hold.
pub fn matches_node_selector_and_affinity(pod: &Pod, node: &NodeInfo) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return true };
    let labels = node.labels();
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    match required {
        Some(r) => r.node_selector_terms.iter().any(|t| term_matches(t, labels, &node.name)),
        None => true,
    }
}

fn node_affinity(pod: &Pod, node: &NodeInfo) -> Result<(), Failure> {
    if matches_node_selector_and_affinity(pod, node) {
        Ok(())
    } else {
        Err(Failure::new("NodeAffinity", Code::Unresolvable, REASON_NODE_AFFINITY))
    }
}

fn node_ports(pod: &PodInfo, node: &NodeInfo) -> Result<(), Failure> {
    if pod.ports.is_empty() {
        return Ok(());
    }
    if node.used_ports().any(|u| pod.ports.iter().any(|p| p.conflicts(u))) {
        return Err(Failure::new("NodePorts", Code::Unschedulable, REASON_NODE_PORTS));
    }
    Ok(())
}

/// NodeResourcesFit: pod count first, then each resource the pod requests; every shortage is
/// a reason of its own ("Insufficient cpu", "Insufficient memory").
fn resources_fit(pod: &PodInfo, node: &NodeInfo) -> Result<(), Failure> {
    let mut reasons = Vec::new();
    if node.pods.len() as i64 + 1 > node.allowed_pods {
        reasons.push(REASON_TOO_MANY_PODS.to_string());
    }
    let (req, alloc, used) = (&pod.requests, &node.allocatable, &node.requested);
    if !req.is_zero() {
        let short = |want: i64, have: i64, used: i64| want > 0 && have < want.saturating_add(used);
        if short(req.milli_cpu, alloc.milli_cpu, used.milli_cpu) {
            reasons.push("Insufficient cpu".into());
        }
        if short(req.memory, alloc.memory, used.memory) {
            reasons.push("Insufficient memory".into());
        }
        if short(req.ephemeral_storage, alloc.ephemeral_storage, used.ephemeral_storage) {
            reasons.push("Insufficient ephemeral-storage".into());
        }
        for (name, want) in &req.scalar {
            let have = alloc.scalar.get(name).copied().unwrap_or(0);
            if short(*want, have, used.scalar.get(name).copied().unwrap_or(0)) {
                reasons.push(format!("Insufficient {name}"));
            }
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Failure { plugin: "NodeResourcesFit", code: Code::Unschedulable, reasons })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::snapshot::Snapshot;
    use super::super::snapshot::tests::{node, pod};
    use super::*;
    use serde_json::json;

    fn check(n: serde_json::Value, p: serde_json::Value, existing: &[serde_json::Value]) -> Result<(), Failure> {
        let pods = existing.iter().enumerate().map(|(i, e)| {
            let mut e = e.clone();
            e["spec"]["nodeName"] = json!("n");
            pod(&format!("e{i}"), "0", "0", e)
        });
        let s = Snapshot::build([node("n", "2", "4Gi", n)], pods);
        node_filters(&PodInfo::new(pod("p", "500m", "1Gi", p)), s.node("n").unwrap())
    }

    fn reasons(r: Result<(), Failure>) -> Vec<String> {
        r.err().map(|f| f.reasons).unwrap_or_default()
    }

    #[test]
    fn resources_fit_names_every_short_resource() {
        assert_eq!(check(json!({}), json!({}), &[]), Ok(()));
        let big = json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "3", "memory": "5Gi", "example.com/gpu": "1"}}}]}});
        let f = check(json!({}), big, &[]).unwrap_err();
        assert_eq!(f.code, Code::Unschedulable);
        assert_eq!(f.reasons, ["Insufficient cpu", "Insufficient memory", "Insufficient example.com/gpu"]);
        let used = json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1600m"}}}]}});
        assert_eq!(reasons(check(json!({}), json!({}), &[used])), ["Insufficient cpu"]);
        let full = json!({"status": {"allocatable": {"pods": "1"}}});
        assert_eq!(reasons(check(full, json!({}), &[json!({})])), [REASON_TOO_MANY_PODS]);
        let disk =
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"ephemeral-storage": "20Gi"}}}]}});
        assert_eq!(reasons(check(json!({}), disk, &[])), ["Insufficient ephemeral-storage"]);
    }

    #[test]
    fn taints_need_tolerations_and_unschedulable_nodes_need_theirs() {
        let tainted = json!({"spec": {"taints": [
            {"key": "soft", "value": "x", "effect": "PreferNoSchedule"},
            {"key": "k", "value": "v", "effect": "NoSchedule"},
        ]}});
        let f = check(tainted.clone(), json!({}), &[]).unwrap_err();
        assert_eq!((f.plugin, f.code), ("TaintToleration", Code::Unresolvable));
        assert_eq!(f.reasons, ["node(s) had untolerated taint {k: v}"]);
        let eq =
            json!({"spec": {"tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}]}});
        assert_eq!(check(tainted.clone(), eq, &[]), Ok(()));
        let wrong = json!({"spec": {"tolerations": [{"key": "k", "value": "w"}]}});
        assert!(check(tainted.clone(), wrong, &[]).is_err());
        let all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        assert_eq!(check(tainted.clone(), all, &[]), Ok(()));
        let wrong_effect =
            json!({"spec": {"tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute"}]}});
        assert!(check(tainted, wrong_effect, &[]).is_err());

        let cordoned = json!({"spec": {"unschedulable": true}});
        assert_eq!(reasons(check(cordoned.clone(), json!({}), &[])), [REASON_UNSCHEDULABLE]);
        let tol = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}});
        assert_eq!(check(cordoned, tol, &[]), Ok(()));
    }

    #[test]
    fn node_selector_and_required_affinity_expressions_and_fields() {
        let labelled = json!({"metadata": {"labels": {"disk": "ssd", "gen": "5"}}});
        assert_eq!(check(labelled.clone(), json!({"spec": {"nodeSelector": {"disk": "ssd"}}}), &[]), Ok(()));
        assert_eq!(
            reasons(check(labelled.clone(), json!({"spec": {"nodeSelector": {"disk": "hdd"}}}), &[])),
            [REASON_NODE_AFFINITY]
        );
        let aff = |terms: serde_json::Value| json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}});
        let ok = |terms| check(labelled.clone(), aff(terms), &[]).is_ok();
        assert!(ok(json!([{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd", "nvme"]}]}])));
        assert!(!ok(json!([{"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}])));
        assert!(ok(json!([{"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}])));
        assert!(!ok(json!([{"matchExpressions": [{"key": "zone", "operator": "Exists"}]}])));
        assert!(ok(json!([{"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}])));
        assert!(!ok(json!([{"matchExpressions": [{"key": "gen", "operator": "Lt", "values": ["4"]}]}])));
        // Terms are ORed, expressions within a term ANDed; an empty term matches nothing.
        assert!(ok(
            json!([{"matchExpressions": [{"key": "zone", "operator": "Exists"}]}, {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]}])
        ));
        assert!(!ok(
            json!([{"matchExpressions": [{"key": "disk", "operator": "Exists"}, {"key": "zone", "operator": "Exists"}]}])
        ));
        assert!(!ok(json!([{}])));
        assert!(!ok(json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n"]}]}])));
    }

    #[test]
    fn host_ports_clash_on_same_protocol_and_overlapping_address() {
        let port = |ip: &str, proto: &str| json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": ip, "protocol": proto}]}]}});
        assert_eq!(reasons(check(json!({}), port("", "TCP"), &[port("10.0.0.1", "TCP")])), [REASON_NODE_PORTS]);
        assert_eq!(check(json!({}), port("10.0.0.2", "TCP"), &[port("10.0.0.1", "TCP")]), Ok(()));
        assert_eq!(check(json!({}), port("", "UDP"), &[port("", "TCP")]), Ok(()));
    }

    #[test]
    fn node_name_must_match_when_set() {
        assert_eq!(reasons(check(json!({}), json!({"spec": {"nodeName": "other"}}), &[])), [REASON_NODE_NAME]);
    }
}
