//! The service model: a pure function from Services + EndpointSlices + this node to a [`ServiceTable`].
//!
//! Both kernel backends (eBPF maps and the nftables table) render the same table, so every Kubernetes
//! rule (which ports, which endpoints, traffic policies, affinity, which addresses are refused) is
//! decided here exactly once and unit-tested without root. Bad input never aborts the computation:
//! the offending service, port or endpoint is skipped and reported in [`ServiceTable::errors`], and
//! everything else is still rendered (a backend never sees a half-valid service port).

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

/// Kubernetes' default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// Kubernetes' upper bound for `sessionAffinityConfig.clientIP.timeoutSeconds` (one day).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The node the table is computed for: endpoints on this node are "local"; NodePorts answer on its IPs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub ips: Vec<Ipv4Addr>,
}

/// Knobs that are cluster policy rather than per-Service input.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Honour `spec.externalIPs`. Off by default: any user who can create a Service could otherwise
    /// intercept traffic to arbitrary addresses (CVE-2020-8554).
    pub allow_external_ips: bool,
}

/// L4 protocols the datapath implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IANA protocol number (what `meta l4proto` and the eBPF maps carry).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Where a frontend listens: a concrete VIP, or "every local address of the node" for NodePorts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FrontendAddr {
    Ip(Ipv4Addr),
    NodePort,
}

/// The lookup key of a frontend: address, port, protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FrontendKey {
    pub addr: FrontendAddr,
    pub port: u16,
    pub proto: Protocol,
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            FrontendAddr::Ip(ip) => write!(f, "{ip}:{}/{}", self.port, self.proto.name()),
            FrontendAddr::NodePort => write!(f, "<node>:{}/{}", self.port, self.proto.name()),
        }
    }
}

/// How a frontend is reached; decides which traffic policy applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

impl FrontendKind {
    /// External frontends obey `externalTrafficPolicy`; the ClusterIP obeys `internalTrafficPolicy`.
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }
}

/// One endpoint chosen for a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The endpoint runs on this node.
    pub local: bool,
}

/// `namespace/name:port-name` — what a frontend belongs to (for logs, errors and chain names).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// Everything a backend needs to program one frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    pub service: ServicePortName,
    pub kind: FrontendKind,
    /// Sorted, deduplicated. Empty means "drop/reject": no usable endpoint (never fall back to remote
    /// endpoints under a Local policy).
    pub backends: Vec<Backend>,
    /// ClientIP session affinity timeout in seconds.
    pub affinity_timeout_s: Option<u32>,
    /// Traffic from outside the node must be SNATed to the node (external frontend, Cluster policy);
    /// `false` preserves the client IP (Local policy) or is irrelevant (ClusterIP).
    pub masquerade_external: bool,
}

/// Why a service, port or endpoint was skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ModelError {
    #[error("service {service}: malformed object: {reason}")]
    Malformed { service: String, reason: String },
    #[error("service {service}: invalid clusterIP {value:?}")]
    BadClusterIp { service: String, value: String },
    #[error("service {service} port {port}: unsupported protocol {protocol} (only TCP and UDP); port skipped")]
    UnsupportedProtocol { service: String, port: String, protocol: String },
    #[error("service {service} port {port}: invalid port number {value}")]
    InvalidPort { service: String, port: String, value: i64 },
    #[error("service {service} port {port}: invalid nodePort {value} (must be 1..=65535)")]
    InvalidNodePort { service: String, port: String, value: i64 },
    #[error("service {service} port {port}: duplicate port name/protocol in the service")]
    DuplicatePort { service: String, port: String },
    #[error("service {service}: frontend {frontend} already owned by {owner}; skipped")]
    FrontendConflict { service: String, frontend: String, owner: String },
    #[error("service {service}: externalIP {ip} ignored: externalIPs are disabled by configuration (CVE-2020-8554)")]
    ExternalIpsDisabled { service: String, ip: String },
    #[error("service {service}: address {value:?} is not a valid IPv4 address; skipped")]
    BadAddress { service: String, value: String },
    #[error("service {service}: sessionAffinity timeout {value} out of range 1..=86400")]
    BadAffinityTimeout { service: String, value: i64 },
    #[error("endpointslice {slice}: {reason}; skipped")]
    BadSlice { slice: String, reason: String },
    #[error("endpointslice {slice}: endpoint {address} rejected: {reason}")]
    RejectedEndpoint { slice: String, address: String, reason: String },
}

