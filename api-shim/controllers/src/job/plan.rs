//! The Job controller's decisions for one Job, as a pure function of the Job, its pods and the
//! time.
//!
//! Counting follows upstream's finalizer protocol: every pod is created with the
//! `batch.kubernetes.io/job-tracking` finalizer, so a finished pod cannot vanish before it is
//! counted. A finished pod still holding the finalizer is first recorded by uid in
//! `status.uncountedTerminatedPods`, then its finalizer is removed, then it moves into
//! `status.succeeded`/`status.failed` — three writes, each safe to repeat, so a crash between
//! any two loses and double-counts nothing. The plan returns the intermediate and the final
//! status; the reconciler writes them around the finalizer removals.
//!
//! Then, in upstream's order: a finished Job only waits for its TTL; `podFailurePolicy` rules
//! (FailJob, Ignore, Count on exit codes and pod conditions) judge each newly failed pod;
//! `backoffLimit`, `activeDeadlineSeconds` and the policy fail the Job (deleting what runs);
//! enough successes complete it; `suspend` deletes active pods; otherwise pods are created up to
//! `parallelism` (never past what the completions still need), after an exponential delay since
//! the last failure ([`Opts::backoff_base`] doubling per failure, capped at
//! [`Opts::backoff_max`]). In Indexed mode each pod gets a completion index (annotation, label,
//! `JOB_COMPLETION_INDEX`, hostname `<job>-<index>`) and the Job completes when every index
//! has succeeded once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// The finalizer that keeps a pod until the Job has counted it.
pub const TRACKING: &str = "batch.kubernetes.io/job-tracking";
/// The completion index of a pod of an Indexed Job (annotation and label).
pub const INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// Settings of the Job controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opts {
    /// The delay before the pod after the first failure (upstream: 10 s).
    pub backoff_base: Duration,
    /// The longest delay between failures (upstream: 6 min).
    pub backoff_max: Duration,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { backoff_base: Duration::from_secs(10), backoff_max: Duration::from_secs(360) }
    }
}

/// What the reconciler does for one Job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Written first when finished pods are about to lose their finalizer (records their uids).
    pub uncounted: Option<JobStatus>,
    /// Pods whose tracking finalizer is removed (they have been recorded).
    pub release: Vec<String>,
    /// The status once everything above is done (written when it differs from the stored one).
    pub status: JobStatus,
    /// Pods to create.
    pub create: Vec<Pod>,
    /// Active pods to delete (suspend, failure, deadline, too many).
    pub delete: Vec<String>,
    /// Delete the Job itself (its TTL after finishing has passed).
    pub delete_job: bool,
    /// Look again after this long (a backoff, a deadline or a TTL is due), if not sooner.
    pub requeue: Option<Duration>,
}

fn ts(t: Timestamp) -> Time {
    Time(t)
}

fn plus(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(secs)).unwrap_or(t)
}

/// How long from `now` until `at` (`None` when it has passed).
fn until(now: Timestamp, at: Timestamp) -> Option<Duration> {
    Duration::try_from(at.duration_since(now)).ok()
}

fn finished(pod: &Pod) -> Option<bool> {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => Some(true),
        Some("Failed") => Some(false),
        _ => None,
    }
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(INDEX)).and_then(|v| v.parse().ok())
}

/// When the pod finished: the latest container `finishedAt`, else its deletion or creation time.
fn finish_time(pod: &Pod) -> Option<Timestamp> {
    let s = pod.status.as_ref();
    s.and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0))
        .max()
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// What a `podFailurePolicy` says about one failed pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    FailJob,
    Ignore,
    Count,
}

/// The first matching rule's action (Count when none matches).
pub fn judge(job: &Job, pod: &Pod) -> Verdict {
    let Some(policy) = job.spec.as_ref().and_then(|s| s.pod_failure_policy.as_ref()) else { return Verdict::Count };
    let status = pod.status.as_ref();
    for rule in &policy.rules {
        let matched = if let Some(on) = &rule.on_exit_codes {
            let codes = status
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .filter(|c| on.container_name.as_ref().is_none_or(|n| *n == c.name))
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
                .filter(|code| *code != 0);
            let mut codes = codes.peekable();
            match on.operator.as_str() {
                "In" => codes.any(|c| on.values.contains(&c)),
                "NotIn" => codes.any(|c| !on.values.contains(&c)),
                _ => false,
            }
        } else {
            rule.on_pod_conditions.iter().flatten().any(|pc| {
                status.and_then(|s| s.conditions.as_ref()).into_iter().flatten().any(|c| {
                    c.type_ == pc.type_ && c.status == if pc.status.is_empty() { "True" } else { pc.status.as_str() }
                })
            })
        };
        if matched {
            return match rule.action.as_str() {
                "FailJob" => Verdict::FailJob,
                "Ignore" => Verdict::Ignore,
                _ => Verdict::Count,
            };
        }
    }
    Verdict::Count
}

