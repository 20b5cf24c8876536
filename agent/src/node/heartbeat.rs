//! The Node in the API: registration, the `kube-node-lease` heartbeat and status reports.
//!
//! As kubelet does, two signals keep the node alive for the control plane: the Lease (cheap,
//! renewed every 10 s, what the node lifecycle controller watches) and the Node status (patched
//! when something other than heartbeat times changed, and at least every report period, 5 min by
//! default). Both loops are level-triggered: every error is retried with backoff, a Node or Lease
//! deleted behind the agent's back is created again, and nothing is assumed from a previous
//! success. On a clean stop [`Heartbeat::report_stopping`] sets Ready=False once.

use super::NodeFacts;
use super::object::{self, Readiness, SystemInfo};
use crate::apiserver::Backoff;
use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{Instrument, debug, info, info_span, warn};

/// Namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// kubelet's `nodeLeaseDurationSeconds`.
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// Settings of the heartbeat loops.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub node_name: String,
    /// How often the Lease is renewed (kubelet: 10 s, a quarter of the lease duration).
    pub lease_renew: Duration,
    /// How often the status is computed and, if changed, patched (kubelet: 10 s).
    pub status_update: Duration,
    /// The status is patched at least this often even if unchanged (kubelet: 5 min).
    pub status_report: Duration,
}

/// The node's presence in the API. Cheap to clone.
#[derive(Clone)]
pub struct Heartbeat {
    client: kube::Client,
    cfg: HeartbeatConfig,
    facts: NodeFacts,
    info: SystemInfo,
    /// Image names the node holds (filled as archives are imported).
    images: Arc<Mutex<Vec<String>>>,
    /// The Node's uid once registered (for the Lease's owner reference).
    node_uid: Arc<Mutex<Option<String>>>,
    /// The Node as the API last returned it (labels and taints for admission).
    node: Arc<Mutex<Option<Node>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("{what}: {source}")]
    Api {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
}

