//! The scale and binding subresources.

use serde_json::{Value, json};

use super::{Api, WriteOpts, conflict, invalid};
use crate::error::{ApiError, Cause};
use crate::objects::FieldValidation;
use crate::resources::{self, ResourceDef};

impl Api {
    pub fn scale_of(res: &ResourceDef, obj: &Value) -> Value {
        let sel = match res.kind {
            "ReplicationController" => obj
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
            _ => {
                let s = obj.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
                let mut parts: Vec<String> = s
                    .get("matchLabels")
                    .and_then(Value::as_object)
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
                    .unwrap_or_default();
                parts.sort();
                parts.join(",")
            }
        };
        let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
        let mut m = serde_json::Map::new();
        for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
            if let Some(v) = meta.get(k) {
                m.insert(k.into(), v.clone());
            }
        }
        json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": m,
            "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
            "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": sel},
        })
    }

    /// Binds a pod to a node (pods/binding).
    pub async fn bind(&self, ns: &str, name: &str, binding: &Value) -> Result<Value, ApiError> {
        let pods = resources::find("", "v1", "pods").ok_or(ApiError::NoRoute)?;
        let node = binding.pointer("/target/name").and_then(Value::as_str).unwrap_or_default().to_string();
        if node.is_empty() {
            return Err(invalid(pods, name, vec![Cause::required("target.name")]));
        }
        let opts = WriteOpts { field_validation: FieldValidation::Ignore, ..Default::default() };
        self.update_with(pods, Some(ns), name, None, &opts, |cur| {
            if cur.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
                return Err(conflict(
                    pods,
                    name,
                    &format!(
                        "pod {name} is already assigned to node {:?}",
                        cur.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default()
                    ),
                ));
            }
            if cur.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(conflict(pods, name, "pod is being deleted, cannot be assigned to a host"));
            }
            let mut n = cur.clone();
            n["spec"]["nodeName"] = json!(node);
            Ok((n, None))
        })
        .await?;
        Ok(crate::error::success_status(json!({})))
    }

    /// Applies `f` to the Scale view and writes spec.replicas back to the parent; returns the new Scale.
    pub async fn update_scale(
        &self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        opts: &WriteOpts,
        f: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let (out, _) = self
            .update_with(res, ns, name, None, opts, |cur| {
                let scale = Api::scale_of(res, cur);
                let new_scale = f(&scale)?;
                let replicas =
                    new_scale.pointer("/spec/replicas").and_then(Value::as_i64).ok_or_else(|| ApiError::Invalid {
                        group: "autoscaling".into(),
                        kind: "Scale".into(),
                        name: name.into(),
                        causes: vec![crate::error::Cause::required("spec.replicas")],
                    })?;
                if replicas < 0 {
                    return Err(ApiError::Invalid {
                        group: "autoscaling".into(),
                        kind: "Scale".into(),
                        name: name.into(),
                        causes: vec![crate::error::Cause::invalid(
                            "spec.replicas",
                            replicas,
                            "must be greater than or equal to 0",
                        )],
                    });
                }
                let rv = new_scale.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
                let mut n = cur.clone();
                n["spec"]["replicas"] = json!(replicas);
                Ok((n, rv))
            })
            .await?;
        Ok(Api::scale_of(res, &out))
    }
}
