//! Server-side printing: `meta.k8s.io/v1 Table` responses (what `kubectl get` renders).
//!
//! Columns follow kubectl's built-in printers for the kinds users look at most; other kinds get
//! NAME and AGE. Priority-1 columns appear only with `-o wide`.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// kubectl's human-readable duration (`45s`, `3m20s`, `5h`, `3d4h`, `2y10d`).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h) = (s / 60, s / 3600);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", s % 60) }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 { format!("{}d", h / 24) } else { format!("{}d{}h", h / 24, h % 24) }
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else if h < 24 * 365 * 8 {
        let d = h / 24;
        if d % 365 == 0 { format!("{}y", d / 365) } else { format!("{}y{}d", d / 365, d % 365) }
    } else {
        format!("{}y", h / 24 / 365)
    }
}

fn age(ts: Option<&str>, now: DateTime<Utc>) -> String {
    match ts.and_then(|t| DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => human_duration((now - t.with_timezone(&Utc)).num_seconds()),
        None => "<unknown>".into(),
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn i(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn col(name: &str, ty: &str, priority: i64, desc: &str) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": ty, "format": format, "description": desc, "priority": priority})
}

/// Column definitions for `kind`.
pub fn columns(kind: &str) -> Vec<Value> {
    let name = col("Name", "string", 0, "Name must be unique within a namespace.");
    let age = col(
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match kind {
        "Pod" => vec![
            name,
            col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", 0, "The aggregate status of the containers in this pod."),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            age,
            col("IP", "string", 1, "IP address allocated to the pod. Routable at least within the cluster."),
            col("Node", "string", 1, "NodeName is a request to schedule this pod onto a specific node."),
            col(
                "Nominated Node",
                "string",
                1,
                "nominatedNodeName is set when this pod preempts other pods on the node.",
            ),
            col(
                "Readiness Gates",
                "string",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        "Service" => vec![
            name,
            col("Type", "string", 0, "type determines how the Service is exposed."),
            col("Cluster-IP", "string", 0, "clusterIP is the IP address of the service."),
            col(
                "External-IP",
                "string",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic.",
            ),
            col("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
            age,
            col(
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        "Deployment" => vec![
            name,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            age,
            col("Containers", "string", 1, "Names of each container in the template."),
            col("Images", "string", 1, "Images referenced by each container in the template."),
            col("Selector", "string", 1, "Label selector for pods."),
        ],
        "ReplicaSet" | "ReplicationController" => vec![
            name,
            col("Desired", "integer", 0, "Replicas is the number of desired replicas."),
            col("Current", "integer", 0, "Replicas is the most recently observed number of replicas."),
            col("Ready", "integer", 0, "The number of ready replicas for this replica set."),
            age,
            col("Containers", "string", 1, "Names of each container in the template."),
            col("Images", "string", 1, "Images referenced by each container in the template."),
            col("Selector", "string", 1, "Selector is a label query over pods that should match the replica count."),
        ],
        "Node" => vec![
            name,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            age,
            col("Version", "string", 0, "Kubelet Version reported by the node."),
            col("Internal-IP", "string", 1, "List of addresses reachable to the node."),
            col("External-IP", "string", 1, "List of addresses reachable to the node."),
            col(
                "OS-Image",
                "string",
                1,
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            col(
                "Kernel-Version",
                "string",
                1,
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            col(
                "Container-Runtime",
                "string",
                1,
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        "Event" => vec![
            col("Last Seen", "string", 0, "The last time this event was observed."),
            col("Type", "string", 0, "Type of this event (Normal, Warning), new types could be added in the future."),
            col(
                "Reason",
                "string",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            col("Object", "string", 0, "The object that this event is about."),
            col("Message", "string", 0, "A human-readable description of the status of this operation."),
        ],
        "Namespace" => vec![name, col("Status", "string", 0, "The status of the namespace"), age],
        "ConfigMap" => vec![name, col("Data", "string", 0, "Number of data entries"), age],
        "Secret" => vec![
            name,
            col("Type", "string", 0, "The type of the secret"),
            col("Data", "string", 0, "Number of data entries"),
            age,
        ],
        "ServiceAccount" => vec![name, col("Secrets", "string", 0, "Number of secrets"), age],
        "Endpoints" => vec![name, col("Endpoints", "string", 0, "Endpoints of the service"), age],
        "EndpointSlice" => vec![
            name,
            col("AddressType", "string", 0, "Type of address held in the EndpointSlice"),
            col("Ports", "string", 0, "Ports of the EndpointSlice"),
            col("Endpoints", "string", 0, "Endpoints of the EndpointSlice"),
            age,
        ],
        "DaemonSet" => vec![
            name,
            col("Desired", "integer", 0, ""),
            col("Current", "integer", 0, ""),
            col("Ready", "integer", 0, ""),
            col("Up-to-date", "integer", 0, ""),
            col("Available", "integer", 0, ""),
            col("Node Selector", "string", 0, ""),
            age,
        ],
        "StatefulSet" => vec![name, col("Ready", "string", 0, "Number of the pod with ready state"), age],
        "Job" => vec![
            name,
            col("Status", "string", 0, "Status of the job."),
            col("Completions", "string", 0, "The completion status of the job."),
            col("Duration", "string", 0, "Time required to complete the job."),
            age,
        ],
        "CronJob" => vec![
            name,
            col("Schedule", "string", 0, "The schedule in Cron format."),
            col("Suspend", "boolean", 0, "Whether the cron job is suspended."),
            col("Active", "integer", 0, "Number of currently running jobs."),
            col("Last Schedule", "string", 0, "Time since the last scheduled job."),
            age,
        ],
        "Lease" => vec![name, col("Holder", "string", 0, "The holder of the lease"), age],
        "Role" | "ClusterRole" => vec![name, col("Created At", "date", 0, "Time when the role was created.")],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            name,
            col("Role", "string", 0, "Role references the role that this binding grants."),
            age,
            col("Users", "string", 1, "Users in the binding."),
            col("Groups", "string", 1, "Groups in the binding."),
            col("ServiceAccounts", "string", 1, "ServiceAccounts in the binding."),
        ],
        _ => vec![name, age],
    }
}

fn pod_cells(p: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let total = p.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
    let statuses = p.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
    let ready = statuses.iter().filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true)).count();
    let restarts: i64 = statuses.iter().map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0)).sum();
    let mut reason = s(p, "/status/phase").to_string();
    if !s(p, "/status/reason").is_empty() {
        reason = s(p, "/status/reason").to_string();
    }
    for c in &statuses {
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.to_string();
        } else if let Some(r) = c.pointer("/state/terminated/reason").and_then(Value::as_str) {
            reason = r.to_string();
        }
    }
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(p, "/status/reason") == "NodeLost" { "Unknown".into() } else { "Terminating".into() };
    }
    let ip = s(p, "/status/podIP");
    let node = s(p, "/spec/nodeName");
    let nominated = s(p, "/status/nominatedNodeName");
    vec![
        json!(s(p, "/metadata/name")),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts.to_string()),
        json!(age(p.pointer("/metadata/creationTimestamp").and_then(Value::as_str), now)),
        json!(if ip.is_empty() { "<none>" } else { ip }),
        json!(if node.is_empty() { "<none>" } else { node }),
        json!(if nominated.is_empty() { "<none>" } else { nominated }),
        json!("<none>"),
    ]
}

fn join_or_none(v: Vec<String>) -> String {
    if v.is_empty() { "<none>".into() } else { v.join(",") }
}

fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else { return "<none>".into() };
    let map = sel.get("matchLabels").unwrap_or(sel);
    let mut parts: Vec<String> = map
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    for e in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let vals: Vec<&str> =
            e.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let op = e.get("operator").and_then(Value::as_str).unwrap_or_default();
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        parts.push(match op {
            "In" => format!("{key} in ({})", vals.join(",")),
            "NotIn" => format!("{key} notin ({})", vals.join(",")),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    join_or_none(parts)
}

fn containers_images(obj: &Value) -> (String, String) {
    let cs = obj.pointer("/spec/template/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
    let names = cs.iter().map(|c| c.get("name").and_then(Value::as_str).unwrap_or_default().to_string()).collect();
    let images = cs.iter().map(|c| c.get("image").and_then(Value::as_str).unwrap_or_default().to_string()).collect();
    (join_or_none(names), join_or_none(images))
}

fn count(v: &Value, ptr: &str) -> usize {
    v.pointer(ptr).and_then(Value::as_object).map_or(0, |m| m.len())
}

/// The row cells for `obj` of `kind`.
pub fn cells(kind: &str, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let name = json!(s(obj, "/metadata/name"));
    let created = age(obj.pointer("/metadata/creationTimestamp").and_then(Value::as_str), now);
    match kind {
        "Pod" => pod_cells(obj, now),
        "Service" => {
            let ports: Vec<String> = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) if np != 0 => format!("{}:{np}/{proto}", i(p, "/port")),
                        _ => format!("{}/{proto}", i(p, "/port")),
                    }
                })
                .collect();
            let mut ext: Vec<String> = obj
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let ty = s(obj, "/spec/type");
            if ty == "ExternalName" {
                ext.push(s(obj, "/spec/externalName").to_string());
            }
            let ext = if ext.is_empty() && ty == "LoadBalancer" { "<pending>".to_string() } else { join_or_none(ext) };
            let cip = s(obj, "/spec/clusterIP");
            vec![
                name,
                json!(ty),
                json!(if cip.is_empty() { "<none>" } else { cip }),
                json!(ext),
                json!(join_or_none(ports)),
                json!(created),
                json!(selector_string(obj.pointer("/spec/selector"))),
            ]
        }
        "Deployment" => {
            let (c, im) = containers_images(obj);
            vec![
                name,
                json!(format!("{}/{}", i(obj, "/status/readyReplicas"), i(obj, "/spec/replicas"))),
                json!(i(obj, "/status/updatedReplicas")),
                json!(i(obj, "/status/availableReplicas")),
                json!(created),
                json!(c),
                json!(im),
                json!(selector_string(obj.pointer("/spec/selector"))),
            ]
        }
        "ReplicaSet" | "ReplicationController" => {
            let (c, im) = containers_images(obj);
            vec![
                name,
                json!(i(obj, "/spec/replicas")),
                json!(i(obj, "/status/replicas")),
                json!(i(obj, "/status/readyReplicas")),
                json!(created),
                json!(c),
                json!(im),
                json!(selector_string(obj.pointer("/spec/selector"))),
            ]
        }
        "Node" => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                .map(|c| if c.get("status").and_then(Value::as_str) == Some("True") { "Ready" } else { "NotReady" })
                .unwrap_or("Unknown");
            let status = if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let roles: Vec<String> = obj
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(str::to_string))
                .collect();
            let addr = |t: &str| {
                obj.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|a| a.get("type").and_then(Value::as_str) == Some(t))
                    .and_then(|a| a.get("address").and_then(Value::as_str))
                    .unwrap_or("<none>")
                    .to_string()
            };
            vec![
                name,
                json!(status),
                json!(join_or_none(roles)),
                json!(created),
                json!(s(obj, "/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(s(obj, "/status/nodeInfo/osImage")),
                json!(s(obj, "/status/nodeInfo/kernelVersion")),
                json!(s(obj, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        "Event" => {
            let last = ["/lastTimestamp", "/eventTime", "/metadata/creationTimestamp"]
                .iter()
                .find_map(|p| obj.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty()));
            let kind = s(obj, "/involvedObject/kind").to_ascii_lowercase();
            vec![
                json!(age(last, now)),
                json!(s(obj, "/type")),
                json!(s(obj, "/reason")),
                json!(format!("{kind}/{}", s(obj, "/involvedObject/name"))),
                json!(s(obj, "/message").trim()),
            ]
        }
        "Namespace" => vec![name, json!(s(obj, "/status/phase")), json!(created)],
        "ConfigMap" => vec![name, json!(count(obj, "/data") + count(obj, "/binaryData")), json!(created)],
        "Secret" => vec![name, json!(s(obj, "/type")), json!(count(obj, "/data")), json!(created)],
        "ServiceAccount" => {
            vec![name, json!(obj.get("secrets").and_then(Value::as_array).map_or(0, Vec::len)), json!(created)]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for sub in obj.get("subsets").and_then(Value::as_array).into_iter().flatten() {
                for a in sub.get("addresses").and_then(Value::as_array).into_iter().flatten() {
                    for p in sub.get("ports").and_then(Value::as_array).into_iter().flatten() {
                        eps.push(format!("{}:{}", s(a, "/ip"), i(p, "/port")));
                    }
                }
            }
            vec![name, json!(join_or_none(eps)), json!(created)]
        }
        "EndpointSlice" => {
            // As upstream prints them: port numbers, then the first three addresses.
            let ports: Vec<String> = obj
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| i(p, "/port").to_string())
                .collect();
            let addrs: Vec<&str> = obj
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| {
                    e.get("addresses").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
                })
                .collect();
            let shown = match addrs.len() {
                0 => "<unset>".to_string(),
                n if n > 3 => format!("{} + {} more...", addrs[..3].join(","), n - 3),
                _ => addrs.join(","),
            };
            let ports = if ports.is_empty() { "<unset>".to_string() } else { ports.join(",") };
            vec![name, json!(s(obj, "/addressType")), json!(ports), json!(shown), json!(created)]
        }
        "DaemonSet" => vec![
            name,
            json!(i(obj, "/status/desiredNumberScheduled")),
            json!(i(obj, "/status/currentNumberScheduled")),
            json!(i(obj, "/status/numberReady")),
            json!(i(obj, "/status/updatedNumberScheduled")),
            json!(i(obj, "/status/numberAvailable")),
            json!(selector_string(obj.pointer("/spec/template/spec/nodeSelector"))),
            json!(created),
        ],
        "StatefulSet" => vec![
            name,
            json!(format!("{}/{}", i(obj, "/status/readyReplicas"), i(obj, "/spec/replicas"))),
            json!(created),
        ],
        "Job" => {
            let status = if i(obj, "/status/succeeded") >= i(obj, "/spec/completions").max(1) {
                "Complete"
            } else if i(obj, "/status/failed") > 0 {
                "Failed"
            } else {
                "Running"
            };
            vec![
                name,
                json!(status),
                json!(format!("{}/{}", i(obj, "/status/succeeded"), i(obj, "/spec/completions").max(1))),
                json!(""),
                json!(created),
            ]
        }
        "CronJob" => vec![
            name,
            json!(s(obj, "/spec/schedule")),
            json!(obj.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false)),
            json!(obj.pointer("/status/active").and_then(Value::as_array).map_or(0, Vec::len)),
            json!(
                obj.pointer("/status/lastScheduleTime")
                    .and_then(Value::as_str)
                    .map_or("<none>".to_string(), |t| age(Some(t), now))
            ),
            json!(created),
        ],
        "Lease" => vec![name, json!(s(obj, "/spec/holderIdentity")), json!(created)],
        "Role" | "ClusterRole" => vec![name, json!(s(obj, "/metadata/creationTimestamp"))],
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = |kind: &str| {
                let names: Vec<String> = obj
                    .get("subjects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|x| s(x, "/kind") == kind)
                    .map(|x| match s(x, "/namespace") {
                        ns if !ns.is_empty() && kind == "ServiceAccount" => format!("{ns}/{}", s(x, "/name")),
                        _ => s(x, "/name").to_string(),
                    })
                    .collect();
                json!(names.join(", "))
            };
            let role = format!("{}/{}", s(obj, "/roleRef/kind"), s(obj, "/roleRef/name"));
            vec![name, json!(role), json!(created), subjects("User"), subjects("Group"), subjects("ServiceAccount")]
        }
        _ => vec![name, json!(created)],
    }
}

/// How much of each object goes into `rows[].object`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

/// One table row for `obj`.
pub fn row(kind: &str, obj: &Value, include: IncludeObject, now: DateTime<Utc>) -> Value {
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
        }),
        IncludeObject::Object => obj.clone(),
    };
    json!({"cells": cells(kind, obj, now), "object": object})
}

