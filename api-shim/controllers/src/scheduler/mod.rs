//! The scheduler: gives every pending pod a node, as kube-scheduler's default profile would.
//!
//! One task owns the state: a [`snapshot::Snapshot`] of nodes and placed pods kept current from
//! two watches, and the [`queue::Queue`] of pending pods (`spec.nodeName` empty,
//! `spec.schedulerName` `default-scheduler` or empty; pods for other schedulers are left alone).
//! It takes the next pod, runs the pure [`decide::schedule`] (filters in [`filter`] and
//! [`interpod`], scores in [`score`]) and then
//! - on a node: *assumes* the pod there at once, so the next decision already sees it, and
//!   binds it through `pods/binding` in a separate task (bounded concurrency, so API latency
//!   does not throttle decisions); a failed binding forgets the assumption and retries the pod
//!   after a backoff;
//! - on no node: sets `PodScheduled=False`, reason `Unschedulable`, with upstream's message
//!   ([`message`]), records a `FailedScheduling` event, and parks the pod until nodes or pods
//!   change (plus a periodic flush).
//!
//! Why a single owner rather than a `kube-runtime` `Controller`: decisions must be sequential
//! over one shared, assumed-into snapshot (two pods must not both take the last free core),
//! which a per-object reconciler running in parallel cannot give. Everything is level-triggered
//! all the same: the queue holds every pending pod seen in the watch (a re-list replaces it),
//! failed attempts come back after their backoff, and a restart rebuilds it all from the API.

pub mod decide;
pub mod filter;
pub mod interpod;
pub mod message;
pub mod queue;
pub mod score;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::channel::mpsc;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::Error;
use decide::{Cursor, Decision};
use queue::Queue;
use snapshot::{PodInfo, Snapshot, pod_key};

/// The scheduler name this scheduler answers to (and the event source it reports as).
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings in flight at once.
const PARALLEL_BINDS: usize = 64;

