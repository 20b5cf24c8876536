//! Patch application: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and Kubernetes
//! strategic merge patch for the built-in types this server serves.
//!
//! Strategic merge needs per-field metadata (which lists merge by which key). The upstream types
//! carry it as struct tags; here it is the table in [`list_strategy`], keyed by the field's path
//! suffix, which covers every merge list of the served kinds.

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("invalid JSON patch: {0}")]
    InvalidJsonPatch(String),
    #[error("the JSON patch test operation failed at {0}")]
    TestFailed(String),
    #[error("invalid strategic merge patch: {0}")]
    InvalidStrategic(String),
}

const MAX_PATCH_OPS: usize = 10_000;

/// Bytes (serialized) that the `copy` operations of one JSON patch may duplicate in total. Without
/// it, a 1 KiB patch of `{"op":"copy","from":"","path":"/l/-"}` doubles the document per operation
/// (found by the apply_patch fuzz target).
const MAX_COPIED_BYTES: usize = crate::objects::MAX_BODY;

/// Nesting a JSON patch may create (a document already deeper keeps its depth). Deeper values
/// could not be decoded again (serde_json stops at 128) and recursive drops could overflow a stack.
const MAX_JSON_PATCH_DEPTH: usize = 100;

/// Serialized size and nesting depth of `v`, or None once the size exceeds `budget`.
/// Iterative, and stops early, so a huge or deep value costs at most `budget` steps.
fn measure(v: &Value, budget: usize) -> Option<(usize, usize)> {
    let (mut size, mut depth) = (0usize, 0usize);
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        size += match v {
            Value::Null | Value::Bool(_) | Value::Number(_) => v.to_string().len(),
            Value::String(s) => s.len() + 2,
            Value::Array(a) => {
                stack.extend(a.iter().map(|c| (c, d + 1)));
                a.len() + 1
            }
            Value::Object(m) => {
                stack.extend(m.values().map(|c| (c, d + 1)));
                m.keys().map(|k| k.len() + 4).sum::<usize>() + 2
            }
        };
        depth = depth.max(if v.is_array() || v.is_object() { d + 1 } else { d });
        if size > budget {
            return None;
        }
    }
    Some((size, depth))
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<Vec<String>, PatchError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path.strip_prefix('/').ok_or_else(|| PatchError::InvalidJsonPatch(format!("bad path {path:?}")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parse_index(tok: &str, len: usize, allow_end: bool) -> Result<usize, PatchError> {
    if allow_end && tok == "-" {
        return Ok(len);
    }
    if tok.is_empty() || (tok.len() > 1 && tok.starts_with('0')) || !tok.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PatchError::InvalidJsonPatch(format!("bad array index {tok:?}")));
    }
    let i: usize = tok.parse().map_err(|_| PatchError::InvalidJsonPatch(format!("bad array index {tok:?}")))?;
    let max = if allow_end { len } else { len.saturating_sub(1) };
    if i > max || (!allow_end && len == 0) {
        return Err(PatchError::InvalidJsonPatch(format!("array index {i} out of range")));
    }
    Ok(i)
}

fn parent_mut<'a>(doc: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => {
                m.get_mut(t).ok_or_else(|| PatchError::InvalidJsonPatch(format!("missing path {t:?}")))?
            }
            Value::Array(a) => {
                let i = parse_index(t, a.len(), false)?;
                &mut a[i]
            }
            _ => return Err(PatchError::InvalidJsonPatch(format!("cannot traverse into {t:?}"))),
        };
    }
    Ok(cur)
}

fn get_ref<'a>(doc: &'a Value, path: &str) -> Result<&'a Value, PatchError> {
    let toks = split_pointer(path)?;
    let mut cur = doc;
    for t in &toks {
        cur = match cur {
            Value::Object(m) => {
                m.get(t).ok_or_else(|| PatchError::InvalidJsonPatch(format!("missing path {path:?}")))?
            }
            Value::Array(a) => &a[parse_index(t, a.len(), false)?],
            _ => return Err(PatchError::InvalidJsonPatch(format!("missing path {path:?}"))),
        };
    }
    Ok(cur)
}

