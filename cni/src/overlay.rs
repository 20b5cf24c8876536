//! flannel-style VXLAN overlay between nodes.
//!
//! Each node owns one VXLAN device (VNI 1, UDP 8472, learning off, `local` = node IP, `dev` =
//! uplink, MTU = uplink − 50) carrying `<podCIDR>.0/32`. For every *remote* node three kernel
//! objects make its pod subnet reachable without any flooding or learning:
//!
//! * route `<podCIDR> via <podCIDR>.0 dev <vxlan> onlink` — the next hop is the remote VTEP;
//! * permanent neighbour `<podCIDR>.0 lladdr <remote VTEP MAC>` — so no ARP is ever sent;
//! * FDB entry `<remote VTEP MAC> dst <remote node IP>` — where to send the encapsulated frame.
//!
//! [`plan`] is the pure core: from what is installed and what is desired it computes the exact
//! replace/delete actions (a node whose IP or MAC changed is rewritten, a removed node's objects
//! disappear, an unchanged node costs nothing). [`Overlay::converge`] observes, plans, applies;
//! callers run it on every node change and periodically ([`Overlay::run`]), level-triggered.
//!
//! TX checksum offload is switched off on the VXLAN device by default: with it on, some
//! kernels/NICs emit VXLAN packets with bad checksums once the outer packet is NATed, stalling
//! connections for ~63 s (flannel #1279, calico #3145). [`LocalNode::tx_checksum_offload`] can
//! turn it back on where that is known to be fixed (it roughly doubles overlay throughput here).
//!
//! The node publishes its VTEP as Node annotations [`ANNOTATION_VTEP_MAC`] and
//! [`ANNOTATION_NODE_IP`] (see [`Overlay::annotations`]); peers read them back into [`RemoteNode`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::netlink::{
    FdbEntry, LinkInfo, Mac, Neighbour, Netlink, NetlinkError, Route, VxlanSpec, mac_to_string, parse_mac,
};

/// Node annotation: this node's VTEP MAC (`aa:bb:cc:dd:ee:ff`).
pub const ANNOTATION_VTEP_MAC: &str = "keelson.io/vtep-mac";
/// Node annotation: the node IP VXLAN packets for this node are sent to.
pub const ANNOTATION_NODE_IP: &str = "keelson.io/node-ip";
/// Default VXLAN device name.
pub const DEFAULT_DEVICE: &str = "keelson.1";
pub const DEFAULT_VNI: u32 = 1;
/// The Linux/flannel VXLAN port (not IANA's 4789), as flannel uses.
pub const DEFAULT_PORT: u16 = 8472;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Overlay failures, with the object concerned.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("uplink {uplink} not found")]
    NoUplink { uplink: String },
    #[error("remote node {node}: invalid VTEP MAC {mac:?}")]
    BadMac { node: String, mac: String },
    #[error("remote node {node}: podCIDR {cidr} overlaps this node's {local}")]
    Overlap { node: String, cidr: Ipv4Net, local: Ipv4Net },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: NetlinkError,
    },
}

fn nl(what: impl Into<String>) -> impl FnOnce(NetlinkError) -> OverlayError {
    let what = what.into();
    move |source| OverlayError::Netlink { what, source }
}

/// This node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalNode {
    pub name: String,
    #[serde(rename = "nodeIP")]
    pub node_ip: Ipv4Addr,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    pub uplink: String,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub vni: Option<u32>,
    #[serde(default)]
    pub port: Option<u16>,
    /// TX checksum offload on the VXLAN device. Default **off** (the flannel #1279 / calico #3145
    /// stall). Off also disables TSO on the device, so every segment is checksummed and
    /// encapsulated in software: on a veth underlay that costs about half the throughput (see
    /// `cargo xtask bench cni`). Kernels with the NAT checksum fix may turn it on.
    #[serde(default)]
    pub tx_checksum_offload: Option<bool>,
}

/// A peer node, as read from its Node object (spec.podCIDR + our annotations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteNode {
    pub name: String,
    #[serde(rename = "nodeIP")]
    pub node_ip: Ipv4Addr,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    #[serde(rename = "vtepMAC")]
    pub vtep_mac: String,
}

/// What is installed on the VXLAN device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
}

/// One kernel change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    ReplaceFdb(FdbEntry),
    ReplaceNeighbour(Neighbour),
    ReplaceRoute(Route),
    DelRoute(Route),
    DelNeighbour(Neighbour),
    DelFdb(FdbEntry),
}

