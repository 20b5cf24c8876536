//! The Deployment controller: rollouts over ReplicaSets.
//!
//! A `kube-runtime` [`Controller`] over Deployments that owns ReplicaSets, so a change of any
//! owned set (its pods becoming available) wakes the deployment. Each sync lists the
//! deployment's sets straight from the server (a fresh read: a stale cache could create a second
//! "new" set), runs the pure [`plan::plan`] and executes the step; the next step follows when the
//! sets change, on a short requeue while a rollout is under way, and on a periodic resync.
//! Failures back off exponentially and are reported as Events.

pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::Error;
use crate::events;
use keelson_apimachinery::selectors::LabelSelector;
use plan::{Condition, Counts, IntOrPercent, Strategy};

const COMPONENT: &str = "deployment-controller";
/// How often every deployment is looked at again even without a change.
pub const RESYNC: Duration = Duration::from_secs(60);
/// While a rollout is under way (and for the progress deadline), look again this soon.
const ROLLING: Duration = Duration::from_secs(2);
/// The annotation kubectl's `--record` and users set; shown by `rollout history`.
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

struct Ctx {
    client: Client,
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the deployment controller until its watch stream ends.
pub async fn run(client: Client) -> Result<(), Error> {
    let ctx = Arc::new(Ctx { client: client.clone(), failures: Mutex::new(HashMap::new()) });
    Controller::new(Api::<Deployment>::all(client.clone()), watcher::Config::default())
        .owns(Api::<ReplicaSet>::all(client), watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "deployment controller");
            }
        })
        .await;
    Ok(())
}

fn time(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<DateTime<Utc>> {
    t.and_then(|t| t.0.to_string().parse().ok())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn view(d: &Deployment, hash: String, old_pods: i32) -> plan::Deployment {
    let spec = d.spec.clone().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    let strategy = match spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) {
        Some("Recreate") => Strategy::Recreate,
        _ => {
            let ru = spec.strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
            let v = |x: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>, dflt: &str| {
                x.and_then(|x| serde_json::to_value(x).ok())
                    .map_or(IntOrPercent::parse(&json!(dflt)), |v| IntOrPercent::parse(&v))
            };
            Strategy::RollingUpdate {
                max_surge: v(ru.and_then(|r| r.max_surge.as_ref()), "25%"),
                max_unavailable: v(ru.and_then(|r| r.max_unavailable.as_ref()), "25%"),
            }
        }
    };
    let conditions = status
        .conditions
        .iter()
        .flatten()
        .map(|c| {
            let tt = time(c.last_transition_time.as_ref()).unwrap_or(DateTime::<Utc>::MIN_UTC);
            Condition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone().unwrap_or_default(),
                message: c.message.clone().unwrap_or_default(),
                last_update: time(c.last_update_time.as_ref()).unwrap_or(tt),
                last_transition: tt,
            }
        })
        .collect();
    plan::Deployment {
        name: d.name_any(),
        generation: d.metadata.generation.unwrap_or(0),
        replicas: spec.replicas.unwrap_or(1),
        paused: spec.paused.unwrap_or(false),
        strategy,
        min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
        revision_history_limit: spec.revision_history_limit,
        progress_deadline_seconds: spec.progress_deadline_seconds,
        hash,
        conditions,
        last: Counts {
            replicas: status.replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
        },
        old_pods,
        deleting: d.metadata.deletion_timestamp.is_some(),
    }
}

fn rs_view(rs: &ReplicaSet, template: &Value) -> plan::Rs {
    let t = rs.spec.as_ref().and_then(|s| s.template.as_ref()).and_then(|t| serde_json::to_value(t).ok());
    let status = rs.status.clone().unwrap_or_default();
    let ann = rs.annotations();
    plan::Rs {
        name: rs.name_any(),
        current: t.is_some_and(|t| plan::without_hash(&t) == *template),
        replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        status_replicas: status.replicas,
        ready: status.ready_replicas.unwrap_or(0),
        available: status.available_replicas.unwrap_or(0),
        revision: ann.get(plan::REVISION).and_then(|r| r.parse().ok()),
        revision_history: ann.get(plan::REVISION_HISTORY).cloned(),
        created: time(rs.metadata.creation_timestamp.as_ref()),
        deleting: rs.metadata.deletion_timestamp.is_some(),
    }
}

fn controller_uid(rs: &ReplicaSet) -> Option<String> {
    rs.owner_references().iter().find(|r| r.controller == Some(true)).map(|r| r.uid.clone())
}

