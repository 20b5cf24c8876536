//! The pure core of node IPAM: a range allocator over the cluster CIDR and the plan that gives
//! every node without a pod CIDR the lowest free one.
//!
//! The allocator holds no state of its own worth keeping: it is rebuilt from the Node objects on
//! every pass ([`plan`]), so a CIDR is "used" exactly while some Node carries it. That makes a
//! restart unable to hand out a CIDR twice and a deleted node's CIDR free again as soon as the
//! node is gone, without any bookkeeping to get out of sync. The only extra input is `pending`:
//! CIDRs the controller has just written whose Node update the watch has not shown yet.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;

/// The condition set on a node when the range is exhausted (upstream's `NetworkUnavailable`).
pub const NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";
/// Reason of that condition and of the Event (upstream's `CIDRNotAvailable` status change).
pub const CIDR_NOT_AVAILABLE: &str = "CIDRNotAvailable";
/// Reason once a CIDR was finally assigned to a node we had marked.
pub const CIDR_ASSIGNED: &str = "CIDRAssigned";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--node-cidr-mask-size {mask} must be within {min}..=32 for cluster CIDR {cluster}")]
    Mask { cluster: Ipv4Net, mask: u8, min: u8 },
}

/// Hands out `/mask` subnets of `cluster`, lowest first.
#[derive(Debug, Clone)]
pub struct Allocator {
    cluster: Ipv4Net,
    mask: u8,
    used: BTreeSet<Ipv4Net>,
}

impl Allocator {
    pub fn new(cluster: Ipv4Net, mask: u8) -> Result<Allocator, ConfigError> {
        let cluster = cluster.trunc();
        if mask < cluster.prefix_len() || mask > 32 {
            return Err(ConfigError::Mask { cluster, mask, min: cluster.prefix_len() });
        }
        Ok(Allocator { cluster, mask, used: BTreeSet::new() })
    }

    /// Marks a CIDR as taken. Anything that is not one of our subnets (another range, another
    /// size, not aligned) is not ours to manage and is ignored: `false`.
    pub fn occupy(&mut self, cidr: Ipv4Net) -> bool {
        if cidr.prefix_len() != self.mask || cidr.trunc() != cidr || !self.cluster.contains(&cidr) {
            return false;
        }
        self.used.insert(cidr);
        true
    }

    pub fn release(&mut self, cidr: &Ipv4Net) {
        self.used.remove(cidr);
    }

    /// The lowest free subnet, now taken; `None` when the range is exhausted.
    pub fn allocate(&mut self) -> Option<Ipv4Net> {
        let free = self.cluster.subnets(self.mask).ok()?.find(|s| !self.used.contains(s))?;
        self.used.insert(free);
        Some(free)
    }

    pub fn capacity(&self) -> u64 {
        1u64 << (self.mask - self.cluster.prefix_len())
    }
}

/// What the plan needs of a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// `spec.podCIDRs` (or `spec.podCIDR` when the list is empty), as written.
    pub pod_cidrs: Vec<String>,
    /// The node carries our `NetworkUnavailable=True, reason CIDRNotAvailable` condition.
    pub marked_exhausted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `spec.podCIDR` and `spec.podCIDRs` (and clear our exhaustion mark if it is set).
    Assign { node: String, cidr: Ipv4Net, clear_mark: bool },
    /// No CIDR left: one Event and the `NetworkUnavailable` condition, once per node (a node
    /// already marked is not marked again, so an exhausted range causes no hot loop).
    Exhausted { node: String },
}

