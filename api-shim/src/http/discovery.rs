//! Discovery documents: /version, /api, /apis, group-version resource lists, aggregated
//! discovery (apidiscovery.k8s.io v2 and v2beta1, chosen strictly by the Accept header, since
//! kubectl 1.27–1.29 only understand v2beta1). OpenAPI documents live in [`crate::http::openapi`].

use serde_json::{Value, json};

use crate::resources::{GROUPS, RESOURCES, ResourceDef};

pub const SERVER_MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": SERVER_MINOR,
        "gitVersion": format!("v1.{SERVER_MINOR}.0-keelson"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn api_group_list() -> Value {
    let groups: Vec<Value> = GROUPS.iter().filter(|g| !g.is_empty()).map(|g| group_entry(g)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(group: &str) -> Value {
    let mut g = group_entry(group);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

/// (subresource, kind, group, version, verbs)
fn subresource_info(r: &ResourceDef, sub: &str) -> (&'static str, &'static str, &'static str, &'static [&'static str]) {
    match sub {
        "status" => (r.kind, r.group, r.version, &["get", "patch", "update"]),
        "scale" => ("Scale", "autoscaling", "v1", &["get", "patch", "update"]),
        "binding" => ("Binding", "", "v1", &["create"]),
        "log" => ("Pod", "", "v1", &["get"]),
        "exec" => ("PodExecOptions", "", "v1", &["create", "get"]),
        "portforward" => ("PodPortForwardOptions", "", "v1", &["create", "get"]),
        _ => (r.kind, r.group, r.version, &["get"]),
    }
}

pub fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        resources.push(e);
        for sub in r.subresources {
            let (kind, g, v, verbs) = subresource_info(r, sub);
            let mut s = json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
            if g != r.group || v != r.version {
                s["group"] = json!(g);
                s["version"] = json!(v);
            }
            resources.push(s);
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// Which aggregated discovery version the client asked for, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregated {
    V2,
    V2Beta1,
}

impl Aggregated {
    /// Picks the first aggregated-discovery media type in the Accept list that we serve.
    pub fn from_accept(accept: &str) -> Option<Aggregated> {
        for range in accept.split(',') {
            let params: Vec<&str> = range.split(';').map(str::trim).collect();
            let has = |p: &str| params.iter().any(|x| x.eq_ignore_ascii_case(p));
            if !has("g=apidiscovery.k8s.io") || !has("as=APIGroupDiscoveryList") {
                continue;
            }
            if has("v=v2") {
                return Some(Aggregated::V2);
            }
            if has("v=v2beta1") {
                return Some(Aggregated::V2Beta1);
            }
        }
        None
    }
    pub fn version(self) -> &'static str {
        match self {
            Aggregated::V2 => "v2",
            Aggregated::V2Beta1 => "v2beta1",
        }
    }
    pub fn content_type(self) -> String {
        format!("application/json;g=apidiscovery.k8s.io;v={};as=APIGroupDiscoveryList", self.version())
    }
}

fn aggregated_group(group: &str) -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group)
        .map(|r| {
            let subs: Vec<Value> = r
                .subresources
                .iter()
                .map(|sub| {
                    let (kind, g, v, verbs) = subresource_info(r, sub);
                    json!({"subresource": sub, "responseKind": {"group": g, "version": v, "kind": kind}, "verbs": verbs})
                })
                .collect();
            let mut e = json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs(),
            });
            if !r.short_names.is_empty() {
                e["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                e["categories"] = json!(r.categories);
            }
            if !subs.is_empty() {
                e["subresources"] = Value::Array(subs);
            }
            e
        })
        .collect();
    json!({
        "metadata": {"name": group, "creationTimestamp": null},
        "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
    })
}

/// Aggregated discovery for `/api` (core) or `/apis` (all named groups).
pub fn aggregated(core: bool, ver: Aggregated) -> Value {
    let items: Vec<Value> = GROUPS.iter().filter(|g| g.is_empty() == core).map(|g| aggregated_group(g)).collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{}", ver.version()),
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn accept_negotiation_is_strict() {
        let k133 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        let k127 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(Aggregated::from_accept(k133), Some(Aggregated::V2));
        assert_eq!(Aggregated::from_accept(k127), Some(Aggregated::V2Beta1));
        assert_eq!(Aggregated::from_accept("application/json, */*"), None);
        assert_eq!(aggregated(true, Aggregated::V2Beta1)["apiVersion"], "apidiscovery.k8s.io/v2beta1");
        let apis = aggregated(false, Aggregated::V2);
        assert_eq!(apis["items"].as_array().unwrap().len(), GROUPS.len() - 1);
    }
}
