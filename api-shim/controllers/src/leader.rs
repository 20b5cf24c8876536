//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several API servers on one
//! etcd exactly one runs the controllers (upstream's `client-go/tools/leaderelection` with a
//! `LeaseLock` on `kube-system/kube-controller-manager`, and its timings: lease 15 s, renew
//! deadline 10 s, retry 2 s).
//!
//! The decision is pure ([`decide`], fake-clock tested): a candidate takes the Lease when nobody
//! holds it or when the record has not changed for a full lease duration *as measured by the
//! candidate's own clock* since it last saw the record change (so clocks need not agree); the
//! holder renews every retry period. Writes are compare-and-swap on the Lease's resourceVersion,
//! so two candidates can never both win a round. A leader that has not managed to renew within
//! the renew deadline — or that sees another holder — steps down at once: the renew deadline is
//! shorter than the lease duration, so it stops before anybody else may start.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use crate::Error;

/// Settings of the election (upstream `--leader-elect-*` flags).
#[derive(Debug, Clone)]
pub struct LeaderOpts {
    pub namespace: String,
    pub name: String,
    /// `<hostname>_<uuid>`, as kube-controller-manager.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderOpts {
    /// Upstream's defaults with a fresh identity.
    pub fn new() -> LeaderOpts {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        LeaderOpts {
            namespace: "kube-system".into(),
            name: "kube-controller-manager".into(),
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Default for LeaderOpts {
    fn default() -> Self {
        LeaderOpts::new()
    }
}

/// What the election needs of the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    pub lease_duration: Option<Duration>,
    pub renew_time: Option<DateTime<Utc>>,
    pub transitions: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Create the Lease (none exists) or take it over.
    Acquire,
    /// We hold it: write a new renewTime.
    Renew,
    /// Somebody else holds a live lease.
    Follow,
}

/// The round's decision. `observed_at` is when this candidate last saw the record change (its
/// own clock); the record's own lease duration wins over ours, as upstream.
pub fn decide(
    me: &str,
    record: Option<&Record>,
    observed_at: DateTime<Utc>,
    now: DateTime<Utc>,
    ours: Duration,
) -> Decision {
    let Some(r) = record else { return Decision::Acquire };
    match r.holder.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::Acquire,
        Some(_) => {
            let d = r.lease_duration.unwrap_or(ours);
            let expired = chrono::Duration::from_std(d).is_ok_and(|d| now > observed_at + d);
            if expired { Decision::Acquire } else { Decision::Follow }
        }
    }
}

/// Whether a leader whose last successful renewal was at `last_renew` must step down.
pub fn must_step_down(last_renew: DateTime<Utc>, now: DateTime<Utc>, renew_deadline: Duration) -> bool {
    chrono::Duration::from_std(renew_deadline).is_ok_and(|d| now - last_renew > d)
}

pub(crate) fn to_chrono(t: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    i64::try_from(t.as_nanosecond()).ok().map(DateTime::from_timestamp_nanos)
}

fn record(l: &Lease) -> Record {
    let spec = l.spec.as_ref();
    Record {
        holder: spec.and_then(|s| s.holder_identity.clone()),
        lease_duration: spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs),
        renew_time: spec.and_then(|s| s.renew_time.as_ref()).and_then(|t| to_chrono(&t.0)),
        transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
    }
}

fn micro(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Runs the election forever, publishing whether this process leads on `leading`.
pub async fn elect(client: Client, opts: LeaderOpts, leading: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &opts.namespace);
    let mut seen: Option<(Record, DateTime<Utc>)> = None;
    let mut last_renew: Option<DateTime<Utc>> = None;
    let mut tick = tokio::time::interval(opts.retry_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Utc::now();
        let round = round(&api, &opts, &mut seen, now).await;
        match round {
            Ok(true) => last_renew = Some(now),
            Ok(false) => last_renew = None,
            Err(e) => tracing::debug!(error = %e, lease = opts.name, "leader election round failed"),
        }
        let lead = last_renew.is_some_and(|t| !must_step_down(t, Utc::now(), opts.renew_deadline));
        if !lead {
            last_renew = None;
        }
        if *leading.borrow() != lead {
            if lead {
                tracing::info!(identity = opts.identity, lease = %format!("{}/{}", opts.namespace, opts.name), "became leader");
            } else {
                tracing::warn!(identity = opts.identity, "lost leadership");
            }
            leading.send_replace(lead);
        }
    }
}

