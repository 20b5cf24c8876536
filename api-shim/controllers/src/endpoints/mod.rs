//! The Endpoints controller: the `v1` Endpoints object of every Service with a selector, for
//! clients older than EndpointSlices.
//!
//! A `kube-runtime` [`Controller`] over Services that also watches Endpoints (mapped to the
//! Service of the same name) and pods (mapped to the Services whose selector matches, from the
//! controller's Service cache). `reconcile` lists the pods, computes [`plan::subsets`] and
//! creates or replaces the Endpoints object when it differs. Endpoints have no owner reference
//! upstream, so when a Service is gone this controller deletes its Endpoints itself: the
//! runtime reports a trigger for an object missing from its cache (`ObjectNotFound`) — on the
//! Service's delete event, and for every leftover Endpoints object at start-up and on each
//! Endpoints event — and the object is deleted then. Endpoints with the leader-election
//! annotation are left alone, as upstream does.

pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::Instrument;

use crate::Error;
use crate::endpointslice::{self, plan as slices};

/// Endpoints objects used as leader-election locks by old components carry this annotation.
const LEADER: &str = "control-plane.alpha.kubernetes.io/leader";

struct Ctx {
    client: Client,
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the Endpoints controller until its watch streams end.
pub async fn run(client: Client) -> Result<(), Error> {
    let services: Api<Service> = Api::all(client.clone());
    let endpoints: Api<Endpoints> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client: client.clone(), failures: Mutex::new(HashMap::new()) });
    let controller = Controller::new(services, watcher::Config::default());
    let cache = controller.store();
    controller
        .watches(endpoints, watcher::Config::default(), |e: Endpoints| {
            (!e.annotations().contains_key(LEADER))
                .then(|| ObjectRef::<Service>::new(&e.name_any()).within(&e.namespace().unwrap_or_default()))
        })
        .watches(pods, watcher::Config::default(), move |pod: Pod| {
            let ns = pod.metadata.namespace.clone();
            cache
                .state()
                .into_iter()
                .filter(|s| s.metadata.namespace == ns)
                .filter(|s| {
                    let sel = s.spec.as_ref().and_then(|x| x.selector.clone()).unwrap_or_default();
                    slices::selects(&sel, pod.metadata.labels.as_ref())
                })
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            let client = client.clone();
            async move {
                match r {
                    Err(controller::Error::ObjectNotFound(gone)) => delete_orphan(&client, &gone).await,
                    Err(e) => tracing::debug!(error = %e, "endpoints controller"),
                    Ok(_) => {}
                }
            }
        })
        .await;
    Ok(())
}

/// Deletes the Endpoints object of a Service that no longer exists (a failure is retried at
/// the next Endpoints event or controller restart).
async fn delete_orphan(client: &Client, gone: &ObjectRef<kube::api::DynamicObject>) {
    let Some(ns) = gone.namespace.as_deref() else { return };
    let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    // The cache may lag a fresh create: ask the server before deleting.
    match services.get_opt(&gone.name).await {
        Ok(None) => {}
        Ok(Some(_)) => return,
        Err(e) => {
            tracing::debug!(error = %e, service = gone.name, "endpoints: service lookup");
            return;
        }
    }
    match api.get_opt(&gone.name).await {
        Ok(Some(e)) if !e.annotations().contains_key(LEADER) => {
            let dp = DeleteParams {
                preconditions: e.uid().map(|uid| kube::api::Preconditions { uid: Some(uid), resource_version: None }),
                ..Default::default()
            };
            match api.delete(&gone.name, &dp).await {
                Ok(_) => tracing::debug!(namespace = ns, name = gone.name, "endpoints of a deleted service removed"),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => tracing::warn!(error = %e, name = gone.name, "endpoints: delete"),
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, name = gone.name, "endpoints: get"),
    }
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let span = tracing::debug_span!("endpoints sync", namespace = ns, service = name);
    async move {
        let selector = svc.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        if selector.is_empty() || svc.metadata.deletion_timestamp.is_some() {
            return Ok(Action::requeue(endpointslice::RESYNC));
        }
        let sel: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let pods = pods.list(&ListParams::default().labels(&sel.join(","))).await?.items;
        let subsets = plan::subsets(&svc, &pods);
        let labels = plan::labels(&svc);
        let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
        match api.get_opt(&name).await? {
            Some(cur) => {
                let same = cur.subsets.clone().unwrap_or_default() == subsets
                    && cur.metadata.labels.clone().unwrap_or_default() == labels;
                if !same {
                    let mut n = cur.clone();
                    n.subsets = (!subsets.is_empty()).then_some(subsets);
                    n.metadata.labels = Some(labels);
                    api.replace(&name, &PostParams::default(), &n).await?;
                }
            }
            None => {
                let mut e = Endpoints::default();
                e.metadata.name = Some(name.clone());
                e.metadata.namespace = Some(ns.clone());
                e.metadata.labels = Some(labels);
                e.subsets = (!subsets.is_empty()).then_some(subsets);
                api.create(&PostParams::default(), &e).await?;
            }
        }
        ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&format!("{ns}/{name}"));
        Ok(Action::requeue(endpointslice::RESYNC))
    }
    .instrument(span)
    .await
}

fn error_policy(svc: Arc<Service>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
    endpointslice::backoff(&ctx.failures, key, err, "endpoints sync")
}
