//! cgroups for pods: a keelson root with kubelet's QoS tiers, one cgroup per pod.
//!
//! Layout (cgroupfs driver, names relative to every hierarchy's mount point):
//!
//! ```text
//! /<root>/pod<uid>/<container-id>              Guaranteed pods sit directly under the root (as in kubelet)
//! /<root>/burstable/pod<uid>/<container-id>
//! /<root>/besteffort/pod<uid>/<container-id>
//! ```
//!
//! Division of labour: the agent creates and limits the root, tiers and pod cgroups through the
//! [`Cgroups`] seam; runc creates each container's leaf cgroup itself from the OCI spec's
//! `linux.cgroupsPath` (see [`container_cgroup_path`]) and applies the container-level values the
//! agent computes with [`container_resources`]. Pod limits bound the sum of the containers, as in
//! kubelet, so a pod cannot escape its limits by adding containers.
//!
//! The pure arithmetic (QoS class, shares, quota, oom_score_adj, v1↔v2 conversions) lives in
//! [`resources`] (quantities are read with [`keelson_apimachinery::quantity`]); [`fs::CgroupFs`] is the real
//! implementation for cgroup v1 (incl. hybrid) and v2; `fake::FakeCgroups` (feature
//! `test-helpers`) is a stateful fake.

pub mod fs;
pub mod resources;

#[cfg(any(test, feature = "test-helpers"))]
pub mod fake;

use std::path::PathBuf;

pub use fs::CgroupFs;
pub use resources::{
    ContainerResources, QosClass, ResourceConfig, ResourceError, container_resources, oom_score_adj,
    pod_resource_config, qos_class,
};

/// Default name of the keelson root cgroup.
pub const DEFAULT_ROOT_NAME: &str = "keelson";

/// Errors of cgroup operations, each naming the cgroup path involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroup name component {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("no usable cgroup hierarchy found: {reason}")]
    NoHierarchy { reason: String },
    #[error("cgroup {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {path}: writing {value:?}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {path} still has processes {pids:?}; stop them before removing the pod cgroup")]
    Busy { path: PathBuf, pids: Vec<i32> },
}

pub type Result<T, E = CgroupError> = std::result::Result<T, E>;

/// The desired state of one pod's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod's metadata.uid.
    pub uid: String,
    pub qos: QosClass,
    pub resources: ResourceConfig,
}

impl PodCgroup {
    /// The desired cgroup of a pod: its QoS class and kubelet's pod-level values, with the node's
    /// per-pod pids limit. Fails naming the first bad quantity.
    pub fn for_pod(
        uid: &str,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        pids_limit: Option<i64>,
    ) -> Result<Self, ResourceError> {
        Ok(PodCgroup { uid: uid.to_string(), qos: qos_class(spec)?, resources: pod_resource_config(spec, pids_limit)? })
    }
}

/// A pod cgroup found on the host (for adoption and garbage collection after a restart).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodCgroupRef {
    pub uid: String,
    pub qos: QosClass,
}

/// The seam between the pod manager and the cgroup filesystem. All methods are idempotent and
/// synchronous (a handful of small file writes); call them from `spawn_blocking` if that matters.
pub trait Cgroups: Send + Sync {
    /// Creates the keelson root and the QoS tier cgroups if missing; the best-effort tier gets
    /// the minimum cpu weight.
    fn ensure_root(&self) -> Result<()>;
    /// Sets the burstable tier's cpu weight from the sum of the cpu requests (millicores) of all
    /// burstable pods on the node, as kubelet's QoS manager does after pods come and go.
    fn set_burstable_cpu_requests(&self, total_milli: i64) -> Result<()>;
    /// Creates the pod cgroup (and missing parents) and converges its limits to `pod.resources`.
    fn ensure_pod(&self, pod: &PodCgroup) -> Result<()>;
    /// Removes the pod cgroup (in whichever tier it is) from every hierarchy, leftover container
    /// leaves first. Absent is success. Processes still inside → [`CgroupError::Busy`].
    fn remove_pod(&self, uid: &str) -> Result<()>;
    /// PIDs of all processes in the pod cgroup and its children (empty if absent).
    fn pod_pids(&self, uid: &str) -> Result<Vec<i32>>;
    /// Sends SIGKILL to every process left in the pod cgroup (what kubelet does before removing
    /// a pod cgroup whose containers are gone) and returns their PIDs. Already-exited is fine.
    fn kill_pod_processes(&self, uid: &str) -> Result<Vec<i32>>;
    /// Pod cgroups present under the keelson root, sorted.
    fn list_pods(&self) -> Result<Vec<PodCgroupRef>>;
    /// The name of the keelson root cgroup.
    fn root_name(&self) -> &str;
}

/// Checks that a name is usable as one cgroup path component.
pub fn validate_component(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.contains('/') || name.contains('\0') || name.contains('\n') {
        Some("contains '/', newline or NUL")
    } else if name == "." || name == ".." {
        Some("is a relative path component")
    } else if name.len() > 200 {
        Some("too long")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CgroupError::InvalidName { name: name.to_string(), reason }),
        None => Ok(()),
    }
}

/// The pod's cgroup path relative to a hierarchy root, e.g. `/keelson/burstable/pod<uid>`.
pub fn pod_cgroup_path(root_name: &str, qos: QosClass, uid: &str) -> String {
    match qos.tier_dir() {
        Some(tier) => format!("/{root_name}/{tier}/pod{uid}"),
        None => format!("/{root_name}/pod{uid}"),
    }
}

/// The value for the OCI spec's `linux.cgroupsPath` of a container (runc cgroupfs driver: an
/// absolute path below every hierarchy's root), e.g. `/keelson/burstable/pod<uid>/<container-id>`.
pub fn container_cgroup_path(root_name: &str, qos: QosClass, uid: &str, container_id: &str) -> String {
    format!("{}/{container_id}", pod_cgroup_path(root_name, qos, uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_kubelet_layout() {
        assert_eq!(pod_cgroup_path("keelson", QosClass::Guaranteed, "u-1"), "/keelson/podu-1");
        assert_eq!(pod_cgroup_path("keelson", QosClass::Burstable, "u-1"), "/keelson/burstable/podu-1");
        assert_eq!(pod_cgroup_path("k", QosClass::BestEffort, "u"), "/k/besteffort/podu");
        assert_eq!(
            container_cgroup_path("keelson", QosClass::Burstable, "u-1", "abc"),
            "/keelson/burstable/podu-1/abc"
        );
    }

    #[test]
    fn pod_cgroup_from_a_spec() {
        use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let limits = [("cpu", "500m"), ("memory", "64Mi")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect();
        let spec = PodSpec {
            containers: vec![Container {
                name: "app".into(),
                resources: Some(ResourceRequirements { limits: Some(limits), ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let pod = PodCgroup::for_pod("u1", &spec, Some(100)).expect("valid spec");
        assert_eq!(pod.qos, QosClass::Guaranteed);
        assert_eq!(pod.resources.cpu_quota_us, Some(50_000));
        assert_eq!(pod.resources.memory_limit_bytes, Some(64 << 20));
        assert_eq!(pod.resources.pids_limit, Some(100));
    }

    #[test]
    fn components_are_validated() {
        assert!(validate_component("pod123").is_ok());
        for bad in ["", ".", "..", "a/b", "a\nb"] {
            assert!(validate_component(bad).is_err(), "{bad:?}");
        }
    }
}
