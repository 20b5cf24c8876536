//! The scheduler's view of the cluster: nodes with what is already placed on them.
//!
//! Why a cache of its own rather than reading reflector stores per decision: a decision needs
//! per-node sums (requested cpu, memory, pods, host ports) and those must include pods the
//! scheduler has *assumed* onto a node but whose binding the API server has not yet confirmed,
//! otherwise two back-to-back decisions would both take the last free millicore (upstream's
//! scheduler cache and its `AssumePod` / `ForgetPod`). The cache is updated incrementally from
//! watch events, so one decision costs O(nodes), not O(pods).
//!
//! Pods count against a node from the moment they are bound (or assumed) until they are deleted
//! or reach a terminal phase (`Succeeded` / `Failed`), as upstream counts them; pods bound to a
//! node the cache does not know yet are kept aside and counted when the node appears.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keelson_apimachinery::quantity::{to_bytes, to_milli};

/// Upstream's defaults for a container without cpu / memory requests, used only for scoring
/// (`DefaultMilliCPURequest`, `DefaultMemoryRequest`), so best-effort pods still spread.
pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// Amounts of the resources the scheduler accounts for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Extended and other scalar resources (`nvidia.com/gpu`, `hugepages-2Mi`), by name.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Reads a `requests` / `allocatable` map; `pods` is not a request and is skipped. A quantity
    /// that does not parse counts as 0 (the API server already refused invalid ones).
    pub fn from_map(m: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in m.into_iter().flatten() {
            match name.as_str() {
                "cpu" => r.milli_cpu = to_milli(q).unwrap_or(0),
                "memory" => r.memory = to_bytes(q).unwrap_or(0),
                "ephemeral-storage" => r.ephemeral_storage = to_bytes(q).unwrap_or(0),
                "pods" => {}
                other => {
                    r.scalar.insert(other.to_string(), to_bytes(q).unwrap_or(0));
                }
            }
        }
        r
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(o.milli_cpu);
        self.memory = self.memory.saturating_add(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_add(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(o.milli_cpu);
        self.memory = self.memory.saturating_sub(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_sub(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_sub(*v);
        }
    }

    /// Element-wise maximum.
    pub fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0 && self.memory == 0 && self.ephemeral_storage == 0 && self.scalar.values().all(|v| *v == 0)
    }
}

/// A host port a pod takes on its node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    /// Two host ports clash when protocol and port are equal and the addresses overlap
    /// (equal, or either is the wildcard), as upstream's `HostPortInfo` decides.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        let wild = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.port == o.port && self.protocol == o.protocol && (self.ip == o.ip || wild(&self.ip) || wild(&o.ip))
    }
}

fn container_requests(c: &Container, non_zero: bool) -> Resources {
    let mut r = Resources::from_map(c.resources.as_ref().and_then(|r| r.requests.as_ref()));
    if non_zero {
        let has = |n: &str| c.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some_and(|m| m.contains_key(n));
        if !has("cpu") {
            r.milli_cpu = DEFAULT_MILLI_CPU;
        }
        if !has("memory") {
            r.memory = DEFAULT_MEMORY;
        }
    }
    r
}

/// What a pod asks of a node, computed as upstream's `PodRequests`: the sum of the containers,
/// restartable init containers (sidecars) added to it, the largest regular init container (plus
/// the sidecars started before it) as a floor, then the pod overhead. With `non_zero`, containers
/// without a cpu or memory request count upstream's defaults (for scoring only).
pub fn pod_requests(pod: &Pod, non_zero: bool) -> Resources {
    let Some(spec) = pod.spec.as_ref() else { return Resources::default() };
    let mut reqs = Resources::default();
    for c in &spec.containers {
        reqs.add(&container_requests(c, non_zero));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let mut r = container_requests(c, non_zero);
        if c.restart_policy.as_deref() == Some("Always") {
            reqs.add(&r);
            sidecars.add(&r);
            r = sidecars.clone();
        } else {
            r.add(&sidecars);
        }
        init_max.max_with(&r);
    }
    reqs.max_with(&init_max);
    reqs.add(&Resources::from_map(spec.overhead.as_ref()));
    reqs
}

