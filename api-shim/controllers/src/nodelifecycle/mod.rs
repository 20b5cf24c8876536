//! The node lifecycle controller: notices nodes that stopped renewing their Lease, marks them
//! `Ready=Unknown` with the `node.kubernetes.io/unreachable` NoExecute taint (`not-ready` when
//! the node itself reports `Ready=False`), marks their pods not ready, and evicts pods from
//! NoExecute-tainted nodes once their `tolerationSeconds` run out (upstream's node lifecycle
//! and taint eviction controllers in one loop).
//!
//! Shape: reflector stores of Nodes, node Leases (`kube-node-lease`) and Pods; every
//! `monitor_period` one pass updates each node's [`plan::Health`] (the local time its Lease or
//! Ready heartbeat last changed), runs the pure [`plan::plan`] with the current time and
//! executes its operations. Node writes carry the resourceVersion they were planned from; an
//! error is logged and the next pass (level-triggered) tries again. Health is only in memory: a
//! restarted controller gives every node a fresh grace period, as upstream does.
//!
//! keelson's defaults aim at a failover of at most a minute — 20 s of grace plus the 30 s the
//! DefaultTolerationSeconds admission gives pods — where upstream's 50 s + 300 s are flags away.

pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::Error;
use crate::leader::to_chrono;
use crate::nodeipam::AbortOnDrop;
use plan::{Condition, Health, NodeView, Op, PodView, Taint, Toleration};

/// The namespace of node heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// Settings of the node lifecycle controller.
#[derive(Debug, Clone)]
pub struct LifecycleOpts {
    /// How often node health is checked (upstream `--node-monitor-period`, 5 s there).
    pub monitor_period: Duration,
    /// How long a node may stay silent before it is marked Unknown (`--node-monitor-grace-period`).
    pub grace_period: Duration,
}

impl Default for LifecycleOpts {
    fn default() -> Self {
        LifecycleOpts { monitor_period: Duration::from_secs(1), grace_period: Duration::from_secs(20) }
    }
}

pub(crate) fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn rfc3339(t: &Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
}

/// An object without its null fields (absent optional fields are omitted, as clients write them).
fn compact(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.retain(|_, x| !x.is_null());
    }
    v
}

/// Records a core/v1 Event about `obj` (events.k8s.io is not served; kubectl describe reads these).
pub(crate) async fn node_event<K>(
    client: &Client,
    obj: &K,
    type_: &str,
    reason: &str,
    message: &str,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>,
{
    let ns = obj.meta().namespace.clone().unwrap_or_else(|| "default".into());
    let now = now_rfc3339();
    let name = obj.meta().name.clone().unwrap_or_default();
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": {"apiVersion": K::api_version(&()), "kind": K::kind(&()), "name": name,
                           "namespace": obj.meta().namespace, "uid": obj.meta().uid},
        "type": type_, "reason": reason, "message": message,
        "source": {"component": "node-controller"}, "reportingComponent": "node-controller",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    let ev: k8s_openapi::api::core::v1::Event = serde_json::from_value(ev).map_err(|e| Error::Config(e.to_string()))?;
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &ev).await?;
    Ok(())
}

fn node_view(n: &Node) -> NodeView {
    let conditions = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .map(|c| Condition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    last_heartbeat_time: c.last_heartbeat_time.as_ref().and_then(|t| to_chrono(&t.0)),
                    last_transition_time: c.last_transition_time.as_ref().and_then(|t| to_chrono(&t.0)),
                })
                .collect()
        })
        .unwrap_or_default();
    let taints = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .map(|t| Taint {
                    key: t.key.clone(),
                    value: t.value.clone(),
                    effect: t.effect.clone(),
                    time_added: t.time_added.as_ref().and_then(|x| to_chrono(&x.0)),
                })
                .collect()
        })
        .unwrap_or_default();
    NodeView {
        name: n.name_any(),
        created: n.metadata.creation_timestamp.as_ref().and_then(|t| to_chrono(&t.0)).unwrap_or_else(Utc::now),
        conditions,
        taints,
    }
}

fn pod_view(p: &Pod) -> PodView {
    let spec = p.spec.as_ref();
    PodView {
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        uid: p.uid().unwrap_or_default(),
        node: spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
        deleting: p.metadata.deletion_timestamp.is_some(),
        ready: p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        tolerations: spec
            .and_then(|s| s.tolerations.as_ref())
            .map(|ts| {
                ts.iter()
                    .map(|t| Toleration {
                        key: t.key.clone(),
                        operator: t.operator.clone(),
                        value: t.value.clone(),
                        effect: t.effect.clone(),
                        seconds: t.toleration_seconds,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// What changes while a node is alive: its Lease's renewTime (and holder) and its Ready
/// condition's heartbeat and status.
fn signal(node: &Node, lease: Option<&Lease>) -> String {
    let renew = lease
        .and_then(|l| l.spec.as_ref())
        .map(|s| format!("{:?}/{:?}", s.renew_time.as_ref().map(|t| t.0), s.holder_identity))
        .unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == plan::READY))
        .map(|c| format!("{}/{:?}", c.status, c.last_heartbeat_time.as_ref().and_then(|t| to_chrono(&t.0))))
        .unwrap_or_default();
    format!("{renew}|{ready}")
}

fn reflect<K>(api: Api<K>) -> (Store<K>, AbortOnDrop)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let writer = reflector::store::Writer::default();
    let store = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::debug!(error = %e, "node lifecycle watch");
            }
        }
    });
    (store, AbortOnDrop(task))
}

