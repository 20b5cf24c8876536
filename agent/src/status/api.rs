//! [`StatusSink`] for the API (kubelet's status manager): pods from the API source get their
//! computed status sent as `PATCH pods/<name>/status`, and pods that finished a graceful deletion
//! are deleted for good.
//!
//! `set` only records the latest pod and marks its uid dirty (it must not block the worker). One
//! sender task drains the dirty set: per pod it diffs the status against the last one the API
//! accepted and patches only when it changed, so a burst of worker turns costs one request
//! carrying the latest status (latest wins, one in flight per pod). A merge patch carries the
//! pod's uid as a precondition (a pod recreated under the same name is not touched) and `null`
//! for status fields that disappeared. Failures stay dirty and are retried with backoff, so status
//! catches up after the API was unreachable.
//!
//! When a torn-down pod (`remove`) had a `deletionTimestamp`, the sink deletes it with grace 0
//! and a uid precondition, as kubelet does once the containers are gone. A static pod's status goes
//! to its mirror pod (uid from the [`MirrorIndex`]); until the mirror exists it waits.

use super::StatusSink;
use crate::apiserver::Backoff;
use crate::source::CONFIG_SOURCE;
use crate::source::mirror::MirrorIndex;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{Instrument, debug, info, info_span, warn};

#[derive(Default)]
struct State {
    /// The latest pod per uid (API pods only).
    latest: HashMap<String, Pod>,
    /// Uids torn down since their last send.
    removed: BTreeSet<String>,
    dirty: BTreeSet<String>,
    /// The last status the API accepted, per uid, with the uid of the API object it went to
    /// (the pod itself, or a static pod's mirror).
    sent: HashMap<String, (String, PodStatus)>,
}

/// The API status sink. Cheap to clone.
#[derive(Clone)]
pub struct ApiStatus {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    mirrors: MirrorIndex,
}

/// The merge patch taking the API's status from `old` to `new` (`null` for removed top-level
/// fields), with the pod's uid as precondition. `None` when nothing changed. Pure.
pub fn status_patch(uid: &str, old: Option<&PodStatus>, new: &PodStatus) -> Option<Value> {
    if old == Some(new) {
        return None;
    }
    let new_v = serde_json::to_value(new).ok()?;
    let mut st: Map<String, Value> = new_v.as_object().cloned().unwrap_or_default();
    if let Some(Value::Object(o)) = old.and_then(|o| serde_json::to_value(o).ok()) {
        for k in o.keys() {
            if !st.contains_key(k) {
                st.insert(k.clone(), Value::Null);
            }
        }
    }
    Some(serde_json::json!({ "metadata": { "uid": uid }, "status": st }))
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn source(pod: &Pod) -> Option<&str> {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(CONFIG_SOURCE)).map(String::as_str)
}

enum Work {
    /// The status to send and the last one sent.
    Patch {
        ns: String,
        name: String,
        /// The uid of the API object (the pod, or a static pod's mirror).
        target: String,
        statuses: Box<(PodStatus, Option<PodStatus>)>,
    },
    Delete {
        ns: String,
        name: String,
    },
}

impl ApiStatus {
    /// Starts the sender task. Static pods' statuses go to their mirrors in `mirrors`.
    pub fn spawn(client: kube::Client, mirrors: MirrorIndex) -> ApiStatus {
        let s = ApiStatus { state: Arc::default(), wake: Arc::new(Notify::new()), mirrors };
        let me = s.clone();
        tokio::spawn(async move { me.send_loop(client).await }.instrument(info_span!("api_status")));
        s
    }

