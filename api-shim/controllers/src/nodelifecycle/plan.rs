//! The pure core of the node lifecycle controller: node health from Lease renewals, the
//! conditions and NoExecute taints that follow from it, and taint-based eviction of pods.
//!
//! Time is always an argument (`now`), never read here, so every rule is unit-tested with a fake
//! clock. Health is judged by *when this controller saw* a node's Lease or Ready heartbeat last
//! change ([`Health`]), not by the timestamps the node wrote, so clock skew between a node and
//! the control plane cannot make a node look dead or alive (upstream's `nodeHealthMap`).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const NO_EXECUTE: &str = "NoExecute";
pub const READY: &str = "Ready";
/// The conditions the kubelet owns and that go Unknown with it (upstream's list).
pub const KUBELET_CONDITIONS: &[&str] = &[READY, "MemoryPressure", "DiskPressure", "PIDPressure"];
pub const NODE_STATUS_UNKNOWN: &str = "NodeStatusUnknown";
pub const STOPPED_MESSAGE: &str = "Kubelet stopped posting node status.";
pub const NEVER_UPDATED: &str = "NodeStatusNeverUpdated";
pub const NEVER_MESSAGE: &str = "Kubelet never posted node status.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: String,
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub last_heartbeat_time: Option<DateTime<Utc>>,
    pub last_transition_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
    pub time_added: Option<DateTime<Utc>>,
}

