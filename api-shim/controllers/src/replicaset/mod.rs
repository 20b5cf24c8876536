//! The ReplicaSet and ReplicationController controller: keep N pods matching a selector.
//!
//! One reconciler serves both kinds (a [`SetKind`] converts either into the planner's
//! [`plan::Set`]; an RC's selector is a plain map, an RS's a `LabelSelector`). It runs on a
//! `kube-runtime` [`Controller`] over the sets that also watches pods: a pod's change wakes its
//! controller owner, or, for an orphan, every set in its namespace whose selector matches it (so
//! it can be adopted). Each sync lists the namespace's pods from the server: a reflector cache
//! fed by a second watch lags the trigger, and a sync that reads the older state writes a stale
//! status and then sleeps until the resync (seen in the rollout tests). The
//! [`plan::Expectations`] recorded after each create/delete still guard against a list that does
//! not yet show them. Every set is resynced periodically; failures back off exponentially and
//! are reported as Events on the set, so nothing is dropped after a log line.

pub mod plan;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use keelson_apimachinery::selectors::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::Error;
use crate::events;
use plan::Expectations;

/// How often every set is looked at again even without a change.
pub const RESYNC: Duration = Duration::from_secs(60);

/// What distinguishes a ReplicaSet from a ReplicationController for the reconciler.
pub trait SetKind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The `--controllers` name (also the Event source).
    const CONTROLLER: &'static str;
    fn replicas(&self) -> i32;
    fn selector(&self) -> Result<LabelSelector, String>;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn min_ready_seconds(&self) -> i32;
}

impl SetKind for ReplicaSet {
    const CONTROLLER: &'static str = "replicaset-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn selector(&self) -> Result<LabelSelector, String> {
        let sel = self.spec.as_ref().map(|s| &s.selector);
        let v = serde_json::to_value(sel).map_err(|e| e.to_string())?;
        LabelSelector::from_object(&v).map_err(|e| e.to_string())
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
    }
}

impl SetKind for ReplicationController {
    const CONTROLLER: &'static str = "replication-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn selector(&self) -> Result<LabelSelector, String> {
        let map = self.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        let v = json!({"matchLabels": map});
        LabelSelector::from_object(&v).map_err(|e| e.to_string())
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
    }
}

struct Ctx {
    client: Client,
    expectations: Mutex<HashMap<String, Expectations>>,
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the controller for kind `K` until its watch stream ends.
pub async fn run<K: SetKind>(client: Client) -> Result<(), Error> {
    let pod_api: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        expectations: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
    });
    let controller = Controller::new(Api::<K>::all(client), watcher::Config::default());
    let sets = controller.store();
    controller
        .watches(pod_api, watcher::Config::default(), move |pod: Pod| sets_for_pod::<K>(&sets, &pod))
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, controller = K::CONTROLLER, "reconcile");
            }
        })
        .await;
    Ok(())
}

/// The sets a pod change concerns: its controller owner if it is of kind `K`, else (an orphan)
/// every set of its namespace whose selector matches it.
fn sets_for_pod<K: SetKind>(sets: &Store<K>, pod: &Pod) -> Vec<ObjectRef<K>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(owner) = pod.owner_references().iter().find(|r| r.controller == Some(true)) {
        if owner.kind == K::kind(&()) {
            return vec![ObjectRef::new(&owner.name).within(&ns)];
        }
        return Vec::new();
    }
    let labels = pod.labels();
    sets.state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
        .filter(|s| s.selector().is_ok_and(|sel| !sel.is_empty() && sel.matches(labels)))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

fn time(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<DateTime<Utc>> {
    t.and_then(|t| t.0.to_string().parse().ok())
}

/// The planner's view of a pod.
pub fn pod_view(p: &Pod) -> plan::Pod {
    let status = p.status.as_ref();
    let ready_since = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .map(|c| time(c.last_transition_time.as_ref()).unwrap_or(DateTime::<Utc>::MIN_UTC));
    plan::Pod {
        name: p.name_any(),
        uid: p.uid().unwrap_or_default(),
        labels: p.labels().clone(),
        controller_uid: p.owner_references().iter().find(|r| r.controller == Some(true)).map(|r| r.uid.clone()),
        deleting: p.metadata.deletion_timestamp.is_some(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into()),
        node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
        ready_since,
        restarts: status
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0),
        created: time(p.metadata.creation_timestamp.as_ref()),
    }
}

