//! What differs per kind, behind one trait, as kube-apiserver's `pkg/registry/<group>/<kind>/strategy.go`
//! behind its generic store: the verbs in `write.rs` and `delete.rs` call these hooks and never
//! test a kind themselves. Kinds without special needs get [`Generic`], whose hooks are the
//! defaulting and validation of the pure semantics (`crate::objects`).
//!
//! A strategy may hold state that outlives a request: the Service strategy owns the ClusterIP and
//! NodePort allocators ([`service`]), the Pod strategy shares the graceful-deletion deadlines with
//! the sweeper.

mod alloc;
pub mod service;
pub mod tolerations;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde_json::{Value, json};

pub use self::alloc::{AllocError, Allocator};
use self::service::ServiceStrategy;
use super::{meta_str, rbac, status_has_terminal_phase};
use crate::error::ApiError;
use crate::objects;
use crate::resources::ResourceDef;

/// Pods in graceful deletion: storage key → deadline.
pub type GracefulDeadlines = Arc<Mutex<HashMap<String, chrono::DateTime<Utc>>>>;

/// The per-kind hooks of the generic verbs. Every hook has the behaviour of a kind without
/// special needs as its default.
pub trait Strategy: Send + Sync {
    /// Defaults filled on create (upstream's defaulting plus `PrepareForCreate`).
    fn defaults(&self, res: &ResourceDef, obj: &mut Value) {
        objects::apply_defaults(res, obj);
    }

    /// Fields the server sets on create once metadata is final (e.g. a Job's generated selector).
    fn prepare_for_create(&self, _obj: &mut Value) {}

    /// What an update may not drop or change (`PrepareForUpdate`), after the generic carry-over
    /// of server-owned metadata and status.
    fn prepare_for_update(&self, _old: &Value, _new: &mut Value) {}

    /// Validation on create (`old` is `None`) and update.
    fn validate(&self, res: &ResourceDef, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        objects::validate(res, obj, old)
    }

    /// Takes what the object needs from shared pools (addresses, ports). Given back with
    /// [`Strategy::release`] when the write does not happen.
    fn allocate(&self, _obj: &mut Value, _old: Option<&Value>) -> Result<Reservation, ApiError> {
        Ok(Reservation::default())
    }

    /// Gives back a reservation whose write failed or was a dry run.
    fn release(&self, _reserved: &Reservation) {}

    /// After an update was stored.
    fn after_update(&self, _old: &Value, _new: &Value) {}

    /// Whether an object whose deletion was requested and whose finalizers are all gone may be
    /// removed now.
    fn ready_to_delete(&self, _obj: &Value) -> bool {
        true
    }

    /// After the object was removed from storage.
    fn after_delete(&self, _res: &ResourceDef, _obj: &Value) {}
}

/// What one write took from shared pools.
#[derive(Debug, Default)]
pub struct Reservation(Vec<Allocation>);

#[derive(Debug, Clone, Copy)]
enum Allocation {
    Ip(Ipv4Addr),
    Port(u16),
}

/// Kinds without special needs.
#[derive(Debug, Default)]
pub struct Generic;

impl Strategy for Generic {}

/// Pods: a pod in graceful deletion goes once its containers are done (or its node confirms with
/// a zero-grace delete, or the grace period ends: see the sweeper in `delete.rs`).
#[derive(Debug)]
pub struct PodStrategy {
    graceful: GracefulDeadlines,
    /// The DefaultTolerationSeconds admission's settings ([`tolerations`]).
    pub(crate) default_tolerations: tolerations::DefaultTolerationSeconds,
}

impl Strategy for PodStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        tolerations::admit(obj, self.default_tolerations);
    }

    fn ready_to_delete(&self, obj: &Value) -> bool {
        status_has_terminal_phase(obj) || obj.pointer("/spec/nodeName").is_none()
    }

    fn after_delete(&self, res: &ResourceDef, obj: &Value) {
        let key = res.key(meta_str(obj, "namespace"), meta_str(obj, "name").unwrap_or_default());
        self.graceful.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
    }
}

