//! The EndpointSlice mirroring controller: slices for Services without a selector.
//!
//! Such Services get their Endpoints from someone else: a user, or the API server itself for
//! `default/kubernetes` (it writes that Endpoints object at start-up with its own address). As
//! upstream's `endpointslicemirroring` controller does, this one copies each such Endpoints
//! object into slices managed by `endpointslicemirroring-controller.k8s.io` and owned by the
//! Endpoints, so proxies that read only slices see those Services too. This keeps one owner
//! per object: the API server owns the `kubernetes` Endpoints, this controller its slice.
//! Endpoints labelled `endpointslice.kubernetes.io/skip-mirror=true`, and those of Services that
//! have a selector (the EndpointSlice controller's), are not mirrored.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::Instrument;

use super::plan::{self, Desired};
use crate::Error;

/// This controller's `endpointslice.kubernetes.io/managed-by` value.
pub const CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
/// Endpoints with this label set to `true` are not mirrored.
pub const SKIP: &str = "endpointslice.kubernetes.io/skip-mirror";

/// The slices an Endpoints object mirrors into: one per (address family, port set) of its
/// subsets, cut at [`plan::MAX_ENDPOINTS`].
pub fn desired(ep: &Endpoints) -> Vec<Desired> {
    let mut groups: BTreeMap<_, Desired> = BTreeMap::new();
    for subset in ep.subsets.iter().flatten() {
        let mut ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        ports.sort_by(|a, b| (&a.name, a.port).cmp(&(&b.name, b.port)));
        let key: Vec<(String, i32, String, String)> = ports
            .iter()
            .map(|p| {
                let s = |o: &Option<String>| o.clone().unwrap_or_default();
                (s(&p.name), p.port.unwrap_or_default(), s(&p.protocol), s(&p.app_protocol))
            })
            .collect();
        let all = subset.addresses.iter().flatten().map(|a| (a, true));
        let all = all.chain(subset.not_ready_addresses.iter().flatten().map(|a| (a, false)));
        for (a, ready) in all {
            let Some(fam) = plan::family(&a.ip) else { continue };
            let e = Endpoint {
                addresses: vec![a.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(ready),
                    terminating: Some(false),
                }),
                hostname: a.hostname.clone(),
                node_name: a.node_name.clone(),
                target_ref: a.target_ref.clone(),
                ..Default::default()
            };
            groups
                .entry((fam.to_string(), key.clone()))
                .or_insert_with(|| Desired { address_type: fam.into(), ports: ports.clone(), endpoints: Vec::new() })
                .endpoints
                .push(e);
        }
    }
    // No placeholder: an Endpoints object without addresses mirrors to no slice, as upstream.
    plan::cut(groups, &[])
}

/// The labels of mirrored slices: the Endpoints' own plus the Service name and the manager.
pub fn labels(ep: &Endpoints) -> BTreeMap<String, String> {
    let mut l = ep.metadata.labels.clone().unwrap_or_default();
    l.remove(SKIP);
    l.insert(plan::SERVICE_NAME.into(), ep.name_any());
    l.insert(plan::MANAGED_BY.into(), CONTROLLER.into());
    l
}

struct Ctx {
    client: Client,
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the mirroring controller until its watch streams end.
pub async fn run(client: Client) -> Result<(), Error> {
    let endpoints: Api<Endpoints> = Api::all(client.clone());
    let services: Api<Service> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client, failures: Mutex::new(HashMap::new()) });
    let managed = watcher::Config::default().labels(&format!("{}={CONTROLLER}", plan::MANAGED_BY));
    Controller::new(endpoints, watcher::Config::default())
        .watches(slices, managed, |s: EndpointSlice| super::owner_ref(&s.metadata, "Endpoints"))
        // A Service gaining or losing its selector changes who owns the slices.
        .watches(services, watcher::Config::default(), |s: Service| {
            Some(ObjectRef::<Endpoints>::new(&s.name_any()).within(&s.namespace().unwrap_or_default()))
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "endpointslicemirroring controller");
            }
        })
        .await;
    Ok(())
}

async fn reconcile(ep: Arc<Endpoints>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = ep.namespace().unwrap_or_default();
    let name = ep.name_any();
    let span = tracing::debug_span!("endpointslicemirroring sync", namespace = ns, endpoints = name);
    async move {
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
        let svc = services.get_opt(&name).await?;
        let selectorless = svc
            .as_ref()
            .is_some_and(|s| s.spec.as_ref().and_then(|x| x.selector.as_ref()).is_none_or(|m| m.is_empty()));
        let skip = ep.labels().get(SKIP).is_some_and(|v| v == "true");
        let want =
            if selectorless && !skip && ep.metadata.deletion_timestamp.is_none() { desired(&ep) } else { Vec::new() };
        let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
        let sel = format!("{}={name},{}={CONTROLLER}", plan::SERVICE_NAME, plan::MANAGED_BY);
        let existing = slices.list(&ListParams::default().labels(&sel)).await?.items;
        let meta = plan::Meta {
            namespace: ns.clone(),
            prefix: format!("{name}-"),
            labels: labels(&ep),
            owner: OwnerReference {
                api_version: "v1".into(),
                kind: "Endpoints".into(),
                name: name.clone(),
                uid: ep.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        };
        super::execute(&ctx.client, &ns, plan::diff(&meta, want, &existing)).await?;
        ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&format!("{ns}/{name}"));
        Ok(Action::requeue(super::RESYNC))
    }
    .instrument(span)
    .await
}

fn error_policy(ep: Arc<Endpoints>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = format!("{}/{}", ep.namespace().unwrap_or_default(), ep.name_any());
    super::backoff(&ctx.failures, key, err, "endpointslicemirroring sync")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn the_kubernetes_endpoints_mirror_into_one_ready_slice() {
        let ep: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"a": "b"}},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "notReadyAddresses": [{"ip": "fd00::1"}],
                         "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}],
        }))
        .unwrap();
        let d = desired(&ep);
        assert_eq!(d.len(), 2);
        let v4 = d.iter().find(|s| s.address_type == "IPv4").unwrap();
        assert_eq!(v4.endpoints[0].addresses, ["10.0.0.1"]);
        assert_eq!(v4.endpoints[0].conditions.as_ref().unwrap().ready, Some(true));
        assert_eq!(v4.ports[0].port, Some(6443));
        let v6 = d.iter().find(|s| s.address_type == "IPv6").unwrap();
        assert_eq!(v6.endpoints[0].conditions.as_ref().unwrap().ready, Some(false));
        let l = labels(&ep);
        assert_eq!(l.get(plan::SERVICE_NAME).unwrap(), "kubernetes");
        assert_eq!(l.get(plan::MANAGED_BY).unwrap(), CONTROLLER);
        assert_eq!(l.get("a").unwrap(), "b");
        assert!(desired(&Endpoints::default()).is_empty());
    }
}
