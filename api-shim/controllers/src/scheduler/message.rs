//! The `FailedScheduling` / `PodScheduled=False` message, in kube-scheduler 1.33's shape:
//!
//! `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {k: v}.
//! preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod,
//! 2 Preemption is not helpful for scheduling.`
//!
//! Why the exact shape: people grep for it, runbooks quote it, and tools parse the counts. Each
//! reason is counted once per node that gave it; the "count reason" strings are sorted as
//! strings (upstream's `sort.Strings`, so "10 …" sorts before "2 …"). The preemption part says
//! for each node whether evicting pods could help; keelson does not preempt yet, so nodes where
//! it could are reported as having no victims.

use std::collections::BTreeMap;

use super::filter::{Code, Failure};

/// Upstream's `ErrNoNodesAvailable`.
pub const NO_NODES: &str = "no nodes available to schedule pods";
pub const PREEMPTION_NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

fn histogram<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for i in items {
        *counts.entry(i).or_insert(0) += 1;
    }
    let mut lines: Vec<String> = counts.into_iter().map(|(r, n)| format!("{n} {r}")).collect();
    lines.sort();
    lines.join(", ")
}

/// The message for a pod no node accepted, given every node's failure.
pub fn fit_error(num_nodes: usize, failures: &[Failure]) -> String {
    if num_nodes == 0 {
        return NO_NODES.to_string();
    }
    let reasons = histogram(failures.iter().flat_map(|f| f.reasons.iter().map(String::as_str)));
    let preemption = histogram(failures.iter().map(|f| match f.code {
        Code::Unresolvable => PREEMPTION_NOT_HELPFUL,
        Code::Unschedulable => NO_VICTIMS,
    }));
    format!(
        "0/{num_nodes} nodes are available: {reasons}. preemption: 0/{num_nodes} nodes are available: {preemption}."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(code: Code, reasons: &[&str]) -> Failure {
        Failure { plugin: "p", code, reasons: reasons.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn upstream_shape_counts_sorted_as_strings() {
        let taint = "node(s) had untolerated taint {k: v}";
        let msg = fit_error(
            3,
            &[
                f(Code::Unschedulable, &["Insufficient cpu"]),
                f(Code::Unresolvable, &[taint]),
                f(Code::Unresolvable, &[taint]),
            ],
        );
        assert_eq!(
            msg,
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {k: v}. preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn several_reasons_per_node_and_string_order_of_counts() {
        let mut fs = vec![f(Code::Unschedulable, &["Insufficient cpu", "Insufficient memory"])];
        fs.extend((0..10).map(|_| f(Code::Unresolvable, &["node(s) didn't match Pod's node affinity/selector"])));
        fs.extend((0..2).map(|_| f(Code::Unschedulable, &["Insufficient cpu"])));
        assert_eq!(
            fit_error(13, &fs),
            "0/13 nodes are available: 1 Insufficient memory, 10 node(s) didn't match Pod's node affinity/selector, 3 Insufficient cpu. preemption: 0/13 nodes are available: 10 Preemption is not helpful for scheduling, 3 No preemption victims found for incoming pod."
        );
        assert_eq!(fit_error(0, &[]), NO_NODES);
    }
}
