//! The root CA publisher (`root-ca-cert-publisher` upstream): a `kube-root-ca.crt` ConfigMap
//! with the cluster CA in every namespace, so pods can verify the API server at
//! `kubernetes.default.svc` (projected service-account volumes mount it).
//!
//! The CA comes from whoever starts the controllers ([`crate::Opts::root_ca`]; keelson-apiserver
//! passes its PKI's CA). A `kube-runtime` [`Controller`] over Namespaces that also watches the
//! ConfigMaps of that name, so an edit or a deletion is undone at once. The decision is the
//! pure [`plan`]. Without a CA the controller idles (it has nothing to publish).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::Instrument;

use crate::Error;
use crate::serviceaccount::{RESYNC, terminating};

/// The ConfigMap's name.
pub const NAME: &str = "kube-root-ca.crt";
/// The key holding the PEM bundle.
pub const KEY: &str = "ca.crt";
const DESCRIPTION: &str = "kubernetes.io/description";
const DESCRIPTION_TEXT: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// One write of the publisher.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Create(ConfigMap),
    /// Replace the existing ConfigMap (resourceVersion kept).
    Update(ConfigMap),
}

/// What `ns` needs so that its `kube-root-ca.crt` holds exactly `ca` under `ca.crt`.
pub fn plan(ns: &Namespace, current: Option<&ConfigMap>, ca: &str) -> Option<Op> {
    if terminating(ns) {
        return None;
    }
    let data = BTreeMap::from([(KEY.to_string(), ca.to_string())]);
    match current {
        Some(cm) => {
            let annotated = cm.annotations().get(DESCRIPTION).is_some_and(|d| d == DESCRIPTION_TEXT);
            if cm.data.as_ref() == Some(&data) && annotated && cm.binary_data.is_none() {
                return None;
            }
            let mut n = cm.clone();
            n.data = Some(data);
            n.binary_data = None;
            n.annotations_mut().insert(DESCRIPTION.into(), DESCRIPTION_TEXT.into());
            Some(Op::Update(n))
        }
        None => {
            let mut cm = ConfigMap { data: Some(data), ..Default::default() };
            cm.metadata.name = Some(NAME.into());
            cm.metadata.namespace = ns.metadata.name.clone();
            cm.annotations_mut().insert(DESCRIPTION.into(), DESCRIPTION_TEXT.into());
            Some(Op::Create(cm))
        }
    }
}

struct Ctx {
    client: Client,
    ca: String,
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the publisher until its watch streams end (forever, idle, without a CA).
pub async fn run(client: Client, ca: Option<String>) -> Result<(), Error> {
    let Some(ca) = ca.filter(|c| !c.trim().is_empty()) else {
        tracing::info!("root-ca-cert-publisher: no cluster CA given; nothing to publish");
        futures::future::pending::<()>().await;
        return Ok(());
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let maps: Api<ConfigMap> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client, ca, failures: Mutex::new(HashMap::new()) });
    Controller::new(namespaces, watcher::Config::default())
        .watches(maps, watcher::Config::default().fields(&format!("metadata.name={NAME}")), |cm: ConfigMap| {
            cm.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns))
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "root-ca-cert-publisher");
            }
        })
        .await;
    Ok(())
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let span = tracing::debug_span!("root-ca-cert-publisher sync", namespace = ns.name_any());
    sync(ns, ctx).instrument(span).await
}

async fn sync(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = ns.name_any();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let current = api.get_opt(NAME).await?;
    let r = match plan(&ns, current.as_ref(), &ctx.ca) {
        Some(Op::Create(cm)) => api.create(&PostParams::default(), &cm).await.map(drop),
        Some(Op::Update(cm)) => api.replace(NAME, &PostParams::default(), &cm).await.map(drop),
        None => Ok(()),
    };
    match r {
        Ok(()) => {}
        Err(kube::Error::Api(s)) if s.code == 403 && terminating(&ns) => {}
        Err(e) => return Err(e.into()),
    }
    ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
    Ok(Action::requeue(RESYNC))
}

fn error_policy(ns: Arc<Namespace>, err: &Error, ctx: Arc<Ctx>) -> Action {
    crate::endpointslice::backoff(&ctx.failures, ns.name_any(), err, "root-ca-cert-publisher sync")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn publishes_and_repairs_the_ca() {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
        let Some(Op::Create(cm)) = plan(&ns, None, "PEM") else { panic!() };
        assert_eq!(cm.data.as_ref().unwrap()[KEY], "PEM");
        assert_eq!(cm.name_any(), NAME);
        assert!(plan(&ns, Some(&cm), "PEM").is_none());
        let mut edited = cm.clone();
        edited.data = Some(BTreeMap::from([(KEY.into(), "x".into())]));
        assert_eq!(plan(&ns, Some(&edited), "PEM"), Some(Op::Update(cm.clone())));
        let gone: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"}}))
                .unwrap();
        assert!(plan(&gone, None, "PEM").is_none());
    }
}
