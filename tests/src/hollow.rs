//! Hollow nodes (kubemark's idea): a test fixture that makes Node objects look alive without
//! containers, so the control plane (scheduler, workload controllers, node lifecycle) is tested
//! and measured at scale through the real API.
//!
//! What a hollow node does, through the API only (as a kubelet would):
//! - registers a Node with capacity/allocatable, addresses, nodeInfo and a Ready condition;
//! - renews its `kube-node-lease` Lease every `lease_period`;
//! - marks pods bound to it (`spec.nodeName`) Running and Ready via `pods/status`, with a pod IP
//!   from a per-node range; pods a test has moved to `Succeeded`/`Failed` are left alone;
//! - finishes graceful deletions at once (`delete` with grace 0 and a uid precondition), as
//!   kubelet does once the containers are gone.
//!
//! [`HollowNodes::stop`] simulates a node dying: its Lease stops being renewed and its pods are no
//! longer touched. Nothing here runs a process or a container; this is clearly not a kubelet and
//! is used only by control-plane tests and benches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

/// The shape of every hollow node of one [`HollowNodes::start`] call.
#[derive(Debug, Clone)]
pub struct HollowOpts {
    pub cpu: String,
    pub memory: String,
    pub ephemeral_storage: String,
    pub pods: u32,
    /// Extra labels (`kubernetes.io/hostname`, `kubernetes.io/os` and `kubernetes.io/arch` are always set).
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// How often each Lease is renewed (kubelet: 10 s).
    pub lease_period: Duration,
    /// How many pod status patches run at once (all nodes together).
    pub concurrency: usize,
}

impl Default for HollowOpts {
    fn default() -> Self {
        HollowOpts {
            cpu: "4".into(),
            memory: "8Gi".into(),
            ephemeral_storage: "100Gi".into(),
            pods: 110,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            lease_period: Duration::from_secs(2),
            concurrency: 32,
        }
    }
}

/// A set of running hollow nodes; dropping it stops them all (their objects stay in the API).
pub struct HollowNodes {
    names: Vec<String>,
    dead: Arc<Mutex<HashSet<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for HollowNodes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The fixed node IP of hollow node number `i`: 10.255.x.y.
fn node_ip(i: usize) -> String {
    format!("10.255.{}.{}", (i / 250) % 256, i % 250 + 1)
}

fn node_object(name: &str, i: usize, o: &HollowOpts) -> anyhow::Result<Node> {
    let mut labels = o.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), name.into());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"keelson.dev/hollow": "true"}},
        "spec": {"taints": o.taints},
        "status": node_status(name, i, o),
    }))?)
}

fn node_status(name: &str, i: usize, o: &HollowOpts) -> serde_json::Value {
    let now = chrono_now();
    let res = json!({"cpu": o.cpu, "memory": o.memory, "ephemeral-storage": o.ephemeral_storage,
                     "pods": o.pods.to_string()});
    let cond = |t: &str, s: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({
        "capacity": res, "allocatable": res,
        "addresses": [{"type": "InternalIP", "address": node_ip(i)}, {"type": "Hostname", "address": name}],
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "hollow",
                     "osImage": "hollow", "containerRuntimeVersion": "hollow://0", "kubeletVersion": "v1.33.0-hollow",
                     "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "hollow node has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "hollow node has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "hollow node has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "hollow node is posting ready status"),
        ],
    })
}

/// RFC 3339 with seconds, as Kubernetes timestamps are written.
fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// RFC 3339 with microseconds (Lease renewTime is a MicroTime).
fn micro_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl HollowNodes {
    /// Registers `names` as hollow nodes (adopting existing Node objects of those names) and starts
    /// their leases and the pod stand-in.
    pub async fn start(client: Client, names: &[&str], opts: HollowOpts) -> anyhow::Result<HollowNodes> {
        let nodes: Api<Node> = Api::all(client.clone());
        for (i, name) in names.iter().enumerate() {
            let node = node_object(name, i, &opts)?;
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            // Status through the status subresource, whatever create kept of it.
            nodes
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": node_status(name, i, &opts)})),
                )
                .await?;
        }
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let dead = Arc::new(Mutex::new(HashSet::new()));
        let tasks = vec![
            tokio::spawn(leases(client.clone(), names.clone(), dead.clone(), opts.lease_period)),
            tokio::spawn(pods(client, names.clone(), dead.clone(), opts.concurrency.max(1))),
        ];
        Ok(HollowNodes { names, dead, tasks })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The node dies: its Lease is no longer renewed and its pods are no longer touched.
    pub fn stop(&self, name: &str) {
        if let Ok(mut d) = self.dead.lock() {
            d.insert(name.to_string());
        }
    }

    /// The node comes back (leases and pods resume).
    pub fn revive(&self, name: &str) {
        if let Ok(mut d) = self.dead.lock() {
            d.remove(name);
        }
    }
}

fn is_dead(dead: &Mutex<HashSet<String>>, name: &str) -> bool {
    dead.lock().map(|d| d.contains(name)).unwrap_or(false)
}

