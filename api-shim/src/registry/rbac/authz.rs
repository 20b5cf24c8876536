//! RBAC authorization, modelled on kube-apiserver's RBAC authorizer (pure core, no I/O).
//!
//! A request arrives as [`Attributes`] (user, groups, verb, group, resource, namespace, name, or a
//! non-resource path), derived from its URL by the HTTP layer's request-info parser. A
//! [`Policy`] (the roles and bindings, kept current by the cache in [`super`]) allows the
//! request when a ClusterRoleBinding, or a RoleBinding in the request's namespace, names the user,
//! one of its groups or its service account and points at a role with a matching rule. Nothing is
//! ever denied explicitly: no matching rule means Forbidden. Members of `system:masters` are
//! allowed everything before any rule is consulted, as upstream.
//!
//! [`uncovered`] is upstream's privilege-escalation check: a set of rules may only be granted by
//! someone whose own rules cover every (verb, group, resource, name) or (verb, URL) it contains.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::error::ApiError;

/// The group whose members may do everything.
pub const MASTERS: &str = "system:masters";
/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The user and group of requests without credentials (they may only reach public paths).
pub const ANONYMOUS: &str = "system:anonymous";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The group of node identities (`system:node:<name>`).
pub const NODES: &str = "system:nodes";
/// The API group of roles and bindings.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

/// What a request wants to do, as the authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    pub user: String,
    pub groups: Vec<String>,
    pub verb: String,
    pub resource_request: bool,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The URL path (used for non-resource requests).
    pub path: String,
}

impl Attributes {
    /// Upstream's forbidden message (`User "x" cannot list resource "pods" in API group "" in the namespace "y"`).
    pub fn forbidden_reason(&self) -> String {
        if !self.resource_request {
            return format!("User {:?} cannot {} path {:?}", self.user, self.verb, self.path);
        }
        let resource = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        if self.namespace.is_empty() {
            format!(
                "User {:?} cannot {} resource {:?} in API group {:?} at the cluster scope",
                self.user, self.verb, resource, self.api_group
            )
        } else {
            format!(
                "User {:?} cannot {} resource {:?} in API group {:?} in the namespace {:?}",
                self.user, self.verb, resource, self.api_group, self.namespace
            )
        }
    }

    /// The 403 answered when this request is not allowed.
    pub fn forbidden(&self) -> ApiError {
        let resource = if self.resource_request { self.resource.as_str() } else { "" };
        forbidden(&self.api_group, resource, &self.name, &self.forbidden_reason())
    }
}

/// A Forbidden error in upstream's wording: `<resource>[.<group>] ["<name>"] is forbidden: <why>`.
pub fn forbidden(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
    let qualified = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
    let message = if resource.is_empty() && group.is_empty() {
        format!("forbidden: {why}")
    } else if name.is_empty() {
        format!("{qualified} is forbidden: {why}")
    } else {
        format!("{qualified} \"{name}\" is forbidden: {why}")
    };
    let mut details = serde_json::Map::new();
    for (k, v) in [("name", name), ("group", group), ("kind", resource)] {
        if !v.is_empty() {
            details.insert(k.into(), json!(v));
        }
    }
    ApiError::Forbidden { message, details: Some(Value::Object(details)) }
}

/// The name a service account authenticates as.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The groups implied by a user name (service accounts) plus `system:authenticated`.
pub fn implied_groups(user: &str, groups: &mut Vec<String>) {
    let mut add = |g: String| {
        if !groups.contains(&g) {
            groups.push(g);
        }
    };
    if let Some(rest) = user.strip_prefix("system:serviceaccount:")
        && let Some((ns, _)) = rest.split_once(':')
    {
        add("system:serviceaccounts".into());
        add(format!("system:serviceaccounts:{ns}"));
    }
    add(AUTHENTICATED.into());
}

