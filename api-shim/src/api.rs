//! The verbs: get, list, watch, create, update, patch, delete, deletecollection and the
//! subresources, on generic JSON objects stored through [`Store`].
//!
//! The HTTP layer (`server.rs`) only parses requests and renders responses; everything with
//! Kubernetes semantics lives here: resourceVersion handling, optimistic concurrency, defaulting
//! and validation, graceful pod deletion, finalizers and ClusterIP/NodePort allocation.
//!
//! Delete only marks an object (`deletionTimestamp`, plus the `orphan` / `foregroundDeletion`
//! finalizer its propagation policy asks for, and phase Terminating for namespaces) when
//! something holds it, and removes it once the last finalizer goes, as kube-apiserver's generic
//! registry does. Cascading (ownerReferences) and namespace cleanup are the controllers' work
//! (`keelson-controllers`), which resume after any restart because all their state is stored here.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::alloc::Allocator;
use crate::error::{ApiError, Cause};
use crate::objects::{self, FieldValidation};
use crate::resources::{self, ResourceDef};
use crate::selectors::{FieldSelector, LabelSelector, labels_of};
use crate::store::{EventKind, KeyValue, Store, StoreError};

/// Options shared by writes.
#[derive(Debug, Clone)]
pub struct WriteOpts {
    pub field_validation: FieldValidation,
    pub dry_run: bool,
    /// Who writes; non-apply writes with a manager are recorded in managedFields.
    pub field_manager: String,
    /// Set by server-side apply, which maintains managedFields itself.
    pub apply: bool,
    /// Admission check run on the final object (with the old one on updates) before it is stored.
    pub admit: Option<Admit>,
}

/// An admission check (e.g. RBAC privilege escalation) bound to the requesting user.
#[derive(Clone)]
#[allow(clippy::type_complexity)]
pub struct Admit(pub Arc<dyn Fn(&ResourceDef, &Value, Option<&Value>) -> Result<(), ApiError> + Send + Sync>);

impl std::fmt::Debug for Admit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admit(..)")
    }
}

impl Default for WriteOpts {
    fn default() -> Self {
        WriteOpts {
            field_validation: FieldValidation::Warn,
            dry_run: false,
            field_manager: String::new(),
            apply: false,
            admit: None,
        }
    }
}

/// Options of a list or watch.
#[derive(Debug, Clone, Default)]
pub struct ListOpts {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: usize,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// Options of a watch beyond the list options.
#[derive(Debug, Clone, Default)]
pub struct WatchOpts {
    pub list: ListOpts,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

/// One event delivered to an API watcher.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// ADDED, MODIFIED, DELETED, BOOKMARK or ERROR.
    pub kind: &'static str,
    pub object: Arc<Value>,
    /// The object already serialized as JSON (shared by all watchers of a store event).
    pub encoded: Option<bytes::Bytes>,
}

impl WatchEvent {
    fn new(kind: &'static str, object: Value) -> Self {
        WatchEvent { kind, object: Arc::new(object), encoded: None }
    }
}

/// The API core shared by all connections.
pub struct Api {
    pub store: Arc<dyn Store>,
    alloc: Mutex<Allocator>,
    /// Pods in graceful deletion: key → deadline.
    graceful: Mutex<HashMap<String, chrono::DateTime<Utc>>>,
    pub bookmark_interval: Duration,
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just set to an object"),
    }
}

fn not_found(res: &ResourceDef, name: &str) -> ApiError {
    ApiError::NotFound { group: res.group.into(), kind: res.plural.into(), name: name.into() }
}

fn conflict(res: &ResourceDef, name: &str, message: &str) -> ApiError {
    ApiError::Conflict { group: res.group.into(), kind: res.plural.into(), name: name.into(), message: message.into() }
}

fn invalid(res: &ResourceDef, name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::Invalid { group: res.group.into(), kind: res.kind.into(), name: name.into(), causes }
}

/// Decodes a stored value and stamps its resourceVersion.
pub fn from_kv(kv: &KeyValue) -> Result<Value, ApiError> {
    from_bytes(&kv.value, kv.mod_revision)
}

fn from_bytes(bytes: &[u8], rev: i64) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(bytes).map_err(|e| ApiError::internal(format!("corrupt object: {e}")))?;
    meta_mut(&mut v).insert("resourceVersion".into(), json!(rev.to_string()));
    Ok(v)
}

fn to_bytes(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut o = obj.clone();
    meta_mut(&mut o).remove("resourceVersion");
    serde_json::to_vec(&o).map_err(ApiError::internal)
}

