//! Node facts: what the agent reports about its node (kubelet's `NodeStatus` addresses and
//! capacity), gathered through netlink (`keelson_cni::netlink`, the same seam the CNI plugin and the
//! overlay use) and `/proc`, never by parsing the output of `ip`.
//!
//! Gathering is a thin shell ([`gather`]); choosing addresses and building the `NodeStatus` are
//! pure and unit-tested. When the agent joins an API server, [`object`] (pure) builds the Node
//! object and its conditions from these facts and [`heartbeat`] registers the Node, renews its
//! Lease and keeps its status current.

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keelson_cni::netlink::{LinkInfo, Netlink, NetlinkError};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub mod heartbeat;
pub mod object;

/// kubelet's default `maxPods`.
pub const DEFAULT_MAX_PODS: u32 = 110;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("netlink: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("/proc/meminfo: {0}")]
    Meminfo(String),
}

/// What the node is, as kubelet reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub hostname: String,
    /// Global unicast addresses of up, non-loopback links: IPv4 first, in link order.
    pub addresses: Vec<IpAddr>,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Size of the root filesystem (kubelet's `ephemeral-storage` capacity).
    pub ephemeral_storage_bytes: u64,
    pub max_pods: u32,
}

impl NodeFacts {
    /// The address pods see as `status.hostIP`: the first one.
    pub fn internal_ip(&self) -> Option<IpAddr> {
        self.addresses.first().copied()
    }

    /// `status.addresses` and `status.capacity`/`allocatable` (no reservations yet: equal).
    pub fn node_status(&self) -> NodeStatus {
        let mut addresses: Vec<NodeAddress> =
            self.addresses.iter().map(|a| NodeAddress { type_: "InternalIP".into(), address: a.to_string() }).collect();
        addresses.push(NodeAddress { type_: "Hostname".into(), address: self.hostname.clone() });
        let capacity = BTreeMap::from([
            ("cpu".to_string(), Quantity(self.cpus.to_string())),
            ("memory".to_string(), Quantity(format!("{}Ki", self.memory_bytes / 1024))),
            ("ephemeral-storage".to_string(), Quantity(format!("{}Ki", self.ephemeral_storage_bytes / 1024))),
            ("pods".to_string(), Quantity(self.max_pods.to_string())),
        ]);
        NodeStatus {
            addresses: Some(addresses),
            allocatable: Some(capacity.clone()),
            capacity: Some(capacity),
            ..Default::default()
        }
    }
}

fn global_unicast(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_multicast()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// The node's addresses from links and their addresses: up, non-loopback links only; global
/// unicast addresses; IPv4 before IPv6, otherwise in link order.
pub fn pick_addresses(links: &[(LinkInfo, Vec<IpNet>)]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = links
        .iter()
        .filter(|(l, _)| l.up && l.name != "lo")
        .flat_map(|(_, addrs)| addrs.iter().map(|a| a.addr()))
        .filter(global_unicast)
        .collect();
    out.sort_by_key(|a| a.is_ipv6());
    out.dedup();
    out
}

/// `MemTotal` from `/proc/meminfo` text, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let kb = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.split_whitespace().next()?.parse::<u64>().ok()?;
    kb.checked_mul(1024)
}

/// Reads the facts from the kernel: links and addresses through `nl`, memory from `/proc/meminfo`,
/// CPUs from the scheduler affinity. Blocking (netlink round trips): call from `spawn_blocking`.
pub fn gather(nl: &mut impl Netlink, hostname: &str, max_pods: u32) -> Result<NodeFacts, NodeError> {
    let mut links = Vec::new();
    for l in nl.links()? {
        let addrs = nl.addresses(l.index)?;
        links.push((l, addrs));
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| NodeError::Meminfo(e.to_string()))?;
    let memory_bytes = parse_meminfo(&meminfo).ok_or_else(|| NodeError::Meminfo("no MemTotal line".into()))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let ephemeral_storage_bytes =
        nix::sys::statvfs::statvfs("/").map_or(0, |s| s.blocks().saturating_mul(s.fragment_size()));
    Ok(NodeFacts {
        hostname: hostname.to_string(),
        addresses: pick_addresses(&links),
        cpus,
        memory_bytes,
        ephemeral_storage_bytes,
        max_pods,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn link(index: u32, name: &str, up: bool) -> LinkInfo {
        LinkInfo { index, name: name.into(), up, ..Default::default() }
    }

    #[test]
    fn addresses_skip_loopback_down_links_and_link_local() {
        let links = vec![
            (link(1, "lo", true), vec!["127.0.0.1/8".parse().unwrap(), "::1/128".parse().unwrap()]),
            (link(2, "eth0", true), vec!["fe80::1/64".parse().unwrap(), "2001:db8::5/64".parse().unwrap()]),
            (link(3, "eth1", false), vec!["10.9.9.9/24".parse().unwrap()]),
            (link(4, "eth2", true), vec!["169.254.1.1/16".parse().unwrap(), "192.168.1.10/24".parse().unwrap()]),
        ];
        let got: Vec<String> = pick_addresses(&links).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, vec!["192.168.1.10", "2001:db8::5"]);
    }

    #[test]
    fn meminfo_and_node_status() {
        assert_eq!(parse_meminfo("MemFree: 1 kB\nMemTotal:       2048 kB\n"), Some(2 << 20));
        assert_eq!(parse_meminfo("garbage"), None);
        let f = NodeFacts {
            hostname: "n1".into(),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            cpus: 2,
            memory_bytes: 4 << 30,
            ephemeral_storage_bytes: 10 << 30,
            max_pods: DEFAULT_MAX_PODS,
        };
        assert_eq!(f.internal_ip().map(|a| a.to_string()).as_deref(), Some("10.0.0.1"));
        let st = f.node_status();
        let cap = st.capacity.unwrap();
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["memory"].0, "4194304Ki");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(cap["ephemeral-storage"].0, "10485760Ki");
        let addrs = st.addresses.unwrap();
        assert_eq!((addrs[0].type_.as_str(), addrs[1].type_.as_str()), ("InternalIP", "Hostname"));
    }
}