/// Whether this scheduler should place the pod: unbound, not being deleted, and asking for the
/// default scheduler (or no scheduler in particular).
pub fn is_pending_for_us(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    spec.node_name.as_deref().unwrap_or_default().is_empty()
        && matches!(spec.scheduler_name.as_deref(), None | Some("") | Some(SCHEDULER_NAME))
        && pod.metadata.deletion_timestamp.is_none()
        && !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

enum Input {
    Node(Box<watcher::Event<Node>>),
    Pod(Box<watcher::Event<Pod>>),
    Bound { key: String, pod: Arc<Pod>, node: String, result: Result<(), kube::Error> },
}

/// The last `FailedScheduling` event written for a pod, so a repeat bumps its count.
struct Reported {
    event: String,
    message: String,
    count: i32,
    first: String,
}

struct Scheduler {
    client: Client,
    snap: Snapshot,
    queue: Queue,
    cursor: Cursor,
    bound_tx: mpsc::UnboundedSender<Input>,
    binds: Arc<Semaphore>,
    node_buf: Option<Vec<Arc<Node>>>,
    pod_buf: Option<Vec<Arc<Pod>>>,
    nodes_synced: bool,
    pods_synced: bool,
    reported: HashMap<String, Reported>,
}

/// Runs the scheduler until its watches end.
pub async fn run(client: Client) -> Result<(), Error> {
    let nodes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .filter_map(|r| async move { log_watch_error(r, "nodes").map(|e| Input::Node(Box::new(e))) })
        .boxed();
    let pods = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .filter_map(|r| async move { log_watch_error(r, "pods").map(|e| Input::Pod(Box::new(e))) })
        .boxed();
    let (bound_tx, bound_rx) = mpsc::unbounded();
    let inputs = futures::stream::select(futures::stream::select(nodes, pods), bound_rx);
    let s = Scheduler {
        client,
        snap: Snapshot::default(),
        queue: Queue::default(),
        cursor: Cursor::default(),
        bound_tx,
        binds: Arc::new(Semaphore::new(PARALLEL_BINDS)),
        node_buf: None,
        pod_buf: None,
        nodes_synced: false,
        pods_synced: false,
        reported: HashMap::new(),
    };
    s.run(inputs).await;
    Ok(())
}

fn log_watch_error<T>(r: Result<watcher::Event<T>, watcher::Error>, what: &str) -> Option<watcher::Event<T>> {
    match r {
        Ok(e) => Some(e),
        Err(e) => {
            // The watcher retries with backoff and re-lists; nothing is dropped for good.
            tracing::debug!(error = %e, watch = what, "scheduler: watch error (retrying)");
            None
        }
    }
}

impl Scheduler {
    async fn run(mut self, inputs: impl Stream<Item = Input> + Unpin) {
        let mut inputs = inputs;
        loop {
            // Take in everything already delivered before deciding, so decisions see fresh state.
            for _ in 0..4096 {
                match inputs.next().now_or_never() {
                    Some(Some(i)) => self.apply(i),
                    Some(None) => return,
                    None => break,
                }
            }
            if self.nodes_synced
                && self.pods_synced
                && let Some((key, pod)) = self.queue.pop(Instant::now())
            {
                self.schedule_one(key, pod);
                continue;
            }
            let wake = self.queue.next_due().unwrap_or_else(|| Instant::now() + queue::FLUSH_UNSCHEDULABLE);
            tokio::select! {
                i = inputs.next() => match i {
                    Some(i) => self.apply(i),
                    None => return,
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    fn apply(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Node(ev) => {
                match *ev {
                    watcher::Event::Apply(n) => self.snap.upsert_node(Arc::new(n)),
                    watcher::Event::Delete(n) => self.snap.remove_node(&n.name_any()),
                    watcher::Event::Init => self.node_buf = Some(Vec::new()),
                    watcher::Event::InitApply(n) => self.node_buf.get_or_insert_default().push(Arc::new(n)),
                    watcher::Event::InitDone => {
                        self.snap.replace_nodes(self.node_buf.take().unwrap_or_default());
                        self.nodes_synced = true;
                    }
                }
                self.queue.cluster_changed(now);
            }
            Input::Pod(ev) => match *ev {
                watcher::Event::Apply(p) => self.pod_changed(Arc::new(p), now),
                watcher::Event::Delete(p) => {
                    let key = pod_key(&p);
                    self.snap.remove_pod(&key);
                    self.queue.remove(&key);
                    self.reported.remove(&key);
                    self.queue.cluster_changed(now);
                }
                watcher::Event::Init => self.pod_buf = Some(Vec::new()),
                watcher::Event::InitApply(p) => self.pod_buf.get_or_insert_default().push(Arc::new(p)),
                watcher::Event::InitDone => {
                    let pods = self.pod_buf.take().unwrap_or_default();
                    self.snap.replace_pods(pods.clone());
                    let pending = pods
                        .into_iter()
                        .filter(|p| is_pending_for_us(p) && !self.snap.is_assumed(&pod_key(p)))
                        .map(|p| (pod_key(&p), p))
                        .collect();
                    self.queue.replace(pending);
                    self.pods_synced = true;
                    self.queue.cluster_changed(now);
                }
            },
            Input::Bound { key, pod, node, result } => match result {
                Ok(()) => {
                    tracing::debug!(pod = %key, node = %node, "bound");
                    if self.reported.remove(&key).is_some() {
                        tokio::spawn(mark_scheduled(self.client.clone(), pod));
                    }
                }
                Err(e) => {
                    tracing::info!(pod = %key, node = %node, error = %e, "binding failed; retrying after backoff");
                    self.snap.forget(&key);
                    match e {
                        kube::Error::Api(s) if s.code == 404 => self.queue.remove(&key),
                        _ => self.queue.retry(&key, pod, now),
                    }
                    self.queue.cluster_changed(now);
                }
            },
        }
    }

    fn pod_changed(&mut self, pod: Arc<Pod>, now: Instant) {
        let key = pod_key(&pod);
        let was_placed = self.snap.placement(&key).is_some();
        self.snap.upsert_pod(pod.clone());
        if is_pending_for_us(&pod) {
            if !self.snap.is_assumed(&key) {
                self.queue.upsert(&key, pod);
            }
        } else {
            self.queue.remove(&key);
            if !pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default().is_empty() {
                self.reported.remove(&key);
            }
        }
        if was_placed || self.snap.placement(&key).is_some() {
            // A bound pod appeared, moved or finished: room or affinity may have changed.
            self.queue.cluster_changed(now);
        }
    }

    fn schedule_one(&mut self, key: String, pod: Arc<Pod>) {
        if self.snap.is_assumed(&key) || !is_pending_for_us(&pod) {
            self.queue.done(&key);
            return;
        }
        let _span = tracing::debug_span!("schedule", pod = %key).entered();
        let info = PodInfo::new(pod.clone());
        match decide::schedule(&info, &self.snap, &mut self.cursor) {
            Decision::Bind { node } => {
                self.snap.assume(&info, &node);
                self.queue.done(&key);
                let (client, tx, sem) = (self.client.clone(), self.bound_tx.clone(), self.binds.clone());
                tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    let result = bind(&client, &pod, &node).await;
                    if result.is_ok() {
                        let msg = format!("Successfully assigned {key} to {node}");
                        crate::events::normal(&client, pod.as_ref(), SCHEDULER_NAME, "Scheduled", &msg).await;
                    }
                    // The receiver lives as long as the scheduler; a send error means it stopped.
                    let _ = tx.unbounded_send(Input::Bound { key, pod, node, result });
                });
            }
            Decision::Unschedulable { message } => {
                tracing::debug!(%message, "unschedulable");
                self.queue.unschedulable(&key);
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let prev = self.reported.get(&key);
                let (event, count, first, fresh) = match prev {
                    Some(r) if r.message == message => (r.event.clone(), r.count + 1, r.first.clone(), false),
                    _ => (event_name(&pod), 1, now.clone(), true),
                };
                self.reported.insert(
                    key,
                    Reported { event: event.clone(), message: message.clone(), count, first: first.clone() },
                );
                let client = self.client.clone();
                tokio::spawn(async move {
                    if let Err(e) = mark_unschedulable(&client, &pod, &message).await {
                        tracing::debug!(error = %e, "PodScheduled condition (retried with the next attempt)");
                    }
                    if let Err(e) = record_event(&client, &pod, &event, &message, count, &first, &now, fresh).await {
                        tracing::debug!(error = %e, "FailedScheduling event (retried with the next attempt)");
                    }
                });
            }
        }
    }
}

async fn bind(client: &Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    api.create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &binding).await?;
    Ok(())
}

fn pod_scheduled_condition(pod: &Pod) -> Option<(String, String)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .map(|c| (c.status.clone(), c.message.clone().unwrap_or_default()))
}