/// Runs the node lifecycle controller until it is dropped (its watches retry forever).
pub async fn run(client: Client, opts: LifecycleOpts) -> Result<(), Error> {
    let (nodes, _n) = reflect::<Node>(Api::all(client.clone()));
    let (leases, _l) = reflect::<Lease>(Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE));
    let (pods, _p) = reflect::<Pod>(Api::all(client.clone()));
    for ready in [nodes.wait_until_ready().await, leases.wait_until_ready().await, pods.wait_until_ready().await] {
        ready.map_err(|_| Error::StoreClosed)?;
    }
    tracing::info!(grace = ?opts.grace_period, "node lifecycle controller synced");
    let grace = chrono::Duration::from_std(opts.grace_period).map_err(|e| Error::Config(e.to_string()))?;
    let mut health: BTreeMap<String, Health> = BTreeMap::new();
    // Operations that succeeded are not repeated until the watch had time to show them.
    let mut done: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(opts.monitor_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Utc::now();
        let node_objs = nodes.state();
        let lease_by_node: HashMap<String, Arc<Lease>> =
            leases.state().into_iter().map(|l| (l.name_any(), l)).collect();
        health.retain(|name, _| node_objs.iter().any(|n| &n.name_any() == name));
        for n in &node_objs {
            let name = n.name_any();
            let s = signal(n, lease_by_node.get(&name).map(|l| l.as_ref()));
            let h = Health::observe(health.get(&name), s, now);
            health.insert(name, h);
        }
        let views: Vec<NodeView> = node_objs.iter().map(|n| node_view(n)).collect();
        let pod_views: Vec<PodView> = pods.state().iter().map(|p| pod_view(p)).collect();
        let (ops, _next) = plan::plan(&views, &health, &pod_views, now, grace);
        let t = tokio::time::Instant::now();
        done.retain(|_, until| *until > t);
        for op in ops {
            let key = format!("{op:?}");
            if done.contains_key(&key) {
                continue;
            }
            let span = tracing::info_span!("nodelifecycle", target = op_target(&op));
            match execute(&client, &node_objs, &op).instrument(span).await {
                Ok(()) => {
                    done.insert(key, tokio::time::Instant::now() + Duration::from_secs(3));
                }
                Err(e) => tracing::warn!(error = %e, op = ?op_target(&op), "node lifecycle (retried next pass)"),
            }
        }
    }
}

fn op_target(op: &Op) -> String {
    match op {
        Op::NodeConditions { node, .. } | Op::NodeTaints { node, .. } => format!("node/{node}"),
        Op::PodNotReady { namespace, name } | Op::Evict { namespace, name, .. } => format!("pod/{namespace}/{name}"),
    }
}

async fn execute(client: &Client, nodes: &[Arc<Node>], op: &Op) -> Result<(), Error> {
    let node_api: Api<Node> = Api::all(client.clone());
    let find = |name: &str| nodes.iter().find(|n| n.name_any() == name).cloned();
    match op {
        Op::NodeConditions { node, conditions } => {
            let Some(obj) = find(node) else { return Ok(()) };
            let conds: Vec<Value> = conditions
                .iter()
                .map(|c| {
                    compact(json!({"type": c.type_, "status": c.status, "reason": c.reason, "message": c.message,
                           "lastHeartbeatTime": rfc3339(&c.last_heartbeat_time),
                           "lastTransitionTime": rfc3339(&c.last_transition_time)}))
                })
                .collect();
            let patch =
                json!({"metadata": {"resourceVersion": obj.resource_version()}, "status": {"conditions": conds}});
            node_api.patch_status(node, &PatchParams::default(), &Patch::Merge(patch)).await?;
            tracing::info!(node, "node stopped posting status: conditions Unknown");
            let msg = format!("Node {node} status is now: NodeNotReady");
            if let Err(e) = node_event(client, obj.as_ref(), "Normal", "NodeNotReady", &msg).await {
                tracing::debug!(error = %e, "node event");
            }
        }
        Op::NodeTaints { node, taints } => {
            let Some(obj) = find(node) else { return Ok(()) };
            let ts: Vec<Value> = taints
                .iter()
                .map(|t| compact(json!({"key": t.key, "value": t.value, "effect": t.effect, "timeAdded": rfc3339(&t.time_added)})))
                .collect();
            let patch = json!({"metadata": {"resourceVersion": obj.resource_version()}, "spec": {"taints": ts}});
            node_api.patch(node, &PatchParams::default(), &Patch::Merge(patch)).await?;
            tracing::info!(node, taints = ?taints.iter().map(|t| &t.key).collect::<Vec<_>>(), "node taints updated");
        }
        Op::PodNotReady { namespace, name } => {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let pod = api.get_status(name).await?;
            let mut conds: Vec<Value> = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .map(|cs| cs.iter().filter_map(|c| serde_json::to_value(c).ok()).collect())
                .unwrap_or_default();
            for c in conds.iter_mut().filter(|c| c.get("type").and_then(Value::as_str) == Some("Ready")) {
                c["status"] = json!("False");
                c["lastTransitionTime"] = json!(now_rfc3339());
            }
            let patch =
                json!({"metadata": {"resourceVersion": pod.resource_version()}, "status": {"conditions": conds}});
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            tracing::info!("pod marked not ready: its node is Unknown");
        }
        Op::Evict { namespace, name, uid } => {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let dp = DeleteParams {
                preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
                ..Default::default()
            };
            match api.delete(name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            tracing::info!("pod evicted from a NoExecute-tainted node");
            if let Ok(pod) = api.get(name).await {
                let msg = format!("Marking for deletion Pod {namespace}/{name}");
                if let Err(e) = node_event(client, &pod, "Normal", "TaintManagerEviction", &msg).await {
                    tracing::debug!(error = %e, "pod event");
                }
            }
        }
    }
    Ok(())
}
