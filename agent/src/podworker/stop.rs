//! Stopping: one container (preStop → stop signal → grace → SIGKILL), a whole pod, and the final
//! teardown that removes everything the pod had on the node.

use super::error::TeardownError;
use super::worker::Worker;
use super::{find_container, grace, parse_signal};
use crate::cgroups::Cgroups;
use crate::network::PodNetwork;
use crate::pod::{ContainerObs, Observed};
use crate::probe;
use crate::runtime::{ContainerRuntime, TaskState};
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};
use std::time::Duration;
use tracing::{debug, info, warn};

impl<R: ContainerRuntime, C: Cgroups + 'static, N: PodNetwork> Worker<R, C, N> {
    /// preStop → stop signal → grace → SIGKILL, for one container.
    pub(super) async fn stop_container(&self, pod: &Pod, id: &str, spec: Option<&Container>, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        if let Some(h) = spec.and_then(|c| c.lifecycle.as_ref()).and_then(|l| l.pre_stop.as_ref()) {
            let ip = if self.pod_ip.is_empty() {
                pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default()
            } else {
                self.pod_ip.clone()
            };
            let c = spec.cloned().unwrap_or_default();
            let r = tokio::time::timeout(grace, run_hook(self.shared.runtime.as_ref(), id, h, &ip, &c, grace)).await;
            match r {
                Ok(Ok(())) => debug!(id, "preStop hook done"),
                Ok(Err(e)) => self.shared.event("Warning", pod, "FailedPreStopHook", format!("{id}: {e}")),
                Err(_) => self.shared.event("Warning", pod, "FailedPreStopHook", format!("{id}: timed out")),
            }
        }
        let image = match self.shared.runtime.list().await {
            Ok(all) => all.iter().find(|c| c.id == id).map(|c| c.image.clone()),
            Err(_) => None,
        };
        let sig = match image {
            Some(img) => {
                self.shared.image_config(&img).await.ok().and_then(|c| c.stop_signal).and_then(|s| parse_signal(&s))
            }
            None => None,
        }
        .unwrap_or(libc::SIGTERM);
        if let Err(e) = self.shared.runtime.kill(id, sig, false).await {
            warn!(id, error = %e, "stop signal failed");
        }
        loop {
            if !self.is_running(id).await {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        info!(id, "grace period over; SIGKILL");
        let _ = self.shared.runtime.kill(id, libc::SIGKILL, true).await;
        for _ in 0..100 {
            if !self.is_running(id).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn is_running(&self, id: &str) -> bool {
        match self.shared.runtime.list().await {
            Ok(all) => {
                all.iter().any(|c| c.id == id && matches!(c.task, TaskState::Running { .. } | TaskState::Paused))
            }
            Err(_) => true,
        }
    }

    /// Stops every running container in parallel, then the sandboxes (network detached first).
    pub(super) async fn stop_pod(&mut self, pod: &Pod, obs: &Observed) {
        let grace = grace(pod);
        let running: Vec<&ContainerObs> = obs.containers.iter().filter(|c| c.state.is_running()).collect();
        self.probers.clear();
        let this = &*self;
        let futs = running.iter().map(|c| {
            let spec = find_container(pod, &c.name).cloned();
            async move { this.stop_container(pod, &c.id, spec.as_ref(), grace).await }
        });
        futures::future::join_all(futs).await;
        let pr = super::pod_ref(pod);
        for s in obs.sandboxes.iter().filter(|s| s.state.is_running()) {
            let netns = self.shared.netns.path(&s.id);
            if let Err(e) = self.shared.network.teardown(&s.id, Some(&netns), &pr).await {
                // Retried when the sandbox is removed.
                warn!(error = %e, "network teardown failed");
            }
            let _ = self.shared.runtime.kill(&s.id, libc::SIGKILL, true).await;
            for _ in 0..50 {
                if !self.is_running(&s.id).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Removes everything of the pod: containers, sandboxes (network, netns), pending sandbox
    /// cleanups, the pod cgroup, pod files and logs. Every step is attempted; the error lists what
    /// is left, and the worker calls this again until it succeeds.
    pub(super) async fn teardown(&mut self, pod: &Pod, obs: &Observed) -> Result<(), TeardownError> {
        self.probers.clear();
        let mut errs = Vec::new();
        for c in &obs.containers {
            if let Err(source) = self.shared.runtime.remove(&c.id).await {
                errs.push(TeardownError::RemoveContainer { id: c.id.clone(), source });
            }
        }
        for s in &obs.sandboxes {
            if let Err(e) = self.remove_sandbox(pod, &s.id).await {
                errs.push(e);
            }
        }
        for id in self.pending_cleanup.clone() {
            match self.release_network(pod, &id).await {
                Ok(()) => {
                    self.pending_cleanup.remove(&id);
                    self.shared.release_sandbox(&id);
                }
                Err(e) => errs.push(e),
            }
        }
        if errs.is_empty() {
            let mut tries = 0;
            loop {
                match self.shared.cgroups.remove_pod(&self.uid) {
                    Ok(()) => break,
                    Err(e) if tries < 20 => {
                        debug!(error = %e, "pod cgroup not removable yet");
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        errs.push(TeardownError::Cgroup(e.to_string()));
                        break;
                    }
                }
            }
        }
        TeardownError::collect(errs)?;
        let _ = std::fs::remove_dir_all(self.pod_dir());
        let _ = std::fs::remove_dir_all(self.log_dir(pod));
        Ok(())
    }
}

/// Runs a lifecycle hook handler (preStop) once, bounded by `timeout`.
async fn run_hook(
    runtime: &dyn ContainerRuntime,
    id: &str,
    h: &LifecycleHandler,
    pod_ip: &str,
    c: &Container,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(timeout)).await;
        return Ok(());
    }
    let as_probe = k8s_openapi::api::core::v1::Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        tcp_socket: h.tcp_socket.clone(),
        ..Default::default()
    };
    let ip: std::net::IpAddr = pod_ip.parse().map_err(|_| format!("pod IP {pod_ip:?} unknown"))?;
    let action = probe::ProbeAction::from_probe(&as_probe, c, ip, "lifecycle.preStop").map_err(|e| e.to_string())?;
    match action.run(runtime, id, timeout).await {
        probe::Outcome::Success => Ok(()),
        probe::Outcome::Failure(m) | probe::Outcome::Error(m) => Err(m),
    }
}
