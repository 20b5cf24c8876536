//! Filters and scores that depend on *other* pods across a topology domain (a label on nodes,
//! such as `kubernetes.io/hostname` or `topology.kubernetes.io/zone`): InterPodAffinity and
//! PodTopologySpread.
//!
//! Why a per-decision pre-pass (upstream's PreFilter state): both plugins need counts of
//! matching pods per topology value across the whole cluster. Counting once per decision and
//! then answering each node from a map keeps a decision O(pods + nodes) instead of
//! O(pods × nodes); and when neither the pod nor any placed pod uses affinity or spread (the
//! common case), the pre-pass is skipped entirely.
//!
//! Supported as upstream: required and preferred pod affinity and anti-affinity with
//! `topologyKey`, `labelSelector`, `namespaces` (default: the pod's own), the symmetric rules
//! (placed pods' anti-affinity keeps the new pod away, their preferences pull or push it);
//! topology spread with `maxSkew`, `minDomains`, `DoNotSchedule` and `ScheduleAnyway`.
//! Not yet: `namespaceSelector` other than the empty one (all namespaces), `matchLabelKeys`,
//! the node inclusion policies other than the defaults, cluster-default spread constraints.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::filter::{Code, Failure, matches_node_selector_and_affinity};
use super::score::{MAX_NODE_SCORE, WEIGHT_INTER_POD_AFFINITY, WEIGHT_TOPOLOGY_SPREAD};
use super::snapshot::{NodeInfo, PodInfo, Snapshot, has_pod_affinity};

pub const REASON_EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";
pub const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const REASON_SPREAD: &str = "node(s) didn't match pod topology spread constraints";
pub const REASON_SPREAD_LABEL: &str = "node(s) didn't match pod topology spread constraints (missing required label)";

