//! Service/EndpointSlice builders shared by the eBPF and nftables backend tests, so both backends
//! are exercised with identical inputs.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use crate::model::{ModelConfig, NodeInfo, ServiceTable};

/// Node `n1` with the given addresses.
pub fn node(ips: &[&str]) -> NodeInfo {
    NodeInfo { name: "n1".into(), ips: ips.iter().map(|ip| ip.parse().unwrap()).collect() }
}

/// A Service with one `http` port 80 and NodePort 30000 + the last octet of `ip`; `extra` is merged
/// into the spec.
pub fn svc(name: &str, ip: &str, extra: Value) -> Service {
    let last: u16 = ip.rsplit('.').next().unwrap().parse().unwrap();
    let mut spec = json!({"clusterIP": ip, "ports": [{"name": "http", "port": 80, "nodePort": 30000 + last}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})).unwrap()
}

/// The EndpointSlice of Service `name`: `(ip, node)` endpoints on port 8080 (`http`).
pub fn slice(name: &str, eps: &[(&str, &str)]) -> EndpointSlice {
    let endpoints: Vec<Value> = eps.iter().map(|(ip, n)| json!({"addresses": [ip], "nodeName": n})).collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-x"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints}))
    .unwrap()
}

/// The service table on `node`.
pub fn table_on(node: &NodeInfo, svcs: &[Service], slices: &[EndpointSlice]) -> ServiceTable {
    ServiceTable::build(svcs, slices, node, &ModelConfig::default())
}
