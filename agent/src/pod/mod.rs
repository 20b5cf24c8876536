//! The pod lifecycle as a pure function.
//!
//! [`step`] takes the desired pod, what the runtime shows (sandboxes and every container instance,
//! with their labels), probe results and the clock, and returns the actions that move the node
//! toward the pod's spec — like kubelet's `computePodActions`, but without I/O, so every transition
//! is unit-tested here. [`status`] derives the Kubernetes `PodStatus` from the same inputs.
//!
//! Everything `step` needs is rebuildable from containerd after an agent restart: the restart count
//! is the instance's `attempt` label, CrashLoopBackOff is derived from the last instance's exit time
//! and its `backoff-level` label, and init progress from which instances exited 0 in the current
//! sandbox. Only start failures (image missing, bad config) are remembered in memory; losing them
//! on restart merely retries sooner.

pub mod status;
#[cfg(test)]
mod tests;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Container, Pod};
use std::collections::BTreeMap;
use std::time::Duration;

pub use status::status;

/// Whether a container is an init or an app container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Init,
    App,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Init => "init",
            Kind::App => "app",
        }
    }
}

/// A task's observed state.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Created but not started (e.g. the agent died between create and start).
    Created,
    Running {
        started_at: Option<DateTime<Utc>>,
    },
    Exited {
        exit_code: i32,
        reason: Option<String>,
        started_at: Option<DateTime<Utc>>,
        finished_at: Option<DateTime<Utc>>,
    },
}

impl RunState {
    pub fn is_running(&self) -> bool {
        matches!(self, RunState::Running { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SandboxObs {
    pub id: String,
    pub attempt: u32,
    pub state: RunState,
    pub ip: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerObs {
    pub id: String,
    pub name: String,
    pub kind: Kind,
    /// Restart count of this instance.
    pub attempt: u32,
    pub backoff_level: u32,
    pub sandbox_id: String,
    pub spec_hash: String,
    pub image: String,
    pub image_id: String,
    pub state: RunState,
}

/// Probe results for the current instance of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeView {
    /// Startup probe passed (true when there is none).
    pub started: bool,
    /// Readiness (true when there is no readiness probe and the container is started).
    pub ready: bool,
    /// Liveness probe reached its failure threshold: restart the container.
    pub liveness_failed: bool,
    /// Startup probe reached its failure threshold: restart the container.
    pub startup_failed: bool,
}

/// A failure to create/start something, remembered by the executor for backoff.
#[derive(Debug, Clone, PartialEq)]
pub struct StartFailure {
    /// Kubernetes waiting reason: `ErrImagePull`, `CreateContainerConfigError`, `CreateContainerError`, …
    pub reason: String,
    pub message: String,
    pub count: u32,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub sandboxes: Vec<SandboxObs>,
    pub containers: Vec<ContainerObs>,
    pub probes: BTreeMap<String, ProbeView>,
    pub start_failures: BTreeMap<String, StartFailure>,
    pub sandbox_failure: Option<StartFailure>,
}

/// Backoff tuning (kubelet: 10 s doubling to 300 s, reset after 10 min of good running).
///
/// Two rules use it, as kubelet does with its two `flowcontrol.Backoff` instances:
/// - start failures (image missing, bad config) wait [`Config::delay`]`(failures)`: the first retry
///   already waits `backoff_base` (kubelet's image pull backoff calls `Next` on the first failure);
/// - crash restarts wait [`Config::restart_delay`]: the first restart after an exit is immediate.
///   Kubelet's `doBackOff` asks `IsInBackOffSince(key, finishedAt)`, which is false while the
///   container has no backoff entry, then calls `Next`, which creates the entry at the base delay;
///   only later exits find an entry (base, then doubling per exit up to the maximum). An entry
///   expires when the exit came more than `2 × max` (= `backoff_reset`, 600 s) after the last
///   restart, and the next restart is immediate again.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub backoff_reset: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            backoff_reset: Duration::from_secs(600),
        }
    }
}

impl Config {
    /// Delay after the `level`-th consecutive failure (0 = none yet: no delay): base, doubling,
    /// capped at the maximum.
    pub fn delay(&self, level: u32) -> Duration {
        if level == 0 {
            return Duration::ZERO;
        }
        let factor = 1u64.checked_shl(level.saturating_sub(1).min(30)).unwrap_or(u64::MAX);
        let d = self.backoff_base.saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX));
        d.min(self.backoff_max)
    }

    /// Delay before starting the instance whose `backoff-level` label is `level` after a crash
    /// (level n = the n-th consecutive quick exit): 0, base, 2 × base, … (kubelet's rule, see
    /// the type docs).
    pub fn restart_delay(&self, level: u32) -> Duration {
        self.delay(level.saturating_sub(1))
    }
}

