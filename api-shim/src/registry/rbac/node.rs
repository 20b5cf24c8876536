//! The Node authorizer (upstream's `--authorization-mode=Node`), consulted before RBAC.
//!
//! A caller `system:node:<name>` in group `system:nodes` gets the fixed node rules (read nodes,
//! pods, services, endpoints and slices; write events, its Lease, its CSRs; create pods, which
//! NodeRestriction admission narrows to its own mirror pods) and, for objects that hold secrets,
//! only what a pod bound to it needs: `get` of a Secret, ConfigMap or PVC, or a token of a
//! ServiceAccount, is allowed when a pod with `spec.nodeName=<name>` in that namespace references
//! it (volumes, env, envFrom, imagePullSecrets, serviceAccountName). Pod status updates and
//! deletes need the pod to be bound to the node. Anything else gets no opinion, so RBAC decides
//! (and grants nodes nothing by default).
//!
//! Upstream keeps a graph updated by informers; here the pods of the one namespace are read per
//! graph-checked request (through the watch cache with etcd). Nodes ask for a secret when a pod
//! starts, not per packet, so this is cheap enough and can never be stale.

use std::sync::Arc;

use serde_json::Value;

use super::authz::{Attributes, NODES};
use crate::registry::{Api, ListOpts};
use crate::resources;

pub const NODE_PREFIX: &str = "system:node:";

/// The node a caller is, if it is one.
pub fn node_of(a: &Attributes) -> Option<&str> {
    if !a.groups.iter().any(|g| g == NODES) {
        return None;
    }
    a.user.strip_prefix(NODE_PREFIX).filter(|n| !n.is_empty())
}

/// Objects a pod refers to by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Secret,
    ConfigMap,
    Pvc,
    ServiceAccount,
}

/// What a node's request needs to be allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Allow,
    /// Not for this authorizer: RBAC decides.
    NoOpinion,
    /// A pod bound to the node in `namespace` must reference `name`.
    Reference {
        kind: RefKind,
        namespace: String,
        name: String,
    },
    /// The pod `namespace/name` must be bound to the node.
    BoundPod {
        namespace: String,
        name: String,
    },
}

/// Classifies a node's request (pure).
pub fn classify(node: &str, a: &Attributes) -> Need {
    if !a.resource_request {
        return Need::NoOpinion;
    }
    let v = a.verb.as_str();
    let read = matches!(v, "get" | "list" | "watch");
    let own = a.name == node;
    let reference = |kind| {
        if v == "get" && !a.name.is_empty() && a.subresource.is_empty() {
            Need::Reference { kind, namespace: a.namespace.clone(), name: a.name.clone() }
        } else {
            Need::NoOpinion
        }
    };
    let bound = || Need::BoundPod { namespace: a.namespace.clone(), name: a.name.clone() };
    let allow = |yes: bool| if yes { Need::Allow } else { Need::NoOpinion };
    match (a.api_group.as_str(), a.resource.as_str(), a.subresource.as_str()) {
        ("", "secrets", _) => reference(RefKind::Secret),
        ("", "configmaps", _) => reference(RefKind::ConfigMap),
        ("", "persistentvolumeclaims", _) => reference(RefKind::Pvc),
        ("", "serviceaccounts", "token") if v == "create" => {
            Need::Reference { kind: RefKind::ServiceAccount, namespace: a.namespace.clone(), name: a.name.clone() }
        }
        ("", "nodes", "" | "status") => allow(
            read || (v == "create" && a.subresource.is_empty()) || (matches!(v, "update" | "patch" | "delete") && own),
        ),
        ("", "pods", "") => match v {
            "get" | "list" | "watch" | "create" => Need::Allow,
            "delete" => bound(),
            _ => Need::NoOpinion,
        },
        ("", "pods", "status") if matches!(v, "update" | "patch") => bound(),
        ("", "pods", "eviction") if v == "create" => bound(),
        ("", "services" | "endpoints", "") | ("discovery.k8s.io", "endpointslices", "") => allow(read),
        ("" | "events.k8s.io", "events", "") => allow(matches!(v, "create" | "update" | "patch")),
        ("coordination.k8s.io", "leases", "") => allow(
            a.namespace == "kube-node-lease"
                && (v == "create" || (matches!(v, "get" | "update" | "patch" | "delete") && own)),
        ),
        ("certificates.k8s.io", "certificatesigningrequests", "") => allow(read || v == "create"),
        ("authentication.k8s.io", "tokenreviews", "")
        | ("authorization.k8s.io", "subjectaccessreviews" | "localsubjectaccessreviews", "") => allow(v == "create"),
        _ => Need::NoOpinion,
    }
}