/// One round: `Ok(true)` when we hold the lease after it, `Ok(false)` when somebody else does.
async fn round(
    api: &Api<Lease>,
    opts: &LeaderOpts,
    seen: &mut Option<(Record, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    let current = match api.get(&opts.name).await {
        Ok(l) => Some(l),
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(e) => return Err(e.into()),
    };
    let rec = current.as_ref().map(record);
    if let Some(r) = &rec
        && seen.as_ref().is_none_or(|(s, _)| s != r)
    {
        *seen = Some((r.clone(), now));
    }
    let observed_at = seen.as_ref().map_or(now, |(_, t)| *t);
    let decision = decide(&opts.identity, rec.as_ref(), observed_at, now, opts.lease_duration);
    if decision == Decision::Follow {
        return Ok(false);
    }
    let secs = i32::try_from(opts.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let (acquire, transitions) = match (&current, decision) {
        (Some(l), Decision::Renew) => (
            l.spec.as_ref().and_then(|s| s.acquire_time.as_ref()).and_then(|t| to_chrono(&t.0)).unwrap_or(now),
            rec.as_ref().map_or(0, |r| r.transitions),
        ),
        (Some(_), _) => (now, rec.as_ref().map_or(0, |r| r.transitions.saturating_add(1))),
        (None, _) => (now, 0),
    };
    let mut body = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": opts.name, "namespace": opts.namespace},
        "spec": {"holderIdentity": opts.identity, "leaseDurationSeconds": secs,
                 "acquireTime": micro(acquire), "renewTime": micro(now), "leaseTransitions": transitions},
    });
    let result = match &current {
        Some(l) => {
            body["metadata"]["resourceVersion"] = json!(l.resource_version());
            let lease: Lease = serde_json::from_value(body).map_err(|e| Error::Config(e.to_string()))?;
            api.replace(&opts.name, &PostParams::default(), &lease).await
        }
        None => {
            let lease: Lease = serde_json::from_value(body).map_err(|e| Error::Config(e.to_string()))?;
            api.create(&PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(l) => {
            *seen = Some((record(&l), now));
            Ok(true)
        }
        // Somebody else wrote first: they won this round.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn held_by(h: &str) -> Record {
        Record {
            holder: Some(h.into()),
            lease_duration: Some(Duration::from_secs(15)),
            renew_time: Some(t(0)),
            transitions: 0,
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn no_lease_or_no_holder_is_acquired() {
        assert_eq!(decide("me", None, t(0), t(0), D), Decision::Acquire);
        let released = Record { holder: Some(String::new()), ..held_by("x") };
        assert_eq!(decide("me", Some(&released), t(0), t(0), D), Decision::Acquire);
    }

    #[test]
    fn the_holder_renews() {
        assert_eq!(decide("me", Some(&held_by("me")), t(0), t(100), D), Decision::Renew);
    }

    #[test]
    fn another_holder_is_followed_until_a_full_lease_passes_on_our_clock() {
        let r = held_by("other");
        assert_eq!(decide("me", Some(&r), t(10), t(24), D), Decision::Follow);
        assert_eq!(decide("me", Some(&r), t(10), t(25), D), Decision::Follow, "exactly the duration is not past it");
        assert_eq!(decide("me", Some(&r), t(10), t(26), D), Decision::Acquire);
        // The record's renewTime is not trusted (skewed clocks): only when we saw it change.
        let skewed = Record { renew_time: Some(t(-1000)), ..r.clone() };
        assert_eq!(decide("me", Some(&skewed), t(10), t(20), D), Decision::Follow);
        // The record's own duration wins over ours.
        let long = Record { lease_duration: Some(Duration::from_secs(60)), ..r };
        assert_eq!(decide("me", Some(&long), t(10), t(30), D), Decision::Follow);
    }

    #[test]
    fn a_leader_steps_down_after_the_renew_deadline_before_others_may_take_over() {
        let d = Duration::from_secs(10);
        assert!(!must_step_down(t(0), t(10), d));
        assert!(must_step_down(t(0), t(11), d));
        // The follower that saw the last renewal at t(0) may take over only after t(15).
        assert_eq!(decide("b", Some(&held_by("a")), t(0), t(11), D), Decision::Follow);
    }
}
