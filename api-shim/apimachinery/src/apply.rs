//! Server-side apply: `PATCH` with `application/apply-patch+yaml`.
//!
//! Each applier's fields are recorded in `metadata.managedFields` (FieldsV1 format: `f:<field>`,
//! `k:{merge key}` for keyed list items, `v:<value>` for set members). Applying a configuration
//! merges it into the live object (strategic-merge rules), removes the fields this manager applied
//! before but no longer does (unless another applier owns them), and fails with 409 Conflict
//! naming the fields when another applier owns a field with a different value, unless `force`
//! is set, which moves ownership. Updates through PUT/PATCH are not tracked as managers here.

use serde_json::{Map, Value, json};

use crate::error::{ApiError, Cause};
use crate::objects;
use crate::patch::{ListStrategy, list_strategy, strategic_merge};
use crate::resources::ResourceDef;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Field(String),
    Key(Map<String, Value>),
    Value(Value),
}

type Path = Vec<Step>;

/// All leaf paths of a configuration, following the merge strategies of the type.
fn leaf_paths(v: &Value, names: &mut Vec<String>, cur: &mut Path, out: &mut Vec<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                cur.push(Step::Field(k.clone()));
                names.push(k.clone());
                match child {
                    Value::Array(items) => {
                        let strat = list_strategy(&names.iter().map(String::as_str).collect::<Vec<_>>());
                        match strat {
                            ListStrategy::MergeKey(key) => {
                                for item in items {
                                    let Some(kv) = item.get(key) else { continue };
                                    let mut km = Map::new();
                                    km.insert(key.to_string(), kv.clone());
                                    cur.push(Step::Key(km));
                                    out.push(cur.clone());
                                    leaf_paths(item, names, cur, out);
                                    cur.pop();
                                }
                            }
                            ListStrategy::MergePrimitives => {
                                for item in items {
                                    cur.push(Step::Value(item.clone()));
                                    out.push(cur.clone());
                                    cur.pop();
                                }
                            }
                            ListStrategy::Replace => out.push(cur.clone()),
                        }
                    }
                    Value::Object(cm) if !cm.is_empty() => leaf_paths(child, names, cur, out),
                    _ => out.push(cur.clone()),
                }
                names.pop();
                cur.pop();
            }
        }
        _ => out.push(cur.clone()),
    }
}

fn step_token(s: &Step) -> String {
    match s {
        Step::Field(f) => format!("f:{f}"),
        Step::Key(k) => format!("k:{}", Value::Object(k.clone())),
        Step::Value(v) => format!("v:{v}"),
    }
}

fn parse_token(t: &str) -> Option<Step> {
    if let Some(f) = t.strip_prefix("f:") {
        return Some(Step::Field(f.to_string()));
    }
    if let Some(k) = t.strip_prefix("k:") {
        return serde_json::from_str::<Map<String, Value>>(k).ok().map(Step::Key);
    }
    if let Some(v) = t.strip_prefix("v:") {
        return serde_json::from_str(v).ok().map(Step::Value);
    }
    None
}

/// Renders paths as a FieldsV1 tree.
fn to_fields_v1(paths: &[Path]) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for (i, s) in p.iter().enumerate() {
            let entry = cur.entry(step_token(s)).or_insert_with(|| json!({}));
            if i + 1 < p.len() && matches!(p[i + 1], Step::Key(_)) {
                // keyed items own their identity (".")
            }
            let Value::Object(next) = entry else { break };
            if matches!(s, Step::Key(_)) && i + 1 == p.len() {
                next.insert(".".into(), json!({}));
            }
            cur = next;
        }
    }
    Value::Object(root)
}

