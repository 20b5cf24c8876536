//! A stateful, recording [`Netlink`] for unit tests: it keeps links, addresses, routes, neighbours
//! and FDB entries like the kernel would (enough for convergence logic), and appends every mutating
//! call to [`FakeNetlink::calls`] so tests can assert that a second converge does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::{FdbEntry, LinkInfo, Neighbour, Netlink, NetlinkError, Route, VxlanAttrs, VxlanSpec};

/// A mutating call, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    AddLink {
        name: String,
        kind: String,
    },
    /// A veth whose peer was created in another namespace.
    AddVeth {
        host: String,
        peer: String,
        netns: PathBuf,
        mtu: u32,
    },
    DelLink {
        name: String,
    },
    SetUp {
        name: String,
    },
    SetMtu {
        name: String,
        mtu: u32,
    },
    SetMaster {
        name: String,
        master: String,
    },
    SetHairpin {
        name: String,
        on: bool,
    },
    AddAddress {
        name: String,
        addr: IpNet,
    },
    DelAddress {
        name: String,
        addr: IpNet,
    },
    ReplaceRoute(Route),
    DelRoute(Route),
    ReplaceNeighbour {
        name: String,
        n: Neighbour,
    },
    DelNeighbour {
        name: String,
        n: Neighbour,
    },
    ReplaceFdb {
        name: String,
        e: FdbEntry,
    },
    DelFdb {
        name: String,
        e: FdbEntry,
    },
    Sysctl {
        key: String,
        value: String,
    },
    TxChecksum {
        name: String,
        on: bool,
    },
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct FakeNetlink {
    pub links: BTreeMap<u32, LinkInfo>,
    pub addresses: BTreeMap<u32, Vec<IpNet>>,
    pub routes: Vec<Route>,
    pub neighbours: BTreeMap<u32, Vec<Neighbour>>,
    pub fdb: BTreeMap<u32, Vec<FdbEntry>>,
    pub sysctls: BTreeMap<String, String>,
    pub calls: Vec<Call>,
    /// Links (name, kind, mtu) that appear once a lookup of that name has returned None: models a
    /// veth peer that another namespace's `add_veth` moves in after the pod was inspected.
    pub arriving: Vec<(String, String, u32)>,
    next_index: u32,
}

impl FakeNetlink {
    pub fn new() -> Self {
        FakeNetlink { next_index: 1, ..Default::default() }
    }

    /// Adds a pre-existing link (e.g. the uplink) without recording a call.
    pub fn with_link(mut self, name: &str, kind: &str, mtu: u32) -> Self {
        self.insert(name, kind, mtu);
        self
    }

    /// Takes the recorded calls, leaving the list empty.
    pub fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.calls)
    }

    fn insert(&mut self, name: &str, kind: &str, mtu: u32) -> u32 {
        self.next_index = self.next_index.max(1);
        let index = self.next_index;
        self.next_index += 1;
        let mac = [0x02, 0, 0, 0, (index >> 8) as u8, index as u8];
        self.links.insert(
            index,
            LinkInfo {
                index,
                name: name.to_string(),
                kind: Some(kind.to_string()),
                mac: Some(mac),
                mtu,
                up: false,
                master: None,
                vxlan: None,
            },
        );
        index
    }

    fn name(&self, index: u32) -> Result<String, NetlinkError> {
        self.links
            .get(&index)
            .map(|l| l.name.clone())
            .ok_or(NetlinkError::NotFound { op: "fake", target: index.to_string() })
    }

    fn by_name(&self, name: &str) -> Option<&LinkInfo> {
        self.links.values().find(|l| l.name == name)
    }

    fn exists(&self, name: &str) -> Result<(), NetlinkError> {
        if self.by_name(name).is_some() {
            return Err(NetlinkError::Exists { op: "add link", target: name.into() });
        }
        Ok(())
    }
}

impl Netlink for FakeNetlink {
    fn links(&mut self) -> Result<Vec<LinkInfo>, NetlinkError> {
        Ok(self.links.values().cloned().collect())
    }

    fn link(&mut self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let found = self.by_name(name).cloned();
        if found.is_none()
            && let Some(pos) = self.arriving.iter().position(|(n, _, _)| n == name)
        {
            let (n, kind, mtu) = self.arriving.remove(pos);
            self.insert(&n, &kind, mtu);
        }
        Ok(found)
    }

    fn add_bridge(&mut self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        self.exists(name)?;
        self.insert(name, "bridge", mtu);
        self.calls.push(Call::AddLink { name: name.into(), kind: "bridge".into() });
        Ok(())
    }

    fn add_veth(&mut self, host: &str, peer: &str, peer_netns: &Path, mtu: u32) -> Result<(), NetlinkError> {
        self.exists(host)?;
        self.insert(host, "veth", mtu);
        self.calls.push(Call::AddVeth { host: host.into(), peer: peer.into(), netns: peer_netns.into(), mtu });
        Ok(())
    }

