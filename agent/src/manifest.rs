//! Static pod manifests: decoding, strict field checking and validation.
//!
//! A manifest file holds one or more YAML (or JSON) documents, each a `v1` Pod. Decoding is strict
//! like the API server's `fieldValidation=Strict`: a field the Pod schema does not know is an error
//! naming its path, because a typo such as `imagePullPolicyy` silently ignored is worse than a
//! rejected pod. Every error names the file, the document and the field, and only that pod is
//! rejected — the other documents and files are unaffected. Strict decoding, names and
//! quantities are the API server's own rules ([`keelson_apimachinery`]), so a manifest the agent
//! accepts is one `kubectl create` would accept too.

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use keelson_apimachinery::objects;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Why one manifest document was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}{doc}: {field}: {reason}", file = file.display(), doc = doc.map(|d| format!(" (document {d})")).unwrap_or_default())]
pub struct ManifestError {
    pub file: PathBuf,
    /// 0-based index of the YAML document in the file, when the file parsed at all.
    pub doc: Option<usize>,
    /// JSON-path-like field (`spec.containers[1].name`); empty for whole-document errors.
    pub field: String,
    pub reason: String,
}

/// One accepted static pod.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticPod {
    pub source: PathBuf,
    pub pod: Pod,
}

/// Decodes every document of a manifest file. Each document yields a pod or an error.
pub fn decode_file(path: &Path, text: &str, node_name: &str) -> Vec<Result<StaticPod, ManifestError>> {
    let err = |doc: Option<usize>, field: &str, reason: String| ManifestError {
        file: path.to_path_buf(),
        doc,
        field: field.to_string(),
        reason,
    };
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: Value = match serde::Deserialize::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(err(Some(i), "", format!("not valid YAML/JSON: {e}"))));
                // A syntax error leaves the rest of the stream unreliable.
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document (e.g. a trailing `---`)
        }
        out.push(
            decode_value(value, node_name)
                .map_err(|(field, reason)| err(Some(i), &field, reason))
                .map(|pod| StaticPod { source: path.to_path_buf(), pod: finalize_static(pod, path, i, node_name) }),
        );
    }
    out
}

/// Decodes and validates one document.
pub fn decode_value(value: Value, _node_name: &str) -> Result<Pod, (String, String)> {
    match (value.get("apiVersion").and_then(Value::as_str), value.get("kind").and_then(Value::as_str)) {
        (Some("v1"), Some("Pod")) => {}
        (None, _) => return Err(("apiVersion".into(), "required (must be \"v1\")".into())),
        (_, None) => return Err(("kind".into(), "required (must be \"Pod\")".into())),
        (a, k) => {
            return Err((
                "kind".into(),
                format!("only v1 Pod manifests are supported, got {}/{}", a.unwrap_or(""), k.unwrap_or("")),
            ));
        }
    }
    // The API server's strict decoding (keelson-apimachinery): same unknown-field paths, same
    // canonical quantities.
    let (typed, unknown) =
        objects::prune_unknown("Pod", value).map_err(|e| ("".to_string(), format!("invalid Pod: {e}")))?;
    if let Some(path) = unknown.into_iter().next() {
        return Err((path, "unknown field".into()));
    }
    let pod: Pod = serde_json::from_value(typed).map_err(|e| ("".to_string(), format!("invalid Pod: {e}")))?;
    validate_pod(&pod)?;
    Ok(pod)
}

/// Static pods get kubelet's treatment: the name is suffixed with the node name, the namespace
/// defaults to `default`, and the UID is a hash of the source and content, so an unchanged manifest
/// keeps its UID across agent restarts (the agent adopts its containers) and an edited one gets a new
/// pod.
fn finalize_static(mut pod: Pod, path: &Path, doc: usize, node_name: &str) -> Pod {
    let mut h = Sha256::new();
    h.update(path.to_string_lossy().as_bytes());
    h.update(doc.to_le_bytes());
    h.update(node_name.as_bytes());
    h.update(serde_json::to_vec(&pod).unwrap_or_default());
    let d = h.finalize();
    let hexs = hex::encode(&d[..16]);
    let uid = format!("{}-{}-{}-{}-{}", &hexs[0..8], &hexs[8..12], &hexs[12..16], &hexs[16..20], &hexs[20..32]);
    let md = &mut pod.metadata;
    let name = md.name.clone().unwrap_or_default();
    md.name = Some(format!("{name}-{node_name}"));
    md.namespace = Some(md.namespace.clone().unwrap_or_else(|| "default".into()));
    md.uid = Some(uid);
    let ann = md.annotations.get_or_insert_with(Default::default);
    ann.insert("kubernetes.io/config.source".into(), "file".into());
    ann.insert("kubernetes.io/config.hash".into(), hexs);
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node_name.to_string());
    }
    pod
}

