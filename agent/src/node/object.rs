//! The Node object as kubelet writes it, built from [`NodeFacts`] and [`SystemInfo`]. Pure.
//!
//! Conditions follow kubelet's `setNodeStatus` rules: each condition keeps its
//! `lastTransitionTime` while its status does not change, and `lastHeartbeatTime` is the time of
//! this report. [`changed`] compares two statuses *ignoring* heartbeat times, which is how the
//! heartbeat loop decides between "patch now" and "wait for the report frequency".

use super::NodeFacts;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// The version string the agent reports as `nodeInfo.kubeletVersion`.
pub const KUBELET_VERSION: &str = "v1.33.0-keelson";

/// What `nodeInfo` says about the machine and its software.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemInfo {
    pub kernel_version: String,
    pub os_image: String,
    /// `containerd://1.6.20`.
    pub container_runtime_version: String,
    pub machine_id: String,
    pub boot_id: String,
}

impl SystemInfo {
    /// Reads the kernel release, OS image, machine and boot ids from `/proc` and `/etc`;
    /// `runtime` is the runtime's own version string (`containerd 1.6.20`).
    pub fn read(runtime: &str) -> SystemInfo {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
        SystemInfo {
            kernel_version: read("/proc/sys/kernel/osrelease"),
            os_image: os_image(&read("/etc/os-release")),
            container_runtime_version: runtime_version(runtime),
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// `PRETTY_NAME` of an os-release file (`Linux` if absent).
pub fn os_image(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// `containerd 1.6.20` → `containerd://1.6.20` (the CRI's `<runtime>://<version>` form).
pub fn runtime_version(v: &str) -> String {
    match v.split_once(' ') {
        Some((name, ver)) => format!("{name}://{}", ver.trim().trim_start_matches('v')),
        None => v.to_string(),
    }
}

/// Go's name for the architecture (`amd64`, `arm64`), as in `kubernetes.io/arch`.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// The Node as first created: name and the well-known labels (kubelet's `initialNode`).
pub fn initial_node(name: &str) -> Node {
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), go_arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), go_arch().to_string()),
    ]);
    Node {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels), ..Default::default() },
        ..Default::default()
    }
}

/// Whether the agent is serving (Ready) or stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Stopping,
}

/// The wanted conditions: `(type, status, reason, message)`.
fn wanted_conditions(ready: Readiness) -> [(&'static str, &'static str, &'static str, &'static str); 4] {
    [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        match ready {
            Readiness::Ready => ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            Readiness::Stopping => ("Ready", "False", "KubeletNotReady", "kubelet is stopping"),
        },
    ]
}

/// The conditions for this report: transition times kept from `prev` where the status is the same.
pub fn conditions(prev: &[NodeCondition], ready: Readiness, now: DateTime<Utc>) -> Vec<NodeCondition> {
    let now = crate::pod::status::to_time(now);
    wanted_conditions(ready)
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let transition = prev
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            NodeCondition {
                type_: type_.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(transition),
            }
        })
        .collect()
}

/// The full status for this report. `prev` is the status in the API (for transition times);
/// `images` the image names the node holds.
pub fn node_status(
    facts: &NodeFacts,
    info: &SystemInfo,
    images: &[String],
    ready: Readiness,
    prev: Option<&NodeStatus>,
    now: DateTime<Utc>,
) -> NodeStatus {
    let mut st = facts.node_status();
    let prev_conds = prev.and_then(|p| p.conditions.clone()).unwrap_or_default();
    st.conditions = Some(conditions(&prev_conds, ready, now));
    st.node_info = Some(NodeSystemInfo {
        architecture: go_arch().into(),
        boot_id: info.boot_id.clone(),
        container_runtime_version: info.container_runtime_version.clone(),
        kernel_version: info.kernel_version.clone(),
        kube_proxy_version: String::new(),
        kubelet_version: KUBELET_VERSION.into(),
        machine_id: info.machine_id.clone(),
        operating_system: "linux".into(),
        os_image: info.os_image.clone(),
        system_uuid: info.machine_id.clone(),
        ..Default::default()
    });
    st.images = (!images.is_empty()).then(|| {
        images
            .iter()
            .map(|n| k8s_openapi::api::core::v1::ContainerImage { names: Some(vec![n.clone()]), size_bytes: None })
            .collect()
    });
    st.daemon_endpoints = None;
    st
}

/// Whether `a` and `b` differ in anything but heartbeat times.
pub fn changed(a: &NodeStatus, b: &NodeStatus) -> bool {
    fn strip(s: &NodeStatus) -> NodeStatus {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    }
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            hostname: "n1".into(),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            cpus: 2,
            memory_bytes: 4 << 30,
            ephemeral_storage_bytes: 1 << 30,
            max_pods: 110,
        }
    }

    #[test]
    fn versions_and_os_image() {
        assert_eq!(runtime_version("containerd 1.6.20"), "containerd://1.6.20");
        assert_eq!(runtime_version("containerd v2.0.1"), "containerd://2.0.1");
        assert_eq!(
            os_image("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(os_image(""), "Linux");
    }

    #[test]
    fn conditions_keep_transition_times_until_the_status_flips() {
        let t0 = Utc::now() - chrono::Duration::seconds(100);
        let t1 = Utc::now();
        let first = conditions(&[], Readiness::Ready, t0);
        let again = conditions(&first, Readiness::Ready, t1);
        let ready = |cs: &[NodeCondition]| cs.iter().find(|c| c.type_ == "Ready").cloned().unwrap();
        assert_eq!(ready(&again).last_transition_time, ready(&first).last_transition_time);
        assert_ne!(ready(&again).last_heartbeat_time, ready(&first).last_heartbeat_time);
        let stopping = conditions(&again, Readiness::Stopping, t1);
        let r = ready(&stopping);
        assert_eq!((r.status.as_str(), r.reason.as_deref()), ("False", Some("KubeletNotReady")));
        assert_eq!(r.last_transition_time, Some(crate::pod::status::to_time(t1)));
        let reasons: Vec<_> = stopping.iter().filter_map(|c| c.reason.clone()).collect();
        assert!(reasons.contains(&"KubeletHasSufficientMemory".to_string()), "{reasons:?}");
    }

    #[test]
    fn changed_ignores_heartbeats_only() {
        let info = SystemInfo { container_runtime_version: "containerd://1.6.20".into(), ..Default::default() };
        let t0 = Utc::now() - chrono::Duration::seconds(10);
        let a = node_status(&facts(), &info, &[], Readiness::Ready, None, t0);
        let b = node_status(&facts(), &info, &[], Readiness::Ready, Some(&a), Utc::now());
        assert!(!changed(&a, &b));
        let c = node_status(&facts(), &info, &["x:1".into()], Readiness::Ready, Some(&a), Utc::now());
        assert!(changed(&a, &c));
        let d = node_status(&facts(), &info, &[], Readiness::Stopping, Some(&a), Utc::now());
        assert!(changed(&a, &d));
        let ni = b.node_info.unwrap();
        assert_eq!((ni.kubelet_version.as_str(), ni.operating_system.as_str()), (KUBELET_VERSION, "linux"));
        assert_eq!(b.allocatable.unwrap()["pods"].0, "110");
    }

    #[test]
    fn initial_node_has_the_well_known_labels() {
        let n = initial_node("n1");
        let l = n.metadata.labels.unwrap();
        assert_eq!(l["kubernetes.io/hostname"], "n1");
        assert_eq!(l["kubernetes.io/os"], "linux");
    }
}