    fn add_vxlan(&mut self, s: &VxlanSpec) -> Result<(), NetlinkError> {
        self.exists(&s.name)?;
        let i = self.insert(&s.name, "vxlan", s.mtu);
        if let Some(l) = self.links.get_mut(&i) {
            l.vxlan = Some(VxlanAttrs {
                vni: Some(s.vni),
                port: Some(s.port),
                local: Some(s.local),
                dev: Some(s.dev_index),
                learning: Some(s.learning),
            });
        }
        self.calls.push(Call::AddLink { name: s.name.clone(), kind: "vxlan".into() });
        Ok(())
    }

    fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let name = self.name(index)?;
        self.links.remove(&index);
        self.addresses.remove(&index);
        self.neighbours.remove(&index);
        self.fdb.remove(&index);
        self.routes.retain(|r| r.oif != Some(index));
        self.calls.push(Call::DelLink { name });
        Ok(())
    }

    fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let name = self.name(index)?;
        if let Some(l) = self.links.get_mut(&index) {
            l.up = true;
        }
        self.calls.push(Call::SetUp { name });
        Ok(())
    }

    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let name = self.name(index)?;
        if let Some(l) = self.links.get_mut(&index) {
            l.mtu = mtu;
        }
        self.calls.push(Call::SetMtu { name, mtu });
        Ok(())
    }

    fn set_master(&mut self, index: u32, master: u32) -> Result<(), NetlinkError> {
        let (name, mname) = (self.name(index)?, self.name(master)?);
        if let Some(l) = self.links.get_mut(&index) {
            l.master = Some(master);
        }
        self.calls.push(Call::SetMaster { name, master: mname });
        Ok(())
    }

    fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let name = self.name(index)?;
        self.calls.push(Call::SetHairpin { name, on });
        Ok(())
    }

    fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        Ok(self.addresses.get(&index).cloned().unwrap_or_default())
    }

    fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let name = self.name(index)?;
        let list = self.addresses.entry(index).or_default();
        if !list.contains(&addr) {
            list.push(addr);
            self.calls.push(Call::AddAddress { name, addr });
        }
        Ok(())
    }

    fn del_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let name = self.name(index)?;
        if let Some(list) = self.addresses.get_mut(&index) {
            list.retain(|a| *a != addr);
        }
        self.calls.push(Call::DelAddress { name, addr });
        Ok(())
    }

    fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        Ok(self.routes.clone())
    }

    fn replace_route(&mut self, r: &Route) -> Result<(), NetlinkError> {
        self.routes.retain(|x| x.dst != r.dst);
        self.routes.push(r.clone());
        self.calls.push(Call::ReplaceRoute(r.clone()));
        Ok(())
    }

    fn del_route(&mut self, r: &Route) -> Result<(), NetlinkError> {
        let before = self.routes.len();
        self.routes.retain(|x| x != r);
        if before == self.routes.len() {
            return Err(NetlinkError::NotFound { op: "delete route", target: r.dst.to_string() });
        }
        self.calls.push(Call::DelRoute(r.clone()));
        Ok(())
    }

    fn neighbours(&mut self, index: u32) -> Result<Vec<Neighbour>, NetlinkError> {
        Ok(self.neighbours.get(&index).cloned().unwrap_or_default())
    }

    fn replace_neighbour(&mut self, index: u32, n: &Neighbour) -> Result<(), NetlinkError> {
        let name = self.name(index)?;
        let list = self.neighbours.entry(index).or_default();
        list.retain(|x| x.ip != n.ip);
        list.push(n.clone());
        self.calls.push(Call::ReplaceNeighbour { name, n: n.clone() });
        Ok(())
    }

    fn del_neighbour(&mut self, index: u32, n: &Neighbour) -> Result<(), NetlinkError> {
        let name = self.name(index)?;
        if let Some(list) = self.neighbours.get_mut(&index) {
            list.retain(|x| x.ip != n.ip);
        }
        self.calls.push(Call::DelNeighbour { name, n: n.clone() });
        Ok(())
    }

    fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        Ok(self.fdb.get(&index).cloned().unwrap_or_default())
    }

    fn replace_fdb(&mut self, index: u32, e: &FdbEntry) -> Result<(), NetlinkError> {
        let name = self.name(index)?;
        let list = self.fdb.entry(index).or_default();
        list.retain(|x| x.mac != e.mac);
        list.push(e.clone());
        self.calls.push(Call::ReplaceFdb { name, e: e.clone() });
        Ok(())
    }

    fn del_fdb(&mut self, index: u32, e: &FdbEntry) -> Result<(), NetlinkError> {
        let name = self.name(index)?;
        if let Some(list) = self.fdb.get_mut(&index) {
            list.retain(|x| x != e);
        }
        self.calls.push(Call::DelFdb { name, e: e.clone() });
        Ok(())
    }

    fn write_sysctl(&mut self, key: &str, value: &str) -> Result<(), NetlinkError> {
        self.sysctls.insert(key.into(), value.into());
        self.calls.push(Call::Sysctl { key: key.into(), value: value.into() });
        Ok(())
    }

    fn set_tx_checksum(&mut self, name: &str, on: bool) -> Result<(), NetlinkError> {
        self.calls.push(Call::TxChecksum { name: name.into(), on });
        Ok(())
    }
}
