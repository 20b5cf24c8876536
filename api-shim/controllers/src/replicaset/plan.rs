//! The pure core of the ReplicaSet / ReplicationController controller.
//!
//! Both kinds mean "keep N pods matching a selector"; they differ only in how the selector is
//! written, so the reconciler converts either into a [`Set`] and this module decides, without a
//! server, which pods to adopt, release, create and delete and what the status says. Keeping it
//! pure lets every rule (the deletion order, slow start, the expectations that stop a burst of
//! creates from being doubled while the cache catches up) be tested in a line.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use keelson_apimachinery::selectors::LabelSelector;

/// The most pods one sync creates or deletes (upstream's `burstReplicas`).
pub const BURST: usize = 500;
/// The first slow-start batch; each successful batch doubles the next one.
pub const SLOW_START_INITIAL: usize = 1;

/// The set as the planner sees it.
#[derive(Debug, Clone)]
pub struct Set {
    pub uid: String,
    pub generation: i64,
    pub replicas: usize,
    pub selector: LabelSelector,
    /// The labels of the pod template (for `fullyLabeledReplicas`).
    pub template_labels: BTreeMap<String, String>,
    pub min_ready_seconds: i64,
    /// `metadata.deletionTimestamp` is set: no adoption, no creation.
    pub deleting: bool,
}

/// One pod as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// The uid of the pod's controller owner reference (`controller: true`), if any.
    pub controller_uid: Option<String>,
    pub deleting: bool,
    /// `status.phase`; `Succeeded` and `Failed` pods no longer count.
    pub phase: String,
    pub node_name: Option<String>,
    /// When the `Ready` condition turned true, if it is true.
    pub ready_since: Option<DateTime<Utc>>,
    pub restarts: i32,
    pub created: Option<DateTime<Utc>>,
}

impl Pod {
    /// Not terminal and not being deleted: the pods that make up the replica count.
    pub fn active(&self) -> bool {
        !self.deleting && self.phase != "Succeeded" && self.phase != "Failed"
    }

    pub fn ready(&self) -> bool {
        self.ready_since.is_some()
    }

    /// Ready for at least `min_ready` seconds at `now`.
    pub fn available(&self, min_ready: i64, now: DateTime<Utc>) -> bool {
        match self.ready_since {
            Some(since) => min_ready <= 0 || since + chrono::Duration::seconds(min_ready) <= now,
            None => false,
        }
    }
}

/// The status the set should report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub replicas: i32,
    pub fully_labeled_replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    pub observed_generation: i64,
}

/// What one sync does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Orphans that match the selector: take them (set a controller reference).
    pub adopt: Vec<String>,
    /// Owned pods that stopped matching: let them go (remove the reference).
    pub release: Vec<String>,
    /// How many pods to create from the template.
    pub create: usize,
    /// Pods to delete, in order.
    pub delete: Vec<String>,
    pub status: Status,
    /// The earliest moment a pod turns available (re-sync then to update the status).
    pub recheck_at: Option<DateTime<Utc>>,
}

/// Creations and deletions this controller made and has not yet seen in its pod cache
/// (upstream's "expectations"). While they are outstanding the set is not resized again, so a
/// burst of creates is not doubled by a stale cache; they expire after [`Expectations::TTL`] so
/// a lost watch event cannot wedge the set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectations {
    pub created: BTreeSet<String>,
    pub deleted: BTreeSet<String>,
    pub since: Option<DateTime<Utc>>,
}

impl Expectations {
    pub const TTL: chrono::Duration = chrono::Duration::seconds(60);

    /// Satisfied when every pod created is in the cache and every pod deleted is gone from it
    /// (or marked for deletion), or when the expectations are older than the TTL.
    pub fn satisfied(&self, pods: &[Pod], now: DateTime<Utc>) -> bool {
        if self.since.is_some_and(|s| s + Self::TTL <= now) {
            return true;
        }
        let seen: BTreeMap<&str, &Pod> = pods.iter().map(|p| (p.name.as_str(), p)).collect();
        self.created.iter().all(|n| seen.contains_key(n.as_str()))
            && self.deleted.iter().all(|n| seen.get(n.as_str()).is_none_or(|p| p.deleting))
    }
}