/// Parses a FieldsV1 tree back into leaf paths.
fn from_fields_v1(v: &Value) -> Vec<Path> {
    fn walk(v: &Value, cur: &mut Path, out: &mut Vec<Path>) {
        let Some(m) = v.as_object() else { return };
        let children: Vec<_> = m.iter().filter(|(k, _)| k.as_str() != ".").collect();
        if (children.is_empty() || m.contains_key(".")) && !cur.is_empty() {
            out.push(cur.clone());
        }
        for (k, child) in children {
            if let Some(step) = parse_token(k) {
                cur.push(step);
                walk(child, cur, out);
                cur.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn value_at<'a>(obj: &'a Value, path: &Path) -> Option<&'a Value> {
    let mut cur = obj;
    for s in path {
        cur = match s {
            Step::Field(f) => cur.get(f)?,
            Step::Key(k) => cur.as_array()?.iter().find(|item| k.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))?,
            Step::Value(v) => cur.as_array()?.iter().find(|item| *item == v)?,
        };
    }
    Some(cur)
}

fn remove_path(obj: &mut Value, path: &Path) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = obj;
    for s in parents {
        let next = match s {
            Step::Field(f) => cur.get_mut(f),
            Step::Key(k) => cur
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|item| k.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))),
            Step::Value(_) => None,
        };
        let Some(n) = next else { return };
        cur = n;
    }
    match last {
        Step::Field(f) => {
            if let Value::Object(m) = cur {
                m.remove(f);
            }
        }
        Step::Key(k) => {
            if let Value::Array(a) = cur {
                a.retain(|item| !k.iter().all(|(kk, kv)| item.get(kk) == Some(kv)));
            }
        }
        Step::Value(v) => {
            if let Value::Array(a) = cur {
                a.retain(|item| item != v);
            }
        }
    }
}

fn path_string(p: &Path) -> String {
    let mut s = String::new();
    for step in p {
        match step {
            Step::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Step::Key(k) => s.push_str(&format!("[{}]", Value::Object(k.clone()))),
            Step::Value(v) => s.push_str(&format!("[={v}]")),
        }
    }
    s
}

/// A keyed list item that occurs twice in a configuration, rendered (`.spec.containers[{"name":"a"}]`).
/// Ownership of such items is ambiguous (lookup and removal reach only the first), so, as upstream,
/// an apply configuration must not contain one.
fn duplicate_key(paths: &[Path]) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    paths
        .iter()
        .filter(|p| matches!(p.last(), Some(Step::Key(_))))
        .map(path_string)
        .find(|rendered| !seen.insert(rendered.clone()))
}

/// Fields of `config` an applier owns (identity fields excluded).
fn owned_paths(config: &Value) -> Vec<Path> {
    let mut out = Vec::new();
    leaf_paths(config, &mut Vec::new(), &mut Vec::new(), &mut out);
    out.retain(|p| {
        !matches!(p.as_slice(), [Step::Field(f)] if f == "apiVersion" || f == "kind")
            && !matches!(p.as_slice(), [Step::Field(m), Step::Field(f)] if m == "metadata" && (f == "name" || f == "namespace"))
    });
    out
}

fn managed_entry(manager: &str, api_version: &str, sub: Option<&str>, paths: &[Path]) -> Value {
    let mut e = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(paths),
    });
    if let Some(s) = sub {
        e["subresource"] = json!(s);
    }
    e
}

/// Fields no manager owns (server-maintained identity and bookkeeping).
fn server_owned(p: &Path) -> bool {
    match p.as_slice() {
        [Step::Field(f), ..] if f == "apiVersion" || f == "kind" => true,
        [Step::Field(m), Step::Field(f), ..] if m == "metadata" => matches!(
            f.as_str(),
            "managedFields"
                | "resourceVersion"
                | "generation"
                | "uid"
                | "creationTimestamp"
                | "name"
                | "namespace"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "selfLink"
        ),
        _ => false,
    }
}