fn add_at(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    let toks = split_pointer(path)?;
    let Some((last, parents)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = parse_index(last, a.len(), true)?;
            a.insert(i, value);
        }
        _ => return Err(PatchError::InvalidJsonPatch(format!("cannot add at {path:?}"))),
    }
    Ok(())
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let toks = split_pointer(path)?;
    let (last, parents) =
        toks.split_last().ok_or_else(|| PatchError::InvalidJsonPatch("cannot remove the document root".into()))?;
    match parent_mut(doc, parents)? {
        Value::Object(m) => {
            m.remove(last).ok_or_else(|| PatchError::InvalidJsonPatch(format!("missing path {path:?}")))
        }
        Value::Array(a) => {
            let i = parse_index(last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err(PatchError::InvalidJsonPatch(format!("cannot remove at {path:?}"))),
    }
}

/// Applies an RFC 6902 patch document.
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = patch.as_array().ok_or_else(|| PatchError::InvalidJsonPatch("a JSON patch must be an array".into()))?;
    if ops.len() > MAX_PATCH_OPS {
        return Err(PatchError::InvalidJsonPatch(format!("too many operations ({} > {MAX_PATCH_OPS})", ops.len())));
    }
    let mut out = doc.clone();
    // An upper bound of the document's depth, kept without re-walking the document per operation.
    let start = measure(doc, usize::MAX).map_or(0, |(_, d)| d);
    let max_depth = MAX_JSON_PATCH_DEPTH.max(start);
    let mut depth_bound = start;
    let mut copy_budget = MAX_COPIED_BYTES;
    let too_deep =
        || PatchError::InvalidJsonPatch(format!("the patch would nest the object deeper than {max_depth} levels"));
    let levels = |p: &str| if p.is_empty() { 0 } else { p.split('/').count() - 1 };
    for op in ops {
        let name =
            op.get("op").and_then(Value::as_str).ok_or_else(|| PatchError::InvalidJsonPatch("missing op".into()))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError::InvalidJsonPatch("missing path".into()))?;
        let value = || op.get("value").cloned().ok_or_else(|| PatchError::InvalidJsonPatch("missing value".into()));
        let from = || {
            op.get("from").and_then(Value::as_str).ok_or_else(|| PatchError::InvalidJsonPatch("missing from".into()))
        };
        match name {
            "add" | "replace" => {
                let v = value()?;
                let d = measure(&v, usize::MAX).map_or(0, |(_, d)| d);
                depth_bound = depth_bound.max(levels(path) + d);
                if depth_bound > max_depth {
                    return Err(too_deep());
                }
                if name == "replace" {
                    remove_at(&mut out, path)?;
                }
                add_at(&mut out, path, v)?;
            }
            "remove" => {
                remove_at(&mut out, path)?;
            }
            "move" => {
                let f = from()?;
                if path.starts_with(&format!("{f}/")) {
                    return Err(PatchError::InvalidJsonPatch("cannot move a value into itself".into()));
                }
                // The moved value was at most `depth_bound - levels(f)` deep where it was.
                depth_bound = depth_bound.max((levels(path) + depth_bound).saturating_sub(levels(f)));
                if depth_bound > max_depth {
                    return Err(too_deep());
                }
                let v = remove_at(&mut out, f)?;
                add_at(&mut out, path, v)?;
            }
            "copy" => {
                let f = from()?;
                let src = get_ref(&out, f)?;
                let (size, d) = measure(src, copy_budget).ok_or_else(|| {
                    PatchError::InvalidJsonPatch(format!(
                        "the copy operations of the patch would duplicate more than {MAX_COPIED_BYTES} bytes"
                    ))
                })?;
                copy_budget -= size;
                depth_bound = depth_bound.max(levels(path) + d);
                if depth_bound > max_depth {
                    return Err(too_deep());
                }
                let v = src.clone();
                add_at(&mut out, path, v)?;
            }
            "test" => {
                // Compared in place: cloning the tested value 10,000 times would be a CPU bomb.
                if *get_ref(&out, path)? != value()? {
                    return Err(PatchError::TestFailed(path.to_string()));
                }
            }
            other => return Err(PatchError::InvalidJsonPatch(format!("unknown op {other:?}"))),
        }
    }
    Ok(out)
}