/// The whole desired datapath for one node, keyed by frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTable {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    /// Everything that was skipped, with the reason (deterministic order).
    pub errors: Vec<ModelError>,
}

/// One change that turns the old table into the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Create or replace the frontend (its backend set, affinity or policy changed).
    Upsert(FrontendKey, Frontend),
    /// The frontend no longer exists.
    Remove(FrontendKey),
}

impl Change {
    pub fn key(&self) -> &FrontendKey {
        match self {
            Change::Upsert(k, _) | Change::Remove(k) => k,
        }
    }
}

impl ServiceTable {
    /// Builds the table. Pure: same input, same output, no I/O.
    pub fn build(
        services: &[Service],
        slices: &[EndpointSlice],
        node: &NodeInfo,
        config: &ModelConfig,
    ) -> ServiceTable {
        let mut table = ServiceTable::default();
        let endpoints = index_slices(slices, node, &mut table.errors);
        // Deterministic precedence for conflicts: services in namespace/name order.
        let mut ordered: Vec<&Service> = services.iter().collect();
        ordered.sort_by_key(|s| (s.metadata.namespace.clone().unwrap_or_default(), s.metadata.name.clone()));
        for svc in ordered {
            add_service(&mut table, svc, &endpoints, config);
        }
        table
    }

    /// The minimal per-frontend change set from `old` to `new` (unchanged frontends produce nothing).
    pub fn diff(old: &ServiceTable, new: &ServiceTable) -> Vec<Change> {
        let mut out = Vec::new();
        for (k, v) in &new.frontends {
            if old.frontends.get(k) != Some(v) {
                out.push(Change::Upsert(*k, v.clone()));
            }
        }
        for k in old.frontends.keys() {
            if !new.frontends.contains_key(k) {
                out.push(Change::Remove(*k));
            }
        }
        out
    }

    /// Total number of (frontend, backend) pairs.
    pub fn backend_count(&self) -> usize {
        self.frontends.values().map(|f| f.backends.len()).sum()
    }
}

/// A usable endpoint address from a slice, with the conditions that matter for selection.
#[derive(Clone, Debug)]
struct Candidate {
    ip: Ipv4Addr,
    port: u16,
    local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// (namespace, service name) → (port name, protocol) → candidates.
type EndpointIndex = BTreeMap<(String, String), BTreeMap<(String, Protocol), Vec<Candidate>>>;

fn index_slices(slices: &[EndpointSlice], node: &NodeInfo, errors: &mut Vec<ModelError>) -> EndpointIndex {
    let mut index: EndpointIndex = BTreeMap::new();
    let mut ordered: Vec<&EndpointSlice> = slices.iter().collect();
    ordered.sort_by_key(|s| (s.metadata.namespace.clone().unwrap_or_default(), s.metadata.name.clone()));
    for slice in ordered {
        let ns = slice.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let slice_name = format!("{ns}/{}", slice.metadata.name.as_deref().unwrap_or("<unnamed>"));
        let bad = |reason: &str| ModelError::BadSlice { slice: slice_name.clone(), reason: reason.into() };
        if slice.address_type != "IPv4" {
            // IPv6 and FQDN slices are legal Kubernetes objects this IPv4 datapath does not serve.
            if slice.address_type != "IPv6" && slice.address_type != "FQDN" {
                errors.push(bad(&format!("unknown addressType {:?}", slice.address_type)));
            }
            continue;
        }
        let Some(svc_name) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            errors.push(bad(&format!("missing label {SERVICE_NAME_LABEL}")));
            continue;
        };
        let mut ports = Vec::new();
        for p in slice.ports.iter().flatten() {
            let name = p.name.clone().unwrap_or_default();
            let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                // An SCTP/unknown endpoint port can only serve an equally unsupported service port,
                // which is reported there; nothing to add here.
                _ => continue,
            };
            match p.port.map(i64::from) {
                Some(n) if (1..=65535).contains(&n) => ports.push((name, proto, n as u16)),
                other => errors.push(bad(&format!("port {name:?} has invalid number {other:?}"))),
            }
        }
        for ep in &slice.endpoints {
            let Some(cand) = candidate(ep, node) else { continue };
            for addr in &ep.addresses {
                let ip = match addr.parse::<Ipv4Addr>() {
                    Ok(ip) => ip,
                    Err(_) => {
                        errors.push(ModelError::RejectedEndpoint {
                            slice: slice_name.clone(),
                            address: addr.clone(),
                            reason: "not an IPv4 address".into(),
                        });
                        continue;
                    }
                };
                if let Some(reason) = forbidden_endpoint(ip) {
                    errors.push(ModelError::RejectedEndpoint {
                        slice: slice_name.clone(),
                        address: addr.clone(),
                        reason: reason.into(),
                    });
                    continue;
                }
                for (pname, proto, port) in &ports {
                    index
                        .entry((ns.clone(), svc_name.clone()))
                        .or_default()
                        .entry((pname.clone(), *proto))
                        .or_default()
                        .push(Candidate { ip, port: *port, ..cand.clone() });
                }
            }
        }
    }
    index
}

