//! The Endpoints object of a Service with a selector, as a pure function.
//!
//! Same pod selection as the slices ([`crate::endpointslice::plan`]) with the older object's
//! rules: terminating pods are left out unless the Service sets `publishNotReadyAddresses`;
//! a ready pod goes to `addresses`, any other to `notReadyAddresses`; only the pod's first IP
//! of the Service's primary family is used. Addresses are grouped into subsets by the set of
//! ports they serve (upstream's `RepackSubsets`), sorted, so equal input gives equal output and
//! an unchanged Service writes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, ObjectReference, Pod, Service};

use crate::endpointslice::plan as slices;

/// The subsets a Service's Endpoints object should hold.
pub fn subsets(svc: &Service, pods: &[Pod]) -> Vec<EndpointSubset> {
    let spec = svc.spec.clone().unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses == Some(true);
    let fam = slices::families(svc).into_iter().next().unwrap_or_default();
    let has_ports = spec.ports.as_ref().is_some_and(|p| !p.is_empty());
    // ip → (address, ready, ports)
    type PortKey = (String, i32, String);
    let mut by_ip: BTreeMap<String, (EndpointAddress, bool, Vec<PortKey>)> = BTreeMap::new();
    let mut port_info: BTreeMap<PortKey, EndpointPort> = BTreeMap::new();
    for pod in pods {
        if pod.metadata.namespace != svc.metadata.namespace
            || !slices::selects(&selector, pod.metadata.labels.as_ref())
            || !slices::eligible(pod, publish)
        {
            continue;
        }
        let Some(ip) = slices::pod_ips(pod).into_iter().find(|ip| slices::family(ip) == Some(fam.as_str())) else {
            continue;
        };
        let ports = slices::pod_ports(svc, pod);
        if ports.is_empty() && has_ports {
            continue;
        }
        let mut keys = Vec::new();
        for p in ports {
            let key = (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or_default(),
                p.protocol.clone().unwrap_or_default(),
            );
            port_info.insert(
                key.clone(),
                EndpointPort {
                    name: p.name.filter(|n| !n.is_empty()),
                    port: p.port.unwrap_or_default(),
                    protocol: p.protocol,
                    app_protocol: p.app_protocol,
                },
            );
            keys.push(key);
        }
        keys.sort();
        let addr = EndpointAddress {
            ip: ip.clone(),
            hostname: slices::hostname(svc, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
        };
        let ready = publish || slices::pod_ready(pod);
        by_ip.insert(ip, (addr, ready, keys));
    }
    let mut groups: BTreeMap<Vec<PortKey>, EndpointSubset> = BTreeMap::new();
    for (_, (addr, ready, keys)) in by_ip {
        let s = groups.entry(keys.clone()).or_insert_with(|| EndpointSubset {
            ports: (!keys.is_empty()).then(|| keys.iter().filter_map(|k| port_info.get(k).cloned()).collect()),
            ..Default::default()
        });
        let list = if ready { &mut s.addresses } else { &mut s.not_ready_addresses };
        list.get_or_insert_with(Vec::new).push(addr);
    }
    groups.into_values().collect()
}

/// The labels of a Service's Endpoints object: the Service's own, plus the headless marker.
pub fn labels(svc: &Service) -> BTreeMap<String, String> {
    let mut l = svc.metadata.labels.clone().unwrap_or_default();
    l.remove(slices::HEADLESS);
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        l.insert(slices::HEADLESS.into(), String::new());
    }
    l
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, ready: bool, port: i32, deleting: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap();
        if deleting {
            p.metadata.deletion_timestamp = Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        }
        p
    }

    fn svc(publish: bool) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"selector": {"app": "web"}, "publishNotReadyAddresses": publish,
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))
        .unwrap()
    }

    fn ips(l: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        l.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_not_ready_terminating_and_port_groups() {
        let pods = vec![
            pod("b", "10.0.0.2", false, 8080, false),
            pod("a", "10.0.0.1", true, 8080, false),
            pod("c", "10.0.0.3", true, 8080, true),
            pod("d", "10.0.0.4", true, 9090, false),
        ];
        let s = subsets(&svc(false), &pods);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].ports.as_ref().unwrap()[0].port, 8080);
        assert_eq!(ips(&s[0].addresses), ["10.0.0.1"]);
        assert_eq!(ips(&s[0].not_ready_addresses), ["10.0.0.2"]);
        assert_eq!(s[1].ports.as_ref().unwrap()[0].port, 9090);
        assert_eq!(s[0].addresses.as_ref().unwrap()[0].target_ref.as_ref().unwrap().name.as_deref(), Some("a"));

        // publishNotReadyAddresses: every pod, terminating included, is an address.
        let s = subsets(&svc(true), &pods);
        assert_eq!(ips(&s[0].addresses), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert!(s[0].not_ready_addresses.is_none());
        assert!(subsets(&svc(false), &[]).is_empty());
    }
}
