//! Just enough Kubernetes protobuf to accept what kubectl's typed clients send.
//!
//! kubectl ≥ 1.32 creates ConfigMaps, Secrets and Namespaces (`kubectl create configmap|secret|
//! namespace`) through client-go typed clients that encode request bodies as protobuf. This
//! module decodes the `k8s\0` envelope (`runtime.Unknown`) and those three messages into JSON;
//! anything else is a 415 telling the client to send JSON. Responses are always JSON (the same
//! clients accept it).

use base64::Engine;
use serde_json::{Map, Value, json};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("truncated protobuf message")]
    Truncated,
    #[error("missing the k8s protobuf envelope")]
    NoEnvelope,
    #[error("unsupported wire type {0}")]
    WireType(u64),
    #[error("protobuf bodies are accepted only for ConfigMap, Secret and Namespace (got {0}); send JSON")]
    Unsupported(String),
    #[error("invalid UTF-8 in a string field")]
    Utf8,
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or(ProtoError::Truncated)?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtoError::Truncated)
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ProtoError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let field = match tag & 7 {
            0 => Field::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| ProtoError::Truncated)?;
                if len > self.buf.len() {
                    return Err(ProtoError::Truncated);
                }
                let (b, rest) = self.buf.split_at(len);
                self.buf = rest;
                Field::Bytes(b)
            }
            1 => {
                self.skip(8)?;
                Field::Fixed
            }
            5 => {
                self.skip(4)?;
                Field::Fixed
            }
            w => return Err(ProtoError::WireType(w)),
        };
        Ok(Some((tag >> 3, field)))
    }

    fn skip(&mut self, n: usize) -> Result<(), ProtoError> {
        if n > self.buf.len() {
            return Err(ProtoError::Truncated);
        }
        self.buf = &self.buf[n..];
        Ok(())
    }
}

fn string(b: &[u8]) -> Result<String, ProtoError> {
    std::str::from_utf8(b).map(str::to_string).map_err(|_| ProtoError::Utf8)
}

/// A map entry: key (1) and value (2) as raw bytes.
fn entry(b: &[u8]) -> Result<(String, Vec<u8>), ProtoError> {
    let mut r = Reader { buf: b };
    let (mut k, mut v) = (String::new(), Vec::new());
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(x)) => k = string(x)?,
            (2, Field::Bytes(x)) => v = x.to_vec(),
            _ => {}
        }
    }
    Ok((k, v))
}

fn insert_str_map(m: &mut Map<String, Value>, field: &str, b: &[u8]) -> Result<(), ProtoError> {
    let (k, v) = entry(b)?;
    let target = m.entry(field).or_insert_with(|| json!({}));
    target[k] = json!(string(&v)?);
    Ok(())
}

fn insert_bytes_map(m: &mut Map<String, Value>, field: &str, b: &[u8]) -> Result<(), ProtoError> {
    let (k, v) = entry(b)?;
    let target = m.entry(field).or_insert_with(|| json!({}));
    target[k] = json!(base64::engine::general_purpose::STANDARD.encode(v));
    Ok(())
}

/// Sets a string field; Go's protobuf encoding sends empty strings, JSON clients omit them.
fn put(m: &mut Map<String, Value>, field: &str, b: &[u8]) -> Result<(), ProtoError> {
    if !b.is_empty() {
        m.insert(field.into(), json!(string(b)?));
    }
    Ok(())
}

