//! The storage seam: a revisioned key/value store with watch, in the shape of etcd v3.
//!
//! The API layer never sees SQL or gRPC: it stores each object as JSON under kube-apiserver's key
//! layout (`/registry/<resource>/<namespace>/<name>`) and uses the store's global revision as the
//! object's `resourceVersion`. Two implementations exist: [`sqlite::SqliteStore`] (embedded, the
//! default; kine-style log table) and [`etcd::EtcdStore`] (etcd v3), which the server puts
//! behind [`cache::WatchCache`] so API watchers share one etcd watch per prefix. All three pass
//! the same conformance suite (`tests/tests/api_store.rs`).

pub mod cache;
pub mod etcd;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

/// One stored value with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the last write to this key (the object's resourceVersion).
    pub mod_revision: i64,
    /// Revision at which the key was created.
    pub create_revision: i64,
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    /// The revision the list was read at.
    pub revision: i64,
    /// More keys follow the last returned one.
    pub more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
    /// No change: every event for the watched prefix up to `revision` has been delivered.
    Progress,
}

/// A change to one key, as seen by watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: String,
    pub revision: i64,
    /// New value for puts; the last value for deletes.
    pub value: Vec<u8>,
    /// The value before this change (None when the key was created).
    pub prev: Option<Vec<u8>>,
    /// True for the first put of a key.
    pub created: bool,
    /// Decoded/encoded forms shared by all watchers of this event (filled lazily by the API layer).
    pub cache: EventCache,
}

/// Per-event memo so N watchers decode and encode an event once, not N times.
#[derive(Debug, Clone, Default)]
pub struct EventCache {
    pub decoded: std::sync::OnceLock<Option<Arc<serde_json::Value>>>,
    pub encoded: std::sync::OnceLock<bytes::Bytes>,
}

impl PartialEq for EventCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for EventCache {}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} was modified (expected revision {expected}, found {found})")]
    Conflict { key: String, expected: i64, found: i64 },
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store backend: {0}")]
    Backend(String),
}

/// A revisioned key/value store with prefix watch.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Keys under `prefix` strictly after `start_after`, at `revision` (None: latest), at most
    /// `limit` items (0: all). A revision older than the compaction point is `Compacted`.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<i64>,
    ) -> Result<ListResult, StoreError>;
    /// Creates `key`; `AlreadyExists` if it is present. Returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError>;
    /// Replaces `key` if its mod revision is `expected`; `Conflict`/`NotFound` otherwise.
    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64, StoreError>;
    /// Deletes `key` if its mod revision is `expected`. Returns the deletion revision.
    async fn delete(&self, key: &str, expected: i64) -> Result<i64, StoreError>;
    async fn current_revision(&self) -> Result<i64, StoreError>;
    /// The oldest revision a watch may start after.
    async fn compacted_revision(&self) -> Result<i64, StoreError>;
    /// Events for keys under `prefix` with revision > `after`, in revision order, without gaps.
    /// `Compacted` if `after` is older than the kept history. The stream ends (channel closes) only
    /// when the receiver is dropped or the store fails.
    async fn watch(&self, prefix: &str, after: i64) -> Result<mpsc::Receiver<Arc<Event>>, StoreError>;
    /// Drops history older than `keep` revisions before the current one.
    async fn compact(&self, keep: i64) -> Result<i64, StoreError>;
    /// The name of the backend in health checks (`[+]etcd ok`, as kube-apiserver's).
    fn health_name(&self) -> &'static str {
        "storage"
    }
}

/// The inclusive lower bound of a list page: just after `start_after` (a continue token's last
/// key), or the prefix itself.
pub fn range_start(prefix: &str, start_after: Option<&str>) -> String {
    match start_after {
        Some(s) if s >= prefix => format!("{s}\u{0}"),
        _ => prefix.to_string(),
    }
}

/// The exclusive upper bound of a prefix range (`/registry/pods/` → `/registry/pods0`).
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    // Only reached for an empty or all-0x7f prefix: everything sorts below this.
    "\u{7f}".to_string()
}