/// Why a container is being killed.
#[derive(Debug, Clone, PartialEq)]
pub enum KillReason {
    LivenessFailed,
    StartupFailed,
    SpecChanged,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create the network namespace, run CNI, start pause.
    CreateSandbox { attempt: u32 },
    /// Gracefully stop every running container, then the sandbox (containers are kept for status).
    StopPod,
    /// Create (if needed) and start instance `attempt` of a container.
    StartContainer { name: String, kind: Kind, attempt: u32, backoff_level: u32 },
    /// Gracefully stop one running container.
    KillContainer { id: String, name: String, reason: KillReason },
    /// Delete a dead container instance (older than the one kept for status and logs).
    RemoveContainer { id: String },
    /// Delete a dead sandbox that is not the current one.
    RemoveSandbox { id: String },
    /// Remove everything: containers, sandboxes, network, cgroups, pod dirs.
    Teardown,
}

/// What `step` decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// When `step` wants to run again (a backoff expiring), besides events and resyncs.
    pub wake_at: Option<DateTime<Utc>>,
    /// Containers waiting on something, with Kubernetes reason and message.
    pub waiting: BTreeMap<String, (String, String)>,
    /// Pod-level terminal outcome, if reached.
    pub terminal: Option<Phase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

pub fn restart_policy(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
}

/// A stable hash of a container's spec, recorded on each instance to notice spec changes.
pub fn spec_hash(c: &Container) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(c).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The current sandbox: the running one with the highest attempt.
pub fn current_sandbox(obs: &Observed) -> Option<&SandboxObs> {
    obs.sandboxes.iter().filter(|s| s.state.is_running()).max_by_key(|s| s.attempt)
}

/// Latest instance of each container name.
pub fn latest(obs: &Observed) -> BTreeMap<&str, &ContainerObs> {
    let mut m: BTreeMap<&str, &ContainerObs> = BTreeMap::new();
    for c in &obs.containers {
        match m.get(c.name.as_str()) {
            Some(prev) if prev.attempt >= c.attempt => {}
            _ => {
                m.insert(&c.name, c);
            }
        }
    }
    m
}

struct Ctx<'a> {
    now: DateTime<Utc>,
    cfg: &'a Config,
    obs: &'a Observed,
    d: Decision,
}