/// The host ports a pod's containers declare.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always")))
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|h| *h > 0)?;
            Some(HostPort {
                ip: p.host_ip.clone().unwrap_or_default(),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port,
            })
        })
        .collect()
}

/// Whether a pod declares any pod affinity or anti-affinity (then every decision must look at it).
pub fn has_pod_affinity(pod: &Pod) -> bool {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    a.is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

/// `namespace/name`, the key pods are known by.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A pod with what the scheduler derives from it, computed once.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub key: String,
    pub pod: Arc<Pod>,
    pub requests: Resources,
    /// Requests with upstream's defaults for containers that state none (scoring).
    pub non_zero: Resources,
    pub ports: Vec<HostPort>,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        PodInfo {
            key: pod_key(&pod),
            requests: pod_requests(&pod, false),
            non_zero: pod_requests(&pod, true),
            ports: host_ports(&pod),
            pod,
        }
    }

    pub fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or_default()
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn node_name(&self) -> &str {
        self.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default()
    }
}

/// One node and what is placed on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub node: Arc<Node>,
    pub allocatable: Resources,
    /// `status.allocatable.pods` (upstream's default 110 when the node states none).
    pub allowed_pods: i64,
    pub requested: Resources,
    pub non_zero_requested: Resources,
    pub pods: BTreeMap<String, Arc<PodInfo>>,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            allocatable: Resources::from_map(alloc),
            allowed_pods: alloc.and_then(|a| a.get("pods")).and_then(|q| to_bytes(q).ok()).unwrap_or(110),
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            pods: BTreeMap::new(),
            node,
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn taints(&self) -> &[Taint] {
        self.node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default()
    }

    pub fn unschedulable(&self) -> bool {
        self.node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
    }

    fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests);
        self.non_zero_requested.add(&p.non_zero);
        if let Some(old) = self.pods.insert(p.key.clone(), p) {
            self.requested.sub(&old.requests);
            self.non_zero_requested.sub(&old.non_zero);
        }
    }

    fn remove_pod(&mut self, key: &str) {
        if let Some(old) = self.pods.remove(key) {
            self.requested.sub(&old.requests);
            self.non_zero_requested.sub(&old.non_zero);
        }
    }

    pub fn used_ports(&self) -> impl Iterator<Item = &HostPort> {
        self.pods.values().flat_map(|p| p.ports.iter())
    }
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The nodes, in a stable order (the scheduler rotates its starting point through it), and the
/// pods placed on them, assumed ones included.
#[derive(Debug, Default)]
pub struct Snapshot {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Pod key → (node name, pod) for every counted pod, including those on unknown nodes.
    placed: HashMap<String, (String, Arc<PodInfo>)>,
    /// Keys of pods placed by [`Snapshot::assume`] whose binding is not confirmed yet.
    assumed: HashSet<String>,
    /// Keys of placed pods with pod (anti-)affinity.
    with_affinity: HashSet<String>,
}