/// The desired objects for the remotes (validated).
pub fn desired(local: Ipv4Net, vx_index: u32, remotes: &[RemoteNode]) -> Result<Observed, OverlayError> {
    let mut d = Observed::default();
    for r in remotes {
        let mac = parse_mac(&r.vtep_mac)
            .ok_or_else(|| OverlayError::BadMac { node: r.name.clone(), mac: r.vtep_mac.clone() })?;
        let cidr = r.pod_cidr.trunc();
        if cidr.contains(&local.network()) || local.contains(&cidr.network()) {
            return Err(OverlayError::Overlap { node: r.name.clone(), cidr, local });
        }
        let vtep = cidr.network();
        d.routes.push(Route { dst: cidr, gw: Some(vtep), oif: Some(vx_index), onlink: true });
        d.neighbours.push(Neighbour { ip: vtep, mac });
        d.fdb.push(FdbEntry { mac, dst: r.node_ip });
    }
    Ok(d)
}

/// Pure diff: deletions of what is installed but not desired (routes first, so traffic never
/// follows a route whose neighbour is gone), then additions/rewrites (FDB and neighbour before the
/// route that uses them).
pub fn plan(observed: &Observed, desired: &Observed) -> Vec<Action> {
    let mut out = Vec::new();
    for r in &observed.routes {
        if !desired.routes.contains(r) {
            // a route for the same dst that is merely rewritten is handled by replace
            if !desired.routes.iter().any(|d| d.dst == r.dst) {
                out.push(Action::DelRoute(r.clone()));
            }
        }
    }
    for n in &observed.neighbours {
        if !desired.neighbours.iter().any(|d| d.ip == n.ip) {
            out.push(Action::DelNeighbour(n.clone()));
        }
    }
    for f in &observed.fdb {
        if !desired.fdb.contains(f) {
            out.push(Action::DelFdb(f.clone()));
        }
    }
    for f in &desired.fdb {
        if !observed.fdb.contains(f) {
            out.push(Action::ReplaceFdb(f.clone()));
        }
    }
    for n in &desired.neighbours {
        if !observed.neighbours.contains(n) {
            out.push(Action::ReplaceNeighbour(n.clone()));
        }
    }
    for r in &desired.routes {
        if !observed.routes.contains(r) {
            out.push(Action::ReplaceRoute(r.clone()));
        }
    }
    out
}

/// The overlay of one node.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub local: LocalNode,
}

/// What a converge did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConvergeReport {
    pub device: String,
    pub vtep_mac: String,
    pub mtu: u32,
    pub actions: usize,
}

impl Overlay {
    pub fn new(local: LocalNode) -> Self {
        Overlay { local }
    }

    pub fn device(&self) -> &str {
        self.local.device.as_deref().unwrap_or(DEFAULT_DEVICE)
    }

    /// Ensures the VXLAN device exists with our parameters (recreated when incompatible), MTU,
    /// TX checksum offload off, `<podCIDR>.0/32` as its only address, up; and forwarding on.
    pub fn ensure_device(&self, nl_: &mut dyn Netlink) -> Result<LinkInfo, OverlayError> {
        let up = nl_
            .link(&self.local.uplink)
            .map_err(nl("look up uplink"))?
            .ok_or_else(|| OverlayError::NoUplink { uplink: self.local.uplink.clone() })?;
        let spec = VxlanSpec {
            name: self.device().to_string(),
            vni: self.local.vni.unwrap_or(DEFAULT_VNI),
            port: self.local.port.unwrap_or(DEFAULT_PORT),
            local: self.local.node_ip,
            dev_index: up.index,
            mtu: up.mtu.saturating_sub(VXLAN_OVERHEAD),
            learning: false,
        };
        let mut dev = nl_.link(&spec.name).map_err(nl("look up vxlan device"))?;
        if let Some(d) = &dev {
            let compatible = d.kind.as_deref() == Some("vxlan")
                && d.vxlan.as_ref().is_some_and(|x| {
                    x.vni == Some(spec.vni)
                        && x.port == Some(spec.port)
                        && x.local == Some(spec.local)
                        && x.dev == Some(spec.dev_index)
                        && x.learning != Some(true)
                });
            if !compatible {
                tracing::info!(device = %spec.name, "vxlan device incompatible (node IP, uplink or VNI changed): recreating");
                nl_.del_link(d.index).map_err(nl("delete incompatible vxlan device"))?;
                dev = None;
            }
        }
        let dev = match dev {
            Some(d) => d,
            None => {
                nl_.add_vxlan(&spec).map_err(nl("create vxlan device"))?;
                nl_.link(&spec.name).map_err(nl("look up vxlan device"))?.ok_or_else(|| OverlayError::Netlink {
                    what: "vxlan device vanished".into(),
                    source: NetlinkError::NotFound { op: "look up", target: spec.name.clone() },
                })?
            }
        };
        if dev.mtu != spec.mtu {
            nl_.set_mtu(dev.index, spec.mtu).map_err(nl("set vxlan mtu"))?;
        }
        nl_.set_tx_checksum(&spec.name, self.local.tx_checksum_offload.unwrap_or(false))
            .map_err(nl("set tx checksum offload"))?;
        let want = IpNet::V4(Ipv4Net::new(self.local.pod_cidr.network(), 32).unwrap_or_default());
        let addrs = nl_.addresses(dev.index).map_err(nl("list vxlan addresses"))?;
        for a in addrs.iter().filter(|a| **a != want) {
            nl_.del_address(dev.index, *a).map_err(nl("delete stale vxlan address"))?;
        }
        if !addrs.contains(&want) {
            nl_.add_address(dev.index, want).map_err(nl("add vxlan address"))?;
        }
        if !dev.up {
            nl_.set_up(dev.index).map_err(nl("set vxlan up"))?;
        }
        nl_.write_sysctl("net/ipv4/ip_forward", "1").map_err(nl("enable ip_forward"))?;
        let mut dev = nl_.link(&spec.name).map_err(nl("look up vxlan device"))?.unwrap_or(dev);
        dev.mtu = spec.mtu;
        Ok(dev)
    }

