//! Decoding and the schema check: JSON/YAML bodies, strict duplicate-key handling, the serde
//! round trip through the k8s-openapi type that finds unknown fields per `fieldValidation`.

use serde_json::Value;

use super::{canonicalize_quantities, is_quantity_map};
use crate::error::ApiError;
/// Largest accepted request body (kube-apiserver's default is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// How unknown fields are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Result<Self, ApiError> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
            ))),
        }
    }
}

/// Parses a JSON or YAML body per its Content-Type. Protobuf is transport and decoded by
/// api-shim before it gets here; any other media type is refused.
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json"
        | ""
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json" => {
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding JSON body: {e}")))
        }
        "application/yaml" | "application/apply-patch+yaml" | "application/x-yaml" | "text/yaml" => decode_yaml(body),
        other => Err(ApiError::UnsupportedMediaType {
            accepted: format!(
                "application/json, application/yaml (got {other:?}; protobuf is not supported by this server)"
            ),
        }),
    }
}

/// [`decode_body`] for objects being written: a JSON key given twice is an error under
/// `Strict` (400 `strict decoding error: duplicate field "a.b"`, as upstream) and a warning under
/// `Warn`; returns the object and the warnings.
pub fn decode_object(content_type: &str, body: &[u8], fv: FieldValidation) -> Result<(Value, Vec<String>), ApiError> {
    let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if !matches!(mime.as_str(), "application/json" | "") {
        return decode_body(content_type, body).map(|v| (v, Vec::new()));
    }
    let (v, dups) = crate::strict::from_slice_with_duplicates(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding JSON body: {e}")))?;
    let msgs: Vec<String> = dups.iter().map(|d| format!("duplicate field \"{d}\"")).collect();
    match fv {
        FieldValidation::Strict if !msgs.is_empty() => {
            Err(ApiError::bad_request(format!("strict decoding error: {}", msgs.join(", "))))
        }
        FieldValidation::Warn => Ok((v, msgs)),
        _ => Ok((v, Vec::new())),
    }
}

fn decode_yaml(body: &[u8]) -> Result<Value, ApiError> {
    // serde_yaml bounds recursion depth and alias expansion ("repetition limit"), so alias bombs
    // and deep nesting fail fast instead of exhausting memory.
    let v: serde_yaml::Value =
        serde_yaml::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML body: {e}")))?;
    let json = serde_json::to_value(v).map_err(|e| ApiError::bad_request(format!("YAML is not valid JSON: {e}")))?;
    Ok(json)
}

/// Numbers where the schema wants a quantity string (YAML `cpu: 1`) become strings.
fn normalize_quantities(v: &mut Value, under_quantity_map: bool) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                let qmap = is_quantity_map(k);
                if (under_quantity_map || k == "sizeLimit") && child.is_number() {
                    *child = Value::String(child.to_string());
                } else {
                    normalize_quantities(child, qmap);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| normalize_quantities(c, false)),
        _ => {}
    }
}

/// Deserializes into the kind's Rust type and serializes back (see [`crate::kinds`]).
struct RoundTrip(Value);

impl crate::kinds::KindVisitor for RoundTrip {
    type Output = Result<Value, String>;
    fn visit<T>(self) -> Self::Output
    where
        T: serde::Serialize + serde::de::DeserializeOwned + schemars::JsonSchema,
    {
        let typed: T = serde_json::from_value(self.0).map_err(|e| e.to_string())?;
        serde_json::to_value(&typed).map_err(|e| e.to_string())
    }
}

fn roundtrip(kind: &str, v: Value) -> Result<Value, String> {
    crate::kinds::visit(kind, RoundTrip(v)).unwrap_or_else(|| Err(format!("no schema for kind {kind:?}")))
}

/// Paths present in `input` but not in `output` (unknown fields), as `a.b[0].c`.
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, iv) in i {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match o.get(k) {
                    Some(ov) => unknown_fields(iv, ov, &p, out),
                    None if iv.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o.iter()).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes `obj` as `kind`: returns the object as the schema has it (unknown fields dropped,
/// quantities canonical) and the paths of the unknown fields (`spec.containers[0].imagePullPolicyy`),
/// or the type error. The agent's static-pod decoding and [`check_schema`] share it.
pub fn prune_unknown(kind: &str, mut obj: Value) -> Result<(Value, Vec<String>), String> {
    normalize_quantities(&mut obj, false);
    let mut out = roundtrip(kind, obj.clone())?;
    let mut unknown = Vec::new();
    unknown_fields(&obj, &out, "", &mut unknown);
    canonicalize_quantities(&mut out, false);
    Ok((out, unknown))
}

/// Checks `obj` against the schema of `kind`; returns the pruned object and warnings.
pub fn check_schema(kind: &str, obj: Value, fv: FieldValidation) -> Result<(Value, Vec<String>), ApiError> {
    let (out, unknown) =
        prune_unknown(kind, obj).map_err(|e| ApiError::bad_request(format!("error decoding {kind}: {e}")))?;
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        match fv {
            FieldValidation::Strict => {
                let msgs: Vec<String> = unknown.iter().map(|u| format!("unknown field \"{u}\"")).collect();
                return Err(ApiError::bad_request(format!("strict decoding error: {}", msgs.join(", "))));
            }
            FieldValidation::Warn => warnings.extend(unknown.iter().map(|u| format!("unknown field \"{u}\""))),
            FieldValidation::Ignore => {}
        }
    }
    Ok((out, warnings))
}