/// One RBAC rule (a `PolicyRule` with absent lists as empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == want)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(v.get("verbs")),
            api_groups: strings(v.get("apiGroups")),
            resources: strings(v.get("resources")),
            resource_names: strings(v.get("resourceNames")),
            non_resource_urls: strings(v.get("nonResourceURLs")),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("verbs".into(), json!(self.verbs));
        for (k, v) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() {
                m.insert(k.into(), json!(v));
            }
        }
        Value::Object(m)
    }

    /// Whether this rule allows the request (upstream `RuleAllows`).
    pub fn allows(&self, a: &Attributes) -> bool {
        if !(has(&self.verbs, "*") || has(&self.verbs, &a.verb)) {
            return false;
        }
        if !a.resource_request {
            return self.non_resource_urls.iter().any(|u| url_matches(u, &a.path));
        }
        if !(has(&self.api_groups, "*") || has(&self.api_groups, &a.api_group)) {
            return false;
        }
        let combined =
            if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
        let resource_ok = self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
        });
        resource_ok && (self.resource_names.is_empty() || has(&self.resource_names, &a.name))
    }

    /// Upstream's compact rule rendering used in escalation errors.
    pub fn compact(&self) -> String {
        let q = |v: &[String]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" ");
        let mut parts = Vec::new();
        if !self.api_groups.is_empty() || !self.resources.is_empty() {
            parts.push(format!("APIGroups:[{}]", q(&self.api_groups)));
            parts.push(format!("Resources:[{}]", q(&self.resources)));
        }
        if !self.resource_names.is_empty() {
            parts.push(format!("ResourceNames:[{}]", q(&self.resource_names)));
        }
        if !self.non_resource_urls.is_empty() {
            parts.push(format!("NonResourceURLs:[{}]", q(&self.non_resource_urls)));
        }
        parts.push(format!("Verbs:[{}]", q(&self.verbs)));
        format!("{{{}}}", parts.join(", "))
    }
}

fn url_matches(rule: &str, path: &str) -> bool {
    rule == "*" || rule == path || rule.strip_suffix('*').is_some_and(|p| path.starts_with(p))
}

/// Who a binding grants to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

impl Subject {
    /// Whether this subject is the user; `namespace` is the binding's (service accounts default to it).
    pub fn applies_to(&self, user: &str, groups: &[String], namespace: &str) -> bool {
        match self.kind.as_str() {
            "User" => user == self.name,
            "Group" => has(groups, &self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() { namespace } else { self.namespace.as_str() };
                !ns.is_empty() && user == service_account_user(ns, &self.name)
            }
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self.kind.as_str() {
            "ServiceAccount" => format!("ServiceAccount \"{}/{}\"", self.namespace, self.name),
            k => format!("{k} {:?}", self.name),
        }
    }
}

/// A RoleBinding (namespace set) or ClusterRoleBinding (namespace empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    pub namespace: String,
    /// "Role" or "ClusterRole".
    pub role_kind: String,
    pub role_name: String,
    pub subjects: Vec<Subject>,
}

impl Binding {
    pub fn from_json(v: &Value) -> Binding {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
        let subjects = v
            .get("subjects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|x| Subject {
                kind: x.get("kind").and_then(Value::as_str).unwrap_or_default().into(),
                name: x.get("name").and_then(Value::as_str).unwrap_or_default().into(),
                namespace: x.get("namespace").and_then(Value::as_str).unwrap_or_default().into(),
            })
            .collect();
        Binding {
            name: s("/metadata/name"),
            namespace: s("/metadata/namespace"),
            role_kind: s("/roleRef/kind"),
            role_name: s("/roleRef/name"),
            subjects,
        }
    }
}

/// The rules of a Role or ClusterRole object.
pub fn rules_of(role: &Value) -> Vec<Rule> {
    role.get("rules").and_then(Value::as_array).into_iter().flatten().map(Rule::from_json).collect()
}

/// Why a request was allowed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// All roles and bindings, indexed for authorization.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub cluster_roles: HashMap<String, Vec<Rule>>,
    /// (namespace, name) → rules.
    pub roles: HashMap<(String, String), Vec<Rule>>,
    pub cluster_bindings: HashMap<String, Binding>,
    /// (namespace, name) → binding.
    pub bindings: HashMap<(String, String), Binding>,
}

