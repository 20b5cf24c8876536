//! The EndpointSlice controller: the slices of every Service that has a selector.
//!
//! A `kube-runtime` [`Controller`] over Services that also watches the slices it owns and all
//! pods (a pod event requeues the Services in its namespace whose selector matches it, looked
//! up in the controller's own Service cache). `reconcile` lists the Service's pods and its
//! slices from the server, runs the pure [`plan::desired`] and [`plan::diff`] and executes the
//! writes. Slices carry an owner reference to their Service, so the garbage collector removes
//! them with it. A pod whose labels stop matching is dropped at the Service's next resync
//! ([`RESYNC`]), since its event no longer names the Service. Selectorless Services (such as
//! `default/kubernetes`) are the mirroring controller's ([`mirror`]).

pub mod mirror;
pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::Instrument;

use crate::Error;

/// How often every Service is looked at again without an event.
pub const RESYNC: Duration = Duration::from_secs(30);

struct Ctx {
    client: Client,
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the EndpointSlice controller until its watch streams end.
pub async fn run(client: Client) -> Result<(), Error> {
    let services: Api<Service> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client, failures: Mutex::new(HashMap::new()) });
    let controller = Controller::new(services, watcher::Config::default());
    let cache = controller.store();
    let managed = watcher::Config::default().labels(&format!("{}={}", plan::MANAGED_BY, plan::CONTROLLER));
    controller
        // Full-object watches mapped through the controller reference (`owns` would use a
        // metadata-only watch, which not every server serves).
        .watches(slices, managed, |s: EndpointSlice| owner_ref(&s.metadata, "Service"))
        .watches(pods, watcher::Config::default(), move |pod: Pod| {
            let ns = pod.metadata.namespace.clone();
            cache
                .state()
                .into_iter()
                .filter(|s| s.metadata.namespace == ns)
                .filter(|s| {
                    let sel = s.spec.as_ref().and_then(|x| x.selector.clone()).unwrap_or_default();
                    plan::selects(&sel, pod.metadata.labels.as_ref())
                })
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "endpointslice controller");
            }
        })
        .await;
    Ok(())
}

/// The object named by `meta`'s controller reference, if it is of kind `kind` (v1).
pub(crate) fn owner_ref<K>(meta: &kube::api::ObjectMeta, kind: &str) -> Option<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()>,
{
    let o = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true) && o.kind == kind)?;
    Some(ObjectRef::new(&o.name).within(meta.namespace.as_deref()?))
}

/// The owner reference of a Service's slices.
pub fn owner(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.name_any(),
        uid: svc.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Executes a slice plan in `ns`; returns how many writes were made.
pub async fn execute(client: &Client, ns: &str, ops: Vec<plan::Op>) -> Result<usize, Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let n = ops.len();
    for op in ops {
        match op {
            plan::Op::Create(s) => {
                api.create(&PostParams::default(), &s).await?;
            }
            plan::Op::Update(s) => {
                api.replace(&s.name_any(), &PostParams::default(), &s).await?;
            }
            plan::Op::Delete(name) => match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    Ok(n)
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let span = tracing::debug_span!("endpointslice sync", namespace = ns, service = name);
    async move {
        let selector = svc.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        if selector.is_empty() || svc.metadata.deletion_timestamp.is_some() {
            return Ok(Action::requeue(RESYNC));
        }
        let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let pods = pods.list(&ListParams::default().labels(&labels.join(","))).await?.items;
        let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
        let sel = format!("{}={name},{}={}", plan::SERVICE_NAME, plan::MANAGED_BY, plan::CONTROLLER);
        let existing = slices.list(&ListParams::default().labels(&sel)).await?.items;
        let meta = plan::Meta {
            namespace: ns.clone(),
            prefix: format!("{name}-"),
            labels: plan::labels(&svc, plan::CONTROLLER),
            owner: owner(&svc),
        };
        let ops = plan::diff(&meta, plan::desired(&svc, &pods), &existing);
        let n = execute(&ctx.client, &ns, ops).await?;
        if n > 0 {
            tracing::debug!(writes = n, "endpointslices written");
        }
        ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&format!("{ns}/{name}"));
        Ok(Action::requeue(RESYNC))
    }
    .instrument(span)
    .await
}

fn error_policy(svc: Arc<Service>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
    backoff(&ctx.failures, key, err, "endpointslice sync")
}

/// Exponential backoff per key: 100 ms doubling up to 30 s (conflicts are the common case and
/// resolve on the next pass).
pub(crate) fn backoff(failures: &Mutex<HashMap<String, u32>>, key: String, err: &Error, what: &str) -> Action {
    let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = f.entry(key.clone()).or_default();
    *n = n.saturating_add(1);
    let delay = Duration::from_millis(100).saturating_mul(1 << (*n).min(9)).min(Duration::from_secs(30));
    tracing::debug!(object = key, error = %err, retry_in = ?delay, "{what} failed");
    Action::requeue(delay)
}
