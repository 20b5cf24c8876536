//! Performs one [`Action`] decided by [`crate::pod::step`], remembering start failures (they feed
//! the next `step` for backoff) and reporting events.

use super::error::StartError;
use super::worker::Worker;
use super::{container_id, find_container, find_container_field, grace, pod_ref};
use crate::cgroups::{self, Cgroups};
use crate::events::{NORMAL, WARNING};
use crate::images::pull::PullRequest;
use crate::images::{self, DockerConfig, PullError, PullPolicy, RegistryConfig};
use crate::network::PodNetwork;
use crate::oci::{self, PodContext, Resources};
use crate::pod::{self, Action, KillReason, Kind, Observed, StartFailure};
use crate::runtime::{ContainerRuntime, ContainerSpec, ImageConfig, RuntimeError, Stdio, TaskState, labels};
use chrono::Utc;
use k8s_openapi::api::core::v1::{Container, Pod};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

impl<R: ContainerRuntime, C: Cgroups + 'static, N: PodNetwork> Worker<R, C, N> {
    pub(super) async fn execute(&mut self, pod: &Pod, obs: &Observed, a: Action) {
        debug!(?a, "executing");
        match a {
            Action::CreateSandbox { attempt } => match self.create_sandbox(pod, attempt).await {
                Ok(()) => {
                    self.sandbox_failure = None;
                    self.shared.event(NORMAL, pod, "SandboxCreated", format!("pod sandbox attempt {attempt} started"));
                }
                Err(e) => {
                    let count = self.sandbox_failure.as_ref().map_or(1, |f| f.count + 1);
                    let message = e.to_string();
                    self.shared.event(WARNING, pod, "FailedCreatePodSandBox", message.clone());
                    self.sandbox_failure =
                        Some(StartFailure { reason: "FailedCreatePodSandBox".into(), message, count, at: Utc::now() });
                }
            },
            Action::StartContainer { name, kind, attempt, backoff_level } => {
                match self.start_container(pod, obs, &name, kind, attempt, backoff_level).await {
                    Ok(id) => {
                        self.start_failures.remove(&name);
                        self.shared.event(
                            NORMAL,
                            pod,
                            "Started",
                            format!("started container {name} ({id}, restart {attempt})"),
                        );
                    }
                    Err(e) => {
                        let count = self.start_failures.get(&name).map_or(1, |f| f.count + 1);
                        let reason = e.reason().to_string();
                        let message = e.to_string();
                        self.shared.event(WARNING, pod, &reason, format!("container {name}: {message}"));
                        self.start_failures.insert(name, StartFailure { reason, message, count, at: Utc::now() });
                    }
                }
            }
            Action::KillContainer { id, name, reason } => {
                let why = match reason {
                    KillReason::LivenessFailed => "failed liveness probe, will be restarted",
                    KillReason::StartupFailed => "failed startup probe, will be restarted",
                    KillReason::SpecChanged => "definition changed, will be restarted",
                };
                self.shared.event(NORMAL, pod, "Killing", format!("container {name} {why}"));
                self.probers.remove(&id);
                let spec = find_container(pod, &name).cloned();
                self.stop_container(pod, &id, spec.as_ref(), grace(pod)).await;
            }
            Action::StopPod => {
                self.shared.event(NORMAL, pod, "Killing", "stopping pod");
                self.stop_pod(pod, obs).await;
            }
            Action::RemoveContainer { id } => {
                if let Err(e) = self.shared.runtime.remove(&id).await {
                    warn!(id, error = %e, "removing old container failed");
                }
            }
            Action::RemoveSandbox { id } => {
                // A failure leaves the sandbox container in place: `step` asks again next turn.
                if let Err(e) = self.remove_sandbox(pod, &id).await {
                    warn!(sandbox = %id, error = %e, "removing old sandbox failed; will retry");
                }
            }
            Action::Teardown => {}
        }
    }

    pub(super) fn pod_dir(&self) -> PathBuf {
        self.shared.cfg.run_dir.join("pods").join(&self.uid)
    }

    pub(super) fn log_dir(&self, pod: &Pod) -> PathBuf {
        let r = pod_ref(pod);
        self.shared.cfg.log_root.join(format!("{}_{}_{}", r.namespace, r.name, r.uid))
    }

    /// QoS class and OCI resources of the pod (`c = None`: the sandbox) or of one container.
    pub(super) fn resources(&self, pod: &Pod, c: Option<&Container>) -> Result<(cgroups::QosClass, Resources), String> {
        let spec = pod.spec.clone().unwrap_or_default();
        let qos = cgroups::qos_class(&spec).map_err(|e| e.to_string())?;
        let Some(c) = c else {
            return Ok((qos, Resources { pids_limit: self.shared.cfg.pids_limit, ..Default::default() }));
        };
        let r = cgroups::container_resources(&spec, c, self.shared.cfg.memory_capacity).map_err(|e| e.to_string())?;
        let oom = match self.shared.cfg.oom_score_floor {
            Some(floor) => r.oom_score_adj.max(floor),
            None => r.oom_score_adj,
        };
        Ok((
            qos,
            Resources {
                cpu_shares: Some(r.cpu_shares),
                cpu_quota: r.cpu_quota_us,
                cpu_period: Some(r.cpu_period_us),
                memory_limit: r.memory_limit_bytes,
                pids_limit: None,
                oom_score_adj: oom,
            },
        ))
    }

    pub(super) fn base_labels(&self, pod: &Pod) -> BTreeMap<String, String> {
        let pr = pod_ref(pod);
        let mut l = BTreeMap::new();
        l.insert(labels::POD_UID.to_string(), pr.uid);
        l.insert(labels::POD_NAME.to_string(), pr.name);
        l.insert(labels::POD_NAMESPACE.to_string(), pr.namespace);
        l
    }

    /// The container's image, pulled first when its pull policy asks for it (kubelet's
    /// `EnsureImageExists`): Never → `ErrImageNeverPull` when absent; IfNotPresent → pull only
    /// when absent; Always → pull (blobs already present are not fetched again). An image imported
    /// from a node-local archive has no registry to ask and is used under every policy. A failed pull is
    /// `ErrImagePull`, which `pod::step` turns into `ImagePullBackOff` until the backoff expires.
    async fn ensure_image(&self, pod: &Pod, c: &Container) -> Result<ImageConfig, StartError> {
        let raw = c.image.clone().unwrap_or_default();
        let name = images::normalize(&raw)?;
        let policy = PullPolicy::for_container(c.image_pull_policy.as_deref(), &raw);
        let present = match self.shared.image_config(&raw).await {
            Ok(cfg) => Some(cfg),
            Err(e) if e.is_not_found() => None,
            Err(source) => return Err(StartError::Image { image: raw, source }),
        };
        match (policy, present) {
            (_, Some(cfg)) if cfg.from_archive => return Ok(cfg),
            (PullPolicy::Never, None) => return Err(StartError::NeverPull { image: raw }),
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(cfg)) => {
                self.shared.event(NORMAL, pod, "Pulled", format!("Container image {raw:?} already present on machine"));
                return Ok(cfg);
            }
            (PullPolicy::Always | PullPolicy::IfNotPresent, _) => {}
        }
        let node = RegistryConfig::load(self.shared.cfg.registry_config.as_deref())
            .map_err(|e| StartError::Pull(Arc::new(e.into())))?;
        // imagePullSecrets reach the worker once pods come from the API; until then only the
        // node's credentials apply. The pull is shared only between pods presenting the same
        // credential, so no pod is served by another pod's secret.
        let secrets: Vec<DockerConfig> = Vec::new();
        let registry = images::reference::parse(&raw)?.registry().to_string();
        let key =
            format!("{name}\u{0}{}", images::auth::fingerprint(images::auth::select(&secrets, &node.auths, &registry)));
        self.shared.event(NORMAL, pod, "Pulling", format!("Pulling image {raw:?}"));
        let started = Instant::now();
        let runtime = self.shared.runtime.clone();
        let (out, joined) = self
            .shared
            .pulls
            .run(&key, || async {
                let req = PullRequest { image: &name, pod_secrets: &secrets, node: &node };
                runtime.pull_image(req).await.map_err(Arc::new)
            })
            .await;
        self.shared.forget_image(&raw);
        let report = match out {
            Ok(r) => r,
            // A runtime that cannot pull (the fakes) runs what it has.
            Err(e) if matches!(*e, PullError::Unsupported) => {
                return self.shared.image_config(&raw).await.map_err(|_| StartError::Pull(e));
            }
            Err(e) => return Err(StartError::Pull(e)),
        };
        let took = started.elapsed().as_secs_f64();
        let shared = if joined { " (shared with a pull already running)" } else { "" };
        self.shared.event(
            NORMAL,
            pod,
            "Pulled",
            format!(
                "Successfully pulled image {raw:?} in {took:.3}s{shared}. Image size: {} bytes, {} bytes fetched.",
                report.size, report.fetched
            ),
        );
        self.shared.image_config(&raw).await.map_err(|source| StartError::Image { image: raw, source })
    }

    async fn start_container(
        &mut self,
        pod: &Pod,
        obs: &Observed,
        name: &str,
        kind: Kind,
        attempt: u32,
        level: u32,
    ) -> Result<String, StartError> {
        let (field, c) = find_container_field(pod, name).ok_or_else(|| StartError::NotInSpec { name: name.into() })?;
        let sb = pod::current_sandbox(obs).ok_or(StartError::NoSandbox)?;
        let pause_pid = match self.shared.runtime.list().await {
            Ok(all) => all.iter().find(|x| x.id == sb.id).and_then(|x| match x.task {
                TaskState::Running { pid } => Some(pid),
                _ => None,
            }),
            Err(_) => None,
        }
        .ok_or(StartError::NoSandbox)?;
        let image = self.ensure_image(pod, c).await?;
        let (qos, res) = self.resources(pod, Some(c)).map_err(StartError::Config)?;
        let id = container_id(&self.uid, name, attempt);
        let dir = self.pod_dir();
        let netns = self.shared.netns.path(&sb.id);
        let ip = sb.ip.clone().unwrap_or_default();
        let ctx = PodContext {
            pod,
            node_name: &self.shared.cfg.node_name,
            host_ip: &self.shared.cfg.host_ip,
            pod_ip: &ip,
            netns: &netns,
            etc_hosts: &dir.join("hosts"),
            resolv_conf: &dir.join("resolv.conf"),
            hostname_file: &dir.join("hostname"),
        };
        let cg = cgroups::container_cgroup_path(self.shared.cgroups.root_name(), qos, &self.uid, &id);
        let oci = oci::container_spec(&ctx, c, &field, &image, pause_pid, &cg, &res)
            .map_err(|e| StartError::Config(e.to_string()))?;
        let mut l = self.base_labels(pod);
        l.insert(labels::KIND.into(), kind.label().into());
        l.insert(labels::CONTAINER_NAME.into(), name.into());
        l.insert(labels::ATTEMPT.into(), attempt.to_string());
        l.insert(labels::BACKOFF_LEVEL.into(), level.to_string());
        l.insert(labels::SPEC_HASH.into(), pod::spec_hash(c));
        l.insert(labels::SANDBOX_ID.into(), sb.id.clone());
        let cs = ContainerSpec { id: id.clone(), image: image.name.clone(), labels: l, oci_spec: oci };
        match self.shared.runtime.create_container(&cs).await {
            Ok(()) | Err(RuntimeError::AlreadyExists { .. }) => {}
            Err(e) => return Err(StartError::Create(e)),
        }
        let log = self.log_dir(pod).join(name).join(format!("{attempt}.log"));
        let stdio = Stdio::Binary {
            binary: self.shared.cfg.logger.clone(),
            args: vec![("path".into(), log.to_string_lossy().to_string())],
        };
        let started = BTreeMap::from([(labels::STARTED_AT.to_string(), Utc::now().to_rfc3339())]);
        let _ = self.shared.runtime.set_labels(&id, &started).await;
        if let Err(e) = self.shared.runtime.start(&id, &stdio).await {
            let _ = self.shared.runtime.remove(&id).await;
            return Err(StartError::Start(e));
        }
        Ok(id)
    }
}
