//! Just enough Kubernetes protobuf to accept what kubectl's typed clients send.
//!
//! kubectl ≥ 1.32 runs its `create configmap|secret|namespace|serviceaccount|deployment|job|cronjob`
//! generators through client-go typed clients that encode request bodies as protobuf. This module
//! decodes the `k8s\0` envelope (`runtime.Unknown`) and those messages (the fields the generators
//! can set; field numbers from the upstream `generated.proto`) into JSON. The same typed clients
//! send `kubectl create role|rolebinding|…` objects and the `kubectl auth can-i|whoami` reviews. A field outside that
//! table that carries data is a 415, never silently dropped. Responses are always JSON (the same
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
    #[error(
        "protobuf bodies are accepted only for ConfigMap, Secret, Namespace, ServiceAccount, Deployment, Job, CronJob, RBAC roles and bindings, access reviews and CertificateSigningRequests with the fields kubectl sets (got {0}); send JSON or YAML"
    )]
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

/// How a schema field decodes.
#[derive(Clone, Copy)]
enum F {
    Str,
    /// Integer; `keep_zero` for pointer fields, where an explicit 0 is meaningful.
    Int {
        keep_zero: bool,
    },
    Bool {
        keep_false: bool,
    },
    Msg(&'static str),
    RepStr,
    RepMsg(&'static str),
    MapStr,
    MapQuantity,
    IntOrString,
    /// `bytes`: base64 in JSON.
    Bytes,
    /// `meta.v1.Time` { seconds = 1; nanos = 2 }: RFC 3339 in JSON.
    Time,
    /// Status on create: reset by the server anyway.
    Skip,
}

/// Field numbers from k8s.io/api and apimachinery `generated.proto` for the messages kubectl's
/// `create deployment|job|cronjob|serviceaccount` generators send. Anything not listed that
/// carries data is rejected rather than silently dropped.
fn schema(msg: &str) -> &'static [(u64, &'static str, F)] {
    const KEEP: F = F::Int { keep_zero: true };
    const INT: F = F::Int { keep_zero: false };
    match msg {
        "Deployment" => {
            &[(1, "metadata", F::Msg("ObjectMeta")), (2, "spec", F::Msg("DeploymentSpec")), (3, "status", F::Skip)]
        }
        "DeploymentSpec" => &[
            (1, "replicas", KEEP),
            (2, "selector", F::Msg("LabelSelector")),
            (3, "template", F::Msg("PodTemplateSpec")),
            (4, "strategy", F::Msg("DeploymentStrategy")),
            (5, "minReadySeconds", INT),
            (6, "revisionHistoryLimit", KEEP),
            (7, "paused", F::Bool { keep_false: false }),
            (9, "progressDeadlineSeconds", KEEP),
        ],
        "DeploymentStrategy" => &[(1, "type", F::Str), (2, "rollingUpdate", F::Msg("RollingUpdateDeployment"))],
        "RollingUpdateDeployment" => &[(1, "maxUnavailable", F::IntOrString), (2, "maxSurge", F::IntOrString)],
        "Job" => &[(1, "metadata", F::Msg("ObjectMeta")), (2, "spec", F::Msg("JobSpec")), (3, "status", F::Skip)],
        "JobSpec" => &[
            (1, "parallelism", KEEP),
            (2, "completions", KEEP),
            (3, "activeDeadlineSeconds", KEEP),
            (4, "selector", F::Msg("LabelSelector")),
            (5, "manualSelector", F::Bool { keep_false: true }),
            (6, "template", F::Msg("PodTemplateSpec")),
            (7, "backoffLimit", KEEP),
            (8, "ttlSecondsAfterFinished", KEEP),
            (9, "completionMode", F::Str),
            (10, "suspend", F::Bool { keep_false: true }),
        ],
        "CronJob" => {
            &[(1, "metadata", F::Msg("ObjectMeta")), (2, "spec", F::Msg("CronJobSpec")), (3, "status", F::Skip)]
        }
        "CronJobSpec" => &[
            (1, "schedule", F::Str),
            (2, "startingDeadlineSeconds", KEEP),
            (3, "concurrencyPolicy", F::Str),
            (4, "suspend", F::Bool { keep_false: true }),
            (5, "jobTemplate", F::Msg("JobTemplateSpec")),
            (6, "successfulJobsHistoryLimit", KEEP),
            (7, "failedJobsHistoryLimit", KEEP),
            (8, "timeZone", F::Str),
        ],
        "JobTemplateSpec" => &[(1, "metadata", F::Msg("ObjectMeta")), (2, "spec", F::Msg("JobSpec"))],
        "PodTemplateSpec" => &[(1, "metadata", F::Msg("ObjectMeta")), (2, "spec", F::Msg("PodSpec"))],
        "PodSpec" => &[
            (2, "containers", F::RepMsg("Container")),
            (3, "restartPolicy", F::Str),
            (4, "terminationGracePeriodSeconds", KEEP),
            (5, "activeDeadlineSeconds", KEEP),
            (6, "dnsPolicy", F::Str),
            (7, "nodeSelector", F::MapStr),
            (8, "serviceAccountName", F::Str),
            (9, "serviceAccount", F::Str),
            (10, "nodeName", F::Str),
            (11, "hostNetwork", F::Bool { keep_false: false }),
            (15, "imagePullSecrets", F::RepMsg("LocalObjectReference")),
            (16, "hostname", F::Str),
            (17, "subdomain", F::Str),
            (19, "schedulerName", F::Str),
            (20, "initContainers", F::RepMsg("Container")),
            (21, "automountServiceAccountToken", F::Bool { keep_false: true }),
            (24, "priorityClassName", F::Str),
        ],
        "Container" => &[
            (1, "name", F::Str),
            (2, "image", F::Str),
            (3, "command", F::RepStr),
            (4, "args", F::RepStr),
            (5, "workingDir", F::Str),
            (6, "ports", F::RepMsg("ContainerPort")),
            (7, "env", F::RepMsg("EnvVar")),
            (8, "resources", F::Msg("ResourceRequirements")),
            (13, "terminationMessagePath", F::Str),
            (14, "imagePullPolicy", F::Str),
            (16, "stdin", F::Bool { keep_false: false }),
            (17, "stdinOnce", F::Bool { keep_false: false }),
            (18, "tty", F::Bool { keep_false: false }),
            (20, "terminationMessagePolicy", F::Str),
        ],
        "ContainerPort" => &[
            (1, "name", F::Str),
            (2, "hostPort", INT),
            (3, "containerPort", INT),
            (4, "protocol", F::Str),
            (5, "hostIP", F::Str),
        ],
        "EnvVar" => &[(1, "name", F::Str), (2, "value", F::Str)],
        "ResourceRequirements" => &[(1, "limits", F::MapQuantity), (2, "requests", F::MapQuantity)],
        "LabelSelector" => {
            &[(1, "matchLabels", F::MapStr), (2, "matchExpressions", F::RepMsg("LabelSelectorRequirement"))]
        }
        "LabelSelectorRequirement" => &[(1, "key", F::Str), (2, "operator", F::Str), (3, "values", F::RepStr)],
        "ServiceAccount" => &[
            (1, "metadata", F::Msg("ObjectMeta")),
            (2, "secrets", F::RepMsg("ObjectReference")),
            (3, "imagePullSecrets", F::RepMsg("LocalObjectReference")),
            (4, "automountServiceAccountToken", F::Bool { keep_false: true }),
        ],
        "ObjectReference" => &[
            (1, "kind", F::Str),
            (2, "namespace", F::Str),
            (3, "name", F::Str),
            (4, "uid", F::Str),
            (5, "apiVersion", F::Str),
        ],
        "LocalObjectReference" => &[(1, "name", F::Str)],
        // rbac.authorization.k8s.io/v1 (kubectl create role|clusterrole|rolebinding|clusterrolebinding).
        "Role" | "ClusterRole" => &[(1, "metadata", F::Msg("ObjectMeta")), (2, "rules", F::RepMsg("PolicyRule"))],
        "PolicyRule" => &[
            (1, "verbs", F::RepStr),
            (2, "apiGroups", F::RepStr),
            (3, "resources", F::RepStr),
            (4, "resourceNames", F::RepStr),
            (5, "nonResourceURLs", F::RepStr),
        ],
        "RoleBinding" | "ClusterRoleBinding" => &[
            (1, "metadata", F::Msg("ObjectMeta")),
            (2, "subjects", F::RepMsg("Subject")),
            (3, "roleRef", F::Msg("RoleRef")),
        ],
        "Subject" => &[(1, "kind", F::Str), (2, "apiGroup", F::Str), (3, "name", F::Str), (4, "namespace", F::Str)],
        "RoleRef" => &[(1, "apiGroup", F::Str), (2, "kind", F::Str), (3, "name", F::Str)],
        // authorization.k8s.io/v1 and authentication.k8s.io/v1 reviews (kubectl auth can-i|whoami).
        "SelfSubjectAccessReview" => &[
            (1, "metadata", F::Msg("ObjectMeta")),
            (2, "spec", F::Msg("SelfSubjectAccessReviewSpec")),
            (3, "status", F::Skip),
        ],
        "SubjectAccessReview" => &[
            (1, "metadata", F::Msg("ObjectMeta")),
            (2, "spec", F::Msg("SubjectAccessReviewSpec")),
            (3, "status", F::Skip),
        ],
        "SelfSubjectRulesReview" => &[
            (1, "metadata", F::Msg("ObjectMeta")),
            (2, "spec", F::Msg("SelfSubjectRulesReviewSpec")),
            (3, "status", F::Skip),
        ],
        "SelfSubjectAccessReviewSpec" => &[
            (1, "resourceAttributes", F::Msg("ResourceAttributes")),
            (2, "nonResourceAttributes", F::Msg("NonResourceAttributes")),
        ],
        "SubjectAccessReviewSpec" => &[
            (1, "resourceAttributes", F::Msg("ResourceAttributes")),
            (2, "nonResourceAttributes", F::Msg("NonResourceAttributes")),
            (3, "user", F::Str),
            (4, "groups", F::RepStr),
            (6, "uid", F::Str),
        ],
        "SelfSubjectRulesReviewSpec" => &[(1, "namespace", F::Str)],
        "SelfSubjectReview" => &[(1, "metadata", F::Msg("ObjectMeta")), (2, "status", F::Skip)],
        "ResourceAttributes" => &[
            (1, "namespace", F::Str),
            (2, "verb", F::Str),
            (3, "group", F::Str),
            (4, "version", F::Str),
            (5, "resource", F::Str),
            (6, "subresource", F::Str),
            (7, "name", F::Str),
        ],
        "NonResourceAttributes" => &[(1, "path", F::Str), (2, "verb", F::Str)],
        // certificates.k8s.io/v1 (kubectl certificate approve|deny sends the whole CSR).
        "CertificateSigningRequest" => &[
            (1, "metadata", F::Msg("ObjectMeta")),
            (2, "spec", F::Msg("CertificateSigningRequestSpec")),
            (3, "status", F::Msg("CertificateSigningRequestStatus")),
        ],
        "CertificateSigningRequestSpec" => &[
            (1, "request", F::Bytes),
            (2, "username", F::Str),
            (3, "uid", F::Str),
            (4, "groups", F::RepStr),
            (5, "usages", F::RepStr),
            (7, "signerName", F::Str),
            (8, "expirationSeconds", KEEP),
        ],
        "CertificateSigningRequestStatus" => {
            &[(1, "conditions", F::RepMsg("CertificateSigningRequestCondition")), (2, "certificate", F::Bytes)]
        }
        "CertificateSigningRequestCondition" => &[
            (1, "type", F::Str),
            (2, "reason", F::Str),
            (3, "message", F::Str),
            (4, "lastUpdateTime", F::Time),
            (5, "lastTransitionTime", F::Time),
            (6, "status", F::Str),
        ],
        _ => &[],
    }
}

