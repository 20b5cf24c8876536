//! The pod network seam: how the manager wires a sandbox's network namespace.
//!
//! The real implementation, [`CniNetwork`], drives the CNI runtime (`crate::cni`) — the agent is
//! the CNI caller, like libcni in containerd's CRI plugin. The trait keeps the executor testable
//! with a fake and leaves room for host-network pods later.

#[cfg(feature = "test-helpers")]
pub mod fake;

use async_trait::async_trait;
use std::path::Path;

/// Identity of the pod a sandbox belongs to (passed to CNI as `K8S_POD_*` args).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, thiserror::Error)]
#[error("pod network {op} for sandbox {sandbox}: {message}")]
pub struct NetworkError {
    pub op: &'static str,
    pub sandbox: String,
    pub message: String,
}

#[async_trait]
pub trait PodNetwork: Send + Sync + 'static {
    /// Attaches the sandbox's netns to the pod network; returns the pod IP.
    async fn setup(&self, sandbox_id: &str, netns: &Path, pod: &PodRef) -> Result<Option<String>, NetworkError>;
    /// Detaches it. Idempotent; works when the netns is already gone.
    async fn teardown(&self, sandbox_id: &str, netns: Option<&Path>, pod: &PodRef) -> Result<(), NetworkError>;
    /// Releases every attachment not belonging to one of `valid` sandboxes (agent start).
    async fn gc(&self, valid: &[String]) -> Result<(), NetworkError>;
}

/// [`PodNetwork`] over the CNI runtime.
pub struct CniNetwork {
    pub cni: crate::cni::CniRuntime,
    pub ifname: String,
}

fn net_err(op: &'static str, sandbox: &str, e: impl std::fmt::Display) -> NetworkError {
    NetworkError { op, sandbox: sandbox.to_string(), message: e.to_string() }
}

fn attachment(sandbox_id: &str, netns: Option<&Path>, pod: &PodRef, ifname: &str) -> crate::cni::Attachment {
    crate::cni::Attachment {
        container_id: sandbox_id.to_string(),
        netns: netns.map(|p| p.to_path_buf()),
        ifname: ifname.to_string(),
        pod_name: pod.name.clone(),
        pod_namespace: pod.namespace.clone(),
        pod_uid: pod.uid.clone(),
        ..Default::default()
    }
}

#[async_trait]
impl PodNetwork for CniNetwork {
    async fn setup(&self, sandbox_id: &str, netns: &Path, pod: &PodRef) -> Result<Option<String>, NetworkError> {
        let att = attachment(sandbox_id, Some(netns), pod, &self.ifname);
        let res = self.cni.add(&att).await.map_err(|e| net_err("ADD", sandbox_id, e))?;
        Ok(res.pod_ips().first().map(|ip| ip.to_string()))
    }

    async fn teardown(&self, sandbox_id: &str, netns: Option<&Path>, pod: &PodRef) -> Result<(), NetworkError> {
        let att = attachment(sandbox_id, netns, pod, &self.ifname);
        self.cni.del(&att).await.map_err(|e| net_err("DEL", sandbox_id, e))
    }

    async fn gc(&self, valid: &[String]) -> Result<(), NetworkError> {
        let v: Vec<(String, String)> = valid.iter().map(|s| (s.clone(), self.ifname.clone())).collect();
        self.cni.gc(&v).await.map_err(|e| net_err("GC", "*", e))
    }
}