    /// The Node annotations this node publishes.
    pub fn annotations(&self, dev: &LinkInfo) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert(ANNOTATION_VTEP_MAC.to_string(), dev.mac.as_ref().map(mac_to_string).unwrap_or_default());
        m.insert(ANNOTATION_NODE_IP.to_string(), self.local.node_ip.to_string());
        m
    }

    /// Reads what is installed on the device.
    pub fn observe(&self, nl_: &mut dyn Netlink, dev: &LinkInfo) -> Result<Observed, OverlayError> {
        let routes = nl_
            .routes()
            .map_err(nl("list routes"))?
            .into_iter()
            .filter(|r| r.oif == Some(dev.index) && r.dst.prefix_len() < 32)
            .collect();
        Ok(Observed {
            routes,
            neighbours: nl_.neighbours(dev.index).map_err(nl("list neighbours"))?,
            fdb: nl_.fdb(dev.index).map_err(nl("list fdb"))?.into_iter().filter(|f| f.mac != [0u8; 6]).collect(),
        })
    }

    /// Ensures the device and converges the per-remote objects (remotes equal to this node are skipped).
    pub fn converge(&self, nl_: &mut dyn Netlink, remotes: &[RemoteNode]) -> Result<ConvergeReport, OverlayError> {
        let dev = self.ensure_device(nl_)?;
        let remotes: Vec<RemoteNode> = remotes.iter().filter(|r| r.name != self.local.name).cloned().collect();
        let want = desired(self.local.pod_cidr.trunc(), dev.index, &remotes)?;
        let have = self.observe(nl_, &dev)?;
        let actions = plan(&have, &want);
        for a in &actions {
            tracing::debug!(action = ?a, "overlay");
            let r = match a {
                Action::ReplaceFdb(f) => nl_.replace_fdb(dev.index, f),
                Action::ReplaceNeighbour(n) => nl_.replace_neighbour(dev.index, n),
                Action::ReplaceRoute(r) => nl_.replace_route(r),
                Action::DelRoute(r) => nl_.del_route(r),
                Action::DelNeighbour(n) => nl_.del_neighbour(dev.index, n),
                Action::DelFdb(f) => nl_.del_fdb(dev.index, f),
            };
            match r {
                Ok(()) | Err(NetlinkError::NotFound { .. }) => {}
                Err(e) => return Err(OverlayError::Netlink { what: format!("{a:?}"), source: e }),
            }
        }
        Ok(ConvergeReport {
            device: dev.name.clone(),
            vtep_mac: dev.mac.as_ref().map(mac_to_string).unwrap_or_default(),
            mtu: dev.mtu,
            actions: actions.len(),
        })
    }

    /// Level-triggered loop: converge on every tick against `remotes()`; errors are logged and
    /// retried next tick. Returns when `stop()` is true.
    pub fn run(
        &self,
        nl_: &mut dyn Netlink,
        mut remotes: impl FnMut() -> Result<Vec<RemoteNode>, String>,
        every: Duration,
        mut stop: impl FnMut() -> bool,
    ) {
        while !stop() {
            match remotes() {
                Ok(r) => match self.converge(nl_, &r) {
                    Ok(rep) if rep.actions > 0 => tracing::info!(actions = rep.actions, "overlay converged"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "overlay converge failed; retrying"),
                },
                Err(e) => tracing::warn!(error = %e, "reading remote nodes failed; retrying"),
            }
            std::thread::sleep(every);
        }
    }
}

