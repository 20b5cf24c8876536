//! [`EventSink`] for the API: pod events written as `core/v1` Events (what `kubectl describe pod`
//! lists), with kubelet's series aggregation: a repeat of the same (pod, type, reason, message)
//! bumps `count` and `lastTimestamp` of the existing Event instead of creating a new one.
//!
//! `record` never blocks the worker: events go through a bounded queue to one writer task, and
//! when the queue is full the event is dropped with a warning (kubelet's broadcaster does the
//! same). A write that fails is retried with backoff, so events written while the API was
//! unreachable appear once it is back.

use crate::apiserver::Backoff;
use crate::events::{Event, EventSink};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Event as KubeEvent, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::{HashMap, VecDeque};
use tokio::sync::mpsc;
use tracing::{Instrument, info_span, warn};

/// Events waiting to be written; beyond this they are dropped.
const QUEUE: usize = 1024;

/// The API event recorder.
pub struct ApiEvents {
    tx: mpsc::Sender<Event>,
}

/// The aggregation key of an event.
type Key = (String, &'static str, String, String);

/// An Event already in the API and how often it was seen.
#[derive(Debug, Clone)]
struct Series {
    namespace: String,
    name: String,
    count: i32,
}

/// The new Event object for `ev` about a pod `namespace/name` on `node`. Pure.
pub fn new_event(ev: &Event, node: &str) -> KubeEvent {
    let (ns, pod) = ev.pod.split_once('/').unwrap_or(("default", ev.pod.as_str()));
    let t = crate::pod::status::to_time(ev.time);
    let nanos = ev.time.timestamp_nanos_opt().unwrap_or_default();
    KubeEvent {
        metadata: ObjectMeta {
            name: Some(format!("{pod}.{nanos:x}")),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(ns.to_string()),
            name: Some(pod.to_string()),
            uid: (!ev.uid.is_empty()).then(|| ev.uid.clone()),
            ..Default::default()
        },
        reason: Some(ev.reason.clone()),
        message: Some(ev.message.clone()),
        type_: Some(ev.type_.to_string()),
        source: Some(EventSource { component: Some("kubelet".into()), host: Some(node.to_string()) }),
        first_timestamp: Some(t.clone()),
        last_timestamp: Some(t),
        count: Some(1),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(node.to_string()),
        ..Default::default()
    }
}

/// The patch recording a repeat at `time`. Pure.
pub fn repeat_patch(count: i32, time: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({ "count": count, "lastTimestamp": crate::pod::status::to_time(time) })
}

impl ApiEvents {
    /// Starts the writer task.
    pub fn spawn(client: kube::Client, node: &str) -> ApiEvents {
        let (tx, rx) = mpsc::channel(QUEUE);
        let node = node.to_string();
        tokio::spawn(writer(client, node.clone(), rx).instrument(info_span!("api_events", node = %node)));
        ApiEvents { tx }
    }
}

impl EventSink for ApiEvents {
    fn record(&self, ev: Event) {
        if let Err(e) = self.tx.try_send(ev) {
            warn!(error = %e, "event queue full; event dropped");
        }
    }
}

async fn writer(client: kube::Client, node: String, mut rx: mpsc::Receiver<Event>) {
    let mut series: HashMap<Key, Series> = HashMap::new();
    let mut pending: VecDeque<Event> = VecDeque::new();
    let mut backoff = Backoff::default();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(ev) => pending.push_back(ev),
                None => return,
            }
        }
        while let Ok(ev) = rx.try_recv() {
            if pending.len() < QUEUE {
                pending.push_back(ev);
            }
        }
        while let Some(ev) = pending.front() {
            match write(&client, &node, &mut series, ev).await {
                Ok(()) => {
                    pending.pop_front();
                    backoff.reset();
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    warn!(error = %e, retry_in = ?d, "writing an event failed; retrying");
                    tokio::time::sleep(d).await;
                    break;
                }
            }
        }
    }
}

async fn write(
    client: &kube::Client,
    node: &str,
    series: &mut HashMap<Key, Series>,
    ev: &Event,
) -> Result<(), kube::Error> {
    let key: Key = (ev.uid.clone(), ev.type_, ev.reason.clone(), ev.message.clone());
    if let Some(s) = series.get(&key).cloned() {
        let api: Api<KubeEvent> = Api::namespaced(client.clone(), &s.namespace);
        let patch = repeat_patch(s.count + 1, ev.time);
        match api.patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                if let Some(s) = series.get_mut(&key) {
                    s.count += 1;
                }
                return Ok(());
            }
            // The Event expired or was deleted: start a new series.
            Err(kube::Error::Api(st)) if st.code == 404 => {
                series.remove(&key);
            }
            Err(e) => return Err(e),
        }
    }
    let obj = new_event(ev, node);
    let namespace = obj.metadata.namespace.clone().unwrap_or_default();
    let api: Api<KubeEvent> = Api::namespaced(client.clone(), &namespace);
    let created = match api.create(&PostParams::default(), &obj).await {
        Ok(c) => c,
        // The pod's namespace is gone: nothing to attach the event to.
        Err(kube::Error::Api(st)) if st.code == 404 || st.code == 409 => return Ok(()),
        Err(e) => return Err(e),
    };
    if series.len() > 4096 {
        series.clear();
    }
    series.insert(key, Series { namespace, name: created.metadata.name.unwrap_or_default(), count: 1 });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn event_object_names_the_pod_and_the_node() {
        let ev = Event {
            time: Utc::now(),
            type_: crate::events::WARNING,
            pod: "team-a/web".into(),
            uid: "u1".into(),
            reason: "BackOff".into(),
            message: "Back-off restarting failed container".into(),
        };
        let e = new_event(&ev, "node1");
        assert_eq!(e.metadata.namespace.as_deref(), Some("team-a"));
        assert!(e.metadata.name.as_deref().unwrap().starts_with("web."));
        let io = &e.involved_object;
        assert_eq!((io.kind.as_deref(), io.name.as_deref(), io.uid.as_deref()), (Some("Pod"), Some("web"), Some("u1")));
        assert_eq!(e.source.unwrap().host.as_deref(), Some("node1"));
        assert_eq!((e.count, e.type_.as_deref()), (Some(1), Some("Warning")));
        let p = repeat_patch(3, ev.time);
        assert_eq!(p["count"], 3);
        assert!(p["lastTimestamp"].is_string());
    }
}
