//! The pod manager: one worker per pod that observes, calls [`pod::step`], and executes.
//!
//! The worker is the thin effectful shell around the pure core. Each turn it lists the pod's
//! containers from the runtime (the source of truth), folds in probe results and remembered start
//! failures, asks `step` what to do, publishes the status `step`'s inputs imply, performs the
//! actions, and sleeps until something changes: the desired spec, a runtime event, a probe result,
//! a backoff expiring, or the periodic resync.
//!
//! Restart safety: containers carry labels ([`crate::runtime::labels`]) and deterministic ids
//! (hash of pod uid, container name and attempt), so a restarted agent rebuilds the same view,
//! adopts running containers without touching them, and a create that raced a crash simply finds
//! its container already there.

use crate::cgroups::{self, Cgroups, PodCgroup};
use crate::network::{PodNetwork, PodRef};
use crate::oci::{self, PodContext, Resources};
use crate::pod::{
    self, Action, ContainerObs, KillReason, Kind, Observed, ProbeView, RunState, SandboxObs, StartFailure,
};
use crate::probe;
use crate::runtime::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ImageConfig, RuntimeError, RuntimeEvent, Stdio, TaskState, labels,
};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Container, Pod};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, error, info, info_span, warn};

/// Node-level settings of the manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub node_name: String,
    pub host_ip: String,
    /// Agent run dir: `netns/`, `pods/<uid>/` (hosts, resolv.conf, hostname), `exec/`.
    pub run_dir: PathBuf,
    /// Root of container logs: `<ns>_<pod>_<uid>/<container>/<restart>.log`.
    pub log_root: PathBuf,
    /// The `keelson-logger` binary the shim runs for each container.
    pub logger: PathBuf,
    pub pause_image: String,
    /// resolv.conf used for dnsPolicy Default (and ClusterFirst until cluster DNS exists).
    pub resolv_conf: PathBuf,
    pub pod: pod::Config,
    pub resync: Duration,
    pub memory_capacity: i64,
    pub pids_limit: Option<i64>,
    /// Grace period used for orphaned pods whose spec is unknown.
    pub orphan_grace: Duration,
    /// Lowest oom_score_adj the agent may give (kernel rule: going below the agent's own value needs
    /// CAP_SYS_RESOURCE). `None` = no limit. See [`oom_floor`].
    pub oom_score_floor: Option<i32>,
}

/// The lowest oom_score_adj this process can hand to its children: unlimited with
/// CAP_SYS_RESOURCE, otherwise its own current value (e.g. in sandboxes that drop the capability).
pub fn oom_floor() -> Option<i32> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_RESOURCE: u32 = 24;
    if cap_eff & (1 << CAP_SYS_RESOURCE) != 0 {
        return None;
    }
    let own = std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    Some(own)
}

/// One Kubernetes-style event, kept in a ring for `describe`-like inspection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub time: DateTime<Utc>,
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub pod: String,
    pub reason: String,
    pub message: String,
}

/// State shared by the manager and its workers (and read by the status endpoint).
pub struct Shared<R, C, N> {
    pub runtime: Arc<R>,
    pub cgroups: Arc<C>,
    pub network: Arc<N>,
    pub cfg: ManagerConfig,
    pub statuses: RwLock<BTreeMap<String, Pod>>,
    pub events: Mutex<VecDeque<Event>>,
    /// Woken on any runtime event; workers re-observe.
    pub runtime_changed: Notify,
    image_cache: Mutex<HashMap<String, ImageConfig>>,
}

impl<R, C, N> Shared<R, C, N> {
    pub fn event(&self, type_: &'static str, pod: &str, reason: &str, message: impl Into<String>) {
        let message = message.into();
        if type_ == "Warning" {
            warn!(pod, reason, %message, "event");
        } else {
            info!(pod, reason, %message, "event");
        }
        let mut ev = match self.events.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if ev.len() >= 1000 {
            ev.pop_front();
        }
        ev.push_back(Event { time: Utc::now(), type_, pod: pod.to_string(), reason: reason.to_string(), message });
    }

    pub fn pods(&self) -> Vec<Pod> {
        self.statuses.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    pub fn recent_events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.iter().cloned().collect()).unwrap_or_default()
    }
}

/// Deterministic container id: a crash between create and start finds the same id again.
pub fn container_id(uid: &str, name: &str, attempt: u32) -> String {
    let d = Sha256::digest(format!("{uid}/{name}/{attempt}").as_bytes());
    hex::encode(&d[..16])
}

