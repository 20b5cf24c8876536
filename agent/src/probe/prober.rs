//! Running probes: one loop per probe kind ([`run_probe_loop`]) and the per-container supervisor
//! ([`ContainerProber`]) that runs startup first and liveness + readiness once the container has
//! started, folding their results into one [`ProbeStatus`] the pod manager watches.

use super::action::ProbeAction;
use super::state::{Outcome, ProbeConfigError, ProbeKind, ProbeResult, ProbeState, ProbeTiming};
use crate::runtime::ContainerRuntime;
use k8s_openapi::api::core::v1::{Container, Probe};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// How often kubelet retries a probe whose handler errored before throwing the result away.
const MAX_ATTEMPTS: usize = 3;

/// One probe, ready to run: when and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredProbe {
    pub timing: ProbeTiming,
    pub action: ProbeAction,
}

impl ConfiguredProbe {
    /// Resolves `probe` of `container` (at `field`, e.g. `spec.containers[web].livenessProbe`).
    pub fn new(
        kind: ProbeKind,
        probe: &Probe,
        container: &Container,
        pod_ip: IpAddr,
        field: &str,
    ) -> Result<Self, ProbeConfigError> {
        Ok(ConfiguredProbe {
            timing: ProbeTiming::from_probe(kind, probe, field)?,
            action: ProbeAction::from_probe(probe, container, pod_ip, field)?,
        })
    }
}

/// The probes of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerProbes {
    pub startup: Option<ConfiguredProbe>,
    pub liveness: Option<ConfiguredProbe>,
    pub readiness: Option<ConfiguredProbe>,
}

impl ContainerProbes {
    /// Reads and validates the three probes of `container` in a pod whose IP is `pod_ip`;
    /// `field` is the container's path for error messages (e.g. `spec.containers[web]`).
    pub fn from_container(container: &Container, pod_ip: IpAddr, field: &str) -> Result<Self, ProbeConfigError> {
        let one = |kind: ProbeKind, probe: &Option<Probe>| {
            probe
                .as_ref()
                .map(|p| ConfiguredProbe::new(kind, p, container, pod_ip, &format!("{field}.{}", kind.field())))
                .transpose()
        };
        Ok(ContainerProbes {
            startup: one(ProbeKind::Startup, &container.startup_probe)?,
            liveness: one(ProbeKind::Liveness, &container.liveness_probe)?,
            readiness: one(ProbeKind::Readiness, &container.readiness_probe)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.startup.is_none() && self.liveness.is_none() && self.readiness.is_none()
    }
}

/// What one probe loop publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeUpdate {
    pub result: ProbeResult,
    /// The latest failure message (set once a failure has been seen).
    pub message: Option<String>,
}

/// A liveness or startup probe failed for good: the container must be restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub kind: ProbeKind,
    pub message: String,
}

/// What the pod manager needs from a container's probes (kubelet's `started` / `ready`
/// container status fields and the restart decision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeStatus {
    /// The startup probe succeeded, or there is none.
    pub started: bool,
    /// Started and the readiness probe currently succeeds (or there is none).
    pub ready: bool,
    /// Set when liveness or startup failed `failureThreshold` times: kill and restart the
    /// container (with reason `Unhealthy` in events). Probing of that kind has stopped.
    pub failure: Option<ProbeFailure>,
}

/// Runs one probe of one container instance until it has nothing more to do: a startup probe
/// until it succeeds or fails for good, a liveness probe until it fails for good, a readiness
/// probe forever. Honours `initialDelaySeconds` (counted from `started_at`) and
/// `periodSeconds`, retries handler errors like kubelet, applies the thresholds of
/// [`ProbeState`] and publishes every change on `tx`. Returns early when every receiver of `tx`
/// is gone.
///
/// Call it for startup while the container has not started, and for liveness/readiness only
/// after it has (what [`ContainerProber`] does).
pub async fn run_probe_loop(
    kind: ProbeKind,
    probe: ConfiguredProbe,
    runtime: Arc<dyn ContainerRuntime>,
    container_id: String,
    started_at: Instant,
    tx: watch::Sender<ProbeUpdate>,
) {
    let mut state = ProbeState::new(kind, probe.timing.clone());
    tx.send_replace(ProbeUpdate { result: state.result(), message: None });
    let started = kind != ProbeKind::Startup;
    let first = started_at + probe.timing.initial_delay;
    tokio::select! {
        _ = tx.closed() => return,
        _ = tokio::time::sleep_until(first) => {}
    }
    let mut ticker = tokio::time::interval(probe.timing.period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = ticker.tick() => {}
        }
        if !state.should_probe(started_at.elapsed(), started) {
            if state.is_on_hold() {
                return;
            }
            continue;
        }
        let outcome = tokio::select! {
            _ = tx.closed() => return,
            o = run_with_retries(&probe.action, runtime.as_ref(), &container_id, probe.timing.timeout) => o,
        };
        match &outcome {
            Outcome::Success => tracing::trace!(%kind, container_id, "probe succeeded"),
            Outcome::Failure(msg) => tracing::debug!(%kind, container_id, msg, "probe failed"),
            Outcome::Error(msg) => tracing::warn!(%kind, container_id, msg, "probe errored"),
        }
        if let Some(result) = state.record(&outcome) {
            tracing::info!(%kind, container_id, ?result, message = state.last_failure(), "probe result changed");
            tx.send_replace(ProbeUpdate { result, message: state.last_failure().map(str::to_string) });
        }
        if state.is_on_hold() || (kind == ProbeKind::Startup && state.result() == ProbeResult::Success) {
            return;
        }
    }
}

