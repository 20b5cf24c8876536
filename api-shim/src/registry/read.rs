//! Reads: paginated lists (continue tokens, exact resourceVersions) and watches (initial
//! events, bookmarks, label/field filtering with ADDED/DELETED transitions).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Api, ContinueToken, ListOpts, WatchEvent, WatchOpts, from_bytes, from_kv, invalid, list_kind, parse_rv};
use crate::error::{ApiError, Cause};
use crate::resources::ResourceDef;
use crate::selectors::labels_of;
use crate::storage::{EventKind, StoreError};

impl Api {
    /// Lists objects; returns (items, list resourceVersion, continue token).
    pub async fn list(
        &self,
        res: &ResourceDef,
        ns: Option<&str>,
        opts: &ListOpts,
    ) -> Result<(Vec<Value>, i64, Option<String>), ApiError> {
        let prefix = res.list_prefix(ns);
        let (mut start, mut at) = (None, None);
        if let Some(tok) = opts.continue_token.as_deref().filter(|t| !t.is_empty()) {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(tok)
                .map_err(|_| ApiError::bad_request("continue key is not valid"))?;
            let t: ContinueToken =
                serde_json::from_slice(&raw).map_err(|_| ApiError::bad_request("continue key is not valid"))?;
            if !t.start.starts_with(&prefix) {
                return Err(ApiError::bad_request("continue key does not match the request"));
            }
            start = Some(t.start);
            at = Some(t.rv);
        } else if opts.resource_version_match.as_deref() == Some("Exact") {
            at = Some(parse_rv(opts.resource_version.as_deref().unwrap_or_default())?);
        }
        let filtered = !opts.labels.is_empty() || !opts.fields.is_empty();
        let mut items = Vec::new();
        let mut token = None;
        let mut revision;
        loop {
            let page_size = if opts.limit == 0 { 0 } else { opts.limit.max(if filtered { 500 } else { 0 }) };
            let page = self.store.list(&prefix, start.as_deref(), page_size, at).await.map_err(|e| match e {
                StoreError::Compacted { .. } if opts.continue_token.is_some() => ApiError::Gone {
                    message: "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                },
                other => other.into(),
            })?;
            revision = page.revision;
            at = Some(page.revision);
            let mut last_key = None;
            for kv in &page.items {
                last_key = Some(kv.key.clone());
                let obj = from_kv(kv)?;
                if opts.labels.matches(&labels_of(&obj)) && opts.fields.matches(&obj) {
                    items.push(obj);
                    if opts.limit != 0 && items.len() == opts.limit {
                        break;
                    }
                }
            }
            let reached_limit = opts.limit != 0 && items.len() == opts.limit;
            let more_in_page = reached_limit && last_key.as_ref() != page.items.last().map(|kv| &kv.key);
            if reached_limit && (page.more || more_in_page) {
                let t = ContinueToken { rv: revision, start: last_key.unwrap_or_default() };
                let raw = serde_json::to_vec(&t).map_err(ApiError::internal)?;
                token = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
                break;
            }
            if !page.more || opts.limit == 0 {
                break;
            }
            start = last_key;
        }
        Ok((items, revision, token))
    }

    pub fn list_object(res: &ResourceDef, items: Vec<Value>, rv: i64, token: Option<String>) -> Value {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if let Some(t) = token {
            meta["continue"] = json!(t);
        }
        json!({"kind": list_kind(res), "apiVersion": res.api_version(), "metadata": meta, "items": items})
    }

    // ------------------------------------------------------------------ watch

    /// Starts a watch; events arrive on the returned channel until it is dropped or times out.
    pub async fn watch(
        self: &Arc<Self>,
        res: &'static ResourceDef,
        ns: Option<&str>,
        opts: WatchOpts,
    ) -> Result<mpsc::Receiver<WatchEvent>, ApiError> {
        let prefix = res.list_prefix(ns);
        let rv = opts.list.resource_version.clone().unwrap_or_default();
        let initial = opts.send_initial_events || rv.is_empty() || rv == "0";
        if opts.send_initial_events && !opts.bookmarks {
            return Err(invalid(
                res,
                "",
                vec![Cause::forbidden(
                    "allowWatchBookmarks",
                    "sendInitialEvents requires setting allowWatchBookmarks to true",
                )],
            ));
        }
        let (tx, rx) = mpsc::channel::<WatchEvent>(256);
        let (snapshot, start_rev) = if initial {
            let lopts =
                ListOpts { labels: opts.list.labels.clone(), fields: opts.list.fields.clone(), ..Default::default() };
            let (items, rev, _) = self.list(res, ns, &lopts).await?;
            (items, rev)
        } else {
            (Vec::new(), parse_rv(&rv)?)
        };
        if !initial {
            let current = self.store.current_revision().await?;
            if start_rev > current {
                // A resourceVersion from the future (another apiserver's, or a client's guess):
                // wait a little for this store to reach it, then tell the client to relist.
                let api = self.clone();
                tokio::spawn(async move {
                    let current = match api.wait_for_revision(start_rev).await {
                        Ok(()) => match api.store.watch(&prefix, start_rev).await {
                            Ok(events) => return api.run_watch(res, opts, snapshot, start_rev, events, tx).await,
                            Err(e) => {
                                tx.send(WatchEvent::new("ERROR", ApiError::from(e).to_status())).await.ok();
                                return;
                            }
                        },
                        Err(current) => current,
                    };
                    tx.send(WatchEvent::new("ERROR", too_large_resource_version(start_rev, current))).await.ok();
                });
                return Ok(rx);
            }
        }
        let events = match self.store.watch(&prefix, start_rev).await {
            Ok(e) => e,
            Err(StoreError::Compacted { requested, compacted }) => {
                let status = ApiError::Gone { message: format!("too old resource version: {requested} ({compacted})") }
                    .to_status();
                tx.send(WatchEvent::new("ERROR", status)).await.ok();
                return Ok(rx);
            }
            Err(e) => return Err(e.into()),
        };
        let api = self.clone();
        tokio::spawn(async move { api.run_watch(res, opts, snapshot, start_rev, events, tx).await });
        Ok(rx)
    }

    /// Waits up to [`FRESHNESS_WAIT`] for the store to reach `rev`; the store's revision if it
    /// did not.
    async fn wait_for_revision(&self, rev: i64) -> Result<(), i64> {
        let deadline = tokio::time::Instant::now() + FRESHNESS_WAIT;
        loop {
            let current = self.store.current_revision().await.unwrap_or(0);
            if current >= rev {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(current);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn run_watch(
        &self,
        res: &'static ResourceDef,
        opts: WatchOpts,
        snapshot: Vec<Value>,
        start_rev: i64,
        mut events: mpsc::Receiver<Arc<crate::storage::Event>>,
        tx: mpsc::Sender<WatchEvent>,
    ) {
        let bookmark = |rev: i64, end: bool| {
            let mut meta = json!({"resourceVersion": rev.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            WatchEvent::new("BOOKMARK", json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta}))
        };
        for obj in snapshot {
            if tx.send(WatchEvent::new("ADDED", obj)).await.is_err() {
                return;
            }
        }
        if opts.send_initial_events && tx.send(bookmark(start_rev, true)).await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + opts.timeout.unwrap_or(Duration::from_secs(1800));
        let mut safe_rev = start_rev;
        let mut ticker = tokio::time::interval(self.bookmark_interval);
        ticker.tick().await;
        let matches = |o: &Value| opts.list.labels.matches(&labels_of(o)) && opts.list.fields.matches(o);
        loop {
            let ev = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = ticker.tick() => {
                    if opts.bookmarks {
                        // Only revisions the store's stream itself vouched for (events and
                        // progress notifications): the store's current revision is not safe, as
                        // an event at or below it may still be on its way to this watcher, and a
                        // client resuming from such a bookmark would miss it.
                        if tx.send(bookmark(safe_rev, false)).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                ev = events.recv() => match ev {
                    Some(ev) => ev,
                    None => {
                        let status = ApiError::internal("watch channel closed").to_status();
                        let _ = tx.send(WatchEvent::new("ERROR", status)).await;
                        return;
                    }
                },
            };
            safe_rev = ev.revision;
            if ev.kind == EventKind::Progress {
                continue;
            }
            let Some(obj) =
                ev.cache.decoded.get_or_init(|| from_bytes(&ev.value, ev.revision).ok().map(Arc::new)).clone()
            else {
                continue;
            };
            let prev_match =
                ev.prev.as_ref().and_then(|p| serde_json::from_slice::<Value>(p).ok()).is_some_and(|p| matches(&p));
            let kind = match ev.kind {
                EventKind::Delete if prev_match || matches(&obj) => "DELETED",
                EventKind::Put if ev.created || ev.prev.is_none() => {
                    if matches(&obj) {
                        "ADDED"
                    } else {
                        continue;
                    }
                }
                EventKind::Put => match (prev_match, matches(&obj)) {
                    (true, true) => "MODIFIED",
                    (false, true) => "ADDED",
                    (true, false) => "DELETED",
                    (false, false) => continue,
                },
                _ => continue,
            };
            let encoded = ev.cache.encoded.get_or_init(|| bytes::Bytes::from(super::encode::to_json(&obj))).clone();
            if tx.send(WatchEvent { kind, object: obj, encoded: Some(encoded) }).await.is_err() {
                return;
            }
        }
    }
}

/// How long a read from a future resourceVersion waits for the store (upstream's watch cache
/// blocks for 3 s the same way).
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// Upstream's `NewTooLargeResourceVersionError`: a `Timeout` (504) whose cause tells clients
/// (client-go's reflector, kube-rs's watcher) to relist, retry after 1 s.
fn too_large_resource_version(requested: i64, current: i64) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("Timeout: Too large resource version: {requested}, current: {current}"),
        "reason": "Timeout",
        "details": {
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
        "code": 504,
    })
}