/// Deterministic sandbox id (also the netns name and the CNI container id).
pub fn sandbox_id(uid: &str, attempt: u32) -> String {
    container_id(uid, "\u{0}sandbox", attempt)
}

fn pod_key(p: &Pod) -> String {
    format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or("default"), p.metadata.name.as_deref().unwrap_or(""))
}

fn pod_ref(p: &Pod) -> PodRef {
    PodRef {
        name: p.metadata.name.clone().unwrap_or_default(),
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
    }
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

fn parse_signal(s: &str) -> Option<i32> {
    let u = s.trim().trim_start_matches("SIG").to_ascii_uppercase();
    if let Ok(n) = u.parse::<i32>() {
        return Some(n);
    }
    Some(match u.as_str() {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        "STOP" => libc::SIGSTOP,
        _ => return None,
    })
}

/// The pod manager. Cheap to clone (everything is behind `Arc`).
pub struct Manager<R, C, N> {
    pub shared: Arc<Shared<R, C, N>>,
    workers: Mutex<HashMap<String, watch::Sender<Option<Pod>>>>,
}

impl<R: ContainerRuntime, C: Cgroups + 'static, N: PodNetwork> Manager<R, C, N> {
    pub fn new(runtime: Arc<R>, cgroups: Arc<C>, network: Arc<N>, cfg: ManagerConfig) -> Arc<Self> {
        Arc::new(Manager {
            shared: Arc::new(Shared {
                runtime,
                cgroups,
                network,
                cfg,
                statuses: RwLock::new(BTreeMap::new()),
                events: Mutex::new(VecDeque::new()),
                runtime_changed: Notify::new(),
                image_cache: Mutex::new(HashMap::new()),
            }),
            workers: Mutex::new(HashMap::new()),
        })
    }

    /// Prepares node-level state and starts the runtime event pump. Call once before `sync`.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        self.shared.cgroups.ensure_root()?;
        for d in ["netns", "pods", "exec"] {
            std::fs::create_dir_all(self.shared.cfg.run_dir.join(d))?;
        }
        std::fs::create_dir_all(&self.shared.cfg.log_root)?;
        let mut events = self.shared.runtime.events().await?;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let RuntimeEvent::TaskOom { container_id } = &ev {
                    let mut l = BTreeMap::new();
                    l.insert(labels::EXIT_REASON.to_string(), "OOMKilled".to_string());
                    if let Err(e) = shared.runtime.set_labels(container_id, &l).await {
                        debug!(container_id, error = %e, "could not record OOM");
                    }
                }
                debug!(?ev, "runtime event");
                shared.runtime_changed.notify_waiters();
            }
            warn!("runtime event stream ended; relying on periodic resync");
        });
        Ok(())
    }

    /// Converges the set of pods to `desired` (keyed by uid). Pods on the node that are not
    /// desired — including orphans found in the runtime after a restart — are terminated.
    pub async fn sync(self: &Arc<Self>, desired: BTreeMap<String, Pod>) -> anyhow::Result<()> {
        let observed = self.shared.runtime.list().await?;
        let mut orphans: BTreeMap<String, Pod> = BTreeMap::new();
        for c in &observed {
            let Some(uid) = c.label(labels::POD_UID) else { continue };
            if !desired.contains_key(uid) {
                orphans.entry(uid.to_string()).or_insert_with(|| orphan_pod(c, self.shared.cfg.orphan_grace));
            }
        }
        let mut workers = match self.workers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        workers.retain(|_, tx| !tx.is_closed());
        for (uid, pod) in &desired {
            match workers.get(uid) {
                Some(tx) => {
                    tx.send_if_modified(|cur| {
                        if cur.as_ref() != Some(pod) {
                            *cur = Some(pod.clone());
                            true
                        } else {
                            false
                        }
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(Some(pod.clone()));
                    self.spawn_worker(uid.clone(), pod.clone(), rx);
                    workers.insert(uid.clone(), tx);
                }
            }
        }
        for (uid, tx) in workers.iter() {
            if !desired.contains_key(uid) {
                tx.send_if_modified(|cur| cur.take().is_some());
            }
        }
        for (uid, pod) in orphans {
            if workers.contains_key(&uid) {
                continue;
            }
            info!(uid, pod = %pod_key(&pod), "found orphaned pod in the runtime; terminating it");
            let (tx, rx) = watch::channel(None);
            self.spawn_worker(uid.clone(), pod, rx);
            workers.insert(uid, tx);
        }
        Ok(())
    }

    /// Removes network attachments, netns and cgroups that no container references (left by a
    /// crash at the wrong moment). Run at start, after `sync` adopted what exists.
    pub async fn gc(&self) -> anyhow::Result<()> {
        let observed = self.shared.runtime.list().await?;
        let sandboxes: Vec<String> =
            observed.iter().filter(|c| c.label(labels::KIND) == Some("sandbox")).map(|c| c.id.clone()).collect();
        if let Err(e) = self.shared.network.gc(&sandboxes).await {
            warn!(error = %e, "network GC failed");
        }
        for ns in crate::netns::list(&self.shared.cfg.run_dir).unwrap_or_default() {
            let name = ns.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            if !sandboxes.contains(&name) {
                info!(netns = %ns.display(), "removing orphaned pod netns");
                let pr = PodRef { name: String::new(), namespace: String::new(), uid: String::new() };
                if let Err(e) = self.shared.network.teardown(&name, Some(&ns), &pr).await {
                    warn!(error = %e, "teardown of orphaned netns failed");
                }
                if let Err(e) = crate::netns::remove(&ns) {
                    warn!(error = %e, "removing orphaned netns failed");
                }
            }
        }
        let uids: Vec<&str> = observed.iter().filter_map(|c| c.label(labels::POD_UID)).collect();
        for p in self.shared.cgroups.list_pods().unwrap_or_default() {
            if !uids.contains(&p.uid.as_str())
                && let Err(e) = self.shared.cgroups.remove_pod(&p.uid)
            {
                warn!(uid = %p.uid, error = %e, "removing orphaned pod cgroup failed");
            }
        }
        Ok(())
    }

    fn spawn_worker(self: &Arc<Self>, uid: String, pod: Pod, rx: watch::Receiver<Option<Pod>>) {
        let shared = self.shared.clone();
        let span = info_span!("pod", pod = %pod_key(&pod), uid = %uid);
        tokio::spawn(
            async move {
                let mut w = Worker {
                    shared,
                    uid: uid.clone(),
                    last_pod: pod,
                    rx,
                    start_failures: BTreeMap::new(),
                    sandbox_failure: None,
                    probers: HashMap::new(),
                    first_seen: Utc::now(),
                };
                w.run().await;
            }
            .instrument(span),
        );
    }

    /// Number of live pod workers (pods being run or torn down).
    pub fn worker_count(&self) -> usize {
        self.workers.lock().map(|w| w.values().filter(|t| !t.is_closed()).count()).unwrap_or(0)
    }
}

/// A minimal pod reconstructed from container labels, for terminating orphans.
fn orphan_pod(c: &ContainerInfo, grace: Duration) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = c.label(labels::POD_NAME).map(String::from);
    p.metadata.namespace = c.label(labels::POD_NAMESPACE).map(String::from);
    p.metadata.uid = c.label(labels::POD_UID).map(String::from);
    p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
        termination_grace_period_seconds: Some(grace.as_secs() as i64),
        ..Default::default()
    });
    p
}

