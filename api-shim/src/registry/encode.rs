//! JSON bodies byte for byte as kube-apiserver's clients see them.
//!
//! Objects are kept as `serde_json::Value`, whose maps are sorted by key. Typed objects go out in
//! k8s-openapi's field order: `apiVersion`, `kind`, then the fields by name (the order every
//! nested k8s-openapi struct already has, so only the top level and list items need help).
//! `Status` objects go out in the Go struct's order (`kind, apiVersion, metadata, status, message,
//! reason, details, code`) with empty fields left out, as `omitempty` does upstream; a watch
//! event is `{"type":…,"object":…}`. Lives in the registry because the watch path encodes each
//! event once here and every watcher shares the bytes.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

/// An object (or list, or Status) as JSON in upstream's field order.
pub fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(&Ordered(v)).unwrap_or_default()
}

/// One watch event line body (without the trailing newline).
pub fn watch_event(kind: &str, object_json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(object_json.len() + kind.len() + 24);
    line.extend_from_slice(b"{\"type\":");
    line.extend_from_slice(&serde_json::to_vec(kind).unwrap_or_default());
    line.extend_from_slice(b",\"object\":");
    line.extend_from_slice(object_json);
    line.push(b'}');
    line
}

fn is_status(m: &Map<String, Value>) -> bool {
    m.get("kind").and_then(Value::as_str) == Some("Status") && m.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

/// Empty in the `omitempty` sense.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Bool(_) => false,
    }
}

/// Writes `first` keys in that order, then the rest in map order; `omit_empty` drops empty values
/// (except `keep`), `child` picks how a value is written.
fn write_map<S: Serializer>(
    s: S,
    m: &Map<String, Value>,
    first: &[&str],
    omit_empty: bool,
    keep: &[&str],
    child: impl for<'v> Fn(&str, &'v Value) -> Child<'v>,
) -> Result<S::Ok, S::Error> {
    let mut out = s.serialize_map(None)?;
    let entry = |out: &mut S::SerializeMap, k: &str, v: &Value| -> Result<(), S::Error> {
        if omit_empty && is_empty(v) && !keep.contains(&k) {
            return Ok(());
        }
        match child(k, v) {
            Child::Plain(v) => out.serialize_entry(k, v),
            Child::Items(items) => out.serialize_entry(k, &Items(items)),
            Child::Details(d) => out.serialize_entry(k, &Details(d)),
            Child::Causes(c) => out.serialize_entry(k, &Causes(c)),
        }
    };
    for k in first {
        if let Some(v) = m.get(*k) {
            entry(&mut out, k, v)?;
        }
    }
    for (k, v) in m.iter().filter(|(k, _)| !first.contains(&k.as_str())) {
        entry(&mut out, k, v)?;
    }
    out.end()
}

enum Child<'a> {
    Plain(&'a Value),
    Items(&'a [Value]),
    Details(&'a Map<String, Value>),
    Causes(&'a [Value]),
}

struct Ordered<'a>(&'a Value);

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Value::Object(m) = self.0 else { return self.0.serialize(s) };
        if is_status(m) {
            const STATUS: [&str; 8] =
                ["kind", "apiVersion", "metadata", "status", "message", "reason", "details", "code"];
            return write_map(s, m, &STATUS, true, &["metadata"], |k, v| match (k, v) {
                ("details", Value::Object(d)) => Child::Details(d),
                _ => Child::Plain(v),
            });
        }
        write_map(s, m, &["apiVersion", "kind"], false, &[], |k, v| match (k, v) {
            ("items", Value::Array(items)) => Child::Items(items),
            _ => Child::Plain(v),
        })
    }
}

struct Items<'a>(&'a [Value]);

impl Serialize for Items<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&Ordered(item))?;
        }
        seq.end()
    }
}

/// `StatusDetails` (and its causes) in the Go struct's order, empty fields left out.
struct Details<'a>(&'a Map<String, Value>);

impl Serialize for Details<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const DETAILS: [&str; 6] = ["name", "group", "kind", "uid", "causes", "retryAfterSeconds"];
        write_map(s, self.0, &DETAILS, true, &[], |k, v| match (k, v) {
            ("causes", Value::Array(c)) => Child::Causes(c),
            _ => Child::Plain(v),
        })
    }
}

struct Causes<'a>(&'a [Value]);

impl Serialize for Causes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for c in self.0 {
            match c {
                Value::Object(m) => seq.serialize_element(&Cause(m))?,
                other => seq.serialize_element(other)?,
            }
        }
        seq.end()
    }
}

/// A `StatusCause`: `reason, message, field`.
struct Cause<'a>(&'a Map<String, Value>);

impl Serialize for Cause<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write_map(s, self.0, &["reason", "message", "field"], true, &[], |_, v| Child::Plain(v))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn text(v: &Value) -> String {
        String::from_utf8(to_json(v)).unwrap()
    }

    #[test]
    fn typed_objects_lead_with_api_version_and_kind() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d"}, "data": {"a": "1"}});
        assert_eq!(
            text(&cm),
            r#"{"apiVersion":"v1","kind":"ConfigMap","data":{"a":"1"},"metadata":{"name":"c","namespace":"d"}}"#
        );
        let list =
            json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "5"}, "items": [cm]});
        assert_eq!(
            text(&list),
            r#"{"apiVersion":"v1","kind":"ConfigMapList","items":[{"apiVersion":"v1","kind":"ConfigMap","data":{"a":"1"},"metadata":{"name":"c","namespace":"d"}}],"metadata":{"resourceVersion":"5"}}"#
        );
    }

    #[test]
    fn statuses_follow_the_go_struct_and_omit_empty_fields() {
        let s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "configmaps \"x\" not found",
            "reason": "NotFound", "details": {"name": "x", "group": "", "kind": "configmaps"}, "code": 404});
        assert_eq!(
            text(&s),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"configmaps \"x\" not found","reason":"NotFound","details":{"name":"x","kind":"configmaps"},"code":404}"#
        );
        let invalid = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "m", "reason": "Invalid",
            "details": {"name": "x", "group": "apps", "kind": "Deployment", "causes": [{"reason": "FieldValueRequired", "message": "Required value", "field": "spec"}, {"reason": "r", "message": "", "field": ""}]}, "code": 422});
        assert_eq!(
            text(&invalid),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"m","reason":"Invalid","details":{"name":"x","group":"apps","kind":"Deployment","causes":[{"reason":"FieldValueRequired","message":"Required value","field":"spec"},{"reason":"r"}]},"code":422}"#
        );
        assert_eq!(
            String::from_utf8(watch_event(
                "ERROR",
                &to_json(&json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "code": 410}))
            ))
            .unwrap(),
            r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"code":410}}"#
        );
    }
}
