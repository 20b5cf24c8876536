//! Requests: the query string, the resource path (group, version, namespace, resource, name,
//! subresource), the size-limited body and the options of writes, lists and deletes.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::objects::{self, FieldValidation, MAX_BODY};
use crate::registry::{DeleteOpts, ListOpts, WriteOpts};
use crate::resources::{self, ResourceDef};
use crate::selectors::{FieldSelector, LabelSelector};

pub(super) fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
        out.insert(dec(k), dec(v));
    }
    out
}

/// A parsed resource path.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) res: &'static ResourceDef,
    pub(super) ns: Option<String>,
    pub(super) name: Option<String>,
    pub(super) sub: Option<String>,
}

pub(super) fn parse_resource_path(segs: &[&str]) -> Result<Option<(Target, bool)>, ApiError> {
    // segs after /api or /apis: [group,] version, ...
    let (group, rest) = match segs.first() {
        Some(&"api") => ("", &segs[1..]),
        Some(&"apis") if segs.len() >= 2 => (segs[1], &segs[2..]),
        _ => return Ok(None),
    };
    let Some((&version, mut rest)) = rest.split_first() else { return Ok(None) };
    let mut legacy_watch = false;
    if rest.first() == Some(&"watch") {
        legacy_watch = true;
        rest = &rest[1..];
    }
    if rest.is_empty() {
        return Ok(None);
    }
    let lookup = |plural: &str| resources::find(group, version, plural).ok_or(ApiError::NoRoute);
    let target = match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            let res = lookup(plural)?;
            if !res.namespaced {
                return Err(ApiError::NoRoute);
            }
            match tail {
                [] => Target { res, ns: Some((*ns).into()), name: None, sub: None },
                [name] => Target { res, ns: Some((*ns).into()), name: Some((*name).into()), sub: None },
                [name, sub] => {
                    Target { res, ns: Some((*ns).into()), name: Some((*name).into()), sub: Some((*sub).into()) }
                }
                _ => return Err(ApiError::NoRoute),
            }
        }
        [plural] => Target { res: lookup(plural)?, ns: None, name: None, sub: None },
        [plural, name] => {
            let res = lookup(plural)?;
            if res.namespaced {
                return Err(ApiError::NoRoute);
            }
            Target { res, ns: None, name: Some((*name).into()), sub: None }
        }
        [plural, name, sub] => {
            let res = lookup(plural)?;
            if res.namespaced {
                return Err(ApiError::NoRoute);
            }
            Target { res, ns: None, name: Some((*name).into()), sub: Some((*sub).into()) }
        }
        _ => return Err(ApiError::NoRoute),
    };
    if let Some(sub) = &target.sub
        && !target.res.has_sub(sub)
    {
        return Err(ApiError::NoRoute);
    }
    Ok(Some((target, legacy_watch)))
}

/// Reads a body of at most [`MAX_BODY`] bytes. A larger one is answered 413 at once, and what
/// the client is still sending is read and dropped in the background for a while: over HTTP/2 a
/// request stream dropped half-read is reset, and curl or client-go then report a stream error
/// instead of the 413 Status already sent (kube-apiserver's clients see the Status).
pub(super) async fn read_body(mut body: Incoming) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + data.len() > MAX_BODY {
            tokio::spawn(drain(body));
            return Err(ApiError::TooLarge { limit: MAX_BODY });
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// Reads and drops the rest of a refused body, for at most [`DRAIN_FOR`].
async fn drain(mut body: Incoming) {
    let _ = tokio::time::timeout(DRAIN_FOR, async { while let Some(Ok(_)) = body.frame().await {} }).await;
}

/// How long the rest of a refused body is read (a client uploading slower than this gets its
/// stream reset after the 413).
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) fn content_type(headers: &HeaderMap) -> String {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_string()
}

pub(super) fn write_opts(q: &HashMap<String, String>, headers: &HeaderMap) -> Result<WriteOpts, ApiError> {
    let fv = FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => return Err(ApiError::bad_request(format!("unsupported dryRun value {other:?}"))),
    };
    let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
    let manager =
        q.get("fieldManager").cloned().unwrap_or_else(|| ua.split('/').next().unwrap_or("unknown").to_string());
    if manager.len() > 128 {
        return Err(ApiError::bad_request("fieldManager must not be longer than 128 characters"));
    }
    Ok(WriteOpts { field_validation: fv, dry_run, field_manager: manager, apply: false, admit: None })
}

pub(super) fn list_opts(res: &ResourceDef, q: &HashMap<String, String>) -> Result<ListOpts, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or_default(), res.kind)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = match q.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => l.parse::<i64>().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?.max(0) as usize,
        None => 0,
    };
    Ok(ListOpts {
        labels,
        fields,
        limit,
        continue_token: q.get("continue").cloned().filter(|c| !c.is_empty()),
        resource_version: q.get("resourceVersion").cloned(),
        resource_version_match: q.get("resourceVersionMatch").cloned().filter(|c| !c.is_empty()),
    })
}

pub(super) fn delete_opts(
    q: &HashMap<String, String>,
    body: &Bytes,
    headers: &HeaderMap,
) -> Result<DeleteOpts, ApiError> {
    let mut o = DeleteOpts::default();
    if !body.is_empty() {
        let v = objects::decode_body(&content_type(headers), body)?;
        let (v, _) =
            objects::check_schema("DeleteOptions", merge_kind(v, "DeleteOptions", "v1"), FieldValidation::Ignore)?;
        o.grace_period = v.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.propagation = v.get("propagationPolicy").and_then(Value::as_str).map(str::to_string);
        o.precondition_uid = v.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string);
        o.precondition_rv = v.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string);
        o.dry_run = v.get("dryRun").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) && o.propagation.is_none() {
            o.propagation = Some("Orphan".into());
        }
    }
    if let Some(g) = q.get("gracePeriodSeconds") {
        o.grace_period = Some(g.parse().map_err(|_| ApiError::bad_request("invalid gracePeriodSeconds"))?);
    }
    if let Some(p) = q.get("propagationPolicy") {
        o.propagation = Some(p.clone());
    }
    if let Some(p) = &o.propagation
        && !["Orphan", "Background", "Foreground"].contains(&p.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy {p:?} is not one of Orphan, Background, Foreground"
        )));
    }
    if q.get("dryRun").is_some_and(|d| d == "All") {
        o.dry_run = true;
    }
    Ok(o)
}

/// DeleteOptions bodies come with either meta.k8s.io/v1 or v1 apiVersion; normalize for the schema.
pub(super) fn merge_kind(mut v: Value, kind: &str, _api_version: &str) -> Value {
    if let Value::Object(m) = &mut v {
        m.insert("kind".into(), json!(kind));
        m.remove("apiVersion");
        m.insert("apiVersion".into(), json!("meta.k8s.io/v1"));
    }
    v
}
