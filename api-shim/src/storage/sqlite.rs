//! The embedded store: one SQLite database in WAL mode holding an append-only log, kine-style.
//!
//! Every write appends a row whose `AUTOINCREMENT` id is the new global revision (never reused,
//! so resourceVersions only grow, also across restarts). The latest row of a key is its current
//! value; a tombstone row marks a delete. Reads at an older revision take the newest row at or
//! below it, so paginated lists stay consistent and watches resume from any kept revision.
//! Compaction deletes rows superseded before the compaction point.
//!
//! Durability: a write is acknowledged only after the transaction holding it is committed. By
//! default ([`SyncMode::Full`]) the commit fsyncs the WAL, so an acknowledged write survives power
//! loss, as etcd's does. To keep the write rate, commits are **grouped**: a writer queues its
//! write and takes the writer lock; whoever holds the lock drains the whole queue into one
//! transaction (one savepoint per write, so a failed check or statement rolls back only that
//! write) and pays one fsync for all of them. Writers that queued while a commit was in flight
//! find their result waiting when they get the lock (etcd batches its raft/WAL writes the same
//! way). [`SyncMode::Normal`] (`--unsafe-no-fsync`) skips the fsync: it survives a process crash
//! (kill -9) but may lose the last acknowledged writes on power loss.
//!
//! Watchers: committed events go to a broadcast channel in revision order (sent after the batch
//! commits, while the writer lock is still held); a watcher first replays the log from its start
//! revision, then follows the channel, and falls back to the log again if it lags behind, so it
//! sees no gaps or duplicates.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::{broadcast, mpsc};

use super::{Event, EventKind, KeyValue, ListResult, Store, StoreError, prefix_end};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    rev INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    created INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    create_rev INTEGER NOT NULL,
    prev_rev INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_key_rev ON log(key, rev);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// Minimum spacing of progress events on a watch whose prefix is quiet.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How hard each commit is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Survives a process crash only (WAL, synchronous=NORMAL, no fsync per commit): the last
    /// acknowledged writes can be lost on power loss. `--unsafe-no-fsync`.
    Normal,
    /// Survives power loss too: WAL, synchronous=FULL, one fsync per group commit. The default.
    #[default]
    Full,
}

/// Accepts or rejects a write given its key's latest live row (decided inside the batch).
type Check = Box<dyn FnOnce(Option<&Latest>) -> Result<(), StoreError> + Send>;

/// A write waiting for the next group commit.
struct Pending {
    key: String,
    /// None: delete.
    value: Option<Vec<u8>>,
    check: Check,
    done: std::sync::mpsc::Sender<Result<i64, StoreError>>,
}

struct Inner {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// Writes queued for the next group commit (taken by whoever holds `writer`).
    queue: Mutex<Vec<Pending>>,
    events: broadcast::Sender<Arc<Event>>,
    /// Committed transactions that carried writes (tests check that commits are grouped).
    commits: std::sync::atomic::AtomicU64,
}

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_conn(path: &Path, sync: SyncMode) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if sync == SyncMode::Full { "FULL" } else { "NORMAL" })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

struct Latest {
    rev: i64,
    create_rev: i64,
    deleted: bool,
    value: Vec<u8>,
}

fn latest(conn: &Connection, key: &str) -> Result<Option<Latest>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT rev, create_rev, deleted, value FROM log WHERE key = ?1 ORDER BY rev DESC LIMIT 1",
            params![key],
            |r| {
                Ok(Latest {
                    rev: r.get(0)?,
                    create_rev: r.get(1)?,
                    deleted: r.get::<_, i64>(2)? != 0,
                    value: r.get(3)?,
                })
            },
        )
        .optional()?)
}

fn current_rev(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'log'", [], |r| r.get(0)).optional()?.unwrap_or(0))
}

fn compact_rev(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT value FROM meta WHERE name = 'compact_rev'", [], |r| r.get(0)).optional()?.unwrap_or(0))
}