fn api(what: &'static str) -> impl FnOnce(kube::Error) -> HeartbeatError {
    move |source| HeartbeatError::Api { what, source }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl Heartbeat {
    pub fn new(
        client: kube::Client,
        cfg: HeartbeatConfig,
        facts: NodeFacts,
        info: SystemInfo,
        images: Arc<Mutex<Vec<String>>>,
    ) -> Self {
        Heartbeat { client, cfg, facts, info, images, node_uid: Arc::default(), node: Arc::default() }
    }

    /// The Node's uid, once registered.
    pub fn node_uid(&self) -> Option<String> {
        self.node_uid.lock().ok().and_then(|u| u.clone())
    }

    fn keep(&self, node: Node) {
        if let Ok(mut n) = self.node.lock() {
            *n = Some(node);
        }
    }

    /// What admission checks pods against: allocatable from the facts, labels and taints from the
    /// Node in the API (as last seen). `None` until the Node is registered.
    pub fn node_view(&self) -> Option<crate::admit::NodeView> {
        let node = self.node.lock().ok().and_then(|n| n.clone())?;
        Some(crate::admit::NodeView {
            name: self.cfg.node_name.clone(),
            allocatable: self.facts.node_status().allocatable.unwrap_or_default(),
            labels: node.metadata.labels.unwrap_or_default(),
            taints: node.spec.and_then(|s| s.taints).unwrap_or_default(),
        })
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Creates the Node, or adopts an existing Node of that name; returns its uid.
    pub async fn register(&self) -> Result<String, HeartbeatError> {
        let nodes = self.nodes();
        let node = match nodes.create(&PostParams::default(), &object::initial_node(&self.cfg.node_name)).await {
            Ok(n) => {
                info!(node = %self.cfg.node_name, "registered the Node");
                n
            }
            Err(e) if is_status(&e, 409) => {
                info!(node = %self.cfg.node_name, "adopting the existing Node");
                nodes.get(&self.cfg.node_name).await.map_err(api("get Node"))?
            }
            Err(e) => return Err(api("create Node")(e)),
        };
        let uid = node.metadata.uid.clone().unwrap_or_default();
        if let Ok(mut u) = self.node_uid.lock() {
            *u = Some(uid.clone());
        }
        self.keep(node);
        Ok(uid)
    }

    /// Registers (retrying until it succeeds), then runs the Lease and status loops forever.
    pub async fn run(self) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(7));
        loop {
            match self.register().await {
                Ok(_) => break,
                Err(e) => {
                    let d = backoff.next_delay();
                    warn!(error = %e, retry_in = ?d, "node registration failed");
                    tokio::time::sleep(d).await;
                }
            }
        }
        let lease = self.clone();
        tokio::spawn(async move { lease.lease_loop().await }.instrument(info_span!("lease")));
        self.status_loop().instrument(info_span!("node_status")).await;
    }

    async fn lease_loop(self) {
        let mut backoff = Backoff::default();
        loop {
            let wait = match self.renew_lease().await {
                Ok(()) => {
                    backoff.reset();
                    self.cfg.lease_renew
                }
                Err(e) => {
                    let d = backoff.next_delay().min(self.cfg.lease_renew);
                    warn!(error = %e, retry_in = ?d, "lease renewal failed");
                    d
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Renews (or creates) the node's Lease, owned by the Node as upstream does.
    pub async fn renew_lease(&self) -> Result<(), HeartbeatError> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let name = &self.cfg.node_name;
        let now = MicroTime(object_time());
        let spec = LeaseSpec {
            holder_identity: Some(name.clone()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(now),
            ..Default::default()
        };
        let patch = serde_json::json!({ "spec": spec });
        match leases.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                debug!("lease renewed");
                Ok(())
            }
            Err(e) if is_status(&e, 404) => {
                let uid = self.node_uid.lock().ok().and_then(|u| u.clone());
                let owner = uid.map(|uid| OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: name.clone(),
                    uid,
                    ..Default::default()
                });
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        owner_references: owner.map(|o| vec![o]),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                leases.create(&PostParams::default(), &lease).await.map_err(api("create Lease"))?;
                info!("lease created");
                Ok(())
            }
            Err(e) => Err(api("renew Lease")(e)),
        }
    }

    async fn status_loop(self) {
        let mut sent: Option<(NodeStatus, Instant)> = None;
        let mut backoff = Backoff::default();
        loop {
            let wait = match self.update_status(&mut sent).await {
                Ok(()) => {
                    backoff.reset();
                    self.cfg.status_update
                }
                Err(e) => {
                    let d = backoff.next_delay().min(self.cfg.status_update);
                    warn!(error = %e, retry_in = ?d, "node status update failed");
                    d
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn images(&self) -> Vec<String> {
        self.images.lock().map(|i| i.clone()).unwrap_or_default()
    }

    /// Patches the status if it changed since `sent` or the report period passed.
    async fn update_status(&self, sent: &mut Option<(NodeStatus, Instant)>) -> Result<(), HeartbeatError> {
        let prev = sent.as_ref().map(|(s, _)| s);
        let st = object::node_status(&self.facts, &self.info, &self.images(), Readiness::Ready, prev, Utc::now());
        let due = match sent {
            Some((s, at)) => object::changed(s, &st) || at.elapsed() >= self.cfg.status_report,
            None => true,
        };
        if !due {
            return Ok(());
        }
        match self.patch_status(&st).await {
            Ok(()) => {
                *sent = Some((st, Instant::now()));
                Ok(())
            }
            Err(HeartbeatError::Api { source, .. }) if is_status(&source, 404) => {
                warn!("the Node is gone from the API; registering again");
                *sent = None;
                self.register().await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    async fn patch_status(&self, st: &NodeStatus) -> Result<(), HeartbeatError> {
        let patch = serde_json::json!({ "status": st });
        let node = self
            .nodes()
            .patch_status(&self.cfg.node_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api("patch Node status"))?;
        self.keep(node);
        debug!("node status patched");
        Ok(())
    }

    /// Sets Ready=False (kubelet stopping). One attempt: the caller bounds it with a timeout.
    pub async fn report_stopping(&self) -> Result<(), HeartbeatError> {
        let prev = self.nodes().get_status(&self.cfg.node_name).await.map_err(api("get Node"))?.status;
        let st = object::node_status(
            &self.facts,
            &self.info,
            &self.images(),
            Readiness::Stopping,
            prev.as_ref(),
            Utc::now(),
        );
        self.patch_status(&st).await
    }
}

fn object_time() -> k8s_openapi::jiff::Timestamp {
    crate::pod::status::to_time(Utc::now()).0
}