fn names<'a>(v: &'a Value, pointer: &str) -> impl Iterator<Item = &'a str> {
    v.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty()).into_iter()
}

/// The names of `kind` objects `pod` references (pure).
pub fn references(pod: &Value, kind: RefKind) -> Vec<String> {
    let spec = pod.get("spec").cloned().unwrap_or(Value::Null);
    let arr = |v: &Value, k: &str| v.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: &str| {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    };
    let containers: Vec<Value> =
        ["containers", "initContainers", "ephemeralContainers"].iter().flat_map(|k| arr(&spec, k)).collect();
    match kind {
        RefKind::ServiceAccount => {
            names(&spec, "/serviceAccountName").for_each(&mut push);
        }
        RefKind::Pvc => {
            for vol in arr(&spec, "volumes") {
                names(&vol, "/persistentVolumeClaim/claimName").for_each(&mut push);
                if vol.get("ephemeral").is_some() {
                    let pod_name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
                    let vol_name = vol.get("name").and_then(Value::as_str).unwrap_or_default();
                    push(&format!("{pod_name}-{vol_name}"));
                }
            }
        }
        RefKind::Secret | RefKind::ConfigMap => {
            let secret = kind == RefKind::Secret;
            let (vol_key, vol_field, proj_key, key_ref, from_ref) = if secret {
                ("secret", "secretName", "secret", "secretKeyRef", "secretRef")
            } else {
                ("configMap", "name", "configMap", "configMapKeyRef", "configMapRef")
            };
            for vol in arr(&spec, "volumes") {
                names(&vol, &format!("/{vol_key}/{vol_field}")).for_each(&mut push);
                for src in vol.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten() {
                    names(src, &format!("/{proj_key}/name")).for_each(&mut push);
                }
                if secret {
                    for p in ["/csi/nodePublishSecretRef/name", "/cephfs/secretRef/name", "/rbd/secretRef/name"] {
                        names(&vol, p).for_each(&mut push);
                    }
                }
            }
            for c in &containers {
                for e in arr(c, "env") {
                    names(&e, &format!("/valueFrom/{key_ref}/name")).for_each(&mut push);
                }
                for e in arr(c, "envFrom") {
                    names(&e, &format!("/{from_ref}/name")).for_each(&mut push);
                }
            }
            if secret {
                for s in arr(&spec, "imagePullSecrets") {
                    names(&s, "/name").for_each(&mut push);
                }
            }
        }
    }
    out
}

/// The Node authorizer, reading pods through the registry.
pub struct NodeAuthorizer {
    api: Arc<Api>,
}

/// The authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeDecision {
    Allow,
    /// RBAC decides; `Some` says why the node rules did not allow it (added to a 403).
    NoOpinion(Option<String>),
}

impl NodeAuthorizer {
    pub fn new(api: Arc<Api>) -> Self {
        NodeAuthorizer { api }
    }