/// A full Table for a list of objects.
pub fn table(kind: &str, objs: &[Value], meta: Value, include: IncludeObject, with_columns: bool) -> Value {
    let now = Utc::now();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": if with_columns { Value::Array(columns(kind)) } else { Value::Null },
        "rows": objs.iter().map(|o| row(kind, o, include, now)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_match_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (3 * 3600 + 120, "3h2m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600 * 4, "3d4h"),
            (40 * 86400, "40d"),
            (3 * 365 * 86400 + 10 * 86400, "3y10d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn pod_and_service_rows_have_one_cell_per_column() {
        let now = Utc::now();
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": now.to_rfc3339()},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}});
        let cells = cells("Pod", &pod, now);
        assert_eq!(cells.len(), columns("Pod").len());
        assert_eq!(&cells[..4], &[json!("p"), json!("1/2"), json!("Running"), json!("3")]);
        assert_eq!(cells[6], json!("n1"));
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.9", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}], "selector": {"app": "x"}}});
        let cells = super::cells("Service", &svc, now);
        assert_eq!(cells.len(), columns("Service").len());
        assert_eq!(cells[4], json!("80:30080/TCP"));
        for kind in [
            "Deployment",
            "ReplicaSet",
            "Node",
            "Event",
            "Namespace",
            "ConfigMap",
            "Secret",
            "Job",
            "CronJob",
            "DaemonSet",
            "StatefulSet",
            "Lease",
            "Endpoints",
            "ServiceAccount",
            "Other",
        ] {
            assert_eq!(super::cells(kind, &json!({}), now).len(), columns(kind).len(), "{kind}");
        }
    }
}
