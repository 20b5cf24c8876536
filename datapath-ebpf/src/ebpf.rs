//! The eBPF backend: a socket-level load balancer (`bpf/sock_lb.bpf.c`) on cgroup
//! connect4/sendmsg4/recvmsg4/getpeername4, programmed through pinned hash maps.
//!
//! Kernel state is the source of truth: programs are attached with bpf links pinned under one bpffs
//! directory per node, next to the maps (pinned by name). A restarted process finds the pins,
//! adopts them without detaching anything (traffic keeps flowing meanwhile), dumps the maps and
//! converges them entry by entry. After that, each sync applies only the entries of the frontends
//! that `ServiceTable::diff` reports, backend slots before the service entry (make before break).
//!
//! Map access goes through the [`LbMaps`] seam so the reconciliation logic is unit-tested against
//! [`FakeLbMaps`] without root.

use crate::model::{Frontend, FrontendAddr, FrontendKey, NodeInfo, ServiceTable};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The compiled socket-LB object (empty when clang was unavailable at build time).
pub static SOCK_LB_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_lb.bpf.o"));

/// Scope of a service-map entry: looked up by the socket hooks.
pub const SCOPE_SOCKET: u8 = 0;
/// Scope of a service-map entry: looked up by the tc program for traffic from outside the node.
pub const SCOPE_EXTERNAL: u8 = 1;
/// `SvcVal::flags` bit: SNAT external traffic to the node (externalTrafficPolicy Cluster).
pub const FLAG_MASQUERADE: u16 = 1;
/// The most backends the socket-LB's affinity check scans (`bpf/sock_lb.bpf.c`).
pub const MAX_AFFINITY_SCAN: usize = 256;

/// Key of `kl_svc` (network byte order, like `bpf_sock_addr`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SvcKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

/// Value of `kl_svc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SvcVal {
    pub id: u32,
    pub count: u16,
    pub flags: u16,
    pub affinity_secs: u32,
}

/// Key of `kl_be`: slot `0..count` of frontend `id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BeKey {
    pub id: u32,
    pub slot: u32,
}

/// Value of `kl_be`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BeVal {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

// SAFETY: plain `repr(C)` integers with no padding holes (sizes 8, 12, 8, 8), matching the C structs.
unsafe impl aya::Pod for SvcKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcVal {}
// SAFETY: as above.
unsafe impl aya::Pod for BeKey {}
// SAFETY: as above.
unsafe impl aya::Pod for BeVal {}

fn net_addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn net_port(p: u16) -> u16 {
    p.to_be()
}

/// Errors of the eBPF backend.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("eBPF object was not built (clang missing at build time)")]
    NotBuilt,
    #[error("bpffs at {path}: {reason}")]
    Bpffs { path: PathBuf, reason: String },
    #[error("loading eBPF object: {0}")]
    Object(String),
    /// Includes the kernel verifier log when the verifier rejected the program.
    #[error("program {program}: {reason}")]
    Program { program: String, reason: String },
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map}: {reason}")]
    Map { map: String, reason: String },
    #[error("frontend {frontend} has {count} backends; at most 65535 are supported")]
    TooManyBackends { frontend: String, count: usize },
}

/// The seam to the pinned maps.
pub trait LbMaps {
    fn dump_services(&self) -> Result<Vec<(SvcKey, SvcVal)>, EbpfError>;
    fn dump_backends(&self) -> Result<Vec<(BeKey, BeVal)>, EbpfError>;
    fn put_service(&mut self, k: SvcKey, v: SvcVal) -> Result<(), EbpfError>;
    fn del_service(&mut self, k: &SvcKey) -> Result<(), EbpfError>;
    fn put_backend(&mut self, k: BeKey, v: BeVal) -> Result<(), EbpfError>;
    fn del_backend(&mut self, k: &BeKey) -> Result<(), EbpfError>;
}

/// What one sync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EbpfSyncReport {
    pub full: bool,
    pub writes: usize,
    pub deletes: usize,
}