/// Conditions per the EndpointSlice API: `ready` unset means ready; `serving` unset means `ready`;
/// `terminating` unset means not terminating.
fn candidate(ep: &Endpoint, node: &NodeInfo) -> Option<Candidate> {
    let c = ep.conditions.clone().unwrap_or_default();
    let ready = c.ready.unwrap_or(true);
    let serving = c.serving.unwrap_or(ready);
    let terminating = c.terminating.unwrap_or(false);
    if !ready && !serving {
        return None;
    }
    Some(Candidate {
        ip: Ipv4Addr::UNSPECIFIED,
        port: 0,
        local: ep.node_name.as_deref() == Some(node.name.as_str()),
        ready,
        serving,
        terminating,
    })
}

/// Endpoint addresses a proxy must never forward to (CVE-2021-25737 and friends).
pub fn forbidden_endpoint(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback range 127.0.0.0/8 is not allowed")
    } else if ip.is_link_local() {
        Some("link-local range 169.254.0.0/16 is not allowed")
    } else if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        Some("unspecified, multicast or broadcast address")
    } else {
        None
    }
}

/// KEP-1669 selection after topology filtering: ready endpoints; if none, serving-and-terminating ones.
fn select(cands: &[Candidate], local_only: bool) -> Vec<Backend> {
    let pool: Vec<&Candidate> = cands.iter().filter(|c| !local_only || c.local).collect();
    let ready: BTreeSet<Backend> =
        pool.iter().filter(|c| c.ready).map(|c| Backend { ip: c.ip, port: c.port, local: c.local }).collect();
    if !ready.is_empty() {
        return ready.into_iter().collect();
    }
    pool.iter()
        .filter(|c| c.serving && c.terminating)
        .map(|c| Backend { ip: c.ip, port: c.port, local: c.local })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn parse_protocol(p: &ServicePort) -> Result<Protocol, String> {
    match p.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        other => Err(other.to_string()),
    }
}