struct ProberEntry {
    handle: probe::ContainerProber,
}

struct Worker<R, C, N> {
    shared: Arc<Shared<R, C, N>>,
    uid: String,
    last_pod: Pod,
    rx: watch::Receiver<Option<Pod>>,
    start_failures: BTreeMap<String, StartFailure>,
    sandbox_failure: Option<StartFailure>,
    probers: HashMap<String, ProberEntry>,
    first_seen: DateTime<Utc>,
}

impl<R: ContainerRuntime, C: Cgroups + 'static, N: PodNetwork> Worker<R, C, N> {
    async fn run(&mut self) {
        let key = pod_key(&self.last_pod);
        loop {
            let desired = self.rx.borrow_and_update().clone();
            let terminating = desired.is_none();
            if let Some(p) = desired {
                self.last_pod = p;
            }
            let pod = self.last_pod.clone();
            let all = match self.shared.runtime.list().await {
                Ok(a) => a,
                Err(e) => {
                    error!(error = %e, "listing containers failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let obs = self.observe(&pod, &all).await;
            let now = Utc::now();
            let d = pod::step(&pod, terminating, &obs, now, &self.shared.cfg.pod);
            self.publish(&pod, &obs, &d);
            if d.actions.contains(&Action::Teardown) {
                self.teardown(&pod, &obs).await;
                if let Ok(mut m) = self.shared.statuses.write() {
                    m.remove(&self.uid);
                }
                self.shared.event("Normal", &key, "Deleted", "pod torn down");
                if self.rx.borrow().is_none() {
                    return;
                }
                continue;
            }
            let acted = !d.actions.is_empty();
            for a in d.actions {
                self.execute(&pod, &obs, a).await;
            }
            if acted {
                continue;
            }
            let sleep = match d.wake_at {
                Some(t) => (t - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(self.shared.cfg.resync),
                None => self.shared.cfg.resync,
            };
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

    async fn observe(&mut self, pod: &Pod, all: &[ContainerInfo]) -> Observed {
        let mut obs = Observed::default();
        let mut earliest: Option<DateTime<Utc>> = None;
        for c in all.iter().filter(|c| c.label(labels::POD_UID) == Some(self.uid.as_str())) {
            let attempt = c.label(labels::ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(0);
            let started_at = parse_time(c.label(labels::STARTED_AT));
            let mut reason = c.label(labels::EXIT_REASON).map(String::from);
            let state = match &c.task {
                TaskState::Running { .. } => RunState::Running { started_at },
                TaskState::Stopped { exit_code, exited_at } => {
                    if reason.is_none() && *exit_code == 137 && self.oom_killed(pod, &c.id) {
                        reason = Some("OOMKilled".into());
                        let mut l = BTreeMap::new();
                        l.insert(labels::EXIT_REASON.to_string(), "OOMKilled".to_string());
                        let _ = self.shared.runtime.set_labels(&c.id, &l).await;
                    }
                    RunState::Exited { exit_code: *exit_code, reason, started_at, finished_at: *exited_at }
                }
                TaskState::None | TaskState::Created => RunState::Created,
                TaskState::Paused | TaskState::Unknown => RunState::Running { started_at },
            };
            if c.label(labels::KIND) == Some("sandbox") {
                earliest = match (earliest, c.created_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                obs.sandboxes.push(SandboxObs {
                    id: c.id.clone(),
                    attempt,
                    state,
                    ip: c.label(labels::POD_IP).filter(|s| !s.is_empty()).map(String::from),
                    created_at: c.created_at,
                });
                continue;
            }
            let image_id = self.image_id(&c.image).await;
            obs.containers.push(ContainerObs {
                id: c.id.clone(),
                name: c.label(labels::CONTAINER_NAME).unwrap_or_default().to_string(),
                kind: if c.label(labels::KIND) == Some("init") { Kind::Init } else { Kind::App },
                attempt,
                backoff_level: c.label(labels::BACKOFF_LEVEL).and_then(|a| a.parse().ok()).unwrap_or(0),
                sandbox_id: c.label(labels::SANDBOX_ID).unwrap_or_default().to_string(),
                spec_hash: c.label(labels::SPEC_HASH).unwrap_or_default().to_string(),
                image: c.image.clone(),
                image_id,
                state,
            });
        }
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
            let field = find_container_field(pod, &c.name).map(|(f, _)| f).unwrap_or_default();
            let ip: std::net::IpAddr =
                sandbox_ip.parse().unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            let probes = match probe::ContainerProbes::from_container(cs, ip, &field) {
                Ok(p) => p,
                Err(e) => {
                    self.shared.event("Warning", &pod_key(pod), "Unhealthy", format!("probe configuration: {e}"));
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

    async fn image_id(&self, image: &str) -> String {
        self.image_config(image).await.map(|c| c.id).unwrap_or_default()
    }

    async fn image_config(&self, image: &str) -> Result<ImageConfig, RuntimeError> {
        if let Some(c) = self.shared.image_cache.lock().ok().and_then(|m| m.get(image).cloned()) {
            return Ok(c);
        }
        let c = self.shared.runtime.image_config(image).await?;
        if let Ok(mut m) = self.shared.image_cache.lock() {
            m.insert(image.to_string(), c.clone());
        }
        Ok(c)
    }

    fn publish(&self, pod: &Pod, obs: &Observed, d: &pod::Decision) {
        let mut p = pod.clone();
        p.status = Some(pod::status(pod, obs, d, &self.shared.cfg.host_ip, self.first_seen));
        if let Ok(mut m) = self.shared.statuses.write() {
            m.insert(self.uid.clone(), p);
        }
    }

    fn pod_dir(&self) -> PathBuf {
        self.shared.cfg.run_dir.join("pods").join(&self.uid)
    }

    fn log_dir(&self, pod: &Pod) -> PathBuf {
        let r = pod_ref(pod);
        self.shared.cfg.log_root.join(format!("{}_{}_{}", r.namespace, r.name, r.uid))
    }

    fn resources(&self, pod: &Pod, c: Option<&Container>) -> Result<(cgroups::QosClass, Resources), String> {
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

    async fn execute(&mut self, pod: &Pod, obs: &Observed, a: Action) {
        let key = pod_key(pod);
        debug!(?a, "executing");
        match a {
            Action::CreateSandbox { attempt } => match self.create_sandbox(pod, attempt).await {
                Ok(()) => {
                    self.sandbox_failure = None;
                    self.shared.event(
                        "Normal",
                        &key,
                        "SandboxCreated",
                        format!("pod sandbox attempt {attempt} started"),
                    );
                }
                Err(msg) => {
                    let count = self.sandbox_failure.as_ref().map_or(1, |f| f.count + 1);
                    self.shared.event("Warning", &key, "FailedCreatePodSandBox", msg.clone());
                    self.sandbox_failure = Some(StartFailure {
                        reason: "FailedCreatePodSandBox".into(),
                        message: msg,
                        count,
                        at: Utc::now(),
                    });
                }
            },
            Action::StartContainer { name, kind, attempt, backoff_level } => {
                match self.start_container(pod, obs, &name, kind, attempt, backoff_level).await {
                    Ok(id) => {
                        self.start_failures.remove(&name);
                        self.shared.event(
                            "Normal",
                            &key,
                            "Started",
                            format!("started container {name} ({id}, restart {attempt})"),
                        );
                    }
                    Err((reason, msg)) => {
                        let count = self.start_failures.get(&name).map_or(1, |f| f.count + 1);
                        self.shared.event("Warning", &key, &reason, format!("container {name}: {msg}"));
                        self.start_failures.insert(name, StartFailure { reason, message: msg, count, at: Utc::now() });
                    }
                }
            }
            Action::KillContainer { id, name, reason } => {
                let why = match reason {
                    KillReason::LivenessFailed => "failed liveness probe, will be restarted",
                    KillReason::StartupFailed => "failed startup probe, will be restarted",
                    KillReason::SpecChanged => "definition changed, will be restarted",
                };
                self.shared.event("Normal", &key, "Killing", format!("container {name} {why}"));
                self.probers.remove(&id);
                let spec = find_container(pod, &name).cloned();
                self.stop_container(pod, &id, spec.as_ref(), self.grace(pod)).await;
            }
            Action::StopPod => {
                self.shared.event("Normal", &key, "Killing", "stopping pod");
                self.stop_pod(pod, obs).await;
            }
            Action::RemoveContainer { id } => {
                if let Err(e) = self.shared.runtime.remove(&id).await {
                    warn!(id, error = %e, "removing old container failed");
                }
            }
            Action::RemoveSandbox { id } => {
                self.remove_sandbox(pod, &id).await;
            }
            Action::Teardown => {}
        }
    }

    fn grace(&self, pod: &Pod) -> Duration {
        let s = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0);
        Duration::from_secs(s as u64)
    }

    async fn create_sandbox(&mut self, pod: &Pod, attempt: u32) -> Result<(), String> {
        let sid = sandbox_id(&self.uid, attempt);
        let pr = pod_ref(pod);
        let spec = pod.spec.clone().unwrap_or_default();
        let (qos, res) = self.resources(pod, None)?;
        let pod_cfg = cgroups::pod_resource_config(&spec, self.shared.cfg.pids_limit).map_err(|e| e.to_string())?;
        self.shared
            .cgroups
            .ensure_pod(&PodCgroup { uid: self.uid.clone(), qos, resources: pod_cfg })
            .map_err(|e| format!("pod cgroup: {e}"))?;
        let dir = self.pod_dir();
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let image = self
            .image_config(&self.shared.cfg.pause_image)
            .await
            .map_err(|e| format!("pause image {}: {e}", self.shared.cfg.pause_image))?;
        let netns = crate::netns::create(&self.shared.cfg.run_dir, &sid).map_err(|e| format!("netns: {e}"))?;
        let ip = match self.shared.network.setup(&sid, &netns, &pr).await {
            Ok(ip) => ip.unwrap_or_default(),
            Err(e) => {
                let _ = crate::netns::remove(&netns);
                return Err(e.to_string());
            }
        };
        if let Err(msg) = self.start_pause(pod, attempt, &sid, &netns, &ip, qos, &res, &image).await {
            let _ = self.shared.runtime.remove(&sid).await;
            let _ = self.shared.network.teardown(&sid, Some(&netns), &pr).await;
            let _ = crate::netns::remove(&netns);
            return Err(msg);
        }
        info!(sandbox = %sid, %ip, "sandbox running");
        Ok(())
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
    ) -> Result<(), String> {
        let dir = self.pod_dir();
        write_pod_files(&dir, pod, ip, &self.shared.cfg)?;
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
            Err(e) => return Err(format!("create sandbox container: {e}")),
        }
        if let Err(e) = self.shared.runtime.start(sid, &Stdio::Null).await {
            return Err(format!("start sandbox: {e}"));
        }
        Ok(())
    }

    fn base_labels(&self, pod: &Pod) -> BTreeMap<String, String> {
        let pr = pod_ref(pod);
        let mut l = BTreeMap::new();
        l.insert(labels::POD_UID.to_string(), pr.uid);
        l.insert(labels::POD_NAME.to_string(), pr.name);
        l.insert(labels::POD_NAMESPACE.to_string(), pr.namespace);
        l
    }

    async fn start_container(
        &mut self,
        pod: &Pod,
        obs: &Observed,
        name: &str,
        kind: Kind,
        attempt: u32,
        level: u32,
    ) -> Result<String, (String, String)> {
        let cerr = |r: &str, m: String| (r.to_string(), m);
        let (field, c) = find_container_field(pod, name)
            .ok_or_else(|| cerr("CreateContainerConfigError", format!("no container {name} in spec")))?;
        let sb = pod::current_sandbox(obs).ok_or_else(|| cerr("CreateContainerError", "no running sandbox".into()))?;
        let pause_pid = match self.shared.runtime.list().await {
            Ok(all) => all.iter().find(|x| x.id == sb.id).and_then(|x| match x.task {
                TaskState::Running { pid } => Some(pid),
                _ => None,
            }),
            Err(_) => None,
        }
        .ok_or_else(|| cerr("CreateContainerError", "sandbox is not running".into()))?;
        let image_name = c.image.clone().unwrap_or_default();
        let image = self.image_config(&image_name).await.map_err(|e| match e {
            RuntimeError::ImageNotFound { .. } => cerr(
                "ErrImagePull",
                format!("image {image_name:?} is not present on the node (import it; registry pulls are not implemented yet)"),
            ),
            other => cerr("ErrImagePull", other.to_string()),
        })?;
        let (qos, res) = self.resources(pod, Some(c)).map_err(|e| cerr("CreateContainerConfigError", e))?;
        let id = container_id(&self.uid, name, attempt);
        let dir = self.pod_dir();
        let netns = crate::netns::netns_dir(&self.shared.cfg.run_dir).join(&sb.id);
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
            .map_err(|e| cerr("CreateContainerConfigError", e.to_string()))?;
        let mut l = self.base_labels(pod);
        l.insert(labels::KIND.into(), kind.label().into());
        l.insert(labels::CONTAINER_NAME.into(), name.into());
        l.insert(labels::ATTEMPT.into(), attempt.to_string());
        l.insert(labels::BACKOFF_LEVEL.into(), level.to_string());
        l.insert(labels::SPEC_HASH.into(), pod::spec_hash(c));
        l.insert(labels::SANDBOX_ID.into(), sb.id.clone());
        let cs = ContainerSpec { id: id.clone(), image: image_name, labels: l, oci_spec: oci };
        match self.shared.runtime.create_container(&cs).await {
            Ok(()) | Err(RuntimeError::AlreadyExists { .. }) => {}
            Err(e) => return Err(cerr("CreateContainerError", e.to_string())),
        }
        let log = self.log_dir(pod).join(name).join(format!("{attempt}.log"));
        let stdio = Stdio::Binary {
            binary: self.shared.cfg.logger.clone(),
            args: vec![("path".into(), log.to_string_lossy().to_string())],
        };
        let mut started = BTreeMap::new();
        started.insert(labels::STARTED_AT.to_string(), Utc::now().to_rfc3339());
        let _ = self.shared.runtime.set_labels(&id, &started).await;
        if let Err(e) = self.shared.runtime.start(&id, &stdio).await {
            let _ = self.shared.runtime.remove(&id).await;
            return Err(cerr("RunContainerError", e.to_string()));
        }
        Ok(id)
    }

    /// preStop → stop signal → grace → SIGKILL, for one container.
    async fn stop_container(&self, pod: &Pod, id: &str, spec: Option<&Container>, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        if let Some(h) = spec.and_then(|c| c.lifecycle.as_ref()).and_then(|l| l.pre_stop.as_ref()) {
            let h = h.clone();
            let h = &h;
            let ip = self.pod_ip(pod);
            let c = spec.cloned().unwrap_or_default();
            let r = tokio::time::timeout(grace, run_hook(self.shared.runtime.as_ref(), id, h, &ip, &c, grace)).await;
            match r {
                Ok(Ok(())) => debug!(id, "preStop hook done"),
                Ok(Err(e)) => self.shared.event("Warning", &pod_key(pod), "FailedPreStopHook", format!("{id}: {e}")),
                Err(_) => self.shared.event("Warning", &pod_key(pod), "FailedPreStopHook", format!("{id}: timed out")),
            }
        }
        let sig = match self.shared.runtime.list().await {
            Ok(all) => all.iter().find(|c| c.id == id).map(|c| c.image.clone()),
            Err(_) => None,
        };
        let sig = match sig {
            Some(img) => self.image_config(&img).await.ok().and_then(|c| c.stop_signal).and_then(|s| parse_signal(&s)),
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

    async fn is_running(&self, id: &str) -> bool {
        match self.shared.runtime.list().await {
            Ok(all) => {
                all.iter().any(|c| c.id == id && matches!(c.task, TaskState::Running { .. } | TaskState::Paused))
            }
            Err(_) => true,
        }
    }

    fn pod_ip(&self, pod: &Pod) -> String {
        self.shared
            .statuses
            .read()
            .ok()
            .and_then(|m| m.get(&self.uid).and_then(|p| p.status.as_ref()).and_then(|s| s.pod_ip.clone()))
            .or_else(|| pod.status.as_ref().and_then(|s| s.pod_ip.clone()))
            .unwrap_or_default()
    }

    async fn stop_pod(&mut self, pod: &Pod, obs: &Observed) {
        let grace = self.grace(pod);
        let running: Vec<&ContainerObs> = obs.containers.iter().filter(|c| c.state.is_running()).collect();
        self.probers.clear();
        let this = &*self;
        let futs = running.iter().map(|c| {
            let spec = find_container(pod, &c.name).cloned();
            async move { this.stop_container(pod, &c.id, spec.as_ref(), grace).await }
        });
        futures::future::join_all(futs).await;
        let pr = pod_ref(pod);
        for s in obs.sandboxes.iter().filter(|s| s.state.is_running()) {
            let netns = crate::netns::netns_dir(&self.shared.cfg.run_dir).join(&s.id);
            if let Err(e) = self.shared.network.teardown(&s.id, Some(&netns), &pr).await {
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

    async fn remove_sandbox(&self, pod: &Pod, id: &str) {
        let netns = crate::netns::netns_dir(&self.shared.cfg.run_dir).join(id);
        if let Err(e) = self.shared.network.teardown(id, Some(&netns), &pod_ref(pod)).await {
            warn!(sandbox = id, error = %e, "network teardown failed");
        }
        if let Err(e) = self.shared.runtime.remove(id).await {
            warn!(sandbox = id, error = %e, "removing sandbox container failed");
        }
        if let Err(e) = crate::netns::remove(&netns) {
            warn!(sandbox = id, error = %e, "removing netns failed");
        }
    }

    async fn teardown(&mut self, pod: &Pod, obs: &Observed) {
        self.probers.clear();
        for c in &obs.containers {
            if let Err(e) = self.shared.runtime.remove(&c.id).await {
                warn!(id = %c.id, error = %e, "removing container failed");
            }
        }
        for s in &obs.sandboxes {
            self.remove_sandbox(pod, &s.id).await;
        }
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
                    warn!(error = %e, "removing pod cgroup failed");
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.pod_dir());
        let _ = std::fs::remove_dir_all(self.log_dir(pod));
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

/// Runs a lifecycle hook handler (preStop) once, bounded by `timeout`.
async fn run_hook(
    runtime: &dyn ContainerRuntime,
    id: &str,
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
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

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    find_container_field(pod, name).map(|(_, c)| c)
}

fn find_container_field<'a>(pod: &'a Pod, name: &str) -> Option<(String, &'a Container)> {
    let spec = pod.spec.as_ref()?;
    if let Some((i, c)) = spec.init_containers.iter().flatten().enumerate().find(|(_, c)| c.name == name) {
        return Some((format!("spec.initContainers[{i}]"), c));
    }
    spec.containers.iter().enumerate().find(|(_, c)| c.name == name).map(|(i, c)| (format!("spec.containers[{i}]"), c))
}

/// Writes the pod's managed `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`.
fn write_pod_files(dir: &Path, pod: &Pod, ip: &str, cfg: &ManagerConfig) -> Result<(), String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let hostname = spec.hostname.clone().or_else(|| pod.metadata.name.clone()).unwrap_or_default();
    let hostname: String = hostname.chars().take(63).collect();
    let fqdn = spec.subdomain.as_ref().map(|sd| {
        format!("{hostname}.{sd}.{}.svc.cluster.local", pod.metadata.namespace.as_deref().unwrap_or("default"))
    });
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file (keelson).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if !ip.is_empty() {
        match &fqdn {
            Some(f) => hosts.push_str(&format!("{ip}\t{f}\t{hostname}\n")),
            None => hosts.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    for ha in spec.host_aliases.iter().flatten() {
        if let Some(hn) = &ha.hostnames {
            hosts.push_str(&format!("\n# Entries added by HostAliases.\n{}\t{}\n", ha.ip, hn.join("\t")));
        }
    }
    let resolv = resolv_conf(&spec, &std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default());
    for (name, content) in [("hosts", hosts), ("resolv.conf", resolv), ("hostname", format!("{hostname}\n"))] {
        let p = dir.join(name);
        std::fs::write(&p, content).map_err(|e| format!("write {}: {e}", p.display()))?;
    }
    Ok(())
}

/// resolv.conf for a pod: dnsPolicy None → dnsConfig only; Default (and, until the agent runs
/// cluster DNS, ClusterFirst — kubelet's own fallback when no cluster DNS is configured) → the
/// node's resolv.conf merged with dnsConfig.
pub fn resolv_conf(spec: &k8s_openapi::api::core::v1::PodSpec, node: &str) -> String {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let (mut ns, mut search, mut opts): (Vec<String>, Vec<String>, Vec<String>) = (vec![], vec![], vec![]);
    if policy != "None" {
        for l in node.lines() {
            let mut f = l.split_whitespace();
            match f.next() {
                Some("nameserver") => ns.extend(f.map(String::from)),
                Some("search") => search = f.map(String::from).collect(),
                Some("options") => opts.extend(f.map(String::from)),
                _ => {}
            }
        }
    }
    if let Some(dc) = &spec.dns_config {
        for n in dc.nameservers.iter().flatten() {
            if !ns.contains(n) {
                ns.push(n.clone());
            }
        }
        for s in dc.searches.iter().flatten() {
            if !search.contains(s) {
                search.push(s.clone());
            }
        }
        for o in dc.options.iter().flatten() {
            let v = match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            opts.retain(|x| x.split(':').next() != v.split(':').next());
            opts.push(v);
        }
    }
    ns.truncate(3);
    search.truncate(32);
    let mut out = String::new();
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    for n in ns {
        out.push_str(&format!("nameserver {n}\n"));
    }
    if !opts.is_empty() {
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(container_id("u", "c", 0), container_id("u", "c", 0));
        assert_ne!(container_id("u", "c", 0), container_id("u", "c", 1));
        assert_ne!(sandbox_id("u", 0), container_id("u", "sandbox", 0));
        assert_eq!(sandbox_id("u", 3).len(), 32);
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("QUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGBOGUS"), None);
    }

    #[test]
    fn resolv_conf_policies() {
        let node = "nameserver 1.1.1.1\nsearch example.com\noptions ndots:1\n";
        let mut spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [],
            "dnsPolicy": "Default",
            "dnsConfig": {"nameservers": ["9.9.9.9"], "searches": ["a.b"], "options": [{"name": "ndots", "value": "3"}]}
        }))
        .unwrap();
        assert_eq!(
            resolv_conf(&spec, node),
            "search example.com a.b\nnameserver 1.1.1.1\nnameserver 9.9.9.9\noptions ndots:3\n"
        );
        spec.dns_policy = Some("None".into());
        assert_eq!(resolv_conf(&spec, node), "search a.b\nnameserver 9.9.9.9\noptions ndots:3\n");
    }
}
