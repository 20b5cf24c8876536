//! The registry layer: the verbs (get, list, watch, create, update, patch, delete,
//! deletecollection) and the subresources on generic JSON objects stored through [`Store`].
//!
//! The HTTP layer only parses requests and renders responses; everything with Kubernetes
//! semantics lives here: resourceVersion handling, optimistic concurrency, defaulting and
//! validation, graceful pod deletion, finalizers and ClusterIP/NodePort allocation. Cascading
//! (ownerReferences) and namespace cleanup are the controllers' (`keelson-controllers`).
//!
//! The verbs are generic; what differs per kind sits behind one [`strategy::Strategy`] per kind
//! (as kube-apiserver's `pkg/registry/<group>/<kind>/strategy.go` behind its generic store).
//!
//! Files: [`read`] (list and watch), [`write`] (create and update), [`apply`] (server-side
//! apply), [`delete`] (delete marking with finalizers, the
//! grace-period sweep), [`strategy`]
//! (what differs per kind, the Service allocators), [`subresources`] (scale and binding),
//! [`rbac`] (the RBAC policy cache, bootstrap policy and access reviews), [`encode`] (JSON in
//! upstream's field order). This layer uses [`crate::storage`] and keelson-apimachinery; it
//! never uses the HTTP layer above it.

pub mod apply;
pub mod delete;
pub mod encode;
pub mod rbac;
pub mod read;
pub mod strategy;
pub mod subresources;
pub mod write;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use self::strategy::{GracefulDeadlines, Strategies, Strategy};
use crate::error::{ApiError, Cause};
use crate::objects::FieldValidation;
use crate::resources::{self, ResourceDef};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::storage::{KeyValue, Store};

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
    /// What differs per kind (and the Service allocators).
    strategies: Strategies,
    /// Pods in graceful deletion: key → deadline (shared with the Pod strategy).
    graceful: GracefulDeadlines,
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
        let graceful = GracefulDeadlines::default();
        Api { store, strategies: Strategies::new(cidr, graceful.clone()), graceful, bookmark_interval }
    }

    /// The DefaultTolerationSeconds admission's seconds for new pods.
    pub fn with_default_tolerations(mut self, d: strategy::tolerations::DefaultTolerationSeconds) -> Self {
        self.strategies.pod.default_tolerations = d;
        self
    }

    /// The strategy of a kind.
    fn strategy(&self, res: &ResourceDef) -> &dyn Strategy {
        self.strategies.of(res)
    }

    /// After an object was removed from storage (its strategy's hook).
    fn after_delete(&self, res: &ResourceDef, obj: &Value) {
        self.strategy(res).after_delete(res, obj);
    }

    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        self.strategies.service.first_ip()
    }

    /// Rebuilds allocator state and graceful-deletion deadlines from storage.
    pub async fn recover(&self) -> Result<(), ApiError> {
        let svc = resources::find("", "v1", "services").ok_or(ApiError::NoRoute)?;
        for kv in self.store.list(&svc.list_prefix(None), None, 0, None).await?.items {
            self.strategies.service.recover(&from_kv(&kv)?);
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

    /// A cheap read through the store, bounded in time: what the health endpoints report (as
    /// kube-apiserver's etcd check, 2 s by default). Returns the check's name and its outcome.
    pub async fn check_storage(&self) -> (&'static str, Result<(), String>) {
        const TIMEOUT: Duration = Duration::from_secs(2);
        let outcome = match tokio::time::timeout(TIMEOUT, self.store.get("/registry/health")).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
        };
        (self.store.health_name(), outcome)
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
}

fn graceful_deadline(pod: &Value) -> Option<chrono::DateTime<Utc>> {
    let ts = pod.pointer("/metadata/deletionTimestamp").and_then(Value::as_str)?;
    chrono::DateTime::parse_from_rfc3339(ts).ok().map(|t| t.with_timezone(&Utc))
}
