//! JSON decoding that notices duplicate object keys.
//!
//! Why: `serde_json` keeps the last of two equal keys silently, but kube-apiserver's strict
//! decoder reports them — `fieldValidation=Strict` answers 400 `strict decoding error: duplicate
//! field "spec.replicas"`, `Warn` (the default) adds the same text as a warning — and a manifest
//! with a key written twice is almost always a mistake its author wants to hear about. The paths
//! use the notation of unknown-field errors (`spec.containers[0].image`).

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses JSON like `serde_json::from_slice` (same recursion limit and errors) and returns the
/// paths of keys that appeared more than once in their object (the last value wins, as before).
pub fn from_slice_with_duplicates(body: &[u8]) -> Result<(Value, Vec<String>), serde_json::Error> {
    let dups = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = Seed { path: String::new(), dups: &dups }.deserialize(&mut de)?;
    de.end()?;
    Ok((v, dups.into_inner()))
}

struct Seed<'a> {
    path: String,
    dups: &'a RefCell<Vec<String>>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) =
            seq.next_element_seed(Seed { path: format!("{}[{}]", self.path, out.len()), dups: self.dups })?
        {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() { key.clone() } else { format!("{}.{key}", self.path) };
            let v = map.next_value_seed(Seed { path: path.clone(), dups: self.dups })?;
            if out.insert(key, v).is_some() {
                self.dups.borrow_mut().push(path);
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_duplicate_keys_with_paths() {
        let body = br#"{"metadata": {"name": "a", "name": "b"}, "spec": {"containers": [{"image": "x", "image": "y"}], "replicas": 1, "replicas": 2}}"#;
        let (v, dups) = from_slice_with_duplicates(body).unwrap();
        assert_eq!(dups, ["metadata.name", "spec.containers[0].image", "spec.replicas"]);
        // The last value wins, like serde_json.
        assert_eq!(v, serde_json::from_slice::<Value>(body).unwrap());
        assert_eq!(v["metadata"]["name"], "b");
    }

    #[test]
    fn same_errors_as_serde_json() {
        let (_, dups) = from_slice_with_duplicates(br#"{"a": {"a": 1}, "b": [1, {"a": 2}]}"#).unwrap();
        assert!(dups.is_empty());
        assert!(from_slice_with_duplicates(b"{} x").is_err());
        assert!(from_slice_with_duplicates("[".repeat(10_000).as_bytes()).is_err());
        assert_eq!(from_slice_with_duplicates(b"1.5").unwrap().0, serde_json::json!(1.5));
    }
}