/// Records a non-apply write (create, update, patch) by `manager` in `new.metadata.managedFields`:
/// the manager's `Update` entry takes the fields this write set or changed, those fields leave
/// every other entry (updates move ownership and never conflict, as upstream), and entries whose
/// fields are all gone are dropped.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, api_version: &str, sub: Option<&str>) {
    if manager.is_empty() {
        return;
    }
    let mut all = Vec::new();
    leaf_paths(new, &mut Vec::new(), &mut Vec::new(), &mut all);
    all.retain(|p| !server_owned(p));
    let changed: Vec<Path> = match old {
        None => all.clone(),
        Some(o) => all.iter().filter(|p| value_at(o, p) != value_at(new, p)).cloned().collect(),
    };
    let entries: Vec<Value> =
        new.pointer("/metadata/managedFields").and_then(Value::as_array).cloned().unwrap_or_default();
    if changed.is_empty() && entries.is_empty() {
        return;
    }
    let mut out = Vec::new();
    let mut mine: Vec<Path> = Vec::new();
    for e in entries {
        let is_mine = e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Update")
            && e.get("subresource").and_then(Value::as_str) == sub;
        let mut paths = from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null));
        // Fields that no longer exist are owned by nobody.
        paths.retain(|p| value_at(new, p).is_some());
        if is_mine {
            mine = paths;
            continue;
        }
        paths.retain(|p| !changed.contains(p));
        if paths.is_empty() {
            continue;
        }
        let mut e = e.clone();
        e["fieldsV1"] = to_fields_v1(&paths);
        out.push(e);
    }
    for p in changed {
        if !mine.contains(&p) {
            mine.push(p);
        }
    }
    if !mine.is_empty() {
        let mut e = json!({
            "manager": manager,
            "operation": "Update",
            "apiVersion": api_version,
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&mine),
        });
        if let Some(s) = sub {
            e["subresource"] = json!(s);
        }
        out.push(e);
    }
    if let Some(Value::Object(m)) = new.get_mut("metadata") {
        if out.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(out));
        }
    }
}

/// One server-side apply request, checked and ready to run against the live object (or its
/// absence). The storage half (read, create, compare-and-swap update) is api-shim's
/// `server_side_apply`; everything it decides with lives here.
#[derive(Debug, Clone)]
pub struct ApplyPlan {
    /// The configuration with its name filled in: the object to create when there is none.
    typed: Value,
    /// Unknown-field warnings (under `fieldValidation=Warn`).
    pub warnings: Vec<String>,
    /// The fields this configuration owns.
    mine: Vec<Path>,
    /// The configuration without managedFields and resourceVersion: what gets merged.
    stripped: Value,
    manager: String,
    api_version: String,
}

impl ApplyPlan {
    /// Checks `config` (applied by `manager` to `res` named `name`) before anything is read.
    pub fn new(
        res: &ResourceDef,
        name: &str,
        config: &Value,
        fv: objects::FieldValidation,
        manager: &str,
    ) -> Result<Self, ApiError> {
        if !config.is_object() {
            return Err(ApiError::bad_request("an apply configuration must be an object"));
        }
        if config.get("apiVersion").and_then(Value::as_str).is_none()
            || config.get("kind").and_then(Value::as_str).is_none()
        {
            return Err(ApiError::bad_request("apiVersion and kind must be set in an apply configuration"));
        }
        if config.pointer("/metadata/name").and_then(Value::as_str).is_some_and(|n| n != name) {
            return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
        }
        // Validate field names up front (strict by default for apply).
        let mut typed = config.clone();
        if let Value::Object(m) = &mut typed {
            m.entry("metadata").or_insert_with(|| json!({}))["name"] = json!(name);
        }
        let (_, warnings) = objects::check_schema(res.kind, typed.clone(), fv)?;
        let mine = owned_paths(config);
        if let Some(dup) = duplicate_key(&mine) {
            return Err(ApiError::bad_request(format!(
                "{dup}: duplicate entries for this key in an apply configuration"
            )));
        }
        let mut stripped = config.clone();
        if let Some(Value::Object(m)) = stripped.get_mut("metadata") {
            m.remove("managedFields");
            m.remove("resourceVersion");
        }
        Ok(ApplyPlan { typed, warnings, mine, stripped, manager: manager.to_string(), api_version: res.api_version() })
    }

    /// The object to create when none exists yet, owned wholly by this manager.
    pub fn created(&self) -> Value {
        let mut obj = self.typed.clone();
        obj["metadata"]["managedFields"] = json!([managed_entry(&self.manager, &self.api_version, None, &self.mine)]);
        obj
    }