/// Namespaces: removed only once their `spec.finalizers` are empty too.
#[derive(Debug, Default)]
pub struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    /// Every namespace starts with the `kubernetes` finalizer, whatever the client sent
    /// (upstream's PrepareForCreate; protobuf clients send an empty list).
    fn prepare_for_create(&self, obj: &mut Value) {
        ensure_kubernetes_finalizer(obj);
    }

    /// `spec.finalizers` changes only through `namespaces/{name}/finalize` (see `write.rs`).
    fn prepare_for_update(&self, old: &Value, new: &mut Value) {
        match old.pointer("/spec/finalizers") {
            Some(f) => new["spec"]["finalizers"] = f.clone(),
            None => {
                if let Some(Value::Object(spec)) = new.get_mut("spec") {
                    spec.remove("finalizers");
                }
            }
        }
    }

    fn ready_to_delete(&self, obj: &Value) -> bool {
        obj.pointer("/spec/finalizers").and_then(Value::as_array).is_none_or(|f| f.is_empty())
    }
}

/// Adds `kubernetes` to a namespace's `spec.finalizers` (the namespace controller's finalizer).
pub fn ensure_kubernetes_finalizer(obj: &mut Value) {
    let Some(m) = obj.as_object_mut() else { return };
    let spec = m.entry("spec").or_insert_with(|| json!({}));
    if !spec.is_object() {
        *spec = json!({});
    }
    if let Value::Object(spec) = spec {
        let f = spec.entry("finalizers").or_insert_with(|| json!([]));
        if !f.is_array() {
            *f = json!([]);
        }
        if let Value::Array(a) = f
            && !a.iter().any(|x| x == "kubernetes")
        {
            a.push(json!("kubernetes"));
        }
    }
}

/// Roles and bindings: subjects defaulted, rules and references validated by the RBAC code
/// (which shares the authorizer's rule parser).
#[derive(Debug, Default)]
pub struct RbacStrategy;

impl Strategy for RbacStrategy {
    fn defaults(&self, res: &ResourceDef, obj: &mut Value) {
        objects::apply_defaults(res, obj);
        if matches!(res.kind, "RoleBinding" | "ClusterRoleBinding") {
            rbac::apply_defaults(obj);
        }
    }

    fn validate(&self, res: &ResourceDef, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        objects::validate_with(res, obj, old, |causes| rbac::validate(res, obj, old, causes))
    }
}

/// Jobs: a generated selector.
#[derive(Debug, Default)]
pub struct JobStrategy;

impl Strategy for JobStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        default_job_selector(obj);
    }
}

/// The strategy of every served kind.
#[derive(Debug)]
pub struct Strategies {
    pub service: ServiceStrategy,
    pub pod: PodStrategy,
    namespace: NamespaceStrategy,
    job: JobStrategy,
    rbac: RbacStrategy,
    generic: Generic,
}

impl Strategies {
    pub fn new(service_cidr: ipnet::Ipv4Net, graceful: GracefulDeadlines) -> Self {
        Strategies {
            service: ServiceStrategy::new(service_cidr),
            pod: PodStrategy { graceful, default_tolerations: Default::default() },
            namespace: NamespaceStrategy,
            job: JobStrategy,
            rbac: RbacStrategy,
            generic: Generic,
        }
    }

    pub fn of(&self, res: &ResourceDef) -> &dyn Strategy {
        match (res.group, res.kind) {
            ("", "Service") => &self.service,
            ("", "Pod") => &self.pod,
            ("", "Namespace") => &self.namespace,
            ("batch", "Job") => &self.job,
            (objects::RBAC_GROUP, _) => &self.rbac,
            _ => &self.generic,
        }
    }
}

