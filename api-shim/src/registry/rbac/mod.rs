//! RBAC around the pure core in [`authz`]: the informer-style policy cache, validation and
//! defaulting of roles and bindings, privilege-escalation admission, the bootstrap policy and the
//! access-review APIs.
//!
//! The cache is fed by the Api's own list + watch of the four RBAC resources (never a store read
//! per request), so it works the same for the embedded store and etcd, sees writes made by other
//! apiservers sharing one etcd, and rebuilds itself after a restart or a 410 Gone by listing again.

pub mod authz;
pub mod node;
mod review;

pub use self::review::{is_review, review};

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Value, json};

use self::authz::{Attributes, Binding, Decision, MASTERS, Policy, RBAC_GROUP, Rule, UserInfo};
use crate::error::{ApiError, Cause};
use crate::objects::FieldValidation;
use crate::registry::{Api, ListOpts, WatchOpts, WriteOpts};
use crate::resources::{self, ResourceDef};

/// The four RBAC resources the cache follows.
const KINDS: [&str; 4] = ["clusterroles", "roles", "clusterrolebindings", "rolebindings"];

/// The authorizer: the policy cache and the decisions made from it.
#[derive(Debug, Default)]
pub struct Authorizer {
    policy: RwLock<Policy>,
    synced: tokio::sync::watch::Sender<usize>,
}

fn key_of(obj: &Value) -> (String, String) {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    (s("/metadata/namespace"), s("/metadata/name"))
}