impl Taint {
    fn no_execute(key: &str, now: DateTime<Utc>) -> Taint {
        Taint { key: key.into(), value: None, effect: NO_EXECUTE.into(), time_added: Some(now) }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Toleration {
    pub key: Option<String>,
    pub operator: Option<String>,
    pub value: Option<String>,
    pub effect: Option<String>,
    pub seconds: Option<i64>,
}

impl Toleration {
    /// Upstream's `ToleratesTaint`: an empty effect matches every effect, an empty key with
    /// `Exists` every key; `Equal` (the default operator) compares values.
    pub fn tolerates(&self, t: &Taint) -> bool {
        if self.effect.as_deref().is_some_and(|e| !e.is_empty() && e != t.effect) {
            return false;
        }
        let key = self.key.as_deref().unwrap_or_default();
        if !key.is_empty() && key != t.key {
            return false;
        }
        match self.operator.as_deref().unwrap_or("Equal") {
            "Exists" => true,
            "Equal" => {
                !key.is_empty() && self.value.as_deref().unwrap_or_default() == t.value.as_deref().unwrap_or_default()
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub created: DateTime<Utc>,
    pub conditions: Vec<Condition>,
    pub taints: Vec<Taint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    pub deleting: bool,
    /// The pod's `Ready` condition is `True`.
    pub ready: bool,
    pub tolerations: Vec<Toleration>,
}

/// When this controller last saw a node show life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// What changes when the node is alive: its Lease's renewTime and its Ready heartbeat.
    pub signal: String,
    pub probed_at: DateTime<Utc>,
}

impl Health {
    /// The new health given the current signal: a changed signal (or a node seen for the first
    /// time, e.g. after a controller restart) counts as a heartbeat now.
    pub fn observe(prev: Option<&Health>, signal: String, now: DateTime<Utc>) -> Health {
        match prev {
            Some(h) if h.signal == signal => h.clone(),
            _ => Health { signal, probed_at: now },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write these conditions (the node went silent); `event` is a status-change Event to record.
    NodeConditions {
        node: String,
        conditions: Vec<Condition>,
    },
    NodeTaints {
        node: String,
        taints: Vec<Taint>,
    },
    PodNotReady {
        namespace: String,
        name: String,
    },
    Evict {
        namespace: String,
        name: String,
        uid: String,
    },
}

/// When a pod on NoExecute-tainted ground must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Never,
    Now,
    At(DateTime<Utc>),
}

/// Upstream's `getMinTolerationTime` over the node's NoExecute taints: a taint no toleration
/// matches → now; otherwise the smallest `tolerationSeconds` among the matching tolerations,
/// counted from when the taint was added (none at all → never).
pub fn eviction(pod: &PodView, taints: &[Taint], now: DateTime<Utc>) -> Eviction {
    let mut earliest: Option<DateTime<Utc>> = None;
    for t in taints.iter().filter(|t| t.effect == NO_EXECUTE) {
        let matching: Vec<&Toleration> = pod.tolerations.iter().filter(|tol| tol.tolerates(t)).collect();
        if matching.is_empty() {
            return Eviction::Now;
        }
        if let Some(secs) = matching.iter().filter_map(|tol| tol.seconds).min() {
            let at = t.time_added.unwrap_or(now) + Duration::seconds(secs.max(0));
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
    }
    match earliest {
        None => Eviction::Never,
        Some(at) if at <= now => Eviction::Now,
        Some(at) => Eviction::At(at),
    }
}

/// The conditions of a node that has been silent for longer than the grace period: every
/// kubelet condition Unknown (upstream's reasons and messages); `None` when already so.
pub fn silent_conditions(node: &NodeView, now: DateTime<Utc>) -> Option<Vec<Condition>> {
    let mut conds = node.conditions.clone();
    let mut changed = false;
    for ty in KUBELET_CONDITIONS {
        match conds.iter_mut().find(|c| c.type_ == *ty) {
            Some(c) if c.status == "Unknown" => {}
            Some(c) => {
                c.status = "Unknown".into();
                c.reason = Some(NODE_STATUS_UNKNOWN.into());
                c.message = Some(STOPPED_MESSAGE.into());
                c.last_transition_time = Some(now);
                changed = true;
            }
            None => {
                conds.push(Condition {
                    type_: ty.to_string(),
                    status: "Unknown".into(),
                    reason: Some(NEVER_UPDATED.into()),
                    message: Some(NEVER_MESSAGE.into()),
                    last_heartbeat_time: Some(node.created),
                    last_transition_time: Some(now),
                });
                changed = true;
            }
        }
    }
    changed.then_some(conds)
}

/// The node's taints with the unreachable / not-ready NoExecute taints matching its Ready
/// status; `None` when nothing changes. A node with no Ready condition yet is left alone.
pub fn wanted_taints(taints: &[Taint], ready: Option<&str>, now: DateTime<Utc>) -> Option<Vec<Taint>> {
    let want: &[&str] = match ready {
        Some("True") => &[],
        Some("False") => &[NOT_READY],
        Some(_) => &[UNREACHABLE],
        None => return None,
    };
    let ours = |t: &Taint| t.effect == NO_EXECUTE && (t.key == UNREACHABLE || t.key == NOT_READY);
    let mut out: Vec<Taint> = taints.iter().filter(|t| !ours(t) || want.contains(&t.key.as_str())).cloned().collect();
    for key in want {
        if !out.iter().any(|t| t.effect == NO_EXECUTE && t.key == *key) {
            out.push(Taint::no_execute(key, now));
        }
    }
    (out != taints).then_some(out)
}

/// One pass: what the nodes' health asks for, given how long each has been silent. Also returns
/// the earliest future eviction, so the caller can wake up for it.
pub fn plan(
    nodes: &[NodeView],
    health: &BTreeMap<String, Health>,
    pods: &[PodView],
    now: DateTime<Utc>,
    grace: Duration,
) -> (Vec<Op>, Option<DateTime<Utc>>) {
    let mut ops = Vec::new();
    let mut next: Option<DateTime<Utc>> = None;
    let mut ready_of: BTreeMap<&str, Option<String>> = BTreeMap::new();
    for n in nodes {
        let silent = health.get(&n.name).is_some_and(|h| now - h.probed_at > grace);
        let mut conditions = n.conditions.clone();
        if silent && let Some(c) = silent_conditions(n, now) {
            conditions = c.clone();
            ops.push(Op::NodeConditions { node: n.name.clone(), conditions: c });
        }
        let ready = conditions.iter().find(|c| c.type_ == READY).map(|c| c.status.clone());
        if let Some(t) = wanted_taints(&n.taints, ready.as_deref(), now) {
            ops.push(Op::NodeTaints { node: n.name.clone(), taints: t });
        }
        ready_of.insert(n.name.as_str(), ready);
    }
    let by_name: BTreeMap<&str, &NodeView> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    for p in pods.iter().filter(|p| !p.deleting) {
        let Some(node) = p.node.as_deref() else { continue };
        let Some(n) = by_name.get(node) else { continue };
        // Evictions follow the taints as stored, so a pod never goes for a taint that failed to
        // be written.
        match eviction(p, &n.taints, now) {
            Eviction::Now => {
                ops.push(Op::Evict { namespace: p.namespace.clone(), name: p.name.clone(), uid: p.uid.clone() });
                continue;
            }
            Eviction::At(at) => next = Some(next.map_or(at, |x| x.min(at))),
            Eviction::Never => {}
        }
        let unknown = ready_of.get(node).is_some_and(|r| r.as_deref().is_some_and(|s| s != "True" && s != "False"));
        if unknown && p.ready {
            ops.push(Op::PodNotReady { namespace: p.namespace.clone(), name: p.name.clone() });
        }
    }
    (ops, next)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn cond(ty: &str, status: &str) -> Condition {
        Condition {
            type_: ty.into(),
            status: status.into(),
            reason: Some("KubeletReady".into()),
            message: None,
            last_heartbeat_time: Some(t(0)),
            last_transition_time: Some(t(0)),
        }
    }

    fn node(name: &str, ready: &str, taints: Vec<Taint>) -> NodeView {
        NodeView { name: name.into(), created: t(-100), conditions: vec![cond(READY, ready)], taints }
    }

    fn tol(key: &str, secs: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(NO_EXECUTE.into()),
            seconds: secs,
            ..Default::default()
        }
    }

    fn pod(name: &str, node: &str, tolerations: Vec<Toleration>) -> PodView {
        PodView {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            node: Some(node.into()),
            deleting: false,
            ready: true,
            tolerations,
        }
    }

    fn health(probed: i64) -> BTreeMap<String, Health> {
        BTreeMap::from([("n1".to_string(), Health { signal: "x".into(), probed_at: t(probed) })])
    }

    #[test]
    fn health_counts_a_changed_signal_as_a_heartbeat() {
        let h = Health::observe(None, "a".into(), t(0));
        assert_eq!(h.probed_at, t(0));
        assert_eq!(Health::observe(Some(&h), "a".into(), t(30)).probed_at, t(0));
        assert_eq!(Health::observe(Some(&h), "b".into(), t(30)).probed_at, t(30));
    }

    #[test]
    fn a_node_within_grace_is_left_alone() {
        let (ops, next) =
            plan(&[node("n1", "True", vec![])], &health(0), &[pod("p", "n1", vec![])], t(20), Duration::seconds(20));
        assert!(ops.is_empty(), "{ops:?}");
        assert_eq!(next, None);
    }

    #[test]
    fn a_silent_node_goes_unknown_and_gets_the_unreachable_taint() {
        let n = node("n1", "True", vec![]);
        let (ops, _) = plan(&[n], &health(0), &[], t(21), Duration::seconds(20));
        let Op::NodeConditions { conditions, .. } = &ops[0] else { panic!("{ops:?}") };
        let ready = conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some(NODE_STATUS_UNKNOWN));
        assert_eq!(ready.message.as_deref(), Some(STOPPED_MESSAGE));
        assert_eq!(ready.last_heartbeat_time, Some(t(0)), "the heartbeat is the node's last one");
        assert_eq!(ready.last_transition_time, Some(t(21)));
        let never = conditions.iter().find(|c| c.type_ == "DiskPressure").unwrap();
        assert_eq!((never.status.as_str(), never.reason.as_deref()), ("Unknown", Some(NEVER_UPDATED)));
        assert_eq!(ops[1], Op::NodeTaints { node: "n1".into(), taints: vec![Taint::no_execute(UNREACHABLE, t(21))] });
    }

    #[test]
    fn taints_follow_ready_and_leave_others_alone() {
        let other =
            Taint { key: "dedicated".into(), value: Some("x".into()), effect: NO_EXECUTE.into(), time_added: None };
        let unreach = Taint::no_execute(UNREACHABLE, t(0));
        assert_eq!(wanted_taints(std::slice::from_ref(&other), Some("True"), t(5)), None);
        assert_eq!(
            wanted_taints(&[other.clone(), unreach.clone()], Some("False"), t(5)),
            Some(vec![other.clone(), Taint::no_execute(NOT_READY, t(5))])
        );
        assert_eq!(
            wanted_taints(std::slice::from_ref(&unreach), Some("Unknown"), t(5)),
            None,
            "kept with its timeAdded"
        );
        assert_eq!(wanted_taints(&[other.clone(), unreach], Some("True"), t(5)), Some(vec![other]), "node back");
        assert_eq!(wanted_taints(&[], None, t(5)), None);
    }

    #[test]
    fn eviction_honours_toleration_seconds() {
        let taints = [Taint::no_execute(UNREACHABLE, t(100))];
        assert_eq!(eviction(&pod("p", "n1", vec![]), &taints, t(100)), Eviction::Now, "no toleration");
        assert_eq!(eviction(&pod("p", "n1", vec![tol(UNREACHABLE, None)]), &taints, t(9999)), Eviction::Never);
        let p = pod("p", "n1", vec![tol(UNREACHABLE, Some(30)), tol(UNREACHABLE, Some(300))]);
        assert_eq!(eviction(&p, &taints, t(110)), Eviction::At(t(130)), "the smallest matching seconds");
        assert_eq!(eviction(&p, &taints, t(130)), Eviction::Now);
        let neg = pod("p", "n1", vec![tol(UNREACHABLE, Some(-5))]);
        assert_eq!(eviction(&neg, &taints, t(100)), Eviction::Now);
        // A toleration for the other key does not cover this taint.
        assert_eq!(eviction(&pod("p", "n1", vec![tol(NOT_READY, None)]), &taints, t(100)), Eviction::Now);
        // Tolerate-everything (`operator: Exists`, no key, no effect), as DaemonSet-like pods.
        let all = Toleration { operator: Some("Exists".into()), ..Default::default() };
        assert_eq!(eviction(&pod("p", "n1", vec![all]), &taints, t(100)), Eviction::Never);
        // NoSchedule taints do not evict.
        let ns = [Taint { key: "x".into(), value: None, effect: "NoSchedule".into(), time_added: None }];
        assert_eq!(eviction(&pod("p", "n1", vec![]), &ns, t(100)), Eviction::Never);
    }

    #[test]
    fn toleration_matching_is_upstreams() {
        let taint = Taint { key: "k".into(), value: Some("v".into()), effect: NO_EXECUTE.into(), time_added: None };
        let eq = |v: &str| Toleration { key: Some("k".into()), value: Some(v.into()), ..Default::default() };
        assert!(eq("v").tolerates(&taint));
        assert!(!eq("w").tolerates(&taint));
        let wrong_effect = Toleration { effect: Some("NoSchedule".into()), ..eq("v") };
        assert!(!wrong_effect.tolerates(&taint));
        let keyless_equal = Toleration { operator: Some("Equal".into()), ..Default::default() };
        assert!(!keyless_equal.tolerates(&taint));
    }

    #[test]
    fn pods_on_a_tainted_node_are_evicted_or_marked_not_ready() {
        let n = NodeView {
            conditions: vec![Condition { status: "Unknown".into(), ..cond(READY, "Unknown") }],
            ..node("n1", "Unknown", vec![Taint::no_execute(UNREACHABLE, t(100))])
        };
        let pods = [
            pod("none", "n1", vec![]),
            pod("thirty", "n1", vec![tol(UNREACHABLE, Some(30))]),
            pod("forever", "n1", vec![tol(UNREACHABLE, None)]),
            PodView { deleting: true, ..pod("going", "n1", vec![]) },
            pod("elsewhere", "n2", vec![]),
        ];
        let (ops, next) = plan(std::slice::from_ref(&n), &health(100), &pods, t(110), Duration::seconds(20));
        assert_eq!(
            ops,
            vec![
                Op::Evict { namespace: "default".into(), name: "none".into(), uid: "uid-none".into() },
                Op::PodNotReady { namespace: "default".into(), name: "thirty".into() },
                Op::PodNotReady { namespace: "default".into(), name: "forever".into() },
            ]
        );
        assert_eq!(next, Some(t(130)));
        let (ops, _) = plan(&[n], &health(100), &pods[1..3], t(131), Duration::seconds(20));
        assert!(ops.contains(&Op::Evict {
            namespace: "default".into(),
            name: "thirty".into(),
            uid: "uid-thirty".into()
        }));
        assert!(!ops.iter().any(|o| matches!(o, Op::Evict { name, .. } if name == "forever")));
    }

    #[test]
    fn a_node_back_in_time_loses_its_taints_and_its_pods_stay() {
        let n = node("n1", "True", vec![Taint::no_execute(UNREACHABLE, t(100))]);
        let pods = [pod("thirty", "n1", vec![tol(UNREACHABLE, Some(30))])];
        let (ops, _) = plan(&[n], &health(115), &pods, t(120), Duration::seconds(20));
        assert_eq!(ops, vec![Op::NodeTaints { node: "n1".into(), taints: vec![] }]);
    }
}
