//! The pod worker loop: observe → [`pod::step`] → publish status → act → sleep until something
//! changes (the desired spec, a runtime event, a probe result, a backoff expiring, the resync).
//!
//! A worker ends only when its pod is no longer desired *and* everything it owned is gone:
//! containers, sandboxes, CNI attachments, netns, cgroup. A teardown step that fails is retried with
//! backoff (doubling up to the resync period) instead of being logged and forgotten, so an IP or a
//! netns does not leak until the next agent start.

use super::observe::observe;
use super::{Shared, pod_key};
use crate::cgroups::{self, Cgroups};
use crate::events::WARNING;
use crate::network::PodNetwork;
use crate::pod::{self, Action, ContainerObs, Kind, Observed, ProbeView, RunState, StartFailure};
use crate::probe;
use crate::runtime::{ContainerInfo, ContainerRuntime, TaskState, labels};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, warn};

pub(super) struct ProberEntry {
    pub(super) handle: probe::ContainerProber,
}

/// One pod's worker. See the module docs.
pub struct Worker<R, C, N> {
    pub(super) shared: Arc<Shared<R, C, N>>,
    pub(super) uid: String,
    pub(super) last_pod: Pod,
    pub(super) rx: watch::Receiver<Option<Pod>>,
    pub(super) start_failures: BTreeMap<String, StartFailure>,
    pub(super) sandbox_failure: Option<StartFailure>,
    pub(super) probers: HashMap<String, ProberEntry>,
    pub(super) first_seen: DateTime<Utc>,
    /// The pod IP last published (for preStop HTTP hooks).
    pub(super) pod_ip: String,
    /// Sandboxes whose container is gone (or was never created) but whose CNI attachment or netns
    /// may remain: cleaned up every turn until done.
    pub(super) pending_cleanup: BTreeSet<String>,
}

