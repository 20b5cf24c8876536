//! The DefaultTolerationSeconds admission: every new pod tolerates the
//! `node.kubernetes.io/not-ready` and `node.kubernetes.io/unreachable` NoExecute taints for a
//! bounded time unless it already says how it tolerates them. This is what turns a dead node into
//! evicted (and, through their controllers, replaced) pods after a known delay instead of at
//! once: the node lifecycle controller evicts when the toleration runs out.
//!
//! keelson defaults to 30 s (upstream: 300 s, with `--default-not-ready-toleration-seconds` and
//! `--default-unreachable-toleration-seconds` to choose), so that with the node lifecycle
//! controller's 20 s grace period a dead node's pods are gone within a minute.

use serde_json::{Value, json};

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The seconds given to pods that do not say otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultTolerationSeconds {
    pub not_ready: i64,
    pub unreachable: i64,
}

impl Default for DefaultTolerationSeconds {
    fn default() -> Self {
        DefaultTolerationSeconds { not_ready: 30, unreachable: 30 }
    }
}

/// Whether an existing toleration already covers `key`'s NoExecute taint (upstream's test: the
/// same key or no key, NoExecute or no effect).
fn covers(tol: &Value, key: &str) -> bool {
    let k = tol.get("key").and_then(Value::as_str).unwrap_or_default();
    let e = tol.get("effect").and_then(Value::as_str).unwrap_or_default();
    (k == key || k.is_empty()) && (e == "NoExecute" || e.is_empty())
}

/// Adds the default tolerations to a pod being created.
pub fn admit(pod: &mut Value, d: DefaultTolerationSeconds) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let tols = spec.entry("tolerations").or_insert_with(|| json!([]));
    if tols.is_null() {
        *tols = json!([]);
    }
    let Some(list) = tols.as_array_mut() else { return };
    for (key, secs) in [(NOT_READY, d.not_ready), (UNREACHABLE, d.unreachable)] {
        if !list.iter().any(|t| covers(t, key)) {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": secs}));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const D: DefaultTolerationSeconds = DefaultTolerationSeconds { not_ready: 30, unreachable: 40 };

    #[test]
    fn a_pod_without_tolerations_gets_both() {
        let mut pod = json!({"spec": {"containers": []}});
        admit(&mut pod, D);
        assert_eq!(
            pod["spec"]["tolerations"],
            json!([
                {"key": NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
                {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 40},
            ])
        );
    }

    #[test]
    fn existing_tolerations_are_kept_and_not_doubled() {
        let own = json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5});
        let mut pod = json!({"spec": {"tolerations": [own.clone(), {"key": "other", "operator": "Exists"}]}});
        admit(&mut pod, D);
        let tols = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tols.len(), 3);
        assert_eq!(tols[0], own);
        assert_eq!(tols[2]["key"], NOT_READY);
    }

    #[test]
    fn tolerate_everything_and_no_effect_cover_both() {
        let mut all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        admit(&mut all, D);
        assert_eq!(all["spec"]["tolerations"].as_array().unwrap().len(), 1);
        let mut forever = json!({"spec": {"tolerations": [{"key": NOT_READY, "operator": "Exists"}]}});
        admit(&mut forever, D);
        let tols = forever["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tols.len(), 2, "not-ready covered by an effect-less toleration, unreachable added");
        // NoSchedule does not cover the NoExecute taint.
        let mut ns = json!({"spec": {"tolerations": null}});
        admit(&mut ns, D);
        assert_eq!(ns["spec"]["tolerations"].as_array().unwrap().len(), 2);
    }
}