    /// Merges the configuration into `cur` (through subresource `sub`): conflicts with other
    /// managers fail unless `force`, which moves their ownership here.
    pub fn merge(&self, cur: &Value, sub: Option<&str>, force: bool) -> Result<Value, ApiError> {
        let (manager, mine, stripped) = (&self.manager, &self.mine, &self.stripped);
        let entries: Vec<Value> =
            cur.pointer("/metadata/managedFields").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut previous: Vec<Path> = Vec::new();
        let mut others: Vec<(usize, Vec<Path>)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let paths = from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null));
            if e.get("manager").and_then(Value::as_str) == Some(manager.as_str())
                && e.get("operation").and_then(Value::as_str) == Some("Apply")
            {
                previous = paths;
            } else {
                others.push((i, paths));
            }
        }
        let mut conflicts = Vec::new();
        let mut lost: Vec<(usize, Path)> = Vec::new();
        for p in mine {
            // A keyed list item's identity never conflicts; only its fields do.
            if matches!(p.last(), Some(Step::Key(_))) {
                continue;
            }
            for (i, theirs) in &others {
                if theirs.iter().any(|t| t == p) && value_at(cur, p) != value_at(stripped, p) {
                    let who = entries[*i].get("manager").and_then(Value::as_str).unwrap_or("unknown");
                    conflicts.push(Cause {
                        reason: "FieldManagerConflict",
                        field: path_string(p),
                        message: format!("conflict with \"{who}\""),
                    });
                    lost.push((*i, p.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            let n = conflicts.len();
            let list: Vec<String> = conflicts.iter().map(|c| format!("{}: {}", c.message, c.field)).collect();
            return Err(ApiError::ApplyConflict {
                message: format!(
                    "Apply failed with {n} conflict{}: {}",
                    if n == 1 { "" } else { "s" },
                    list.join(", ")
                ),
                causes: conflicts,
            });
        }
        let mut merged = strategic_merge(cur, stripped).map_err(|e| ApiError::bad_request(e.to_string()))?;
        // Fields this manager stopped applying go away unless someone else owns them.
        for p in &previous {
            if !mine.contains(p) && !others.iter().any(|(_, t)| t.contains(p)) {
                remove_path(&mut merged, p);
            }
        }
        let mut new_entries = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let is_mine = e.get("manager").and_then(Value::as_str) == Some(manager.as_str())
                && e.get("operation").and_then(Value::as_str) == Some("Apply");
            if is_mine {
                continue;
            }
            let mut e = e.clone();
            if force && lost.iter().any(|(j, _)| *j == i) {
                let mut paths = from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null));
                paths.retain(|p| !lost.iter().any(|(j, lp)| *j == i && lp == p));
                if paths.is_empty() {
                    continue;
                }
                e["fieldsV1"] = to_fields_v1(&paths);
            }
            new_entries.push(e);
        }
        new_entries.push(managed_entry(manager, &self.api_version, sub, mine));
        merged["metadata"]["managedFields"] = Value::Array(new_entries);
        Ok(merged)
    }
}

/// The field-set machinery above, reachable from the fuzz targets in `api-shim/fuzz`. Not an API:
/// the fuzzers check that FieldsV1 rendering and parsing, lookup and removal agree.
#[doc(hidden)]
pub mod fuzzing {
    use super::{Path, Value};

    /// One owned field path (opaque; compare, render, look up, remove).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FieldPath(Path);