type FieldErr = (String, String);

/// Validates what the agent relies on, with kubelet/API-server rules and field paths.
pub fn validate_pod(pod: &Pod) -> Result<(), FieldErr> {
    let e = |f: &str, r: &str| Err((f.to_string(), r.to_string()));
    let name = pod.metadata.name.as_deref().unwrap_or("");
    if name.is_empty() {
        return e("metadata.name", "required");
    }
    if !objects::is_dns_subdomain(name) {
        return e(
            "metadata.name",
            &format!("{name:?} is not a DNS-1123 subdomain (lowercase alphanumerics, '-', '.')"),
        );
    }
    if let Some(ns) = pod.metadata.namespace.as_deref()
        && !objects::is_dns_label(ns)
    {
        return e("metadata.namespace", &format!("{ns:?} is not a DNS-1123 label"));
    }
    let Some(spec) = pod.spec.as_ref() else { return e("spec", "required") };
    if spec.containers.is_empty() {
        return e("spec.containers", "at least one container is required");
    }
    match spec.restart_policy.as_deref() {
        None | Some("Always" | "OnFailure" | "Never") => {}
        Some(p) => return e("spec.restartPolicy", &format!("unsupported value {p:?}: Always, OnFailure or Never")),
    }
    match spec.dns_policy.as_deref() {
        None | Some("ClusterFirst" | "ClusterFirstWithHostNet" | "Default" | "None") => {}
        Some(p) => return e("spec.dnsPolicy", &format!("unsupported value {p:?}")),
    }
    if spec.dns_policy.as_deref() == Some("None")
        && spec.dns_config.as_ref().and_then(|c| c.nameservers.as_ref()).is_none_or(|n| n.is_empty())
    {
        return e("spec.dnsConfig.nameservers", "must have at least one nameserver when dnsPolicy is None");
    }
    if spec.host_network == Some(true) {
        return e("spec.hostNetwork", "host-network pods are not supported by this agent yet");
    }
    if let Some(g) = spec.termination_grace_period_seconds
        && g < 0
    {
        return e("spec.terminationGracePeriodSeconds", "must be >= 0");
    }
    let mut seen = BTreeSet::new();
    let groups: [(&str, &[Container]); 2] =
        [("initContainers", spec.init_containers.as_deref().unwrap_or(&[])), ("containers", &spec.containers)];
    for (group, list) in groups {
        for (i, c) in list.iter().enumerate() {
            let f = format!("spec.{group}[{i}]");
            validate_container(c, &f, group == "initContainers")?;
            if !seen.insert(c.name.clone()) {
                return Err((format!("{f}.name"), format!("duplicate container name {:?}", c.name)));
            }
        }
    }
    Ok(())
}

fn validate_container(c: &Container, f: &str, init: bool) -> Result<(), FieldErr> {
    let err = |sub: &str, r: String| Err((format!("{f}.{sub}"), r));
    if !objects::is_dns_label(&c.name) {
        return err("name", format!("{:?} is not a DNS-1123 label", c.name));
    }
    if c.image.as_deref().unwrap_or("").trim().is_empty() {
        return err("image", "required".into());
    }
    if let Some(r) = &c.resources {
        for (kind, map) in [("limits", &r.limits), ("requests", &r.requests)] {
            for (res, q) in map.iter().flatten() {
                let parsed = match res.as_str() {
                    "cpu" => keelson_apimachinery::quantity::to_milli(q).map(|_| ()),
                    _ => keelson_apimachinery::quantity::to_bytes(q).map(|_| ()),
                };
                if let Err(e) = parsed {
                    return err(&format!("resources.{kind}.{res}"), format!("invalid quantity {:?}: {e}", q.0));
                }
            }
        }
    }
    for (i, p) in c.ports.iter().flatten().enumerate() {
        if !(1..=65535).contains(&p.container_port) {
            return err(&format!("ports[{i}].containerPort"), format!("{} is not in 1-65535", p.container_port));
        }
        if let Some(proto) = p.protocol.as_deref()
            && !matches!(proto, "TCP" | "UDP" | "SCTP")
        {
            return err(&format!("ports[{i}].protocol"), format!("unsupported value {proto:?}"));
        }
        if let Some(n) = p.name.as_deref()
            && (n.is_empty() || n.len() > 15 || !n.bytes().any(|b| b.is_ascii_lowercase()) || !objects::is_dns_label(n))
        {
            return err(&format!("ports[{i}].name"), format!("{n:?} is not a valid port name (IANA_SVC_NAME)"));
        }
    }
    for (probe, p) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        if let Some(p) = p {
            if init {
                return err(probe, "init containers may not have probes".into());
            }
            validate_probe(p, &format!("{f}.{probe}"))?;
        }
    }
    Ok(())
}