impl<R: ContainerRuntime, C: Cgroups + 'static, N: PodNetwork> Worker<R, C, N> {
    pub(super) fn new(shared: Arc<Shared<R, C, N>>, uid: String, pod: Pod, rx: watch::Receiver<Option<Pod>>) -> Self {
        Worker {
            shared,
            uid,
            last_pod: pod,
            rx,
            start_failures: BTreeMap::new(),
            sandbox_failure: None,
            probers: HashMap::new(),
            first_seen: Utc::now(),
            pod_ip: String::new(),
            pending_cleanup: BTreeSet::new(),
        }
    }

    pub async fn run(&mut self) {
        let mut teardown_retry = self.shared.cfg.teardown_retry;
        loop {
            let desired = self.rx.borrow_and_update().clone();
            // Deleted from the API (graceful deletion) or no longer wanted on this node.
            let terminating = desired.as_ref().is_none_or(|p| p.metadata.deletion_timestamp.is_some());
            if let Some(p) = desired {
                self.last_pod = p;
            }
            let pod = self.last_pod.clone();
            self.finish_cleanups(&pod).await;
            let all = match self.shared.runtime.list().await {
                Ok(a) => a,
                Err(e) => {
                    error!(error = %e, "listing containers failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let obs = self.observe(&pod, all).await;
            let d = pod::step(&pod, terminating, &obs, Utc::now(), &self.shared.cfg.pod);
            self.publish(&pod, &obs, &d);
            if d.actions.contains(&Action::Teardown) {
                match self.teardown(&pod, &obs).await {
                    Ok(()) => {
                        self.shared.status.remove(&self.uid);
                        self.shared.event("Normal", &pod, "Deleted", "pod torn down");
                        if self.rx.borrow().is_none() {
                            return;
                        }
                        // Still desired while its deletion completes: wait for the API to drop it.
                        if self.rx.changed().await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        self.shared.event(
                            WARNING,
                            &pod,
                            "FailedKillPod",
                            format!("teardown incomplete, retrying in {teardown_retry:?}: {e}"),
                        );
                        tokio::time::sleep(teardown_retry).await;
                        teardown_retry = (teardown_retry * 2).min(self.shared.cfg.resync.max(teardown_retry));
                    }
                }
                continue;
            }
            teardown_retry = self.shared.cfg.teardown_retry;
            let acted = !d.actions.is_empty();
            for a in d.actions {
                self.execute(&pod, &obs, a).await;
            }
            if acted {
                continue;
            }
            let mut sleep = match d.wake_at {
                Some(t) => (t - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(self.shared.cfg.resync),
                None => self.shared.cfg.resync,
            };
            if !self.pending_cleanup.is_empty() {
                sleep = sleep.min(teardown_retry);
            }
            let probe_changed = self.probe_changes();
            tokio::select! {
                r = self.rx.changed() => {
                    if r.is_err() {
                        // The manager is gone (agent shutting down): treat as deletion, without
                        // spinning on a closed channel.
                        let (_tx, rx) = watch::channel(None);
                        self.rx = rx;
                        tokio::time::sleep(self.shared.cfg.resync).await;
                    }
                }
                _ = self.shared.runtime_changed.notified() => {}
                _ = probe_changed => {}
                _ = tokio::time::sleep(sleep + Duration::from_millis(5)) => {}
            }
        }
    }

    /// A future that resolves when any prober publishes a new result.
    fn probe_changes(&self) -> impl std::future::Future<Output = ()> + use<R, C, N> {
        let mut rxs: Vec<_> = self.probers.values().map(|p| p.handle.subscribe()).collect();
        async move {
            if rxs.is_empty() {
                return std::future::pending().await;
            }
            let futs = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
            let _ = futures::future::select_all(futs).await;
        }
    }

    /// Records OOM kills found in cgroup files on the instances, then builds the observation.
    async fn observe(&mut self, pod: &Pod, mut all: Vec<ContainerInfo>) -> Observed {
        let mut image_ids = BTreeMap::new();
        for c in all.iter_mut().filter(|c| c.label(labels::POD_UID) == Some(self.uid.as_str())) {
            if c.label(labels::KIND) == Some("sandbox") {
                // Adopted sandboxes are owned too, so the sweep leaves their netns alone.
                self.shared.own_sandbox(&c.id, &self.uid);
                continue;
            }
            if matches!(c.task, TaskState::Stopped { exit_code: 137, .. })
                && c.label(labels::EXIT_REASON).is_none()
                && self.oom_killed(pod, &c.id)
            {
                let l = BTreeMap::from([(labels::EXIT_REASON.to_string(), "OOMKilled".to_string())]);
                let _ = self.shared.runtime.set_labels(&c.id, &l).await;
                c.labels.extend(l);
            }
            if !image_ids.contains_key(&c.image) {
                let id = self.shared.image_config(&c.image).await.map(|c| c.id).unwrap_or_default();
                image_ids.insert(c.image.clone(), id);
            }
        }
        let (mut obs, earliest) = observe(&self.uid, &all, &image_ids);
        if let Some(e) = earliest {
            self.first_seen = self.first_seen.min(e);
        }
        self.update_probers(pod, &obs);
        for c in &obs.containers {
            if !c.state.is_running() {
                continue;
            }
            if let Some(p) = self.probers.get(&c.id) {
                obs.probes.insert(c.name.clone(), probe_view(&p.handle.status()));
            } else {
                obs.probes.insert(c.name.clone(), ProbeView { started: true, ready: true, ..Default::default() });
            }
        }
        obs.start_failures = self.start_failures.clone();
        obs.sandbox_failure = self.sandbox_failure.clone();
        obs
    }

    /// Starts probers for running app containers that have probes; drops the others.
    fn update_probers(&mut self, pod: &Pod, obs: &Observed) {
        let sandbox_ip = pod::current_sandbox(obs).and_then(|s| s.ip.clone()).unwrap_or_default();
        let running: HashMap<&str, &ContainerObs> = obs
            .containers
            .iter()
            .filter(|c| c.state.is_running() && c.kind == Kind::App)
            .map(|c| (c.id.as_str(), c))
            .collect();
        self.probers.retain(|id, _| running.contains_key(id.as_str()));
        let spec = pod.spec.clone().unwrap_or_default();
        for (id, c) in running {
            if self.probers.contains_key(id) {
                continue;
            }
            let Some(cs) = spec.containers.iter().find(|x| x.name == c.name) else { continue };
            if cs.liveness_probe.is_none() && cs.readiness_probe.is_none() && cs.startup_probe.is_none() {
                continue;
            }
            let field = super::find_container_field(pod, &c.name).map(|(f, _)| f).unwrap_or_default();
            let ip: std::net::IpAddr =
                sandbox_ip.parse().unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            let probes = match probe::ContainerProbes::from_container(cs, ip, &field) {
                Ok(p) => p,
                Err(e) => {
                    self.shared.event(WARNING, pod, "Unhealthy", format!("probe configuration: {e}"));
                    continue;
                }
            };
            // initialDelaySeconds counts from the container's real start, also for adopted ones.
            let age = match &c.state {
                RunState::Running { started_at: Some(t) } => (Utc::now() - *t).to_std().unwrap_or_default(),
                _ => Duration::ZERO,
            };
            let started = tokio::time::Instant::now().checked_sub(age).unwrap_or_else(tokio::time::Instant::now);
            let rt: Arc<dyn ContainerRuntime> = self.shared.runtime.clone();
            let handle = probe::ContainerProber::spawn(rt, id.to_string(), probes, started.into_std());
            self.probers.insert(id.to_string(), ProberEntry { handle });
        }
    }

    fn oom_killed(&self, pod: &Pod, container_id: &str) -> bool {
        let Some(spec) = pod.spec.as_ref() else { return false };
        let Ok(qos) = cgroups::qos_class(spec) else { return false };
        let rel = cgroups::container_cgroup_path(self.shared.cgroups.root_name(), qos, &self.uid, container_id);
        for (file, key) in [("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")] {
            for base in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"] {
                let p = format!("{base}{rel}/{file}");
                if let Ok(text) = std::fs::read_to_string(&p) {
                    let n = text
                        .lines()
                        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().parse::<u64>().unwrap_or(0)))
                        .unwrap_or(0);
                    return n > 0;
                }
            }
        }
        false
    }

    fn publish(&mut self, pod: &Pod, obs: &Observed, d: &pod::Decision) {
        let mut p = pod.clone();
        let st = pod::status(pod, obs, d, &self.shared.cfg.host_ip, self.first_seen);
        if let Some(ip) = st.pod_ip.clone() {
            self.pod_ip = ip;
        }
        p.status = Some(st);
        self.shared.status.set(&self.uid, &p);
    }

    /// Retries the network and netns cleanup of sandboxes that have no container record left.
    async fn finish_cleanups(&mut self, pod: &Pod) {
        for id in self.pending_cleanup.clone() {
            match self.release_network(pod, &id).await {
                Ok(()) => {
                    self.pending_cleanup.remove(&id);
                    self.shared.release_sandbox(&id);
                }
                Err(e) => warn!(sandbox = %id, error = %e, "sandbox cleanup still failing; will retry"),
            }
        }
    }
}

fn probe_view(s: &probe::ProbeStatus) -> ProbeView {
    ProbeView {
        started: s.started,
        ready: s.ready,
        liveness_failed: s.failure.as_ref().is_some_and(|f| f.kind == probe::ProbeKind::Liveness),
        startup_failed: s.failure.as_ref().is_some_and(|f| f.kind == probe::ProbeKind::Startup),
    }
}

/// `namespace/name` of the worker's pod, for spans.
pub(super) fn span_key(pod: &Pod) -> String {
    pod_key(pod)
}
