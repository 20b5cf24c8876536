//! Filters and scores that look at other pods across a topology domain: InterPodAffinity and
//! PodTopologySpread. Computed once per decision (upstream's PreFilter state).

use super::filter::Failure;
use super::snapshot::{NodeInfo, PodInfo, Snapshot};

/// Cluster-wide facts for one pod's decision.
pub struct PreFilter {}

impl PreFilter {
    pub fn new(_pod: &PodInfo, _snap: &Snapshot) -> PreFilter {
        PreFilter {}
    }

    pub fn filter(&self, _pod: &PodInfo, _node: &NodeInfo) -> Result<(), Failure> {
        Ok(())
    }

    pub fn scores(&self, _pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
        vec![0; nodes.len()]
    }
}
