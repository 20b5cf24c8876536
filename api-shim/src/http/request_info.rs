//! The request-info glue between HTTP and RBAC: a request (method, path, query) becomes the
//! authorizer's [`Attributes`] the way upstream's request-info factory sees it (verb from the
//! HTTP method, `list`/`watch`/`deletecollection` for collections, `namespaces/<ns>` carrying the
//! namespace, everything outside `/api/<v>/…` and `/apis/<g>/<v>/…` a non-resource path). It
//! lives here, not beside the rules, because it is about URLs: the registry's RBAC code never
//! sees one.

use std::collections::HashMap;

use crate::registry::rbac::authz::Attributes;

/// The object name a `fieldSelector` pins with `metadata.name=<x>` (or `==`), if any.
fn selector_name(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
        (k.trim() == "metadata.name" && !k.ends_with('!') && !v.is_empty() && !v.contains('/'))
            .then(|| v.trim().to_string())
    })
}

/// Maps an HTTP request onto authorizer attributes, as upstream's request-info factory does.
pub fn request_attributes(
    user: &str,
    groups: &[String],
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
) -> Attributes {
    let mut a = Attributes {
        user: user.to_string(),
        groups: groups.to_vec(),
        verb: method.to_ascii_lowercase(),
        path: path.to_string(),
        ..Default::default()
    };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest: &[&str] = match segs.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => {
            a.api_version = (*version).into();
            rest
        }
        ["apis", group, version, rest @ ..] if !rest.is_empty() => {
            a.api_group = (*group).into();
            a.api_version = (*version).into();
            rest
        }
        _ => return a,
    };
    a.resource_request = true;
    let mut parts = rest;
    if parts.first() == Some(&"watch") && parts.len() >= 2 {
        a.verb = "watch".into();
        parts = &parts[1..];
    } else {
        a.verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
        .into();
    }
    if parts.first() == Some(&"namespaces")
        && let Some(ns) = parts.get(1)
    {
        a.namespace = (*ns).into();
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            parts = &parts[2..];
        }
    }
    if let Some(r) = parts.first() {
        a.resource = (*r).into();
    }
    if let Some(n) = parts.get(1) {
        a.name = (*n).into();
    }
    if let Some(s) = parts.get(2) {
        a.subresource = (*s).into();
    }
    if a.name.is_empty() && a.verb == "get" {
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        a.verb = if watch { "watch" } else { "list" }.into();
        if let Some(n) = query.get("fieldSelector").and_then(|s| selector_name(s)) {
            a.name = n;
        }
    }
    if a.name.is_empty() && a.verb == "delete" {
        a.verb = "deletecollection".into();
    }
    a
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn attrs(method: &str, path: &str, query: &[(&str, &str)]) -> Attributes {
        let q = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        request_attributes("alice", &["g".into()], method, path, &q)
    }

    #[test]
    fn attributes_follow_upstream_request_info() {
        let a = attrs("GET", "/api/v1/namespaces/default/pods", &[]);
        assert_eq!((a.verb.as_str(), a.resource.as_str(), a.namespace.as_str()), ("list", "pods", "default"));
        assert!(a.resource_request && a.api_group.is_empty() && a.name.is_empty());
        assert_eq!(attrs("GET", "/api/v1/namespaces/default/pods", &[("watch", "true")]).verb, "watch");
        let w = attrs("GET", "/api/v1/watch/namespaces/default/pods/p1", &[]);
        assert_eq!((w.verb.as_str(), w.name.as_str(), w.namespace.as_str()), ("watch", "p1", "default"));
        let l = attrs("GET", "/api/v1/namespaces/default/pods/p1/log", &[]);
        assert_eq!((l.verb.as_str(), l.name.as_str(), l.subresource.as_str()), ("get", "p1", "log"));
        let d = attrs("POST", "/apis/apps/v1/namespaces/x/deployments", &[]);
        assert_eq!((d.verb.as_str(), d.api_group.as_str(), d.api_version.as_str()), ("create", "apps", "v1"));
        assert_eq!(attrs("PUT", "/api/v1/nodes/n1/status", &[]).subresource, "status");
        assert_eq!(attrs("PATCH", "/api/v1/nodes/n1", &[]).verb, "patch");
        assert_eq!(attrs("DELETE", "/api/v1/namespaces/a/pods/p", &[]).verb, "delete");
        assert_eq!(attrs("DELETE", "/api/v1/namespaces/a/pods", &[]).verb, "deletecollection");
        let sel = attrs("GET", "/api/v1/namespaces/a/pods", &[("fieldSelector", "metadata.name=p9")]);
        assert_eq!((sel.verb.as_str(), sel.name.as_str()), ("list", "p9"));
        // A namespace is its own namespace; its status is a subresource, not a resource.
        let ns = attrs("GET", "/api/v1/namespaces/team", &[]);
        assert_eq!((ns.resource.as_str(), ns.name.as_str(), ns.namespace.as_str()), ("namespaces", "team", "team"));
        let nss = attrs("PUT", "/api/v1/namespaces/team/status", &[]);
        assert_eq!((nss.resource.as_str(), nss.subresource.as_str()), ("namespaces", "status"));
        assert_eq!(attrs("GET", "/api/v1/namespaces", &[]).verb, "list");
        for p in ["/api", "/apis", "/api/v1", "/apis/apps/v1", "/version", "/openapi/v3", "/healthz"] {
            let a = attrs("GET", p, &[]);
            assert!(!a.resource_request, "{p}");
            assert_eq!((a.verb.as_str(), a.path.as_str()), ("get", p));
        }
    }
}