impl Authorizer {
    /// A snapshot-free read of the current policy.
    fn with_policy<T>(&self, f: impl FnOnce(&Policy) -> T) -> T {
        f(&self.policy.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn authorize(&self, a: &Attributes) -> Decision {
        self.with_policy(|p| p.authorize(a))
    }

    pub fn rules_for(&self, user: &str, groups: &[String], namespace: &str) -> Vec<Rule> {
        self.with_policy(|p| p.rules_for(user, groups, namespace))
    }

    /// Applies one object of `plural` to the cache (`present` false: it was deleted).
    fn apply(&self, plural: &str, obj: &Value, present: bool) {
        let mut p = self.policy.write().unwrap_or_else(|p| p.into_inner());
        let (ns, name) = key_of(obj);
        match (plural, present) {
            ("clusterroles", true) => {
                p.cluster_roles.insert(name, authz::rules_of(obj));
            }
            ("clusterroles", false) => {
                p.cluster_roles.remove(&name);
            }
            ("roles", true) => {
                p.roles.insert((ns, name), authz::rules_of(obj));
            }
            ("roles", false) => {
                p.roles.remove(&(ns, name));
            }
            ("clusterrolebindings", true) => {
                p.cluster_bindings.insert(name, Binding::from_json(obj));
            }
            ("clusterrolebindings", false) => {
                p.cluster_bindings.remove(&name);
            }
            ("rolebindings", true) => {
                p.bindings.insert((ns, name), Binding::from_json(obj));
            }
            ("rolebindings", false) => {
                p.bindings.remove(&(ns, name));
            }
            _ => {}
        }
    }

    /// Replaces everything of `plural` with a fresh list.
    fn replace(&self, plural: &str, items: &[Value]) {
        {
            let mut p = self.policy.write().unwrap_or_else(|p| p.into_inner());
            match plural {
                "clusterroles" => p.cluster_roles.clear(),
                "roles" => p.roles.clear(),
                "clusterrolebindings" => p.cluster_bindings.clear(),
                _ => p.bindings.clear(),
            }
        }
        for o in items {
            self.apply(plural, o, true);
        }
    }

    /// Starts one list+watch loop per RBAC resource; see [`Authorizer::wait_synced`].
    pub fn start(self: &Arc<Self>, api: &Arc<Api>) {
        for plural in KINDS {
            let Some(res) = resources::find(RBAC_GROUP, "v1", plural) else { continue };
            let (me, api) = (self.clone(), api.clone());
            tokio::spawn(async move { me.inform(api, res).await });
        }
    }

    /// Waits until every resource has been listed once.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|n| *n >= KINDS.len()).await;
    }

    async fn inform(&self, api: Arc<Api>, res: &'static ResourceDef) {
        let mut first = true;
        loop {
            let rv = match api.list(res, None, &ListOpts::default()).await {
                Ok((items, rv, _)) => {
                    self.replace(res.plural, &items);
                    rv
                }
                Err(e) => {
                    tracing::warn!(resource = res.plural, error = %e, "rbac cache: list failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if first {
                first = false;
                self.synced.send_modify(|n| *n += 1);
            }
            let mut last = rv;
            // Watch from the listed revision; resume from the last seen one until the history is gone.
            loop {
                let opts = WatchOpts {
                    list: ListOpts { resource_version: Some(last.to_string()), ..Default::default() },
                    bookmarks: true,
                    ..Default::default()
                };
                let mut rx = match api.watch(res, None, opts).await {
                    Ok(rx) => rx,
                    Err(e) => {
                        tracing::warn!(resource = res.plural, error = %e, "rbac cache: watch failed");
                        break;
                    }
                };
                let mut gone = false;
                while let Some(ev) = rx.recv().await {
                    let rv = ev.object.pointer("/metadata/resourceVersion").and_then(Value::as_str);
                    if let Some(r) = rv.and_then(|r| r.parse::<i64>().ok()) {
                        last = last.max(r);
                    }
                    match ev.kind {
                        "ADDED" | "MODIFIED" => self.apply(res.plural, &ev.object, true),
                        "DELETED" => self.apply(res.plural, &ev.object, false),
                        "ERROR" => {
                            gone = true;
                            break;
                        }
                        _ => {}
                    }
                }
                if gone {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Privilege-escalation admission for writes of roles and bindings by `user`.
    pub fn admit(&self, user: &UserInfo, res: &ResourceDef, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        if res.group != RBAC_GROUP || user.groups.iter().any(|g| g == MASTERS) {
            return Ok(());
        }
        let (ns, name) = key_of(obj);
        let ns = if res.namespaced { ns } else { String::new() };
        let may = |verb: &str, resource: &str, target: &str| {
            let a = Attributes {
                user: user.name.clone(),
                groups: user.groups.clone(),
                verb: verb.into(),
                resource_request: true,
                api_group: RBAC_GROUP.into(),
                api_version: "v1".into(),
                resource: resource.into(),
                namespace: ns.clone(),
                name: target.into(),
                ..Default::default()
            };
            self.authorize(&a).allowed
        };
        let requested = match res.kind {
            "Role" | "ClusterRole" => {
                if old.is_some_and(|o| o.get("rules") == obj.get("rules")) || may("escalate", res.plural, &name) {
                    return Ok(());
                }
                authz::rules_of(obj)
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let unchanged = |p: &str| old.is_some_and(|o| o.get(p) == obj.get(p));
                if unchanged("roleRef") && unchanged("subjects") {
                    return Ok(());
                }
                let kind = obj.pointer("/roleRef/kind").and_then(Value::as_str).unwrap_or_default();
                let role = obj.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or_default();
                let plural = if kind == "Role" { "roles" } else { "clusterroles" };
                if may("bind", plural, role) {
                    return Ok(());
                }
                let role_ns = if kind == "Role" { ns.as_str() } else { "" };
                self.with_policy(|p| p.referenced_rules(role_ns, kind, role)).ok_or_else(|| ApiError::NotFound {
                    group: RBAC_GROUP.into(),
                    kind: plural.into(),
                    name: role.into(),
                })?
            }
            _ => return Ok(()),
        };
        let owned = self.rules_for(&user.name, &user.groups, &ns);
        let missing = authz::uncovered(&owned, &requested);
        if missing.is_empty() {
            return Ok(());
        }
        let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
        let rules: Vec<String> = missing.iter().map(Rule::compact).collect();
        Err(authz::forbidden(
            RBAC_GROUP,
            res.plural,
            &name,
            &format!(
                "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
                user.name,
                groups.join(" "),
                rules.join("\n")
            ),
        ))
    }
}

// ---------------------------------------------------------------------------- validation

fn path_segment_ok(name: &str) -> bool {
    name != "." && name != ".." && !name.contains('/') && !name.contains('%')
}

/// The name rule of RBAC objects (path segments: `system:basic-user` is valid).
pub fn validate_name(name: &str, causes: &mut Vec<Cause>) {
    if !path_segment_ok(name) {
        causes.push(Cause::invalid("metadata.name", name, "may not be '.' or '..' and may not contain '/' or '%'"));
    }
}

/// Fills the subject apiGroup defaults upstream applies on decode.
pub fn apply_defaults(obj: &mut Value) {
    if let Some(Value::Array(subjects)) = obj.get_mut("subjects") {
        for s in subjects {
            let kind = s.get("kind").and_then(Value::as_str).unwrap_or_default();
            let group = match kind {
                "User" | "Group" => RBAC_GROUP,
                _ => "",
            };
            if s.get("apiGroup").and_then(Value::as_str).is_none_or(str::is_empty)
                && let Value::Object(m) = s
            {
                m.insert("apiGroup".into(), json!(group));
            }
        }
    }
}

fn validate_rules(obj: &Value, namespaced: bool, causes: &mut Vec<Cause>) {
    for (i, r) in obj.get("rules").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = format!("rules[{i}]");
        let rule = Rule::from_json(r);
        if rule.verbs.is_empty() {
            causes.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{path}.verbs"),
                message: "Required value: verbs must contain at least one value".into(),
            });
        }
        if !rule.non_resource_urls.is_empty() {
            if namespaced {
                causes.push(Cause::invalid(
                    format!("{path}.nonResourceURLs"),
                    format!("{:?}", rule.non_resource_urls),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !rule.api_groups.is_empty() || !rule.resources.is_empty() {
                causes.push(Cause::invalid(
                    format!("{path}.nonResourceURLs"),
                    format!("{:?}", rule.non_resource_urls),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        for (field, what, list) in
            [("apiGroups", "api group", &rule.api_groups), ("resources", "resource", &rule.resources)]
        {
            if list.is_empty() {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    field: format!("{path}.{field}"),
                    message: format!("Required value: resource rules must supply at least one {what}"),
                });
            }
        }
    }
}

fn validate_binding(obj: &Value, namespaced: bool, causes: &mut Vec<Cause>) {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
    if obj.get("roleRef").is_none_or(|r| !r.is_object()) {
        causes.push(Cause::required("roleRef"));
    } else {
        if s("/roleRef/apiGroup") != RBAC_GROUP {
            causes.push(Cause::unsupported("roleRef.apiGroup", s("/roleRef/apiGroup"), &[RBAC_GROUP]));
        }
        let kinds: &[&str] = if namespaced { &["Role", "ClusterRole"] } else { &["ClusterRole"] };
        if !kinds.contains(&s("/roleRef/kind")) {
            causes.push(Cause::unsupported("roleRef.kind", s("/roleRef/kind"), kinds));
        }
        let name = s("/roleRef/name");
        if name.is_empty() {
            causes.push(Cause::required("roleRef.name"));
        } else if !path_segment_ok(name) {
            causes.push(Cause::invalid("roleRef.name", name, "may not be '.' or '..' and may not contain '/' or '%'"));
        }
    }
    for (i, sub) in obj.get("subjects").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = format!("subjects[{i}]");
        let f = |p: &str| sub.get(p).and_then(Value::as_str).unwrap_or_default();
        if f("name").is_empty() {
            causes.push(Cause::required(format!("{path}.name")));
        }
        match f("kind") {
            "ServiceAccount" => {
                if !f("apiGroup").is_empty() {
                    causes.push(Cause::unsupported(format!("{path}.apiGroup"), f("apiGroup"), &[""]));
                }
                if f("namespace").is_empty() && !namespaced {
                    causes.push(Cause::required(format!("{path}.namespace")));
                }
            }
            "User" | "Group" => {
                if !matches!(f("apiGroup"), "" | RBAC_GROUP) {
                    causes.push(Cause::unsupported(format!("{path}.apiGroup"), f("apiGroup"), &[RBAC_GROUP]));
                }
            }
            other => {
                causes.push(Cause::unsupported(format!("{path}.kind"), other, &["ServiceAccount", "User", "Group"]))
            }
        }
    }
}

/// Validates an RBAC object (and, on update, that a binding's roleRef did not change).
pub fn validate(res: &ResourceDef, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    match res.kind {
        "Role" | "ClusterRole" => validate_rules(obj, res.namespaced, causes),
        "RoleBinding" | "ClusterRoleBinding" => {
            validate_binding(obj, res.namespaced, causes);
            if let Some(old) = old
                && old.get("roleRef") != obj.get("roleRef")
            {
                let r = obj.get("roleRef").map(Value::to_string).unwrap_or_default();
                causes.push(Cause::invalid("roleRef", r, "cannot change roleRef"));
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------- bootstrap policy

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

const READ: &[&str] = &["get", "list", "watch"];
const CERTIFICATES: &str = "certificates.k8s.io";
const NODE_CLIENT: &str = "system:certificates.k8s.io:certificatesigningrequests:nodeclient";
const SELF_NODE_CLIENT: &str = "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient";
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn view_rules() -> Vec<Value> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "pods/log",
                "pods/status",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                "serviceaccounts",
                "services",
                "services/status",
            ],
        ),
        rule(READ, &[""], &["bindings", "events", "limitranges", "namespaces", "namespaces/status", "resourcequotas"]),
        rule(
            READ,
            &["apps"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
        ),
        rule(READ, &["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"]),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
    ]
}

fn edit_rules() -> Vec<Value> {
    let mut rules = view_rules();
    rules.push(rule(READ, &[""], &["secrets"]));
    rules.push(rule(
        WRITE,
        &[""],
        &[
            "configmaps",
            "endpoints",
            "persistentvolumeclaims",
            "pods",
            "replicationcontrollers",
            "replicationcontrollers/scale",
            "secrets",
            "serviceaccounts",
            "services",
        ],
    ));
    rules.push(rule(&["create", "get"], &[""], &["pods/exec", "pods/portforward"]));
    rules.push(rule(
        WRITE,
        &["apps"],
        &[
            "daemonsets",
            "deployments",
            "deployments/scale",
            "replicasets",
            "replicasets/scale",
            "statefulsets",
            "statefulsets/scale",
        ],
    ));
    rules.push(rule(WRITE, &["batch"], &["cronjobs", "jobs"]));
    rules.push(rule(WRITE, &["discovery.k8s.io"], &["endpointslices"]));
    rules
}

fn admin_rules() -> Vec<Value> {
    let mut rules = edit_rules();
    let all: Vec<&str> = READ.iter().chain(WRITE).copied().collect();
    rules.push(rule(&all, &[RBAC_GROUP], &["rolebindings", "roles"]));
    rules.push(rule(&["create"], &["authorization.k8s.io"], &["localsubjectaccessreviews"]));
    rules
}

fn meta(name: &str) -> Value {
    json!({
        "name": name,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

/// The default cluster roles and bindings (a small subset of upstream's bootstrap policy).
pub fn bootstrap_objects() -> Vec<(&'static str, Value)> {
    let role = |name: &str, rules: Vec<Value>| {
        (
            "clusterroles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(name), "rules": rules}),
        )
    };
    let urls = |paths: &[&str]| vec![json!({"verbs": ["get"], "nonResourceURLs": paths})];
    let binding = |name: &str, role: &str, groups: &[&str]| {
        let subjects: Vec<Value> =
            groups.iter().map(|g| json!({"apiGroup": RBAC_GROUP, "kind": "Group", "name": g})).collect();
        (
            "clusterrolebindings",
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(name),
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
                "subjects": subjects,
            }),
        )
    };
    vec![
        role(
            "cluster-admin",
            vec![
                json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
                json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
            ],
        ),
        role("admin", admin_rules()),
        role("edit", edit_rules()),
        role("view", view_rules()),
        role(
            "system:discovery",
            urls(&[
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
                "/healthz",
                "/livez",
                "/openapi",
                "/openapi/*",
                "/readyz",
                "/version",
                "/version/",
            ]),
        ),
        role("system:public-info-viewer", urls(&["/healthz", "/livez", "/readyz", "/version", "/version/"])),
        role(
            "system:basic-user",
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                rule(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
        ),
        binding("cluster-admin", "cluster-admin", &[MASTERS]),
        // The in-process controllers: cluster-admin for now (upstream narrows this to the
        // `system:kube-controller-manager` role plus one service account per controller).
        (
            "clusterrolebindings",
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": meta("system:kube-controller-manager"),
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"apiGroup": RBAC_GROUP, "kind": "User", "name": "system:kube-controller-manager"}],
            }),
        ),
        binding("system:discovery", "system:discovery", &[authz::AUTHENTICATED]),
        binding("system:basic-user", "system:basic-user", &[authz::AUTHENTICATED]),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[authz::AUTHENTICATED, authz::UNAUTHENTICATED],
        ),
        // Node TLS bootstrapping (upstream's roles, kubeadm's bindings): bootstrappers may file
        // CSRs and have node client CSRs auto-approved; nodes have renewals of their own
        // identity auto-approved.
        role(
            "system:node-bootstrapper",
            vec![rule(&["create", "get", "list", "watch"], &[CERTIFICATES], &["certificatesigningrequests"])],
        ),
        role(NODE_CLIENT, vec![rule(&["create"], &[CERTIFICATES], &["certificatesigningrequests/nodeclient"])]),
        role(
            SELF_NODE_CLIENT,
            vec![rule(&["create"], &[CERTIFICATES], &["certificatesigningrequests/selfnodeclient"])],
        ),
        binding("kubeadm:kubelet-bootstrap", "system:node-bootstrapper", &[crate::auth::bootstrap::BOOTSTRAPPERS]),
        binding("kubeadm:node-autoapprove-bootstrap", NODE_CLIENT, &[crate::auth::bootstrap::BOOTSTRAPPERS]),
        binding("kubeadm:node-autoapprove-certificate-rotation", SELF_NODE_CLIENT, &[authz::NODES]),
    ]
}

/// `cur` with the rules and subjects of `want` it lacks, if it is marked for auto-update and lacks any.
fn reconciled(cur: &Value, want: &Value) -> Option<Value> {
    let auto = cur.pointer("/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate");
    if auto.and_then(Value::as_str) != Some("true") {
        return None;
    }
    let mut n = cur.clone();
    let mut changed = false;
    for field in ["rules", "subjects"] {
        let Some(want) = want.get(field).and_then(Value::as_array) else { continue };
        let have = n.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
        let missing: Vec<Value> = want.iter().filter(|w| !have.contains(w)).cloned().collect();
        if !missing.is_empty() {
            n[field] = Value::Array(have.into_iter().chain(missing).collect());
            changed = true;
        }
    }
    changed.then_some(n)
}

/// Creates the bootstrap policy; objects marked for auto-update get missing rules and subjects
/// back. Writes nothing when the policy is already in place (restarts do not touch it).
pub async fn ensure_bootstrap(api: &Arc<Api>) -> Result<(), ApiError> {
    let opts = WriteOpts { field_validation: FieldValidation::Strict, ..Default::default() };
    for (plural, obj) in bootstrap_objects() {
        let res = resources::find(RBAC_GROUP, "v1", plural).ok_or(ApiError::NoRoute)?;
        let name = key_of(&obj).1;
        let cur = match api.get(res, None, &name).await {
            Ok(cur) => cur,
            Err(ApiError::NotFound { .. }) => match api.create(res, None, obj.clone(), &opts).await {
                // Another apiserver on the same etcd may have been quicker; its copy is ours.
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        if reconciled(&cur, &obj).is_some() {
            api.update_with(res, None, &name, None, &opts, |cur| {
                Ok((reconciled(cur, &obj).unwrap_or_else(|| cur.clone()), None))
            })
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn res(plural: &str) -> &'static ResourceDef {
        resources::find(RBAC_GROUP, "v1", plural).unwrap()
    }

    #[test]
    fn validation_names_field_paths() {
        let mut c = Vec::new();
        validate(
            res("roles"),
            &json!({"rules": [{"apiGroups": [""], "resources": ["pods"]}, {"verbs": ["get"], "nonResourceURLs": ["/x"]}]}),
            None,
            &mut c,
        );
        let fields: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["rules[0].verbs", "rules[1].nonResourceURLs"]);
        let mut c = Vec::new();
        let b = json!({"roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "r"},
                       "subjects": [{"kind": "ServiceAccount", "name": "sa"}, {"kind": "Robot", "name": "x"}]});
        validate(res("clusterrolebindings"), &b, None, &mut c);
        let fields: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["roleRef.kind", "subjects[0].namespace", "subjects[1].kind"]);
        let mut c = Vec::new();
        validate(res("rolebindings"), &b, None, &mut c);
        assert_eq!(c.len(), 1, "{c:?}");
        let mut c = Vec::new();
        let mut changed = b.clone();
        changed["roleRef"]["name"] = json!("other");
        changed["subjects"] = json!([]);
        validate(res("rolebindings"), &changed, Some(&b), &mut c);
        assert_eq!(c.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(), ["roleRef"]);
        let mut c = Vec::new();
        validate(res("rolebindings"), &json!({"subjects": []}), None, &mut c);
        assert_eq!(c[0], Cause::required("roleRef"));
    }

    #[test]
    fn bootstrap_policy_is_consistent() {
        let a = Authorizer::default();
        for (plural, obj) in bootstrap_objects() {
            let mut c = Vec::new();
            validate(res(plural), &obj, None, &mut c);
            assert!(c.is_empty(), "{c:?}");
            a.apply(plural, &obj, true);
        }
        let user = |name: &str| (name.to_string(), vec![authz::AUTHENTICATED.to_string()]);
        let (n, g) = user("alice");
        let can = |at: Attributes| a.authorize(&Attributes { user: n.clone(), groups: g.clone(), ..at }).allowed;
        let url = |path: &str| Attributes { verb: "get".into(), path: path.into(), ..Default::default() };
        assert!(can(url("/apis")));
        assert!(can(url("/openapi/v3/api/v1")));
        let list_pods = Attributes {
            verb: "list".into(),
            resource_request: true,
            api_version: "v1".into(),
            resource: "pods".into(),
            namespace: "default".into(),
            ..Default::default()
        };
        assert!(!can(list_pods));
        let view =
            authz::rules_of(&bootstrap_objects().into_iter().find(|(_, o)| o["metadata"]["name"] == "view").unwrap().1);
        let edit =
            authz::rules_of(&bootstrap_objects().into_iter().find(|(_, o)| o["metadata"]["name"] == "edit").unwrap().1);
        let secrets = vec![Rule::from_json(&rule(&["get"], &[""], &["secrets"]))];
        assert!(!authz::uncovered(&view, &secrets).is_empty(), "view never reads secrets");
        assert!(authz::uncovered(&edit, &view).is_empty(), "edit covers view");
        // Admission: a role with secrets access is escalation for a view-only user, not for masters.
        a.apply(
            "rolebindings",
            &json!({"metadata": {"namespace": "t", "name": "v"}, "roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "User", "name": "alice"}]}),
            true,
        );
        let role = json!({"metadata": {"namespace": "t", "name": "r"}, "rules": [rule(&["get"], &[""], &["secrets"])]});
        let alice = UserInfo { name: "alice".into(), groups: g.clone() };
        let err = a.admit(&alice, res("roles"), &role, None).unwrap_err();
        assert!(err.to_string().starts_with("roles.rbac.authorization.k8s.io \"r\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}"), "{err}");
        let ok = json!({"metadata": {"namespace": "t", "name": "r"}, "rules": [rule(&["get"], &[""], &["pods"])]});
        a.admit(&alice, res("roles"), &ok, None).unwrap();
        let root = UserInfo { name: "root".into(), groups: vec![MASTERS.into()] };
        a.admit(&root, res("roles"), &role, None).unwrap();
        // Binding to edit needs edit's permissions (or bind); binding to view is fine.
        let bind = |role: &str| json!({"metadata": {"namespace": "t", "name": "b"}, "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role}, "subjects": []});
        a.admit(&alice, res("rolebindings"), &bind("view"), None).unwrap();
        assert_eq!(a.admit(&alice, res("rolebindings"), &bind("edit"), None).unwrap_err().code(), 403);
        assert_eq!(a.admit(&alice, res("rolebindings"), &bind("missing"), None).unwrap_err().code(), 404);
        // An unchanged rule set is no new grant (metadata-only updates pass).
        let mut relabelled = role.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        a.admit(&alice, res("roles"), &relabelled, Some(&role)).unwrap();
        // The `escalate` verb on roles and `bind` on one cluster role lift the checks, as upstream.
        a.apply(
            "clusterroles",
            &json!({"metadata": {"name": "lift"}, "rules": [
                rule(&["escalate"], &[RBAC_GROUP], &["roles"]),
                {"verbs": ["bind"], "apiGroups": [RBAC_GROUP], "resources": ["clusterroles"], "resourceNames": ["edit"]},
            ]}),
            true,
        );
        a.apply(
            "rolebindings",
            &json!({"metadata": {"namespace": "t", "name": "l"}, "roleRef": {"kind": "ClusterRole", "name": "lift"}, "subjects": [{"kind": "User", "name": "alice"}]}),
            true,
        );
        a.admit(&alice, res("roles"), &role, None).unwrap();
        a.admit(&alice, res("rolebindings"), &bind("edit"), None).unwrap();
        assert_eq!(a.admit(&alice, res("rolebindings"), &bind("admin"), None).unwrap_err().code(), 403);
        // The grant is namespaced: a ClusterRole with the same rules is still escalation.
        let mut cluster_role = role.clone();
        cluster_role["metadata"] = json!({"name": "cr"});
        assert_eq!(a.admit(&alice, res("clusterroles"), &cluster_role, None).unwrap_err().code(), 403);
    }

    #[test]
    fn bootstrap_reconcile_adds_only_what_is_missing() {
        let (_, view) = bootstrap_objects().into_iter().find(|(_, o)| o["metadata"]["name"] == "view").unwrap();
        assert_eq!(reconciled(&view, &view), None);
        let mut trimmed = view.clone();
        trimmed["rules"] = json!([view["rules"][0].clone(), rule(&["get"], &["example.com"], &["widgets"])]);
        let fixed = reconciled(&trimmed, &view).unwrap();
        assert_eq!(fixed["rules"].as_array().unwrap().len(), view["rules"].as_array().unwrap().len() + 1);
        assert_eq!(reconciled(&fixed, &view), None);
        let mut manual = trimmed.clone();
        manual["metadata"]["annotations"] = json!({"rbac.authorization.kubernetes.io/autoupdate": "false"});
        assert_eq!(reconciled(&manual, &view), None);
    }
}
