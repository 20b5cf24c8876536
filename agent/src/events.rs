//! Where the agent's Kubernetes-style events go.
//!
//! Workers report what they did and what failed as events (`SandboxCreated`, `Started`, `Killing`,
//! `BackOff`, `FailedCreatePodSandBox`, …) through the [`EventSink`] seam, so that the next stage can
//! add an API recorder (events.k8s.io, with kubelet's aggregation) without touching the workers.
//! Today's sink is [`EventRing`]: the last events in memory, served by the local endpoint.

use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::sync::Mutex;
use tracing::{info, warn};

/// `Normal` or `Warning`, as in `core/v1` events.
pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

/// One event about a pod.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    pub time: DateTime<Utc>,
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// `namespace/name` of the pod.
    pub pod: String,
    /// The pod's uid (the involved object for an API recorder; not shown by the local endpoint).
    #[serde(skip)]
    pub uid: String,
    pub reason: String,
    pub message: String,
}

/// Receives events. Implementations must not block (workers call it inline).
pub trait EventSink: Send + Sync + 'static {
    fn record(&self, ev: Event);
}

/// Logs an event and hands it to `sink`.
pub fn emit(sink: &dyn EventSink, type_: &'static str, pod: &str, uid: &str, reason: &str, message: String) {
    if type_ == WARNING {
        warn!(pod, reason, %message, "event");
    } else {
        info!(pod, reason, %message, "event");
    }
    sink.record(Event {
        time: Utc::now(),
        type_,
        pod: pod.to_string(),
        uid: uid.to_string(),
        reason: reason.to_string(),
        message,
    });
}

/// The last `capacity` events, oldest first.
pub struct EventRing {
    capacity: usize,
    ring: Mutex<VecDeque<Event>>,
}

impl EventRing {
    pub fn new(capacity: usize) -> Self {
        EventRing { capacity: capacity.max(1), ring: Mutex::new(VecDeque::new()) }
    }

    pub fn recent(&self) -> Vec<Event> {
        self.ring.lock().map(|e| e.iter().cloned().collect()).unwrap_or_default()
    }
}

impl Default for EventRing {
    fn default() -> Self {
        EventRing::new(1000)
    }
}

impl EventSink for EventRing {
    fn record(&self, ev: Event) {
        let mut ring = match self.ring.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest() {
        let r = EventRing::new(2);
        for i in 0..3 {
            emit(&r, NORMAL, "ns/p", "u", "R", format!("m{i}"));
        }
        let msgs: Vec<String> = r.recent().into_iter().map(|e| e.message).collect();
        assert_eq!(msgs, vec!["m1".to_string(), "m2".to_string()]);
    }
}
