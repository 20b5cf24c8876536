//! Node IPAM: gives every Node a `spec.podCIDR` / `spec.podCIDRs` from the cluster CIDR
//! (upstream's range allocator in `pkg/controller/nodeipam`), which the agent's CNI plugin uses
//! for its pods and the overlay routes to.
//!
//! Shape: a watcher + reflector store of Nodes; any change (debounced) or a periodic resync runs
//! the pure [`plan::plan`] over the whole store and executes its operations one by one. The
//! allocator is rebuilt from the Nodes on each pass, so nothing but the Node objects is state:
//! after a restart the same CIDRs are seen as taken, and a deleted node's CIDR is free again.
//! Writes carry the resourceVersion they were planned from, so a concurrent change turns into a
//! conflict and a new pass rather than a lost update. An exhausted range yields one Event and a
//! `NetworkUnavailable` condition per node, not a retry loop.

pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use crate::Error;
use crate::nodelifecycle::{node_event, now_rfc3339};
use plan::{CIDR_ASSIGNED, CIDR_NOT_AVAILABLE, NETWORK_UNAVAILABLE, NodeView, Op};

/// Settings of node IPAM (`--cluster-cidr`, `--node-cidr-mask-size`).
#[derive(Debug, Clone)]
pub struct IpamOpts {
    pub cluster_cidr: Ipv4Net,
    pub node_cidr_mask_size: u8,
    /// Every node is looked at again at least this often.
    pub resync: Duration,
}

impl Default for IpamOpts {
    fn default() -> Self {
        IpamOpts {
            cluster_cidr: Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
            node_cidr_mask_size: 24,
            resync: Duration::from_secs(30),
        }
    }
}

fn view(n: &Node) -> NodeView {
    let spec = n.spec.as_ref();
    let mut pod_cidrs = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if pod_cidrs.is_empty()
        && let Some(c) = spec.and_then(|s| s.pod_cidr.clone()).filter(|c| !c.is_empty())
    {
        pod_cidrs.push(c);
    }
    let marked_exhausted = n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
        cs.iter().any(|c| {
            c.type_ == NETWORK_UNAVAILABLE && c.status == "True" && c.reason.as_deref() == Some(CIDR_NOT_AVAILABLE)
        })
    });
    NodeView { name: n.name_any(), pod_cidrs, marked_exhausted }
}

/// Runs node IPAM until the Node watch ends (it retries forever).
pub async fn run(client: Client, opts: IpamOpts) -> Result<(), Error> {
    // Refuse a bad configuration up front instead of failing every pass.
    plan::Allocator::new(opts.cluster_cidr, opts.node_cidr_mask_size).map_err(|e| Error::Config(e.to_string()))?;
    let api: Api<Node> = Api::all(client.clone());
    let writer = reflector::store::Writer::default();
    let store: Store<Node> = writer.as_reader();
    let wake = Arc::new(Notify::new());
    let w = wake.clone();
    let stream = reflector::reflector(writer, watcher(api.clone(), watcher::Config::default())).default_backoff();
    let watch = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::debug!(error = %e, "node ipam watch");
            }
            w.notify_one();
        }
    });
    let _abort = AbortOnDrop(watch);
    store.wait_until_ready().await.map_err(|_| Error::StoreClosed)?;
    tracing::info!(cluster_cidr = %opts.cluster_cidr, mask = opts.node_cidr_mask_size, "node ipam synced");
    // Written but not yet seen: node → (cidr, forget after).
    let mut pending: BTreeMap<String, (Ipv4Net, Instant)> = BTreeMap::new();
    let mut failures = 0u32;
    loop {
        let now = Instant::now();
        let nodes: Vec<Arc<Node>> = store.state();
        let views: Vec<NodeView> = nodes.iter().map(|n| view(n)).collect();
        pending
            .retain(|name, (_, until)| *until > now && views.iter().any(|v| &v.name == name && v.pod_cidrs.is_empty()));
        let p: BTreeMap<String, Ipv4Net> = pending.iter().map(|(k, (c, _))| (k.clone(), *c)).collect();
        let ops = plan::plan(opts.cluster_cidr, opts.node_cidr_mask_size, &views, &p)
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut failed = false;
        for op in ops {
            let span = tracing::info_span!("nodeipam", node = op_node(&op));
            let Some(node) = nodes.iter().find(|n| n.name_any() == op_node(&op)) else { continue };
            match execute(&client, node, &op, &opts).instrument(span).await {
                Ok(()) => {
                    if let Op::Assign { node, cidr, .. } = &op {
                        tracing::info!(node, %cidr, "pod CIDR assigned");
                        pending.insert(node.clone(), (*cidr, Instant::now() + Duration::from_secs(30)));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "node ipam");
                    failed = true;
                }
            }
        }
        if failed {
            // Back off (exponentially, up to a minute) before the next pass, whatever the watch says.
            failures = failures.saturating_add(1);
            let delay = Duration::from_millis(250).saturating_mul(1 << failures.min(8)).min(Duration::from_secs(60));
            tokio::time::sleep(delay).await;
            continue;
        }
        failures = 0;
        tokio::select! {
            _ = wake.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
            _ = tokio::time::sleep(opts.resync) => {}
        }
    }
}

fn op_node(op: &Op) -> &str {
    match op {
        Op::Assign { node, .. } | Op::Exhausted { node } => node,
    }
}

/// Aborts a spawned task when the owner goes away (controllers are stopped by dropping them).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The node's conditions with `NetworkUnavailable` set as given (the list is written whole, under
/// the node's resourceVersion).
fn with_condition(node: &Node, status: &str, reason: &str, message: &str) -> Value {
    let now = now_rfc3339();
    let mut conds: Vec<Value> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| cs.iter().filter_map(|c| serde_json::to_value(c).ok()).collect())
        .unwrap_or_default();
    conds.retain(|c| c.get("type").and_then(Value::as_str) != Some(NETWORK_UNAVAILABLE));
    conds.push(json!({"type": NETWORK_UNAVAILABLE, "status": status, "reason": reason, "message": message,
                      "lastHeartbeatTime": now, "lastTransitionTime": now}));
    json!({"metadata": {"resourceVersion": node.resource_version()}, "status": {"conditions": conds}})
}

async fn execute(client: &Client, node: &Node, op: &Op, opts: &IpamOpts) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let name = node.name_any();
    match op {
        Op::Assign { cidr, clear_mark, .. } => {
            let patch = json!({
                "metadata": {"resourceVersion": node.resource_version()},
                "spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]},
            });
            let updated = api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            if *clear_mark {
                let patch = with_condition(&updated, "False", CIDR_ASSIGNED, &format!("pod CIDR {cidr} assigned"));
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            }
        }
        Op::Exhausted { .. } => {
            let msg =
                format!("no /{} left in cluster CIDR {} for a pod CIDR", opts.node_cidr_mask_size, opts.cluster_cidr);
            tracing::warn!(node = name, "{msg}");
            // The condition first: once it is stored the plan no longer asks for this, so a
            // failed write is retried without a second Event.
            let patch = with_condition(node, "True", CIDR_NOT_AVAILABLE, &msg);
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            let ev = format!("Node {name} status is now: {CIDR_NOT_AVAILABLE}");
            if let Err(e) = node_event(client, node, "Normal", CIDR_NOT_AVAILABLE, &ev).await {
                tracing::warn!(error = %e, "node ipam event");
            }
        }
    }
    Ok(())
}
