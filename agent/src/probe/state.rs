//! The pure core of a probe: timing with upstream defaults, and the threshold state machine that
//! turns single probe outcomes into the published result, as kubelet's prober worker does.

use k8s_openapi::api::core::v1::Probe;
use std::fmt;
use std::time::Duration;

/// Which of a container's three probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    /// The field name in the container spec (`startupProbe`, …), for errors and events.
    pub fn field(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startupProbe",
            ProbeKind::Liveness => "livenessProbe",
            ProbeKind::Readiness => "readinessProbe",
        }
    }

    /// The result a probe publishes before it has decided anything (kubelet's `initialValue`):
    /// readiness starts as not ready, liveness as alive, startup as unknown.
    pub fn initial_result(self) -> ProbeResult {
        match self {
            ProbeKind::Startup => ProbeResult::Unknown,
            ProbeKind::Liveness => ProbeResult::Success,
            ProbeKind::Readiness => ProbeResult::Failure,
        }
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        })
    }
}

/// The published result of a probe (kubelet's `results.Result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    Failure,
    Unknown,
}

/// What one run of a handler found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The check ran and failed (non-zero exit, bad status, refused, timed out); counts towards
    /// `failureThreshold`.
    Failure(String),
    /// The check could not be run at all (e.g. the runtime refused the exec). Like kubelet, such a
    /// result is retried and then thrown away: it does not move the state machine.
    Error(String),
}

