//! Decoding, schema checking, defaulting and validation of objects.
//!
//! Bodies are JSON or YAML. The schema check deserializes into the k8s-openapi type for the kind
//! and serializes back: a type error is a 400, and any input field missing from the round trip is
//! an unknown field (rejected, warned about or dropped per `fieldValidation`). The round-tripped
//! value is what gets stored, so unknown fields never reach storage. Validation mirrors the
//! upstream rules clients rely on, with field paths in the causes.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::error::{ApiError, Cause};
use crate::resources::ResourceDef;

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
                let qmap = matches!(k.as_str(), "limits" | "requests" | "capacity" | "allocatable" | "hard" | "used");
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

/// Checks `obj` against the schema of `kind`; returns the pruned object and warnings.
pub fn check_schema(kind: &str, mut obj: Value, fv: FieldValidation) -> Result<(Value, Vec<String>), ApiError> {
    normalize_quantities(&mut obj, false);
    let out = roundtrip(kind, obj.clone()).map_err(|e| ApiError::bad_request(format!("error decoding {kind}: {e}")))?;
    let mut unknown = Vec::new();
    unknown_fields(&obj, &out, "", &mut unknown);
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

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn set_default(obj: &mut Value, ptr: &str, val: Value) {
    if obj.pointer(ptr).is_some_and(|v| !v.is_null()) {
        return;
    }
    let mut cur = obj;
    let toks: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
    for (i, t) in toks.iter().enumerate() {
        let Value::Object(m) = cur else { return };
        if i + 1 == toks.len() {
            m.insert((*t).to_string(), val);
            return;
        }
        cur = m.entry((*t).to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
}

fn default_containers(spec: &mut Value, key: &str) {
    if let Some(Value::Array(cs)) = spec.get_mut(key) {
        for c in cs {
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default().to_string();
            let last = image.rsplit('/').next().unwrap_or_default();
            let pinned = image.contains('@') || (last.contains(':') && !last.ends_with(":latest"));
            set_default(c, "/imagePullPolicy", json!(if pinned { "IfNotPresent" } else { "Always" }));
            set_default(c, "/terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "/terminationMessagePolicy", json!("File"));
            set_default(c, "/resources", json!({}));
            if let Some(Value::Array(ports)) = c.get_mut("ports") {
                for p in ports {
                    set_default(p, "/protocol", json!("TCP"));
                }
            }
        }
    }
}

/// Pod spec defaults (also applied to templates).
pub fn default_pod_spec(spec: &mut Value) {
    set_default(spec, "/restartPolicy", json!("Always"));
    set_default(spec, "/dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "/schedulerName", json!("default-scheduler"));
    set_default(spec, "/terminationGracePeriodSeconds", json!(30));
    set_default(spec, "/securityContext", json!({}));
    set_default(spec, "/enableServiceLinks", json!(true));
    default_containers(spec, "containers");
    default_containers(spec, "initContainers");
}

/// Applies create-time defaults for `res`.
pub fn apply_defaults(res: &ResourceDef, obj: &mut Value) {
    match res.kind {
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
                set_default(spec, "/serviceAccountName", json!("default"));
                let sa = spec.get("serviceAccountName").cloned().unwrap_or(json!("default"));
                set_default(spec, "/serviceAccount", sa);
                set_default(spec, "/priority", json!(0));
            }
            set_default(obj, "/status/phase", json!("Pending"));
            let qos = pod_qos(obj);
            set_default(obj, "/status/qosClass", json!(qos));
        }
        "Deployment" => {
            set_default(obj, "/spec/replicas", json!(1));
            set_default(obj, "/spec/strategy/type", json!("RollingUpdate"));
            if str_at(obj, "/spec/strategy/type") == Some("RollingUpdate") {
                set_default(obj, "/spec/strategy/rollingUpdate/maxUnavailable", json!("25%"));
                set_default(obj, "/spec/strategy/rollingUpdate/maxSurge", json!("25%"));
            }
            set_default(obj, "/spec/revisionHistoryLimit", json!(10));
            set_default(obj, "/spec/progressDeadlineSeconds", json!(600));
            template_defaults(obj);
        }
        "ReplicaSet" | "ReplicationController" => {
            set_default(obj, "/spec/replicas", json!(1));
            if res.kind == "ReplicationController" {
                // An RC without selector selects its template labels.
                if obj.pointer("/spec/selector").is_none()
                    && let Some(l) = obj.pointer("/spec/template/metadata/labels").cloned()
                {
                    set_default(obj, "/spec/selector", l);
                }
            }
            template_defaults(obj);
        }
        "StatefulSet" => {
            set_default(obj, "/spec/replicas", json!(1));
            set_default(obj, "/spec/podManagementPolicy", json!("OrderedReady"));
            set_default(
                obj,
                "/spec/updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            set_default(obj, "/spec/revisionHistoryLimit", json!(10));
            template_defaults(obj);
        }
        "DaemonSet" => {
            set_default(
                obj,
                "/spec/updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            set_default(obj, "/spec/revisionHistoryLimit", json!(10));
            template_defaults(obj);
        }
        "Job" => {
            set_default(obj, "/spec/parallelism", json!(1));
            set_default(obj, "/spec/completions", json!(1));
            set_default(obj, "/spec/backoffLimit", json!(6));
            set_default(obj, "/spec/completionMode", json!("NonIndexed"));
            set_default(obj, "/spec/suspend", json!(false));
            template_defaults(obj);
        }
        "CronJob" => {
            set_default(obj, "/spec/concurrencyPolicy", json!("Allow"));
            set_default(obj, "/spec/suspend", json!(false));
            set_default(obj, "/spec/successfulJobsHistoryLimit", json!(3));
            set_default(obj, "/spec/failedJobsHistoryLimit", json!(1));
            if let Some(spec) = obj.pointer_mut("/spec/jobTemplate/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        "Service" => {
            set_default(obj, "/spec/type", json!("ClusterIP"));
            set_default(obj, "/spec/sessionAffinity", json!("None"));
            let ty = str_at(obj, "/spec/type").unwrap_or("ClusterIP").to_string();
            if ty != "ExternalName" {
                set_default(obj, "/spec/ipFamilies", json!(["IPv4"]));
                set_default(obj, "/spec/ipFamilyPolicy", json!("SingleStack"));
                set_default(obj, "/spec/internalTrafficPolicy", json!("Cluster"));
            }
            if ty == "NodePort" || ty == "LoadBalancer" {
                set_default(obj, "/spec/externalTrafficPolicy", json!("Cluster"));
            }
            if let Some(Value::Array(ports)) = obj.pointer_mut("/spec/ports") {
                for p in ports {
                    set_default(p, "/protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set_default(p, "/targetPort", port);
                    }
                }
            }
            set_default(obj, "/status/loadBalancer", json!({}));
        }
        "Namespace" => {
            set_default(obj, "/spec/finalizers", json!(["kubernetes"]));
            set_default(obj, "/status/phase", json!("Active"));
            if let Some(name) = str_at(obj, "/metadata/name").map(str::to_string)
                && let Some(Value::Object(m)) = obj.get_mut("metadata")
            {
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                if let Value::Object(l) = labels {
                    l.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
            }
        }
        "Secret" => set_default(obj, "/type", json!("Opaque")),
        _ => {}
    }
}

fn template_defaults(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(spec);
    }
}

/// Pod QoS class from container resources.
pub fn pod_qos(pod: &Value) -> &'static str {
    let cs = pod.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !cs.is_empty();
    for c in &cs {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(r));
            let q = req.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

// ---------------------------------------------------------------- validation

pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub(crate) fn is_qualified_name(s: &str) -> bool {
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

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// Kubernetes resource quantity syntax (`100m`, `1.5Gi`, `2e3`).
pub fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let num_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return false;
    }
    match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        e if e.starts_with(['e', 'E']) => {
            let exp = e[1..].strip_prefix(['+', '-']).unwrap_or(&e[1..]);
            !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
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

fn validate_resources(c: &Value, path: &str, causes: &mut Vec<Cause>) {
    for part in ["limits", "requests"] {
        if let Some(Value::Object(m)) = c.pointer(&format!("/resources/{part}")) {
            for (k, v) in m {
                let s = v.as_str().unwrap_or_default();
                if !is_quantity(s) {
                    causes.push(Cause::invalid(
                        format!("{path}.resources.{part}[{k}]"),
                        s,
                        "must match the regex ^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$",
                    ));
                }
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
            validate_resources(c, &cp, causes);
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
        }
        _ => {}
    }
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
        for q in ["1", "100m", "1.5Gi", "2e3", "+1k", ".5"] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "1.2.3", "1Q", "m", "1e"] {
            assert!(!is_quantity(q), "{q}");
        }
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