/// Upstream's `hardPodAffinityWeight`: how much a placed pod's *required* affinity to the new
/// pod counts in scoring.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// `metav1.LabelSelector` semantics: all `matchLabels` and all expressions hold; an empty
/// selector matches everything (a missing one is handled by the caller: it matches nothing).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
        && sel.match_expressions.iter().flatten().all(|r| {
            let have = labels.get(&r.key);
            let values = r.values.as_deref().unwrap_or_default();
            match r.operator.as_str() {
                "In" => have.is_some_and(|v| values.contains(v)),
                "NotIn" => have.is_none_or(|v| !values.contains(v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}

/// Whether `term` (of a pod in namespace `owner_ns`) selects `target`.
fn term_selects(term: &PodAffinityTerm, owner_ns: &str, target: &PodInfo) -> bool {
    let ns = target.namespace();
    let namespaces = term.namespaces.as_deref().unwrap_or_default();
    let ns_ok = match &term.namespace_selector {
        Some(sel)
            if sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty()) =>
        {
            true
        }
        Some(_) => namespaces.iter().any(|n| n == ns),
        None if namespaces.is_empty() => ns == owner_ns,
        None => namespaces.iter().any(|n| n == ns),
    };
    ns_ok && term.label_selector.as_ref().is_some_and(|s| selector_matches(s, target.labels()))
}

struct Terms<'a> {
    required_affinity: &'a [PodAffinityTerm],
    required_anti: &'a [PodAffinityTerm],
    preferred_affinity: Vec<(i64, &'a PodAffinityTerm)>,
    preferred_anti: Vec<(i64, &'a PodAffinityTerm)>,
}

fn terms(pod: &Pod) -> Terms<'_> {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let pa = a.and_then(|a| a.pod_affinity.as_ref());
    let paa = a.and_then(|a| a.pod_anti_affinity.as_ref());
    Terms {
        required_affinity: pa
            .and_then(|p| p.required_during_scheduling_ignored_during_execution.as_deref())
            .unwrap_or_default(),
        required_anti: paa
            .and_then(|p| p.required_during_scheduling_ignored_during_execution.as_deref())
            .unwrap_or_default(),
        preferred_affinity: pa
            .and_then(|p| p.preferred_during_scheduling_ignored_during_execution.as_deref())
            .unwrap_or_default()
            .iter()
            .map(|w| (i64::from(w.weight), &w.pod_affinity_term))
            .collect(),
        preferred_anti: paa
            .and_then(|p| p.preferred_during_scheduling_ignored_during_execution.as_deref())
            .unwrap_or_default()
            .iter()
            .map(|w| (i64::from(w.weight), &w.pod_affinity_term))
            .collect(),
    }
}

type Domain = (String, String);

fn domain(node: &NodeInfo, key: &str) -> Option<Domain> {
    node.labels().get(key).map(|v| (key.to_string(), v.clone()))
}

/// One spread constraint with its counts per topology value.
struct Spread<'a> {
    c: &'a TopologySpreadConstraint,
    self_match: i64,
    counts: HashMap<String, i64>,
    min: i64,
}

/// Cluster-wide facts for one pod's decision.
#[derive(Default)]
pub struct PreFilter<'a> {
    affinity_active: bool,
    /// Domains the placed pods' required anti-affinity forbids to this pod.
    existing_anti: HashMap<Domain, i64>,
    /// Domains holding pods that match all of this pod's required affinity terms.
    affinity_counts: HashMap<Domain, i64>,
    /// No pod anywhere matches the affinity terms but the pod matches them itself.
    affinity_self_ok: bool,
    required_affinity: Vec<&'a PodAffinityTerm>,
    required_anti: Vec<&'a PodAffinityTerm>,
    anti_counts: HashMap<Domain, i64>,
    /// Preferred (anti-)affinity, both directions, summed per domain.
    preferred: HashMap<Domain, i64>,
    hard_spread: Vec<Spread<'a>>,
    soft_spread: Vec<Spread<'a>>,
}

impl<'a> PreFilter<'a> {
    pub fn new(pod: &'a PodInfo, snap: &Snapshot) -> PreFilter<'a> {
        let mut pf = PreFilter::default();
        let own = terms(&pod.pod);
        let ns = pod.namespace();
        pf.affinity_active = has_pod_affinity(&pod.pod) || snap.has_pods_with_affinity();
        if pf.affinity_active {
            pf.required_affinity = own.required_affinity.iter().collect();
            pf.required_anti = own.required_anti.iter().collect();
            let mut any_affinity_match = false;
            for node in snap.nodes() {
                for other in node.pods.values() {
                    let theirs = terms(&other.pod);
                    for t in theirs.required_anti {
                        if term_selects(t, other.namespace(), pod)
                            && let Some(d) = domain(node, &t.topology_key)
                        {
                            *pf.existing_anti.entry(d).or_default() += 1;
                        }
                    }
                    if !own.required_affinity.is_empty()
                        && own.required_affinity.iter().all(|t| term_selects(t, ns, other))
                    {
                        any_affinity_match = true;
                        for t in own.required_affinity {
                            if let Some(d) = domain(node, &t.topology_key) {
                                *pf.affinity_counts.entry(d).or_default() += 1;
                            }
                        }
                    }
                    for t in own.required_anti {
                        if term_selects(t, ns, other)
                            && let Some(d) = domain(node, &t.topology_key)
                        {
                            *pf.anti_counts.entry(d).or_default() += 1;
                        }
                    }
                    let mut add = |t: &PodAffinityTerm, w: i64| {
                        if let Some(d) = domain(node, &t.topology_key) {
                            *pf.preferred.entry(d).or_default() += w;
                        }
                    };
                    for (w, t) in &own.preferred_affinity {
                        if term_selects(t, ns, other) {
                            add(t, *w);
                        }
                    }
                    for (w, t) in &own.preferred_anti {
                        if term_selects(t, ns, other) {
                            add(t, -*w);
                        }
                    }
                    for (w, t) in &theirs.preferred_affinity {
                        if term_selects(t, other.namespace(), pod) {
                            add(t, *w);
                        }
                    }
                    for t in theirs.required_affinity {
                        if term_selects(t, other.namespace(), pod) {
                            add(t, HARD_POD_AFFINITY_WEIGHT);
                        }
                    }
                    for (w, t) in &theirs.preferred_anti {
                        if term_selects(t, other.namespace(), pod) {
                            add(t, -*w);
                        }
                    }
                }
            }
            pf.affinity_self_ok = !any_affinity_match && own.required_affinity.iter().all(|t| term_selects(t, ns, pod));
        }
        let constraints =
            pod.pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_deref()).unwrap_or_default();
        for c in constraints {
            let spread = Spread::count(c, pod, snap, constraints);
            if c.when_unsatisfiable == "DoNotSchedule" {
                pf.hard_spread.push(spread);
            } else {
                pf.soft_spread.push(spread);
            }
        }
        pf
    }

    /// PodTopologySpread, then InterPodAffinity (its own affinity, its anti-affinity, then the
    /// placed pods' anti-affinity), upstream's order: the first failing check is reported.
    pub fn filter(&self, _pod: &PodInfo, node: &NodeInfo) -> Result<(), Failure> {
        for s in &self.hard_spread {
            let Some(v) = node.labels().get(&s.c.topology_key) else {
                return Err(Failure::new("PodTopologySpread", Code::Unresolvable, REASON_SPREAD_LABEL));
            };
            let skew = s.counts.get(v).copied().unwrap_or(0) + s.self_match - s.min;
            if skew > i64::from(s.c.max_skew) {
                return Err(Failure::new("PodTopologySpread", Code::Unschedulable, REASON_SPREAD));
            }
        }
        if !self.affinity_active {
            return Ok(());
        }
        let count =
            |m: &HashMap<Domain, i64>, key: &str| domain(node, key).and_then(|d| m.get(&d).copied()).unwrap_or(0);
        if !self.affinity_self_ok
            && !self.required_affinity.iter().all(|t| count(&self.affinity_counts, &t.topology_key) > 0)
        {
            return Err(Failure::new("InterPodAffinity", Code::Unresolvable, REASON_AFFINITY));
        }
        if self.required_anti.iter().any(|t| count(&self.anti_counts, &t.topology_key) > 0) {
            return Err(Failure::new("InterPodAffinity", Code::Unschedulable, REASON_ANTI_AFFINITY));
        }
        if self.existing_anti.iter().any(|((k, v), n)| *n > 0 && node.labels().get(k) == Some(v)) {
            return Err(Failure::new("InterPodAffinity", Code::Unschedulable, REASON_EXISTING_ANTI_AFFINITY));
        }
        Ok(())
    }

    /// Weighted InterPodAffinity and PodTopologySpread scores for the feasible nodes.
    pub fn scores(&self, _pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
        let mut out = vec![0; nodes.len()];
        if self.affinity_active && !self.preferred.is_empty() {
            let raw: Vec<i64> = nodes
                .iter()
                .map(|n| self.preferred.iter().filter(|((k, v), _)| n.labels().get(k) == Some(v)).map(|(_, w)| w).sum())
                .collect();
            let (min, max) = (raw.iter().copied().min().unwrap_or(0), raw.iter().copied().max().unwrap_or(0));
            for (o, r) in out.iter_mut().zip(&raw) {
                if max > min {
                    *o += (r - min) * MAX_NODE_SCORE / (max - min) * WEIGHT_INTER_POD_AFFINITY;
                }
            }
        }
        if !self.soft_spread.is_empty() {
            let raw: Vec<Option<i64>> = nodes
                .iter()
                .map(|n| {
                    let mut total = 0.0;
                    for s in &self.soft_spread {
                        let v = n.labels().get(&s.c.topology_key)?;
                        let weight = ((s.counts.len() + 2) as f64).ln();
                        total += s.counts.get(v).copied().unwrap_or(0) as f64 * weight + f64::from(s.c.max_skew - 1);
                    }
                    Some(total.round() as i64)
                })
                .collect();
            let present = raw.iter().flatten();
            let min = present.clone().copied().min().unwrap_or(0);
            let max = present.copied().max().unwrap_or(0);
            for (o, r) in out.iter_mut().zip(&raw) {
                let s = match r {
                    None => 0,
                    Some(_) if max == 0 => MAX_NODE_SCORE,
                    Some(r) => MAX_NODE_SCORE * (max + min - r) / max,
                };
                *o += s * WEIGHT_TOPOLOGY_SPREAD;
            }
        }
        out
    }
}

impl<'a> Spread<'a> {
    /// Counts pods matching the constraint's selector in the pod's namespace, per topology
    /// value, over the nodes the pod could go to (node selector and required affinity honoured,
    /// every hard constraint's key present); the minimum counts domains without pods as 0.
    fn count(
        c: &'a TopologySpreadConstraint,
        pod: &PodInfo,
        snap: &Snapshot,
        all: &[TopologySpreadConstraint],
    ) -> Spread<'a> {
        let sel = c.label_selector.as_ref();
        let matches = |p: &PodInfo| {
            p.namespace() == pod.namespace()
                && p.pod.metadata.deletion_timestamp.is_none()
                && sel.is_some_and(|s| selector_matches(s, p.labels()))
        };
        let mut counts: HashMap<String, i64> = HashMap::new();
        for node in snap.nodes() {
            let has_keys = all
                .iter()
                .filter(|o| o.when_unsatisfiable == "DoNotSchedule" || std::ptr::eq(*o, c))
                .all(|o| node.labels().contains_key(&o.topology_key));
            if !has_keys || !matches_node_selector_and_affinity(&pod.pod, node) {
                continue;
            }
            let Some(v) = node.labels().get(&c.topology_key) else { continue };
            let n = node.pods.values().filter(|p| matches(p)).count() as i64;
            *counts.entry(v.clone()).or_default() += n;
        }
        let min_domains = c.min_domains.unwrap_or(1).max(1) as usize;
        let min = if counts.len() < min_domains { 0 } else { counts.values().copied().min().unwrap_or(0) };
        Spread { c, self_match: i64::from(matches(pod)), counts, min }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::decide::{Cursor, Decision, schedule};
    use super::super::snapshot::tests::{node, pod};
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn zoned(name: &str, zone: &str) -> Arc<k8s_openapi::api::core::v1::Node> {
        node(name, "8", "16Gi", json!({"metadata": {"labels": {"zone": zone}}}))
    }

    fn placed(name: &str, node: &str, app: &str, extra: serde_json::Value) -> Arc<Pod> {
        let mut e = json!({"metadata": {"labels": {"app": app}}, "spec": {"nodeName": node}});
        if let (Some(m), serde_json::Value::Object(x)) = (e["spec"].as_object_mut(), extra) {
            m.extend(x);
        }
        pod(name, "100m", "100Mi", e)
    }

    fn decide(snap: &Snapshot, spec: serde_json::Value) -> Decision {
        let p =
            PodInfo::new(pod("new", "100m", "100Mi", json!({"metadata": {"labels": {"app": "web"}}, "spec": spec})));
        schedule(&p, snap, &mut Cursor::default())
    }

    fn anti(key: &str, app: &str) -> serde_json::Value {
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": key, "labelSelector": {"matchLabels": {"app": app}}}]}}})
    }

    #[test]
    fn required_anti_affinity_keeps_pods_apart_both_ways() {
        let snap = Snapshot::build(
            [zoned("a1", "a"), zoned("a2", "a"), zoned("b1", "b")],
            [placed("w0", "a1", "web", json!({}))],
        );
        assert_eq!(decide(&snap, anti("zone", "web")), Decision::Bind { node: "b1".into() });
        let hostname = decide(&snap, anti("kubernetes.io/hostname", "web"));
        assert_ne!(hostname, Decision::Bind { node: "a1".into() });
        // The placed pod's own anti-affinity (symmetry): it keeps "web" pods out of zone a.
        let snap =
            Snapshot::build([zoned("a1", "a"), zoned("b1", "b")], [placed("db", "a1", "db", anti("zone", "web"))]);
        assert_eq!(decide(&snap, json!({})), Decision::Bind { node: "b1".into() });
        // Nowhere left: upstream's reasons.
        let snap = Snapshot::build([zoned("a1", "a")], [placed("db", "a1", "db", anti("zone", "web"))]);
        let Decision::Unschedulable { message } = decide(&snap, json!({})) else { panic!() };
        assert!(message.contains("1 node(s) didn't satisfy existing pods anti-affinity rules"), "{message}");
    }

    #[test]
    fn required_affinity_follows_matching_pods_and_the_first_pod_may_match_itself() {
        let aff = |app: &str| {
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": app}}}]}}})
        };
        let snap = Snapshot::build(
            [zoned("a1", "a"), zoned("b1", "b"), zoned("b2", "b")],
            [placed("c0", "a1", "cache", json!({}))],
        );
        assert_eq!(decide(&snap, aff("cache")), Decision::Bind { node: "a1".into() });
        let Decision::Unschedulable { message } = decide(&snap, aff("nothing")) else { panic!() };
        assert!(message.contains("3 node(s) didn't match pod affinity rules"), "{message}");
        // No pod matches, but the pod matches its own term: allowed anywhere.
        assert!(matches!(decide(&snap, aff("web")), Decision::Bind { .. }));
    }

    #[test]
    fn preferred_affinity_pulls_and_preferred_anti_affinity_pushes() {
        let snap = Snapshot::build([zoned("a1", "a"), zoned("b1", "b")], [placed("c0", "b1", "cache", json!({}))]);
        let pref = |kind: &str| {
            json!({"affinity": {kind: {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100,
                "podAffinityTerm": {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "cache"}}}}]}}})
        };
        assert_eq!(decide(&snap, pref("podAffinity")), Decision::Bind { node: "b1".into() });
        assert_eq!(decide(&snap, pref("podAntiAffinity")), Decision::Bind { node: "a1".into() });
    }

    fn spread(when: &str, skew: i32) -> serde_json::Value {
        json!({"topologySpreadConstraints": [{"maxSkew": skew, "topologyKey": "zone", "whenUnsatisfiable": when,
            "labelSelector": {"matchLabels": {"app": "web"}}}]})
    }

    #[test]
    fn topology_spread_bounds_the_skew_and_soft_constraints_prefer_the_emptier_domain() {
        let snap = Snapshot::build(
            [zoned("a1", "a"), zoned("a2", "a"), zoned("b1", "b"), node("nolabel", "8", "16Gi", json!({}))],
            [
                placed("w0", "a1", "web", json!({})),
                placed("w1", "a2", "web", json!({})),
                placed("w2", "b1", "web", json!({})),
            ],
        );
        // a has 2, b has 1: with maxSkew 1 only b is allowed (a would make 3 - 1 = 2).
        assert_eq!(decide(&snap, spread("DoNotSchedule", 1)), Decision::Bind { node: "b1".into() });
        assert_eq!(decide(&snap, spread("ScheduleAnyway", 1)), Decision::Bind { node: "b1".into() });
        // maxSkew 2 allows a too; the unlabelled node never passes a hard constraint.
        let snap2 = Snapshot::build([node("nolabel", "8", "16Gi", json!({}))], []);
        let Decision::Unschedulable { message } = decide(&snap2, spread("DoNotSchedule", 1)) else { panic!() };
        assert!(message.contains("1 node(s) didn't match pod topology spread constraints (missing required label)"));
        let snap3 = Snapshot::build(
            [zoned("a1", "a"), zoned("b1", "b")],
            [placed("w0", "a1", "web", json!({})), placed("w1", "a1", "web", json!({}))],
        );
        // a: 2, b: 0 → a gives skew 3 > 2; b is chosen.
        assert_eq!(decide(&snap3, spread("DoNotSchedule", 2)), Decision::Bind { node: "b1".into() });
        let full = Snapshot::build([zoned("a1", "a"), zoned("b1", "b")], [placed("w0", "a1", "web", json!({}))]);
        let one_zone = json!({"nodeSelector": {"zone": "a"}, "topologySpreadConstraints": [{"maxSkew": 1,
            "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "minDomains": 2,
            "labelSelector": {"matchLabels": {"app": "web"}}}]});
        // minDomains 2 with one eligible domain: the minimum counts as 0, so 1 + 1 - 0 > 1.
        let Decision::Unschedulable { message } = decide(&full, one_zone) else { panic!() };
        assert!(message.contains("1 node(s) didn't match pod topology spread constraints"), "{message}");
    }

    #[test]
    fn label_selectors_follow_metav1_semantics() {
        let sel: LabelSelector = serde_json::from_value(json!({"matchLabels": {"a": "1"},
            "matchExpressions": [{"key": "b", "operator": "In", "values": ["x", "y"]}, {"key": "c", "operator": "DoesNotExist"}]}))
        .unwrap();
        let l = |v: serde_json::Value| -> BTreeMap<String, String> { serde_json::from_value(v).unwrap() };
        assert!(selector_matches(&sel, &l(json!({"a": "1", "b": "y"}))));
        assert!(!selector_matches(&sel, &l(json!({"a": "1", "b": "z"}))));
        assert!(!selector_matches(&sel, &l(json!({"a": "1", "b": "x", "c": ""}))));
        assert!(selector_matches(&LabelSelector::default(), &l(json!({}))));
    }
}
