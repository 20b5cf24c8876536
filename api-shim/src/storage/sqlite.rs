//! The embedded store: one SQLite database in WAL mode holding an append-only log, kine-style.
//!
//! Every write appends a row whose `AUTOINCREMENT` id is the new global revision (never reused,
//! so resourceVersions only grow, also across restarts). The latest row of a key is its current
//! value; a tombstone row marks a delete. Reads at an older revision take the newest row at or
//! below it, so paginated lists stay consistent and watches resume from any kept revision.
//! Compaction deletes rows superseded before the compaction point. Each write is its own
//! transaction committed before the client is answered: WAL with `synchronous=NORMAL` survives
//! a crash of the process (kill -9); `--sync full` also survives power loss.
//!
//! Watchers: committed events go to a broadcast channel in revision order (sent while the writer
//! lock is held); a watcher first replays the log from its start revision, then follows the
//! channel, and falls back to the log again if it lags behind, so it sees no gaps or duplicates.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Survives a process crash (WAL, synchronous=NORMAL).
    Normal,
    /// Survives power loss too (fsync per commit).
    Full,
}

struct Inner {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    events: broadcast::Sender<Arc<Event>>,
}

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

fn lock(m: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
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
        Ok(SqliteStore { inner: Arc::new(Inner { writer: Mutex::new(writer), reader: Mutex::new(reader), events }) })
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

    /// Appends one row (put or tombstone) after `check` accepted the key's latest row.
    fn write(
        inner: &Inner,
        key: &str,
        value: Option<Vec<u8>>,
        check: impl FnOnce(Option<&Latest>) -> Result<(), StoreError>,
    ) -> Result<i64, StoreError> {
        let mut conn = lock(&inner.writer);
        let tx = conn.transaction()?;
        let prev = latest(&tx, key)?.filter(|l| !l.deleted);
        check(prev.as_ref())?;
        let (created, create_rev_of_prev, prev_rev) = match &prev {
            Some(p) => (false, p.create_rev, p.rev),
            None => (true, 0, 0),
        };
        let deleted = value.is_none();
        let stored = match (&value, &prev) {
            (Some(v), _) => v.clone(),
            (None, Some(p)) => p.value.clone(),
            (None, None) => return Err(StoreError::NotFound { key: key.to_string() }),
        };
        tx.execute(
            "INSERT INTO log (key, created, deleted, create_rev, prev_rev, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![key, created as i64, deleted as i64, create_rev_of_prev, prev_rev, stored],
        )?;
        let rev = tx.last_insert_rowid();
        if created {
            tx.execute("UPDATE log SET create_rev = ?1 WHERE rev = ?1", params![rev])?;
        }
        tx.commit()?;
        let event = Event {
            kind: if deleted { EventKind::Delete } else { EventKind::Put },
            key: key.to_string(),
            revision: rev,
            value: stored,
            prev: prev.map(|p| p.value),
            created,
            cache: Default::default(),
        };
        // No receivers is fine; ordering holds because we still own the writer lock.
        let _ = inner.events.send(Arc::new(event));
        Ok(rev)
    }
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
        self.blocking(move |inner| {
            Self::write(inner, &key, Some(value), |prev| match prev {
                Some(_) => Err(StoreError::AlreadyExists { key: key.clone() }),
                None => Ok(()),
            })
        })
        .await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| {
            Self::write(inner, &key, Some(value), |prev| match prev {
                None => Err(StoreError::NotFound { key: key.clone() }),
                Some(p) if p.rev != expected => Err(StoreError::Conflict { key: key.clone(), expected, found: p.rev }),
                Some(_) => Ok(()),
            })
        })
        .await
    }

    async fn delete(&self, key: &str, expected: i64) -> Result<i64, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| {
            Self::write(inner, &key, None, |prev| match prev {
                None => Err(StoreError::NotFound { key: key.clone() }),
                Some(p) if expected != 0 && p.rev != expected => {
                    Err(StoreError::Conflict { key: key.clone(), expected, found: p.rev })
                }
                Some(_) => Ok(()),
            })
        })
        .await
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
}