/// Adopts matching orphan sets and releases owned ones that stopped matching, then returns the
/// sets the deployment controls; `None` (after an Event) when its selector cannot be read.
async fn owned_sets(
    ctx: &Ctx,
    d: &Deployment,
    rs_api: &Api<ReplicaSet>,
    all: Vec<ReplicaSet>,
) -> Result<Option<Vec<ReplicaSet>>, Error> {
    let uid = d.uid().unwrap_or_default();
    let sel = serde_json::to_value(d.spec.as_ref().map(|s| &s.selector)).unwrap_or(Value::Null);
    let selector = match LabelSelector::from_object(&sel) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => {
            events::warn(&ctx.client, d, COMPONENT, "InvalidSelector", "empty selector").await;
            return Ok(None);
        }
        Err(e) => {
            events::warn(&ctx.client, d, COMPONENT, "InvalidSelector", &e.to_string()).await;
            return Ok(None);
        }
    };
    let candidates: Vec<plan::Candidate> = all
        .iter()
        .map(|rs| plan::Candidate {
            name: rs.name_any(),
            controller_uid: controller_uid(rs),
            matches: selector.matches(rs.labels()),
            deleting: rs.metadata.deletion_timestamp.is_some(),
        })
        .collect();
    let (adopt, release) = plan::ownership(&uid, d.metadata.deletion_timestamp.is_some(), &candidates);
    let mut owned = Vec::new();
    for mut rs in all {
        let name = rs.name_any();
        let mut refs: Vec<Value> = rs.owner_references().iter().filter_map(|r| serde_json::to_value(r).ok()).collect();
        let change = if adopt.contains(&name) {
            refs.push(json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": d.name_any(), "uid": uid,
                             "controller": true, "blockOwnerDeletion": true}));
            true
        } else if release.contains(&name) {
            refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
            false
        } else {
            if controller_uid(&rs).as_deref() == Some(uid.as_str()) {
                owned.push(rs);
            }
            continue;
        };
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.resource_version(),
                                        "uid": rs.uid()}});
        rs = rs_api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        if change {
            tracing::info!(rs = name, "adopted replica set");
            owned.push(rs);
        }
    }
    Ok(Some(owned))
}

fn max_replicas(d: &plan::Deployment) -> i32 {
    d.replicas + plan::fenceposts(&d.strategy, d.replicas).0
}

