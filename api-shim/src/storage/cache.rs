//! A watch cache in front of a remote store (kube-apiserver's "cacher", small).
//!
//! Without it every API watcher is its own etcd watch stream: 1,000 `kubectl get -w` / informers
//! on pods are 1,000 streams etcd encodes and sends every event on, and the event reaches the last
//! watcher only after all of them were served one by one. With it, all watchers of one key prefix
//! share a single upstream watch ("feed"); the feed keeps a window of recent events so a watcher
//! starting at a recent revision is served from memory, and fans every new event out to its
//! subscribers' channels in-process.
//!
//! Guarantees are the store's own: per prefix, events in revision order without gaps or
//! duplicates. Subscribing copies the window and registers the subscriber under the same lock the
//! feed holds while appending and fanning out, so nothing falls between replay and live events.
//! A watcher starting before the window falls back to its own upstream watch (which reports
//! compaction exactly as before). A subscriber that does not keep up (its channel is full) is
//! dropped, ending its API watch the way an upstream watch ends; clients re-watch from their last
//! resourceVersion, which the window or the store then serves. Everything except `watch` passes
//! straight through.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Event, KeyValue, ListResult, Store, StoreError};

/// Channel room per subscriber beyond its replay; a subscriber this far behind is dropped.
const SUBSCRIBER_BUFFER: usize = 4096;

/// The shared watch of one prefix.
struct Feed {
    /// Events with revision in `(floor, last]`, oldest first.
    window: VecDeque<Arc<Event>>,
    floor: i64,
    last: i64,
    subscribers: Vec<mpsc::Sender<Arc<Event>>>,
    /// Set when the upstream watch ended: the feed takes no new subscribers.
    closed: bool,
}

type Feeds = Arc<Mutex<HashMap<String, Arc<Mutex<Feed>>>>>;

/// [`Store`] wrapper sharing one upstream watch per prefix (see the module docs).
pub struct WatchCache {
    inner: Arc<dyn Store>,
    feeds: Feeds,
    window: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WatchCache {
    /// `window`: events kept per prefix for watchers resuming at a recent revision.
    pub fn new(inner: Arc<dyn Store>, window: usize) -> Self {
        WatchCache { inner, feeds: Arc::new(Mutex::new(HashMap::new())), window: window.max(1) }
    }

    /// Number of upstream watches currently open through feeds (for tests and metrics).
    pub fn feeds(&self) -> usize {
        lock(&self.feeds).values().filter(|f| !lock(f).closed).count()
    }

    /// Subscribes to `feed` from `after`; None when `after` is outside the window or the feed ended.
    fn subscribe(feed: &Mutex<Feed>, after: i64) -> Option<mpsc::Receiver<Arc<Event>>> {
        let mut f = lock(feed);
        if f.closed || after < f.floor {
            return None;
        }
        let replay: Vec<Arc<Event>> = f.window.iter().filter(|e| e.revision > after).cloned().collect();
        let (tx, rx) = mpsc::channel(replay.len() + SUBSCRIBER_BUFFER);
        for e in replay {
            // Cannot fail: the channel has room for the whole replay and the receiver is here.
            let _ = tx.try_send(e);
        }
        f.subscribers.push(tx);
        Some(rx)
    }

    /// Starts the shared upstream watch of `prefix` at `after` with its first subscriber (added
    /// before the feed runs, so the feed never starts without a listener).
    async fn start_feed(
        &self,
        prefix: &str,
        after: i64,
    ) -> Result<(Arc<Mutex<Feed>>, mpsc::Receiver<Arc<Event>>), StoreError> {
        let mut upstream = self.inner.watch(prefix, after).await?;
        let feed = Arc::new(Mutex::new(Feed {
            window: VecDeque::new(),
            floor: after,
            last: after,
            subscribers: Vec::new(),
            closed: false,
        }));
        let rx = Self::subscribe(&feed, after)
            .ok_or_else(|| StoreError::Backend("watch cache: a new feed refused its first subscriber".into()))?;
        let (shared, feeds, window, key) = (feed.clone(), self.feeds.clone(), self.window, prefix.to_string());
        tokio::spawn(async move {
            while let Some(ev) = upstream.recv().await {
                let mut f = lock(&shared);
                if ev.revision <= f.last && ev.kind != super::EventKind::Progress {
                    continue;
                }
                f.last = f.last.max(ev.revision);
                if ev.kind != super::EventKind::Progress {
                    f.window.push_back(ev.clone());
                    while f.window.len() > window {
                        if let Some(old) = f.window.pop_front() {
                            f.floor = old.revision;
                        }
                    }
                }
                f.subscribers.retain(|s| match s.try_send(ev.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(prefix = %key, revision = ev.revision, "watch cache: dropping a watcher that fell {SUBSCRIBER_BUFFER} events behind");
                        false
                    }
                });
                if f.subscribers.is_empty() {
                    // Nobody listens: end the upstream watch; the next watcher starts a new feed.
                    break;
                }
            }
            let mut map = lock(&feeds);
            let mut f = lock(&shared);
            f.closed = true;
            f.subscribers.clear();
            if map.get(&key).is_some_and(|cur| Arc::ptr_eq(cur, &shared)) {
                map.remove(&key);
            }
        });
        Ok((feed, rx))
    }
}