/// Whether an update changes nothing but bookkeeping: the resourceVersion (absent from the
/// candidate) and managedFields timestamps. Such an update is not written, so it neither bumps
/// the resourceVersion nor wakes watchers (upstream skips no-op updates the same way).
fn unchanged(old: &Value, new: &Value) -> bool {
    let normalize = |v: &Value| {
        let mut v = v.clone();
        let m = meta_mut(&mut v);
        m.remove("resourceVersion");
        if let Some(Value::Array(entries)) = m.get_mut("managedFields") {
            for e in entries {
                if let Value::Object(e) = e {
                    e.remove("time");
                }
            }
        }
        v
    };
    normalize(old) == normalize(new)
}

fn parse_rv(rv: &str) -> Result<i64, ApiError> {
    rv.parse::<i64>().map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))
}

fn list_kind(res: &ResourceDef) -> String {
    format!("{}List", res.kind)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: i64,
    start: String,
}

fn status_has_terminal_phase(pod: &Value) -> bool {
    matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

impl Api {
    pub fn new(store: Arc<dyn Store>, cidr: ipnet::Ipv4Net, bookmark_interval: Duration) -> Self {
        Api {
            store,
            alloc: Mutex::new(Allocator::new(cidr, (30000, 32767))),
            graceful: Mutex::new(HashMap::new()),
            bookmark_interval,
        }
    }

    fn alloc(&self) -> std::sync::MutexGuard<'_, Allocator> {
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        self.alloc().first_ip()
    }

    /// Rebuilds allocator state and graceful-deletion deadlines from storage.
    pub async fn recover(&self) -> Result<(), ApiError> {
        let svc = resources::find("", "v1", "services").ok_or(ApiError::NoRoute)?;
        for kv in self.store.list(&svc.list_prefix(None), None, 0, None).await?.items {
            let obj = from_kv(&kv)?;
            let mut a = self.alloc();
            if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|s| s.parse().ok()) {
                let _ = a.claim_ip(ip);
            }
            for p in obj.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
                if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                    let _ = a.claim_port(np as u16);
                }
            }
        }
        let pods = resources::find("", "v1", "pods").ok_or(ApiError::NoRoute)?;
        for kv in self.store.list(&pods.list_prefix(None), None, 0, None).await?.items {
            let obj = from_kv(&kv)?;
            if let Some(deadline) = graceful_deadline(&obj) {
                self.graceful.lock().unwrap_or_else(|p| p.into_inner()).insert(kv.key.clone(), deadline);
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ reads

    pub async fn get(&self, res: &ResourceDef, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let kv = self.store.get(&res.key(ns, name)).await?.ok_or_else(|| not_found(res, name))?;
        from_kv(&kv)
    }

    async fn get_kv(&self, res: &ResourceDef, ns: Option<&str>, name: &str) -> Result<(Value, i64), ApiError> {
        let kv = self.store.get(&res.key(ns, name)).await?.ok_or_else(|| not_found(res, name))?;
        Ok((from_kv(&kv)?, kv.mod_revision))
    }

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

    async fn run_watch(
        &self,
        res: &'static ResourceDef,
        opts: WatchOpts,
        snapshot: Vec<Value>,
        start_rev: i64,
        mut events: mpsc::Receiver<Arc<crate::store::Event>>,
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
            let encoded = ev
                .cache
                .encoded
                .get_or_init(|| bytes::Bytes::from(serde_json::to_vec(&*obj).unwrap_or_default()))
                .clone();
            if tx.send(WatchEvent { kind, object: obj, encoded: Some(encoded) }).await.is_err() {
                return;
            }
        }
    }

    // ------------------------------------------------------------------ writes

    async fn ensure_namespace(&self, res: &ResourceDef, ns: Option<&str>) -> Result<(), ApiError> {
        let Some(ns) = ns.filter(|_| res.namespaced) else { return Ok(()) };
        let nsres = resources::find("", "v1", "namespaces").ok_or(ApiError::NoRoute)?;
        match self.store.get(&nsres.key(None, ns)).await? {
            None => Err(ApiError::NotFound { group: String::new(), kind: "namespaces".into(), name: ns.into() }),
            Some(kv) => {
                let obj = from_kv(&kv)?;
                if obj.pointer("/metadata/deletionTimestamp").is_some() {
                    Err(ApiError::Forbidden {
                        message: format!(
                            "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                            res.plural, ""
                        ),
                        details: None,
                    })
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Fills apiVersion/kind and checks them against the URL.
    fn check_type(res: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body must be a JSON or YAML object"));
        }
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        if api_version.is_empty() {
            obj["apiVersion"] = json!(res.api_version());
        } else if api_version != res.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                res.api_version()
            )));
        }
        if kind.is_empty() {
            obj["kind"] = json!(res.kind);
        } else if kind != res.kind {
            if resources::RESOURCES.iter().all(|r| r.kind != kind) {
                return Err(ApiError::bad_request(format!(
                    "no kind \"{kind}\" is registered for version \"{}\"",
                    res.api_version()
                )));
            }
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                res.kind
            )));
        }
        Ok(())
    }

    fn check_namespace(res: &ResourceDef, ns: Option<&str>, obj: &mut Value) -> Result<(), ApiError> {
        let m = meta_mut(obj);
        if !res.namespaced {
            m.remove("namespace");
            return Ok(());
        }
        let url_ns = ns.unwrap_or("default");
        match m.get("namespace").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != url_ns => Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            )),
            _ => {
                m.insert("namespace".into(), json!(url_ns));
                Ok(())
            }
        }
    }

    /// Creates an object decoded from a request body.
    pub async fn create(
        &self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOpts,
    ) -> Result<(Value, Vec<String>), ApiError> {
        Self::check_type(res, &mut obj)?;
        let (mut obj, warnings) = objects::check_schema(res.kind, obj, opts.field_validation)?;
        Self::check_namespace(res, ns, &mut obj)?;
        self.ensure_namespace(res, ns).await?;
        {
            let m = meta_mut(&mut obj);
            let has_name = m.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
            if !has_name && let Some(gn) = m.get("generateName").and_then(Value::as_str).filter(|g| !g.is_empty()) {
                let suffix: String = {
                    use rand::Rng;
                    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
                    let mut rng = rand::rng();
                    (0..5).map(|_| ALPHA[rng.random_range(0..ALPHA.len())] as char).collect()
                };
                let base: String = gn.chars().take(58).collect();
                m.insert("name".into(), json!(format!("{base}{suffix}")));
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("selfLink");
            if res.has_generation() {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        objects::apply_defaults(res, &mut obj);
        if !opts.apply {
            crate::apply::record_update(None, &mut obj, &opts.field_manager, &res.api_version(), None);
        }
        if res.kind == "Job" {
            default_job_selector(&mut obj);
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        objects::validate(res, &obj, None)?;
        if let Some(admit) = &opts.admit {
            (admit.0)(res, &obj, None)?;
        }
        let allocated = if res.kind == "Service" { self.allocate_service(&mut obj, None)? } else { Vec::new() };
        if opts.dry_run {
            self.release(&allocated);
            return Ok((obj, warnings));
        }
        let key = res.key(ns, &name);
        match self.store.create(&key, to_bytes(&obj)?).await {
            Ok(rev) => {
                meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
                Ok((obj, warnings))
            }
            Err(e) => {
                self.release(&allocated);
                Err(match e {
                    StoreError::AlreadyExists { .. } => {
                        ApiError::AlreadyExists { group: res.group.into(), kind: res.plural.into(), name }
                    }
                    other => other.into(),
                })
            }
        }
    }

    /// Read-modify-write with retries on conflicts: `f` maps the current object to the new one;
    /// `expected_rv` (from the client) turns a mismatch into 409 instead of a retry.
    pub async fn update_with<F>(
        &self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        opts: &WriteOpts,
        mut f: F,
    ) -> Result<(Value, Vec<String>), ApiError>
    where
        F: FnMut(&Value) -> Result<(Value, Option<String>), ApiError>,
    {
        for _ in 0..16 {
            let (old, rev) = self.get_kv(res, ns, name).await?;
            let (mut new, client_rv) = f(&old)?;
            if let Some(crv) = client_rv.filter(|r| !r.is_empty())
                && parse_rv(&crv)? != rev
            {
                return Err(conflict(
                    res,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            Self::check_type(res, &mut new)?;
            let (mut new, warnings) = objects::check_schema(res.kind, new, opts.field_validation)?;
            Self::check_namespace(res, ns, &mut new)?;
            if meta_str(&new, "name") != Some(name) {
                return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
            }
            self.prepare_update(res, sub, &old, &mut new)?;
            if !opts.apply {
                crate::apply::record_update(Some(&old), &mut new, &opts.field_manager, &res.api_version(), sub);
            }
            objects::validate(res, &new, Some(&old))?;
            if let Some(admit) = &opts.admit {
                (admit.0)(res, &new, Some(&old))?;
            }
            let allocated =
                if res.kind == "Service" { self.allocate_service(&mut new, Some(&old))? } else { Vec::new() };
            // A no-op is not written, unless it finalizes a deletion (the sweeper and namespace
            // deletion drive finished objects out through unchanged updates).
            if opts.dry_run || (unchanged(&old, &new) && !self.ready_to_delete(res, &new)) {
                self.release(&allocated);
                return Ok((if opts.dry_run { new } else { old }, warnings));
            }
            // Finalized: deletion requested and nothing holds the object any more.
            if self.ready_to_delete(res, &new) {
                match self.store.delete(&res.key(ns, name), rev).await {
                    Ok(drev) => {
                        self.after_delete(res, &old);
                        meta_mut(&mut new).insert("resourceVersion".into(), json!(drev.to_string()));
                        return Ok((new, warnings));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(StoreError::NotFound { .. }) => return Err(not_found(res, name)),
                    Err(e) => return Err(e.into()),
                }
            }
            match self.store.update(&res.key(ns, name), to_bytes(&new)?, rev).await {
                Ok(nrev) => {
                    self.release_removed(&old, &new);
                    meta_mut(&mut new).insert("resourceVersion".into(), json!(nrev.to_string()));
                    return Ok((new, warnings));
                }
                Err(StoreError::Conflict { .. }) => {
                    self.release(&allocated);
                    continue;
                }
                Err(StoreError::NotFound { .. }) => {
                    self.release(&allocated);
                    return Err(not_found(res, name));
                }
                Err(e) => {
                    self.release(&allocated);
                    return Err(e.into());
                }
            }
        }
        Err(conflict(res, name, "too many concurrent modifications, please retry"))
    }

    fn ready_to_delete(&self, res: &ResourceDef, obj: &Value) -> bool {
        if obj.pointer("/metadata/deletionTimestamp").is_none() {
            return false;
        }
        let finalizers_empty =
            obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(|f| f.is_empty());
        if !finalizers_empty {
            return false;
        }
        match res.kind {
            // A pod in graceful deletion goes once its containers are done (or its node confirms
            // with a zero-grace delete, or the grace period ends: see `sweep_graceful`).
            "Pod" => status_has_terminal_phase(obj) || obj.pointer("/spec/nodeName").is_none(),
            "Namespace" => obj.pointer("/spec/finalizers").and_then(Value::as_array).is_none_or(|f| f.is_empty()),
            _ => true,
        }
    }

    /// Carries over server-owned fields and splits spec/status updates.
    fn prepare_update(
        &self,
        res: &ResourceDef,
        sub: Option<&str>,
        old: &Value,
        new: &mut Value,
    ) -> Result<(), ApiError> {
        let keep = ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"];
        let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
        if sub == Some("status") {
            // Status writes change only status.
            let status = new.get("status").cloned();
            *new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Value::Object(m) = new {
                        m.remove("status");
                    }
                }
            }
            meta_mut(new).remove("resourceVersion");
            return Ok(());
        }
        if res.kind == "Namespace" {
            // `spec.finalizers` changes only through `namespaces/{name}/finalize`, and that
            // subresource changes nothing else (upstream's namespace and finalize strategies).
            if sub == Some("finalize") {
                let finalizers = new.pointer("/spec/finalizers").cloned();
                *new = old.clone();
                match finalizers {
                    Some(f) => new["spec"]["finalizers"] = f,
                    None => {
                        if let Some(Value::Object(spec)) = new.get_mut("spec") {
                            spec.remove("finalizers");
                        }
                    }
                }
                meta_mut(new).remove("resourceVersion");
                return Ok(());
            }
            match old.pointer("/spec/finalizers") {
                Some(f) => new["spec"]["finalizers"] = f.clone(),
                None => {
                    if let Some(Value::Object(spec)) = new.get_mut("spec") {
                        spec.remove("finalizers");
                    }
                }
            }
        }
        {
            let m = meta_mut(new);
            for k in keep {
                match old_meta.get(k) {
                    Some(v) => {
                        m.insert(k.into(), v.clone());
                    }
                    None => {
                        m.remove(k);
                    }
                }
            }
            m.remove("resourceVersion");
            // Finalizers cannot be added once deletion started (upstream rejects; we keep old ones plus removals).
        }
        if res.has_sub("status") {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Value::Object(m) = new {
                        m.remove("status");
                    }
                }
            }
        }
        if res.has_generation() && new.get("spec") != old.get("spec") {
            let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            meta_mut(new).insert("generation".into(), json!(g + 1));
        }
        if res.kind == "Service" {
            // Keep the allocated clusterIP(s) when the client left them empty.
            for f in ["clusterIP", "clusterIPs"] {
                let empty = new.pointer(&format!("/spec/{f}")).is_none_or(|v| v.as_str() == Some("") || v.is_null());
                if empty
                    && let (Some(v), Some(spec)) = (old.pointer(&format!("/spec/{f}")).cloned(), new.get_mut("spec"))
                {
                    spec[f] = v;
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ services

    /// Allocates ClusterIP/NodePorts for a new or changed Service; returns what was newly taken.
    fn allocate_service(&self, obj: &mut Value, old: Option<&Value>) -> Result<Vec<Allocation>, ApiError> {
        let name = meta_str(obj, "name").unwrap_or_default().to_string();
        let svc = resources::find("", "v1", "services").ok_or(ApiError::NoRoute)?;
        let mut taken = Vec::new();
        let mut a = self.alloc();
        let ty = obj.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
        let fail = |taken: &mut Vec<Allocation>, a: &mut Allocator, cause: Cause| {
            for t in taken.drain(..) {
                match t {
                    Allocation::Ip(ip) => a.release_ip(ip),
                    Allocation::Port(p) => a.release_port(p),
                }
            }
            invalid(svc, &name, vec![cause])
        };
        if old.is_none() && ty != "ExternalName" {
            let requested = obj.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or_default().to_string();
            let ip = if requested == "None" {
                None
            } else if requested.is_empty() {
                match a.allocate_ip() {
                    Ok(ip) => Some(ip),
                    Err(e) => return Err(fail(&mut taken, &mut a, Cause::invalid("spec.clusterIPs", "", e))),
                }
            } else {
                let ip: Ipv4Addr = requested.parse().map_err(|_| {
                    invalid(
                        svc,
                        &name,
                        vec![Cause::invalid("spec.clusterIPs[0]", &requested, "must be a valid IPv4 address")],
                    )
                })?;
                if let Err(e) = a.claim_ip(ip) {
                    return Err(fail(&mut taken, &mut a, Cause::invalid("spec.clusterIPs", &requested, e)));
                }
                Some(ip)
            };
            if let Some(ip) = ip {
                taken.push(Allocation::Ip(ip));
                obj["spec"]["clusterIP"] = json!(ip.to_string());
                obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
            } else {
                obj["spec"]["clusterIPs"] = json!(["None"]);
            }
        }
        let old_ports: Vec<u16> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_u64).map(|n| n as u16))
            .collect();
        let wants_node_ports = ty == "NodePort" || ty == "LoadBalancer";
        if let Some(Value::Array(ports)) = obj.pointer_mut("/spec/ports") {
            for (i, p) in ports.iter_mut().enumerate() {
                let np = p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) as u16;
                if !wants_node_ports {
                    if let Value::Object(m) = p {
                        m.remove("nodePort");
                    }
                    continue;
                }
                if np == 0 {
                    match a.allocate_port() {
                        Ok(port) => {
                            taken.push(Allocation::Port(port));
                            p["nodePort"] = json!(port);
                        }
                        Err(e) => {
                            return Err(fail(
                                &mut taken,
                                &mut a,
                                Cause::invalid(format!("spec.ports[{i}].nodePort"), 0, e),
                            ));
                        }
                    }
                } else if !old_ports.contains(&np) {
                    if let Err(e) = a.claim_port(np) {
                        return Err(fail(
                            &mut taken,
                            &mut a,
                            Cause::invalid(format!("spec.ports[{i}].nodePort"), np, e),
                        ));
                    }
                    taken.push(Allocation::Port(np));
                }
            }
        }
        Ok(taken)
    }

    fn release(&self, allocs: &[Allocation]) {
        let mut a = self.alloc();
        for t in allocs {
            match t {
                Allocation::Ip(ip) => a.release_ip(*ip),
                Allocation::Port(p) => a.release_port(*p),
            }
        }
    }

    /// Releases node ports an update dropped.
    fn release_removed(&self, old: &Value, new: &Value) {
        let ports = |v: &Value| -> Vec<u16> {
            v.pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_u64).map(|n| n as u16))
                .collect()
        };
        if old.get("kind").and_then(Value::as_str) != Some("Service") {
            return;
        }
        let keep = ports(new);
        let mut a = self.alloc();
        for p in ports(old) {
            if !keep.contains(&p) {
                a.release_port(p);
            }
        }
    }

    fn after_delete(&self, res: &ResourceDef, obj: &Value) {
        if res.kind == "Service" {
            let mut a = self.alloc();
            if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|s| s.parse().ok()) {
                a.release_ip(ip);
            }
            for p in obj.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
                if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                    a.release_port(np as u16);
                }
            }
        }
        if res.kind == "Pod" {
            let key = res.key(meta_str(obj, "namespace"), meta_str(obj, "name").unwrap_or_default());
            self.graceful.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        }
    }

    // ------------------------------------------------------------------ delete

    /// Deletes (or starts deleting) one object; returns the object as last stored.
    pub fn delete<'a>(
        self: &'a Arc<Self>,
        res: &'static ResourceDef,
        ns: Option<&'a str>,
        name: &'a str,
        opts: &'a DeleteOpts,
    ) -> futures::future::BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(self.delete_inner(res, ns, name, opts))
    }

    async fn delete_inner(
        self: &Arc<Self>,
        res: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        for _ in 0..16 {
            let (obj, rev) = self.get_kv(res, ns, name).await?;
            if let Some(uid) = &opts.precondition_uid
                && meta_str(&obj, "uid") != Some(uid.as_str())
            {
                return Err(conflict(
                    res,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&obj, "uid").unwrap_or_default()
                    ),
                ));
            }
            if let Some(prv) = &opts.precondition_rv
                && parse_rv(prv)? != rev
            {
                return Err(conflict(
                    res,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {prv}, ResourceVersion in object meta: {rev}"
                    ),
                ));
            }
            if opts.dry_run {
                return Ok(obj);
            }
            let mut new = obj.clone();
            let mut graceful = false;
            if res.kind == "Pod" {
                let spec_grace =
                    obj.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30);
                let grace = opts.grace_period.unwrap_or(spec_grace).max(0);
                let bound = obj.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
                let current = obj.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64);
                if bound && grace > 0 && !status_has_terminal_phase(&obj) && current.is_none_or(|c| grace < c) {
                    let deadline = Utc::now() + chrono::Duration::seconds(grace);
                    let m = meta_mut(&mut new);
                    m.insert("deletionTimestamp".into(), json!(deadline.to_rfc3339_opts(SecondsFormat::Secs, true)));
                    m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    graceful = true;
                } else if bound && grace > 0 && current.is_some() {
                    // Already terminating with a shorter or equal grace: nothing changes.
                    return Ok(obj);
                }
            }
            gc_finalizers(&mut new, opts.propagation.as_deref());
            if res.kind == "Namespace" && obj.pointer("/metadata/deletionTimestamp").is_none() {
                // The namespace controller must empty it first, also for namespaces stored
                // without the finalizer (by older servers).
                let spec = new.as_object_mut().map(|m| m.entry("spec").or_insert_with(|| json!({})));
                if let Some(Value::Object(spec)) = spec {
                    let f = spec.entry("finalizers").or_insert_with(|| json!([]));
                    if let Value::Array(a) = f
                        && !a.iter().any(|x| x == "kubernetes")
                    {
                        a.push(json!("kubernetes"));
                    }
                }
            }
            let held_by_finalizers =
                new.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
            let namespace_held = res.kind == "Namespace"
                && new.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
            if held_by_finalizers || graceful || namespace_held {
                // Only mark the object: whoever holds it (the garbage collector, the namespace
                // controller, the kubelet, another finalizer's owner) removes what holds it, and
                // the last removal deletes it (`update_with`, as the generic registry does).
                if new.pointer("/metadata/deletionTimestamp").is_none() {
                    meta_mut(&mut new).insert("deletionTimestamp".into(), json!(now_rfc3339()));
                    meta_mut(&mut new).insert("deletionGracePeriodSeconds".into(), json!(0));
                }
                if res.kind == "Namespace" {
                    new["status"]["phase"] = json!("Terminating");
                }
                if new == obj {
                    return Ok(obj);
                }
                let rev2 = match self.store.update(&res.key(ns, name), to_bytes(&new)?, rev).await {
                    Ok(r) => r,
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                };
                meta_mut(&mut new).insert("resourceVersion".into(), json!(rev2.to_string()));
                if graceful && let Some(d) = graceful_deadline(&new) {
                    self.graceful.lock().unwrap_or_else(|p| p.into_inner()).insert(res.key(ns, name), d);
                }
                return Ok(new);
            }
            // Nothing holds it: gone now. Its dependents, if any, are the garbage collector's.
            match self.store.delete(&res.key(ns, name), rev).await {
                Ok(drev) => {
                    self.after_delete(res, &obj);
                    let mut out = obj.clone();
                    meta_mut(&mut out).insert("resourceVersion".into(), json!(drev.to_string()));
                    return Ok(out);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => return Err(not_found(res, name)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(conflict(res, name, "too many concurrent modifications, please retry"))
    }

    /// Removes pods whose grace period has ended. Called periodically.
    pub async fn sweep_graceful(self: &Arc<Self>) {
        let now = Utc::now();
        let due: Vec<String> = {
            let g = self.graceful.lock().unwrap_or_else(|p| p.into_inner());
            g.iter().filter(|(_, d)| **d <= now).map(|(k, _)| k.clone()).collect()
        };
        let Some(pods) = resources::find("", "v1", "pods") else { return };
        for key in due {
            let rest = key.trim_start_matches(&pods.key_prefix()).to_string();
            let Some((ns, name)) = rest.split_once('/') else { continue };
            let opts = DeleteOpts { grace_period: Some(0), ..Default::default() };
            match self.delete(pods, Some(ns), name, &opts).await {
                Ok(_) | Err(ApiError::NotFound { .. }) => {
                    self.graceful.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                }
                Err(e) => tracing::warn!(error = %e, key, "expiring pod grace period"),
            }
        }
    }

    /// Deletes every object matching the selectors.
    pub async fn delete_collection(
        self: &Arc<Self>,
        res: &'static ResourceDef,
        ns: Option<&str>,
        list: &ListOpts,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let (items, _, _) = self.list(res, ns, list).await?;
        let mut deleted = Vec::new();
        for obj in items {
            let name = meta_str(&obj, "name").unwrap_or_default().to_string();
            match self.delete(res, meta_str(&obj, "namespace"), &name, opts).await {
                Ok(o) => deleted.push(o),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let rv = self.store.current_revision().await?;
        Ok(Self::list_object(res, deleted, rv, None))
    }

    // ------------------------------------------------------------------ subresources

    pub fn scale_of(res: &ResourceDef, obj: &Value) -> Value {
        let sel = match res.kind {
            "ReplicationController" => obj
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
            _ => {
                let s = obj.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
                let mut parts: Vec<String> = s
                    .get("matchLabels")
                    .and_then(Value::as_object)
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
                    .unwrap_or_default();
                parts.sort();
                parts.join(",")
            }
        };
        let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
        let mut m = serde_json::Map::new();
        for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
            if let Some(v) = meta.get(k) {
                m.insert(k.into(), v.clone());
            }
        }
        json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": m,
            "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
            "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": sel},
        })
    }

    /// Binds a pod to a node (pods/binding).
    pub async fn bind(&self, ns: &str, name: &str, binding: &Value) -> Result<Value, ApiError> {
        let pods = resources::find("", "v1", "pods").ok_or(ApiError::NoRoute)?;
        let node = binding.pointer("/target/name").and_then(Value::as_str).unwrap_or_default().to_string();
        if node.is_empty() {
            return Err(invalid(pods, name, vec![Cause::required("target.name")]));
        }
        let opts = WriteOpts { field_validation: FieldValidation::Ignore, ..Default::default() };
        self.update_with(pods, Some(ns), name, None, &opts, |cur| {
            if cur.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
                return Err(conflict(
                    pods,
                    name,
                    &format!(
                        "pod {name} is already assigned to node {:?}",
                        cur.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default()
                    ),
                ));
            }
            if cur.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(conflict(pods, name, "pod is being deleted, cannot be assigned to a host"));
            }
            let mut n = cur.clone();
            n["spec"]["nodeName"] = json!(node);
            Ok((n, None))
        })
        .await?;
        Ok(crate::error::success_status(json!({})))
    }
}

