//! Create-time defaulting per kind (pod specs and templates, workloads, Services, …), as
//! upstream's `SetDefaults_*` functions.

use serde_json::{Map, Value, json};

use super::{pod_qos, str_at};
use crate::resources::ResourceDef;
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

/// Folds a Secret's write-only `stringData` into `data` (base64), as upstream's conversion does
/// on every write: a `stringData` key replaces the `data` key of the same name, and `stringData`
/// itself is never stored or returned. Other kinds are left alone.
pub fn fold_string_data(res: &ResourceDef, obj: &mut Value) {
    use base64::Engine as _;
    if res.kind != "Secret" {
        return;
    }
    let Some(Value::Object(string)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) else { return };
    let Some(m) = obj.as_object_mut() else { return };
    let data = m.entry("data").or_insert_with(|| Value::Object(Map::new()));
    if !data.is_object() {
        *data = Value::Object(Map::new());
    }
    if let Value::Object(d) = data {
        for (k, v) in string {
            let text = v.as_str().unwrap_or_default();
            d.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(text)));
        }
    }
}

/// Applies create-time defaults for `res`.
pub fn apply_defaults(res: &ResourceDef, obj: &mut Value) {
    fold_string_data(res, obj);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn string_data_is_folded_into_data_and_never_stored() {
        let res = crate::resources::find_kind("v1", "Secret").unwrap();
        let mut s = json!({"metadata": {"name": "s"}, "data": {"a": "eA==", "keep": "eQ=="},
                           "stringData": {"a": "hello", "b": ""}});
        apply_defaults(res, &mut s);
        assert_eq!(s.get("stringData"), None);
        assert_eq!(s["data"], json!({"a": "aGVsbG8=", "b": "", "keep": "eQ=="}));
        assert_eq!(s["type"], "Opaque");
        // Other kinds keep a field of that name untouched (schema checks reject it elsewhere).
        let cm = crate::resources::find_kind("v1", "ConfigMap").unwrap();
        let mut c = json!({"stringData": {"a": "b"}});
        fold_string_data(cm, &mut c);
        assert_eq!(c["stringData"]["a"], "b");
    }
}
