//! `kube-public/cluster-info`: the server URL and CA in a kubeconfig, readable without
//! credentials (kubeadm's shape and RBAC: Role `kubeadm:bootstrap-signer-clusterinfo` bound to
//! `system:anonymous`). A joining node reads it over an unverified connection and trusts the CA
//! only if the hash of its public key equals the one it was given out of band.

use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::objects::FieldValidation;
use crate::registry::{Api, WriteOpts};
use crate::resources;

pub const NAMESPACE: &str = "kube-public";
pub const NAME: &str = "cluster-info";
/// The one path the anonymous user may reach (besides health and version).
pub const PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
const ROLE: &str = "kubeadm:bootstrap-signer-clusterinfo";

/// The kubeconfig stored under `data.kubeconfig` (a cluster, no users).
pub fn kubeconfig(server_url: &str, ca_pem: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server_url}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n"
    )
}

fn objects(server_url: &str, ca_pem: &str) -> Vec<(&'static str, &'static str, Value)> {
    let rbac = "rbac.authorization.k8s.io";
    vec![
        (
            "",
            "configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": NAME, "namespace": NAMESPACE},
                   "data": {"kubeconfig": kubeconfig(server_url, ca_pem)}}),
        ),
        (
            rbac,
            "roles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": ROLE, "namespace": NAMESPACE},
                   "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [NAME]}]}),
        ),
        (
            rbac,
            "rolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": ROLE, "namespace": NAMESPACE},
                   "roleRef": {"apiGroup": rbac, "kind": "Role", "name": ROLE},
                   "subjects": [{"apiGroup": rbac, "kind": "User", "name": crate::registry::rbac::authz::ANONYMOUS}]}),
        ),
    ]
}

/// Creates or refreshes the ConfigMap (the URL or CA may have changed) and its RBAC.
pub async fn ensure(api: &Arc<Api>, server_url: &str, ca_pem: &str) -> Result<(), ApiError> {
    let opts = WriteOpts { field_validation: FieldValidation::Strict, ..Default::default() };
    for (group, plural, obj) in objects(server_url, ca_pem) {
        let res = resources::find(group, "v1", plural).ok_or(ApiError::NoRoute)?;
        match api.create(res, Some(NAMESPACE), obj.clone(), &opts).await {
            Ok(_) => {}
            Err(ApiError::AlreadyExists { .. }) => {
                let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
                api.update_with(res, Some(NAMESPACE), &name, None, &opts, |cur| {
                    let mut n = cur.clone();
                    for f in ["data", "rules", "subjects"] {
                        if let Some(v) = obj.get(f) {
                            n[f] = v.clone();
                        }
                    }
                    Ok((n, None))
                })
                .await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