    impl FieldPath {
        pub fn render(&self) -> String {
            super::path_string(&self.0)
        }
        pub fn is_root(&self) -> bool {
            self.0.is_empty()
        }
        pub fn value_in<'a>(&self, obj: &'a Value) -> Option<&'a Value> {
            super::value_at(obj, &self.0)
        }
        pub fn remove_from(&self, obj: &mut Value) {
            super::remove_path(obj, &self.0)
        }
    }

    /// Why the server rejects `config` as an apply configuration before looking at ownership.
    pub fn duplicate_key(config: &Value) -> Option<String> {
        super::duplicate_key(&super::owned_paths(config))
    }

    /// The fields an applier of `config` owns.
    pub fn owned_paths(config: &Value) -> Vec<FieldPath> {
        super::owned_paths(config).into_iter().map(FieldPath).collect()
    }

    pub fn to_fields_v1(paths: &[FieldPath]) -> Value {
        super::to_fields_v1(&paths.iter().map(|p| p.0.clone()).collect::<Vec<_>>())
    }

    pub fn from_fields_v1(fields: &Value) -> Vec<FieldPath> {
        super::from_fields_v1(fields).into_iter().map(FieldPath).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn updates_move_ownership_of_changed_fields() {
        let mut created = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "uid": "u"}, "data": {"a": "1", "b": "2"}});
        record_update(None, &mut created, "creator", "v1", None);
        let mf = &created["metadata"]["managedFields"];
        assert_eq!(mf[0]["manager"], "creator");
        assert_eq!(
            mf[0]["fieldsV1"],
            json!({"f:data": {"f:a": {}, "f:b": {}}, "f:metadata": {}})
                .get("f:data")
                .map(|d| json!({"f:data": d}))
                .unwrap()
        );
        let mut updated = created.clone();
        updated["data"]["a"] = json!("9");
        record_update(Some(&created), &mut updated, "editor", "v1", None);
        let mf = updated["metadata"]["managedFields"].as_array().unwrap().clone();
        assert_eq!(mf.len(), 2);
        assert_eq!(mf[0]["fieldsV1"], json!({"f:data": {"f:b": {}}}));
        assert_eq!((mf[1]["manager"].as_str(), &mf[1]["fieldsV1"]), (Some("editor"), &json!({"f:data": {"f:a": {}}})));
        // Removing the last field of a manager drops its entry.
        let mut removed = updated.clone();
        removed["data"].as_object_mut().unwrap().remove("b");
        record_update(Some(&updated), &mut removed, "editor", "v1", None);
        let managers: Vec<&str> = removed["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["manager"].as_str())
            .collect();
        assert_eq!(managers, ["editor"]);
    }

    #[test]
    fn duplicate_keyed_items_are_found() {
        // Found by the apply_patch fuzz target: with two containers named "app", removing or
        // looking up `containers[{"name":"app"}].image` reaches only the first of them.
        let dup = json!({"spec": {"containers": [{"name": "app", "image": "a"}, {"name": "app", "image": "b"}]}});
        assert_eq!(duplicate_key(&owned_paths(&dup)).as_deref(), Some(r#".spec.containers[{"name":"app"}]"#));
        let env = json!({"spec": {"containers": [{"name": "a", "env": [{"name": "X"}, {"name": "X", "value": "1"}]}]}});
        assert_eq!(
            duplicate_key(&owned_paths(&env)).as_deref(),
            Some(r#".spec.containers[{"name":"a"}].env[{"name":"X"}]"#)
        );
        let unique = json!({"spec": {"containers": [{"name": "a", "env": [{"name": "X"}]}, {"name": "b", "env": [{"name": "X"}]}]}});
        assert_eq!(duplicate_key(&owned_paths(&unique)), None);
        let primitives = json!({"metadata": {"finalizers": ["f", "f"]}});
        assert_eq!(duplicate_key(&owned_paths(&primitives)), None);
    }

    #[test]
    fn fields_v1_round_trip() {
        let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "b"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let paths = owned_paths(&cfg);
        let fv1 = to_fields_v1(&paths);
        assert!(fv1.pointer("/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"c\"}/f:image").is_some());
        let mut back = from_fields_v1(&fv1);
        let mut want = paths.clone();
        back.sort_by_key(path_string);
        want.sort_by_key(path_string);
        assert_eq!(back, want);
        let p = back.iter().find(|p| path_string(p).ends_with(".image")).unwrap();
        assert_eq!(value_at(&cfg, p), Some(&json!("i")));
        let mut obj = cfg.clone();
        remove_path(&mut obj, p);
        assert!(obj.pointer("/spec/template/spec/containers/0/image").is_none());
    }
}