    async fn send_loop(self, client: kube::Client) {
        let mut backoff = Backoff::default();
        loop {
            let dirty: Vec<String> = std::mem::take(&mut lock(&self.state).dirty).into_iter().collect();
            let mut failed = false;
            let results = futures::future::join_all(dirty.iter().map(|uid| self.send_one(&client, uid))).await;
            for (uid, ok) in dirty.iter().zip(results) {
                if !ok {
                    failed = true;
                    lock(&self.state).dirty.insert(uid.clone());
                }
            }
            if failed {
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            backoff.reset();
            if lock(&self.state).dirty.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {
                        // Level-triggered catch-up: whatever was not sent yet (a static pod
                        // whose mirror did not exist, say) is tried again.
                        let mut st = lock(&self.state);
                        let behind: Vec<String> = st
                            .latest
                            .iter()
                            .filter(|(uid, p)| {
                                st.removed.contains(*uid)
                                    || st.sent.get(*uid).map(|(_, s)| s) != Some(&p.status.clone().unwrap_or_default())
                            })
                            .map(|(uid, _)| uid.clone())
                            .collect();
                        st.dirty.extend(behind);
                    }
                }
            }
        }
    }

    /// Sends what pod `uid` needs; `false` to retry later.
    async fn send_one(&self, client: &kube::Client, uid: &str) -> bool {
        let work = {
            let st = lock(&self.state);
            let Some(pod) = st.latest.get(uid) else { return true };
            let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            let name = pod.metadata.name.clone().unwrap_or_default();
            let is_static = source(pod) != Some("api");
            if st.removed.contains(uid) {
                // A static pod's mirror is the mirror loop's; an API pod is deleted for good only
                // after a graceful deletion.
                if is_static || pod.metadata.deletion_timestamp.is_none() {
                    drop(st);
                    self.forget(uid);
                    return true;
                }
                Work::Delete { ns, name }
            } else {
                let target = if is_static { self.mirrors.get(&ns, &name) } else { Some(uid.to_string()) };
                // No mirror yet: the periodic catch-up sends it once there is one.
                let Some(target) = target else { return true };
                let old = st.sent.get(uid).filter(|(t, _)| *t == target).map(|(_, s)| s.clone());
                let statuses = Box::new((pod.status.clone().unwrap_or_default(), old));
                Work::Patch { ns, name, target, statuses }
            }
        };
        match work {
            Work::Delete { ns, name } => {
                let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
                    ..Default::default()
                };
                match pods.delete(&name, &dp).await {
                    Ok(_) => info!(pod = %format!("{ns}/{name}"), "pod deleted after graceful termination"),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => {
                        warn!(pod = %format!("{ns}/{name}"), error = %e, "final pod delete failed; retrying");
                        return false;
                    }
                }
                self.forget(uid);
                true
            }
            Work::Patch { ns, name, target, statuses } => {
                let (status, old) = *statuses;
                let Some(patch) = status_patch(&target, old.as_ref(), &status) else { return true };
                let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                match pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(_) => {
                        debug!(pod = %format!("{ns}/{name}"), phase = ?status.phase, "status patched");
                        lock(&self.state).sent.insert(uid.to_string(), (target, status));
                        true
                    }
                    // Gone, or another pod under that name now: nothing to report to.
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => true,
                    Err(e) => {
                        warn!(pod = %format!("{ns}/{name}"), error = %e, "status patch failed; retrying");
                        false
                    }
                }
            }
        }
    }

    fn forget(&self, uid: &str) {
        let mut st = lock(&self.state);
        st.latest.remove(uid);
        st.removed.remove(uid);
        st.sent.remove(uid);
    }
}

impl StatusSink for ApiStatus {
    fn set(&self, uid: &str, pod: &Pod) {
        if !matches!(source(pod), Some("api" | "file")) {
            return;
        }
        let mut st = lock(&self.state);
        if st.latest.get(uid) == Some(pod) && !st.removed.contains(uid) {
            return;
        }
        st.removed.remove(uid);
        st.latest.insert(uid.to_string(), pod.clone());
        st.dirty.insert(uid.to_string());
        drop(st);
        self.wake.notify_one();
    }

    fn remove(&self, uid: &str) {
        let mut st = lock(&self.state);
        if !st.latest.contains_key(uid) {
            return;
        }
        st.removed.insert(uid.to_string());
        st.dirty.insert(uid.to_string());
        drop(st);
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn patch_only_on_change_with_nulls_for_removed_fields() {
        let a = PodStatus { phase: Some("Pending".into()), message: Some("x".into()), ..Default::default() };
        assert!(status_patch("u1", Some(&a), &a).is_none());
        let b = PodStatus { phase: Some("Running".into()), pod_ip: Some("10.0.0.2".into()), ..Default::default() };
        let p = status_patch("u1", Some(&a), &b).unwrap();
        assert_eq!(p["metadata"]["uid"], "u1");
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(p["status"]["podIP"], "10.0.0.2");
        assert!(p["status"]["message"].is_null() && p["status"].as_object().unwrap().contains_key("message"));
        let first = status_patch("u1", None, &b).unwrap();
        assert!(!first["status"].as_object().unwrap().contains_key("message"));
    }

    #[test]
    fn only_api_pods_are_tracked_and_bursts_coalesce() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _g = rt.enter();
        let s = ApiStatus { state: Arc::default(), wake: Arc::new(Notify::new()), mirrors: MirrorIndex::default() };
        let mut p = Pod::default();
        p.metadata.uid = Some("u1".into());
        s.set("u1", &p);
        assert!(lock(&s.state).latest.is_empty(), "an orphan (no source) is not the API sink's");
        p.metadata.annotations = Some([(CONFIG_SOURCE.to_string(), "api".to_string())].into());
        for phase in ["Pending", "Running", "Running"] {
            p.status = Some(PodStatus { phase: Some(phase.into()), ..Default::default() });
            s.set("u1", &p);
        }
        let st = lock(&s.state);
        assert_eq!(st.dirty.len(), 1);
        assert_eq!(st.latest["u1"].status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    }
}
