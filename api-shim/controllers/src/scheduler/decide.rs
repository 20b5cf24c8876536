//! One scheduling decision, pure: pod + snapshot → a node, or the message saying why none.
//!
//! As upstream, filtering stops once enough feasible nodes are found
//! (`percentageOfNodesToScore`'s adaptive default: 50 % minus 1 % per 125 nodes, at least 5 %
//! and at least 100 nodes), starting where the previous decision stopped so every node gets
//! its turn. That keeps a decision's cost flat in large clusters; a pod that fits nowhere still
//! looks at every node, so its message counts them all.

use super::filter::{Failure, node_filters};
use super::message::fit_error;
use super::score::{score_nodes, select};
use super::snapshot::{NodeInfo, PodInfo, Snapshot};

const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
const MIN_FEASIBLE_NODES_PERCENTAGE: usize = 5;

/// How many feasible nodes to look for among `all` (upstream's `numFeasibleNodesToFind`).
pub fn feasible_nodes_to_find(all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND {
        return all;
    }
    let pct = 50usize.saturating_sub(all / 125).max(MIN_FEASIBLE_NODES_PERCENTAGE);
    (all * pct / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Bind { node: String },
    Unschedulable { message: String },
}

/// Where the next decision starts filtering (rotates through the node list).
#[derive(Debug, Default, Clone, Copy)]
pub struct Cursor(pub usize);

/// Decides where `pod` goes in `snap`.
pub fn schedule(pod: &PodInfo, snap: &Snapshot, cursor: &mut Cursor) -> Decision {
    let nodes = snap.nodes();
    let n = nodes.len();
    if n == 0 {
        return Decision::Unschedulable { message: fit_error(0, &[]) };
    }
    let want = feasible_nodes_to_find(n);
    let extra = super::interpod::PreFilter::new(pod, snap);
    let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(want.min(n));
    let mut failures: Vec<Failure> = Vec::new();
    let start = cursor.0 % n;
    let mut visited = 0;
    for i in 0..n {
        let node = &nodes[(start + i) % n];
        visited += 1;
        match node_filters(pod, node).and_then(|()| extra.filter(pod, node)) {
            Ok(()) => {
                feasible.push(node);
                if feasible.len() >= want {
                    break;
                }
            }
            Err(f) => failures.push(f),
        }
    }
    cursor.0 = (start + visited) % n;
    if feasible.is_empty() {
        return Decision::Unschedulable { message: fit_error(n, &failures) };
    }
    let mut scores = score_nodes(pod, &feasible);
    for (s, e) in scores.iter_mut().zip(extra.scores(pod, &feasible)) {
        *s += e;
    }
    let seed = pod.pod.metadata.uid.as_deref().map(fnv).unwrap_or(0);
    let pick = select(&scores, seed).unwrap_or(0);
    Decision::Bind { node: feasible[pick].name.clone() }
}

/// A small stable hash (FNV-1a) for tie-breaking by pod uid.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::snapshot::tests::{node, pod};
    use super::*;
    use serde_json::json;

    #[test]
    fn feasible_node_count_follows_upstreams_adaptive_percentage() {
        assert_eq!(feasible_nodes_to_find(3), 3);
        assert_eq!(feasible_nodes_to_find(99), 99);
        assert_eq!(feasible_nodes_to_find(100), 100);
        assert_eq!(feasible_nodes_to_find(1000), 420);
        assert_eq!(feasible_nodes_to_find(5000), 500);
        assert_eq!(feasible_nodes_to_find(100_000), 5000);
    }

    #[test]
    fn assumed_pods_steer_the_next_decision_and_nothing_fits_gives_the_message() {
        let mut snap = Snapshot::build(
            [
                node("a", "1", "4Gi", json!({})),
                node("b", "1", "4Gi", json!({})),
                node(
                    "t",
                    "8",
                    "8Gi",
                    json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}}),
                ),
            ],
            [],
        );
        let mut cursor = Cursor::default();
        let mut placed = Vec::new();
        for i in 0..2 {
            let p = PodInfo::new(pod(&format!("p{i}"), "600m", "1Gi", json!({})));
            let Decision::Bind { node } = schedule(&p, &snap, &mut cursor) else { panic!("unschedulable") };
            snap.assume(&p, &node);
            placed.push(node);
        }
        placed.sort();
        assert_eq!(placed, ["a", "b"]);
        let p = PodInfo::new(pod("p2", "600m", "1Gi", json!({})));
        assert_eq!(
            schedule(&p, &snap, &mut cursor),
            Decision::Unschedulable {
                message: "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.".into()
            }
        );
        assert_eq!(
            schedule(&p, &Snapshot::default(), &mut cursor),
            Decision::Unschedulable { message: "no nodes available to schedule pods".into() }
        );
    }
}