/// Renders the table into map entries and keeps them converged.
pub struct EbpfProxier<M: LbMaps> {
    maps: M,
    node: NodeInfo,
    /// Frontend → (id, what was written).
    applied: ServiceTable,
    /// Frontend → its id in the maps.
    ids: BTreeMap<FrontendKey, u32>,
    used_ids: BTreeSet<u32>,
    need_full: bool,
}

impl<M: LbMaps> EbpfProxier<M> {
    /// The first sync adopts whatever the maps hold (ids of existing frontends are kept).
    pub fn new(maps: M, node: NodeInfo) -> Self {
        EbpfProxier {
            maps,
            node,
            applied: ServiceTable::default(),
            ids: BTreeMap::new(),
            used_ids: BTreeSet::new(),
            need_full: true,
        }
    }

    pub fn maps(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Forces the next sync to dump and converge every entry.
    pub fn request_full_sync(&mut self) {
        self.need_full = true;
    }

    /// The service-map keys of a frontend: socket scope for every frontend, plus external scope for
    /// NodePort / LoadBalancer / externalIP frontends (a NodePort listens on every node IP).
    pub fn svc_keys(&self, key: &FrontendKey, fe: &Frontend) -> Vec<SvcKey> {
        let ips: Vec<Ipv4Addr> = match key.addr {
            FrontendAddr::Ip(ip) => vec![ip],
            FrontendAddr::NodePort => self.node.ips.clone(),
        };
        let scopes: &[u8] = if fe.kind.is_external() { &[SCOPE_SOCKET, SCOPE_EXTERNAL] } else { &[SCOPE_SOCKET] };
        let mut out = Vec::new();
        for &scope in scopes {
            for ip in &ips {
                out.push(SvcKey { addr: net_addr(*ip), port: net_port(key.port), proto: key.proto.number(), scope });
            }
        }
        out
    }

    fn svc_val(id: u32, fe: &Frontend) -> Result<SvcVal, EbpfError> {
        let count = u16::try_from(fe.backends.len())
            .map_err(|_| EbpfError::TooManyBackends { frontend: fe.service.to_string(), count: fe.backends.len() })?;
        let flags = if fe.masquerade_external { FLAG_MASQUERADE } else { 0 };
        Ok(SvcVal { id, count, flags, affinity_secs: fe.affinity_timeout_s.unwrap_or(0) })
    }

    fn be_vals(fe: &Frontend) -> Vec<BeVal> {
        fe.backends.iter().map(|b| BeVal { addr: net_addr(b.ip), port: net_port(b.port), pad: 0 }).collect()
    }

    fn alloc_id(&mut self) -> u32 {
        let mut id = 1;
        // Ids are dense in practice; the scan is from the last allocated one.
        if let Some(last) = self.used_ids.last() {
            id = last.wrapping_add(1).max(1);
        }
        while self.used_ids.contains(&id) {
            id = id.wrapping_add(1).max(1);
        }
        self.used_ids.insert(id);
        id
    }

    /// Converges the maps to `desired`.
    pub fn sync(&mut self, desired: &ServiceTable) -> Result<EbpfSyncReport, EbpfError> {
        let res = if self.need_full { self.full(desired) } else { self.incremental(desired) };
        match res {
            Ok(r) => {
                self.need_full = false;
                Ok(r)
            }
            Err(e) => {
                tracing::warn!(error = %e, "eBPF map sync failed; next sync dumps and converges all maps");
                self.need_full = true;
                Err(e)
            }
        }
    }

    fn incremental(&mut self, desired: &ServiceTable) -> Result<EbpfSyncReport, EbpfError> {
        let mut rep = EbpfSyncReport::default();
        for change in ServiceTable::diff(&self.applied, desired) {
            match change {
                crate::model::Change::Upsert(k, fe) => self.upsert(k, fe, &mut rep)?,
                crate::model::Change::Remove(k) => self.remove(&k, &mut rep)?,
            }
        }
        Ok(rep)
    }

    fn upsert(&mut self, key: FrontendKey, fe: Frontend, rep: &mut EbpfSyncReport) -> Result<(), EbpfError> {
        let (id, old_count, old_keys) = match (self.ids.get(&key), self.applied.frontends.get(&key)) {
            (Some(id), Some(old)) => (*id, old.backends.len(), self.svc_keys(&key, old)),
            _ => (self.alloc_id(), 0, vec![]),
        };
        let new_keys = self.svc_keys(&key, &fe);
        let val = Self::svc_val(id, &fe)?;
        for (slot, bv) in Self::be_vals(&fe).into_iter().enumerate() {
            self.maps.put_backend(BeKey { id, slot: slot as u32 }, bv)?;
            rep.writes += 1;
        }
        for sk in &new_keys {
            self.maps.put_service(*sk, val)?;
            rep.writes += 1;
        }
        for sk in old_keys.iter().filter(|k| !new_keys.contains(k)) {
            self.maps.del_service(sk)?;
            rep.deletes += 1;
        }
        for slot in fe.backends.len()..old_count {
            self.maps.del_backend(&BeKey { id, slot: slot as u32 })?;
            rep.deletes += 1;
        }
        self.ids.insert(key, id);
        self.applied.frontends.insert(key, fe);
        Ok(())
    }

    fn remove(&mut self, key: &FrontendKey, rep: &mut EbpfSyncReport) -> Result<(), EbpfError> {
        let (Some(&id), Some(old)) = (self.ids.get(key), self.applied.frontends.get(key)) else { return Ok(()) };
        let old = old.clone();
        for sk in self.svc_keys(key, &old) {
            self.maps.del_service(&sk)?;
            rep.deletes += 1;
        }
        for slot in 0..old.backends.len() {
            self.maps.del_backend(&BeKey { id, slot: slot as u32 })?;
            rep.deletes += 1;
        }
        self.applied.frontends.remove(key);
        self.ids.remove(key);
        self.used_ids.remove(&id);
        Ok(())
    }

    /// Dump, compute the complete desired content (reusing the ids the kernel already uses for a
    /// frontend), write what differs, delete what is stale. Never flushes.
    fn full(&mut self, desired: &ServiceTable) -> Result<EbpfSyncReport, EbpfError> {
        let kernel_svc: BTreeMap<SvcKey, SvcVal> = self.maps.dump_services()?.into_iter().collect();
        let kernel_be: BTreeMap<BeKey, BeVal> = self.maps.dump_backends()?.into_iter().collect();
        self.applied = ServiceTable::default();
        self.ids.clear();
        self.used_ids.clear();
        // Pass 1: keep ids the kernel already associates with a desired frontend.
        let mut ids: BTreeMap<FrontendKey, u32> = BTreeMap::new();
        for (key, fe) in &desired.frontends {
            let existing = self.svc_keys(key, fe).iter().find_map(|sk| kernel_svc.get(sk)).map(|v| v.id);
            if let Some(id) = existing
                && self.used_ids.insert(id)
            {
                ids.insert(*key, id);
            }
        }
        // Ids in the kernel that are not reused stay reserved until their entries are deleted below,
        // so a new frontend never shares slots with a stale one mid-sync.
        for v in kernel_svc.values() {
            self.used_ids.insert(v.id);
        }
        for key in desired.frontends.keys() {
            if !ids.contains_key(key) {
                let id = self.alloc_id();
                ids.insert(*key, id);
            }
        }
        let mut want_svc: BTreeMap<SvcKey, SvcVal> = BTreeMap::new();
        let mut want_be: BTreeMap<BeKey, BeVal> = BTreeMap::new();
        for (key, fe) in &desired.frontends {
            let id = ids[key];
            let val = Self::svc_val(id, fe)?;
            for sk in self.svc_keys(key, fe) {
                want_svc.insert(sk, val);
            }
            for (slot, bv) in Self::be_vals(fe).into_iter().enumerate() {
                want_be.insert(BeKey { id, slot: slot as u32 }, bv);
            }
        }
        let mut rep = EbpfSyncReport { full: true, ..Default::default() };
        for (k, v) in &want_be {
            if kernel_be.get(k) != Some(v) {
                self.maps.put_backend(*k, *v)?;
                rep.writes += 1;
            }
        }
        for (k, v) in &want_svc {
            if kernel_svc.get(k) != Some(v) {
                self.maps.put_service(*k, *v)?;
                rep.writes += 1;
            }
        }
        for k in kernel_svc.keys() {
            if !want_svc.contains_key(k) {
                self.maps.del_service(k)?;
                rep.deletes += 1;
            }
        }
        for k in kernel_be.keys() {
            if !want_be.contains_key(k) {
                self.maps.del_backend(k)?;
                rep.deletes += 1;
            }
        }
        self.used_ids = ids.values().copied().collect();
        self.applied = ServiceTable { frontends: desired.frontends.clone(), errors: vec![] };
        self.ids = ids;
        Ok(rep)
    }
}

/// In-memory [`LbMaps`] for unit tests (and other crates' tests with `test-helpers`).
#[cfg(any(test, feature = "test-helpers"))]
#[derive(Clone, Debug, Default)]
pub struct FakeLbMaps {
    pub svc: BTreeMap<SvcKey, SvcVal>,
    pub be: BTreeMap<BeKey, BeVal>,
    /// Fail the next write with this message.
    pub fail_next: Option<String>,
    pub writes: usize,
}

#[cfg(any(test, feature = "test-helpers"))]
impl FakeLbMaps {
    fn maybe_fail(&mut self) -> Result<(), EbpfError> {
        self.writes += 1;
        match self.fail_next.take() {
            Some(reason) => Err(EbpfError::Map { map: "fake".into(), reason }),
            None => Ok(()),
        }
    }

