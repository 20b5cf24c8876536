//! Mirror pods: static pods shown in the API (kubelet's `mirror_client`).
//!
//! For each static pod the agent keeps one pod in the API with the same name and namespace, the
//! `kubernetes.io/config.mirror` annotation holding the static pod's hash, and an owner reference
//! to the Node (so the garbage collector removes mirrors of a deleted Node). A mirror that is
//! missing (or was deleted by a user) is created again, one whose hash is stale is replaced, one
//! without a static pod is deleted. The API source ignores mirror pods: the manifest is what runs.
//! The status of a static pod is written to its mirror (see [`crate::status::api`]), found through
//! the [`MirrorIndex`] this loop maintains.
//!
//! The loop is level-triggered: it lists this node's pods after every change of the static set
//! and every 10 s, and plans with the pure [`plan`].

use crate::apiserver::Backoff;
use crate::node::heartbeat::Heartbeat;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

/// The annotation marking a mirror pod (value: the static pod's hash).
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";
/// The static pod's content hash (set by the file source).
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";

fn annotation<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

/// Whether `p` is a mirror pod.
pub fn is_mirror(p: &Pod) -> bool {
    annotation(p, CONFIG_MIRROR).is_some()
}

fn key(p: &Pod) -> String {
    format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or("default"), p.metadata.name.as_deref().unwrap_or(""))
}

