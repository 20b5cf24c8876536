//! Pod quality-of-service class (`status.qosClass`), as upstream's `ComputePodQOS`.
//!
//! Why here: the API server reports the class in the pod status and the agent places the pod's
//! cgroup by it; if they computed it differently a pod would sit in a tier other than the one
//! `kubectl get pod -o yaml` shows. Rules (cpu and memory only, app and init containers):
//! requests and limits above zero are summed over the containers; a container without both a
//! cpu and a memory limit makes the pod not Guaranteed; nothing requested or limited is
//! BestEffort; Guaranteed needs every summed request to equal its summed limit (compared
//! exactly, `1` == `1000m`), else Burstable. A missing request counts as its limit, which is what
//! upstream's defaulting stores before the class is computed.

use std::collections::BTreeMap;

use crate::quantity;

/// A pod's quality-of-service class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The API spelling (`Guaranteed`, `Burstable`, `BestEffort`).
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// One container's resource lists as (resource name, quantity string) pairs.
#[derive(Debug, Clone, Default)]
pub struct ContainerResources<'a> {
    pub requests: Vec<(&'a str, &'a str)>,
    pub limits: Vec<(&'a str, &'a str)>,
}

const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

/// Positive cpu/memory amounts of a list, in nanos; unparseable quantities count as absent
/// (validation refuses them before anything is stored or run).
fn positive(list: &[(&str, &str)]) -> BTreeMap<&'static str, i128> {
    let mut out = BTreeMap::new();
    for (name, q) in list {
        let Some(res) = QOS_RESOURCES.iter().find(|r| *r == name) else { continue };
        if let Ok(v) = quantity::parse(q.trim()).map(|p| p.nanos())
            && v > 0
        {
            out.insert(*res, v);
        }
    }
    out
}

/// The class of a pod whose app and init containers have these resources.
pub fn qos_class<'a>(containers: impl IntoIterator<Item = ContainerResources<'a>>) -> QosClass {
    let mut requests: BTreeMap<&str, i128> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i128> = BTreeMap::new();
    let mut guaranteed = true;
    for c in containers {
        let lim = positive(&c.limits);
        let mut req = positive(&c.requests);
        // Defaulting: a resource with a limit and no request requests its limit.
        for (name, _) in &c.limits {
            if !c.requests.iter().any(|(r, _)| r == name)
                && let Some((res, v)) = lim.get_key_value(name)
            {
                req.insert(*res, *v);
            }
        }
        for (k, v) in req {
            *requests.entry(k).or_default() = requests.get(k).copied().unwrap_or(0).saturating_add(v);
        }
        if QOS_RESOURCES.iter().any(|r| !lim.contains_key(r)) {
            guaranteed = false;
        }
        for (k, v) in lim {
            *limits.entry(k).or_default() = limits.get(k).copied().unwrap_or(0).saturating_add(v);
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    if guaranteed && requests.len() == limits.len() && requests.iter().all(|(k, v)| limits.get(k) == Some(v)) {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// Resources of every app and init container of a pod spec in JSON form.
pub fn containers_of_json(spec: &serde_json::Value) -> Vec<ContainerResources<'_>> {
    fn list<'a>(c: &'a serde_json::Value, part: &str) -> Vec<(&'a str, &'a str)> {
        c.pointer(&format!("/resources/{part}"))
            .and_then(serde_json::Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v))).collect())
            .unwrap_or_default()
    }
    ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(serde_json::Value::as_array))
        .flatten()
        .map(|c| ContainerResources { requests: list(c, "requests"), limits: list(c, "limits") })
        .collect()
}

/// Resources of every app and init container of a typed pod spec.
pub fn containers_of(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<ContainerResources<'_>> {
    type List = BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>;
    fn list(m: Option<&List>) -> Vec<(&str, &str)> {
        m.map(|m| m.iter().map(|(k, v)| (k.as_str(), v.0.as_str())).collect()).unwrap_or_default()
    }
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| {
            let r = c.resources.as_ref();
            ContainerResources {
                requests: list(r.and_then(|r| r.requests.as_ref())),
                limits: list(r.and_then(|r| r.limits.as_ref())),
            }
        })
        .collect()
}
