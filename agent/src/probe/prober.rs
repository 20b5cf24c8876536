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
    /// Starts probing container `container_id`, whose task started at `started_at` (a tokio or std
    /// `Instant`; for an adopted container: now minus its age, so `initialDelaySeconds` keeps
    /// counting from the real start). Must be called within a tokio runtime.
    pub fn spawn(
        runtime: Arc<dyn ContainerRuntime>,
        container_id: impl Into<String>,
        probes: ContainerProbes,
        started_at: impl Into<Instant>,
    ) -> Self {
        let started_at = started_at.into();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::testing::{Behaviour, ScriptedRuntime};
    use std::time::Duration;

    fn exec_probe(command: &str, period_secs: u64, failure_threshold: u32) -> ConfiguredProbe {
        ConfiguredProbe {
            timing: ProbeTiming {
                period: Duration::from_secs(period_secs),
                failure_threshold,
                ..ProbeTiming::default()
            },
            action: ProbeAction::Exec { command: vec![command.to_string()] },
        }
    }

    fn spawn(rt: &Arc<ScriptedRuntime>, probes: ContainerProbes) -> ContainerProber {
        let runtime: Arc<dyn ContainerRuntime> = rt.clone();
        ContainerProber::spawn(runtime, "c1", probes, Instant::now())
    }

    /// Waits (in paused time) until `f` holds for the status; returns the status and the time.
    async fn wait(rx: &mut watch::Receiver<ProbeStatus>, f: impl FnMut(&ProbeStatus) -> bool) -> ProbeStatus {
        tokio::time::timeout(Duration::from_secs(3600), rx.wait_for(f))
            .await
            .expect("status reached within an hour of paused time")
            .expect("prober alive")
            .clone()
    }

    #[tokio::test(start_paused = true)]
    async fn no_probes_means_started_and_ready() {
        let rt = Arc::new(ScriptedRuntime::new());
        let p = spawn(&rt, ContainerProbes::default());
        assert_eq!(p.status(), ProbeStatus { started: true, ready: true, failure: None });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(rt.calls().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_starts_unready_then_follows_thresholds() {
        let rt = Arc::new(ScriptedRuntime::new());
        let t0 = Instant::now();
        let p = spawn(&rt, ContainerProbes { readiness: Some(exec_probe("ready", 10, 2)), ..Default::default() });
        assert_eq!(p.status(), ProbeStatus { started: true, ready: false, failure: None });
        let mut rx = p.subscribe();
        wait(&mut rx, |s| s.ready).await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "first probe runs right away without initialDelaySeconds");

        rt.set("ready", Behaviour::Exit(1));
        let s = wait(&mut rx, |s| !s.ready).await;
        // Probes at 10 s and 20 s fail; the second reaches failureThreshold 2.
        assert_eq!(t0.elapsed(), Duration::from_secs(20));
        assert_eq!(s.failure, None, "readiness failures never ask for a restart");

        rt.set("ready", Behaviour::Exit(0));
        wait(&mut rx, |s| s.ready).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn initial_delay_postpones_the_first_probe() {
        let rt = Arc::new(ScriptedRuntime::new());
        let mut probe = exec_probe("ready", 10, 3);
        probe.timing.initial_delay = Duration::from_secs(5);
        let p = spawn(&rt, ContainerProbes { readiness: Some(probe), ..Default::default() });
        let mut rx = p.subscribe();
        wait(&mut rx, |s| s.ready).await;
        assert_eq!(rt.calls(), vec![("ready".to_string(), Duration::from_secs(5))]);
    }

    #[tokio::test(start_paused = true)]
    async fn initial_delay_counts_from_the_real_start_of_an_adopted_container() {
        let rt = Arc::new(ScriptedRuntime::new());
        let mut probe = exec_probe("ready", 10, 3);
        probe.timing.initial_delay = Duration::from_secs(30);
        tokio::time::advance(Duration::from_secs(60)).await;
        let started_at = Instant::now() - Duration::from_secs(40);
        let runtime: Arc<dyn ContainerRuntime> = rt.clone();
        let p = ContainerProber::spawn(
            runtime,
            "c1",
            ContainerProbes { readiness: Some(probe), ..Default::default() },
            started_at,
        );
        let mut rx = p.subscribe();
        let before = Instant::now();
        wait(&mut rx, |s| s.ready).await;
        assert_eq!(before.elapsed(), Duration::ZERO, "the delay already passed before the agent restarted");
    }

    #[tokio::test(start_paused = true)]
    async fn startup_gates_liveness_and_readiness() {
        let rt = Arc::new(ScriptedRuntime::new());
        rt.set("startup", Behaviour::Exit(1));
        let probes = ContainerProbes {
            startup: Some(exec_probe("startup", 1, 30)),
            liveness: Some(exec_probe("live", 10, 3)),
            readiness: Some(exec_probe("ready", 10, 3)),
        };
        let p = spawn(&rt, probes);
        assert_eq!(p.status(), ProbeStatus { started: false, ready: false, failure: None });
        tokio::time::sleep(Duration::from_millis(5_500)).await;
        assert_eq!(rt.count("startup"), 6, "startup probed at 0..=5 s");
        assert_eq!(rt.count("live") + rt.count("ready"), 0, "nothing else runs before startup succeeds");
        assert!(!p.status().started);

        rt.set("startup", Behaviour::Exit(0));
        let mut rx = p.subscribe();
        let s = wait(&mut rx, |s| s.started && s.ready).await;
        assert_eq!(s.failure, None);
        let startup_done =
            rt.calls().iter().filter(|(c, _)| c == "startup").map(|(_, t)| *t).max().expect("startup ran");
        assert_eq!(startup_done, Duration::from_secs(6));
        for (command, at) in rt.calls() {
            if command != "startup" {
                assert!(at >= startup_done, "{command} ran at {at:?}, before startup succeeded");
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(rt.count("startup"), 7, "startup stops once it succeeded");
        assert!(rt.count("live") >= 3, "liveness keeps running: {:?}", rt.calls());
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_failure_requests_a_restart_and_stops_probing() {
        let rt = Arc::new(ScriptedRuntime::new());
        rt.set("live", Behaviour::Exit(1));
        let t0 = Instant::now();
        let p = spawn(
            &rt,
            ContainerProbes {
                liveness: Some(exec_probe("live", 10, 3)),
                readiness: Some(exec_probe("ready", 10, 3)),
                ..Default::default()
            },
        );
        let mut rx = p.subscribe();
        let s = wait(&mut rx, |s| s.failure.is_some()).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(20), "failures at 0, 10 and 20 s");
        assert_eq!(
            s.failure,
            Some(ProbeFailure {
                kind: ProbeKind::Liveness,
                message: "command [\"live\"] exited with 1: live says 1".into()
            })
        );
        assert!(s.ready, "readiness is independent");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(rt.count("live"), 3, "no liveness probe after the failure");
    }

    #[tokio::test(start_paused = true)]
    async fn startup_failure_requests_a_restart_and_nothing_else_runs() {
        let rt = Arc::new(ScriptedRuntime::new());
        rt.set("startup", Behaviour::Exit(2));
        let probes = ContainerProbes {
            startup: Some(exec_probe("startup", 5, 2)),
            liveness: Some(exec_probe("live", 10, 3)),
            readiness: Some(exec_probe("ready", 10, 3)),
        };
        let p = spawn(&rt, probes);
        let mut rx = p.subscribe();
        let s = wait(&mut rx, |s| s.failure.is_some()).await;
        assert_eq!(s.failure.as_ref().map(|f| f.kind), Some(ProbeKind::Startup));
        assert!(!s.started && !s.ready);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(rt.count("startup"), 2);
        assert_eq!(rt.count("live") + rt.count("ready"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn handler_errors_are_retried_and_then_ignored() {
        let rt = Arc::new(ScriptedRuntime::new());
        rt.set("live", Behaviour::Error);
        let p = spawn(&rt, ContainerProbes { liveness: Some(exec_probe("live", 10, 1)), ..Default::default() });
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(rt.count("live"), 9, "three ticks, three attempts each");
        assert_eq!(p.status().failure, None, "errors never count as failures");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_prober_stops_probing() {
        let rt = Arc::new(ScriptedRuntime::new());
        let p = spawn(&rt, ContainerProbes { readiness: Some(exec_probe("ready", 1, 3)), ..Default::default() });
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(rt.count("ready"), 3);
        drop(p);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(rt.count("ready"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn run_probe_loop_publishes_and_stops_when_unobserved() {
        let rt = Arc::new(ScriptedRuntime::new());
        let (tx, mut rx) = watch::channel(ProbeUpdate { result: ProbeResult::Unknown, message: None });
        let runtime: Arc<dyn ContainerRuntime> = rt.clone();
        let task = tokio::spawn(run_probe_loop(
            ProbeKind::Readiness,
            exec_probe("ready", 1, 1),
            runtime,
            "c1".into(),
            Instant::now(),
            tx,
        ));
        let first = rx.wait_for(|u| u.result == ProbeResult::Success).await.expect("published").clone();
        assert_eq!(first.message, None);
        rt.set("ready", Behaviour::Exit(3));
        let failed = rx.wait_for(|u| u.result == ProbeResult::Failure).await.expect("published").clone();
        assert_eq!(failed.message.as_deref(), Some("command [\"ready\"] exited with 3: ready says 3"));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("loop ends without receivers")
            .expect("no panic");
    }

    #[test]
    fn container_probes_from_spec() {
        use k8s_openapi::api::core::v1::{ExecAction, TCPSocketAction};
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let container = Container {
            name: "web".into(),
            liveness_probe: Some(Probe {
                tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(80), host: None }),
                period_seconds: Some(3),
                ..Default::default()
            }),
            startup_probe: Some(Probe {
                exec: Some(ExecAction { command: Some(vec!["true".into()]) }),
                success_threshold: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let err =
            ContainerProbes::from_container(&container, ip, "spec.containers[web]").expect_err("startup threshold");
        assert_eq!(
            err.to_string(),
            "spec.containers[web].startupProbe.successThreshold: must be 1 for startupProbe probes, got 2"
        );
        let container = Container { startup_probe: None, ..container };
        let probes = ContainerProbes::from_container(&container, ip, "spec.containers[web]").expect("valid");
        assert_eq!(
            probes.liveness,
            Some(ConfiguredProbe {
                timing: ProbeTiming { period: Duration::from_secs(3), ..ProbeTiming::default() },
                action: ProbeAction::TcpSocket { host: "10.1.2.3".into(), port: 80 },
            })
        );
        assert!(probes.startup.is_none() && probes.readiness.is_none() && !probes.is_empty());
    }
}