fn condition(status: &JobStatus, type_: &str) -> bool {
    status.conditions.iter().flatten().any(|c| c.type_ == type_ && c.status == "True")
}

fn set_condition(status: &mut JobStatus, type_: &str, value: bool, reason: &str, message: &str, now: Timestamp) {
    let v = if value { "True" } else { "False" };
    let conds = status.conditions.get_or_insert_with(Vec::new);
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == v => {}
        Some(c) => {
            c.status = v.into();
            c.reason = Some(reason.into());
            c.message = Some(message.into());
            c.last_transition_time = Some(ts(now));
            c.last_probe_time = Some(ts(now));
        }
        None if value || type_ == "Suspended" => conds.push(JobCondition {
            type_: type_.into(),
            status: v.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_transition_time: Some(ts(now)),
            last_probe_time: Some(ts(now)),
        }),
        None => {}
    }
}

/// `completedIndexes` as upstream writes it: sorted, consecutive runs as `a-b`.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end += 1;
            it.next();
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    out.join(",")
}

/// Parses `completedIndexes` (`1,3-5`); bad entries are skipped.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b.min(a.saturating_add(100_000)));
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    out.insert(a);
                }
            }
        }
    }
    out
}

/// A new pod of the Job (index given in Indexed mode).
pub fn new_pod(job: &Job, index: Option<i32>) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let template = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    meta.namespace = job.metadata.namespace.clone();
    meta.name = None;
    meta.generate_name = Some(match index {
        Some(i) => format!("{name}-{i}-"),
        None => format!("{name}-"),
    });
    meta.finalizers = Some(vec![TRACKING.into()]);
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: name.clone(),
        uid: job.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert("batch.kubernetes.io/job-name".into(), name.clone());
    labels.insert("job-name".into(), name.clone());
    if let Some(uid) = &job.metadata.uid {
        labels.insert("batch.kubernetes.io/controller-uid".into(), uid.clone());
        labels.insert("controller-uid".into(), uid.clone());
    }
    if let Some(i) = index {
        labels.insert(INDEX.into(), i.to_string());
        meta.annotations.get_or_insert_with(BTreeMap::new).insert(INDEX.into(), i.to_string());
        for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            let env = c.env.get_or_insert_with(Vec::new);
            if !env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                env.push(EnvVar { name: "JOB_COMPLETION_INDEX".into(), value: Some(i.to_string()), value_from: None });
            }
        }
        if spec.hostname.is_none() {
            spec.hostname = Some(format!("{name}-{i}"));
        }
    }
    Pod { metadata: ObjectMeta { ..meta }, spec: Some(spec), status: None }
}

