//! Decoding, schema checking, defaulting and validation of objects.
//!
//! Bodies are JSON or YAML. The schema check deserializes into the k8s-openapi type for the kind
//! and serializes back: a type error is a 400, and any input field missing from the round trip is
//! an unknown field (rejected, warned about or dropped per `fieldValidation`). The round-tripped
//! value is what gets stored, so unknown fields never reach storage. Validation mirrors the
//! upstream rules clients rely on, with field paths in the causes.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::error::{ApiError, Cause};
use crate::resources::ResourceDef;

mod decode;
mod defaults;

pub use decode::*;
pub use defaults::*;

pub(crate) fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// Pod QoS class from container resources (see [`crate::qos`]).
pub fn pod_qos(pod: &Value) -> &'static str {
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    crate::qos::qos_class(crate::qos::containers_of_json(spec)).as_str()
}

// ---------------------------------------------------------------- validation

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if prefix.is_some_and(|p| !is_dns_subdomain(p)) {
        return false;
    }
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// Whether `s` parses as a Kubernetes quantity (upstream's `ParseQuantity`, see
/// [`crate::quantity`]; note `-`, `+`, `.` and `m` parse, as zero, like upstream).
pub fn is_quantity(s: &str) -> bool {
    crate::quantity::parse(s).is_ok()
}

/// Keys whose value is a map of resource name → quantity, wherever they appear (containers,
/// pod overhead, node capacity, PVC requests, quota hard/used).
pub(crate) fn is_quantity_map(key: &str) -> bool {
    matches!(key, "limits" | "requests" | "capacity" | "allocatable" | "hard" | "used" | "overhead")
}

/// Replaces every quantity the schema holds by its canonical form (`1.5` → `1500m`), as
/// upstream's decode and re-encode does. Unparseable ones stay for validation to name.
pub(crate) fn canonicalize_quantities(v: &mut Value, under_quantity_map: bool) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                match child {
                    Value::String(s) if under_quantity_map || k == "sizeLimit" => {
                        if let Ok(c) = crate::quantity::canonicalize(s) {
                            *s = c;
                        }
                    }
                    _ => canonicalize_quantities(child, is_quantity_map(k)),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| canonicalize_quantities(c, false)),
        _ => {}
    }
}

/// Every quantity of the object must parse and be at least zero (upstream's
/// `ValidateResourceQuantityValue` / `ValidateNonnegativeQuantity`), wherever it sits.
fn validate_quantities(v: &Value, path: &str, under_quantity_map: bool, causes: &mut Vec<Cause>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let field = if under_quantity_map {
                    format!("{path}[{k}]")
                } else if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match child {
                    Value::String(s) if under_quantity_map || k == "sizeLimit" => {
                        match crate::quantity::parse(s.trim()) {
                            Err(_) => causes.push(Cause::invalid(
                                field,
                                s,
                                "must match the regex ^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$",
                            )),
                            Ok(q) if q.is_negative() => {
                                causes.push(Cause::invalid(field, q, crate::quantity::NEGATIVE_MESSAGE))
                            }
                            Ok(_) => {}
                        }
                    }
                    _ => validate_quantities(child, &field, is_quantity_map(k), causes),
                }
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                validate_quantities(c, &format!("{path}[{i}]"), false, causes);
            }
        }
        _ => {}
    }
}

fn validate_meta(res: &ResourceDef, obj: &Value, causes: &mut Vec<Cause>) {
    let name = str_at(obj, "/metadata/name").unwrap_or_default();
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else if res.group == RBAC_GROUP {
        if let Some(msg) = path_segment_name_error(name) {
            causes.push(Cause::invalid("metadata.name", name, msg));
        }
    } else if res.label_name && !is_dns_label(name) {
        causes.push(Cause::invalid(
            "metadata.name",
            name,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        ));
    } else if !res.label_name && !is_dns_subdomain(name) {
        causes.push(Cause::invalid(
            "metadata.name",
            name,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ));
    }
    validate_labels(obj.pointer("/metadata/labels"), "metadata.labels", causes);
    if let Some(Value::Object(ann)) = obj.pointer("/metadata/annotations") {
        let mut total = 0;
        for (k, v) in ann {
            total += k.len() + v.as_str().map_or(0, str::len);
            if !is_qualified_name(k) {
                causes.push(Cause::invalid("metadata.annotations", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
        }
        if total > 256 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: "Too long: must have at most 262144 bytes".into(),
            });
        }
    }
}

