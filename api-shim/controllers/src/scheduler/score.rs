//! Scores: among the nodes that pass the filters, which is best? Upstream's default score
//! plugins, each giving 0–100 per node (normalised over the feasible nodes where upstream
//! normalises), multiplied by upstream's default plugin weight and summed.
//!
//! Why upstream's arithmetic, integer division included: placements then match what people
//! expect from kube-scheduler (spread by least-allocated, balanced cpu/memory, preferred
//! affinity pulling, `PreferNoSchedule` pushing), and the numbers are comparable in tests.

use k8s_openapi::api::core::v1::Pod;

use super::filter::term_matches;
use super::snapshot::{NodeInfo, PodInfo};

pub const MAX_NODE_SCORE: i64 = 100;
/// Default-profile plugin weights (upstream `getDefaultPlugins`).
pub const WEIGHT_RESOURCES_FIT: i64 = 1;
pub const WEIGHT_BALANCED: i64 = 1;
pub const WEIGHT_NODE_AFFINITY: i64 = 2;
pub const WEIGHT_TAINT: i64 = 3;
pub const WEIGHT_INTER_POD_AFFINITY: i64 = 2;
pub const WEIGHT_TOPOLOGY_SPREAD: i64 = 2;

/// Cpu and memory requested on the node if the pod went there (upstream's non-zero requests).
fn with_pod(pod: &PodInfo, node: &NodeInfo) -> [(i64, i64); 2] {
    [
        (node.non_zero_requested.milli_cpu.saturating_add(pod.non_zero.milli_cpu), node.allocatable.milli_cpu),
        (node.non_zero_requested.memory.saturating_add(pod.non_zero.memory), node.allocatable.memory),
    ]
}

/// NodeResourcesFit with the LeastAllocated strategy (cpu and memory, weight 1 each).
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let per = |(req, cap): (i64, i64)| {
        if cap == 0 || req > cap { 0 } else { (cap - req) * MAX_NODE_SCORE / cap }
    };
    let [cpu, mem] = with_pod(pod, node);
    (per(cpu) + per(mem)) / 2
}

/// NodeResourcesBalancedAllocation: 100 when cpu and memory are used in the same proportion,
/// less the standard deviation of the two fractions.
pub fn balanced_allocation(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let fractions: Vec<f64> = with_pod(pod, node)
        .into_iter()
        .filter(|(_, cap)| *cap > 0)
        .map(|(req, cap)| (req as f64 / cap as f64).min(1.0))
        .collect();
    let std = match fractions.as_slice() {
        [a, b] => (a - b).abs() / 2.0,
        _ => 0.0,
    };
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

/// NodeAffinity: the summed weights of the preferred terms the node matches (normalised later).
pub fn preferred_node_affinity(pod: &Pod, node: &NodeInfo) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.preferred_during_scheduling_ignored_during_execution.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.weight != 0 && term_matches(&t.preference, node.labels(), &node.name))
        .map(|t| i64::from(t.weight))
        .sum()
}

/// TaintToleration: how many `PreferNoSchedule` taints the pod does not tolerate (normalised
/// in reverse later: fewer is better).
pub fn intolerable_soft_taints(pod: &Pod, node: &NodeInfo) -> i64 {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
    let soft: Vec<_> = tolerations
        .iter()
        .filter(|t| t.effect.as_deref().is_none_or(|e| e.is_empty() || e == "PreferNoSchedule"))
        .collect();
    node.taints()
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !soft.iter().any(|tol| super::filter::tolerates(tol, t)))
        .count() as i64
}

/// Upstream's `DefaultNormalizeScore`: scale so the best node gets 100 (or, reversed, so the
/// worst gets 0); all zero stays zero (reversed: all 100).
pub fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        *s = match (max, reverse) {
            (0, false) => 0,
            (0, true) => MAX_NODE_SCORE,
            (m, false) => *s * MAX_NODE_SCORE / m,
            (m, true) => MAX_NODE_SCORE - *s * MAX_NODE_SCORE / m,
        };
    }
}