    pub async fn authorize(&self, a: &Attributes) -> NodeDecision {
        let Some(node) = node_of(a) else { return NodeDecision::NoOpinion(None) };
        let no_relation =
            || NodeDecision::NoOpinion(Some(format!("no relationship found between node '{node}' and this object")));
        let Some(pods) = resources::find("", "v1", "pods") else { return NodeDecision::NoOpinion(None) };
        match classify(node, a) {
            Need::Allow => NodeDecision::Allow,
            Need::NoOpinion => NodeDecision::NoOpinion(None),
            Need::BoundPod { namespace, name } => match self.api.get(pods, Some(&namespace), &name).await {
                Ok(p) if p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node) => NodeDecision::Allow,
                _ => no_relation(),
            },
            Need::Reference { kind, namespace, name } => {
                let Ok((items, _, _)) = self.api.list(pods, Some(&namespace), &ListOpts::default()).await else {
                    return no_relation();
                };
                let related = items.iter().any(|p| {
                    p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                        && references(p, kind).contains(&name)
                });
                if related { NodeDecision::Allow } else { no_relation() }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes {
            user: "system:node:a".into(),
            groups: vec![NODES.into(), "system:authenticated".into()],
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            api_version: "v1".into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    #[test]
    fn only_node_identities_are_nodes() {
        let a = attrs("get", "", "pods", "", "", "");
        assert_eq!(node_of(&a), Some("a"));
        assert_eq!(node_of(&Attributes { groups: vec![], ..a.clone() }), None);
        assert_eq!(node_of(&Attributes { user: "system:node:".into(), ..a }), None);
    }

    #[test]
    fn node_rules() {
        let c = |verb, group, res, sub, ns, name| classify("a", &attrs(verb, group, res, sub, ns, name));
        assert_eq!(c("list", "", "pods", "", "", ""), Need::Allow);
        assert_eq!(c("watch", "", "services", "", "", ""), Need::Allow);
        assert_eq!(c("update", "", "nodes", "status", "", "a"), Need::Allow);
        assert_eq!(c("update", "", "nodes", "status", "", "b"), Need::NoOpinion);
        assert_eq!(c("delete", "", "nodes", "", "", "b"), Need::NoOpinion);
        assert_eq!(c("update", "coordination.k8s.io", "leases", "", "kube-node-lease", "a"), Need::Allow);
        assert_eq!(c("update", "coordination.k8s.io", "leases", "", "kube-node-lease", "b"), Need::NoOpinion);
        assert_eq!(c("update", "coordination.k8s.io", "leases", "", "default", "a"), Need::NoOpinion);
        assert_eq!(c("create", "certificates.k8s.io", "certificatesigningrequests", "", "", ""), Need::Allow);
        assert_eq!(c("create", "", "events", "", "ns", ""), Need::Allow);
        assert_eq!(c("list", "", "secrets", "", "ns", ""), Need::NoOpinion, "nodes never list secrets");
        assert_eq!(
            c("get", "", "secrets", "", "ns", "s"),
            Need::Reference { kind: RefKind::Secret, namespace: "ns".into(), name: "s".into() }
        );
        assert_eq!(
            c("patch", "", "pods", "status", "ns", "p"),
            Need::BoundPod { namespace: "ns".into(), name: "p".into() }
        );
        assert_eq!(c("update", "", "pods", "", "ns", "p"), Need::NoOpinion, "pod specs are not the node's");
        assert_eq!(c("delete", "apps", "deployments", "", "ns", "d"), Need::NoOpinion);
    }

    #[test]
    fn references_cover_volumes_env_and_pull_secrets() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "serviceAccountName": "sa",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "v1", "secret": {"secretName": "vol-secret"}},
                {"name": "v2", "configMap": {"name": "vol-cm"}},
                {"name": "v3", "projected": {"sources": [{"secret": {"name": "proj-secret"}}, {"configMap": {"name": "proj-cm"}}]}},
                {"name": "v4", "persistentVolumeClaim": {"claimName": "claim"}},
                {"name": "v5", "ephemeral": {}},
            ],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
            ], "envFrom": [{"configMapRef": {"name": "from-cm"}}]}],
        }});
        assert_eq!(references(&pod, RefKind::Secret), ["vol-secret", "proj-secret", "env-secret", "init-env", "pull"]);
        assert_eq!(references(&pod, RefKind::ConfigMap), ["vol-cm", "proj-cm", "env-cm", "from-cm"]);
        assert_eq!(references(&pod, RefKind::Pvc), ["claim", "p-v5"]);
        assert_eq!(references(&pod, RefKind::ServiceAccount), ["sa"]);
        assert!(references(&json!({}), RefKind::Secret).is_empty());
    }
}