/// The plan for `job` given its pods (those it controls) at `now`.
pub fn plan(job: &Job, pods: &[Pod], now: Timestamp, opts: &Opts) -> Plan {
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let mut out = Plan::default();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");

    // 1. Count finished pods (the finalizer protocol).
    let mut uncounted = old.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut unc_ok: BTreeSet<String> = uncounted.succeeded.clone().unwrap_or_default().into_iter().collect();
    let mut unc_fail: BTreeSet<String> = uncounted.failed.clone().unwrap_or_default().into_iter().collect();
    let mut newly = false;
    let mut fail_job = None;
    let mut completed: BTreeSet<i32> = parse_indexes(old.completed_indexes.as_deref().unwrap_or_default());
    for pod in pods {
        let (Some(ok), Some(uid)) = (finished(pod), pod.metadata.uid.clone()) else { continue };
        let tracked = pod.metadata.finalizers.iter().flatten().any(|f| f == TRACKING);
        if !tracked || unc_ok.contains(&uid) || unc_fail.contains(&uid) {
            continue;
        }
        newly = true;
        out.release.push(pod.metadata.name.clone().unwrap_or_default());
        if ok {
            unc_ok.insert(uid);
        } else {
            match judge(job, pod) {
                Verdict::Ignore => {}
                Verdict::Count => {
                    unc_fail.insert(uid);
                }
                Verdict::FailJob => {
                    unc_fail.insert(uid);
                    fail_job = Some(format!(
                        "Pod {} has condition or exit code matching a FailJob rule",
                        pod.metadata.name.clone().unwrap_or_default()
                    ));
                }
            }
        }
    }
    if newly {
        uncounted.succeeded = Some(unc_ok.iter().cloned().collect());
        uncounted.failed = Some(unc_fail.iter().cloned().collect());
        let mut s = old.clone();
        s.uncounted_terminated_pods = Some(uncounted);
        out.uncounted = Some(s);
    }
    // Everything recorded is counted once its finalizer is gone (the reconciler removes it
    // between the two status writes).
    let by_uid: BTreeMap<&str, &Pod> = pods.iter().filter_map(|p| Some((p.metadata.uid.as_deref()?, p))).collect();
    for uid in &unc_ok {
        if let Some(i) = by_uid.get(uid.as_str()).and_then(|p| index_of(p)).filter(|_| indexed) {
            completed.insert(i);
        }
    }
    status.succeeded = Some(old.succeeded.unwrap_or(0) + unc_ok.len() as i32);
    status.failed = Some(old.failed.unwrap_or(0) + unc_fail.len() as i32);
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods { succeeded: Some(vec![]), failed: Some(vec![]) });
    let completions = spec.completions;
    if indexed {
        let n = completions.unwrap_or(1);
        completed.retain(|i| *i >= 0 && *i < n);
        status.completed_indexes = Some(format_indexes(&completed));
        status.succeeded = Some(completed.len() as i32);
    }

    let active: Vec<&Pod> =
        pods.iter().filter(|p| finished(p).is_none() && p.metadata.deletion_timestamp.is_none()).collect();
    status.active = Some(active.len() as i32);
    status.ready = Some(active.iter().filter(|p| crate::endpointslice::plan::pod_ready(p)).count() as i32);
    status.terminating =
        Some(pods.iter().filter(|p| finished(p).is_none() && p.metadata.deletion_timestamp.is_some()).count() as i32);

    // 2. A finished Job: only its TTL is left.
    let done = condition(&old, "Complete") || condition(&old, "Failed");
    if done {
        if condition(&old, "Failed") {
            out.delete = active.iter().filter_map(|p| p.metadata.name.clone()).collect();
        }
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let at = old.completion_time.as_ref().map(|t| t.0).or_else(|| {
                old.conditions
                    .iter()
                    .flatten()
                    .filter(|c| c.status == "True")
                    .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
                    .max()
            });
            if let Some(at) = at {
                let due = plus(at, i64::from(ttl));
                if due <= now {
                    out.delete_job = true;
                } else {
                    out.requeue = until(now, due);
                }
            }
        }
        out.status = status;
        return out;
    }

    let suspended = spec.suspend == Some(true);
    if !suspended && status.start_time.is_none() {
        status.start_time = Some(ts(now));
    }

    // 3. Failure: podFailurePolicy, backoffLimit, activeDeadlineSeconds.
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let failed = status.failed.unwrap_or(0);
    let deadline =
        spec.active_deadline_seconds.zip(status.start_time.as_ref()).filter(|_| !suspended).map(|(d, s)| plus(s.0, d));
    let failure = if let Some(msg) = fail_job {
        Some(("PodFailurePolicy", msg))
    } else if failed > backoff_limit {
        Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit".to_string()))
    } else if deadline.is_some_and(|d| d <= now) {
        Some(("DeadlineExceeded", "Job was active longer than specified deadline".to_string()))
    } else {
        None
    };
    if let Some((reason, msg)) = failure {
        set_condition(&mut status, "Failed", true, reason, &msg, now);
        out.delete = active.iter().filter_map(|p| p.metadata.name.clone()).collect();
        if spec.ttl_seconds_after_finished.is_some() {
            out.requeue = Some(Duration::from_secs(1));
        }
        out.status = status;
        return out;
    }

    // 4. Success.
    let succeeded = status.succeeded.unwrap_or(0);
    let complete = match (indexed, completions) {
        (true, c) => completed.len() as i32 >= c.unwrap_or(1),
        (false, Some(c)) => succeeded >= c,
        // No completions: done once any pod succeeded and none is left running.
        (false, None) => succeeded > 0 && active.is_empty(),
    };
    if complete {
        set_condition(
            &mut status,
            "Complete",
            true,
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            now,
        );
        status.completion_time = Some(ts(now));
        out.delete = active.iter().filter_map(|p| p.metadata.name.clone()).collect();
        status.active = Some(0);
        if spec.ttl_seconds_after_finished.is_some() {
            out.requeue = Some(Duration::from_secs(1));
        }
        out.status = status;
        return out;
    }
    if let Some(d) = deadline {
        out.requeue = until(now, d);
    }

    // 5. Suspend / resume.
    if suspended {
        set_condition(&mut status, "Suspended", true, "JobSuspended", "Job suspended", now);
        out.delete = active.iter().filter_map(|p| p.metadata.name.clone()).collect();
        status.active = Some(0);
        out.status = status;
        return out;
    }
    if condition(&old, "Suspended") {
        set_condition(&mut status, "Suspended", false, "JobResumed", "Job resumed", now);
        status.start_time = Some(ts(now));
    }

    // 6. Scale: create up to parallelism (after the backoff), delete extras.
    let parallelism = spec.parallelism.unwrap_or(1).max(0) as usize;
    let want = match (indexed, completions) {
        (true, c) => {
            let running: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
            let pending = (0..c.unwrap_or(1)).filter(|i| !completed.contains(i) && !running.contains(i)).count();
            (running.len() + pending).min(parallelism)
        }
        (false, Some(c)) => ((c - succeeded).max(0) as usize).min(parallelism),
        (false, None) if succeeded > 0 => active.len().min(parallelism),
        (false, None) => parallelism,
    };
    if active.len() > want {
        let mut extra: Vec<&&Pod> = active.iter().collect();
        // Delete the newest first (least work lost); in Indexed mode duplicates of an index go first.
        extra.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)));
        out.delete = extra.iter().take(active.len() - want).filter_map(|p| p.metadata.name.clone()).collect();
    } else if active.len() < want {
        let last_failure = pods.iter().filter(|p| finished(p) == Some(false)).filter_map(finish_time).max();
        let failures = status.failed.unwrap_or(0);
        let delay = if failures > 0 {
            let shift = (failures - 1).clamp(0, 20) as u32;
            opts.backoff_base.saturating_mul(1u32 << shift).min(opts.backoff_max)
        } else {
            Duration::ZERO
        };
        let ready_at =
            last_failure.map(|t| t.checked_add(SignedDuration::try_from(delay).unwrap_or_default()).unwrap_or(t));
        match ready_at {
            Some(at) if at > now => out.requeue = until(now, at).into_iter().chain(out.requeue).min(),
            _ => {
                let n = want - active.len();
                if indexed {
                    let running: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
                    let free = (0..completions.unwrap_or(1)).filter(|i| !completed.contains(i) && !running.contains(i));
                    out.create = free.take(n).map(|i| new_pod(job, Some(i))).collect();
                } else {
                    out.create = (0..n).map(|_| new_pod(job, None)).collect();
                }
            }
        }
    }
    out.status = status;
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-12-08T00:00:00Z".parse().unwrap()
    }

    fn job(spec: serde_json::Value) -> Job {
        let mut s = json!({"template": {"metadata": {"labels": {"app": "j"}},
                           "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}});
        for (k, v) in spec.as_object().unwrap() {
            s[k] = v.clone();
        }
        serde_json::from_value(json!({"metadata": {"name": "j", "namespace": "ns", "uid": "job-uid"}, "spec": s}))
            .unwrap()
    }

    fn pod(name: &str, phase: &str, exit: Option<i32>, finished_at: &str, index: Option<i32>) -> Pod {
        let mut p = json!({
            "metadata": {"name": name, "uid": format!("{name}-uid"), "finalizers": [TRACKING],
                         "creationTimestamp": "2026-12-07T23:00:00Z"},
            "status": {"phase": phase},
        });
        if let Some(code) = exit {
            p["status"]["containerStatuses"] = json!([{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "finishedAt": finished_at}}}]);
        }
        if let Some(i) = index {
            p["metadata"]["annotations"] = json!({INDEX: i.to_string()});
        }
        serde_json::from_value(p).unwrap()
    }

    /// Applies a plan as the reconciler would (finalizers released, status stored).
    fn apply(job: &mut Job, pods: &mut Vec<Pod>, p: &Plan) {
        for name in &p.release {
            let pod = pods.iter_mut().find(|x| x.metadata.name.as_deref() == Some(name)).unwrap();
            pod.metadata.finalizers = Some(vec![]);
        }
        pods.retain(|x| !p.delete.contains(x.metadata.name.as_ref().unwrap()));
        for c in &p.create {
            let mut c = c.clone();
            let n = pods.len() + 100 * pods.iter().filter(|p| finished(p).is_some()).count();
            c.metadata.name = Some(format!("{}{n}", c.metadata.generate_name.clone().unwrap()));
            c.metadata.uid = Some(format!("uid-{n}"));
            c.status = Some(serde_json::from_value(json!({"phase": "Running"})).unwrap());
            pods.push(c);
        }
        job.status = Some(p.status.clone());
    }

    #[test]
    fn completions_five_parallelism_two_never_more_than_two_active() {
        let mut j = job(json!({"completions": 5, "parallelism": 2}));
        let mut pods: Vec<Pod> = Vec::new();
        let o = Opts::default();
        for round in 0..10 {
            let p = plan(&j, &pods, now(), &o);
            apply(&mut j, &mut pods, &p);
            let active = pods.iter().filter(|p| finished(p).is_none()).count();
            assert!(active <= 2, "round {round}: {active} active");
            if condition(j.status.as_ref().unwrap(), "Complete") {
                assert_eq!(j.status.as_ref().unwrap().succeeded, Some(5));
                assert_eq!(round, 3, "2 + 2 + 1 pods, counted one round later");
                return;
            }
            // Every running pod succeeds.
            for pod in pods.iter_mut().filter(|p| finished(p).is_none()) {
                pod.status.as_mut().unwrap().phase = Some("Succeeded".into());
            }
        }
        panic!("never completed: {:?}", j.status);
    }

    #[test]
    fn failures_back_off_exponentially_and_hit_the_backoff_limit() {
        let o = Opts::default();
        let mut j = job(json!({"backoffLimit": 2}));
        let mut pods = vec![pod("a", "Failed", Some(1), "2026-12-07T23:59:55Z", None)];
        let p = plan(&j, &pods, now(), &o);
        assert_eq!(finish_time(&pods[0]), Some("2026-12-07T23:59:55Z".parse().unwrap()));
        assert_eq!(p.release, ["a"], "{p:?}");
        let unc = p.uncounted.clone().unwrap().uncounted_terminated_pods.unwrap();
        assert_eq!(unc.failed.unwrap(), ["a-uid"]);
        assert_eq!(p.status.failed, Some(1));
        assert!(p.create.is_empty(), "10 s backoff from 23:59:55");
        assert_eq!(p.requeue, Some(Duration::from_secs(5)));
        apply(&mut j, &mut pods, &p);
        // Repeating the plan does not count the pod twice.
        let p = plan(&j, &pods, plus(now(), 5), &o);
        assert_eq!(p.status.failed, Some(1));
        assert_eq!(p.create.len(), 1);
        apply(&mut j, &mut pods, &p);
        // The second failure (of the pod just created) waits 20 s.
        pods.retain(|p| finished(p).is_some());
        pods.push(pod("b", "Failed", Some(1), "2026-12-08T00:00:10Z", None));
        let p = plan(&j, &pods, plus(now(), 25), &o);
        assert_eq!(p.status.failed, Some(2));
        assert_eq!(p.requeue, Some(Duration::from_secs(5)));
        apply(&mut j, &mut pods, &p);
        let p = plan(&j, &pods, plus(now(), 30), &o);
        assert_eq!(p.create.len(), 1);
        apply(&mut j, &mut pods, &p);
        pods.push(pod("c", "Failed", Some(1), "2026-12-08T00:01:00Z", None));
        let p = plan(&j, &pods, plus(now(), 61), &o);
        let c = p.status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Failed").unwrap();
        assert_eq!(c.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert!(!p.delete.is_empty(), "the running pod is deleted");
    }

    #[test]
    fn pod_failure_policy_fail_job_ignore_and_count() {
        let policy = json!({"podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}});
        let j = job(policy);
        let fatal = pod("a", "Failed", Some(42), "2026-12-07T23:00:00Z", None);
        assert_eq!(judge(&j, &fatal), Verdict::FailJob);
        let p = plan(&j, &[fatal], now(), &Opts::default());
        assert!(p.status.conditions.unwrap().iter().any(|c| c.reason.as_deref() == Some("PodFailurePolicy")));
        let mut evicted = pod("b", "Failed", Some(137), "2026-12-07T23:00:00Z", None);
        evicted.status.as_mut().unwrap().conditions =
            Some(vec![serde_json::from_value(json!({"type": "DisruptionTarget", "status": "True"})).unwrap()]);
        assert_eq!(judge(&j, &evicted), Verdict::Ignore);
        let p = plan(&j, &[evicted], now(), &Opts::default());
        assert_eq!(p.status.failed, Some(0));
        assert_eq!(p.create.len(), 1, "an ignored failure needs no backoff");
        assert_eq!(judge(&j, &pod("c", "Failed", Some(1), "2026-12-07T23:00:00Z", None)), Verdict::Count);
    }

    #[test]
    fn indexed_jobs_hand_out_each_index_once() {
        let j = job(json!({"completions": 3, "parallelism": 2, "completionMode": "Indexed"}));
        let p = plan(&j, &[], now(), &Opts::default());
        let idx: Vec<String> =
            p.create.iter().map(|c| c.metadata.annotations.as_ref().unwrap()[INDEX].clone()).collect();
        assert_eq!(idx, ["0", "1"]);
        let spec = p.create[1].spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("j-1"));
        assert_eq!(spec.containers[0].env.as_ref().unwrap()[0].value.as_deref(), Some("1"));
        assert_eq!(p.create[0].metadata.finalizers.as_ref().unwrap(), &[TRACKING.to_string()]);
        // Index 1 succeeded, 0 still runs: only index 2 is created.
        let mut running = pod("r", "Running", None, "", Some(0));
        running.status.as_mut().unwrap().phase = Some("Running".into());
        let pods = vec![running, pod("s", "Succeeded", Some(0), "2026-12-07T23:00:00Z", Some(1))];
        let p = plan(&j, &pods, now(), &Opts::default());
        assert_eq!(p.status.completed_indexes.as_deref(), Some("1"));
        let idx: Vec<String> =
            p.create.iter().map(|c| c.metadata.annotations.as_ref().unwrap()[INDEX].clone()).collect();
        assert_eq!(idx, ["2"]);
        assert_eq!(format_indexes(&parse_indexes("0,1,2,4,6-7")), "0-2,4,6-7");
    }

    #[test]
    fn suspend_deadline_and_ttl() {
        let o = Opts::default();
        let mut running = pod("r", "Running", None, "", None);
        running.status.as_mut().unwrap().phase = Some("Running".into());
        let j = job(json!({"suspend": true}));
        let p = plan(&j, std::slice::from_ref(&running), now(), &o);
        assert_eq!(p.delete, ["r"]);
        assert!(p.create.is_empty());
        assert!(condition(&p.status, "Suspended"));

        let mut j = job(json!({"activeDeadlineSeconds": 30}));
        j.status = Some(serde_json::from_value(json!({"startTime": "2026-12-07T23:59:00Z"})).unwrap());
        let p = plan(&j, std::slice::from_ref(&running), now(), &o);
        assert!(p.status.conditions.unwrap().iter().any(|c| c.reason.as_deref() == Some("DeadlineExceeded")));
        assert_eq!(p.delete, ["r"]);

        let mut j = job(json!({"ttlSecondsAfterFinished": 60}));
        j.status = Some(
            serde_json::from_value(json!({"completionTime": "2026-12-07T23:59:30Z",
            "conditions": [{"type": "Complete", "status": "True"}]}))
            .unwrap(),
        );
        let p = plan(&j, &[], now(), &o);
        assert!(!p.delete_job);
        assert_eq!(p.requeue, Some(Duration::from_secs(30)));
        assert!(plan(&j, &[], plus(now(), 31), &o).delete_job);
    }
}
