//! The static catalogue of served resources: what discovery advertises and what the router accepts.

/// One served resource (one plural name in one group-version).
#[derive(Debug, Clone, Copy)]
pub struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources beyond the object itself: "status", "scale", "binding", "log", "exec", "portforward".
    pub subresources: &'static [&'static str],
    /// Whether the name must be a DNS-1123 label (else a DNS-1123 subdomain).
    pub label_name: bool,
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }
    pub fn has_sub(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }
    /// Storage key prefix, kube-apiserver style (`/registry/<resource>/`). Endpointslices, leases
    /// and the like use the plural name; group-qualified layouts are not needed to stay unique here.
    pub fn key_prefix(&self) -> String {
        format!("/registry/{}/", self.storage_name())
    }
    fn storage_name(&self) -> &'static str {
        match self.plural {
            "services" => "services/specs",
            "endpoints" => "services/endpoints",
            "nodes" => "minions",
            "replicationcontrollers" => "controllers",
            other => other,
        }
    }
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }
    /// Verbs advertised in discovery.
    pub fn verbs(&self) -> &'static [&'static str] {
        if matches!(self.group, AUTHZ | AUTHN) {
            // Access and identity reviews are answered, never stored.
            return &["create"];
        }
        &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    }
    /// Whether `spec` changes bump metadata.generation (everything with a spec, plus none else).
    pub fn has_generation(&self) -> bool {
        !matches!(
            self.plural,
            "configmaps"
                | "secrets"
                | "events"
                | "endpoints"
                | "serviceaccounts"
                | "endpointslices"
                | "leases"
                | "roles"
                | "clusterroles"
                | "rolebindings"
                | "clusterrolebindings"
        )
    }
}

#[allow(clippy::too_many_arguments)]
const fn r(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
    label_name: bool,
) -> ResourceDef {
    ResourceDef {
        group,
        version,
        plural,
        singular,
        kind,
        namespaced,
        short_names,
        categories,
        subresources,
        label_name,
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

pub static RESOURCES: &[ResourceDef] = &[
    r("", "v1", "namespaces", "namespace", "Namespace", false, &["ns"], NONE, &["status", "finalize"], true),
    r("", "v1", "pods", "pod", "Pod", true, &["po"], ALL, &["status", "binding", "log", "exec", "portforward"], false),
    r("", "v1", "services", "service", "Service", true, &["svc"], ALL, &["status"], true),
    r("", "v1", "endpoints", "endpoints", "Endpoints", true, &["ep"], NONE, NONE, false),
    r("", "v1", "configmaps", "configmap", "ConfigMap", true, &["cm"], NONE, NONE, false),
    r("", "v1", "secrets", "secret", "Secret", true, NONE, NONE, NONE, false),
    r("", "v1", "nodes", "node", "Node", false, &["no"], NONE, &["status"], false),
    r("", "v1", "events", "event", "Event", true, &["ev"], NONE, NONE, false),
    r("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", true, &["sa"], NONE, NONE, false),
    r(
        "",
        "v1",
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        true,
        &["rc"],
        ALL,
        &["status", "scale"],
        false,
    ),
    r("apps", "v1", "deployments", "deployment", "Deployment", true, &["deploy"], ALL, &["status", "scale"], false),
    r("apps", "v1", "replicasets", "replicaset", "ReplicaSet", true, &["rs"], ALL, &["status", "scale"], false),
    r("apps", "v1", "daemonsets", "daemonset", "DaemonSet", true, &["ds"], ALL, &["status"], false),
    r("apps", "v1", "statefulsets", "statefulset", "StatefulSet", true, &["sts"], ALL, &["status", "scale"], false),
    r("batch", "v1", "jobs", "job", "Job", true, NONE, ALL, &["status"], false),
    r("batch", "v1", "cronjobs", "cronjob", "CronJob", true, &["cj"], ALL, &["status"], false),
    r("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", true, NONE, NONE, NONE, false),
    r("coordination.k8s.io", "v1", "leases", "lease", "Lease", true, NONE, NONE, NONE, false),
    r(RBAC, "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", false, NONE, NONE, NONE, false),
    r(RBAC, "v1", "clusterroles", "clusterrole", "ClusterRole", false, NONE, NONE, NONE, false),
    r(RBAC, "v1", "rolebindings", "rolebinding", "RoleBinding", true, NONE, NONE, NONE, false),
    r(RBAC, "v1", "roles", "role", "Role", true, NONE, NONE, NONE, false),
    r(
        AUTHZ,
        "v1",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        "SelfSubjectAccessReview",
        false,
        NONE,
        NONE,
        NONE,
        false,
    ),
    r(
        AUTHZ,
        "v1",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        "SelfSubjectRulesReview",
        false,
        NONE,
        NONE,
        NONE,
        false,
    ),
    r(
        AUTHZ,
        "v1",
        "subjectaccessreviews",
        "subjectaccessreview",
        "SubjectAccessReview",
        false,
        NONE,
        NONE,
        NONE,
        false,
    ),
    r(AUTHN, "v1", "selfsubjectreviews", "selfsubjectreview", "SelfSubjectReview", false, NONE, NONE, NONE, false),
    r(
        CERTS,
        "v1",
        "certificatesigningrequests",
        "certificatesigningrequest",
        "CertificateSigningRequest",
        false,
        &["csr"],
        NONE,
        &["status", "approval"],
        false,
    ),
];

const RBAC: &str = "rbac.authorization.k8s.io";
const AUTHZ: &str = "authorization.k8s.io";
const AUTHN: &str = "authentication.k8s.io";
const CERTS: &str = "certificates.k8s.io";

/// Served API groups in discovery order (core group is "").
pub static GROUPS: &[&str] =
    &["", "apps", "batch", "discovery.k8s.io", "coordination.k8s.io", RBAC, AUTHZ, AUTHN, CERTS];

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static ResourceDef> {
    RESOURCES.iter().find(|r| r.api_version() == api_version && r.kind == kind)
}

pub fn group_has_version(group: &str, version: &str) -> bool {
    RESOURCES.iter().any(|r| r.group == group && r.version == version)
}