impl Ctx<'_> {
    fn wake(&mut self, at: DateTime<Utc>) {
        self.d.wake_at = Some(self.d.wake_at.map_or(at, |w| w.min(at)));
    }

    /// Start `name` for the first time unless a recent start failure is still backing off.
    fn start_fresh(&mut self, name: &str, kind: Kind, attempt: u32, level: u32) {
        if let Some(f) = self.obs.start_failures.get(name) {
            let until = f.at + to_chrono(self.cfg.delay(f.count));
            if self.now < until {
                let reason = if f.reason == "ErrImagePull" { "ImagePullBackOff".to_string() } else { f.reason.clone() };
                self.d.waiting.insert(name.to_string(), (reason, f.message.clone()));
                self.wake(until);
                return;
            }
            self.d.waiting.insert(name.to_string(), (f.reason.clone(), f.message.clone()));
        } else {
            self.d.waiting.insert(name.to_string(), ("ContainerCreating".into(), String::new()));
        }
        self.d.actions.push(Action::StartContainer { name: name.to_string(), kind, attempt, backoff_level: level });
    }

    /// Restart after `prev` exited, honouring CrashLoopBackOff.
    fn restart(&mut self, prev: &ContainerObs) {
        let (started, finished) = match &prev.state {
            RunState::Exited { started_at, finished_at, .. } => (*started_at, *finished_at),
            _ => (None, None),
        };
        // Kubelet's expiry: the exit came more than 2 × max after the last restart.
        let ran_long = matches!((started, finished), (Some(s), Some(f)) if f - s > to_chrono(self.cfg.backoff_reset));
        let level = if ran_long { 1 } else { prev.backoff_level + 1 };
        let delay = self.cfg.restart_delay(level);
        let until = finished.unwrap_or(self.now) + to_chrono(delay);
        if self.now < until {
            let secs = delay.as_secs_f64();
            self.d.waiting.insert(
                prev.name.clone(),
                ("CrashLoopBackOff".into(), format!("back-off {secs:.0}s restarting failed container={}", prev.name)),
            );
            self.wake(until);
            return;
        }
        self.start_fresh(&prev.name, prev.kind, prev.attempt + 1, level);
    }
}