/// Jobs get a generated selector on their own uid unless `manualSelector` is set.
fn default_job_selector(obj: &mut Value) {
    if obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let uid = meta_str(obj, "uid").unwrap_or_default().to_string();
    let name = meta_str(obj, "name").unwrap_or_default().to_string();
    let labels: BTreeMap<&str, &str> = [
        ("batch.kubernetes.io/controller-uid", uid.as_str()),
        ("batch.kubernetes.io/job-name", name.as_str()),
        ("controller-uid", uid.as_str()),
        ("job-name", name.as_str()),
    ]
    .into_iter()
    .collect();
    obj["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    if let Some(t) = obj.pointer_mut("/spec/template") {
        if !t.pointer("/metadata/labels").is_some_and(Value::is_object) {
            if !t.get("metadata").is_some_and(Value::is_object) {
                t["metadata"] = json!({});
            }
            t["metadata"]["labels"] = json!({});
        }
        if let Some(Value::Object(m)) = t.pointer_mut("/metadata/labels") {
            for (k, v) in &labels {
                m.insert((*k).into(), json!(v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::resources;

    fn strategies() -> Strategies {
        Strategies::new("10.96.0.0/28".parse().unwrap(), GracefulDeadlines::default())
    }

    #[test]
    fn kinds_get_their_strategy_and_others_the_generic_one() {
        let s = strategies();
        let res = |plural: &str| resources::RESOURCES.iter().find(|r| r.plural == plural).unwrap();
        let bound = json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(!s.of(res("pods")).ready_to_delete(&bound), "a running bound pod waits for its node");
        let done = json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Succeeded"}});
        assert!(s.of(res("pods")).ready_to_delete(&done));
        assert!(s.of(res("pods")).ready_to_delete(&json!({"spec": {}})), "an unbound pod goes at once");
        let held = json!({"spec": {"finalizers": ["kubernetes"]}});
        assert!(!s.of(res("namespaces")).ready_to_delete(&held));
        assert!(s.of(res("namespaces")).ready_to_delete(&json!({"spec": {"finalizers": []}})));
        assert!(s.of(res("configmaps")).ready_to_delete(&held), "spec.finalizers mean nothing to other kinds");
        let mut job = json!({"metadata": {"name": "j", "uid": "u1"}, "spec": {"template": {}}});
        s.of(res("jobs")).prepare_for_create(&mut job);
        assert_eq!(job["spec"]["selector"], json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}}));
        assert_eq!(job["spec"]["template"]["metadata"]["labels"]["job-name"], "j");
        let mut cm = json!({"metadata": {"name": "c"}});
        s.of(res("configmaps")).prepare_for_create(&mut cm);
        assert_eq!(cm, json!({"metadata": {"name": "c"}}));
    }

    #[test]
    fn rbac_rules_are_validated_and_subjects_defaulted() {
        let s = strategies();
        let rb = resources::find("rbac.authorization.k8s.io", "v1", "rolebindings").unwrap();
        let mut obj = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "system:x", "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            "subjects": [{"kind": "User", "name": "u"}]});
        s.of(rb).defaults(rb, &mut obj);
        assert_eq!(obj["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
        s.of(rb).validate(rb, &obj, None).unwrap();
        obj["roleRef"]["kind"] = json!("Pod");
        let ApiError::Invalid { causes, .. } = s.of(rb).validate(rb, &obj, None).unwrap_err() else {
            panic!("not Invalid")
        };
        assert_eq!(causes[0].field, "roleRef.kind");
    }

    #[test]
    fn services_take_and_give_back_addresses_and_ports() {
        let s = strategies();
        let svc = &s.service;
        let mut a = json!({"metadata": {"name": "a"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let reserved = svc.allocate(&mut a, None).unwrap();
        let ip = a["spec"]["clusterIP"].as_str().unwrap().to_string();
        let port = a["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert_eq!(a["spec"]["clusterIPs"], json!([ip]));
        assert!((30000..=32767).contains(&port));
        // Taken: asking for the same address or port again fails with a field cause.
        let mut b = json!({"metadata": {"name": "b"}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}});
        let err = svc.allocate(&mut b, None).unwrap_err();
        assert!(err.to_string().contains("already allocated"), "{err}");
        // A failed write gives everything back.
        svc.release(&reserved);
        let mut c = json!({"metadata": {"name": "c"}, "spec": {"clusterIP": ip, "type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}});
        svc.allocate(&mut c, None).unwrap();
        // An update that leaves clusterIP empty keeps the allocated one; dropping the node port frees it.
        let mut update = json!({"metadata": {"name": "c"}, "spec": {"clusterIP": "", "ports": [{"port": 80}]}});
        svc.prepare_for_update(&c, &mut update);
        assert_eq!(update["spec"]["clusterIP"], json!(ip));
        svc.allocate(&mut update, Some(&c)).unwrap();
        assert!(update["spec"]["ports"][0].get("nodePort").is_none(), "ClusterIP services have no node ports");
        svc.after_update(&c, &update);
        let mut d =
            json!({"metadata": {"name": "d"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}});
        svc.allocate(&mut d, None).unwrap();
        // Deleting returns the address.
        let services = resources::RESOURCES.iter().find(|r| r.plural == "services").unwrap();
        svc.after_delete(services, &update);
        let mut e = json!({"metadata": {"name": "e"}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}});
        svc.allocate(&mut e, None).unwrap();
    }
}