async fn mark_unschedulable(client: &Client, pod: &Pod, message: &str) -> Result<(), kube::Error> {
    if pod_scheduled_condition(pod).is_some_and(|(s, m)| s == "False" && m == message) {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
        "lastProbeTime": null, "lastTransitionTime": now,
    }]}});
    api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await?;
    Ok(())
}

/// After a pod that was reported unschedulable is bound, its condition turns `True`.
async fn mark_scheduled(client: Client, pod: Arc<Pod>) {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace().unwrap_or_default());
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "True", "reason": null, "message": null,
        "lastProbeTime": null, "lastTransitionTime": now,
    }]}});
    if let Err(e) = api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
        tracing::debug!(error = %e, "PodScheduled=True after binding");
    }
}

fn event_name(pod: &Pod) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}.{:x}", pod.name_any(), nanos)
}

#[allow(clippy::too_many_arguments)]
async fn record_event(
    client: &Client,
    pod: &Pod,
    name: &str,
    message: &str,
    count: i32,
    first: &str,
    now: &str,
    fresh: bool,
) -> Result<(), kube::Error> {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    if !fresh {
        let patch = json!({"count": count, "lastTimestamp": now});
        if api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.is_ok() {
            return Ok(());
        }
    }
    let ev: Event = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": pod.name_any(),
            "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version,
        },
        "reason": "FailedScheduling",
        "message": message,
        "type": "Warning",
        "source": {"component": SCHEDULER_NAME},
        "reportingComponent": SCHEDULER_NAME,
        "reportingInstance": SCHEDULER_NAME,
        "action": "Scheduling",
        "count": count,
        "firstTimestamp": first,
        "lastTimestamp": now,
    }))
    .map_err(kube::Error::SerdeError)?;
    api.create(&PostParams::default(), &ev).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_unbound_live_pods_for_the_default_scheduler_are_pending() {
        let p = |v: serde_json::Value| -> Pod { serde_json::from_value(v).unwrap() };
        assert!(is_pending_for_us(&p(json!({"spec": {"containers": []}}))));
        assert!(is_pending_for_us(&p(json!({"spec": {"containers": [], "schedulerName": "default-scheduler"}}))));
        assert!(!is_pending_for_us(&p(json!({"spec": {"containers": [], "schedulerName": "other"}}))));
        assert!(!is_pending_for_us(&p(json!({"spec": {"containers": [], "nodeName": "n"}}))));
        assert!(!is_pending_for_us(&p(
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"containers": []}})
        )));
        assert!(!is_pending_for_us(&p(json!({"spec": {"containers": []}, "status": {"phase": "Failed"}}))));
    }
}