/// Whether a container that exited with `code` is restarted under `policy`.
pub fn should_restart(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

/// One reconciliation step. See the module docs.
pub fn step(pod: &Pod, terminating: bool, obs: &Observed, now: DateTime<Utc>, cfg: &Config) -> Decision {
    let mut cx = Ctx { now, cfg, obs, d: Decision::default() };
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = restart_policy(pod).to_string();
    let any_running = obs.containers.iter().any(|c| c.state.is_running());
    let any_sandbox_running = obs.sandboxes.iter().any(|s| s.state.is_running());

    if terminating {
        cx.d.actions.push(if any_running || any_sandbox_running { Action::StopPod } else { Action::Teardown });
        return cx.d;
    }

    let latest = latest(obs);
    let sandbox = current_sandbox(obs);

    // Garbage: dead instances older than the latest of their name (the latest is kept for status
    // and `lastState`; the one before it for the previous log), and dead non-current sandboxes.
    for c in &obs.containers {
        let newest = latest.get(c.name.as_str()).map_or(0, |l| l.attempt);
        if matches!(c.state, RunState::Exited { .. }) && c.attempt + 1 < newest {
            cx.d.actions.push(Action::RemoveContainer { id: c.id.clone() });
        }
    }
    for s in &obs.sandboxes {
        if !s.state.is_running() && sandbox.is_some_and(|cur| cur.id != s.id) {
            cx.d.actions.push(Action::RemoveSandbox { id: s.id.clone() });
        }
    }

    // Terminal pods stay terminal: stop what still runs, keep containers for status and logs.
    if let Some(phase) = terminal_phase(pod, obs, &latest) {
        cx.d.terminal = Some(phase);
        if any_running || any_sandbox_running {
            cx.d.actions.push(Action::StopPod);
        }
        return cx.d;
    }

    let Some(sb) = sandbox else {
        if any_running {
            // Containers without a live sandbox have lost their network: stop them first.
            cx.d.actions.push(Action::StopPod);
            return cx.d;
        }
        if policy == "Never" && !obs.containers.is_empty() {
            // kubelet does not recreate the sandbox of a Never pod whose containers have run.
            cx.d.terminal = Some(Phase::Failed);
            return cx.d;
        }
        if let Some(f) = &obs.sandbox_failure {
            let until = f.at + to_chrono(cfg.delay(f.count));
            if now < until {
                cx.wake(until);
                for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
                    cx.d.waiting.insert(c.name.clone(), ("ContainerCreating".into(), f.message.clone()));
                }
                return cx.d;
            }
        }
        let attempt = obs.sandboxes.iter().map(|s| s.attempt + 1).max().unwrap_or(0);
        cx.d.actions.push(Action::CreateSandbox { attempt });
        for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
            cx.d.waiting.insert(c.name.clone(), ("ContainerCreating".into(), String::new()));
        }
        return cx.d;
    };

    // Init containers, in order, each to a successful exit in the current sandbox.
    for ic in spec.init_containers.iter().flatten() {
        let cur = latest.get(ic.name.as_str()).copied();
        let in_sb = cur.filter(|c| c.sandbox_id == sb.id);
        match in_sb {
            None => {
                let attempt = cur.map_or(0, |c| c.attempt + 1);
                let level = cur.map_or(0, |c| c.backoff_level);
                cx.start_fresh(&ic.name, Kind::Init, attempt, level);
            }
            Some(c) => match &c.state {
                RunState::Created => cx.start_fresh(&ic.name, Kind::Init, c.attempt, c.backoff_level),
                RunState::Running { .. } => {}
                RunState::Exited { exit_code: 0, .. } => continue,
                RunState::Exited { .. } => cx.restart(c), // Never was handled by terminal_phase
            },
        }
        for c in &spec.containers {
            cx.d.waiting.entry(c.name.clone()).or_insert(("PodInitializing".into(), String::new()));
        }
        return cx.d;
    }

    // App containers.
    for ac in &spec.containers {
        let cur = latest.get(ac.name.as_str()).copied();
        let Some(c) = cur else {
            cx.start_fresh(&ac.name, Kind::App, 0, 0);
            continue;
        };
        if c.sandbox_id != sb.id {
            // An instance from an earlier sandbox: the restart count continues in the new one.
            if c.state.is_running() {
                cx.d.actions.push(Action::StopPod);
                return cx.d;
            }
            cx.start_fresh(&ac.name, Kind::App, c.attempt + 1, c.backoff_level);
            continue;
        }
        match &c.state {
            RunState::Created => cx.start_fresh(&ac.name, Kind::App, c.attempt, c.backoff_level),
            RunState::Running { .. } => {
                let pv = obs.probes.get(&ac.name).copied().unwrap_or_default();
                let reason = if pv.startup_failed {
                    Some(KillReason::StartupFailed)
                } else if pv.liveness_failed {
                    Some(KillReason::LivenessFailed)
                } else if c.spec_hash != spec_hash(ac) {
                    Some(KillReason::SpecChanged)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    cx.d.actions.push(Action::KillContainer { id: c.id.clone(), name: c.name.clone(), reason });
                }
            }
            RunState::Exited { exit_code, .. } => {
                if should_restart(&policy, *exit_code) || c.spec_hash != spec_hash(ac) {
                    cx.restart(c);
                }
            }
        }
    }
    cx.d
}

/// kubelet's terminal phases: Succeeded when every app container exited 0 and none will restart;
/// Failed when a container failed and will not restart (init failure under Never included).
fn terminal_phase(pod: &Pod, obs: &Observed, latest: &BTreeMap<&str, &ContainerObs>) -> Option<Phase> {
    let policy = restart_policy(pod);
    let spec = pod.spec.as_ref()?;
    if policy == "Always" {
        return None;
    }
    for ic in spec.init_containers.iter().flatten() {
        if let Some(c) = latest.get(ic.name.as_str())
            && let RunState::Exited { exit_code, .. } = c.state
            && exit_code != 0
            && policy == "Never"
        {
            return Some(Phase::Failed);
        }
    }
    let _ = obs;
    let mut all_done = true;
    let mut any_failed = false;
    for ac in &spec.containers {
        match latest.get(ac.name.as_str()).map(|c| &c.state) {
            Some(RunState::Exited { exit_code, .. }) => {
                if should_restart(policy, *exit_code) {
                    all_done = false;
                } else if *exit_code != 0 {
                    any_failed = true;
                }
            }
            _ => all_done = false,
        }
    }
    if !all_done {
        return None;
    }
    Some(if any_failed { Phase::Failed } else { Phase::Succeeded })
}
