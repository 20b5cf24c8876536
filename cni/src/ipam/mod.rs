//! Leak-free IPAM for one node subnet.
//!
//! * [`core`]: the pure allocation decision (which address, reuse, release, GC) — unit-tested.
//! * [`store`]: allocations persisted one file per address under `<dataDir>/<network>/`, every
//!   read-modify-write under an exclusive `flock`, files written via rename so a crash never leaves
//!   a half-written allocation.
//! * [`subnet_file`]: the flannel-style `subnet.env` the agent writes with this node's podCIDR.
//!
//! Why this is leak-free: an allocation is keyed by (container id, ifname), so a retried ADD gets the
//! same address; DEL releases by that key without needing the netns; ADD rolls its allocation back
//! when a later step fails; and a process killed between allocation and veth creation leaves an
//! allocation whose key is not in the runtime's `cni.dev/valid-attachments`, which GC frees.

pub mod core;
pub mod store;
pub mod subnet_file;

pub use self::core::{Allocation, Owner, Pool};
pub use self::store::Store;
pub use self::subnet_file::SubnetFile;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

/// IPAM failures, with the subnet / path involved.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("subnet {subnet} has no free address ({used} in use)")]
    Exhausted { subnet: Ipv4Net, used: usize },
    #[error("subnet {subnet} is unusable: {reason}")]
    BadSubnet { subnet: String, reason: String },
    #[error("IPAM store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("IPAM store {path}: corrupt allocation record: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("subnet file {path}: {reason}")]
    SubnetFile { path: PathBuf, reason: String },
}

/// One node's IPAM: a pool (subnet minus network, gateway, broadcast) over a store.
#[derive(Debug)]
pub struct Ipam {
    pub pool: Pool,
    pub store: Store,
}

impl Ipam {
    pub fn new(pool: Pool, store: Store) -> Self {
        Ipam { pool, store }
    }

    /// Allocates (or returns the existing) address for `owner`.
    pub fn allocate(&self, owner: &Owner) -> Result<Allocation, IpamError> {
        let mut locked = self.store.lock()?;
        let current = locked.allocations()?;
        let last = locked.last_reserved()?;
        let decision = core::allocate(&self.pool, &current, owner, last)?;
        if let Allocation::New(ip) = decision {
            locked.reserve(ip, owner)?;
            locked.set_last_reserved(ip)?;
        }
        Ok(decision)
    }

    /// The address held by `owner`, if any.
    pub fn lookup(&self, owner: &Owner) -> Result<Option<Ipv4Addr>, IpamError> {
        let mut locked = self.store.lock()?;
        let current = locked.allocations()?;
        Ok(current.iter().find(|(_, o)| *o == owner).map(|(ip, _)| *ip))
    }

    /// Releases everything `owner` holds; returns the freed addresses (empty when nothing was held).
    pub fn release(&self, owner: &Owner) -> Result<Vec<Ipv4Addr>, IpamError> {
        let mut locked = self.store.lock()?;
        let current = locked.allocations()?;
        let freed = core::release(&current, owner);
        for ip in &freed {
            locked.free(*ip)?;
        }
        Ok(freed)
    }

    /// Frees every allocation whose owner is not in `valid`; returns what was freed.
    pub fn gc(&self, valid: &std::collections::BTreeSet<Owner>) -> Result<Vec<(Ipv4Addr, Owner)>, IpamError> {
        let mut locked = self.store.lock()?;
        let current = locked.allocations()?;
        let stale = core::gc(&current, valid);
        for (ip, _) in &stale {
            locked.free(*ip)?;
        }
        Ok(stale)
    }

    /// All current allocations.
    pub fn allocations(&self) -> Result<std::collections::BTreeMap<Ipv4Addr, Owner>, IpamError> {
        self.store.lock()?.allocations()
    }
}
