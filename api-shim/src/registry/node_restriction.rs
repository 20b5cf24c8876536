//! NodeRestriction admission (upstream's plugin of that name): what a node may write, beyond
//! what the Node authorizer lets it attempt. A node changes only its own Node object and its own
//! Lease in `kube-node-lease`; it creates only mirror pods (annotation
//! `kubernetes.io/config.mirror`) bound to itself and writes only pods bound to itself; and it
//! cannot set or change labels under `node-restriction.kubernetes.io/`, nor `kubernetes.io` /
//! `k8s.io` labels other than the ones kubelet itself sets (hostname, os, arch, instance type,
//! zone and region, and the `kubelet.kubernetes.io`/`node.kubernetes.io` namespaces), so a
//! compromised node cannot steer workloads that select on those labels to itself.

use serde_json::Value;

use super::Admit;
use super::rbac::authz::{NODES, UserInfo, forbidden};
use super::rbac::node::NODE_PREFIX;
use crate::error::ApiError;
use crate::resources::ResourceDef;

/// The mirror pod annotation kubelet sets on the API copies of static pods.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

const ALLOWED_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

fn in_domain(domain: &str, of: &str) -> bool {
    domain == of || domain.ends_with(&format!(".{of}"))
}

/// Whether a node may set `key` on itself (pure).
pub fn label_allowed(key: &str) -> bool {
    let Some((domain, _)) = key.split_once('/') else { return true };
    if in_domain(domain, "node-restriction.kubernetes.io") {
        return false;
    }
    if !in_domain(domain, "kubernetes.io") && !in_domain(domain, "k8s.io") {
        return true;
    }
    ALLOWED_LABELS.contains(&key)
        || in_domain(domain, "kubelet.kubernetes.io")
        || in_domain(domain, "node.kubernetes.io")
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

/// Checks a write by node `node` (pure).
pub fn check(node: &str, res: &ResourceDef, new: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let name = s(new, "/metadata/name");
    let deny = |why: String| Err(forbidden(res.group, res.plural, name, &why));
    match (res.group, res.kind) {
        ("", "Node") => {
            if name != node {
                return deny(format!("node {node:?} is not allowed to modify node {name:?}"));
            }
            let labels = |v: Option<&Value>| {
                v.and_then(|v| v.pointer("/metadata/labels")).and_then(Value::as_object).cloned().unwrap_or_default()
            };
            let (now, before) = (labels(Some(new)), labels(old));
            let mut changed: Vec<&String> =
                now.keys().chain(before.keys()).filter(|k| now.get(*k) != before.get(*k)).collect();
            changed.sort();
            changed.dedup();
            if let Some(k) = changed.into_iter().find(|k| !label_allowed(k)) {
                return deny(format!("is not allowed to modify labels: {k}"));
            }
            Ok(())
        }
        ("", "Pod") => {
            let bound = |v: &Value| s(v, "/spec/nodeName") == node;
            match old {
                None => {
                    if new.pointer(&format!("/metadata/annotations/{}", MIRROR_ANNOTATION.replace('/', "~1"))).is_none()
                    {
                        return deny(format!(
                            "pod does not have {MIRROR_ANNOTATION:?} annotation, node {node:?} can only create mirror pods"
                        ));
                    }
                    if !bound(new) {
                        return deny(format!("node {node:?} can only create pods with spec.nodeName set to itself"));
                    }
                    Ok(())
                }
                Some(old) if bound(old) => Ok(()),
                Some(_) => deny(format!("node {node:?} can only update pods bound to it")),
            }
        }
        ("coordination.k8s.io", "Lease") => {
            if s(new, "/metadata/namespace") != "kube-node-lease" || name != node {
                return deny(format!("can only access node lease with the same name as the requesting node {node:?}"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The admission check for `user` if it is a node.
pub fn admission(user: Option<&UserInfo>) -> Option<Admit> {
    let user = user?;
    if !user.groups.iter().any(|g| g == NODES) {
        return None;
    }
    let node = user.name.strip_prefix(NODE_PREFIX).filter(|n| !n.is_empty())?.to_string();
    Some(Admit(std::sync::Arc::new(move |res: &ResourceDef, new: &Value, old: Option<&Value>| {
        check(&node, res, new, old)
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::resources;
    use serde_json::json;

    #[test]
    fn labels_kubelet_may_set() {
        for ok in [
            "kubernetes.io/hostname",
            "topology.kubernetes.io/zone",
            "kubelet.kubernetes.io/x",
            "node.kubernetes.io/y",
            "example.com/z",
            "plain",
        ] {
            assert!(label_allowed(ok), "{ok}");
        }
        for bad in [
            "node-restriction.kubernetes.io/trusted",
            "a.node-restriction.kubernetes.io/x",
            "node-role.kubernetes.io/control-plane",
            "k8s.io/x",
            "foo.k8s.io/y",
        ] {
            assert!(!label_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn nodes_write_only_their_own_objects() {
        let r = |p: &str| resources::RESOURCES.iter().find(|r| r.plural == p).unwrap();
        let node = json!({"metadata": {"name": "a", "labels": {"kubernetes.io/hostname": "a"}}});
        check("a", r("nodes"), &node, None).unwrap();
        assert_eq!(check("b", r("nodes"), &node, None).unwrap_err().code(), 403);
        let mut role = node.clone();
        role["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("");
        let err = check("a", r("nodes"), &role, Some(&node)).unwrap_err();
        assert!(err.to_string().contains("node-role.kubernetes.io/control-plane"), "{err}");
        // An admin-set restricted label may stay while the node updates its status.
        check("a", r("nodes"), &role, Some(&role)).unwrap();
        let mirror =
            json!({"metadata": {"name": "m", "annotations": {MIRROR_ANNOTATION: "x"}}, "spec": {"nodeName": "a"}});
        check("a", r("pods"), &mirror, None).unwrap();
        let plain = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "a"}});
        assert_eq!(check("a", r("pods"), &plain, None).unwrap_err().code(), 403);
        assert_eq!(check("b", r("pods"), &mirror, None).unwrap_err().code(), 403);
        check("a", r("pods"), &plain, Some(&plain)).unwrap();
        assert_eq!(check("b", r("pods"), &plain, Some(&plain)).unwrap_err().code(), 403);
        let lease = json!({"metadata": {"name": "a", "namespace": "kube-node-lease"}});
        check("a", r("leases"), &lease, None).unwrap();
        assert_eq!(check("b", r("leases"), &lease, None).unwrap_err().code(), 403);
        assert!(admission(Some(&UserInfo { name: "system:node:a".into(), groups: vec![NODES.into()] })).is_some());
        assert!(admission(Some(&UserInfo { name: "system:node:a".into(), groups: vec![] })).is_none());
    }
}