fn read_events(conn: &Connection, prefix: &str, after: i64, upto: i64) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT l.rev, l.key, l.created, l.deleted, l.value, p.value FROM log l
         LEFT JOIN log p ON p.rev = l.prev_rev
         WHERE l.rev > ?1 AND l.rev <= ?2 AND l.key >= ?3 AND l.key < ?4 ORDER BY l.rev",
    )?;
    let rows = stmt.query_map(params![after, upto, prefix, prefix_end(prefix)], |r| {
        let deleted: i64 = r.get(3)?;
        Ok(Event {
            revision: r.get(0)?,
            key: r.get(1)?,
            created: r.get::<_, i64>(2)? != 0,
            kind: if deleted != 0 { EventKind::Delete } else { EventKind::Put },
            value: r.get(4)?,
            prev: r.get(5)?,
            cache: Default::default(),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, sync: SyncMode) -> Result<Self, StoreError> {
        let writer = open_conn(path, sync)?;
        writer.execute_batch(SCHEMA)?;
        let reader = open_conn(path, sync)?;
        let (events, _) = broadcast::channel(8192);
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                queue: Mutex::new(Vec::new()),
                events,
                commits: Default::default(),
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Appends one row (put or tombstone) after `check` accepted the key's latest row, through the
    /// group commit: returns once the batch holding the write is committed (and flushed).
    fn write(inner: &Inner, key: String, value: Option<Vec<u8>>, check: Check) -> Result<i64, StoreError> {
        let (done, result) = std::sync::mpsc::channel();
        lock(&inner.queue).push(Pending { key, value, check, done });
        {
            // While another batch commits, more writers queue behind this lock; the next holder
            // commits all of them at once. If an earlier holder already took our write, the queue
            // may be empty and our result is already waiting.
            let mut conn = lock(&inner.writer);
            let batch = std::mem::take(&mut *lock(&inner.queue));
            if !batch.is_empty() {
                commit_batch(inner, &mut conn, batch);
            }
        }
        result.recv().map_err(|_| StoreError::Backend("group commit dropped the write".into()))?
    }
}

/// Commits `batch` in one transaction (one fsync), answers every writer, then publishes the
/// events in revision order. The caller holds the writer lock.
fn commit_batch(inner: &Inner, conn: &mut Connection, batch: Vec<Pending>) {
    let mut tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            for p in batch {
                let _ = p.done.send(Err(StoreError::Backend(format!("begin: {e}"))));
            }
            return;
        }
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for p in batch {
        let r = apply_in_savepoint(&mut tx, &p.key, p.value, p.check);
        outcomes.push((p.done, r));
    }
    let committed = tx.commit();
    if committed.is_ok() {
        inner.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    for (done, r) in outcomes {
        let r = match (&committed, r) {
            (Ok(()), Ok(event)) => {
                let rev = event.revision;
                // No receivers is fine; ordering holds because we still own the writer lock.
                let _ = inner.events.send(Arc::new(event));
                Ok(rev)
            }
            (Err(e), Ok(_)) => Err(StoreError::Backend(format!("commit: {e}"))),
            (_, Err(e)) => Err(e),
        };
        let _ = done.send(r);
    }
}

/// One write of a batch, in its own savepoint so that its failure leaves the others intact.
fn apply_in_savepoint(
    tx: &mut Transaction<'_>,
    key: &str,
    value: Option<Vec<u8>>,
    check: Check,
) -> Result<Event, StoreError> {
    let sp = tx.savepoint()?;
    let prev = latest(&sp, key)?.filter(|l| !l.deleted);
    check(prev.as_ref())?;
    let (created, create_rev_of_prev, prev_rev) = match &prev {
        Some(p) => (false, p.create_rev, p.rev),
        None => (true, 0, 0),
    };
    let deleted = value.is_none();
    let stored = match (value, &prev) {
        (Some(v), _) => v,
        (None, Some(p)) => p.value.clone(),
        (None, None) => return Err(StoreError::NotFound { key: key.to_string() }),
    };
    sp.execute(
        "INSERT INTO log (key, created, deleted, create_rev, prev_rev, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![key, created as i64, deleted as i64, create_rev_of_prev, prev_rev, stored],
    )?;
    let rev = sp.last_insert_rowid();
    if created {
        sp.execute("UPDATE log SET create_rev = ?1 WHERE rev = ?1", params![rev])?;
    }
    sp.commit()?;
    Ok(Event {
        kind: if deleted { EventKind::Delete } else { EventKind::Put },
        key: key.to_string(),
        revision: rev,
        value: stored,
        prev: prev.map(|p| p.value),
        created,
        cache: Default::default(),
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let conn = lock(&inner.reader);
            Ok(latest(&conn, &key)?.filter(|l| !l.deleted).map(|l| KeyValue {
                key,
                value: l.value,
                mod_revision: l.rev,
                create_revision: l.create_rev,
            }))
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<i64>,
    ) -> Result<ListResult, StoreError> {
        let lower = super::range_start(prefix, start_after);
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            let mut conn = lock(&inner.reader);
            let tx = conn.transaction()?;
            let current = current_rev(&tx)?;
            let compacted = compact_rev(&tx)?;
            let at = match revision {
                Some(r) if r < compacted => return Err(StoreError::Compacted { requested: r, compacted }),
                Some(r) => r.min(current),
                None => current,
            };
            let sql_limit: i64 = if limit == 0 { -1 } else { limit as i64 + 1 };
            let mut stmt = tx.prepare_cached(
                "SELECT l.key, l.value, l.rev, l.create_rev FROM log l
                 JOIN (SELECT MAX(rev) AS mr FROM log WHERE key >= ?1 AND key < ?2 AND rev <= ?3 GROUP BY key) m
                 ON l.rev = m.mr WHERE l.deleted = 0 ORDER BY l.key LIMIT ?4",
            )?;
            let mut items = stmt
                .query_map(params![lower, prefix_end(&prefix), at, sql_limit], |r| {
                    Ok(KeyValue {
                        key: r.get(0)?,
                        value: r.get(1)?,
                        mod_revision: r.get(2)?,
                        create_revision: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let more = limit != 0 && items.len() > limit;
            if more {
                items.truncate(limit);
            }
            drop(stmt);
            tx.commit()?;
            Ok(ListResult { items, revision: at, more })
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        let key = key.to_string();
        let k = key.clone();
        let check: Check = Box::new(move |prev| match prev {
            Some(_) => Err(StoreError::AlreadyExists { key: k }),
            None => Ok(()),
        });
        self.blocking(move |inner| Self::write(inner, key, Some(value), check)).await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64, StoreError> {
        let key = key.to_string();
        let k = key.clone();
        let check: Check = Box::new(move |prev| match prev {
            None => Err(StoreError::NotFound { key: k }),
            Some(p) if p.rev != expected => Err(StoreError::Conflict { key: k, expected, found: p.rev }),
            Some(_) => Ok(()),
        });
        self.blocking(move |inner| Self::write(inner, key, Some(value), check)).await
    }

    async fn delete(&self, key: &str, expected: i64) -> Result<i64, StoreError> {
        let key = key.to_string();
        let k = key.clone();
        let check: Check = Box::new(move |prev| match prev {
            None => Err(StoreError::NotFound { key: k }),
            Some(p) if expected != 0 && p.rev != expected => {
                Err(StoreError::Conflict { key: k, expected, found: p.rev })
            }
            Some(_) => Ok(()),
        });
        self.blocking(move |inner| Self::write(inner, key, None, check)).await
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        self.blocking(|inner| current_rev(&lock(&inner.reader))).await
    }

    async fn compacted_revision(&self) -> Result<i64, StoreError> {
        self.blocking(|inner| compact_rev(&lock(&inner.reader))).await
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<mpsc::Receiver<Arc<Event>>, StoreError> {
        let prefix_owned = prefix.to_string();
        // Subscribe and read the current revision under the writer lock: every event with a
        // revision above `upto` is then guaranteed to arrive on `sub`.
        let (mut sub, upto, history) = self
            .blocking(move |inner| {
                let writer = lock(&inner.writer);
                let upto = current_rev(&writer)?;
                let compacted = compact_rev(&writer)?;
                let sub = inner.events.subscribe();
                drop(writer);
                if after < compacted {
                    return Err(StoreError::Compacted { requested: after, compacted });
                }
                let history = read_events(&lock(&inner.reader), &prefix_owned, after, upto)?;
                Ok((sub, upto, history))
            })
            .await?;
        let (tx, rx) = mpsc::channel(1024);
        let prefix = prefix.to_string();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut last = upto;
            let mut last_progress = std::time::Instant::now();
            for ev in history {
                if tx.send(Arc::new(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                match sub.recv().await {
                    Ok(ev) => {
                        if ev.revision <= last {
                            continue;
                        }
                        last = ev.revision;
                        if ev.key.starts_with(&prefix) {
                            if tx.send(ev).await.is_err() {
                                return;
                            }
                        } else if last_progress.elapsed() >= PROGRESS_EVERY {
                            last_progress = std::time::Instant::now();
                            let p = Event {
                                kind: EventKind::Progress,
                                key: String::new(),
                                revision: ev.revision,
                                value: Vec::new(),
                                prev: None,
                                created: false,
                                cache: Default::default(),
                            };
                            if tx.send(Arc::new(p)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Catch up from the log; later channel events above `last` continue after.
                        let inner2 = inner.clone();
                        let p = prefix.clone();
                        let from = last;
                        let res = tokio::task::spawn_blocking(move || {
                            let conn = lock(&inner2.reader);
                            let upto = current_rev(&conn)?;
                            Ok::<_, StoreError>((upto, read_events(&conn, &p, from, upto)?))
                        })
                        .await;
                        let Ok(Ok((upto, evs))) = res else {
                            tracing::warn!(prefix, "watch catch-up failed; closing watch");
                            return;
                        };
                        for ev in evs {
                            if tx.send(Arc::new(ev)).await.is_err() {
                                return;
                            }
                        }
                        last = last.max(upto);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(rx)
    }

    async fn compact(&self, keep: i64) -> Result<i64, StoreError> {
        self.blocking(move |inner| {
            let mut conn = lock(&inner.writer);
            let tx = conn.transaction()?;
            let target = current_rev(&tx)? - keep;
            let old = compact_rev(&tx)?;
            if target <= old {
                return Ok(old);
            }
            tx.execute(
                "DELETE FROM log WHERE rev <= ?1 AND (deleted = 1 OR EXISTS
                   (SELECT 1 FROM log n WHERE n.key = log.key AND n.rev > log.rev AND n.rev <= ?1))",
                params![target],
            )?;
            tx.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('compact_rev', ?1)", params![target])?;
            tx.commit()?;
            Ok(target)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite"), SyncMode::Normal).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn crud_revisions_and_conflicts() {
        let (_d, s) = store();
        let r1 = s.create("/registry/pods/a/x", b"1".to_vec()).await.unwrap();
        assert!(matches!(s.create("/registry/pods/a/x", b"1".to_vec()).await, Err(StoreError::AlreadyExists { .. })));
        let r2 = s.update("/registry/pods/a/x", b"2".to_vec(), r1).await.unwrap();
        assert!(r2 > r1);
        assert!(matches!(s.update("/registry/pods/a/x", b"3".to_vec(), r1).await, Err(StoreError::Conflict { .. })));
        let kv = s.get("/registry/pods/a/x").await.unwrap().unwrap();
        assert_eq!((kv.value.as_slice(), kv.mod_revision, kv.create_revision), (&b"2"[..], r2, r1));
        let r3 = s.delete("/registry/pods/a/x", r2).await.unwrap();
        assert!(s.get("/registry/pods/a/x").await.unwrap().is_none());
        // The key can be created again; revisions keep growing.
        assert!(s.create("/registry/pods/a/x", b"4".to_vec()).await.unwrap() > r3);
    }

    #[tokio::test]
    async fn list_pages_at_a_revision_and_compaction() {
        let (_d, s) = store();
        for i in 0..5 {
            s.create(&format!("/registry/cm/ns/k{i}"), vec![b'0' + i]).await.unwrap();
        }
        s.create("/registry/cmx/other", b"z".to_vec()).await.unwrap();
        let page = s.list("/registry/cm/", None, 2, None).await.unwrap();
        assert_eq!(page.items.len(), 2);
        assert!(page.more);
        let rev = page.revision;
        // A write after the first page must not show up in later pages at the same revision.
        let k2 = s.get("/registry/cm/ns/k2").await.unwrap().unwrap();
        s.update("/registry/cm/ns/k2", b"changed".to_vec(), k2.mod_revision).await.unwrap();
        let page2 = s.list("/registry/cm/", Some(&page.items[1].key), 0, Some(rev)).await.unwrap();
        let keys: Vec<_> = page2.items.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["/registry/cm/ns/k2", "/registry/cm/ns/k3", "/registry/cm/ns/k4"]);
        assert_eq!(page2.items[0].value, b"2");
        assert!(!page2.more);
        let c = s.compact(0).await.unwrap();
        assert!(matches!(s.list("/registry/cm/", None, 0, Some(rev)).await, Err(StoreError::Compacted { .. })));
        assert_eq!(s.list("/registry/cm/", None, 0, None).await.unwrap().items.len(), 5);
        assert!(matches!(s.watch("/registry/cm/", c - 1).await, Err(StoreError::Compacted { .. })));
    }

    #[tokio::test]
    async fn watch_replays_history_then_follows_live() {
        let (_d, s) = store();
        let r1 = s.create("/registry/cm/ns/a", b"1".to_vec()).await.unwrap();
        let r2 = s.update("/registry/cm/ns/a", b"2".to_vec(), r1).await.unwrap();
        let mut w = s.watch("/registry/cm/", r1).await.unwrap();
        let r3 = s.delete("/registry/cm/ns/a", r2).await.unwrap();
        s.create("/registry/other/x", b"x".to_vec()).await.unwrap();
        let e = w.recv().await.unwrap();
        assert_eq!((e.kind, e.revision, e.prev.as_deref()), (EventKind::Put, r2, Some(&b"1"[..])));
        let e = w.recv().await.unwrap();
        assert_eq!((e.kind, e.revision, e.value.as_slice()), (EventKind::Delete, r3, &b"2"[..]));
        assert!(tokio::time::timeout(std::time::Duration::from_millis(100), w.recv()).await.is_err());
    }

    /// Group commit under concurrent writers (durable mode): every acknowledged write is in the
    /// log with its revision, watchers see events in strictly increasing revision order, a write
    /// rejected inside a batch does not take the others down, commits were actually grouped, and
    /// everything acknowledged is still there after reopening the database.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn group_commit_keeps_revision_order_and_every_acknowledged_write() {
        const WRITERS: usize = 16;
        const PER_WRITER: usize = 25;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let s = SqliteStore::open(&path, SyncMode::Full).unwrap();
        let mut w = s.watch("/registry/cm/", 0).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..WRITERS {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                // Every writer races for the same key once: exactly one create may win.
                let shared = s.create("/registry/cm/ns/shared", format!("{t}").into_bytes()).await;
                for i in 0..PER_WRITER {
                    let key = format!("/registry/cm/ns/w{t}-{i}");
                    let r1 = s.create(&key, b"v1".to_vec()).await.unwrap();
                    let r2 = s.update(&key, format!("v2-{t}-{i}").into_bytes(), r1).await.unwrap();
                    assert!(r2 > r1);
                    acked.push((key, r1, r2));
                }
                (shared, acked)
            }));
        }
        let mut acked = Vec::new();
        let mut shared_wins = 0;
        for t in tasks {
            let (shared, a) = t.await.unwrap();
            match shared {
                Ok(rev) => {
                    shared_wins += 1;
                    acked.push(("/registry/cm/ns/shared".to_string(), rev, rev));
                }
                Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => panic!("shared create: {e}"),
            }
            acked.extend(a);
        }
        assert_eq!(shared_wins, 1, "exactly one concurrent create of the same key wins");
        let writes = (WRITERS * PER_WRITER * 2 + 1) as u64;
        let commits = s.inner.commits.load(std::sync::atomic::Ordering::Relaxed);
        assert!(commits < writes, "{writes} concurrent writes took {commits} commits: nothing was grouped");

        // Watch: every acknowledged revision, in strictly increasing order, no extras.
        let mut seen = std::collections::BTreeMap::new();
        let mut last = 0;
        while seen.len() < writes as usize {
            let e = tokio::time::timeout(std::time::Duration::from_secs(10), w.recv()).await.unwrap().unwrap();
            if e.kind == EventKind::Progress {
                continue;
            }
            assert!(e.revision > last, "event {} after {last}", e.revision);
            last = e.revision;
            seen.insert(e.revision, (e.key.clone(), e.value.clone()));
        }
        for (key, r1, r2) in &acked {
            assert_eq!(seen.get(r1).map(|(k, _)| k), Some(key));
            assert_eq!(seen.get(r2).map(|(k, _)| k), Some(key));
        }
        assert_eq!(s.current_revision().await.unwrap(), last);

        // Reopen: every acknowledged write is there with its revision.
        drop(w);
        drop(s);
        let s = SqliteStore::open(&path, SyncMode::Full).unwrap();
        for (key, r1, r2) in &acked {
            let kv = s.get(key).await.unwrap().unwrap();
            assert_eq!((kv.create_revision, kv.mod_revision), (*r1, *r2), "{key}");
            assert_eq!(seen[r2].1, kv.value);
        }
    }
}
