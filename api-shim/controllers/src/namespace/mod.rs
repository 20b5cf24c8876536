//! The namespace controller: empties a terminating namespace and then finalizes it.
//!
//! A `kube-runtime` [`Controller`] over Namespaces; `reconcile` lists every namespaced kind in
//! the namespace straight from the server (never from a cache, so it cannot finalize on stale
//! data), runs the pure [`plan::plan`] and executes it. While content remains it requeues itself;
//! failures back off exponentially ([`error_policy`]). Because all state is in the namespace and
//! its content, a server or controller restart just resumes the work.

pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::Error;
use crate::kinds::Kinds;
use crate::object::{Obj, Propagation};
use plan::{Condition, Content, Op};

struct Ctx {
    client: Client,
    kinds: Arc<Kinds>,
    /// Consecutive failures per namespace (for the backoff).
    failures: Mutex<HashMap<String, u32>>,
    resync: Duration,
}

/// Runs the namespace controller until its watch stream ends.
pub async fn run(client: Client, kinds: Arc<Kinds>, resync: Duration) -> Result<(), Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client, kinds, failures: Mutex::new(HashMap::new()), resync });
    Controller::new(api, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "namespace controller");
            }
        })
        .await;
    Ok(())
}

fn view(ns: &Namespace) -> plan::Namespace {
    let conditions = ns
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(&s.conditions).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            Condition {
                type_: s("type"),
                status: s("status"),
                reason: s("reason"),
                message: s("message"),
                last_transition_time: s("lastTransitionTime"),
            }
        })
        .collect();
    plan::Namespace {
        name: ns.name_any(),
        deleting: ns.metadata.deletion_timestamp.is_some(),
        spec_finalizers: ns.spec.as_ref().and_then(|s| s.finalizers.clone()).unwrap_or_default(),
        conditions,
    }
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let view = view(&ns);
    if !view.deleting || !view.spec_finalizers.iter().any(|f| f == plan::KUBERNETES) {
        return Ok(Action::requeue(ctx.resync));
    }
    let mut content = Vec::new();
    for i in ctx.kinds.namespaced() {
        let Some(kind) = ctx.kinds.get(i) else { continue };
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &view.name, &kind.ar);
        let listed = match api.list(&ListParams::default()).await {
            Ok(l) => Ok(l.items.iter().filter_map(|o| Obj::from_meta(i, &o.metadata)).collect()),
            Err(e) => Err(e.to_string()),
        };
        content.push(Content { resource: format!("{}.{}", kind.ar.plural, kind.ar.group), listed });
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ops = plan::plan(&view, &content, &now);
    let mut deleted = 0usize;
    let mut finalized = false;
    for op in ops {
        match op {
            Op::Delete(key) => {
                let Some(kind) = ctx.kinds.get(key.kind) else { continue };
                let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &view.name, &kind.ar);
                let dp = DeleteParams {
                    propagation_policy: Some(Propagation::Background.to_kube()),
                    preconditions: Some(Preconditions { uid: Some(key.uid.clone()), resource_version: None }),
                    ..Default::default()
                };
                match api.delete(&key.name, &dp).await {
                    Ok(_) => deleted += 1,
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Op::SetConditions(conds) => {
                let conds: Vec<Value> = conds
                    .iter()
                    .map(|c| {
                        json!({"type": c.type_, "status": c.status, "reason": c.reason, "message": c.message,
                               "lastTransitionTime": c.last_transition_time})
                    })
                    .collect();
                let api: Api<Namespace> = Api::all(ctx.client.clone());
                let patch = json!({"status": {"conditions": conds}});
                api.patch_status(&view.name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            }
            Op::Finalize { keep } => {
                let api: Api<Namespace> = Api::all(ctx.client.clone());
                // The full object with its resourceVersion: a concurrent change fails the write
                // and the next pass starts over.
                let mut body = (*ns).clone();
                body.spec.get_or_insert_with(Default::default).finalizers = Some(keep);
                api.replace_subresource("finalize", &view.name, &PostParams::default(), &body).await?;
                tracing::info!(namespace = view.name, "namespace finalized");
                finalized = true;
            }
        }
    }
    ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&view.name);
    Ok(if finalized {
        Action::await_change()
    } else if deleted > 0 {
        // Most of what was just deleted is gone already: look again soon.
        Action::requeue(Duration::from_millis(200))
    } else {
        // Waiting for finalizers or graceful pod deletion.
        Action::requeue(Duration::from_secs(1))
    })
}

fn error_policy(ns: Arc<Namespace>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let name = ns.name_any();
    let mut f = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = f.entry(name.clone()).or_default();
    *n = n.saturating_add(1);
    let delay = Duration::from_millis(250).saturating_mul(1 << (*n).min(8)).min(Duration::from_secs(60));
    tracing::warn!(namespace = name, error = %err, retry_in = ?delay, "namespace deletion");
    Action::requeue(delay)
}