/// Invalid probe configuration, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeConfigError {
    #[error("{field}: exactly one of exec, httpGet, tcpSocket or grpc must be set, found {found}")]
    Handlers { field: String, found: usize },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// Timing and thresholds of one probe, defaulted like the API server defaults them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTiming {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Default for ProbeTiming {
    /// Upstream defaults: no initial delay, every 10 s, 1 s timeout, 1 success, 3 failures.
    fn default() -> Self {
        ProbeTiming {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

impl ProbeTiming {
    /// Reads the timing fields of `probe` (at `field`, e.g. `spec.containers[web].livenessProbe`).
    /// Unset or zero fields take the upstream defaults (static pods are not defaulted by an API
    /// server); negative values are rejected, and so is a `successThreshold` other than 1 for
    /// liveness and startup probes, as API validation does.
    pub fn from_probe(kind: ProbeKind, probe: &Probe, field: &str) -> Result<Self, ProbeConfigError> {
        let d = ProbeTiming::default();
        let get = |name: &str, v: Option<i32>| -> Result<Option<u32>, ProbeConfigError> {
            match v {
                Some(n) if n < 0 => Err(ProbeConfigError::Invalid {
                    field: format!("{field}.{name}"),
                    reason: format!("must be greater than or equal to 0, got {n}"),
                }),
                Some(0) | None => Ok(None),
                Some(n) => Ok(u32::try_from(n).ok()),
            }
        };
        let initial_delay = get("initialDelaySeconds", probe.initial_delay_seconds)?;
        let period = get("periodSeconds", probe.period_seconds)?;
        let timeout = get("timeoutSeconds", probe.timeout_seconds)?;
        let success_threshold = get("successThreshold", probe.success_threshold)?.unwrap_or(d.success_threshold);
        let failure_threshold = get("failureThreshold", probe.failure_threshold)?.unwrap_or(d.failure_threshold);
        if kind != ProbeKind::Readiness && success_threshold != 1 {
            return Err(ProbeConfigError::Invalid {
                field: format!("{field}.successThreshold"),
                reason: format!("must be 1 for {} probes, got {success_threshold}", kind.field()),
            });
        }
        let secs = |v: Option<u32>, default: Duration| v.map_or(default, |s| Duration::from_secs(u64::from(s)));
        Ok(ProbeTiming {
            initial_delay: secs(initial_delay, d.initial_delay),
            period: secs(period, d.period),
            timeout: secs(timeout, d.timeout),
            success_threshold,
            failure_threshold,
        })
    }
}

/// The threshold state machine of one probe for one container instance (kubelet's prober
/// `worker.doProbe` minus the I/O).
#[derive(Debug, Clone)]
pub struct ProbeState {
    kind: ProbeKind,
    timing: ProbeTiming,
    result: ProbeResult,
    /// Outcome kind (true = success) of the current run of identical outcomes.
    last: Option<bool>,
    run: u32,
    /// Set once liveness or startup published a failure: the container is going to be restarted,
    /// and probing it further could only race with the kill.
    on_hold: bool,
    last_message: Option<String>,
}

impl ProbeState {
    pub fn new(kind: ProbeKind, timing: ProbeTiming) -> Self {
        ProbeState {
            kind,
            timing,
            result: kind.initial_result(),
            last: None,
            run: 0,
            on_hold: false,
            last_message: None,
        }
    }

    pub fn kind(&self) -> ProbeKind {
        self.kind
    }

    pub fn timing(&self) -> &ProbeTiming {
        &self.timing
    }

    /// The currently published result.
    pub fn result(&self) -> ProbeResult {
        self.result
    }

    /// True once a liveness or startup probe has failed for good (this instance must be restarted).
    pub fn is_on_hold(&self) -> bool {
        self.on_hold
    }

    /// The message of the most recent failed outcome, for events and status.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_message.as_deref()
    }

    /// Whether a probe should run now, `since_start` after the container started, given whether
    /// the container has passed its startup probe. Startup probes run only until the container
    /// has started; liveness and readiness only afterwards. Seconds are compared truncated, as
    /// kubelet does.
    pub fn should_probe(&self, since_start: Duration, started: bool) -> bool {
        if self.on_hold || since_start.as_secs() < self.timing.initial_delay.as_secs() {
            return false;
        }
        match self.kind {
            ProbeKind::Startup => !started,
            ProbeKind::Liveness | ProbeKind::Readiness => started,
        }
    }

    /// Records one outcome; returns the new published result if it changed.
    pub fn record(&mut self, outcome: &Outcome) -> Option<ProbeResult> {
        let success = match outcome {
            Outcome::Success => true,
            Outcome::Failure(msg) => {
                self.last_message = Some(msg.clone());
                false
            }
            Outcome::Error(_) => return None,
        };
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold = if success { self.timing.success_threshold } else { self.timing.failure_threshold };
        if self.run < threshold {
            return None;
        }
        let new = if success { ProbeResult::Success } else { ProbeResult::Failure };
        if !success && self.kind != ProbeKind::Readiness {
            self.on_hold = true;
            self.run = 0;
        }
        if new == self.result {
            return None;
        }
        self.result = new;
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(success: u32, failure: u32) -> ProbeTiming {
        ProbeTiming { success_threshold: success, failure_threshold: failure, ..ProbeTiming::default() }
    }
    fn fail() -> Outcome {
        Outcome::Failure("boom".into())
    }

    #[test]
    fn initial_results_match_kubelet() {
        assert_eq!(ProbeState::new(ProbeKind::Readiness, timing(1, 3)).result(), ProbeResult::Failure);
        assert_eq!(ProbeState::new(ProbeKind::Liveness, timing(1, 3)).result(), ProbeResult::Success);
        assert_eq!(ProbeState::new(ProbeKind::Startup, timing(1, 3)).result(), ProbeResult::Unknown);
    }

    #[test]
    fn readiness_becomes_ready_on_first_success() {
        let mut s = ProbeState::new(ProbeKind::Readiness, timing(1, 3));
        assert_eq!(s.record(&Outcome::Success), Some(ProbeResult::Success));
        assert_eq!(s.record(&Outcome::Success), None, "no change, nothing published");
    }

    #[test]
    fn success_threshold_needs_consecutive_successes() {
        let mut s = ProbeState::new(ProbeKind::Readiness, timing(3, 3));
        assert_eq!(s.record(&Outcome::Success), None);
        assert_eq!(s.record(&Outcome::Success), None);
        assert_eq!(s.record(&fail()), None, "a failure resets the success run");
        assert_eq!(s.record(&Outcome::Success), None);
        assert_eq!(s.record(&Outcome::Success), None);
        assert_eq!(s.record(&Outcome::Success), Some(ProbeResult::Success));
    }

    #[test]
    fn failure_threshold_needs_consecutive_failures() {
        let mut s = ProbeState::new(ProbeKind::Readiness, timing(1, 3));
        s.record(&Outcome::Success);
        assert_eq!(s.record(&fail()), None);
        assert_eq!(s.record(&fail()), None);
        assert_eq!(s.record(&Outcome::Success), None, "a success resets the failure run");
        assert_eq!(s.record(&fail()), None);
        assert_eq!(s.record(&fail()), None);
        assert_eq!(s.record(&fail()), Some(ProbeResult::Failure));
        assert_eq!(s.last_failure(), Some("boom"));
    }

    #[test]
    fn readiness_flips_back_and_forth_and_keeps_probing() {
        let mut s = ProbeState::new(ProbeKind::Readiness, timing(1, 1));
        assert_eq!(s.record(&Outcome::Success), Some(ProbeResult::Success));
        assert_eq!(s.record(&fail()), Some(ProbeResult::Failure));
        assert!(!s.is_on_hold(), "readiness failures never stop probing");
        assert!(s.should_probe(Duration::from_secs(100), true));
        assert_eq!(s.record(&Outcome::Success), Some(ProbeResult::Success));
    }

    #[test]
    fn liveness_failure_is_published_once_and_holds() {
        let mut s = ProbeState::new(ProbeKind::Liveness, timing(1, 2));
        assert_eq!(s.record(&Outcome::Success), None, "already Success");
        assert_eq!(s.record(&fail()), None);
        assert_eq!(s.record(&fail()), Some(ProbeResult::Failure));
        assert!(s.is_on_hold());
        assert!(!s.should_probe(Duration::from_secs(100), true), "no probing of a container about to be killed");
    }

    #[test]
    fn startup_succeeds_or_fails_for_good() {
        let mut s = ProbeState::new(ProbeKind::Startup, timing(1, 2));
        assert_eq!(s.record(&fail()), None);
        assert_eq!(s.record(&Outcome::Success), Some(ProbeResult::Success));

        let mut s = ProbeState::new(ProbeKind::Startup, timing(1, 2));
        assert_eq!(s.record(&fail()), None);
        assert_eq!(s.record(&fail()), Some(ProbeResult::Failure));
        assert!(s.is_on_hold());
    }

    #[test]
    fn errors_are_thrown_away() {
        let mut s = ProbeState::new(ProbeKind::Liveness, timing(1, 2));
        assert_eq!(s.record(&fail()), None);
        assert_eq!(s.record(&Outcome::Error("exec failed".into())), None);
        assert_eq!(s.record(&fail()), Some(ProbeResult::Failure), "the error neither counted nor reset the run");
        assert_eq!(s.last_failure(), Some("boom"));
    }

    #[test]
    fn startup_gates_liveness_and_readiness() {
        let startup = ProbeState::new(ProbeKind::Startup, timing(1, 3));
        let liveness = ProbeState::new(ProbeKind::Liveness, timing(1, 3));
        let readiness = ProbeState::new(ProbeKind::Readiness, timing(1, 3));
        let t = Duration::from_secs(5);
        assert!(startup.should_probe(t, false));
        assert!(!liveness.should_probe(t, false));
        assert!(!readiness.should_probe(t, false));
        assert!(!startup.should_probe(t, true), "startup stops once started");
        assert!(liveness.should_probe(t, true));
        assert!(readiness.should_probe(t, true));
    }

    #[test]
    fn initial_delay_in_whole_seconds() {
        let t = ProbeTiming { initial_delay: Duration::from_secs(3), ..ProbeTiming::default() };
        let s = ProbeState::new(ProbeKind::Liveness, t);
        assert!(!s.should_probe(Duration::from_millis(2_999), true));
        assert!(s.should_probe(Duration::from_secs(3), true));
    }

    fn probe(f: impl FnOnce(&mut Probe)) -> Probe {
        let mut p = Probe::default();
        f(&mut p);
        p
    }

    #[test]
    fn timing_defaults_like_the_api_server() {
        let t = ProbeTiming::from_probe(ProbeKind::Liveness, &Probe::default(), "p").expect("defaults");
        assert_eq!(t, ProbeTiming::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        // Zero means "unset" for the defaulted fields.
        let zeros = probe(|p| {
            p.period_seconds = Some(0);
            p.timeout_seconds = Some(0);
            p.failure_threshold = Some(0);
        });
        assert_eq!(ProbeTiming::from_probe(ProbeKind::Readiness, &zeros, "p"), Ok(ProbeTiming::default()));
        let set = probe(|p| {
            p.initial_delay_seconds = Some(5);
            p.period_seconds = Some(2);
            p.timeout_seconds = Some(3);
            p.success_threshold = Some(2);
            p.failure_threshold = Some(7);
        });
        assert_eq!(
            ProbeTiming::from_probe(ProbeKind::Readiness, &set, "p"),
            Ok(ProbeTiming {
                initial_delay: Duration::from_secs(5),
                period: Duration::from_secs(2),
                timeout: Duration::from_secs(3),
                success_threshold: 2,
                failure_threshold: 7,
            })
        );
    }

    #[test]
    fn timing_rejects_invalid_values() {
        let two = probe(|p| p.success_threshold = Some(2));
        for kind in [ProbeKind::Liveness, ProbeKind::Startup] {
            let err = ProbeTiming::from_probe(kind, &two, "spec.containers[app].x").expect_err("threshold");
            assert!(
                matches!(&err, ProbeConfigError::Invalid { field, .. } if field == "spec.containers[app].x.successThreshold"),
                "{err}"
            );
        }
        let neg = probe(|p| p.period_seconds = Some(-1));
        let err = ProbeTiming::from_probe(ProbeKind::Readiness, &neg, "p").expect_err("negative");
        assert_eq!(err.to_string(), "p.periodSeconds: must be greater than or equal to 0, got -1");
    }
}