/// Decides adoption, release, creation, deletion and status for `set` given every pod in its
/// namespace. `expectations_met` is [`Expectations::satisfied`]: when false only the status
/// (and ownership) is acted on.
pub fn plan(set: &Set, pods: &[Pod], expectations_met: bool, now: DateTime<Utc>) -> Plan {
    let mut out = Plan::default();
    // Pods that are ours after this sync: owned and matching, plus matching orphans we adopt.
    let mut mine: Vec<&Pod> = Vec::new();
    for p in pods {
        let matches = !set.selector.is_empty() && set.selector.matches(&p.labels);
        match p.controller_uid.as_deref() {
            Some(uid) if uid == set.uid => {
                if matches {
                    mine.push(p);
                } else if !p.deleting {
                    out.release.push(p.name.clone());
                }
            }
            Some(_) => {}
            None => {
                // Upstream adopts only active orphans and never while the set is being deleted.
                if matches && !set.deleting && !p.deleting {
                    out.adopt.push(p.name.clone());
                    mine.push(p);
                }
            }
        }
    }
    let active: Vec<&Pod> = mine.iter().copied().filter(|p| p.active()).collect();

    if expectations_met && !set.deleting {
        let have = active.len();
        if have < set.replicas {
            out.create = (set.replicas - have).min(BURST);
        } else if have > set.replicas {
            let surplus = (have - set.replicas).min(BURST);
            let mut order = active.clone();
            order.sort_by(|a, b| deletion_order(a, b));
            out.delete = order.iter().take(surplus).map(|p| p.name.clone()).collect();
        }
    }

    let min_ready = set.min_ready_seconds;
    out.status = Status {
        replicas: count(active.len()),
        fully_labeled_replicas: count(
            active.iter().filter(|p| set.template_labels.iter().all(|(k, v)| p.labels.get(k) == Some(v))).count(),
        ),
        ready_replicas: count(active.iter().filter(|p| p.ready()).count()),
        available_replicas: count(active.iter().filter(|p| p.available(min_ready, now)).count()),
        observed_generation: set.generation,
    };
    if min_ready > 0 {
        out.recheck_at = active
            .iter()
            .filter(|p| !p.available(min_ready, now))
            .filter_map(|p| p.ready_since)
            .map(|s| s + chrono::Duration::seconds(min_ready))
            .min();
    }
    out
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Upstream's order for choosing which pods to delete first: unscheduled before scheduled,
/// pending before unknown before running, not ready before ready, ready for less time before
/// ready for longer, more restarts before fewer, newer before older.
pub fn deletion_order(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    let phase_rank = |p: &Pod| match p.phase.as_str() {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    };
    a.node_name
        .is_some()
        .cmp(&b.node_name.is_some())
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| a.ready().cmp(&b.ready()))
        // Both ready: the one ready more recently goes first (later `since` sorts first).
        .then_with(|| b.ready_since.cmp(&a.ready_since))
        .then_with(|| b.restarts.cmp(&a.restarts))
        // Newer first; a pod without a timestamp counts as newest.
        .then_with(|| match (a.created, b.created) {
            (Some(x), Some(y)) => y.cmp(&x),
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        })
        .then_with(|| a.name.cmp(&b.name))
}

