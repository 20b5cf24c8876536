//! Concurrent pulls of one image share one pull (kubelet leaves this to the runtime; containerd
//! does it in its resolver). Without it, two pods of a new image starting together fetch every
//! layer twice and race each other's content writes.
//!
//! The first caller for a key runs the work; callers arriving while it runs wait for its result.
//! If the running caller is cancelled (its pod worker went away), a waiter takes the work over
//! (`tokio::sync::OnceCell` semantics). The entry is dropped when the work finishes, so the next
//! pull after that (policy Always) asks the registry again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

pub struct InFlight<T> {
    running: Mutex<HashMap<String, Arc<OnceCell<T>>>>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight { running: Mutex::new(HashMap::new()) }
    }
}

impl<T: Clone> InFlight<T> {
    /// Runs `work` for `key` unless it is already running; returns its result and whether this
    /// call joined a pull started by another caller.
    pub async fn run<F, Fut>(&self, key: &str, work: F) -> (T, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let (cell, joined) = {
            let mut m = self.running.lock().unwrap_or_else(|p| p.into_inner());
            match m.get(key) {
                Some(c) => (c.clone(), true),
                None => {
                    let c = Arc::new(OnceCell::new());
                    m.insert(key.to_string(), c.clone());
                    (c, false)
                }
            }
        };
        let out = cell.get_or_init(work).await.clone();
        let mut m = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            m.remove(key);
        }
        (out, joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_later_callers_run_again() {
        let f = InFlight::<u32>::default();
        let runs = AtomicU32::new(0);
        let work = || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            runs.fetch_add(1, Ordering::SeqCst) + 1
        };
        let (a, b, c) = tokio::join!(f.run("img", work), f.run("img", work), f.run("other", work));
        assert_eq!(runs.load(Ordering::SeqCst), 2, "one run per key");
        assert_eq!(a.0, b.0, "the joiner sees the leader's result");
        assert_eq!([a.1, b.1, c.1].iter().filter(|j| **j).count(), 1);
        let (d, joined) = f.run("img", work).await;
        assert!(!joined);
        assert_eq!(d, 3);
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_the_work_over() {
        let f = InFlight::<&'static str>::default();
        let leader = f.run("img", || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "leader"
        });
        let follower = f.run("img", || async { "follower" });
        // The leader is polled first, then dropped when the timeout fires.
        let _ = tokio::time::timeout(Duration::from_millis(20), leader).await;
        assert_eq!(follower.await, ("follower", true));
    }
}
