//! The queue of pods waiting for a node, shaped like upstream's scheduling queue: an active
//! heap (higher `spec.priority` first, then first come first served), a backoff area and an
//! area for unschedulable pods.
//!
//! Why three areas: a pod that did not fit must not be retried in a hot loop, yet must be
//! retried soon after anything changes that could make it fit. So a failed pod waits out its
//! backoff (1 s doubling to 10 s per attempt, upstream's defaults) and then sits *parked* until
//! a node or pod changes (or its own object changes), or until the periodic flush (60 s) moves
//! it anyway, which keeps the loop level-triggered even if an event was missed. A change seen
//! while the pod was being tried counts too (upstream's move request cycle), so no wake-up is
//! lost between the decision and the requeue.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
pub const FLUSH_UNSCHEDULABLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Area {
    Active,
    InFlight,
    Backoff,
    Parked,
}

#[derive(Debug)]
struct Entry {
    pod: Arc<Pod>,
    priority: i32,
    seq: u64,
    attempts: u32,
    area: Area,
    /// When the last attempt started.
    tried_at: Instant,
    ready_at: Instant,
    /// Go active as soon as the backoff ends (a change was seen, or the failure was an error).
    wake: bool,
}

/// The pending pods, by `namespace/name`.
#[derive(Debug, Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    active: BTreeSet<(Reverse<i32>, u64, String)>,
    backoff: BTreeSet<(Instant, String)>,
    parked: BTreeSet<(Instant, String)>,
    seq: u64,
    last_change: Option<Instant>,
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Upstream's per-pod backoff: 1 s, 2 s, 4 s, 8 s, then 10 s.
pub fn backoff(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(8);
    (INITIAL_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
}

impl Queue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    fn detach(&mut self, key: &str) {
        let Some(e) = self.entries.get(key) else { return };
        match e.area {
            Area::Active => {
                self.active.remove(&(Reverse(e.priority), e.seq, key.to_string()));
            }
            Area::Backoff => {
                self.backoff.remove(&(e.ready_at, key.to_string()));
            }
            Area::Parked => {
                self.parked.remove(&(e.tried_at + FLUSH_UNSCHEDULABLE, key.to_string()));
            }
            Area::InFlight => {}
        }
    }

    fn activate(&mut self, key: &str) {
        self.detach(key);
        if let Some(e) = self.entries.get_mut(key) {
            e.area = Area::Active;
            self.active.insert((Reverse(e.priority), e.seq, key.to_string()));
        }
    }

    /// A pending pod was added or changed. A new pod goes active; a waiting one is woken
    /// (after its backoff), since its own change may make it fit.
    pub fn upsert(&mut self, key: &str, pod: Arc<Pod>) {
        match self.entries.get_mut(key) {
            None => {
                self.seq += 1;
                let now = Instant::now();
                let e = Entry {
                    priority: priority(&pod),
                    pod,
                    seq: self.seq,
                    attempts: 0,
                    area: Area::InFlight,
                    tried_at: now,
                    ready_at: now,
                    wake: false,
                };
                self.entries.insert(key.to_string(), e);
                self.activate(key);
            }
            Some(e) => {
                e.pod = pod;
                e.wake = true;
                if e.area == Area::Parked {
                    self.activate(key);
                }
            }
        }
    }

    /// The pod is no longer pending (bound, deleted, or handed to another scheduler).
    pub fn remove(&mut self, key: &str) {
        self.detach(key);
        self.entries.remove(key);
    }

    /// Keeps only these pending pods (after a re-list), adding the new ones.
    pub fn replace(&mut self, pending: Vec<(String, Arc<Pod>)>) {
        let keep: std::collections::HashSet<&String> = pending.iter().map(|(k, _)| k).collect();
        let gone: Vec<String> = self.entries.keys().filter(|k| !keep.contains(k)).cloned().collect();
        for g in gone {
            self.remove(&g);
        }
        for (k, p) in pending {
            self.upsert(&k, p);
        }
    }

    /// Something in the cluster changed (a node, a bound pod): every parked pod goes active,
    /// and pods still backing off or being tried go active when their backoff ends.
    pub fn cluster_changed(&mut self, now: Instant) {
        self.last_change = Some(now);
        let parked: Vec<String> = self.parked.iter().map(|(_, k)| k.clone()).collect();
        for k in parked {
            self.activate(&k);
        }
    }

    /// Moves pods whose time has come into the active heap.
    fn promote(&mut self, now: Instant) {
        while let Some((at, key)) = self.backoff.first().cloned() {
            if at > now {
                break;
            }
            self.backoff.pop_first();
            let Some(e) = self.entries.get_mut(&key) else { continue };
            let changed = self.last_change.is_some_and(|c| c >= e.tried_at);
            if e.wake || changed {
                e.area = Area::InFlight;
                self.activate(&key);
            } else {
                e.area = Area::Parked;
                self.parked.insert((e.tried_at + FLUSH_UNSCHEDULABLE, key));
            }
        }
        while let Some((at, key)) = self.parked.first().cloned() {
            if at > now {
                break;
            }
            self.activate(&key);
        }
    }

    /// The next pod to try, highest priority first; it stays known (in flight) until
    /// [`Queue::done`], [`Queue::unschedulable`] or [`Queue::retry`].
    pub fn pop(&mut self, now: Instant) -> Option<(String, Arc<Pod>)> {
        self.promote(now);
        let (_, _, key) = self.active.pop_first()?;
        let e = self.entries.get_mut(&key)?;
        e.area = Area::InFlight;
        e.tried_at = now;
        e.wake = false;
        Some((key, e.pod.clone()))
    }

    /// The pod was assumed onto a node: it leaves the queue.
    pub fn done(&mut self, key: &str) {
        self.remove(key);
    }

    fn back_off(&mut self, key: &str, wake: bool) {
        self.detach(key);
        let Some(e) = self.entries.get_mut(key) else { return };
        e.attempts += 1;
        e.ready_at = e.tried_at + backoff(e.attempts);
        e.wake |= wake;
        e.area = Area::Backoff;
        self.backoff.insert((e.ready_at, key.to_string()));
    }

    /// No node fitted: back off, then wait for a change.
    pub fn unschedulable(&mut self, key: &str) {
        self.back_off(key, false);
    }

    /// The attempt failed for another reason (binding error): retry once the backoff ends.
    pub fn retry(&mut self, key: &str, pod: Arc<Pod>, now: Instant) {
        if !self.entries.contains_key(key) {
            self.upsert(key, pod);
            self.detach(key);
            if let Some(e) = self.entries.get_mut(key) {
                e.area = Area::InFlight;
                e.tried_at = now;
            }
        }
        self.back_off(key, true);
    }

    /// When the next waiting pod becomes due, if any (the loop sleeps until then).
    pub fn next_due(&self) -> Option<Instant> {
        let b = self.backoff.first().map(|(at, _)| *at);
        let p = self.parked.first().map(|(at, _)| *at);
        match (b, p) {
            (Some(b), Some(p)) => Some(b.min(p)),
            (b, p) => b.or(p),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn pod(prio: i32) -> Arc<Pod> {
        Arc::new(serde_json::from_value(json!({"spec": {"containers": [], "priority": prio}})).unwrap())
    }

    #[test]
    fn higher_priority_first_then_arrival_order() {
        let mut q = Queue::default();
        q.upsert("a", pod(0));
        q.upsert("b", pod(10));
        q.upsert("c", pod(0));
        q.upsert("d", pod(10));
        let now = Instant::now();
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now).map(|(k, _)| k)).collect();
        assert_eq!(order, ["b", "d", "a", "c"]);
    }

    #[test]
    fn unschedulable_pods_back_off_then_wait_for_a_change_or_the_flush() {
        let mut q = Queue::default();
        q.upsert("a", pod(0));
        let t0 = Instant::now();
        assert_eq!(q.pop(t0).unwrap().0, "a");
        q.unschedulable("a");
        assert!(q.pop(t0).is_none());
        assert_eq!(q.next_due(), Some(t0 + Duration::from_secs(1)));
        // Backoff over but nothing changed: parked until the flush.
        assert!(q.pop(t0 + Duration::from_secs(2)).is_none());
        assert_eq!(q.next_due(), Some(t0 + FLUSH_UNSCHEDULABLE));
        q.cluster_changed(t0 + Duration::from_secs(3));
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(q.pop(t1).unwrap().0, "a");
        // Second failure: 2 s backoff; a change during the attempt wakes it right after.
        q.cluster_changed(t1);
        q.unschedulable("a");
        assert!(q.pop(t1 + Duration::from_secs(1)).is_none());
        assert_eq!(q.pop(t1 + Duration::from_secs(2)).unwrap().0, "a");
        // Third failure, no change: the flush brings it back.
        q.unschedulable("a");
        assert!(q.pop(t1 + Duration::from_secs(30)).is_none());
        assert_eq!(q.pop(t1 + Duration::from_secs(2) + FLUSH_UNSCHEDULABLE).unwrap().0, "a");
        q.done("a");
        assert!(q.is_empty());
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn own_updates_and_errors_retry_after_backoff_and_removal_forgets() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.upsert("a", pod(0));
        q.pop(t0);
        q.unschedulable("a");
        q.pop(t0 + Duration::from_secs(5));
        assert!(q.pop(t0 + Duration::from_secs(5)).is_none());
        // Its own object changed while parked: active again.
        q.upsert("a", pod(0));
        assert_eq!(q.pop(t0 + Duration::from_secs(6)).unwrap().0, "a");
        q.done("a");
        // A bind error: back in the queue after the backoff, without any change.
        q.retry("a", pod(0), t0 + Duration::from_secs(6));
        assert!(q.pop(t0 + Duration::from_secs(6)).is_none());
        assert!(q.pop(t0 + Duration::from_secs(7)).is_some());
        q.remove("a");
        assert!(!q.contains("a"));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
