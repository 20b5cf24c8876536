//! Sandboxes: the pod's netns, its CNI attachment, its cgroup and the pause container.
//!
//! Order matters for leaks and races. Creation claims the sandbox id in the shared ownership
//! table *before* the netns exists (so the orphan sweep cannot remove it between netns creation and
//! CNI ADD) and undoes every step on failure; an undo that fails is remembered and retried by the
//! worker. Removal releases the network first, then the netns, and deletes the sandbox container
//! last: while anything is left, the container stays as the durable record that a restarted agent
//! finds and finishes.

use super::error::{SandboxError, TeardownError};
use super::worker::Worker;
use super::{pod_ref, podfiles, sandbox_id};
use crate::cgroups::{self, Cgroups, PodCgroup};
use crate::network::PodNetwork;
use crate::oci::{self, PodContext, Resources};
use crate::runtime::{ContainerRuntime, ContainerSpec, ImageConfig, RuntimeError, Stdio, labels};
use chrono::Utc;
use k8s_openapi::api::core::v1::Pod;
use std::path::Path;
use tracing::{info, warn};

impl<R: ContainerRuntime, C: Cgroups + 'static, N: PodNetwork> Worker<R, C, N> {
    /// Creates sandbox `attempt`: cgroup, pod dir, netns, CNI ADD, pause container.
    pub(super) async fn create_sandbox(&mut self, pod: &Pod, attempt: u32) -> Result<(), SandboxError> {
        let sid = sandbox_id(&self.uid, attempt);
        let pr = pod_ref(pod);
        let spec = pod.spec.clone().unwrap_or_default();
        let (qos, res) = self.resources(pod, None).map_err(SandboxError::Resources)?;
        let pod_cfg = cgroups::pod_resource_config(&spec, self.shared.cfg.pids_limit)
            .map_err(|e| SandboxError::Resources(e.to_string()))?;
        self.shared
            .cgroups
            .ensure_pod(&PodCgroup { uid: self.uid.clone(), qos, resources: pod_cfg })
            .map_err(|e| SandboxError::Cgroup(e.to_string()))?;
        let dir = self.pod_dir();
        std::fs::create_dir_all(&dir).map_err(|source| SandboxError::PodDir { path: dir.clone(), source })?;
        let pause = self.shared.cfg.pause_image.clone();
        let image = self
            .shared
            .image_config(&pause)
            .await
            .map_err(|source| SandboxError::PauseImage { image: pause.clone(), source })?;
        self.shared.own_sandbox(&sid, &self.uid);
        let netns = match self.shared.netns.create(&sid) {
            Ok(p) => p,
            Err(e) => {
                self.abandon_sandbox(pod, &sid).await;
                return Err(e.into());
            }
        };
        let ip = match self.shared.network.setup(&sid, &netns, &pr).await {
            Ok(ip) => ip.unwrap_or_default(),
            Err(e) => {
                self.abandon_sandbox(pod, &sid).await;
                return Err(e.into());
            }
        };
        if let Err(e) = self.start_pause(pod, attempt, &sid, &netns, &ip, qos, &res, &image).await {
            if let Err(re) = self.shared.runtime.remove(&sid).await {
                warn!(sandbox = %sid, error = %re, "removing the failed sandbox container failed");
            }
            self.abandon_sandbox(pod, &sid).await;
            return Err(e);
        }
        info!(sandbox = %sid, %ip, "sandbox running");
        Ok(())
    }

    /// Undoes the network side of a sandbox that never became a container; what cannot be undone
    /// now is retried every turn.
    async fn abandon_sandbox(&mut self, pod: &Pod, sid: &str) {
        match self.release_network(pod, sid).await {
            Ok(()) => self.shared.release_sandbox(sid),
            Err(e) => {
                warn!(sandbox = %sid, error = %e, "cleanup of the failed sandbox failed; will retry");
                self.pending_cleanup.insert(sid.to_string());
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_pause(
        &self,
        pod: &Pod,
        attempt: u32,
        sid: &str,
        netns: &Path,
        ip: &str,
        qos: cgroups::QosClass,
        res: &Resources,
        image: &ImageConfig,
    ) -> Result<(), SandboxError> {
        let dir = self.pod_dir();
        let node_resolv = std::fs::read_to_string(&self.shared.cfg.resolv_conf).unwrap_or_default();
        podfiles::write(&dir, &podfiles::render(pod, ip, &node_resolv))
            .map_err(|source| SandboxError::PodDir { path: dir.clone(), source })?;
        let ctx = PodContext {
            pod,
            node_name: &self.shared.cfg.node_name,
            host_ip: &self.shared.cfg.host_ip,
            pod_ip: ip,
            netns,
            etc_hosts: &dir.join("hosts"),
            resolv_conf: &dir.join("resolv.conf"),
            hostname_file: &dir.join("hostname"),
        };
        let cg = cgroups::container_cgroup_path(self.shared.cgroups.root_name(), qos, &self.uid, sid);
        let oci = oci::sandbox_spec(&ctx, image, &cg, res);
        let mut l = self.base_labels(pod);
        l.insert(labels::KIND.into(), "sandbox".into());
        l.insert(labels::ATTEMPT.into(), attempt.to_string());
        l.insert(labels::NETNS.into(), netns.to_string_lossy().to_string());
        l.insert(labels::POD_IP.into(), ip.to_string());
        l.insert(labels::STARTED_AT.into(), Utc::now().to_rfc3339());
        let cs =
            ContainerSpec { id: sid.to_string(), image: self.shared.cfg.pause_image.clone(), labels: l, oci_spec: oci };
        match self.shared.runtime.create_container(&cs).await {
            Ok(()) | Err(RuntimeError::AlreadyExists { .. }) => {}
            Err(e) => return Err(SandboxError::Create(e)),
        }
        self.shared.runtime.start(sid, &Stdio::Null).await.map_err(SandboxError::Start)?;
        Ok(())
    }

    /// CNI DEL, then the netns. Both are idempotent, so retrying after a partial success is safe.
    pub(super) async fn release_network(&self, pod: &Pod, id: &str) -> Result<(), TeardownError> {
        let netns = self.shared.netns.path(id);
        self.shared.network.teardown(id, Some(&netns), &pod_ref(pod)).await?;
        self.shared.netns.remove(&netns)?;
        Ok(())
    }

    /// Removes a sandbox: network, netns, then the container (the durable record) last.
    pub(super) async fn remove_sandbox(&mut self, pod: &Pod, id: &str) -> Result<(), TeardownError> {
        self.release_network(pod, id).await?;
        self.shared
            .runtime
            .remove(id)
            .await
            .map_err(|source| TeardownError::RemoveContainer { id: id.to_string(), source })?;
        self.shared.release_sandbox(id);
        self.pending_cleanup.remove(id);
        Ok(())
    }
}