/// Upstream's slow start: the batch sizes (1, 2, 4, …) in which `total` pods are created. The
/// reconciler stops after a batch with a failure, so a quota or admission refusal costs a few
/// calls instead of `total`.
pub fn slow_start_batches(total: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = total;
    let mut batch = SLOW_START_INITIAL;
    while left > 0 {
        let n = batch.min(left);
        out.push(n);
        left -= n;
        batch = batch.saturating_mul(2);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn set(replicas: usize) -> Set {
        Set {
            uid: "set".into(),
            generation: 3,
            replicas,
            selector: LabelSelector::parse("app=web").unwrap(),
            template_labels: [("app".to_string(), "web".to_string()), ("tier".into(), "fe".into())].into(),
            min_ready_seconds: 0,
            deleting: false,
        }
    }

    fn pod(name: &str) -> Pod {
        Pod {
            name: name.into(),
            uid: format!("uid-{name}"),
            labels: [("app".to_string(), "web".to_string()), ("tier".into(), "fe".into())].into(),
            controller_uid: Some("set".into()),
            deleting: false,
            phase: "Running".into(),
            node_name: Some("n1".into()),
            ready_since: Some(t(0)),
            restarts: 0,
            created: Some(t(0)),
        }
    }

    #[test]
    fn creates_the_missing_pods() {
        let p = plan(&set(3), &[pod("a")], true, t(100));
        assert_eq!(p.create, 2);
        assert!(p.delete.is_empty());
        assert_eq!(p.status.replicas, 1);
        assert_eq!(p.status.observed_generation, 3);
    }

    #[test]
    fn outstanding_expectations_hold_resizing_but_not_status() {
        let p = plan(&set(3), &[pod("a")], false, t(100));
        assert_eq!(p.create, 0);
        assert_eq!(p.status.replicas, 1);
        let exp = Expectations { created: ["b".to_string()].into(), deleted: BTreeSet::new(), since: Some(t(0)) };
        assert!(!exp.satisfied(&[pod("a")], t(10)));
        assert!(exp.satisfied(&[pod("a"), pod("b")], t(10)));
        assert!(exp.satisfied(&[pod("a")], t(61)), "expectations expire");
        let exp = Expectations { created: BTreeSet::new(), deleted: ["a".to_string()].into(), since: Some(t(0)) };
        assert!(!exp.satisfied(&[pod("a")], t(10)));
        let mut going = pod("a");
        going.deleting = true;
        assert!(exp.satisfied(&[going], t(10)));
        assert!(exp.satisfied(&[], t(10)));
    }

    #[test]
    fn terminal_and_deleting_pods_do_not_count() {
        let mut done = pod("a");
        done.phase = "Succeeded".into();
        let mut going = pod("b");
        going.deleting = true;
        let p = plan(&set(2), &[done, going, pod("c")], true, t(100));
        assert_eq!(p.create, 1);
        assert_eq!(p.status.replicas, 1);
    }

    #[test]
    fn adopts_matching_orphans_and_releases_owned_pods_that_stopped_matching() {
        let mut orphan = pod("orphan");
        orphan.controller_uid = None;
        let mut other = pod("other");
        other.controller_uid = Some("someone-else".into());
        let mut relabeled = pod("relabeled");
        relabeled.labels = [("app".to_string(), "debug".to_string())].into();
        let mut stranger = pod("stranger");
        stranger.controller_uid = None;
        stranger.labels.clear();
        let p = plan(&set(2), &[orphan, other, relabeled, stranger, pod("a")], true, t(100));
        assert_eq!(p.adopt, vec!["orphan"]);
        assert_eq!(p.release, vec!["relabeled"]);
        assert_eq!(p.create, 0);
        assert!(p.delete.is_empty());
        assert_eq!(p.status.replicas, 2);
    }

    #[test]
    fn a_deleting_set_adopts_and_creates_nothing() {
        let mut s = set(3);
        s.deleting = true;
        let mut orphan = pod("orphan");
        orphan.controller_uid = None;
        let p = plan(&s, &[orphan], true, t(100));
        assert!(p.adopt.is_empty());
        assert_eq!(p.create, 0);
    }

    #[test]
    fn an_empty_selector_matches_nothing() {
        let mut s = set(1);
        s.selector = LabelSelector::default();
        let mut orphan = pod("orphan");
        orphan.controller_uid = None;
        let p = plan(&s, &[orphan], true, t(100));
        assert!(p.adopt.is_empty());
        assert_eq!(p.create, 1);
    }

    #[test]
    fn deletes_surplus_in_upstreams_order() {
        let mut unscheduled = pod("unscheduled");
        unscheduled.node_name = None;
        unscheduled.phase = "Pending".into();
        unscheduled.ready_since = None;
        let mut pending = pod("pending");
        pending.phase = "Pending".into();
        pending.ready_since = None;
        let mut not_ready = pod("not-ready");
        not_ready.ready_since = None;
        let mut ready_recently = pod("ready-recently");
        ready_recently.ready_since = Some(t(50));
        let mut restarted = pod("restarted");
        restarted.restarts = 3;
        let mut newer = pod("newer");
        newer.created = Some(t(10));
        let old = pod("old");
        let all = vec![old, newer, restarted, ready_recently, not_ready, pending, unscheduled];
        let p = plan(&set(1), &all, true, t(100));
        assert_eq!(p.delete, vec!["unscheduled", "pending", "not-ready", "ready-recently", "restarted", "newer"]);
    }

    #[test]
    fn status_counts_labels_readiness_and_availability() {
        let mut s = set(4);
        s.min_ready_seconds = 30;
        let mut partial = pod("partial");
        partial.labels.remove("tier");
        partial.labels.insert("app".into(), "web".into());
        let mut fresh = pod("fresh");
        fresh.ready_since = Some(t(90));
        let mut unready = pod("unready");
        unready.ready_since = None;
        let p = plan(&s, &[pod("a"), partial, fresh, unready], true, t(100));
        assert_eq!(
            p.status,
            Status {
                replicas: 4,
                fully_labeled_replicas: 3,
                ready_replicas: 3,
                available_replicas: 2,
                observed_generation: 3
            }
        );
        assert_eq!(p.recheck_at, Some(t(120)));
    }

    #[test]
    fn bursts_are_capped_and_created_in_doubling_batches() {
        assert_eq!(plan(&set(2000), &[], true, t(0)).create, BURST);
        assert_eq!(slow_start_batches(10), vec![1, 2, 4, 3]);
        assert_eq!(slow_start_batches(1), vec![1]);
        assert!(slow_start_batches(0).is_empty());
    }
}