/// Renews every live node's Lease each `period` (creating it if missing).
async fn leases(client: Client, names: Vec<String>, dead: Arc<Mutex<HashSet<String>>>, period: Duration) {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut uids: HashMap<String, String> = HashMap::new();
    loop {
        for name in &names {
            if is_dead(&dead, name) {
                continue;
            }
            if !uids.contains_key(name)
                && let Ok(n) = nodes.get(name).await
            {
                uids.insert(name.clone(), n.uid().unwrap_or_default());
            }
            let renew = json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()}});
            match api.patch(name, &PatchParams::default(), &Patch::Merge(&renew)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    let owner = json!([{"apiVersion": "v1", "kind": "Node", "name": name,
                                        "uid": uids.get(name).cloned().unwrap_or_default()}]);
                    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                       "metadata": {"name": name, "namespace": "kube-node-lease", "ownerReferences": owner},
                                       "spec": renew["spec"]});
                    if let Ok(l) = serde_json::from_value::<Lease>(lease) {
                        let _ = api.create(&PostParams::default(), &l).await;
                    }
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Watches all pods and acts for those bound to a live hollow node; restarts the watch on error.
async fn pods(client: Client, names: Vec<String>, dead: Arc<Mutex<HashSet<String>>>, concurrency: usize) {
    let index: HashMap<String, usize> = names.iter().cloned().enumerate().map(|(i, n)| (n, i)).collect();
    let counters: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let api: Api<Pod> = Api::all(client.clone());
    loop {
        let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
        loop {
            let ev = match stream.try_next().await {
                Ok(Some(ev)) => ev,
                Ok(None) | Err(_) => break,
            };
            let pods = match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => vec![p],
                _ => continue,
            };
            for pod in pods {
                let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
                let Some(&i) = index.get(&node) else { continue };
                if is_dead(&dead, &node) {
                    continue;
                }
                let Some(action) = action_for(&pod) else { continue };
                let ns = pod.namespace().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let (counters, sem) = (counters.clone(), sem.clone());
                tokio::spawn(async move {
                    let Ok(_permit) = sem.acquire_owned().await else { return };
                    let name = pod.name_any();
                    match action {
                        Action::Delete => {
                            let dp = DeleteParams {
                                grace_period_seconds: Some(0),
                                preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }),
                                ..DeleteParams::default()
                            };
                            let _ = api.delete(&name, &dp).await;
                        }
                        Action::Run => {
                            let n = {
                                let mut c = counters.lock().unwrap_or_else(|e| e.into_inner());
                                let n = c.entry(node.clone()).or_insert(0);
                                *n += 1;
                                *n
                            };
                            let ip = format!("10.{}.{}.{}", 100 + (i / 256) % 100, i % 256, (n % 250) + 2);
                            let status = running_status(&pod, &ip, &node_ip(i));
                            let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await;
                        }
                    }
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

enum Action {
    Run,
    Delete,
}

/// What the stand-in does for a pod bound to a live hollow node, if anything.
fn action_for(pod: &Pod) -> Option<Action> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Some(Action::Delete);
    }
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    if phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if phase == "Running" && ready { None } else { Some(Action::Run) }
}

fn running_status(pod: &Pod, ip: &str, host_ip: &str) -> serde_json::Value {
    let now = chrono_now();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    let statuses = |init: bool| -> Vec<serde_json::Value> {
        let spec = pod.spec.as_ref();
        let cs = if init { spec.and_then(|s| s.init_containers.clone()) } else { spec.map(|s| s.containers.clone()) };
        cs.unwrap_or_default()
            .iter()
            .map(|c| {
                let state = if init {
                    json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}})
                } else {
                    json!({"running": {"startedAt": now}})
                };
                json!({"name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "hollow://image",
                       "containerID": format!("hollow://{}-{}", pod.uid().unwrap_or_default(), c.name),
                       "ready": !init, "started": !init, "restartCount": 0, "state": state})
            })
            .collect()
    };
    json!({"status": {
        "phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": pod.status.as_ref().and_then(|s| s.start_time.clone()).map(|t| json!(t)).unwrap_or(json!(now)),
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"),
                       cond("ContainersReady"), cond("PodScheduled")],
        "containerStatuses": statuses(false),
        "initContainerStatuses": statuses(true),
    }})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = chrono_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        let m = micro_now();
        assert_eq!(m.len(), 27, "{m}");
    }

    #[test]
    fn acts_only_on_pods_that_need_it() {
        let pod = |v: serde_json::Value| serde_json::from_value::<Pod>(v).unwrap();
        assert!(matches!(action_for(&pod(json!({"metadata": {"name": "a"}}))), Some(Action::Run)));
        let done = pod(json!({"metadata": {"name": "a"}, "status": {"phase": "Succeeded"}}));
        assert!(action_for(&done).is_none());
        let ready = pod(json!({"metadata": {"name": "a"}, "status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}}));
        assert!(action_for(&ready).is_none());
        let deleting = pod(json!({"metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"}}));
        assert!(matches!(action_for(&deleting), Some(Action::Delete)));
    }
}