fn validate_labels(labels: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    if let Some(Value::Object(l)) = labels {
        for (k, v) in l {
            if !is_qualified_name(k) {
                causes.push(Cause::invalid(field, k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
            let v = v.as_str().unwrap_or_default();
            if !is_label_value(v) {
                causes.push(Cause::invalid(
                    field.to_string(),
                    v,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
        }
    }
}

/// Validates a pod spec at `path` (e.g. `spec` or `spec.template.spec`).
fn validate_pod_spec(spec: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let Some(spec) = spec else {
        causes.push(Cause::required(path.to_string()));
        return;
    };
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => causes.push(Cause::required(format!("{path}.containers"))),
        Some(cs) if cs.is_empty() => causes.push(Cause::required(format!("{path}.containers"))),
        _ => {}
    }
    let mut names = BTreeSet::new();
    for key in ["initContainers", "containers"] {
        for (i, c) in spec.get(key).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let cp = format!("{path}.{key}[{i}]");
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                causes.push(Cause::required(format!("{cp}.name")));
            } else if !is_dns_label(name) {
                causes.push(Cause::invalid(
                    format!("{cp}.name"),
                    name,
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
                ));
            } else if !names.insert(name.to_string()) {
                causes.push(Cause::duplicate(format!("{cp}.name"), name));
            }
            if c.get("image").and_then(Value::as_str).is_none_or(|s| s.trim().is_empty()) {
                causes.push(Cause::required(format!("{cp}.image")));
            }
            for (j, p) in c.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    causes.push(Cause::invalid(
                        format!("{cp}.ports[{j}].containerPort"),
                        port,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                if let Some(proto) = p.get("protocol").and_then(Value::as_str)
                    && !["TCP", "UDP", "SCTP"].contains(&proto)
                {
                    causes.push(Cause::unsupported(
                        format!("{cp}.ports[{j}].protocol"),
                        proto,
                        &["SCTP", "TCP", "UDP"],
                    ));
                }
            }
        }
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str)
        && !["Always", "OnFailure", "Never"].contains(&rp)
    {
        causes.push(Cause::unsupported(format!("{path}.restartPolicy"), rp, &["Always", "Never", "OnFailure"]));
    }
    let mut vols = BTreeSet::new();
    for (i, v) in spec.get("volumes").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        if !is_dns_label(name) {
            causes.push(Cause::invalid(
                format!("{path}.volumes[{i}].name"),
                name,
                "a lowercase RFC 1123 label is required",
            ));
        } else if !vols.insert(name) {
            causes.push(Cause::duplicate(format!("{path}.volumes[{i}].name"), name));
        }
    }
}

fn validate_selector_template(obj: &Value, causes: &mut Vec<Cause>, required: bool) {
    let sel = obj.pointer("/spec/selector");
    let empty = sel.is_none_or(|s| {
        s.get("matchLabels").and_then(Value::as_object).is_none_or(|m| m.is_empty())
            && s.get("matchExpressions").and_then(Value::as_array).is_none_or(|m| m.is_empty())
    });
    if empty {
        if required {
            causes.push(Cause::required("spec.selector"));
        }
        return;
    }
    let Some(sel) = sel else { return };
    validate_labels(sel.get("matchLabels"), "spec.selector.matchLabels", causes);
    match crate::selectors::LabelSelector::from_object(sel) {
        Err(e) => causes.push(Cause::invalid("spec.selector", "", e)),
        Ok(s) => {
            let labels = crate::selectors::labels_of(obj.pointer("/spec/template").unwrap_or(&Value::Null));
            if !s.matches(&labels) {
                let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                causes.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    format!("map[{}]", shown.join(" ")),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
}

fn validate_replicas(obj: &Value, causes: &mut Vec<Cause>) {
    if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64)
        && r < 0
    {
        causes.push(Cause::invalid("spec.replicas", r, "must be greater than or equal to 0"));
    }
}

/// The API group of Roles and bindings, whose names follow the path-segment rule.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Upstream's `ValidatePathSegmentName`: names that must be usable as one URL path segment.
pub fn path_segment_name_error(name: &str) -> Option<&'static str> {
    let bad = name == "." || name == ".." || name.contains('/') || name.contains('%');
    bad.then_some("may not be '.' or '..' and may not contain '/' or '%'")
}

/// Upstream's `MaxSecretSize`, the cap on the data of one ConfigMap or Secret.
pub const MAX_DATA_SIZE: usize = 1024 * 1024;

/// Decoded length of a base64 value (the schema check has made sure it is base64).
fn base64_len(s: &str) -> usize {
    s.trim_end_matches('=').len() * 3 / 4
}

/// The size cap of ConfigMaps (`data` + `binaryData`, reported on the whole object as `[]`) and
/// Secrets (`data` with `stringData` merged in, reported on `data`), as upstream.
fn data_size_cause(kind: &str, obj: &Value) -> Option<Cause> {
    let map = |k: &str| obj.get(k).and_then(Value::as_object);
    let text = |v: &Value| v.as_str().map_or(0, str::len);
    let binary = |v: &Value| v.as_str().map_or(0, base64_len);
    let (total, field) = if kind == "ConfigMap" {
        let data: usize = map("data").into_iter().flatten().map(|(_, v)| text(v)).sum();
        let bin: usize = map("binaryData").into_iter().flatten().map(|(_, v)| binary(v)).sum();
        (data + bin, "[]")
    } else {
        let string = map("stringData");
        let data: usize = map("data")
            .into_iter()
            .flatten()
            .filter(|(k, _)| string.is_none_or(|s| !s.contains_key(*k)))
            .map(|(_, v)| binary(v))
            .sum();
        (data + string.into_iter().flatten().map(|(_, v)| text(v)).sum::<usize>(), "data")
    };
    (total > MAX_DATA_SIZE).then(|| Cause {
        reason: "FieldValueTooLong",
        field: field.into(),
        message: format!("Too long: must have at most {MAX_DATA_SIZE} bytes"),
    })
}

/// Validates an object for create (or update, when `old` is given).
pub fn validate(res: &ResourceDef, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    validate_with(res, obj, old, |_| {})
}

/// [`validate`], with `extra` adding causes of checks that live outside this crate (api-shim's
/// RBAC rule validation needs its authorizer's rule parser).
pub fn validate_with(
    res: &ResourceDef,
    obj: &Value,
    old: Option<&Value>,
    extra: impl FnOnce(&mut Vec<Cause>),
) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    validate_meta(res, obj, &mut causes);
    match res.kind {
        "Pod" => validate_pod_spec(obj.get("spec"), "spec", &mut causes),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            validate_replicas(obj, &mut causes);
            validate_selector_template(obj, &mut causes, true);
            validate_pod_spec(obj.pointer("/spec/template/spec"), "spec.template.spec", &mut causes);
        }
        "ReplicationController" => {
            validate_replicas(obj, &mut causes);
            if let Some(sel) = obj.pointer("/spec/selector").and_then(Value::as_object) {
                let labels = crate::selectors::labels_of(obj.pointer("/spec/template").unwrap_or(&Value::Null));
                if sel.iter().any(|(k, v)| labels.get(k).map(String::as_str) != v.as_str()) {
                    causes.push(Cause::invalid(
                        "spec.template.metadata.labels",
                        "",
                        "`selector` does not match template `labels`",
                    ));
                }
            }
            validate_pod_spec(obj.pointer("/spec/template/spec"), "spec.template.spec", &mut causes);
        }
        "Job" => {
            validate_selector_template(obj, &mut causes, false);
            validate_pod_spec(obj.pointer("/spec/template/spec"), "spec.template.spec", &mut causes);
        }
        "CronJob" => {
            if str_at(obj, "/spec/schedule").is_none_or(str::is_empty) {
                causes.push(Cause::required("spec.schedule"));
            }
            validate_pod_spec(
                obj.pointer("/spec/jobTemplate/spec/template/spec"),
                "spec.jobTemplate.spec.template.spec",
                &mut causes,
            );
        }
        "Service" => validate_service(obj, &mut causes),
        "ConfigMap" | "Secret" => {
            for part in ["data", "binaryData", "stringData"] {
                if let Some(Value::Object(m)) = obj.get(part) {
                    for k in m.keys() {
                        if k.is_empty()
                            || k.len() > 253
                            || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                        {
                            causes.push(Cause::invalid(
                                format!("{part}[{k}]"),
                                k,
                                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                            ));
                        }
                    }
                }
            }
            if let Some(c) = data_size_cause(res.kind, obj) {
                causes.push(c);
            }
        }
        _ => {}
    }
    validate_quantities(obj, "", false, &mut causes);
    extra(&mut causes);
    crate::validation::validate_kind(res, obj, old, &mut causes);
    if let Some(old) = old {
        validate_update(res, obj, old, &mut causes);
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            group: res.group.to_string(),
            kind: res.kind.to_string(),
            name: str_at(obj, "/metadata/name").unwrap_or_default().to_string(),
            causes,
        })
    }
}