#[async_trait]
impl Store for WatchCache {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<i64>,
    ) -> Result<ListResult, StoreError> {
        self.inner.list(prefix, start_after, limit, revision).await
    }
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64, StoreError> {
        self.inner.update(key, value, expected).await
    }
    async fn delete(&self, key: &str, expected: i64) -> Result<i64, StoreError> {
        self.inner.delete(key, expected).await
    }
    async fn current_revision(&self) -> Result<i64, StoreError> {
        self.inner.current_revision().await
    }
    async fn compacted_revision(&self) -> Result<i64, StoreError> {
        self.inner.compacted_revision().await
    }
    fn health_name(&self) -> &'static str {
        self.inner.health_name()
    }
    async fn compact(&self, keep: i64) -> Result<i64, StoreError> {
        self.inner.compact(keep).await
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<mpsc::Receiver<Arc<Event>>, StoreError> {
        if after < self.inner.compacted_revision().await? {
            // The window may still hold these events, but the store's answer (410 Gone upstream)
            // must not depend on whether a feed happens to exist.
            return self.inner.watch(prefix, after).await;
        }
        let existing = lock(&self.feeds).get(prefix).cloned();
        if let Some(feed) = existing {
            if let Some(rx) = Self::subscribe(&feed, after) {
                return Ok(rx);
            }
            if !lock(&feed).closed {
                // Older than the window: this watcher replays from the store on its own.
                return self.inner.watch(prefix, after).await;
            }
        }
        let (feed, rx) = self.start_feed(prefix, after).await?;
        // Two first watchers may race; the later feed simply serves its own subscriber and ends
        // with it, and the map keeps one live feed per prefix.
        let mut map = lock(&self.feeds);
        if map.get(prefix).is_none_or(|cur| lock(cur).closed) {
            map.insert(prefix.to_string(), feed);
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::storage::EventKind;
    use crate::storage::sqlite::{SqliteStore, SyncMode};

    fn cache(window: usize) -> (tempfile::TempDir, Arc<dyn Store>, Arc<WatchCache>) {
        let d = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(SqliteStore::open(&d.path().join("s.db"), SyncMode::Normal).unwrap());
        let c = Arc::new(WatchCache::new(inner.clone(), window));
        (d, inner, c)
    }

    async fn next(rx: &mut mpsc::Receiver<Arc<Event>>) -> Arc<Event> {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
            if e.kind != EventKind::Progress {
                return e;
            }
        }
    }

    #[tokio::test]
    async fn watchers_of_a_prefix_share_one_feed_and_see_the_same_order() {
        let (_d, _inner, c) = cache(100);
        let p = "/registry/configmaps/";
        let r0 = c.current_revision().await.unwrap();
        let mut watchers = Vec::new();
        for _ in 0..50 {
            watchers.push(c.watch(p, r0).await.unwrap());
        }
        assert_eq!(c.feeds(), 1);
        let mut revs = Vec::new();
        for i in 0..20 {
            revs.push(c.create(&format!("{p}ns/c{i}"), b"v".to_vec()).await.unwrap());
        }
        c.create("/registry/secrets/ns/s", b"x".to_vec()).await.unwrap();
        for w in &mut watchers {
            let mut got = Vec::new();
            for _ in 0..20 {
                got.push(next(w).await.revision);
            }
            assert_eq!(got, revs);
        }
    }

    #[tokio::test]
    async fn a_late_watcher_replays_from_the_window_without_gaps_or_duplicates() {
        let (_d, _inner, c) = cache(100);
        let p = "/registry/pods/";
        let r0 = c.current_revision().await.unwrap();
        let mut first = c.watch(p, r0).await.unwrap();
        let r1 = c.create(&format!("{p}ns/a"), b"1".to_vec()).await.unwrap();
        let r2 = c.update(&format!("{p}ns/a"), b"2".to_vec(), r1).await.unwrap();
        assert_eq!(next(&mut first).await.revision, r1);
        assert_eq!(next(&mut first).await.revision, r2);
        // Resume between r1 and r2: replay r2 from memory, then live r3.
        let mut late = c.watch(p, r1).await.unwrap();
        let r3 = c.delete(&format!("{p}ns/a"), r2).await.unwrap();
        let e = next(&mut late).await;
        assert_eq!((e.revision, e.prev.as_deref()), (r2, Some(&b"1"[..])));
        let e = next(&mut late).await;
        assert_eq!((e.revision, e.kind), (r3, EventKind::Delete));
        assert!(tokio::time::timeout(Duration::from_millis(100), late.recv()).await.is_err());
        assert_eq!(c.feeds(), 1);
    }

    #[tokio::test]
    async fn a_watcher_older_than_the_window_is_served_by_the_store() {
        let (_d, _inner, c) = cache(2);
        let p = "/registry/leases/";
        let r0 = c.current_revision().await.unwrap();
        let mut first = c.watch(p, r0).await.unwrap();
        let mut revs = Vec::new();
        for i in 0..5 {
            revs.push(c.create(&format!("{p}ns/l{i}"), b"v".to_vec()).await.unwrap());
        }
        for r in &revs {
            assert_eq!(next(&mut first).await.revision, *r);
        }
        // The window holds the last two; from r0 the store replays all five.
        let mut old = c.watch(p, r0).await.unwrap();
        for r in &revs {
            assert_eq!(next(&mut old).await.revision, *r);
        }
    }

    #[tokio::test]
    async fn the_feed_ends_with_its_last_watcher_and_a_new_one_starts() {
        let (_d, _inner, c) = cache(10);
        let p = "/registry/events/";
        let r0 = c.current_revision().await.unwrap();
        let w = c.watch(p, r0).await.unwrap();
        drop(w);
        // The next event finds no subscriber and ends the feed.
        c.create(&format!("{p}ns/e"), b"v".to_vec()).await.unwrap();
        for _ in 0..50 {
            if c.feeds() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(c.feeds(), 0);
        let r = c.current_revision().await.unwrap();
        let mut w = c.watch(p, r).await.unwrap();
        let r2 = c.create(&format!("{p}ns/f"), b"v".to_vec()).await.unwrap();
        assert_eq!(next(&mut w).await.revision, r2);
    }

    #[tokio::test]
    async fn a_watcher_that_does_not_read_is_dropped_and_others_continue() {
        let (_d, _inner, c) = cache(10);
        let p = "/registry/configmaps/";
        let r0 = c.current_revision().await.unwrap();
        let mut stuck = c.watch(p, r0).await.unwrap();
        let mut live = c.watch(p, r0).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while n < SUBSCRIBER_BUFFER + 10 {
                next(&mut live).await;
                n += 1;
            }
            n
        });
        for i in 0..SUBSCRIBER_BUFFER + 10 {
            c.create(&format!("{p}ns/c{i}"), b"v".to_vec()).await.unwrap();
        }
        assert_eq!(reader.await.unwrap(), SUBSCRIBER_BUFFER + 10);
        // The stuck one got a full buffer, then its channel closed.
        let mut n = 0;
        while let Some(e) = stuck.recv().await {
            if e.kind != EventKind::Progress {
                n += 1;
            }
        }
        assert!(n <= SUBSCRIBER_BUFFER, "{n}");
    }
}