async fn run_with_retries(
    action: &ProbeAction,
    runtime: &dyn ContainerRuntime,
    container_id: &str,
    timeout: std::time::Duration,
) -> Outcome {
    let mut outcome = Outcome::Error("not run".into());
    for _ in 0..MAX_ATTEMPTS {
        outcome = action.run(runtime, container_id, timeout).await;
        if !matches!(outcome, Outcome::Error(_)) {
            break;
        }
    }
    outcome
}

/// All probes of one container instance, running in a tokio task. Create one when the
/// container's task has started and drop it when that instance exits or is killed (dropping
/// stops every probe). A restarted container gets a new prober.
pub struct ContainerProber {
    status: watch::Receiver<ProbeStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl ContainerProber {
    /// Starts probing container `container_id`, whose task started at `started_at` (for an adopted
    /// container: now minus its age, so `initialDelaySeconds` keeps counting from the real start).
    pub fn spawn(
        runtime: Arc<dyn ContainerRuntime>,
        container_id: impl Into<String>,
        probes: ContainerProbes,
        started_at: Instant,
    ) -> Self {
        let started = probes.startup.is_none();
        let initial = ProbeStatus { started, ready: started && probes.readiness.is_none(), failure: None };
        let (tx, status) = watch::channel(initial);
        let task = tokio::spawn(supervise(runtime, container_id.into(), probes, started_at, tx));
        ContainerProber { status, task }
    }

    /// A receiver that sees every change of the status.
    pub fn subscribe(&self) -> watch::Receiver<ProbeStatus> {
        self.status.clone()
    }

    /// The current status.
    pub fn status(&self) -> ProbeStatus {
        self.status.borrow().clone()
    }
}

impl Drop for ContainerProber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn supervise(
    runtime: Arc<dyn ContainerRuntime>,
    container_id: String,
    probes: ContainerProbes,
    started_at: Instant,
    status: watch::Sender<ProbeStatus>,
) {
    let has_readiness = probes.readiness.is_some();
    if let Some(startup) = probes.startup {
        let (tx, rx) = watch::channel(ProbeUpdate { result: ProbeResult::Unknown, message: None });
        run_probe_loop(ProbeKind::Startup, startup, Arc::clone(&runtime), container_id.clone(), started_at, tx).await;
        let last = rx.borrow().clone();
        if last.result != ProbeResult::Success {
            let message = last.message.unwrap_or_else(|| "startup probe failed".into());
            status.send_modify(|s| s.failure = Some(ProbeFailure { kind: ProbeKind::Startup, message }));
            return;
        }
        status.send_modify(|s| {
            s.started = true;
            s.ready = !has_readiness;
        });
    }
    let liveness = follow(ProbeKind::Liveness, probes.liveness, &runtime, &container_id, started_at, &status);
    let readiness = follow(ProbeKind::Readiness, probes.readiness, &runtime, &container_id, started_at, &status);
    tokio::join!(liveness, readiness);
}

/// Runs one post-startup probe loop and folds its updates into `status`.
async fn follow(
    kind: ProbeKind,
    probe: Option<ConfiguredProbe>,
    runtime: &Arc<dyn ContainerRuntime>,
    container_id: &str,
    started_at: Instant,
    status: &watch::Sender<ProbeStatus>,
) {
    let Some(probe) = probe else { return };
    let (tx, mut rx) = watch::channel(ProbeUpdate { result: kind.initial_result(), message: None });
    let run = run_probe_loop(kind, probe, Arc::clone(runtime), container_id.to_string(), started_at, tx);
    let fold = async {
        while rx.changed().await.is_ok() {
            let update = rx.borrow_and_update().clone();
            status.send_if_modified(|s| {
                let before = s.clone();
                match kind {
                    ProbeKind::Readiness => s.ready = update.result == ProbeResult::Success,
                    _ if update.result == ProbeResult::Failure => {
                        let message = update.message.clone().unwrap_or_else(|| format!("{kind} probe failed"));
                        s.failure = Some(ProbeFailure { kind, message });
                    }
                    _ => {}
                }
                *s != before
            });
        }
    };
    tokio::join!(run, fold);
}