/// Applies an RFC 7386 merge patch.
pub fn merge_patch(doc: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = match doc {
                Value::Object(m) => m.clone(),
                _ => Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// How a list field merges in a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Replace the whole list (the default).
    Replace,
    /// Merge elements (maps) by this key.
    MergeKey(&'static str),
    /// Union of primitive values.
    MergePrimitives,
}

/// Strategy for the list at `path` (field names from the object root, list indices omitted).
pub fn list_strategy(path: &[&str]) -> ListStrategy {
    let n = path.len();
    let last = path.last().copied().unwrap_or_default();
    let parent = if n >= 2 { path[n - 2] } else { "" };
    match last {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "env"
        | "resourceClaims"
        | "schedulingGates" => ListStrategy::MergeKey("name"),
        "ports" if matches!(parent, "containers" | "initContainers" | "ephemeralContainers") => {
            ListStrategy::MergeKey("containerPort")
        }
        "ports" if path == ["spec", "ports"] => ListStrategy::MergeKey("port"),
        "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeKey("devicePath"),
        "hostAliases" | "podIPs" | "hostIPs" => ListStrategy::MergeKey("ip"),
        "conditions" => ListStrategy::MergeKey("type"),
        "addresses" if parent == "status" => ListStrategy::MergeKey("type"),
        "taints" => ListStrategy::MergeKey("key"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "ownerReferences" => ListStrategy::MergeKey("uid"),
        "finalizers" if parent == "metadata" => ListStrategy::MergePrimitives,
        _ => ListStrategy::Replace,
    }
}

/// Applies a strategic merge patch to `doc` (both JSON objects).
pub fn strategic_merge(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::InvalidStrategic("a strategic merge patch must be a JSON object".into()));
    }
    let mut path = Vec::new();
    Ok(merge_map(doc, patch, &mut path, 0)?.unwrap_or(Value::Object(Map::new())))
}

const MAX_DEPTH: usize = 100;

/// Returns None when the map is deleted by `$patch: delete`.
fn merge_map(doc: &Value, patch: &Value, path: &mut Vec<String>, depth: usize) -> Result<Option<Value>, PatchError> {
    if depth > MAX_DEPTH {
        return Err(PatchError::InvalidStrategic("patch nested too deeply".into()));
    }
    let Value::Object(p) = patch else {
        return Ok(Some(patch.clone()));
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            return Ok(Some(strip_directives(&Value::Object(m))));
        }
        Some("merge") | None => {}
        Some(other) => return Err(PatchError::InvalidStrategic(format!("unknown $patch directive {other:?}"))),
    }
    let mut out = match doc {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            let list = v.as_array().ok_or_else(|| PatchError::InvalidStrategic(format!("{k} must be a list")))?;
            orders.push((field.to_string(), list.clone()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let del = v.as_array().ok_or_else(|| PatchError::InvalidStrategic(format!("{k} must be a list")))?;
            if let Some(Value::Array(cur)) = out.get_mut(field) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(PatchError::InvalidStrategic(format!("unknown directive {k:?}")));
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        path.push(k.clone());
        let merged = match v {
            Value::Object(_) => merge_map(out.get(k).unwrap_or(&Value::Null), v, path, depth + 1)?,
            Value::Array(items) => Some(merge_list(out.get(k), items, path, depth + 1)?),
            other => Some(other.clone()),
        };
        path.pop();
        match merged {
            Some(m) => out.insert(k.clone(), m),
            None => out.remove(k),
        };
    }
    for (field, order) in orders {
        path.push(field.clone());
        let strategy = list_strategy(&path.iter().map(String::as_str).collect::<Vec<_>>());
        path.pop();
        if let Some(Value::Array(items)) = out.get_mut(&field) {
            reorder(items, &order, strategy);
        }
    }
    if let Some(retain) = p.get("$retainKeys") {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| PatchError::InvalidStrategic("$retainKeys must be a list".into()))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(Some(Value::Object(out)))
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn merge_list(
    orig: Option<&Value>,
    items: &[Value],
    path: &mut Vec<String>,
    depth: usize,
) -> Result<Value, PatchError> {
    let strategy = list_strategy(&path.iter().map(String::as_str).collect::<Vec<_>>());
    let orig: Vec<Value> = orig.and_then(Value::as_array).cloned().unwrap_or_default();
    // A `{"$patch": "replace"}` element replaces the list with the other elements.
    if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        return Ok(Value::Array(items.iter().filter(|i| i.get("$patch").is_none()).map(strip_directives).collect()));
    }
    match strategy {
        ListStrategy::Replace => Ok(strip_directives(&Value::Array(items.to_vec()))),
        ListStrategy::MergePrimitives => {
            let mut out = orig;
            for i in items {
                if !out.contains(i) {
                    out.push(i.clone());
                }
            }
            Ok(Value::Array(out))
        }
        ListStrategy::MergeKey(key) => {
            let mut out = orig;
            for item in items {
                let Some(kv) = item.get(key) else {
                    return Err(PatchError::InvalidStrategic(format!(
                        "map in list {} does not contain the merge key {key:?}",
                        path.join(".")
                    )));
                };
                let pos = out.iter().position(|o| o.get(key) == Some(kv));
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = pos {
                        out.remove(i);
                    }
                    continue;
                }
                match pos {
                    Some(i) => {
                        if let Some(m) = merge_map(&out[i], item, path, depth + 1)? {
                            out[i] = m;
                        } else {
                            out.remove(i);
                        }
                    }
                    None => {
                        if let Some(m) = merge_map(&Value::Null, item, path, depth + 1)? {
                            out.push(m);
                        }
                    }
                }
            }
            Ok(Value::Array(out))
        }
    }
}

/// Orders `items` as listed in `$setElementOrder`; elements not listed keep their relative order after.
fn reorder(items: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let key_of = |v: &Value| -> Value {
        match strategy {
            ListStrategy::MergeKey(k) => v.get(k).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(&key_of).collect();
    let mut sorted: Vec<Value> = Vec::with_capacity(items.len());
    for w in &wanted {
        if let Some(pos) = items.iter().position(|i| &key_of(i) == w) {
            sorted.push(items.remove(pos));
        }
    }
    sorted.append(items);
    *items = sorted;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_ops() {
        let doc = json!({"a": [1, 2], "b": {"c": 1}});
        let p = json!([
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "replace", "path": "/b/c", "value": 2},
            {"op": "copy", "from": "/b", "path": "/d"},
            {"op": "move", "from": "/a/0", "path": "/e"},
            {"op": "test", "path": "/e", "value": 1},
            {"op": "remove", "path": "/b"}
        ]);
        assert_eq!(json_patch(&doc, &p).unwrap(), json!({"a": [2, 3], "d": {"c": 2}, "e": 1}));
        assert!(json_patch(&doc, &json!([{"op": "test", "path": "/a/0", "value": 9}])).is_err());
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/zz"}])).is_err());
        assert!(json_patch(&doc, &json!([{"op": "add", "path": "/a/01", "value": 1}])).is_err());
        assert!(json_patch(&doc, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn json_patch_copies_and_nesting_are_bounded() {
        // Found by the apply_patch fuzz target: each copy of the root into a list doubled the
        // document, so 40 operations (~1.6 KiB of patch) asked for terabytes.
        let doc = json!({"l": [], "s": "x".repeat(1000)});
        let bomb = Value::Array(vec![json!({"op": "copy", "from": "", "path": "/l/-"}); 40]);
        let err = json_patch(&doc, &bomb).unwrap_err();
        assert!(err.to_string().contains("duplicate more than"), "{err}");
        // A few copies of a small value stay fine.
        let ok = Value::Array(vec![json!({"op": "copy", "from": "/s", "path": "/l/-"}); 3]);
        assert_eq!(json_patch(&doc, &ok).unwrap()["l"].as_array().map(Vec::len), Some(3));
        // Moving the document into ever deeper places is refused before it nests past the limit.
        let mut ops = vec![json!({"op": "add", "path": "/a", "value": {}})];
        ops.extend((0..200).map(|_| json!({"op": "move", "from": "/a", "path": "/b"})).flat_map(|m| {
            [m, json!({"op": "add", "path": "/a", "value": {}}), json!({"op": "move", "from": "/b", "path": "/a/x"})]
        }));
        let err = json_patch(&json!({}), &Value::Array(ops)).unwrap_err();
        assert!(err.to_string().contains("deeper than 100"), "{err}");
        // A deep copy chain is refused the same way, and the test op still works on deep values.
        let deep = (0..99).fold(json!(1), |v, _| json!([v]));
        assert!(json_patch(&json!({"d": deep.clone()}), &json!([{"op": "test", "path": "/d", "value": deep}])).is_ok());
        let chain = Value::Array(vec![json!({"op": "copy", "from": "", "path": "/d/0/0"}); 60]);
        assert!(json_patch(&json!({"d": [[1]]}), &chain).is_err());
    }

    #[test]
    fn merge_patch_nulls_delete() {
        let doc = json!({"a": 1, "b": {"c": 1, "d": 2}});
        assert_eq!(merge_patch(&doc, &json!({"a": null, "b": {"c": 3}})), json!({"b": {"c": 3, "d": 2}}));
    }

    #[test]
    fn strategic_merges_containers_and_env_by_name() {
        let doc = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "v1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "side", "image": "s1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
            "containers": [{"name": "app", "image": "v2",
                "$setElementOrder/env": [{"name": "A"}, {"name": "B"}],
                "env": [{"name": "A", "value": "9"}, {"name": "B", "$patch": "delete"}]}]
        }}}});
        let out = strategic_merge(&doc, &patch).unwrap();
        assert_eq!(
            out,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "side", "image": "s1"},
                {"name": "app", "image": "v2", "env": [{"name": "A", "value": "9"}]}
            ]}}}})
        );
    }

    #[test]
    fn strategic_directives() {
        let doc = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1"}}, "spec": {"ports": [{"port": 80, "name": "h"}], "selector": {"a": "b"}}});
        let patch = json!({
            "metadata": {"finalizers": ["b"], "labels": {"$patch": "replace", "y": "2"}},
            "spec": {"ports": [{"port": 443, "name": "s"}], "$retainKeys": ["ports"]}
        });
        let out = strategic_merge(&doc, &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
        assert_eq!(out["spec"], json!({"ports": [{"port": 80, "name": "h"}, {"port": 443, "name": "s"}]}));
        let del = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        assert_eq!(strategic_merge(&doc, &del).unwrap()["metadata"]["finalizers"], json!([]));
        assert!(strategic_merge(&doc, &json!({"spec": {"ports": [{"name": "nokey"}]}})).is_err());
        assert!(strategic_merge(&doc, &json!([1])).is_err());
    }
}