impl Policy {
    fn role_rules(&self, b: &Binding) -> Option<&[Rule]> {
        match b.role_kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&b.role_name).map(Vec::as_slice),
            "Role" if !b.namespace.is_empty() => {
                self.roles.get(&(b.namespace.clone(), b.role_name.clone())).map(Vec::as_slice)
            }
            _ => None,
        }
    }

    /// Visits (binding, subject, rule) for every rule granted to the user in `namespace` (cluster
    /// bindings first, then the namespace's role bindings) until `f` returns true.
    fn visit(
        &self,
        user: &str,
        groups: &[String],
        namespace: &str,
        mut f: impl FnMut(&Binding, &Subject, &Rule) -> bool,
    ) {
        let mut cluster: Vec<&Binding> = self.cluster_bindings.values().collect();
        cluster.sort_by(|a, b| a.name.cmp(&b.name));
        let mut local: Vec<&Binding> = if namespace.is_empty() {
            Vec::new()
        } else {
            self.bindings.values().filter(|b| b.namespace == namespace).collect()
        };
        local.sort_by(|a, b| a.name.cmp(&b.name));
        for b in cluster.into_iter().chain(local) {
            let Some(subject) = b.subjects.iter().find(|s| s.applies_to(user, groups, &b.namespace)) else { continue };
            for rule in self.role_rules(b).unwrap_or_default() {
                if f(b, subject, rule) {
                    return;
                }
            }
        }
    }

    /// Decides a request (system:masters first, then the RBAC rules).
    pub fn authorize(&self, a: &Attributes) -> Decision {
        if has(&a.groups, MASTERS) {
            return Decision { allowed: true, reason: String::new() };
        }
        let mut reason = None;
        self.visit(&a.user, &a.groups, &a.namespace, |b, s, rule| {
            if !rule.allows(a) {
                return false;
            }
            let what = if b.namespace.is_empty() {
                format!("ClusterRoleBinding {:?}", b.name)
            } else {
                format!("RoleBinding \"{}/{}\"", b.name, b.namespace)
            };
            let role = if b.role_kind == "Role" {
                format!("Role \"{}/{}\"", b.role_name, b.namespace)
            } else {
                format!("ClusterRole {:?}", b.role_name)
            };
            reason = Some(format!("RBAC: allowed by {what} of {role} to {}", s.describe()));
            true
        });
        match reason {
            Some(reason) => Decision { allowed: true, reason },
            None => Decision { allowed: false, reason: String::new() },
        }
    }

    /// Every rule granted to the user in `namespace` (cluster-wide rules only when empty).
    pub fn rules_for(&self, user: &str, groups: &[String], namespace: &str) -> Vec<Rule> {
        let mut out = Vec::new();
        self.visit(user, groups, namespace, |_, _, r| {
            out.push(r.clone());
            false
        });
        out
    }

    /// The rules of the role a binding refers to (`None`: the role does not exist).
    pub fn referenced_rules(&self, namespace: &str, role_kind: &str, role_name: &str) -> Option<Vec<Rule>> {
        let b = Binding {
            name: String::new(),
            namespace: namespace.into(),
            role_kind: role_kind.into(),
            role_name: role_name.into(),
            subjects: Vec::new(),
        };
        self.role_rules(&b).map(<[Rule]>::to_vec)
    }
}

/// Splits a rule into single (verb, group, resource, name) or (verb, URL) rules.
fn breakdown(rule: &Rule) -> Vec<Rule> {
    let one = |s: &String| vec![s.clone()];
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for g in &rule.api_groups {
            for r in &rule.resources {
                if rule.resource_names.is_empty() {
                    out.push(Rule { verbs: one(verb), api_groups: one(g), resources: one(r), ..Default::default() });
                }
                for n in &rule.resource_names {
                    out.push(Rule {
                        verbs: one(verb),
                        api_groups: one(g),
                        resources: one(r),
                        resource_names: one(n),
                        ..Default::default()
                    });
                }
            }
        }
        for u in &rule.non_resource_urls {
            out.push(Rule { verbs: one(verb), non_resource_urls: one(u), ..Default::default() });
        }
    }
    out
}

fn resource_covers(owner: &[String], want: &str) -> bool {
    if has(owner, "*") || has(owner, want) {
        return true;
    }
    match want.split_once('/') {
        Some((_, sub)) => has(owner, &format!("*/{sub}")),
        None => false,
    }
}

/// Whether one owned rule covers a single broken-down rule (upstream `ruleCovers`).
fn covers_one(owner: &Rule, want: &Rule) -> bool {
    let all = |owned: &[String], wanted: &[String]| has(owned, "*") || wanted.iter().all(|w| has(owned, w));
    if !all(&owner.verbs, &want.verbs) {
        return false;
    }
    if !want.non_resource_urls.is_empty() {
        return want.non_resource_urls.iter().all(|w| owner.non_resource_urls.iter().any(|o| url_matches(o, w)));
    }
    all(&owner.api_groups, &want.api_groups)
        && want.resources.iter().all(|r| resource_covers(&owner.resources, r))
        && (owner.resource_names.is_empty()
            || (!want.resource_names.is_empty() && want.resource_names.iter().all(|n| has(&owner.resource_names, n))))
}