/// Helper for tests and the CLI: the MAC of a [`Mac`].
pub fn mac_string(m: &Mac) -> String {
    mac_to_string(m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::netlink::{Call, FakeNetlink};

    fn local() -> LocalNode {
        LocalNode {
            name: "n1".into(),
            node_ip: "192.168.50.1".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            uplink: "eth0".into(),
            device: None,
            vni: None,
            port: None,
            tx_checksum_offload: None,
        }
    }

    fn remote(n: u8, mac: &str, ip: &str) -> RemoteNode {
        RemoteNode {
            name: format!("n{n}"),
            node_ip: ip.parse().unwrap(),
            pod_cidr: format!("10.244.{n}.0/24").parse().unwrap(),
            vtep_mac: mac.into(),
        }
    }

    #[test]
    fn device_is_created_with_flannel_parameters_once() {
        let mut f = FakeNetlink::new().with_link("eth0", "veth", 1500);
        let o = Overlay::new(local());
        let rep = o.converge(&mut f, &[]).unwrap();
        assert_eq!(rep.mtu, 1450);
        let dev = f.link(DEFAULT_DEVICE).unwrap().unwrap();
        let vx = dev.vxlan.clone().unwrap();
        assert_eq!((vx.vni, vx.port, vx.learning), (Some(1), Some(8472), Some(false)));
        assert_eq!(vx.local, Some("192.168.50.1".parse().unwrap()));
        assert_eq!(f.addresses(dev.index).unwrap(), vec!["10.244.1.0/32".parse::<IpNet>().unwrap()]);
        assert!(f.calls.contains(&Call::TxChecksum { name: DEFAULT_DEVICE.into(), on: false }));
        let ann = o.annotations(&dev);
        assert_eq!(ann[ANNOTATION_NODE_IP], "192.168.50.1");
        assert_eq!(ann[ANNOTATION_VTEP_MAC], mac_to_string(&dev.mac.unwrap()));
        f.take_calls();
        o.converge(&mut f, &[]).unwrap();
        assert!(
            f.calls.iter().all(|c| matches!(c, Call::TxChecksum { .. } | Call::Sysctl { .. })),
            "second converge creates nothing: {:?}",
            f.calls
        );
    }

    #[test]
    fn tx_checksum_offload_can_be_left_on() {
        let mut f = FakeNetlink::new().with_link("eth0", "veth", 1500);
        let mut l = local();
        l.tx_checksum_offload = Some(true);
        Overlay::new(l).converge(&mut f, &[]).unwrap();
        assert!(f.calls.contains(&Call::TxChecksum { name: DEFAULT_DEVICE.into(), on: true }));
    }

    #[test]
    fn incompatible_device_is_recreated() {
        let mut f = FakeNetlink::new().with_link("eth0", "veth", 1500);
        let mut l = local();
        Overlay::new(l.clone()).converge(&mut f, &[]).unwrap();
        l.node_ip = "192.168.50.9".parse().unwrap();
        f.take_calls();
        Overlay::new(l).converge(&mut f, &[]).unwrap();
        assert!(f.calls.contains(&Call::DelLink { name: DEFAULT_DEVICE.into() }));
        let dev = f.link(DEFAULT_DEVICE).unwrap().unwrap();
        assert_eq!(dev.vxlan.unwrap().local, Some("192.168.50.9".parse().unwrap()));
    }

    #[test]
    fn add_change_remove_converge() {
        let mut f = FakeNetlink::new().with_link("eth0", "veth", 1500);
        let o = Overlay::new(local());
        let r2 = remote(2, "02:aa:00:00:00:02", "192.168.50.2");
        let r3 = remote(3, "02:aa:00:00:00:03", "192.168.50.3");
        let rep = o.converge(&mut f, &[r2.clone(), r3.clone(), o_self()]).unwrap();
        assert_eq!(rep.actions, 6, "3 objects per remote, self skipped");
        let vx = f.link(DEFAULT_DEVICE).unwrap().unwrap().index;
        assert!(f.routes.contains(&Route {
            dst: "10.244.2.0/24".parse().unwrap(),
            gw: Some("10.244.2.0".parse().unwrap()),
            oif: Some(vx),
            onlink: true
        }));
        assert_eq!(o.converge(&mut f, &[r2.clone(), r3.clone()]).unwrap().actions, 0, "idempotent");

        // node 3 changes IP and MAC: its FDB entry is replaced, the old one deleted, the neighbour rewritten
        let r3b = remote(3, "02:aa:00:00:00:33", "192.168.50.33");
        f.take_calls();
        o.converge(&mut f, &[r2.clone(), r3b.clone()]).unwrap();
        let fdb = f.fdb(vx).unwrap();
        assert_eq!(fdb.len(), 2);
        assert!(fdb.contains(&FdbEntry {
            mac: parse_mac("02:aa:00:00:00:33").unwrap(),
            dst: "192.168.50.33".parse().unwrap()
        }));
        assert_eq!(
            f.neighbours(vx).unwrap().iter().find(|n| n.ip == Ipv4Addr::new(10, 244, 3, 0)).unwrap().mac[5],
            0x33
        );
        assert!(!f.calls.iter().any(|c| matches!(c, Call::ReplaceRoute(_))), "route unchanged: {:?}", f.calls);

        // node 2 removed
        o.converge(&mut f, &[r3b]).unwrap();
        assert_eq!(f.routes.iter().filter(|r| r.oif == Some(vx)).count(), 1);
        assert_eq!(f.neighbours(vx).unwrap().len(), 1);
        assert_eq!(f.fdb(vx).unwrap().len(), 1);
    }

    #[test]
    fn run_resyncs_every_tick_and_survives_errors() {
        let mut f = FakeNetlink::new().with_link("eth0", "veth", 1500);
        let o = Overlay::new(local());
        let r2 = remote(2, "02:aa:00:00:00:02", "192.168.50.2");
        let mut tick = 0;
        // tick 0: source fails; tick 1: node 2 appears; tick 2: someone deletes its route behind
        // our back (observed on the next tick); tick 3: resync restores it.
        o.run(
            &mut f,
            || {
                tick += 1;
                if tick == 1 { Err("api unavailable".into()) } else { Ok(vec![r2.clone()]) }
            },
            Duration::from_millis(1),
            {
                let mut n = 0;
                move || {
                    n += 1;
                    n > 2
                }
            },
        );
        assert_eq!(f.routes.len(), 1);
        f.routes.clear();
        let mut n = 0;
        o.run(
            &mut f,
            || Ok(vec![r2.clone()]),
            Duration::from_millis(1),
            || {
                n += 1;
                n > 1
            },
        );
        assert_eq!(f.routes.len(), 1, "periodic resync repairs drift");
    }

    fn o_self() -> RemoteNode {
        remote(1, "02:aa:00:00:00:01", "192.168.50.1")
    }

    #[test]
    fn invalid_remotes_rejected() {
        let e = desired("10.244.1.0/24".parse().unwrap(), 1, &[remote(2, "zz", "1.1.1.1")]).unwrap_err();
        assert!(matches!(e, OverlayError::BadMac { .. }));
        let mut r = remote(2, "02:00:00:00:00:01", "1.1.1.1");
        r.pod_cidr = "10.244.0.0/16".parse().unwrap();
        assert!(matches!(
            desired("10.244.1.0/24".parse().unwrap(), 1, &[r]).unwrap_err(),
            OverlayError::Overlap { .. }
        ));
        let mut f = FakeNetlink::new();
        assert!(matches!(Overlay::new(local()).converge(&mut f, &[]).unwrap_err(), OverlayError::NoUplink { .. }));
    }

    #[test]
    fn plan_orders_deletes_before_adds() {
        let have = Observed {
            routes: vec![Route {
                dst: "10.1.0.0/24".parse().unwrap(),
                gw: Some("10.1.0.0".parse().unwrap()),
                oif: Some(1),
                onlink: true,
            }],
            neighbours: vec![Neighbour { ip: "10.1.0.0".parse().unwrap(), mac: [2, 0, 0, 0, 0, 1] }],
            fdb: vec![FdbEntry { mac: [2, 0, 0, 0, 0, 1], dst: "1.1.1.1".parse().unwrap() }],
        };
        let want = desired("10.9.0.0/24".parse().unwrap(), 1, &[remote(2, "02:00:00:00:00:02", "1.1.1.2")]).unwrap();
        let p = plan(&have, &want);
        assert!(matches!(p[0], Action::DelRoute(_)));
        assert!(matches!(p[1], Action::DelNeighbour(_)));
        assert!(matches!(p[2], Action::DelFdb(_)));
        assert!(matches!(p[3], Action::ReplaceFdb(_)));
        assert!(matches!(p[5], Action::ReplaceRoute(_)));
        assert!(plan(&want, &want).is_empty());
    }
}
