//! The pure allocation decision: no files, no locks, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::IpamError;

/// Who holds an address: the CNI attachment key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Owner { container_id: container_id.into(), ifname: ifname.into() }
    }
}

/// The addresses a node may hand out: the subnet without its network, gateway and broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

impl Pool {
    /// A pool for `subnet` (host bits are cleared) with the gateway on the first address.
    /// Subnets smaller than /30 have no address left for pods and are refused.
    pub fn new(subnet: Ipv4Net) -> Result<Pool, IpamError> {
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(IpamError::BadSubnet {
                subnet: subnet.to_string(),
                reason: "prefix longer than /30 leaves no pod addresses".into(),
            });
        }
        Ok(Pool { subnet, gateway: crate::spec::gateway_of(subnet) })
    }

    fn first(&self) -> u32 {
        u32::from(self.gateway) + 1
    }

    fn last(&self) -> u32 {
        u32::from(self.subnet.broadcast()) - 1
    }

    /// Number of assignable addresses.
    pub fn size(&self) -> usize {
        (self.last() - self.first() + 1) as usize
    }

    /// Whether `ip` may be handed to a pod.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= self.first() && v <= self.last()
    }
}

/// What [`allocate`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// The owner already held this address (retried ADD): nothing to persist.
    Existing(Ipv4Addr),
    /// A free address to persist for the owner.
    New(Ipv4Addr),
}

impl Allocation {
    pub fn ip(&self) -> Ipv4Addr {
        match *self {
            Allocation::Existing(ip) | Allocation::New(ip) => ip,
        }
    }
}

/// Picks an address for `owner`: its existing one, else the next free address after `last`
/// (round-robin, so a just-released address is not immediately reused while conntrack entries or
/// ARP caches may still point at the old pod), wrapping around the pool.
pub fn allocate(
    pool: &Pool,
    current: &BTreeMap<Ipv4Addr, Owner>,
    owner: &Owner,
    last: Option<Ipv4Addr>,
) -> Result<Allocation, IpamError> {
    if let Some((ip, _)) = current.iter().find(|(ip, o)| *o == owner && pool.contains(**ip)) {
        return Ok(Allocation::Existing(*ip));
    }
    let (first, end) = (pool.first(), pool.last());
    let start = match last {
        Some(l) if pool.contains(l) && u32::from(l) < end => u32::from(l) + 1,
        _ => first,
    };
    let size = pool.size() as u32;
    for i in 0..size {
        let v = first + (start - first + i) % size;
        let ip = Ipv4Addr::from(v);
        if !current.contains_key(&ip) {
            return Ok(Allocation::New(ip));
        }
    }
    Err(IpamError::Exhausted { subnet: pool.subnet, used: current.len() })
}

/// The addresses `owner` holds (to free on DEL).
pub fn release(current: &BTreeMap<Ipv4Addr, Owner>, owner: &Owner) -> Vec<Ipv4Addr> {
    current.iter().filter(|(_, o)| *o == owner).map(|(ip, _)| *ip).collect()
}

/// The allocations whose owner is not in `valid` (to free on GC).
pub fn gc(current: &BTreeMap<Ipv4Addr, Owner>, valid: &BTreeSet<Owner>) -> Vec<(Ipv4Addr, Owner)> {
    current.iter().filter(|(_, o)| !valid.contains(*o)).map(|(ip, o)| (*ip, o.clone())).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap()).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn never_network_gateway_or_broadcast() {
        let p = pool("10.0.0.0/29");
        let mut cur = BTreeMap::new();
        let mut got = Vec::new();
        for i in 0..p.size() {
            let o = Owner::new(format!("c{i}"), "eth0");
            let a = allocate(&p, &cur, &o, got.last().copied()).unwrap();
            cur.insert(a.ip(), o);
            got.push(a.ip());
        }
        assert_eq!(got, vec![ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.4"), ip("10.0.0.5"), ip("10.0.0.6")]);
        let e = allocate(&p, &cur, &Owner::new("x", "eth0"), got.last().copied()).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { used: 5, .. }), "{e}");
        assert!(e.to_string().contains("10.0.0.0/29"));
    }

    #[test]
    fn idempotent_per_owner() {
        let p = pool("10.0.0.0/24");
        let mut cur = BTreeMap::new();
        let o = Owner::new("c1", "eth0");
        let a = allocate(&p, &cur, &o, None).unwrap();
        assert_eq!(a, Allocation::New(ip("10.0.0.2")));
        cur.insert(a.ip(), o.clone());
        assert_eq!(allocate(&p, &cur, &o, Some(a.ip())).unwrap(), Allocation::Existing(ip("10.0.0.2")));
        // Same container, other interface: a different address.
        let o2 = Owner::new("c1", "net1");
        assert_eq!(allocate(&p, &cur, &o2, Some(a.ip())).unwrap(), Allocation::New(ip("10.0.0.3")));
    }

    #[test]
    fn round_robin_wraps_and_skips_used() {
        let p = pool("10.0.0.0/29");
        let mut cur = BTreeMap::new();
        cur.insert(ip("10.0.0.2"), Owner::new("a", "eth0"));
        // last at the end of the pool wraps to the start, skipping the used .2
        assert_eq!(allocate(&p, &cur, &Owner::new("b", "eth0"), Some(ip("10.0.0.6"))).unwrap().ip(), ip("10.0.0.3"));
        // a last outside the pool (e.g. the subnet changed) restarts at the beginning
        assert_eq!(allocate(&p, &cur, &Owner::new("b", "eth0"), Some(ip("192.168.0.9"))).unwrap().ip(), ip("10.0.0.3"));
        // a released address is not reused right away
        assert_eq!(allocate(&p, &cur, &Owner::new("b", "eth0"), Some(ip("10.0.0.3"))).unwrap().ip(), ip("10.0.0.4"));
    }

    #[test]
    fn too_small_subnets_refused_and_host_bits_cleared() {
        assert!(matches!(Pool::new("10.0.0.0/31".parse().unwrap()), Err(IpamError::BadSubnet { .. })));
        let p = Pool::new("10.0.0.77/24".parse().unwrap()).unwrap();
        assert_eq!(p.subnet, "10.0.0.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(p.gateway, ip("10.0.0.1"));
        assert_eq!(p.size(), 253);
        assert!(!p.contains(ip("10.0.0.255")) && !p.contains(ip("10.0.0.1")) && p.contains(ip("10.0.0.254")));
        assert_eq!(pool("10.0.0.0/30").size(), 1);
    }

    #[test]
    fn release_and_gc() {
        let mut cur = BTreeMap::new();
        cur.insert(ip("10.0.0.2"), Owner::new("a", "eth0"));
        cur.insert(ip("10.0.0.3"), Owner::new("b", "eth0"));
        cur.insert(ip("10.0.0.4"), Owner::new("a", "net1"));
        assert_eq!(release(&cur, &Owner::new("a", "eth0")), vec![ip("10.0.0.2")]);
        assert!(release(&cur, &Owner::new("zz", "eth0")).is_empty());
        let valid: BTreeSet<Owner> = [Owner::new("b", "eth0")].into_iter().collect();
        let stale: Vec<Ipv4Addr> = gc(&cur, &valid).into_iter().map(|(i, _)| i).collect();
        assert_eq!(stale, vec![ip("10.0.0.2"), ip("10.0.0.4")]);
        assert_eq!(gc(&cur, &BTreeSet::new()).len(), 3);
    }
}