#[tracing::instrument(skip_all, fields(deployment = %d.name_any(), ns = d.namespace()))]
async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = d.namespace().unwrap_or_default();
    let uid = d.uid().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let template = plan::normalize(&serde_json::to_value(&spec.template).unwrap_or(Value::Null));
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = plan::template_hash(&template, collision);
    let now = Utc::now();

    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let all = rs_api.list(&ListParams::default()).await?.items;
    let owned = match owned_sets(&ctx, &d, &rs_api, all).await? {
        Some(o) => o,
        None => return Ok(Action::requeue(RESYNC)),
    };
    let rss: Vec<plan::Rs> = owned.iter().map(|rs| rs_view(rs, &template)).collect();
    // Recreate starts the new pods only when every old pod is gone, terminating ones included
    // (a set's status no longer counts those), so look at the pods themselves.
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let old_pods = if recreate {
        let old_uids: Vec<String> =
            owned.iter().filter(|rs| !rs_view(rs, &template).current).filter_map(|rs| rs.uid()).collect();
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let n = pods
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| p.owner_references().iter().any(|r| old_uids.contains(&r.uid)))
            .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
            .count();
        i32::try_from(n).unwrap_or(i32::MAX)
    } else {
        0
    };
    let view = view(&d, hash.clone(), old_pods);
    let p = plan::plan(&view, &rss, now);
    let desired = view.replicas.to_string();
    let max = max_replicas(&view).to_string();
    let change_cause = d.annotations().get(CHANGE_CAUSE).cloned();

    for (name, revision, history) in &p.set_revision {
        let mut ann = json!({plan::REVISION: revision.to_string()});
        if let Some(h) = history {
            ann[plan::REVISION_HISTORY] = json!(h);
        }
        if let Some(c) = &change_cause {
            ann[CHANGE_CAUSE] = json!(c);
        }
        rs_api.patch(name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": ann}}))).await?;
    }
    if let Some(new) = &p.create {
        let mut labels: BTreeMap<String, String> =
            spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        labels.insert(plan::HASH_LABEL.into(), hash.clone());
        let mut tpl = serde_json::to_value(&spec.template).unwrap_or(Value::Null);
        tpl["metadata"]["labels"] = json!(labels);
        let mut selector = serde_json::to_value(&spec.selector).unwrap_or(json!({}));
        selector["matchLabels"][plan::HASH_LABEL] = json!(hash);
        let mut ann = json!({plan::REVISION: new.revision.to_string(), plan::DESIRED_REPLICAS: desired,
                             plan::MAX_REPLICAS: max});
        if let Some(c) = &change_cause {
            ann[CHANGE_CAUSE] = json!(c);
        }
        let body = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": new.name, "namespace": ns, "labels": labels, "annotations": ann,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": d.name_any(), "uid": uid,
                                     "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"replicas": new.replicas, "minReadySeconds": spec.min_ready_seconds.unwrap_or(0),
                     "selector": selector, "template": tpl},
        });
        let rs: ReplicaSet = serde_json::from_value(body).map_err(|e| Error::Invalid(e.to_string()))?;
        match rs_api.create(&PostParams::default(), &rs).await {
            Ok(_) => {
                tracing::info!(rs = new.name, replicas = new.replicas, "new replica set");
                events::normal(
                    &ctx.client,
                    d.as_ref(),
                    COMPONENT,
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {} to {}", new.name, new.replicas),
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // A set of that name that is not ours (or has another template): a hash
                // collision. Bump the count so the next sync picks another name.
                let existing = rs_api.get_opt(&new.name).await?;
                let ours = existing.as_ref().is_some_and(|rs| {
                    rs.owner_references().iter().any(|r| r.uid == uid) && rs_view(rs, &template).current
                });
                if !ours {
                    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
                    let patch = json!({"status": {"collisionCount": collision.unwrap_or(0) + 1}});
                    api.patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
                }
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(e) => {
                events::warn(&ctx.client, d.as_ref(), COMPONENT, "FailedCreate", &e.to_string()).await;
                return Err(e.into());
            }
        }
    }
    // The new set's minReadySeconds follows the deployment's (upstream does the same).
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    for rs in owned.iter().filter(|rs| rs_view(rs, &template).current && rs.metadata.deletion_timestamp.is_none()) {
        if rs.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0) != min_ready {
            let patch = json!({"spec": {"minReadySeconds": min_ready}});
            rs_api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
    }
    for (name, replicas) in &p.scale {
        let old = rss.iter().find(|r| &r.name == name).map_or(0, |r| r.replicas);
        let patch = json!({"metadata": {"annotations": {plan::DESIRED_REPLICAS: desired, plan::MAX_REPLICAS: max}},
                           "spec": {"replicas": replicas}});
        rs_api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        let verb = if *replicas > old { "up" } else { "down" };
        let msg = format!("Scaled {verb} replica set {name} from {old} to {replicas}");
        events::normal(&ctx.client, d.as_ref(), COMPONENT, "ScalingReplicaSet", &msg).await;
    }
    for name in &p.delete {
        let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
        match rs_api.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }

    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let revision = p.revision.to_string();
    if d.annotations().get(plan::REVISION) != Some(&revision) && !view.deleting {
        let patch = json!({"metadata": {"annotations": {plan::REVISION: revision}}});
        api.patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    let s = &p.status;
    let conds: Vec<Value> = s
        .conditions
        .iter()
        .map(|c| {
            json!({"type": c.type_, "status": c.status, "reason": c.reason, "message": c.message,
                   "lastUpdateTime": rfc3339(c.last_update), "lastTransitionTime": rfc3339(c.last_transition)})
        })
        .collect();
    let want = json!({
        "observedGeneration": s.observed_generation, "replicas": s.replicas, "updatedReplicas": s.updated_replicas,
        "readyReplicas": s.ready_replicas, "availableReplicas": s.available_replicas,
        "unavailableReplicas": s.unavailable_replicas, "conditions": conds,
    });
    let current = serde_json::to_value(&d.status).unwrap_or(Value::Null);
    let same = want.as_object().is_some_and(|w| {
        w.iter().all(|(k, v)| current.get(k).unwrap_or(&json!(0)) == v || (v == &json!(0) && current.get(k).is_none()))
    });
    if !same {
        api.patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": want}))).await?;
    }
    ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
    let done = s.updated_replicas == view.replicas
        && s.available_replicas == view.replicas
        && s.replicas == view.replicas
        && p.scale.is_empty()
        && p.create.is_none();
    Ok(Action::requeue(if done || view.paused { RESYNC } else { ROLLING }))
}

fn error_policy(d: Arc<Deployment>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let uid = d.uid().unwrap_or_default();
    let mut f = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = f.entry(uid).or_default();
    *n = n.saturating_add(1);
    let delay = Duration::from_millis(200).saturating_mul(1 << (*n).min(8)).min(Duration::from_secs(60));
    tracing::warn!(deployment = %d.name_any(), error = %err, retry_in = ?delay, "sync failed");
    Action::requeue(delay)
}