fn object_meta(b: &[u8]) -> Result<Value, ProtoError> {
    let mut r = Reader { buf: b };
    let mut m = Map::new();
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(x)) => put(&mut m, "name", x)?,
            (2, Field::Bytes(x)) => put(&mut m, "generateName", x)?,
            (3, Field::Bytes(x)) => put(&mut m, "namespace", x)?,
            (6, Field::Bytes(x)) => put(&mut m, "resourceVersion", x)?,
            (11, Field::Bytes(x)) => insert_str_map(&mut m, "labels", x)?,
            (12, Field::Bytes(x)) => insert_str_map(&mut m, "annotations", x)?,
            (14, Field::Bytes(x)) => {
                let list = m.entry("finalizers").or_insert_with(|| json!([]));
                if let Value::Array(a) = list {
                    a.push(json!(string(x)?));
                }
            }
            // Server-owned or rarely sent fields (uid, timestamps, owner references, managed
            // fields) are ignored: the server sets them.
            _ => {}
        }
    }
    Ok(Value::Object(m))
}

fn message(kind: &str, api_version: &str, b: &[u8]) -> Result<Value, ProtoError> {
    let mut r = Reader { buf: b };
    let mut m = Map::new();
    m.insert("apiVersion".into(), json!(api_version));
    m.insert("kind".into(), json!(kind));
    while let Some((n, f)) = r.next()? {
        match (kind, n, f) {
            (_, 1, Field::Bytes(x)) => _ = m.insert("metadata".into(), object_meta(x)?),
            ("ConfigMap", 2, Field::Bytes(x)) => insert_str_map(&mut m, "data", x)?,
            ("ConfigMap", 3, Field::Bytes(x)) => insert_bytes_map(&mut m, "binaryData", x)?,
            ("ConfigMap", 4, Field::Varint(v)) | ("Secret", 5, Field::Varint(v)) => {
                _ = m.insert("immutable".into(), json!(v != 0))
            }
            ("Secret", 2, Field::Bytes(x)) => insert_bytes_map(&mut m, "data", x)?,
            ("Secret", 3, Field::Bytes(x)) => put(&mut m, "type", x)?,
            ("Secret", 4, Field::Bytes(x)) => insert_str_map(&mut m, "stringData", x)?,
            ("Namespace", 2, Field::Bytes(x)) => {
                // NamespaceSpec: repeated finalizers (1)
                let mut sr = Reader { buf: x };
                let mut fins = Vec::new();
                while let Some((1, Field::Bytes(f))) = sr.next()? {
                    fins.push(json!(string(f)?));
                }
                m.insert("spec".into(), json!({"finalizers": fins}));
            }
            _ => {}
        }
    }
    Ok(Value::Object(m))
}

/// Decodes a `k8s\0`-enveloped protobuf body into a JSON object.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let inner = body.strip_prefix(b"k8s\0").ok_or(ProtoError::NoEnvelope)?;
    let mut r = Reader { buf: inner };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                let mut t = Reader { buf: tm };
                while let Some((tn, tf)) = t.next()? {
                    match (tn, tf) {
                        (1, Field::Bytes(x)) => api_version = string(x)?,
                        (2, Field::Bytes(x)) => kind = string(x)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    match kind.as_str() {
        "ConfigMap" | "Secret" | "Namespace" if api_version == "v1" => message(&kind, &api_version, raw),
        _ => Err(ProtoError::Unsupported(format!("{api_version}/{kind}"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn field(n: u64, b: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, b.len() as u8];
        out.extend_from_slice(b);
        out
    }

    #[test]
    fn decodes_a_secret() {
        let meta =
            [field(1, b"s1"), field(3, b"default"), field(11, &[field(1, b"a"), field(2, b"b")].concat())].concat();
        let secret =
            [field(1, &meta), field(2, &[field(1, b"pw"), field(2, b"x")].concat()), field(3, b"Opaque")].concat();
        let unknown = [field(1, &[field(1, b"v1"), field(2, b"Secret")].concat()), field(2, &secret)].concat();
        let body = [b"k8s\0".to_vec(), unknown].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "s1", "namespace": "default", "labels": {"a": "b"}}, "data": {"pw": "eA=="}})
        );
        assert_eq!(decode(b"k8s\0\x0a"), Err(ProtoError::Truncated));
        assert_eq!(decode(b"{}"), Err(ProtoError::NoEnvelope));
    }
}