impl Snapshot {
    /// A snapshot of these nodes and pods (pure; used by tests and after a re-list).
    pub fn build(nodes: impl IntoIterator<Item = Arc<Node>>, pods: impl IntoIterator<Item = Arc<Pod>>) -> Snapshot {
        let mut s = Snapshot::default();
        for n in nodes {
            s.upsert_node(n);
        }
        for p in pods {
            s.upsert_pod(p);
        }
        s
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).and_then(|i| self.nodes.get(*i))
    }

    /// Whether any placed pod has pod (anti-)affinity (otherwise InterPodAffinity has nothing
    /// to look at for pods without their own).
    pub fn has_pods_with_affinity(&self) -> bool {
        !self.with_affinity.is_empty()
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains(key)
    }

    /// Where a pod is counted, if anywhere.
    pub fn placement(&self, key: &str) -> Option<&str> {
        self.placed.get(key).map(|(n, _)| n.as_str())
    }

    pub fn upsert_node(&mut self, node: Arc<Node>) {
        let mut info = NodeInfo::new(node);
        if let Some(i) = self.index.get(&info.name).copied() {
            info.pods = std::mem::take(&mut self.nodes[i].pods);
            info.requested = self.nodes[i].requested.clone();
            info.non_zero_requested = self.nodes[i].non_zero_requested.clone();
            self.nodes[i] = info;
            return;
        }
        for (node, p) in self.placed.values() {
            if *node == info.name {
                info.add_pod(p.clone());
            }
        }
        self.index.insert(info.name.clone(), self.nodes.len());
        self.nodes.push(info);
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else { return };
        self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
    }

    /// Replaces the node set (after a re-list), keeping the pods.
    pub fn replace_nodes(&mut self, nodes: Vec<Arc<Node>>) {
        let keep: HashSet<String> = nodes.iter().filter_map(|n| n.metadata.name.clone()).collect();
        let gone: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).filter(|n| !keep.contains(n)).collect();
        for g in gone {
            self.remove_node(&g);
        }
        for n in nodes {
            self.upsert_node(n);
        }
    }

    fn place(&mut self, node: &str, p: Arc<PodInfo>) {
        self.unplace(&p.key);
        if let Some(i) = self.index.get(node) {
            self.nodes[*i].add_pod(p.clone());
        }
        if has_pod_affinity(&p.pod) {
            self.with_affinity.insert(p.key.clone());
        }
        self.placed.insert(p.key.clone(), (node.to_string(), p));
    }

    fn unplace(&mut self, key: &str) {
        self.with_affinity.remove(key);
        if let Some((node, _)) = self.placed.remove(key)
            && let Some(i) = self.index.get(&node)
        {
            self.nodes[*i].remove_pod(key);
        }
    }

    /// Takes a pod as the API server reports it. A bound, non-terminal pod is counted on its
    /// node (confirming an assumption); a terminal one is dropped; an unbound one is dropped
    /// unless the scheduler assumed it (the watch may still show it unbound).
    pub fn upsert_pod(&mut self, pod: Arc<Pod>) {
        let info = Arc::new(PodInfo::new(pod));
        if is_terminal(&info.pod) {
            self.assumed.remove(&info.key);
            self.unplace(&info.key);
            return;
        }
        let node = info.node_name().to_string();
        if node.is_empty() {
            if !self.assumed.contains(&info.key) {
                self.unplace(&info.key);
            }
            return;
        }
        self.assumed.remove(&info.key);
        self.place(&node, info);
    }

    pub fn remove_pod(&mut self, key: &str) {
        self.assumed.remove(key);
        self.unplace(key);
    }

    /// Replaces the pod set (after a re-list); assumptions for pods still present stay.
    pub fn replace_pods(&mut self, pods: Vec<Arc<Pod>>) {
        let keep: HashSet<String> = pods.iter().map(|p| pod_key(p)).collect();
        let gone: Vec<String> = self.placed.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        for g in gone {
            self.remove_pod(&g);
        }
        for p in pods {
            self.upsert_pod(p);
        }
    }

    /// Counts a pod on `node` before the API server confirms the binding.
    pub fn assume(&mut self, pod: &PodInfo, node: &str) {
        let mut p = (*pod.pod).clone();
        p.spec.get_or_insert_with(Default::default).node_name = Some(node.to_string());
        let info = Arc::new(PodInfo { pod: Arc::new(p), ..pod.clone() });
        self.assumed.insert(info.key.clone());
        self.place(node, info);
    }

    /// Drops an assumption whose binding failed (a confirmed placement stays).
    pub fn forget(&mut self, key: &str) {
        if self.assumed.remove(key) {
            self.unplace(key);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    pub fn node(name: &str, cpu: &str, mem: &str, extra: serde_json::Value) -> Arc<Node> {
        let mut n = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110", "ephemeral-storage": "10Gi"}},
        });
        merge(&mut n, extra);
        Arc::new(serde_json::from_value(n).unwrap())
    }

    pub fn pod(name: &str, cpu: &str, mem: &str, extra: serde_json::Value) -> Arc<Pod> {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]},
        });
        merge(&mut p, extra);
        Arc::new(serde_json::from_value(p).unwrap())
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn requests_follow_upstreams_init_container_and_overhead_rules() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d"},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "200m"}}},
                ],
                "initContainers": [
                    {"name": "i1", "resources": {"requests": {"cpu": "1", "memory": "50Mi"}}},
                    {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m", "memory": "10Mi"}}},
                    {"name": "i2", "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}},
                ],
                "overhead": {"cpu": "10m"},
            },
        }))
        .unwrap();
        let r = pod_requests(&p, false);
        // containers 300m + sidecar 50m = 350m; init max: i1 = 1000m, i2 = 100m + 50m; → 1000m; + 10m.
        assert_eq!(r.milli_cpu, 1010);
        // containers 100Mi + sidecar 10Mi = 110Mi; i2 + sidecar = 510Mi wins.
        assert_eq!(r.memory, 510 * 1024 * 1024);
        let nz = pod_requests(&p, true);
        // container b has no memory request: the 200Mi default counts for scoring.
        assert_eq!(nz.memory, 510 * 1024 * 1024);
        assert_eq!(nz.milli_cpu, 1010);
        let bare: Pod = serde_json::from_value(json!({"spec": {"containers": [{"name": "a"}]}})).unwrap();
        assert!(pod_requests(&bare, false).is_zero());
        assert_eq!(pod_requests(&bare, true).milli_cpu, DEFAULT_MILLI_CPU);
    }

    #[test]
    fn assumed_pods_count_until_forgotten_and_confirmation_replaces_them() {
        let mut s = Snapshot::build([node("n1", "2", "4Gi", json!({}))], []);
        let p = PodInfo::new(pod("a", "500m", "1Gi", json!({})));
        s.assume(&p, "n1");
        assert_eq!(s.node("n1").unwrap().requested.milli_cpu, 500);
        // The watch still shows it unbound: the assumption holds.
        s.upsert_pod(p.pod.clone());
        assert_eq!(s.node("n1").unwrap().requested.milli_cpu, 500);
        s.forget(&p.key);
        assert_eq!(s.node("n1").unwrap().requested.milli_cpu, 0);
        // Bound by the server: counted, and a later forget does not drop it.
        s.upsert_pod(pod("a", "500m", "1Gi", json!({"spec": {"nodeName": "n1"}})));
        s.forget(&p.key);
        assert_eq!(s.node("n1").unwrap().pods.len(), 1);
        // Terminal pods stop counting.
        s.upsert_pod(pod("a", "500m", "1Gi", json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Succeeded"}})));
        assert_eq!(s.node("n1").unwrap().requested.milli_cpu, 0);
    }

    #[test]
    fn pods_on_an_unknown_node_count_once_it_appears_and_nodes_keep_pods_across_updates() {
        let mut s = Snapshot::default();
        s.upsert_pod(pod("a", "1", "1Gi", json!({"spec": {"nodeName": "late"}})));
        s.upsert_node(node("late", "4", "8Gi", json!({})));
        assert_eq!(s.node("late").unwrap().requested.milli_cpu, 1000);
        s.upsert_node(node("late", "8", "8Gi", json!({})));
        assert_eq!(s.node("late").unwrap().requested.milli_cpu, 1000);
        assert_eq!(s.node("late").unwrap().allocatable.milli_cpu, 8000);
        s.upsert_node(node("other", "1", "1Gi", json!({})));
        s.remove_node("late");
        assert_eq!(s.nodes().len(), 1);
        assert_eq!(s.node("other").unwrap().name, "other");
        s.replace_pods(vec![]);
        assert_eq!(s.placement("default/a"), None);
    }
}