fn owner_ref<K: SetKind>(set: &K) -> Value {
    json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "name": set.name_any(),
           "uid": set.uid().unwrap_or_default(), "controller": true, "blockOwnerDeletion": true})
}

/// A pod from `set`'s template: generateName `<set>-`, the template's labels and annotations,
/// a controller reference to the set.
pub fn pod_from_template<K: SetKind>(set: &K) -> Result<Value, String> {
    let t = set.template().ok_or("the set has no pod template")?;
    let meta = t.metadata.clone().unwrap_or_default();
    Ok(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-", set.name_any()),
            "namespace": set.namespace(),
            "labels": meta.labels.unwrap_or_default(),
            "annotations": meta.annotations.unwrap_or_default(),
            "finalizers": meta.finalizers.unwrap_or_default(),
            "ownerReferences": [owner_ref(set)],
        },
        "spec": serde_json::to_value(&t.spec).map_err(|e| e.to_string())?,
    }))
}

#[tracing::instrument(skip_all, fields(controller = K::CONTROLLER, set = %set.name_any(), ns = set.namespace()))]
async fn reconcile<K: SetKind>(set: Arc<K>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = set.namespace().unwrap_or_default();
    let uid = set.uid().unwrap_or_default();
    let selector = match set.selector() {
        Ok(s) => s,
        Err(e) => {
            // Nothing to act on until the object changes: say so once, do not hot-loop.
            events::warn(&ctx.client, set.as_ref(), K::CONTROLLER, "InvalidSelector", &e).await;
            return Ok(Action::requeue(RESYNC));
        }
    };
    let now = Utc::now();
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Vec<Pod> = pod_api.list(&ListParams::default()).await?.items;
    let views: Vec<plan::Pod> = pods.iter().map(pod_view).collect();
    let met = {
        let mut exp = ctx.expectations.lock().unwrap_or_else(|p| p.into_inner());
        let e = exp.entry(uid.clone()).or_default();
        let met = e.satisfied(&views, now);
        if met {
            *e = Expectations::default();
        }
        met
    };
    let view = plan::Set {
        uid: uid.clone(),
        generation: set.meta().generation.unwrap_or(0),
        replicas: usize::try_from(set.replicas()).unwrap_or(0),
        selector,
        template_labels: set
            .template()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
        min_ready_seconds: i64::from(set.min_ready_seconds()),
        deleting: set.meta().deletion_timestamp.is_some(),
    };
    let p = plan::plan(&view, &views, met, now);
    let by_name: HashMap<String, &Pod> = pods.iter().map(|p| (p.name_any(), p)).collect();

    for name in &p.adopt {
        let Some(pod) = by_name.get(name) else { continue };
        let mut refs: Vec<Value> = pod.owner_references().iter().filter_map(|r| serde_json::to_value(r).ok()).collect();
        refs.push(owner_ref(set.as_ref()));
        let patch =
            json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod.resource_version(), "uid": pod.uid()}});
        ignore_gone(pod_api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await)?;
    }
    for name in &p.release {
        let Some(pod) = by_name.get(name) else { continue };
        let refs: Vec<Value> = pod
            .owner_references()
            .iter()
            .filter(|r| r.uid != uid)
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect();
        let patch =
            json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod.resource_version(), "uid": pod.uid()}});
        ignore_gone(pod_api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await)?;
    }

    if p.create > 0 {
        let body: Pod =
            match pod_from_template(set.as_ref()).and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string())) {
                Ok(b) => b,
                Err(e) => {
                    events::warn(&ctx.client, set.as_ref(), K::CONTROLLER, "FailedCreate", &e).await;
                    return Ok(Action::requeue(RESYNC));
                }
            };
        let pp = PostParams::default();
        let mut created = Vec::new();
        let mut failure = None;
        for batch in plan::slow_start_batches(p.create) {
            let results = futures::future::join_all((0..batch).map(|_| pod_api.create(&pp, &body))).await;
            for r in results {
                match r {
                    Ok(pod) => created.push(pod.name_any()),
                    Err(e) => failure = Some(e),
                }
            }
            if failure.is_some() {
                break;
            }
        }
        tracing::info!(created = created.len(), wanted = p.create, "pods created");
        expect(&ctx, &uid, now, created, Vec::new());
        if let Some(e) = failure {
            let msg = format!("Error creating: {e}");
            events::warn(&ctx.client, set.as_ref(), K::CONTROLLER, "FailedCreate", &msg).await;
            return Err(e.into());
        }
    }
    if !p.delete.is_empty() {
        let results = futures::future::join_all(p.delete.iter().map(|name| {
            let dp = DeleteParams {
                preconditions: by_name.get(name).map(|pod| Preconditions { uid: pod.uid(), resource_version: None }),
                ..Default::default()
            };
            let api = pod_api.clone();
            async move { (name.clone(), api.delete(name, &dp).await) }
        }))
        .await;
        let mut deleted = Vec::new();
        let mut failure = None;
        for (name, r) in results {
            match ignore_gone(r.map(|_| ())) {
                Ok(()) => deleted.push(name),
                Err(e) => failure = Some(e),
            }
        }
        tracing::info!(deleted = deleted.len(), "surplus pods deleted");
        expect(&ctx, &uid, now, Vec::new(), deleted);
        if let Some(e) = failure {
            let msg = format!("Error deleting: {e}");
            events::warn(&ctx.client, set.as_ref(), K::CONTROLLER, "FailedDelete", &msg).await;
            return Err(e.into());
        }
    }

    let status = json!({"status": {
        "replicas": p.status.replicas,
        "fullyLabeledReplicas": p.status.fully_labeled_replicas,
        "readyReplicas": p.status.ready_replicas,
        "availableReplicas": p.status.available_replicas,
        "observedGeneration": p.status.observed_generation,
    }});
    let current = serde_json::to_value(set.as_ref()).ok().and_then(|v| v.get("status").cloned()).unwrap_or(Value::Null);
    if !status_matches(&current, &status["status"]) {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        ignore_gone(
            api.patch_status(&set.name_any(), &PatchParams::default(), &Patch::Merge(status)).await.map(|_| ()),
        )?;
    }
    ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
    let next = p
        .recheck_at
        .and_then(|at| (at - now).to_std().ok())
        .map(|d| d + Duration::from_millis(100))
        .unwrap_or(RESYNC)
        .min(RESYNC);
    Ok(Action::requeue(next))
}

