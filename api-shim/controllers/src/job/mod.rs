//! The Job controller: runs a Job's pods to completion (batch/v1 Job).
//!
//! A `kube-runtime` [`Controller`] over Jobs that owns their pods. `reconcile` lists the Job's
//! pods (by its `batch.kubernetes.io/controller-uid` label, keeping only those it controls),
//! runs the pure [`plan::plan`] and executes it in a crash-safe order: the status recording
//! newly finished pods, the removal of their tracking finalizers, pod deletions and creations,
//! then the final status. Every step can be repeated, so a failure anywhere just backs off and
//! the next pass resumes from what is stored. Backoff after pod failures, deadlines and TTLs are
//! requeues at the time they fall due.

pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::Instrument;

use crate::Error;

pub use plan::Opts;

/// How often every Job is looked at again without an event.
const RESYNC: Duration = Duration::from_secs(60);

struct Ctx {
    client: Client,
    opts: Opts,
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the Job controller until its watch streams end.
pub async fn run(client: Client, opts: Opts) -> Result<(), Error> {
    let jobs: Api<Job> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client, opts, failures: Mutex::new(HashMap::new()) });
    Controller::new(jobs, watcher::Config::default())
        // A full-object watch mapped through the controller reference (`owns` would use a
        // metadata-only watch, which not every server serves).
        .watches(pods, watcher::Config::default().labels("batch.kubernetes.io/controller-uid"), |p: Pod| {
            crate::endpointslice::owner_ref(&p.metadata, "Job")
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "job controller");
            }
        })
        .await;
    Ok(())
}

async fn write_status(api: &Api<Job>, name: &str, status: &JobStatus) -> Result<(), Error> {
    let patch = json!({"status": status});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let span = tracing::debug_span!("job sync", namespace = job.namespace(), job = job.name_any());
    sync(job, ctx).instrument(span).await
}

async fn sync(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    if job.metadata.deletion_timestamp.is_some() {
        // Let the pods go: their finalizers would otherwise hold the cascade.
        release_all(&ctx.client, &ns, &uid).await?;
        return Ok(Action::await_change());
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let sel = format!("batch.kubernetes.io/controller-uid={uid}");
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&sel))
        .await?
        .items
        .into_iter()
        .filter(|p| p.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == uid))
        .collect();
    let now = k8s_openapi::jiff::Timestamp::now();
    let p = plan::plan(&job, &pods, now, &ctx.opts);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(s) = &p.uncounted {
        write_status(&jobs, &name, s).await?;
    }
    for pod in &p.release {
        release(&pods_api, pod).await?;
    }
    for pod in &p.delete {
        match pods_api.delete(pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if job.status.as_ref() != Some(&p.status) {
        write_status(&jobs, &name, &p.status).await?;
    }
    for pod in &p.create {
        pods_api.create(&PostParams::default(), pod).await?;
    }
    if p.delete_job {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(kube::api::Preconditions { uid: Some(uid.clone()), resource_version: None }),
            ..Default::default()
        };
        match jobs.delete(&name, &dp).await {
            Ok(_) => tracing::info!(namespace = ns, job = name, "finished job deleted after its TTL"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&format!("{ns}/{name}"));
    Ok(Action::requeue(p.requeue.map_or(RESYNC, |d| d.min(RESYNC) + Duration::from_millis(50))))
}

/// Removes the tracking finalizer from one pod (a no-op when it is gone).
async fn release(api: &Api<Pod>, name: &str) -> Result<(), Error> {
    let Some(pod) = api.get_opt(name).await? else { return Ok(()) };
    let keep: Vec<String> = pod.finalizers().iter().filter(|f| *f != plan::TRACKING).cloned().collect();
    if keep.len() == pod.finalizers().len() {
        return Ok(());
    }
    // A JSON merge patch replaces the list; the resourceVersion makes a concurrent edit conflict.
    let patch = json!({"metadata": {"finalizers": keep, "resourceVersion": pod.resource_version()}});
    match api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn release_all(client: &Client, ns: &str, uid: &str) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let sel = format!("batch.kubernetes.io/controller-uid={uid}");
    for p in api.list(&ListParams::default().labels(&sel)).await?.items {
        if p.finalizers().iter().any(|f| f == plan::TRACKING) {
            release(&api, &p.name_any()).await?;
        }
    }
    Ok(())
}

fn error_policy(job: Arc<Job>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
    crate::endpointslice::backoff(&ctx.failures, key, err, "job sync")
}