#[derive(Debug, Clone, Copy)]
enum Allocation {
    Ip(Ipv4Addr),
    Port(u16),
}

/// Sets the garbage collector's finalizers for a delete with `propagation` (upstream's
/// `deletionFinalizersForGarbageCollection`): Orphan → `orphan`, Foreground →
/// `foregroundDeletion`, Background → neither; no policy keeps what the object has.
fn gc_finalizers(obj: &mut Value, propagation: Option<&str>) {
    let (add, remove): (&[&str], &[&str]) = match propagation {
        Some("Orphan") => (&["orphan"], &["foregroundDeletion"]),
        Some("Foreground") => (&["foregroundDeletion"], &["orphan"]),
        Some("Background") => (&[], &["orphan", "foregroundDeletion"]),
        _ => return,
    };
    let has = obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
    if !has && add.is_empty() {
        return;
    }
    let m = meta_mut(obj);
    let f = m.entry("finalizers").or_insert_with(|| json!([]));
    if !f.is_array() {
        *f = json!([]);
    }
    if let Value::Array(a) = f {
        a.retain(|x| !x.as_str().is_some_and(|x| remove.contains(&x)));
        for x in add {
            if !a.iter().any(|y| y == x) {
                a.push(json!(x));
            }
        }
        if a.is_empty() {
            m.remove("finalizers");
        }
    }
}