/// Zero counts are omitted in stored status; compare treating missing as zero.
fn status_matches(current: &Value, want: &Value) -> bool {
    let Some(w) = want.as_object() else { return false };
    w.iter().all(|(k, v)| current.get(k).unwrap_or(&json!(0)) == v)
}

fn expect(ctx: &Ctx, uid: &str, now: DateTime<Utc>, created: Vec<String>, deleted: Vec<String>) {
    if created.is_empty() && deleted.is_empty() {
        return;
    }
    let mut exp = ctx.expectations.lock().unwrap_or_else(|p| p.into_inner());
    let e = exp.entry(uid.to_string()).or_default();
    e.created.extend(created);
    e.deleted.extend(deleted);
    e.since.get_or_insert(now);
}

fn ignore_gone<T: Default>(r: Result<T, kube::Error>) -> Result<T, kube::Error> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(T::default()),
        other => other,
    }
}

fn error_policy<K: SetKind>(set: Arc<K>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let uid = set.uid().unwrap_or_default();
    let mut f = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = f.entry(uid).or_default();
    *n = n.saturating_add(1);
    let delay = Duration::from_millis(200).saturating_mul(1 << (*n).min(8)).min(Duration::from_secs(60));
    tracing::warn!(controller = K::CONTROLLER, set = %set.name_any(), error = %err, retry_in = ?delay, "sync failed");
    Action::requeue(delay)
}