/// Go int32/int64 varints: negative values are sign-extended to 64 bits.
fn varint_value(v: u64) -> i64 {
    v as i64
}

fn schema_message(msg: &str, b: &[u8], depth: usize) -> Result<Value, ProtoError> {
    if depth > 32 {
        return Err(ProtoError::Unsupported(format!("{msg} nested too deeply")));
    }
    if msg == "ObjectMeta" {
        return object_meta(b);
    }
    let fields = schema(msg);
    let mut r = Reader { buf: b };
    let mut m = Map::new();
    while let Some((n, f)) = r.next()? {
        let Some((_, name, kind)) = fields.iter().find(|(num, _, _)| *num == n) else {
            // An unknown field is fine only if it carries nothing (Go always encodes zero values).
            let empty = match f {
                Field::Varint(v) => v == 0,
                Field::Bytes(x) => x.is_empty(),
                Field::Fixed => false,
            };
            if empty {
                continue;
            }
            return Err(ProtoError::Unsupported(format!("{msg} field {n}")));
        };
        match (*kind, f) {
            (F::Skip, _) => {}
            (F::Str, Field::Bytes(x)) => put(&mut m, name, x)?,
            (F::Int { keep_zero }, Field::Varint(v)) => {
                if v != 0 || keep_zero {
                    m.insert((*name).into(), json!(varint_value(v)));
                }
            }
            (F::Bool { keep_false }, Field::Varint(v)) => {
                if v != 0 || keep_false {
                    m.insert((*name).into(), json!(v != 0));
                }
            }
            (F::Msg(sub), Field::Bytes(x)) => {
                let v = schema_message(sub, x, depth + 1)?;
                if v.as_object().is_some_and(|o| !o.is_empty()) || matches!(*name, "resources" | "strategy") {
                    m.insert((*name).into(), v);
                }
            }
            (F::RepStr, Field::Bytes(x)) => {
                if let Value::Array(a) = m.entry(*name).or_insert_with(|| json!([])) {
                    a.push(json!(string(x)?));
                }
            }
            (F::RepMsg(sub), Field::Bytes(x)) => {
                let v = schema_message(sub, x, depth + 1)?;
                if let Value::Array(a) = m.entry(*name).or_insert_with(|| json!([])) {
                    a.push(v);
                }
            }
            (F::MapStr, Field::Bytes(x)) => insert_str_map(&mut m, name, x)?,
            (F::MapQuantity, Field::Bytes(x)) => {
                let (k, q) = entry(x)?;
                // Quantity { string = 1 }
                let mut qr = Reader { buf: &q };
                let mut text = String::new();
                while let Some((qn, qf)) = qr.next()? {
                    if let (1, Field::Bytes(t)) = (qn, qf) {
                        text = string(t)?;
                    }
                }
                m.entry(*name).or_insert_with(|| json!({}))[k] = json!(text);
            }
            (F::IntOrString, Field::Bytes(x)) => {
                // IntOrString { type = 1; intVal = 2; strVal = 3 }
                let mut ir = Reader { buf: x };
                let (mut ty, mut iv, mut sv) = (0u64, 0i64, String::new());
                while let Some((inum, ifield)) = ir.next()? {
                    match (inum, ifield) {
                        (1, Field::Varint(t)) => ty = t,
                        (2, Field::Varint(v)) => iv = varint_value(v),
                        (3, Field::Bytes(t)) => sv = string(t)?,
                        _ => {}
                    }
                }
                m.insert((*name).into(), if ty == 1 { json!(sv) } else { json!(iv) });
            }
            (F::Bytes, Field::Bytes(x)) => {
                if !x.is_empty() {
                    m.insert((*name).into(), json!(base64::engine::general_purpose::STANDARD.encode(x)));
                }
            }
            (F::Time, Field::Bytes(x)) => {
                let mut tr = Reader { buf: x };
                let mut secs = 0i64;
                while let Some((tn, tf)) = tr.next()? {
                    if let (1, Field::Varint(v)) = (tn, tf) {
                        secs = varint_value(v);
                    }
                }
                if let Some(t) = chrono::DateTime::from_timestamp(secs, 0) {
                    m.insert((*name).into(), json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
                }
            }
            _ => return Err(ProtoError::Unsupported(format!("{msg}.{name}: unexpected wire type"))),
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
        "Deployment"
        | "Job"
        | "CronJob"
        | "ServiceAccount"
        | "Role"
        | "ClusterRole"
        | "RoleBinding"
        | "ClusterRoleBinding"
        | "SelfSubjectAccessReview"
        | "SubjectAccessReview"
        | "SelfSubjectRulesReview"
        | "SelfSubjectReview"
        | "CertificateSigningRequest"
            if matches!(
                (kind.as_str(), api_version.as_str()),
                ("Deployment", "apps/v1")
                    | ("Job" | "CronJob", "batch/v1")
                    | ("ServiceAccount", "v1")
                    | ("Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding", "rbac.authorization.k8s.io/v1")
                    | (
                        "SelfSubjectAccessReview" | "SubjectAccessReview" | "SelfSubjectRulesReview",
                        "authorization.k8s.io/v1"
                    )
                    | ("SelfSubjectReview", "authentication.k8s.io/v1")
                    | ("CertificateSigningRequest", "certificates.k8s.io/v1")
            ) =>
        {
            let mut v = schema_message(&kind, raw, 0)?;
            if let Value::Object(m) = &mut v {
                m.insert("apiVersion".into(), json!(api_version));
                m.insert("kind".into(), json!(kind));
            }
            Ok(v)
        }
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

    fn varint_field(n: u64, v: u8) -> Vec<u8> {
        vec![(n << 3) as u8, v]
    }

    fn envelope(api_version: &[u8], kind: &[u8], raw: &[u8]) -> Vec<u8> {
        let unknown = [field(1, &[field(1, api_version), field(2, kind)].concat()), field(2, raw)].concat();
        [b"k8s\0".to_vec(), unknown].concat()
    }

    #[test]
    fn decodes_a_generated_deployment_and_rejects_unknown_data() {
        let labels = field(11, &[field(1, b"app"), field(2, b"web")].concat());
        let port = [varint_field(2, 0), varint_field(3, 80), field(4, b"TCP")].concat();
        let container = [field(1, b"c"), field(2, b"nginx"), field(6, &port), field(8, b"")].concat();
        let pod_spec = [field(2, &container), field(3, b"Always")].concat();
        let template = [field(1, &labels), field(2, &pod_spec)].concat();
        let selector = field(1, &[field(1, b"app"), field(2, b"web")].concat());
        let spec =
            [varint_field(1, 3), field(2, &selector), field(3, &template), field(4, b""), varint_field(5, 0)].concat();
        let status = [varint_field(1, 0), varint_field(2, 0)].concat();
        let dep = [field(1, &field(1, b"web")), field(2, &spec), field(3, &status)].concat();
        let v = decode(&envelope(b"apps/v1", b"Deployment", &dep)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "strategy": {},
                    "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"restartPolicy": "Always",
                        "containers": [{"name": "c", "image": "nginx", "resources": {}, "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}}}})
        );
        // A container field outside the table (livenessProbe = 10) with data is refused, not dropped.
        let container = [field(1, b"c"), field(10, &field(1, b"x"))].concat();
        let dep = [field(2, &field(3, &field(2, &field(2, &container))))].concat();
        assert!(matches!(decode(&envelope(b"apps/v1", b"Deployment", &dep)), Err(ProtoError::Unsupported(_))));
        assert!(matches!(decode(&envelope(b"v1", b"Pod", b"")), Err(ProtoError::Unsupported(_))));
        assert_eq!(decode(b"{}"), Err(ProtoError::NoEnvelope));
    }
}