/// The mirror of static pod `p`, owned by the Node `node_name` (uid `node_uid`). Pure.
pub fn mirror_of(p: &Pod, node_name: &str, node_uid: &str) -> Pod {
    let hash = annotation(p, CONFIG_HASH).unwrap_or_default().to_string();
    let mut annotations = p.metadata.annotations.clone().unwrap_or_default();
    annotations.insert(CONFIG_MIRROR.into(), hash);
    let mut spec = p.spec.clone();
    if let Some(s) = spec.as_mut() {
        s.node_name = Some(node_name.into());
    }
    Pod {
        metadata: ObjectMeta {
            name: p.metadata.name.clone(),
            namespace: p.metadata.namespace.clone(),
            labels: p.metadata.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node_name.into(),
                uid: node_uid.into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// One change to the API's mirror pods.
#[derive(Debug, Clone, PartialEq)]
pub enum MirrorOp {
    Create(Box<Pod>),
    /// Delete the mirror `namespace/name` with that uid (stale or orphaned).
    Delete {
        namespace: String,
        name: String,
        uid: String,
    },
}

/// What to create and delete so that `mirrors` (this node's mirror pods in the API) match
/// `statics`. A stale mirror is deleted now and created again on the next round. Pure.
pub fn plan(statics: &[Pod], mirrors: &[Pod], node_name: &str, node_uid: &str) -> Vec<MirrorOp> {
    let by_key: HashMap<String, &Pod> = mirrors.iter().map(|m| (key(m), m)).collect();
    let wanted: HashMap<String, &Pod> = statics.iter().map(|s| (key(s), s)).collect();
    let mut ops = Vec::new();
    let delete = |m: &Pod| MirrorOp::Delete {
        namespace: m.metadata.namespace.clone().unwrap_or_default(),
        name: m.metadata.name.clone().unwrap_or_default(),
        uid: m.metadata.uid.clone().unwrap_or_default(),
    };
    let mut keys: Vec<&String> = wanted.keys().collect();
    keys.sort();
    for k in keys {
        let s = wanted[k];
        match by_key.get(k) {
            None => ops.push(MirrorOp::Create(Box::new(mirror_of(s, node_name, node_uid)))),
            Some(m) if m.metadata.deletion_timestamp.is_some() => {}
            Some(m) if annotation(m, CONFIG_MIRROR) != annotation(s, CONFIG_HASH) => ops.push(delete(m)),
            Some(_) => {}
        }
    }
    let mut orphans: Vec<&&Pod> = by_key.iter().filter(|(k, _)| !wanted.contains_key(*k)).map(|(_, m)| m).collect();
    orphans.sort_by_key(|m| key(m));
    ops.extend(orphans.into_iter().filter(|m| m.metadata.deletion_timestamp.is_none()).map(|m| delete(m)));
    ops
}

/// `namespace/name` of a static pod → uid of its current mirror.
#[derive(Clone, Default)]
pub struct MirrorIndex(Arc<Mutex<HashMap<String, String>>>);

impl MirrorIndex {
    pub fn get(&self, namespace: &str, name: &str) -> Option<String> {
        self.0.lock().ok().and_then(|m| m.get(&format!("{namespace}/{name}")).cloned())
    }

    fn replace(&self, m: HashMap<String, String>) {
        if let Ok(mut cur) = self.0.lock() {
            *cur = m;
        }
    }
}

/// Starts the mirror loop over the static pods published on `statics`.
pub fn spawn(client: kube::Client, node_name: &str, hb: Heartbeat, statics: watch::Receiver<Vec<Pod>>) -> MirrorIndex {
    let index = MirrorIndex::default();
    let idx = index.clone();
    let node = node_name.to_string();
    tokio::spawn(
        async move {
            let mut statics = statics;
            let mut backoff = Backoff::default();
            loop {
                let current = statics.borrow_and_update().clone();
                let wait = match reconcile(&client, &node, &hb, &current, &idx).await {
                    Ok(()) => {
                        backoff.reset();
                        Duration::from_secs(10)
                    }
                    Err(e) => {
                        let d = backoff.next_delay();
                        warn!(error = %e, retry_in = ?d, "mirror pods: sync failed");
                        d
                    }
                };
                tokio::select! {
                    _ = statics.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        .instrument(info_span!("mirror_pods", node = %node_name)),
    );
    index
}

async fn reconcile(
    client: &kube::Client,
    node: &str,
    hb: &Heartbeat,
    statics: &[Pod],
    index: &MirrorIndex,
) -> Result<(), kube::Error> {
    let Some(node_uid) = hb.node_uid() else { return Ok(()) };
    let all: Api<Pod> = Api::all(client.clone());
    let listed = all.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await?;
    let mirrors: Vec<Pod> = listed.items.into_iter().filter(is_mirror).collect();
    let ops = plan(statics, &mirrors, node, &node_uid);
    let mut created: HashMap<String, String> = HashMap::new();
    for op in ops {
        match op {
            MirrorOp::Create(p) => {
                let api: Api<Pod> =
                    Api::namespaced(client.clone(), p.metadata.namespace.as_deref().unwrap_or("default"));
                match api.create(&PostParams::default(), &p).await {
                    Ok(m) => {
                        info!(pod = %key(&m), "mirror pod created");
                        created.insert(key(&m), m.metadata.uid.unwrap_or_default());
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
            MirrorOp::Delete { namespace, name, uid } => {
                let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
                    ..Default::default()
                };
                match api.delete(&name, &dp).await {
                    Ok(_) => info!(pod = %format!("{namespace}/{name}"), "stale mirror pod deleted"),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let hashes: HashMap<String, &str> =
        statics.iter().map(|s| (key(s), annotation(s, CONFIG_HASH).unwrap_or_default())).collect();
    let mut m: HashMap<String, String> = mirrors
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .filter(|m| hashes.get(&key(m)).is_some_and(|h| Some(*h) == annotation(m, CONFIG_MIRROR)))
        .map(|m| (key(m), m.metadata.uid.clone().unwrap_or_default()))
        .collect();
    m.extend(created);
    index.replace(m);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    fn static_pod(name: &str, hash: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some(format!("static-{name}"));
        p.metadata.annotations = Some(BTreeMap::from([
            (CONFIG_HASH.to_string(), hash.to_string()),
            (crate::source::CONFIG_SOURCE.to_string(), "file".to_string()),
        ]));
        p.spec = Some(Default::default());
        p
    }

    fn mirror(name: &str, hash: &str, uid: &str) -> Pod {
        let mut m = mirror_of(&static_pod(name, hash), "n1", "node-uid");
        m.metadata.uid = Some(uid.into());
        m
    }

    #[test]
    fn mirror_carries_the_hash_owner_and_node() {
        let m = mirror_of(&static_pod("web-n1", "h1"), "n1", "node-uid");
        assert!(is_mirror(&m));
        assert_eq!(annotation(&m, CONFIG_MIRROR), Some("h1"));
        assert_eq!(m.metadata.uid, None);
        let o = &m.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((o.kind.as_str(), o.name.as_str(), o.uid.as_str()), ("Node", "n1", "node-uid"));
        assert_eq!(m.spec.unwrap().node_name.as_deref(), Some("n1"));
    }

    #[test]
    fn plan_creates_missing_replaces_stale_and_deletes_orphans() {
        let statics = vec![static_pod("a-n1", "h1"), static_pod("b-n1", "h2"), static_pod("c-n1", "h3")];
        let mirrors = vec![mirror("b-n1", "old", "ub"), mirror("c-n1", "h3", "uc"), mirror("gone-n1", "h9", "ug")];
        let ops = plan(&statics, &mirrors, "n1", "node-uid");
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert!(matches!(&ops[0], MirrorOp::Create(p) if p.metadata.name.as_deref() == Some("a-n1")));
        assert!(matches!(&ops[1], MirrorOp::Delete { name, uid, .. } if name == "b-n1" && uid == "ub"));
        assert!(matches!(&ops[2], MirrorOp::Delete { name, .. } if name == "gone-n1"));
        assert!(plan(&statics[2..], &mirrors[1..2], "n1", "node-uid").is_empty());
    }
}
