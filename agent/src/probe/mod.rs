//! Container probes (startup, liveness, readiness) as kubelet's prober runs them.
//!
//! Split like the rest of the agent: [`state`] is the pure part (upstream defaults, the
//! success/failure threshold machine, startup gating) and is unit-tested without I/O; [`action`]
//! resolves what to check from the container spec (named ports, host defaulting to the pod IP)
//! and runs one check — `exec` through [`crate::runtime::ContainerRuntime::exec`], `httpGet`
//! ([`http`]), `tcpSocket`, `grpc` ([`grpc`]); [`prober`] drives the loops on tokio timers and
//! publishes a [`ProbeStatus`] per container instance on a `watch` channel.
//!
//! Integration for the pod manager:
//!
//! ```ignore
//! let probes = ContainerProbes::from_container(&container, pod_ip, "spec.containers[web]")?; // at admission
//! let prober = ContainerProber::spawn(runtime.clone(), container_id, probes, started_at);    // task started
//! let mut rx = prober.subscribe();   // started / ready / failure (liveness or startup → restart)
//! drop(prober);                      // instance exited or is being killed
//! ```

pub mod action;
pub mod grpc;
pub mod http;
pub mod prober;
pub mod state;
#[cfg(test)]
mod testing;

pub use action::{HttpGet, ProbeAction, Scheme};
pub use prober::{
    ConfiguredProbe, ContainerProber, ContainerProbes, ProbeFailure, ProbeStatus, ProbeUpdate, run_probe_loop,
};
pub use state::{Outcome, ProbeConfigError, ProbeKind, ProbeResult, ProbeState, ProbeTiming};
