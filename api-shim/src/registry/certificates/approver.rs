//! Which kubelet client CSRs are approved automatically (upstream's csrapproving controller):
//! a request whose subject is a node's (`CN=system:node:<name>`, `O=system:nodes`, client
//! usages, no SANs) is approved if its requester may `create` the subresource
//! `certificatesigningrequests/selfnodeclient` (renewing its own identity: the requester *is*
//! that node) or `certificatesigningrequests/nodeclient` (asking for any node identity: the
//! bootstrappers). The decision is pure; the caller answers the access check.

use serde_json::Value;

use super::{GROUP, KUBELET_CLIENT, Subject, has_condition, parse_request, usages};
use crate::registry::rbac::authz::Attributes;

/// Usages a kubelet client certificate may carry; `client auth` is required.
const NODE_CLIENT_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];

/// Whether `subject` and `usages` are those of a node client certificate (upstream's
/// `ValidateKubeletClientCSR`); the error says why not.
pub fn check_node_client(subject: &Subject, usages: &[&str]) -> Result<(), String> {
    if subject.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if !subject.common_name.starts_with("system:node:") || subject.common_name.len() == "system:node:".len() {
        return Err("subject common name does not begin with system:node:".into());
    }
    if subject.has_sans {
        return Err("subject alternative names are not allowed".into());
    }
    if !usages.contains(&"client auth") || usages.iter().any(|u| !NODE_CLIENT_USAGES.contains(u)) {
        return Err(format!("usages did not match {NODE_CLIENT_USAGES:?}"));
    }
    Ok(())
}

/// The access checks that would approve `csr`, most specific first; empty when the CSR is not a
/// node client request awaiting a decision.
pub fn checks(csr: &Value) -> Vec<Attributes> {
    if has_condition(csr, "Approved") || has_condition(csr, "Denied") {
        return Vec::new();
    }
    if csr.pointer("/spec/signerName").and_then(Value::as_str) != Some(KUBELET_CLIENT) {
        return Vec::new();
    }
    let Ok(subject) = parse_request(csr) else { return Vec::new() };
    if check_node_client(&subject, &usages(csr)).is_err() {
        return Vec::new();
    }
    let user = csr.pointer("/spec/username").and_then(Value::as_str).unwrap_or_default().to_string();
    let groups: Vec<String> = csr
        .pointer("/spec/groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str().map(str::to_string))
        .collect();
    let attrs = |sub: &str| Attributes {
        user: user.clone(),
        groups: groups.clone(),
        verb: "create".into(),
        resource_request: true,
        api_group: GROUP.into(),
        api_version: "v1".into(),
        resource: "certificatesigningrequests".into(),
        subresource: sub.into(),
        ..Default::default()
    };
    let mut out = Vec::new();
    if user == subject.common_name {
        out.push(attrs("selfnodeclient"));
    }
    out.push(attrs("nodeclient"));
    out
}

/// The condition the approver adds.
pub fn approved_condition(now: &str) -> Value {
    serde_json::json!({
        "type": "Approved", "status": "True", "reason": "AutoApproved",
        "message": "Auto approving kubelet client certificate after SubjectAccessReview.",
        "lastUpdateTime": now, "lastTransitionTime": now,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::csr;
    use super::*;
    use serde_json::json;

    fn with_requester(mut c: Value, user: &str, groups: &[&str]) -> Value {
        c["spec"]["username"] = json!(user);
        c["spec"]["groups"] = json!(groups);
        c
    }

    #[test]
    fn node_requests_need_the_matching_subresource() {
        let node = csr("system:node:a", &["system:nodes"], KUBELET_CLIENT, &["digital signature", "client auth"]);
        let boot = checks(&with_requester(node.clone(), "system:bootstrap:abcdef", &["system:bootstrappers"]));
        assert_eq!(boot.iter().map(|a| a.subresource.as_str()).collect::<Vec<_>>(), ["nodeclient"]);
        assert_eq!(boot[0].user, "system:bootstrap:abcdef");
        let renew = checks(&with_requester(node.clone(), "system:node:a", &["system:nodes"]));
        assert_eq!(renew.iter().map(|a| a.subresource.as_str()).collect::<Vec<_>>(), ["selfnodeclient", "nodeclient"]);
        // Not a node subject, wrong signer, extra usages, or already decided: nothing to check.
        let other = csr("alice", &["system:nodes"], KUBELET_CLIENT, &["client auth"]);
        assert!(checks(&with_requester(other, "alice", &[])).is_empty());
        let signer = csr("system:node:a", &["system:nodes"], super::super::APISERVER_CLIENT, &["client auth"]);
        assert!(checks(&signer).is_empty());
        let server = csr("system:node:a", &["system:nodes"], KUBELET_CLIENT, &["client auth", "server auth"]);
        assert!(checks(&server).is_empty());
        let two_orgs = csr("system:node:a", &["system:nodes", "system:masters"], KUBELET_CLIENT, &["client auth"]);
        assert!(checks(&two_orgs).is_empty());
        let mut denied = node.clone();
        denied["status"] = json!({"conditions": [{"type": "Denied", "status": "True"}]});
        assert!(checks(&denied).is_empty());
    }
}