    /// What a connect to `ip:port/proto` from the socket hooks could be translated to: `None` if it
    /// is not a frontend, else the sorted backend set (empty = refused). Mirrors the C lookup.
    pub fn resolve(&self, ip: Ipv4Addr, port: u16, proto: crate::model::Protocol) -> Option<Vec<String>> {
        let k = SvcKey { addr: net_addr(ip), port: net_port(port), proto: proto.number(), scope: SCOPE_SOCKET };
        let v = self.svc.get(&k)?;
        let mut out: Vec<String> = (0..u32::from(v.count))
            .map(|slot| match self.be.get(&BeKey { id: v.id, slot }) {
                Some(b) => format!("{}:{}", Ipv4Addr::from(b.addr.to_ne_bytes()), u16::from_be(b.port)),
                None => "<missing slot>".into(),
            })
            .collect();
        out.sort();
        Some(out)
    }
}

#[cfg(any(test, feature = "test-helpers"))]
impl LbMaps for FakeLbMaps {
    fn dump_services(&self) -> Result<Vec<(SvcKey, SvcVal)>, EbpfError> {
        Ok(self.svc.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn dump_backends(&self) -> Result<Vec<(BeKey, BeVal)>, EbpfError> {
        Ok(self.be.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn put_service(&mut self, k: SvcKey, v: SvcVal) -> Result<(), EbpfError> {
        self.maybe_fail()?;
        self.svc.insert(k, v);
        Ok(())
    }
    fn del_service(&mut self, k: &SvcKey) -> Result<(), EbpfError> {
        self.maybe_fail()?;
        self.svc.remove(k);
        Ok(())
    }
    fn put_backend(&mut self, k: BeKey, v: BeVal) -> Result<(), EbpfError> {
        self.maybe_fail()?;
        self.be.insert(k, v);
        Ok(())
    }
    fn del_backend(&mut self, k: &BeKey) -> Result<(), EbpfError> {
        self.maybe_fail()?;
        self.be.remove(k);
        Ok(())
    }
}

pub mod loader;
pub use loader::{PinnedMaps, SockLb};

/// Path helper: `<dir>/<name>`.
fn pin(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[cfg(test)]
#[path = "ebpf_tests.rs"]
mod tests;
