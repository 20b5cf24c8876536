//! Writes: create and the read-modify-write update loop shared by update, patch, apply and
//! the status subresource, with upstream's type/namespace checks and no-op detection.

use serde_json::{Value, json};

use super::{
    Api, WriteOpts, conflict, from_kv, meta_mut, meta_str, not_found, now_rfc3339, parse_rv, to_bytes, unchanged,
};
use crate::error::ApiError;
use crate::objects;
use crate::resources::{self, ResourceDef};
use crate::storage::StoreError;

impl Api {
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
        let strategy = self.strategy(res);
        strategy.defaults(res, &mut obj);
        if !opts.apply {
            crate::apply::record_update(None, &mut obj, &opts.field_manager, &res.api_version(), None);
        }
        strategy.prepare_for_create(&mut obj);
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        strategy.validate(res, &obj, None)?;
        if let Some(admit) = &opts.admit {
            (admit.0)(res, &obj, None)?;
        }
        let allocated = strategy.allocate(&mut obj, None)?;
        if opts.dry_run {
            strategy.release(&allocated);
            return Ok((obj, warnings));
        }
        let key = res.key(ns, &name);
        match self.store.create(&key, to_bytes(&obj)?).await {
            Ok(rev) => {
                meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
                Ok((obj, warnings))
            }
            Err(e) => {
                strategy.release(&allocated);
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
        let strategy = self.strategy(res);
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
            strategy.validate(res, &new, Some(&old))?;
            if let Some(admit) = &opts.admit {
                (admit.0)(res, &new, Some(&old))?;
            }
            let allocated = strategy.allocate(&mut new, Some(&old))?;
            // A no-op is not written, unless it finalizes a deletion (the sweeper and namespace
            // deletion drive finished objects out through unchanged updates).
            if opts.dry_run || (unchanged(&old, &new) && !self.ready_to_delete(res, &new)) {
                strategy.release(&allocated);
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
                    strategy.after_update(&old, &new);
                    meta_mut(&mut new).insert("resourceVersion".into(), json!(nrev.to_string()));
                    return Ok((new, warnings));
                }
                Err(StoreError::Conflict { .. }) => {
                    strategy.release(&allocated);
                    continue;
                }
                Err(StoreError::NotFound { .. }) => {
                    strategy.release(&allocated);
                    return Err(not_found(res, name));
                }
                Err(e) => {
                    strategy.release(&allocated);
                    return Err(e.into());
                }
            }
        }
        Err(conflict(res, name, "too many concurrent modifications, please retry"))
    }

    /// Whether an object may leave storage now: deletion requested, no finalizers, and its
    /// strategy agrees (a pod's containers are done, a namespace's spec finalizers are gone).
    fn ready_to_delete(&self, res: &ResourceDef, obj: &Value) -> bool {
        if obj.pointer("/metadata/deletionTimestamp").is_none() {
            return false;
        }
        let finalizers_empty =
            obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(|f| f.is_empty());
        finalizers_empty && self.strategy(res).ready_to_delete(obj)
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
        if res.kind == "Namespace" && sub == Some("finalize") {
            // The finalize subresource changes `spec.finalizers` and nothing else (upstream's
            // finalize strategy); the namespace controller removes `kubernetes` through it.
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
        objects::fold_string_data(res, new);
        self.strategy(res).prepare_for_update(old, new);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::storage::Store;
    use crate::storage::sqlite::{SqliteStore, SyncMode};

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
}
