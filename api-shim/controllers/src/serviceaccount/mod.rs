//! The ServiceAccount controller: a `default` ServiceAccount in every namespace.
//!
//! Pods that name no ServiceAccount run as `default`, so every live namespace must have one.
//! A `kube-runtime` [`Controller`] over Namespaces that also watches ServiceAccounts named
//! `default` (a deletion requeues the namespace, so the account comes back at once). The
//! decision is the pure [`plan`]; the reconciler creates what it returns. Terminating
//! namespaces get nothing (the namespace controller is emptying them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::Instrument;

use crate::Error;

/// The ServiceAccounts every namespace has.
pub const DEFAULT: &str = "default";
/// How often every namespace is looked at again without an event.
pub const RESYNC: Duration = Duration::from_secs(300);

/// True when a namespace is being deleted (nothing new may be created in it).
pub fn terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// The ServiceAccount to create in `ns`, if any: `default`, when the namespace is live and
/// `exists` says it has none.
pub fn plan(ns: &Namespace, exists: bool) -> Option<ServiceAccount> {
    if terminating(ns) || exists {
        return None;
    }
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some(DEFAULT.into());
    sa.metadata.namespace = ns.metadata.name.clone();
    Some(sa)
}

struct Ctx {
    client: Client,
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the ServiceAccount controller until its watch streams end.
pub async fn run(client: Client) -> Result<(), Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client, failures: Mutex::new(HashMap::new()) });
    Controller::new(namespaces, watcher::Config::default())
        .watches(
            accounts,
            watcher::Config::default().fields(&format!("metadata.name={DEFAULT}")),
            |sa: ServiceAccount| sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "serviceaccount controller");
            }
        })
        .await;
    Ok(())
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let span = tracing::debug_span!("serviceaccount sync", namespace = ns.name_any());
    sync(ns, ctx).instrument(span).await
}

async fn sync(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = ns.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    let exists = api.get_opt(DEFAULT).await?.is_some();
    if let Some(sa) = plan(&ns, exists) {
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::debug!(namespace = name, "default serviceaccount created"),
            // Raced with another writer, or the namespace started terminating: both fine.
            Err(kube::Error::Api(s)) if s.code == 409 || (s.code == 403 && terminating(&ns)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
    Ok(Action::requeue(RESYNC))
}

fn error_policy(ns: Arc<Namespace>, err: &Error, ctx: Arc<Ctx>) -> Action {
    crate::endpointslice::backoff(&ctx.failures, ns.name_any(), err, "serviceaccount sync")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn live_namespaces_without_default_get_one() {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
        let sa = plan(&ns, false).unwrap();
        assert_eq!((sa.name_any(), sa.namespace()), ("default".into(), Some("a".into())));
        assert!(plan(&ns, true).is_none());
        let gone: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "a"}, "status": {"phase": "Terminating"}})).unwrap();
        assert!(plan(&gone, false).is_none());
    }
}