fn add_service(table: &mut ServiceTable, svc: &Service, endpoints: &EndpointIndex, config: &ModelConfig) {
    let ns = svc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let Some(name) = svc.metadata.name.clone() else {
        table
            .errors
            .push(ModelError::Malformed { service: format!("{ns}/<unnamed>"), reason: "metadata.name missing".into() });
        return;
    };
    let id = format!("{ns}/{name}");
    let Some(spec) = &svc.spec else {
        table.errors.push(ModelError::Malformed { service: id, reason: "spec missing".into() });
        return;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return; // DNS-only: nothing to program.
    }
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => return, // headless or not yet allocated
        Some(v) => match v.parse::<Ipv4Addr>() {
            Ok(ip) => ip,
            Err(_) => {
                // IPv6 single-stack services are legal but out of scope for this IPv4 datapath.
                if v.parse::<std::net::Ipv6Addr>().is_err() {
                    table.errors.push(ModelError::BadClusterIp { service: id, value: v.into() });
                }
                return;
            }
        },
    };
    let affinity_timeout_s = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let t = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .map(i64::from);
        match t {
            None => Some(DEFAULT_AFFINITY_TIMEOUT_S),
            Some(t) if (1..=i64::from(MAX_AFFINITY_TIMEOUT_S)).contains(&t) => Some(t as u32),
            Some(t) => {
                table.errors.push(ModelError::BadAffinityTimeout { service: id, value: t });
                return;
            }
        }
    } else {
        None
    };
    let ext_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let int_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let is_nodeport_type = matches!(spec.type_.as_deref(), Some("NodePort") | Some("LoadBalancer"));

    let mut external_ips = Vec::new();
    for v in spec.external_ips.iter().flatten() {
        if !config.allow_external_ips {
            table.errors.push(ModelError::ExternalIpsDisabled { service: id.clone(), ip: v.clone() });
            continue;
        }
        match v.parse::<Ipv4Addr>() {
            Ok(ip) => external_ips.push((FrontendKind::ExternalIp, ip)),
            Err(_) => table.errors.push(ModelError::BadAddress { service: id.clone(), value: v.clone() }),
        }
    }
    if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
        for ing in ingress.into_iter().flatten() {
            // ipMode Proxy means the LB does not deliver to the VIP itself: do not short-circuit it.
            if ing.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            if let Some(v) = &ing.ip {
                match v.parse::<Ipv4Addr>() {
                    Ok(ip) => external_ips.push((FrontendKind::LoadBalancer, ip)),
                    Err(_) => table.errors.push(ModelError::BadAddress { service: id.clone(), value: v.clone() }),
                }
            }
        }
    }

    let empty = BTreeMap::new();
    let svc_eps = endpoints.get(&(ns.clone(), name.clone())).unwrap_or(&empty);
    let mut seen_ports = BTreeSet::new();
    for p in spec.ports.iter().flatten() {
        let pname = p.name.clone().unwrap_or_default();
        let shown = if pname.is_empty() { p.port.to_string() } else { pname.clone() };
        let proto = match parse_protocol(p) {
            Ok(proto) => proto,
            Err(protocol) => {
                table.errors.push(ModelError::UnsupportedProtocol { service: id.clone(), port: shown, protocol });
                continue;
            }
        };
        if !(1..=65535).contains(&p.port) {
            table.errors.push(ModelError::InvalidPort { service: id.clone(), port: shown, value: p.port.into() });
            continue;
        }
        if !seen_ports.insert((pname.clone(), proto)) {
            table.errors.push(ModelError::DuplicatePort { service: id.clone(), port: shown });
            continue;
        }
        let port = p.port as u16;
        let spn = ServicePortName { namespace: ns.clone(), name: name.clone(), port: pname.clone() };
        let cands: &[Candidate] = svc_eps.get(&(pname.clone(), proto)).map(Vec::as_slice).unwrap_or(&[]);
        let internal = select(cands, int_local);
        let external = select(cands, ext_local);
        let mk = |kind: FrontendKind| {
            let ext = kind.is_external();
            Frontend {
                service: spn.clone(),
                kind,
                backends: if ext { external.clone() } else { internal.clone() },
                affinity_timeout_s,
                masquerade_external: ext && !ext_local,
            }
        };
        let mut wanted =
            vec![(FrontendKey { addr: FrontendAddr::Ip(cluster_ip), port, proto }, mk(FrontendKind::ClusterIp))];
        if is_nodeport_type && let Some(np) = p.node_port {
            if (1..=65535).contains(&np) {
                wanted.push((
                    FrontendKey { addr: FrontendAddr::NodePort, port: np as u16, proto },
                    mk(FrontendKind::NodePort),
                ));
            } else {
                table.errors.push(ModelError::InvalidNodePort {
                    service: id.clone(),
                    port: shown.clone(),
                    value: np.into(),
                });
            }
        }
        for (kind, ip) in &external_ips {
            wanted.push((FrontendKey { addr: FrontendAddr::Ip(*ip), port, proto }, mk(*kind)));
        }
        for (key, fe) in wanted {
            if let Some(owner) = table.frontends.get(&key) {
                table.errors.push(ModelError::FrontendConflict {
                    service: id.clone(),
                    frontend: key.to_string(),
                    owner: owner.service.to_string(),
                });
                continue;
            }
            table.frontends.insert(key, fe);
        }
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
