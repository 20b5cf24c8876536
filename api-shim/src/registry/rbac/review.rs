//! The access-review APIs (`SubjectAccessReview`, `SelfSubjectAccessReview`,
//! `SelfSubjectRulesReview`, `SelfSubjectReview`): create-only resources answered from the
//! policy cache, never stored.

use serde_json::{Value, json};

use super::Authorizer;
use super::authz::{Attributes, Rule, UserInfo};
use crate::error::{ApiError, Cause};
use crate::resources::ResourceDef;

fn invalid(kind: &str, group: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::Invalid { group: group.into(), kind: kind.into(), name: String::new(), causes }
}

/// Attributes from a SubjectAccessReview spec (`user`/`groups` are the subject's).
fn review_attributes(kind: &str, spec: &Value, user: &str, groups: &[String]) -> Result<Attributes, ApiError> {
    let res = spec.get("resourceAttributes").filter(|v| v.is_object());
    let non = spec.get("nonResourceAttributes").filter(|v| v.is_object());
    let s = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
    let mut a = Attributes { user: user.into(), groups: groups.to_vec(), ..Default::default() };
    match (res, non) {
        (Some(r), None) => {
            a.resource_request = true;
            a.verb = s(r, "verb");
            a.api_group = s(r, "group");
            a.api_version = s(r, "version");
            a.resource = s(r, "resource");
            a.subresource = s(r, "subresource");
            a.namespace = s(r, "namespace");
            a.name = s(r, "name");
        }
        (None, Some(n)) => {
            a.verb = s(n, "verb");
            a.path = s(n, "path");
        }
        _ => {
            return Err(invalid(
                kind,
                "authorization.k8s.io",
                vec![Cause::invalid(
                    "spec.resourceAttributes",
                    "",
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                )],
            ));
        }
    }
    Ok(a)
}

fn with_status(mut body: Value, api_version: &str, kind: &str, status: Value) -> Value {
    if let Value::Object(m) = &mut body {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
        m.insert("status".into(), status);
        let meta = m.entry("metadata").or_insert_with(|| json!({}));
        if let Value::Object(meta) = meta {
            meta.insert("creationTimestamp".into(), Value::Null);
        }
    }
    body
}

/// Answers a create of one of the review resources for `user`.
pub fn review(authz: &Authorizer, res: &ResourceDef, user: &UserInfo, body: Value) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON or YAML object"));
    }
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let av = res.api_version();
    match res.kind {
        "SelfSubjectAccessReview" | "SubjectAccessReview" => {
            let (name, groups) = if res.kind == "SubjectAccessReview" {
                let name = spec.get("user").and_then(Value::as_str).unwrap_or_default().to_string();
                let groups: Vec<String> = spec
                    .get("groups")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|g| g.as_str().map(str::to_string))
                    .collect();
                if name.is_empty() && groups.is_empty() {
                    return Err(invalid(
                        res.kind,
                        res.group,
                        vec![Cause::invalid("spec.user", "", "at least one of user or group must be specified")],
                    ));
                }
                (name, groups)
            } else {
                (user.name.clone(), user.groups.clone())
            };
            let a = review_attributes(res.kind, &spec, &name, &groups)?;
            let d = authz.authorize(&a);
            let mut status = json!({"allowed": d.allowed});
            if !d.reason.is_empty() {
                status["reason"] = json!(d.reason);
            }
            Ok(with_status(body, &av, res.kind, status))
        }
        "SelfSubjectRulesReview" => {
            let ns = spec.get("namespace").and_then(Value::as_str).unwrap_or_default();
            let rules = authz.rules_for(&user.name, &user.groups, ns);
            let (res_rules, url_rules): (Vec<&Rule>, Vec<&Rule>) =
                rules.iter().partition(|r| r.non_resource_urls.is_empty());
            let status = json!({
                "resourceRules": res_rules.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                "nonResourceRules": url_rules.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                "incomplete": false,
            });
            Ok(with_status(body, &av, res.kind, status))
        }
        "SelfSubjectReview" => {
            let status = json!({"userInfo": {"username": user.name, "groups": user.groups}});
            Ok(with_status(body, &av, res.kind, status))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Whether `res` is a create-only review resource (not stored).
pub fn is_review(res: &ResourceDef) -> bool {
    matches!(res.group, "authorization.k8s.io" | "authentication.k8s.io")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::registry::rbac::authz::{self, MASTERS};
    use crate::registry::rbac::bootstrap_objects;
    use crate::resources;

    #[test]
    fn reviews_answer_for_the_caller_or_the_subject() {
        let a = Authorizer::default();
        for (plural, obj) in bootstrap_objects() {
            a.apply(plural, &obj, true);
        }
        let find = |p: &str| resources::RESOURCES.iter().find(|r| r.plural == p).unwrap();
        let bob = UserInfo { name: "bob".into(), groups: vec![authz::AUTHENTICATED.into()] };
        let body = json!({"spec": {"resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "x"}}});
        let out = review(&a, find("selfsubjectaccessreviews"), &bob, body.clone()).unwrap();
        assert_eq!(out["status"], json!({"allowed": false}));
        let mut sar = body.clone();
        sar["spec"]["groups"] = json!([MASTERS]);
        let out = review(&a, find("subjectaccessreviews"), &bob, sar).unwrap();
        assert_eq!(out["status"]["allowed"], true);
        let out = review(&a, find("selfsubjectreviews"), &bob, json!({})).unwrap();
        assert_eq!(out["status"]["userInfo"]["username"], "bob");
        let out = review(&a, find("selfsubjectrulesreviews"), &bob, json!({"spec": {"namespace": "x"}})).unwrap();
        assert!(!out["status"]["nonResourceRules"].as_array().unwrap().is_empty());
        let err = review(&a, find("selfsubjectaccessreviews"), &bob, json!({"spec": {}})).unwrap_err();
        assert_eq!(err.code(), 422);
    }
}