fn validate_service(obj: &Value, causes: &mut Vec<Cause>) {
    let ty = str_at(obj, "/spec/type").unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
        causes.push(Cause::unsupported("spec.type", ty, &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]));
    }
    let ports = obj.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
    let headless = str_at(obj, "/spec/clusterIP") == Some("None");
    if ports.is_empty() && ty != "ExternalName" && !headless {
        causes.push(Cause::required("spec.ports"));
    }
    if ty == "ExternalName" && str_at(obj, "/spec/externalName").is_none_or(str::is_empty) {
        causes.push(Cause::required("spec.externalName"));
    }
    let mut seen = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                port,
                "must be between 1 and 65535, inclusive",
            ));
        }
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&proto) {
            causes.push(Cause::unsupported(format!("spec.ports[{i}].protocol"), proto, &["SCTP", "TCP", "UDP"]));
        }
        if !seen.insert((port, proto.to_string())) {
            causes.push(Cause::duplicate(format!("spec.ports[{i}]"), format!("{port}/{proto}")));
        }
        if ports.len() > 1 && p.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            causes.push(Cause::required(format!("spec.ports[{i}].name")));
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64)
            && np != 0
            && ty == "ClusterIP"
        {
            causes.push(Cause::forbidden(
                format!("spec.ports[{i}].nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    if let Some(ip) = str_at(obj, "/spec/clusterIP")
        && !ip.is_empty()
        && ip != "None"
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        causes.push(Cause::invalid(
            "spec.clusterIPs[0]",
            ip,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
}

fn validate_update(res: &ResourceDef, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
    let immutable: &[&str] = match res.kind {
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" => &["/spec/selector"],
        "Service" => &["/spec/clusterIP"],
        "Job" => &["/spec/selector", "/spec/completionMode"],
        _ => &[],
    };
    for ptr in immutable {
        let (a, b) = (new.pointer(ptr), old.pointer(ptr));
        // Service clusterIP may be left empty on update (it is then kept).
        if *ptr == "/spec/clusterIP" && a.is_none_or(|v| v.as_str() == Some("")) {
            continue;
        }
        if a != b {
            causes.push(Cause::immutable(ptr.trim_start_matches('/').replace('/', ".")));
        }
    }
    if res.kind == "Pod" {
        let strip = |v: &Value| {
            let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
            // Mutable pod spec fields: container images, activeDeadlineSeconds, tolerations additions.
            for key in ["containers", "initContainers"] {
                if let Some(Value::Array(cs)) = s.get_mut(key) {
                    for c in cs {
                        if let Value::Object(m) = c {
                            m.remove("image");
                        }
                    }
                }
            }
            if let Value::Object(m) = &mut s {
                m.remove("activeDeadlineSeconds");
                m.remove("tolerations");
                m.remove("terminationGracePeriodSeconds");
                m.remove("schedulingGates");
                if old.pointer("/spec/nodeName").is_none_or(|n| n.as_str() == Some("")) {
                    m.remove("nodeName");
                }
            }
            s
        };
        if strip(new) != strip(old) {
            causes.push(Cause::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            ));
        }
    }
    if matches!(res.kind, "ConfigMap" | "Secret") && old.get("immutable").and_then(Value::as_bool) == Some(true) {
        for f in ["data", "binaryData", "immutable"] {
            if new.get(f) != old.get(f) {
                causes.push(Cause::forbidden(f, "field is immutable when `immutable` is set"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::resources::find;
    use serde_json::json;

    #[test]
    fn schema_check_prunes_or_rejects_unknown_fields() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "bogus": 1}, "data": {"k": "v"}, "extra": true});
        let (out, warnings) = check_schema("ConfigMap", cm.clone(), FieldValidation::Warn).unwrap();
        assert_eq!(warnings, vec!["unknown field \"extra\"", "unknown field \"metadata.bogus\""]);
        assert!(out.get("extra").is_none());
        let err = check_schema("ConfigMap", cm, FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code(), 400);
        assert!(err.to_string().contains("unknown field \"extra\""));
        let bad = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": 5}});
        assert_eq!(check_schema("ConfigMap", bad, FieldValidation::Ignore).unwrap_err().code(), 400);
        // YAML-style numeric quantities are accepted.
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": 1}}}]}});
        let (out, _) = check_schema("Pod", pod, FieldValidation::Strict).unwrap();
        assert_eq!(out.pointer("/spec/containers/0/resources/limits/cpu"), Some(&json!("1")));
    }

    #[test]
    fn validation_names_paths() {
        let res = find("apps", "v1", "deployments").unwrap();
        let d = json!({"metadata": {"name": "Bad_Name", "labels": {"a": "-x"}},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {"metadata": {"labels": {"app": "y"}},
            "spec": {"containers": [{"name": "c"}, {"name": "c", "image": "i", "resources": {"limits": {"cpu": "lots"}}}]}}}});
        let Err(ApiError::Invalid { causes, .. }) = validate(res, &d, None) else { panic!("expected Invalid") };
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "metadata.labels",
                "spec.template.metadata.labels",
                "spec.template.spec.containers[0].image",
                "spec.template.spec.containers[1].name",
                "spec.template.spec.containers[1].resources.limits[cpu]"
            ]
        );
    }

    #[test]
    fn immutable_fields_and_quantities() {
        let res = find("", "v1", "services").unwrap();
        let old = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}});
        let mut new = old.clone();
        new["spec"]["clusterIP"] = json!("10.96.0.6");
        assert!(validate(res, &new, Some(&old)).is_err());
        new["spec"]["clusterIP"] = json!("");
        assert!(validate(res, &new, Some(&old)).is_ok());
        // Upstream parses "-", "+", "." and a bare "m" as zero.
        for q in ["1", "100m", "1.5Gi", "2e3", "+1k", ".5", "-", "+", ".", "m"] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "1.2.3", "1Q", "1e", " 1"] {
            assert!(!is_quantity(q), "{q}");
        }
    }

    #[test]
    fn configmap_and_secret_data_is_capped_at_one_mebibyte() {
        use base64::Engine as _;
        let cm_res = find("", "v1", "configmaps").unwrap();
        let half = "x".repeat(MAX_DATA_SIZE / 2);
        let mut cm = json!({"metadata": {"name": "c"}, "data": {"a": half, "b": half}});
        assert!(validate(cm_res, &cm, None).is_ok(), "exactly 1 MiB is allowed");
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8]);
        cm["binaryData"] = json!({"c": b64});
        let ApiError::Invalid { causes, .. } = validate(cm_res, &cm, None).unwrap_err() else { panic!() };
        assert_eq!(
            (causes[0].reason, causes[0].field.as_str(), causes[0].message.as_str()),
            ("FieldValueTooLong", "[]", "Too long: must have at most 1048576 bytes")
        );
        let err = validate(cm_res, &cm, None).unwrap_err();
        assert_eq!(err.code(), 422);
        assert!(err.to_string().contains("[]: Too long: must have at most 1048576 bytes"), "{err}");

        let secret_res = find("", "v1", "secrets").unwrap();
        let full = base64::engine::general_purpose::STANDARD.encode(vec![0u8; MAX_DATA_SIZE]);
        let mut secret = json!({"metadata": {"name": "s"}, "data": {"a": full}});
        assert!(validate(secret_res, &secret, None).is_ok());
        secret["stringData"] = json!({"b": "y"});
        let ApiError::Invalid { causes, .. } = validate(secret_res, &secret, None).unwrap_err() else { panic!() };
        assert_eq!((causes[0].field.as_str(), causes[0].reason), ("data", "FieldValueTooLong"));
        // stringData replaces the data key of the same name rather than adding to it.
        secret["stringData"] = json!({"a": "y"});
        assert!(validate(secret_res, &secret, None).is_ok());
    }

    #[test]
    fn duplicate_json_keys_follow_field_validation() {
        let body = br#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "name": "b"}}"#;
        let err = decode_object("application/json", body, FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code(), 400);
        assert_eq!(err.to_string(), r#"strict decoding error: duplicate field "metadata.name""#);
        let (v, warnings) = decode_object("application/json", body, FieldValidation::Warn).unwrap();
        assert_eq!(
            (v["metadata"]["name"].as_str(), warnings),
            (Some("b"), vec![r#"duplicate field "metadata.name""#.to_string()])
        );
        let (_, warnings) = decode_object("application/json; charset=utf-8", body, FieldValidation::Ignore).unwrap();
        assert!(warnings.is_empty());
    }

    #[test]
    fn negative_quantities_are_refused_and_canonical_ones_stored() {
        let res = find("", "v1", "pods").unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "i", "resources": {"requests": {"cpu": "1.5", "memory": "-5Mi"}, "limits": {"cpu": "0.0001m"}}}
        ], "overhead": {"memory": "-1"}}});
        let (stored, _) = check_schema("Pod", pod, FieldValidation::Strict).unwrap();
        let r = &stored["spec"]["containers"][0]["resources"];
        assert_eq!((r["requests"]["cpu"].as_str(), r["limits"]["cpu"].as_str()), (Some("1500m"), Some("100n")));
        let ApiError::Invalid { causes, .. } = validate(res, &stored, None).unwrap_err() else { panic!() };
        let got: Vec<(&str, &str)> = causes.iter().map(|c| (c.field.as_str(), c.message.as_str())).collect();
        assert_eq!(
            got,
            [
                (
                    "spec.containers[0].resources.requests[memory]",
                    "Invalid value: \"-5Mi\": must be greater than or equal to 0"
                ),
                ("spec.overhead[memory]", "Invalid value: \"-1\": must be greater than or equal to 0"),
                // Compared exactly, not as floats: 1500m > 100n.
                (
                    "spec.containers[0].resources.requests",
                    "Invalid value: \"1500m\": must be less than or equal to cpu limit of 100n"
                ),
            ]
        );
        let node = find("", "v1", "nodes").unwrap();
        let n = json!({"metadata": {"name": "n"}, "status": {"capacity": {"cpu": "-2"}, "allocatable": {"cpu": "x"}}});
        let ApiError::Invalid { causes, .. } = validate(node, &n, None).unwrap_err() else { panic!() };
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["status.allocatable[cpu]", "status.capacity[cpu]"]);
    }

    #[test]
    fn yaml_alias_bomb_is_rejected() {
        let mut y = String::from("a: &a [x,x,x,x,x,x,x,x,x]\n");
        for i in 0..12 {
            let prev = if i == 0 { "a".to_string() } else { format!("l{}", i - 1) };
            y.push_str(&format!(
                "l{i}: &l{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
        }
        assert_eq!(decode_body("application/yaml", y.as_bytes()).unwrap_err().code(), 400);
        let deep = "[".repeat(10_000);
        assert_eq!(decode_body("application/json", deep.as_bytes()).unwrap_err().code(), 400);
        // Protobuf is api-shim's transport; this crate refuses it like any unknown media type.
        assert_eq!(decode_body("application/vnd.kubernetes.protobuf", b"x").unwrap_err().code(), 415);
        assert_eq!(decode_body("application/cbor", b"x").unwrap_err().code(), 415);
    }
}
