//! Delete, the pod grace-period sweep and deletecollection.
//!
//! Delete only marks an object (`deletionTimestamp`, plus the `orphan` / `foregroundDeletion`
//! finalizer its propagation policy asks for, and phase Terminating with the `kubernetes` spec
//! finalizer for namespaces) when something holds it, and the write that removes its last
//! finalizer removes it (`write.rs`, as kube-apiserver's generic registry does). Cascading
//! (ownerReferences) and namespace cleanup are the controllers' work (`keelson-controllers`),
//! which resume after any restart because all their state is stored here.

use std::sync::Arc;

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{
    Api, DeleteOpts, ListOpts, conflict, graceful_deadline, meta_mut, meta_str, not_found, now_rfc3339, parse_rv,
    status_has_terminal_phase, to_bytes,
};
use crate::error::ApiError;
use crate::resources::{self, ResourceDef};
use crate::storage::StoreError;

impl Api {
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
                super::strategy::ensure_kubernetes_finalizer(&mut new);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::registry::WriteOpts;
    use crate::storage::Store;
    use crate::storage::sqlite::{SqliteStore, SyncMode};

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