/// The parts of `requested` that `owned` does not cover (empty: granting them is no escalation).
pub fn uncovered(owned: &[Rule], requested: &[Rule]) -> Vec<Rule> {
    requested.iter().flat_map(breakdown).filter(|want| !owned.iter().any(|o| covers_one(o, want))).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A resource request as the HTTP layer's request-info parser describes it.
    fn res_attrs(user: &str, groups: &[&str], verb: &str, ns: &str, resource: &str, name: &str) -> Attributes {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            verb: verb.into(),
            resource_request: true,
            api_version: "v1".into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: ns.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn url_attrs(verb: &str, path: &str) -> Attributes {
        Attributes { user: "alice".into(), verb: verb.into(), path: path.into(), ..Default::default() }
    }

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Rule {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        Rule {
            verbs: v(verbs),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: v(names),
            non_resource_urls: Vec::new(),
        }
    }

    fn urls(verbs: &[&str], urls: &[&str]) -> Rule {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        Rule { verbs: v(verbs), non_resource_urls: v(urls), ..Default::default() }
    }

    #[test]
    fn rules_match_verbs_groups_resources_names_and_urls() {
        let list_pods = res_attrs("alice", &["g"], "list", "default", "pods", "");
        assert!(rule(&["list"], &[""], &["pods"], &[]).allows(&list_pods));
        assert!(rule(&["*"], &["*"], &["*"], &[]).allows(&list_pods));
        assert!(!rule(&["get"], &[""], &["pods"], &[]).allows(&list_pods));
        assert!(!rule(&["list"], &["apps"], &["pods"], &[]).allows(&list_pods));
        assert!(!rule(&["list"], &[""], &["pods"], &["p1"]).allows(&list_pods));
        let log = res_attrs("alice", &["g"], "get", "default", "pods/log", "p1");
        assert!(!rule(&["get"], &[""], &["pods"], &[]).allows(&log));
        assert!(rule(&["get"], &[""], &["pods/log"], &[]).allows(&log));
        assert!(rule(&["get"], &[""], &["*/log"], &[]).allows(&log));
        assert!(rule(&["get"], &[""], &["pods/log"], &["p1"]).allows(&log));
        assert!(!rule(&["get"], &[""], &["pods/log"], &["p2"]).allows(&log));
        let version = url_attrs("get", "/version");
        assert!(urls(&["get"], &["/version"]).allows(&version));
        assert!(urls(&["get"], &["/ver*"]).allows(&version));
        assert!(!urls(&["get"], &["/version/"]).allows(&version));
        assert!(!urls(&["post"], &["*"]).allows(&version));
        assert!(!rule(&["*"], &["*"], &["*"], &[]).allows(&version));
    }

    fn binding(ns: &str, name: &str, role_kind: &str, role: &str, subjects: &[(&str, &str, &str)]) -> Binding {
        Binding {
            name: name.into(),
            namespace: ns.into(),
            role_kind: role_kind.into(),
            role_name: role.into(),
            subjects: subjects
                .iter()
                .map(|(k, n, s)| Subject { kind: (*k).into(), name: (*n).into(), namespace: (*s).into() })
                .collect(),
        }
    }

    #[test]
    fn bindings_scope_and_subjects() {
        let mut p = Policy::default();
        p.cluster_roles.insert("view".into(), vec![rule(&["get", "list"], &[""], &["pods"], &[])]);
        p.roles.insert(("dev".into(), "cm".into()), vec![rule(&["create"], &[""], &["configmaps"], &[])]);
        p.bindings
            .insert(("dev".into(), "b1".into()), binding("dev", "b1", "ClusterRole", "view", &[("User", "alice", "")]));
        p.bindings.insert(("dev".into(), "b2".into()), binding("dev", "b2", "Role", "cm", &[("Group", "devs", "")]));
        p.bindings.insert(
            ("dev".into(), "b3".into()),
            binding("dev", "b3", "ClusterRole", "view", &[("ServiceAccount", "sa", "")]),
        );
        let req = |user: &str, groups: &[&str], verb: &str, ns: &str, resource: &str, name: &str| {
            p.authorize(&res_attrs(user, groups, verb, ns, resource, name))
        };
        let d = req("alice", &[], "list", "dev", "pods", "");
        assert!(d.allowed);
        assert_eq!(d.reason, "RBAC: allowed by RoleBinding \"b1/dev\" of ClusterRole \"view\" to User \"alice\"");
        assert!(!req("alice", &[], "list", "prod", "pods", "").allowed);
        assert!(!req("alice", &[], "list", "", "pods", "").allowed);
        assert!(!req("alice", &[], "create", "dev", "pods", "").allowed);
        assert!(req("bob", &["devs"], "create", "dev", "configmaps", "").allowed);
        assert!(!req("bob", &["devs"], "create", "other", "configmaps", "").allowed);
        assert!(req("system:serviceaccount:dev:sa", &[], "list", "dev", "pods", "").allowed);
        assert!(!req("system:serviceaccount:other:sa", &[], "list", "dev", "pods", "").allowed);
        assert!(req("anyone", &[MASTERS], "delete", "", "nodes", "n1").allowed);
        // A cluster binding applies everywhere, including the cluster scope.
        p.cluster_bindings.insert("all".into(), binding("", "all", "ClusterRole", "view", &[("Group", "viewers", "")]));
        assert!(p.authorize(&res_attrs("carol", &["viewers"], "list", "", "pods", "")).allowed);
        // A cluster binding cannot use a Role, and a missing role grants nothing.
        p.cluster_bindings.insert("bad".into(), binding("", "bad", "Role", "cm", &[("User", "dave", "")]));
        p.bindings
            .insert(("dev".into(), "b4".into()), binding("dev", "b4", "ClusterRole", "nope", &[("User", "dave", "")]));
        assert!(p.rules_for("dave", &[], "dev").is_empty());
        assert_eq!(p.rules_for("alice", &[], "dev").len(), 1);
        assert!(p.rules_for("alice", &[], "").is_empty());
    }

    #[test]
    fn forbidden_messages_match_upstream() {
        let a = res_attrs("alice", &["g"], "list", "default", "pods", "");
        let e = a.forbidden();
        assert_eq!(
            e.to_string(),
            "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let s = e.to_status();
        assert_eq!((s["code"].as_u64(), s["reason"].as_str()), (Some(403), Some("Forbidden")));
        assert_eq!(s["details"], json!({"kind": "pods"}));
        let n = res_attrs("alice", &["g"], "delete", "", "nodes", "n1").forbidden();
        assert_eq!(
            n.to_string(),
            "nodes \"n1\" is forbidden: User \"alice\" cannot delete resource \"nodes\" in API group \"\" at the cluster scope"
        );
        let l =
            Attributes { api_group: "apps".into(), ..res_attrs("alice", &["g"], "get", "x", "deployments/scale", "d") }
                .forbidden();
        assert_eq!(
            l.to_string(),
            "deployments.apps \"d\" is forbidden: User \"alice\" cannot get resource \"deployments/scale\" in API group \"apps\" in the namespace \"x\""
        );
        assert_eq!(l.to_status()["details"], json!({"kind": "deployments", "group": "apps", "name": "d"}));
        let p = url_attrs("get", "/metrics").forbidden();
        assert_eq!(p.to_string(), "forbidden: User \"alice\" cannot get path \"/metrics\"");
    }

    #[test]
    fn coverage_is_per_verb_resource_and_name() {
        let owned = vec![
            rule(&["get", "list"], &[""], &["pods", "configmaps"], &[]),
            rule(&["*"], &["apps"], &["deployments", "*/scale"], &[]),
            rule(&["get"], &[""], &["secrets"], &["s1"]),
            urls(&["get"], &["/healthz/*"]),
        ];
        assert!(uncovered(&owned, &[rule(&["get"], &[""], &["pods"], &[])]).is_empty());
        assert!(uncovered(&owned, &[rule(&["list", "get"], &[""], &["configmaps"], &["x"])]).is_empty());
        assert!(
            uncovered(&owned, &[rule(&["create"], &["apps"], &["deployments", "replicasets/scale"], &[])]).is_empty()
        );
        assert!(uncovered(&owned, &[rule(&["get"], &[""], &["secrets"], &["s1"])]).is_empty());
        assert!(uncovered(&owned, &[urls(&["get"], &["/healthz/ping"])]).is_empty());
        let missing = uncovered(&owned, &[rule(&["get", "delete"], &[""], &["pods", "secrets"], &[])]);
        assert_eq!(missing.len(), 3, "{missing:?}");
        assert_eq!(missing[0].compact(), "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}");
        assert_eq!(uncovered(&owned, &[rule(&["get"], &[""], &["secrets"], &[])]).len(), 1);
        assert_eq!(uncovered(&owned, &[rule(&["*"], &[""], &["pods"], &[])]).len(), 1);
        assert_eq!(uncovered(&owned, &[urls(&["get"], &["/metrics"])]).len(), 1);
        assert!(uncovered(&[rule(&["*"], &["*"], &["*"], &[]), urls(&["*"], &["*"])], &owned).is_empty());
    }

    #[test]
    fn service_accounts_get_their_groups() {
        let mut g = vec!["x".to_string()];
        implied_groups("system:serviceaccount:dev:builder", &mut g);
        assert_eq!(g, ["x", "system:serviceaccounts", "system:serviceaccounts:dev", AUTHENTICATED]);
        let mut g = vec![AUTHENTICATED.to_string()];
        implied_groups("alice", &mut g);
        assert_eq!(g, [AUTHENTICATED]);
    }
}
