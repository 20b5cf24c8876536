//! Delete, cascading (owner references), namespace termination, the pod grace-period sweep and
//! deletecollection. Moved verbatim from the old `api.rs`: task C replaces this with controllers.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{
    Api, DeleteOpts, ListOpts, WriteOpts, conflict, from_kv, graceful_deadline, meta_mut, meta_str, not_found,
    now_rfc3339, parse_rv, status_has_terminal_phase, to_bytes,
};
use crate::error::ApiError;
use crate::objects::FieldValidation;
use crate::resources::{self, RESOURCES, ResourceDef};
use crate::storage::StoreError;

impl Api {
    /// Deletes (or starts deleting) one object; returns the object as last stored. Boxed because
    /// cascading and namespace termination recurse into it.
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
            let has_finalizers =
                obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
            let orphan = opts.propagation.as_deref() == Some("Orphan");
            let foreground = opts.propagation.as_deref() == Some("Foreground");
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
            if res.kind == "Namespace" {
                if obj.pointer("/metadata/deletionTimestamp").is_none() {
                    meta_mut(&mut new).insert("deletionTimestamp".into(), json!(now_rfc3339()));
                    new["status"]["phase"] = json!("Terminating");
                    let rev2 = match self.store.update(&res.key(None, name), to_bytes(&new)?, rev).await {
                        Ok(r) => r,
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    };
                    meta_mut(&mut new).insert("resourceVersion".into(), json!(rev2.to_string()));
                    let api = self.clone();
                    let ns_name = name.to_string();
                    tokio::spawn(async move { api.terminate_namespace(ns_name).await });
                }
                return Ok(new);
            }
            if foreground {
                let m = meta_mut(&mut new);
                let f = m.entry("finalizers").or_insert_with(|| json!([]));
                if let Value::Array(a) = f
                    && !a.contains(&json!("foregroundDeletion"))
                {
                    a.push(json!("foregroundDeletion"));
                }
            }
            if orphan
                && !obj
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.contains(&json!("orphan")))
            {
                // Orphaning is done right here rather than through the `orphan` finalizer.
                self.orphan_dependents(&obj).await?;
            }
            if has_finalizers || graceful || foreground {
                if obj.pointer("/metadata/deletionTimestamp").is_none() {
                    meta_mut(&mut new).insert("deletionTimestamp".into(), json!(now_rfc3339()));
                    meta_mut(&mut new).insert("deletionGracePeriodSeconds".into(), json!(0));
                    if graceful {
                        // Restore the graceful values set above (the insert order matters).
                        let grace = opts
                            .grace_period
                            .unwrap_or(
                                obj.pointer("/spec/terminationGracePeriodSeconds")
                                    .and_then(Value::as_i64)
                                    .unwrap_or(30),
                            )
                            .max(0);
                        let deadline = Utc::now() + chrono::Duration::seconds(grace);
                        meta_mut(&mut new).insert(
                            "deletionTimestamp".into(),
                            json!(deadline.to_rfc3339_opts(SecondsFormat::Secs, true)),
                        );
                        meta_mut(&mut new).insert("deletionGracePeriodSeconds".into(), json!(grace));
                    }
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
                if foreground {
                    let api = self.clone();
                    let o = new.clone();
                    tokio::spawn(async move { api.foreground_delete(res, o).await });
                }
                return Ok(new);
            }
            match self.store.delete(&res.key(ns, name), rev).await {
                Ok(drev) => {
                    self.after_delete(res, &obj);
                    let mut out = obj.clone();
                    meta_mut(&mut out).insert("resourceVersion".into(), json!(drev.to_string()));
                    if !orphan {
                        let api = self.clone();
                        let o = obj.clone();
                        tokio::spawn(async move { api.delete_dependents(&o).await });
                    }
                    return Ok(out);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => return Err(not_found(res, name)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(conflict(res, name, "too many concurrent modifications, please retry"))
    }

    /// Objects in the owner's namespace that list it in ownerReferences.
    async fn dependents(&self, owner: &Value) -> Result<Vec<(&'static ResourceDef, Value)>, ApiError> {
        let Some(uid) = meta_str(owner, "uid") else { return Ok(Vec::new()) };
        let ns = meta_str(owner, "namespace");
        let mut out = Vec::new();
        for res in RESOURCES.iter().filter(|r| r.namespaced || ns.is_none()) {
            for kv in self.store.list(&res.list_prefix(ns), None, 0, None).await?.items {
                let obj = from_kv(&kv)?;
                let owned = obj
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| refs.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid)));
                if owned {
                    out.push((res, obj));
                }
            }
        }
        Ok(out)
    }

    /// Background cascading delete (what the garbage collector does upstream).
    async fn delete_dependents(self: &Arc<Self>, owner: &Value) {
        let deps = match self.dependents(owner).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "listing dependents for cascading delete");
                return;
            }
        };
        for (res, obj) in deps {
            let name = meta_str(&obj, "name").unwrap_or_default().to_string();
            let opts = DeleteOpts { propagation: Some("Background".into()), ..Default::default() };
            match self.delete(res, meta_str(&obj, "namespace"), &name, &opts).await {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(error = %e, name, "cascading delete"),
            }
        }
    }

    async fn foreground_delete(self: &Arc<Self>, res: &'static ResourceDef, owner: Value) {
        self.delete_dependents(&owner).await;
        // Wait for the dependents to disappear (bounded), then drop our finalizer.
        for _ in 0..600 {
            match self.dependents(&owner).await {
                Ok(d) if d.is_empty() => break,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let ns = meta_str(&owner, "namespace").map(str::to_string);
        let name = meta_str(&owner, "name").unwrap_or_default().to_string();
        let r = self
            .update_with(
                res,
                ns.as_deref(),
                &name,
                None,
                &WriteOpts { field_validation: FieldValidation::Ignore, ..Default::default() },
                |cur| {
                    let mut n = cur.clone();
                    if let Some(Value::Array(f)) = n.pointer_mut("/metadata/finalizers") {
                        f.retain(|x| x != "foregroundDeletion");
                    }
                    Ok((n, None))
                },
            )
            .await;
        if let Err(e) = r
            && !matches!(e, ApiError::NotFound { .. })
        {
            tracing::warn!(error = %e, name, "finishing foreground deletion");
        }
    }

    async fn orphan_dependents(&self, owner: &Value) -> Result<(), ApiError> {
        let uid = meta_str(owner, "uid").unwrap_or_default().to_string();
        for (res, obj) in self.dependents(owner).await? {
            let name = meta_str(&obj, "name").unwrap_or_default().to_string();
            let opts = WriteOpts { field_validation: FieldValidation::Ignore, ..Default::default() };
            let r = self
                .update_with(res, meta_str(&obj, "namespace"), &name, None, &opts, |cur| {
                    let mut n = cur.clone();
                    if let Some(Value::Array(refs)) = n.pointer_mut("/metadata/ownerReferences") {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
                    }
                    Ok((n, None))
                })
                .await;
            if let Err(e) = r
                && !matches!(e, ApiError::NotFound { .. })
            {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes everything in a terminating namespace, then the namespace itself.
    async fn terminate_namespace(self: Arc<Self>, ns: String) {
        for attempt in 0..600 {
            let mut remaining = 0;
            for res in RESOURCES.iter().filter(|r| r.namespaced) {
                let items = match self.store.list(&res.list_prefix(Some(&ns)), None, 0, None).await {
                    Ok(p) => p.items,
                    Err(e) => {
                        tracing::warn!(error = %e, ns, "listing namespace contents");
                        remaining += 1;
                        continue;
                    }
                };
                for kv in items {
                    remaining += 1;
                    let Ok(obj) = from_kv(&kv) else { continue };
                    let name = meta_str(&obj, "name").unwrap_or_default().to_string();
                    // Namespace deletion does not wait for pod grace periods beyond the first pass.
                    let grace = if attempt > 0 { Some(0) } else { None };
                    let opts = DeleteOpts {
                        grace_period: grace,
                        propagation: Some("Background".into()),
                        ..Default::default()
                    };
                    if let Err(e) = self.delete(res, Some(&ns), &name, &opts).await
                        && !matches!(e, ApiError::NotFound { .. })
                    {
                        tracing::debug!(error = %e, ns, name, "namespace content delete");
                    }
                }
            }
            if remaining == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(nsres) = resources::find("", "v1", "namespaces") else { return };
        let opts = WriteOpts { field_validation: FieldValidation::Ignore, ..Default::default() };
        let r = self
            .update_with(nsres, None, &ns, None, &opts, |cur| {
                let mut n = cur.clone();
                n["spec"]["finalizers"] = json!([]);
                Ok((n, None))
            })
            .await;
        if let Err(e) = r
            && !matches!(e, ApiError::NotFound { .. })
        {
            tracing::warn!(error = %e, ns, "finalizing namespace");
        }
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