fn validate_probe(p: &Probe, f: &str) -> Result<(), FieldErr> {
    let handlers = [p.exec.is_some(), p.http_get.is_some(), p.tcp_socket.is_some(), p.grpc.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if handlers != 1 {
        return Err((
            f.to_string(),
            format!("exactly one handler (exec, httpGet, tcpSocket, grpc) required, found {handlers}"),
        ));
    }
    for (name, v) in [
        ("periodSeconds", p.period_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        if let Some(v) = v
            && v < 1
        {
            return Err((format!("{f}.{name}"), "must be >= 1".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: app
    image: keelson.local/busybox:latest
    command: [httpd, -f]
    resources: {limits: {cpu: 200m, memory: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: ns1}
spec:
  containers: [{name: c, image: busybox}]
"#;

    fn decode(text: &str) -> Vec<Result<StaticPod, ManifestError>> {
        decode_file(Path::new("/m/pods.yaml"), text, "node1")
    }

    #[test]
    fn decodes_several_documents_with_static_pod_naming() {
        let pods = decode(GOOD);
        assert_eq!(pods.len(), 2);
        let p = pods[0].as_ref().unwrap();
        assert_eq!(p.pod.metadata.name.as_deref(), Some("web-node1"));
        assert_eq!(p.pod.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(p.pod.spec.as_ref().unwrap().node_name.as_deref(), Some("node1"));
        let q = pods[1].as_ref().unwrap();
        assert_eq!(q.pod.metadata.namespace.as_deref(), Some("ns1"));
        assert_ne!(p.pod.metadata.uid, q.pod.metadata.uid);
    }

    #[test]
    fn uid_is_stable_and_changes_with_content() {
        let a = decode(GOOD)[0].clone().unwrap().pod.metadata.uid;
        let b = decode(GOOD)[0].clone().unwrap().pod.metadata.uid;
        assert_eq!(a, b);
        let c = decode(&GOOD.replace("200m", "300m"))[0].clone().unwrap().pod.metadata.uid;
        assert_ne!(a, c);
    }

    #[test]
    fn json_documents_work() {
        let j = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#;
        assert!(decode(j)[0].is_ok());
    }

    fn first_err(text: &str) -> ManifestError {
        decode(text).into_iter().find_map(Result::err).expect("an error")
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = first_err(&GOOD.replace("command:", "comand:"));
        assert_eq!(e.field, "spec.containers[0].comand");
        assert_eq!(e.doc, Some(0));
        assert!(e.to_string().contains("/m/pods.yaml (document 0): spec.containers[0].comand: unknown field"));
    }

    #[test]
    fn bad_input_is_rejected_with_field_paths() {
        let cases = [
            (GOOD.replace("64Mi", "64Mz"), "spec.containers[0].resources.limits.memory"),
            (GOOD.replace("name: web", "name: Web_1"), "metadata.name"),
            (GOOD.replace("image: keelson.local/busybox:latest", "image: \"\""), "spec.containers[0].image"),
            (
                GOOD.replace(
                    "containers: [{name: c, image: busybox}]",
                    "containers: [{name: c, image: b}, {name: c, image: b}]",
                ),
                "spec.containers[1].name",
            ),
            (GOOD.replace("kind: Pod\nmetadata: {name: web}", "kind: Service\nmetadata: {name: web}"), "kind"),
        ];
        for (text, field) in cases {
            let e = first_err(&text);
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn one_bad_document_does_not_reject_the_others() {
        let pods = decode(&GOOD.replace("64Mi", "lots"));
        assert!(pods[0].is_err());
        assert!(pods[1].is_ok());
    }

    #[test]
    fn yaml_syntax_errors_are_reported() {
        let e = first_err("apiVersion: v1\nkind: [unclosed\n");
        assert!(e.reason.contains("not valid YAML"), "{e}");
    }

    #[test]
    fn probes_need_exactly_one_handler() {
        let t = GOOD.replace("command: [httpd, -f]", "command: [httpd, -f]\n    livenessProbe: {periodSeconds: 1}");
        assert_eq!(first_err(&t).field, "spec.containers[0].livenessProbe");
    }
}