fn graceful_deadline(pod: &Value) -> Option<chrono::DateTime<Utc>> {
    let ts = pod.pointer("/metadata/deletionTimestamp").and_then(Value::as_str)?;
    chrono::DateTime::parse_from_rfc3339(ts).ok().map(|t| t.with_timezone(&Utc))
}

/// Jobs get a generated selector on their own uid unless `manualSelector` is set.
fn default_job_selector(obj: &mut Value) {
    if obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let uid = meta_str(obj, "uid").unwrap_or_default().to_string();
    let name = meta_str(obj, "name").unwrap_or_default().to_string();
    let labels: BTreeMap<&str, &str> = [
        ("batch.kubernetes.io/controller-uid", uid.as_str()),
        ("batch.kubernetes.io/job-name", name.as_str()),
        ("controller-uid", uid.as_str()),
        ("job-name", name.as_str()),
    ]
    .into_iter()
    .collect();
    obj["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    if let Some(t) = obj.pointer_mut("/spec/template") {
        if !t.pointer("/metadata/labels").is_some_and(Value::is_object) {
            if !t.get("metadata").is_some_and(Value::is_object) {
                t["metadata"] = json!({});
            }
            t["metadata"]["labels"] = json!({});
        }
        if let Some(Value::Object(m)) = t.pointer_mut("/metadata/labels") {
            for (k, v) in &labels {
                m.insert((*k).into(), json!(v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::sqlite::{SqliteStore, SyncMode};

    #[tokio::test]
    async fn a_no_op_update_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db"), SyncMode::Normal).unwrap());
        let api = Arc::new(Api::new(store.clone(), "10.96.0.0/12".parse().unwrap(), Duration::from_secs(5)));
        let opts = WriteOpts { field_manager: "test".into(), ..Default::default() };
        let ns = resources::find("", "v1", "namespaces").unwrap();
        api.create(ns, None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}), &opts)
            .await
            .unwrap();
        let res = resources::find("", "v1", "configmaps").unwrap();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}, "data": {"a": "1"}});
        let (created, _) = api.create(res, Some("default"), cm, &opts).await.unwrap();
        let rv = created["metadata"]["resourceVersion"].clone();
        let before = store.current_revision().await.unwrap();
        // The same object again (as `kubectl replace` or a controller re-asserting state sends it).
        let (same, _) =
            api.update_with(res, Some("default"), "c", None, &opts, |cur| Ok((cur.clone(), None))).await.unwrap();
        assert_eq!(same["metadata"]["resourceVersion"], rv);
        assert_eq!(store.current_revision().await.unwrap(), before, "nothing written");
        // A real change is written and bumps the resourceVersion.
        let (changed, _) = api
            .update_with(res, Some("default"), "c", None, &opts, |cur| {
                let mut n = cur.clone();
                n["data"]["a"] = json!("2");
                Ok((n, None))
            })
            .await
            .unwrap();
        assert_ne!(changed["metadata"]["resourceVersion"], rv);
        assert_eq!(store.current_revision().await.unwrap(), before + 1);
    }

    #[tokio::test]
    async fn delete_marks_what_is_held_and_the_last_finalizer_removal_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db"), SyncMode::Normal).unwrap());
        let api = Arc::new(Api::new(store, "10.96.0.0/12".parse().unwrap(), Duration::from_secs(5)));
        let opts = WriteOpts { field_manager: "test".into(), ..Default::default() };
        let nsres = resources::find("", "v1", "namespaces").unwrap();
        let res = resources::find("", "v1", "configmaps").unwrap();
        // A protobuf-style create with an empty finalizer list still gets `kubernetes`.
        let ns =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}, "spec": {"finalizers": []}});
        let (ns, _) = api.create(nsres, None, ns, &opts).await.unwrap();
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        let del = |p: &str| DeleteOpts { propagation: Some(p.into()), ..Default::default() };
        for (name, policy, finalizer) in [
            ("fg", "Foreground", Some("foregroundDeletion")),
            ("or", "Orphan", Some("orphan")),
            ("bg", "Background", None),
        ] {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "n"}});
            api.create(res, Some("n"), cm, &opts).await.unwrap();
            let out = api.delete(res, Some("n"), name, &del(policy)).await.unwrap();
            let stored = api.get(res, Some("n"), name).await;
            match finalizer {
                Some(f) => {
                    assert_eq!(out["metadata"]["finalizers"], json!([f]), "{policy}");
                    assert!(out["metadata"]["deletionTimestamp"].is_string(), "{policy}");
                    assert!(stored.is_ok(), "{policy}: held by its finalizer");
                    // Removing the last finalizer deletes it.
                    let r = api.update_with(res, Some("n"), name, None, &opts, |cur| {
                        let mut c = cur.clone();
                        c["metadata"]["finalizers"] = json!([]);
                        Ok((c, None))
                    });
                    r.await.unwrap();
                    assert!(matches!(api.get(res, Some("n"), name).await, Err(ApiError::NotFound { .. })), "{policy}");
                }
                None => assert!(matches!(stored, Err(ApiError::NotFound { .. })), "{policy}: nothing holds it"),
            }
        }
        // A namespace only turns Terminating; a plain update cannot drop its finalizer, the
        // finalize subresource can, and that deletes it.
        let out = api.delete(nsres, None, "n", &DeleteOpts::default()).await.unwrap();
        assert_eq!(out["status"]["phase"], "Terminating");
        let strip = |cur: &Value| {
            let mut c = cur.clone();
            c["spec"]["finalizers"] = json!([]);
            c["metadata"]["labels"]["x"] = json!("y");
            Ok((c, None))
        };
        let (kept, _) = api.update_with(nsres, None, "n", None, &opts, strip).await.unwrap();
        assert_eq!(kept["spec"]["finalizers"], json!(["kubernetes"]));
        let finalize = |cur: &Value| {
            let mut c = cur.clone();
            c["spec"]["finalizers"] = json!([]);
            c["metadata"]["labels"]["x"] = json!("ignored");
            Ok((c, None))
        };
        let (fin, _) = api.update_with(nsres, None, "n", Some("finalize"), &opts, finalize).await.unwrap();
        assert_eq!(fin["metadata"]["labels"]["x"], "y", "finalize changes nothing but spec.finalizers");
        assert!(matches!(api.get(nsres, None, "n").await, Err(ApiError::NotFound { .. })));
    }
}
