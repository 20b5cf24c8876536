//! ClusterIP and NodePort allocation.
//!
//! The allocators are in-memory bitmaps rebuilt from the stored Services at start-up; the stored
//! Service is the record of an allocation, so a crash can never leak or double-assign: on restart
//! the set is recomputed from what was acknowledged.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("range is full")]
    Full,
    #[error("provided IP {ip} is not in the valid range. The range of valid IPs is {range}")]
    OutOfRange { ip: Ipv4Addr, range: Ipv4Net },
    #[error("provided IP {0} is already allocated")]
    IpTaken(Ipv4Addr),
    #[error("provided port {port} is not in the valid range. The range of valid ports is {lo}-{hi}")]
    PortOutOfRange { port: u16, lo: u16, hi: u16 },
    #[error("provided port {0} is already allocated")]
    PortTaken(u16),
}

/// Allocation state for one server.
#[derive(Debug, Clone)]
pub struct Allocator {
    cidr: Ipv4Net,
    ips: BTreeSet<Ipv4Addr>,
    next_ip: u32,
    ports: BTreeSet<u16>,
    port_range: (u16, u16),
    next_port: u16,
}

impl Allocator {
    pub fn new(cidr: Ipv4Net, port_range: (u16, u16)) -> Self {
        Allocator {
            cidr,
            ips: BTreeSet::new(),
            next_ip: 0,
            ports: BTreeSet::new(),
            port_range,
            next_port: port_range.0,
        }
    }

    /// The first usable address (the `kubernetes` Service's ClusterIP).
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    fn usable(&self) -> (u32, u32) {
        let net = u32::from(self.cidr.network());
        let bcast = u32::from(self.cidr.broadcast());
        (net + 1, bcast.saturating_sub(1))
    }

    /// Reserves a specific IP.
    pub fn claim_ip(&mut self, ip: Ipv4Addr) -> Result<(), AllocError> {
        let (lo, hi) = self.usable();
        let n = u32::from(ip);
        if n < lo || n > hi {
            return Err(AllocError::OutOfRange { ip, range: self.cidr });
        }
        if !self.ips.insert(ip) {
            return Err(AllocError::IpTaken(ip));
        }
        Ok(())
    }

    /// Picks the next free IP (round-robin from the last allocation, like kube's bitmap allocator).
    pub fn allocate_ip(&mut self) -> Result<Ipv4Addr, AllocError> {
        let (lo, hi) = self.usable();
        let size = hi - lo + 1;
        for i in 0..size {
            let n = lo + (self.next_ip + i) % size;
            let ip = Ipv4Addr::from(n);
            if self.ips.insert(ip) {
                self.next_ip = (n - lo + 1) % size;
                return Ok(ip);
            }
        }
        Err(AllocError::Full)
    }

    pub fn release_ip(&mut self, ip: Ipv4Addr) {
        self.ips.remove(&ip);
    }

    pub fn claim_port(&mut self, port: u16) -> Result<(), AllocError> {
        let (lo, hi) = self.port_range;
        if port < lo || port > hi {
            return Err(AllocError::PortOutOfRange { port, lo, hi });
        }
        if !self.ports.insert(port) {
            return Err(AllocError::PortTaken(port));
        }
        Ok(())
    }

    pub fn allocate_port(&mut self) -> Result<u16, AllocError> {
        let (lo, hi) = self.port_range;
        let size = u32::from(hi - lo) + 1;
        for i in 0..size {
            let p = (u32::from(lo) + (u32::from(self.next_port - lo) + i) % size) as u16;
            if self.ports.insert(p) {
                self.next_port = if p == hi { lo } else { p + 1 };
                return Ok(p);
            }
        }
        Err(AllocError::Full)
    }

    pub fn release_port(&mut self, port: u16) {
        self.ports.remove(&port);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ips_and_ports() {
        let mut a = Allocator::new("10.96.0.0/30".parse().unwrap(), (30000, 30001));
        assert_eq!(a.first_ip(), Ipv4Addr::new(10, 96, 0, 1));
        a.claim_ip(a.first_ip()).unwrap();
        assert_eq!(a.allocate_ip().unwrap(), Ipv4Addr::new(10, 96, 0, 2));
        assert_eq!(a.allocate_ip(), Err(AllocError::Full));
        assert_eq!(a.claim_ip(Ipv4Addr::new(10, 96, 0, 2)), Err(AllocError::IpTaken(Ipv4Addr::new(10, 96, 0, 2))));
        assert!(matches!(a.claim_ip(Ipv4Addr::new(10, 97, 0, 1)), Err(AllocError::OutOfRange { .. })));
        a.release_ip(Ipv4Addr::new(10, 96, 0, 2));
        assert_eq!(a.allocate_ip().unwrap(), Ipv4Addr::new(10, 96, 0, 2));
        a.claim_port(30001).unwrap();
        assert_eq!(a.allocate_port().unwrap(), 30000);
        assert_eq!(a.allocate_port(), Err(AllocError::Full));
        assert!(matches!(a.claim_port(80), Err(AllocError::PortOutOfRange { .. })));
        a.release_port(30001);
        assert_eq!(a.allocate_port().unwrap(), 30001);
    }
}