/// The operations that give every node a pod CIDR. `pending` holds assignments written but not
/// yet seen on the Node objects (node name → CIDR); they count as used and are not repeated.
pub fn plan(
    cluster: Ipv4Net,
    mask: u8,
    nodes: &[NodeView],
    pending: &BTreeMap<String, Ipv4Net>,
) -> Result<Vec<Op>, ConfigError> {
    let mut alloc = Allocator::new(cluster, mask)?;
    let mut wanting = Vec::new();
    let mut sorted: Vec<&NodeView> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for n in &sorted {
        let parsed: Vec<Ipv4Net> = n.pod_cidrs.iter().filter_map(|c| c.parse().ok()).collect();
        for c in &parsed {
            alloc.occupy(*c);
        }
        if n.pod_cidrs.is_empty() {
            match pending.get(&n.name) {
                Some(c) => {
                    alloc.occupy(*c);
                }
                None => wanting.push(*n),
            }
        }
    }
    let mut ops = Vec::new();
    for n in wanting {
        match alloc.allocate() {
            Some(cidr) => ops.push(Op::Assign { node: n.name.clone(), cidr, clear_mark: n.marked_exhausted }),
            None if !n.marked_exhausted => ops.push(Op::Exhausted { node: n.name.clone() }),
            None => {}
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn node(name: &str, cidrs: &[&str]) -> NodeView {
        NodeView {
            name: name.into(),
            pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            marked_exhausted: false,
        }
    }

    #[test]
    fn allocator_hands_out_lowest_free_and_reuses_released() {
        let mut a = Allocator::new(net("10.244.0.0/16"), 24).unwrap();
        assert_eq!(a.capacity(), 256);
        assert_eq!(a.allocate(), Some(net("10.244.0.0/24")));
        assert_eq!(a.allocate(), Some(net("10.244.1.0/24")));
        assert!(a.occupy(net("10.244.2.0/24")));
        assert_eq!(a.allocate(), Some(net("10.244.3.0/24")));
        a.release(&net("10.244.1.0/24"));
        assert_eq!(a.allocate(), Some(net("10.244.1.0/24")));
    }

    #[test]
    fn allocator_ignores_what_is_not_its_own() {
        let mut a = Allocator::new(net("10.244.0.0/16"), 24).unwrap();
        assert!(!a.occupy(net("10.245.0.0/24")), "other range");
        assert!(!a.occupy(net("10.244.0.0/25")), "other size");
        assert!(!a.occupy(net("10.244.0.128/24")), "not aligned");
        assert_eq!(a.allocate(), Some(net("10.244.0.0/24")));
    }

    #[test]
    fn allocator_exhausts_and_rejects_bad_masks() {
        let mut a = Allocator::new(net("10.0.0.0/30"), 31).unwrap();
        assert_eq!(a.allocate(), Some(net("10.0.0.0/31")));
        assert_eq!(a.allocate(), Some(net("10.0.0.2/31")));
        assert_eq!(a.allocate(), None);
        assert!(Allocator::new(net("10.244.0.0/16"), 8).is_err());
        assert!(Allocator::new(net("10.244.0.0/16"), 33).is_err());
        // A host-bits-set range is truncated rather than refused.
        assert_eq!(Allocator::new(net("10.244.7.1/16"), 24).unwrap().allocate(), Some(net("10.244.0.0/24")));
    }

    #[test]
    fn plan_assigns_around_existing_and_pending_cidrs() {
        let nodes = [node("a", &["10.244.0.0/24"]), node("c", &[]), node("b", &[]), node("d", &[])];
        let pending = BTreeMap::from([("d".to_string(), net("10.244.1.0/24"))]);
        let ops = plan(net("10.244.0.0/16"), 24, &nodes, &pending).unwrap();
        assert_eq!(
            ops,
            vec![
                Op::Assign { node: "b".into(), cidr: net("10.244.2.0/24"), clear_mark: false },
                Op::Assign { node: "c".into(), cidr: net("10.244.3.0/24"), clear_mark: false },
            ]
        );
    }

    #[test]
    fn plan_is_stable_once_every_node_has_a_cidr() {
        // As after a restart: the Node objects are the whole state.
        let nodes = [node("a", &["10.244.0.0/24"]), node("b", &["10.244.5.0/24"])];
        assert!(plan(net("10.244.0.0/16"), 24, &nodes, &BTreeMap::new()).unwrap().is_empty());
        // A node holding a foreign CIDR keeps it and does not block ours.
        let nodes = [node("x", &["192.168.0.0/24"]), node("y", &[])];
        assert_eq!(
            plan(net("10.244.0.0/16"), 24, &nodes, &BTreeMap::new()).unwrap(),
            vec![Op::Assign { node: "y".into(), cidr: net("10.244.0.0/24"), clear_mark: false }]
        );
    }

    #[test]
    fn plan_marks_exhaustion_once_and_clears_it_when_a_cidr_frees_up() {
        let full = [node("a", &["10.0.0.0/25"]), node("b", &["10.0.0.128/25"]), node("c", &[])];
        let ops = plan(net("10.0.0.0/24"), 25, &full, &BTreeMap::new()).unwrap();
        assert_eq!(ops, vec![Op::Exhausted { node: "c".into() }]);
        let mut marked = full.clone();
        marked[2].marked_exhausted = true;
        assert!(plan(net("10.0.0.0/24"), 25, &marked, &BTreeMap::new()).unwrap().is_empty(), "no hot loop");
        // Node b deleted: its CIDR goes to c, and c's mark is cleared.
        let after = [marked[0].clone(), marked[2].clone()];
        assert_eq!(
            plan(net("10.0.0.0/24"), 25, &after, &BTreeMap::new()).unwrap(),
            vec![Op::Assign { node: "c".into(), cidr: net("10.0.0.128/25"), clear_mark: true }]
        );
    }
}