/// The weighted sums of the node-local score plugins for each feasible node, in order.
pub fn score_nodes(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    let mut affinity: Vec<i64> = nodes.iter().map(|n| preferred_node_affinity(&pod.pod, n)).collect();
    normalize(&mut affinity, false);
    let mut taints: Vec<i64> = nodes.iter().map(|n| intolerable_soft_taints(&pod.pod, n)).collect();
    normalize(&mut taints, true);
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            least_allocated(pod, n) * WEIGHT_RESOURCES_FIT
                + balanced_allocation(pod, n) * WEIGHT_BALANCED
                + affinity[i] * WEIGHT_NODE_AFFINITY
                + taints[i] * WEIGHT_TAINT
        })
        .collect()
}

/// The index of the best score; ties are broken by `seed` (upstream picks one at random, so
/// equal nodes share the load).
pub fn select(scores: &[i64], seed: u64) -> Option<usize> {
    let best = scores.iter().copied().max()?;
    let ties: Vec<usize> = scores.iter().enumerate().filter(|(_, s)| **s == best).map(|(i, _)| i).collect();
    ties.get((seed % ties.len() as u64) as usize).copied()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::snapshot::Snapshot;
    use super::super::snapshot::tests::{node, pod};
    use super::*;
    use serde_json::json;

    #[test]
    fn least_allocated_and_balanced_follow_upstreams_arithmetic() {
        let s = Snapshot::build(
            [node("a", "4", "8Gi", json!({})), node("b", "4", "8Gi", json!({}))],
            [pod("x", "3", "1Gi", json!({"spec": {"nodeName": "b"}}))],
        );
        let p = PodInfo::new(pod("p", "1", "2Gi", json!({})));
        let (a, b) = (s.node("a").unwrap(), s.node("b").unwrap());
        // a: cpu (4000-1000)*100/4000 = 75, memory (8-2)/8 = 75 → 75.
        assert_eq!(least_allocated(&p, a), 75);
        // b: cpu 0 left → 0, memory (8-3)/8 = 62 → 31.
        assert_eq!(least_allocated(&p, b), 31);
        // a: fractions 0.25 and 0.25 → 100; b: 1.0 and 0.375 → 100 - 31.25 = 68.
        assert_eq!(balanced_allocation(&p, a), 100);
        assert_eq!(balanced_allocation(&p, b), 68);
        let scores = score_nodes(&p, &[a, b]);
        assert_eq!(select(&scores, 7), Some(0));
    }

    #[test]
    fn preferred_affinity_and_soft_taints_are_normalised_and_weighted() {
        let s = Snapshot::build(
            [
                node("ssd", "4", "8Gi", json!({"metadata": {"labels": {"disk": "ssd"}}})),
                node("hdd", "4", "8Gi", json!({"metadata": {"labels": {"disk": "hdd"}}})),
                node(
                    "soft",
                    "4",
                    "8Gi",
                    json!({"metadata": {"labels": {"disk": "ssd"}}, "spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}),
                ),
            ],
            [],
        );
        let p = PodInfo::new(pod(
            "p",
            "1",
            "1Gi",
            json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 40, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
                {"weight": 10, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}},
            ]}}}}),
        ));
        let nodes: Vec<&NodeInfo> = s.nodes().iter().collect();
        assert_eq!(nodes.iter().map(|n| preferred_node_affinity(&p.pod, n)).collect::<Vec<_>>(), [50, 10, 50]);
        assert_eq!(nodes.iter().map(|n| intolerable_soft_taints(&p.pod, n)).collect::<Vec<_>>(), [0, 0, 1]);
        let scores = score_nodes(&p, &nodes);
        // Equal resources: affinity 100/20/100 × 2, taints 100/100/0 × 3.
        assert_eq!(scores[0] - scores[1], 160);
        assert_eq!(scores[0] - scores[2], 300);
        assert_eq!(select(&scores, 0), Some(0));
        let mut v = vec![0, 0];
        normalize(&mut v, true);
        assert_eq!(v, [100, 100]);
    }

    #[test]
    fn ties_are_broken_by_the_seed() {
        assert_eq!(select(&[5, 9, 9, 1, 9], 0), Some(1));
        assert_eq!(select(&[5, 9, 9, 1, 9], 1), Some(2));
        assert_eq!(select(&[5, 9, 9, 1, 9], 5), Some(4));
        assert_eq!(select(&[], 5), None);
    }
}
