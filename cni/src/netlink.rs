//! The kernel seam: every link, address, route, neighbour, FDB, sysctl and offload change the plugin
//! and the overlay make goes through the [`Netlink`] trait.
//!
//! * [`RtNetlink`] is the real implementation over `rtnetlink` (0.24).
//! * [`FakeNetlink`] (feature `test-helpers`, and in this crate's unit tests) is a stateful fake
//!   that records every mutating call, so pure-ish logic (overlay convergence, plugin wiring) is
//!   unit-tested without root.
//!
//! ## Talking to another network namespace
//!
//! A netlink socket is bound, for its whole life, to the network namespace of the thread that
//! created it. [`RtNetlink::in_netns`] therefore spawns a short-lived OS thread, `setns(2)`s *that
//! thread* into the target namespace, creates the `NETLINK_ROUTE` socket there and hands the file
//! descriptor back; the thread then exits. The caller's threads never change namespace, so nothing
//! can accidentally run in the wrong one (the classic Go `LockOSThread` pitfall), and all later
//! requests on the socket act inside the target namespace. Sysctls (`/proc/sys/net/...` resolves
//! against the *opening* task's namespace) are written the same way from a throw-away thread.
//!
//! The trait is synchronous: each [`RtNetlink`] owns a current-thread tokio runtime that drives its
//! connection during a call. Async callers (the agent) call it from `spawn_blocking`.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};

/// A MAC address.
pub type Mac = [u8; 6];

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_to_string(m: &Mac) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

/// What the plugin and overlay need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `bridge`, `veth`, `vxlan`, … (None for devices without link info, e.g. loopback).
    pub kind: Option<String>,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
    /// Index of the controller (bridge) this link is enslaved to.
    pub master: Option<u32>,
    pub vxlan: Option<VxlanAttrs>,
}

/// VXLAN attributes as read back from the kernel (for the compatibility check).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanAttrs {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    pub dev: Option<u32>,
    pub learning: Option<bool>,
}

/// A VXLAN device to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub dev_index: u32,
    pub mtu: u32,
    pub learning: bool,
}

/// An IPv4 route in the main table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub onlink: bool,
}

/// A permanent IPv4 neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

/// A VXLAN FDB entry: frames for `mac` are sent to `dst`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: Ipv4Addr,
}

/// Netlink failures, with the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{op} {target}: {source}")]
    Request {
        op: &'static str,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {target}: already exists")]
    Exists { op: &'static str, target: String },
    #[error("{op} {target}: not found")]
    NotFound { op: &'static str, target: String },
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl NetlinkError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, NetlinkError::NotFound { .. })
    }
}

/// The kernel operations keelson needs, in one namespace.
pub trait Netlink {
    fn links(&mut self) -> Result<Vec<LinkInfo>, NetlinkError>;
    fn link(&mut self, name: &str) -> Result<Option<LinkInfo>, NetlinkError>;
    fn add_bridge(&mut self, name: &str, mtu: u32) -> Result<(), NetlinkError>;
    /// Creates a veth pair: `host` here, `peer` directly inside the namespace at `peer_netns`.
    fn add_veth(&mut self, host: &str, peer: &str, peer_netns: &Path, mtu: u32) -> Result<(), NetlinkError>;
    fn add_vxlan(&mut self, spec: &VxlanSpec) -> Result<(), NetlinkError>;
    /// Deletes a link; NotFound when it does not exist.
    fn del_link(&mut self, index: u32) -> Result<(), NetlinkError>;
    fn set_up(&mut self, index: u32) -> Result<(), NetlinkError>;
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError>;
    fn set_master(&mut self, index: u32, master: u32) -> Result<(), NetlinkError>;
    fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NetlinkError>;
    fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, NetlinkError>;
    /// Adds an address; an identical existing address is success.
    fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError>;
    fn del_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError>;
    /// IPv4 unicast routes of the main table.
    fn routes(&mut self) -> Result<Vec<Route>, NetlinkError>;
    fn replace_route(&mut self, route: &Route) -> Result<(), NetlinkError>;
    fn del_route(&mut self, route: &Route) -> Result<(), NetlinkError>;
    /// Permanent IPv4 neighbours on `index`.
    fn neighbours(&mut self, index: u32) -> Result<Vec<Neighbour>, NetlinkError>;
    fn replace_neighbour(&mut self, index: u32, n: &Neighbour) -> Result<(), NetlinkError>;
    fn del_neighbour(&mut self, index: u32, n: &Neighbour) -> Result<(), NetlinkError>;
    /// FDB entries with a remote destination on a VXLAN device.
    fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError>;
    fn replace_fdb(&mut self, index: u32, e: &FdbEntry) -> Result<(), NetlinkError>;
    fn del_fdb(&mut self, index: u32, e: &FdbEntry) -> Result<(), NetlinkError>;
    /// Writes `/proc/sys/<key>` in this namespace (e.g. `net/ipv6/conf/eth0/accept_ra`).
    fn write_sysctl(&mut self, key: &str, value: &str) -> Result<(), NetlinkError>;
    /// Turns TX checksum offload on/off (ethtool `tx`), in this namespace.
    fn set_tx_checksum(&mut self, name: &str, on: bool) -> Result<(), NetlinkError>;
}

/// Runs `f` on a fresh OS thread that first joins the network namespace at `path`. The thread is
/// discarded afterwards, so no thread of the caller ever changes namespace.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, NetlinkError> {
    let ns = std::fs::File::open(path).map_err(|e| NetlinkError::Netns { path: path.to_path_buf(), source: e })?;
    let p = path.to_path_buf();
    let handle = std::thread::spawn(move || -> std::io::Result<T> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        f()
    });
    match handle.join() {
        Ok(r) => r.map_err(|e| NetlinkError::Netns { path: p, source: e }),
        Err(_) => Err(NetlinkError::Netns { path: p, source: std::io::Error::other("netns worker thread panicked") }),
    }
}

fn write_proc_sys(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}

/// `SIOCETHTOOL` / `ETHTOOL_STXCSUM` on a socket of the calling thread's namespace.
fn ethtool_set_tx_csum(name: &str, on: bool) -> std::io::Result<()> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct Ifreq {
        name: [libc::c_char; libc::IFNAMSIZ],
        data: *mut libc::c_void,
        _pad: [u8; 16],
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "interface name too long"));
    }
    let mut value = EthtoolValue { cmd: ETHTOOL_STXCSUM, data: u32::from(on) };
    let mut req = Ifreq { name: [0; libc::IFNAMSIZ], data: (&mut value as *mut EthtoolValue).cast(), _pad: [0; 16] };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned here.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: req and value outlive the call; the kernel reads/writes exactly these structs.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req as *mut Ifreq) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

mod real {
    use super::*;
    use futures::TryStreamExt;
    use rtnetlink::packet_route::AddressFamily;
    use rtnetlink::packet_route::address::AddressAttribute;
    use rtnetlink::packet_route::link::{
        InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
    };
    use rtnetlink::packet_route::neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    };
    use rtnetlink::packet_route::route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType,
    };
    use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder};

    /// [`Netlink`] over a real `NETLINK_ROUTE` socket bound to one namespace.
    pub struct RtNetlink {
        rt: tokio::runtime::Runtime,
        handle: rtnetlink::Handle,
        netns: Option<PathBuf>,
    }

    impl std::fmt::Debug for RtNetlink {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RtNetlink").field("netns", &self.netns).finish()
        }
    }

    fn errno(e: &rtnetlink::Error) -> Option<i32> {
        match e {
            rtnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
            _ => None,
        }
    }

    fn to_io(e: rtnetlink::Error) -> std::io::Error {
        match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io(),
            _ => std::io::Error::other(e.to_string()),
        }
    }

    fn req(op: &'static str, target: impl std::fmt::Display, e: rtnetlink::Error) -> NetlinkError {
        match errno(&e) {
            Some(libc::EEXIST) => NetlinkError::Exists { op, target: target.to_string() },
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) => {
                NetlinkError::NotFound { op, target: target.to_string() }
            }
            _ => NetlinkError::Request { op, target: target.to_string(), source: to_io(e) },
        }
    }

    impl RtNetlink {
        /// A socket in the caller's current network namespace.
        pub fn current() -> Result<Self, NetlinkError> {
            let socket = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
                .map_err(|e| NetlinkError::Netns { path: PathBuf::from("/proc/self/ns/net"), source: e })?;
            Self::from_socket(socket, None)
        }

        /// A socket created inside the namespace at `path` (see the module docs).
        pub fn in_netns(path: &Path) -> Result<Self, NetlinkError> {
            let fd = in_netns(path, || {
                let s = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
                Ok(s.into_raw_fd())
            })?;
            // SAFETY: fd is a netlink socket we just created and own exclusively.
            let socket = unsafe { rtnetlink::sys::Socket::from_raw_fd(fd) };
            Self::from_socket(socket, Some(path.to_path_buf()))
        }

        fn from_socket(socket: rtnetlink::sys::Socket, netns: Option<PathBuf>) -> Result<Self, NetlinkError> {
            let where_ = netns.clone().unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| NetlinkError::Netns { path: where_.clone(), source: e })?;
            let fd = socket.into_raw_fd();
            let handle = {
                let _guard = rt.enter();
                // SAFETY: fd is an owned netlink socket; TokioSocket takes ownership.
                let tsock = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(fd) };
                let (conn, handle, _) = rtnetlink::from_socket(tsock);
                rt.spawn(conn);
                handle
            };
            Ok(RtNetlink { rt, handle, netns })
        }

        /// The namespace this socket lives in (None = the process's own).
        pub fn netns(&self) -> Option<&Path> {
            self.netns.as_deref()
        }

        fn get_link(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
            let h = self.handle.clone();
            let name_s = name.to_string();
            let r = self.rt.block_on(async move { h.link().get().match_name(name_s).execute().try_next().await });
            match r {
                Ok(m) => Ok(m),
                Err(e) => match req("get link", name, e) {
                    NetlinkError::NotFound { .. } => Ok(None),
                    other => Err(other),
                },
            }
        }

        fn link_set(&self, op: &'static str, index: u32, msg: LinkMessage) -> Result<(), NetlinkError> {
            let h = self.handle.clone();
            self.rt.block_on(async move { h.link().set(msg).execute().await }).map_err(|e| req(op, index, e))
        }

        fn route_msg(r: &Route) -> RouteMessage {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(r.dst.network(), r.dst.prefix_len());
            if let Some(gw) = r.gw {
                b = b.gateway(gw);
            }
            if let Some(oif) = r.oif {
                b = b.output_interface(oif);
            }
            if r.onlink {
                b = b.onlink();
            }
            b.build()
        }
    }

    fn parse_link(m: &LinkMessage) -> LinkInfo {
        let mut l =
            LinkInfo { index: m.header.index, up: m.header.flags.contains(LinkFlags::Up), ..Default::default() };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Mtu(v) => l.mtu = *v,
                LinkAttribute::Controller(c) => l.master = Some(*c),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(a);
                    l.mac = Some(m);
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            NlLinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                            NlLinkInfo::Data(InfoData::Vxlan(v)) => {
                                let mut x = VxlanAttrs::default();
                                for a in v {
                                    match a {
                                        InfoVxlan::Id(id) => x.vni = Some(*id),
                                        InfoVxlan::Port(p) => x.port = Some(*p),
                                        InfoVxlan::Local(ip) => x.local = Some(*ip),
                                        InfoVxlan::Link(d) => x.dev = Some(*d),
                                        InfoVxlan::Learning(b) => x.learning = Some(*b),
                                        _ => {}
                                    }
                                }
                                l.vxlan = Some(x);
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }

    /// The 6-byte link-layer address of a neighbour/FDB message.
    fn lladdr(m: &NeighbourMessage) -> Option<[u8; 6]> {
        m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(l);
                Some(mac)
            }
            _ => None,
        })
    }

    fn parse_route(m: &RouteMessage) -> Option<Route> {
        if m.header.address_family != AddressFamily::Inet
            || m.header.table != RouteHeader::RT_TABLE_MAIN
            || m.header.kind != RouteType::Unicast
        {
            return None;
        }
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut gw = None;
        let mut oif = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(*ip),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Table(t) if *t != u32::from(RouteHeader::RT_TABLE_MAIN) => return None,
                _ => {}
            }
        }
        let dst = Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?;
        Some(Route { dst, gw, oif, onlink: m.header.flags.contains(RouteFlags::Onlink) })
    }

    impl Netlink for RtNetlink {
        fn links(&mut self) -> Result<Vec<LinkInfo>, NetlinkError> {
            let h = self.handle.clone();
            let msgs: Vec<LinkMessage> = self
                .rt
                .block_on(async move { h.link().get().execute().try_collect().await })
                .map_err(|e| req("list links", "", e))?;
            Ok(msgs.iter().map(parse_link).collect())
        }

        fn link(&mut self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
            Ok(self.get_link(name)?.as_ref().map(parse_link))
        }

        fn add_bridge(&mut self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
            let h = self.handle.clone();
            let msg = LinkBridge::new(name).mtu(mtu).build();
            self.rt.block_on(async move { h.link().add(msg).execute().await }).map_err(|e| req("add bridge", name, e))
        }

        fn add_veth(&mut self, host: &str, peer: &str, peer_netns: &Path, mtu: u32) -> Result<(), NetlinkError> {
            let ns = std::fs::File::open(peer_netns)
                .map_err(|e| NetlinkError::Netns { path: peer_netns.to_path_buf(), source: e })?;
            let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
                .name(peer.to_string())
                .mtu(mtu)
                .setns_by_fd(ns.as_raw_fd())
                .build();
            let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
                .name(host.to_string())
                .mtu(mtu)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
                .build();
            let h = self.handle.clone();
            let r = self.rt.block_on(async move { h.link().add(msg).execute().await });
            drop(ns);
            r.map_err(|e| req("add veth", format!("{host}/{peer}"), e))
        }

        fn add_vxlan(&mut self, s: &VxlanSpec) -> Result<(), NetlinkError> {
            let msg = LinkVxlan::new(&s.name, s.vni)
                .port(s.port)
                .local(s.local)
                .dev(s.dev_index)
                .learning(s.learning)
                .mtu(s.mtu)
                .build();
            let h = self.handle.clone();
            self.rt.block_on(async move { h.link().add(msg).execute().await }).map_err(|e| req("add vxlan", &s.name, e))
        }

        fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
            let h = self.handle.clone();
            self.rt
                .block_on(async move { h.link().del(index).execute().await })
                .map_err(|e| req("delete link", index, e))
        }

        fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
            self.link_set("set up", index, LinkUnspec::new_with_index(index).up().build())
        }

        fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
            self.link_set("set mtu", index, LinkUnspec::new_with_index(index).mtu(mtu).build())
        }

        fn set_master(&mut self, index: u32, master: u32) -> Result<(), NetlinkError> {
            self.link_set("set master", index, LinkUnspec::new_with_index(index).controller(master).build())
        }

        fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
            let h = self.handle.clone();
            let msg = LinkBridgePort::new(index).hairpin(on).build();
            self.rt
                .block_on(async move { h.link().set_port(msg).execute().await })
                .map_err(|e| req("set hairpin", index, e))
        }

        fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
            let h = self.handle.clone();
            let msgs: Vec<_> = self
                .rt
                .block_on(async move {
                    h.address().get().set_link_index_filter(index).execute().try_collect::<Vec<_>>().await
                })
                .map_err(|e| req("list addresses", index, e))?;
            let mut out = Vec::new();
            for m in msgs {
                if m.header.index != index {
                    continue;
                }
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let addr = addr.or_else(|| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                });
                if let Some(ip) = addr
                    && let Ok(n) = IpNet::new(ip, m.header.prefix_len)
                {
                    out.push(n);
                }
            }
            Ok(out)
        }

        fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
            let h = self.handle.clone();
            let r =
                self.rt.block_on(async move { h.address().add(index, addr.addr(), addr.prefix_len()).execute().await });
            match r.map_err(|e| req("add address", addr, e)) {
                Err(NetlinkError::Exists { .. }) => Ok(()),
                other => other,
            }
        }

        fn del_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
            let h = self.handle.clone();
            let r = self.rt.block_on(async move {
                let msgs: Vec<_> = h.address().get().set_link_index_filter(index).execute().try_collect().await?;
                for m in msgs {
                    let matches = m.header.index == index
                        && m.header.prefix_len == addr.prefix_len()
                        && m.attributes.iter().any(|a| matches!(a, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == addr.addr()));
                    if matches {
                        h.address().del(m).execute().await?;
                    }
                }
                Ok::<(), rtnetlink::Error>(())
            });
            r.map_err(|e| req("delete address", addr, e))
        }

        fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
            let h = self.handle.clone();
            let msgs: Vec<RouteMessage> = self
                .rt
                .block_on(async move {
                    h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute().try_collect().await
                })
                .map_err(|e| req("list routes", "", e))?;
            Ok(msgs.iter().filter_map(parse_route).collect())
        }

        fn replace_route(&mut self, r: &Route) -> Result<(), NetlinkError> {
            let msg = Self::route_msg(r);
            let h = self.handle.clone();
            self.rt
                .block_on(async move { h.route().add(msg).replace().execute().await })
                .map_err(|e| req("replace route", r.dst, e))
        }

        fn del_route(&mut self, r: &Route) -> Result<(), NetlinkError> {
            let msg = Self::route_msg(r);
            let h = self.handle.clone();
            self.rt
                .block_on(async move { h.route().del(msg).execute().await })
                .map_err(|e| req("delete route", r.dst, e))
        }

        fn neighbours(&mut self, index: u32) -> Result<Vec<Neighbour>, NetlinkError> {
            let h = self.handle.clone();
            let msgs: Vec<NeighbourMessage> = self
                .rt
                .block_on(async move {
                    h.neighbours().get().set_address_family(AddressFamily::Inet).execute().try_collect().await
                })
                .map_err(|e| req("list neighbours", index, e))?;
            Ok(msgs
                .iter()
                .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
                .filter_map(|m| {
                    let ip = m.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                        _ => None,
                    })?;
                    let mac = lladdr(m)?;
                    Some(Neighbour { ip, mac })
                })
                .collect())
        }

        fn replace_neighbour(&mut self, index: u32, n: &Neighbour) -> Result<(), NetlinkError> {
            let h = self.handle.clone();
            let (ip, mac) = (n.ip, n.mac);
            self.rt
                .block_on(async move {
                    h.neighbours()
                        .add(index, IpAddr::V4(ip))
                        .link_layer_address(&mac)
                        .state(NeighbourState::Permanent)
                        .replace()
                        .execute()
                        .await
                })
                .map_err(|e| req("replace neighbour", n.ip, e))
        }

        fn del_neighbour(&mut self, index: u32, n: &Neighbour) -> Result<(), NetlinkError> {
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Inet;
            m.header.ifindex = index;
            m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(n.ip)));
            let h = self.handle.clone();
            self.rt
                .block_on(async move { h.neighbours().del(m).execute().await })
                .map_err(|e| req("delete neighbour", n.ip, e))
        }

        fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
            let h = self.handle.clone();
            let msgs: Vec<NeighbourMessage> = self
                .rt
                .block_on(async move {
                    h.neighbours().get().set_address_family(AddressFamily::Bridge).execute().try_collect().await
                })
                .map_err(|e| req("list fdb", index, e))?;
            Ok(msgs
                .iter()
                .filter(|m| m.header.ifindex == index)
                .filter_map(|m| {
                    // AF_BRIDGE messages carry NDA_DST as raw bytes (the family says bridge, not inet).
                    let dst = m.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                            Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                        }
                        _ => None,
                    })?;
                    let mac = lladdr(m)?;
                    Some(FdbEntry { mac, dst })
                })
                .collect())
        }

        fn replace_fdb(&mut self, index: u32, e: &FdbEntry) -> Result<(), NetlinkError> {
            let h = self.handle.clone();
            let (mac, dst) = (e.mac, e.dst);
            self.rt
                .block_on(async move {
                    h.neighbours()
                        .add_bridge(index, &mac)
                        .destination(IpAddr::V4(dst))
                        .flags(NeighbourFlags::Own)
                        .replace()
                        .execute()
                        .await
                })
                .map_err(|err| req("replace fdb", mac_to_string(&e.mac), err))
        }

        fn del_fdb(&mut self, index: u32, e: &FdbEntry) -> Result<(), NetlinkError> {
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Bridge;
            m.header.ifindex = index;
            m.header.flags = NeighbourFlags::Own;
            m.attributes.push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
            m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(e.dst)));
            let h = self.handle.clone();
            self.rt
                .block_on(async move { h.neighbours().del(m).execute().await })
                .map_err(|err| req("delete fdb", mac_to_string(&e.mac), err))
        }

        fn write_sysctl(&mut self, key: &str, value: &str) -> Result<(), NetlinkError> {
            let (k, v) = (key.to_string(), value.to_string());
            let r = match &self.netns {
                Some(p) => in_netns(p, move || write_proc_sys(&k, &v)),
                None => write_proc_sys(&k, &v).map_err(|e| NetlinkError::Request {
                    op: "sysctl",
                    target: key.into(),
                    source: e,
                }),
            };
            r.map_err(|e| match e {
                NetlinkError::Netns { source, .. } => {
                    NetlinkError::Request { op: "sysctl", target: key.into(), source }
                }
                other => other,
            })
        }

        fn set_tx_checksum(&mut self, name: &str, on: bool) -> Result<(), NetlinkError> {
            let n = name.to_string();
            let r = match &self.netns {
                Some(p) => in_netns(p, move || ethtool_set_tx_csum(&n, on)),
                None => ethtool_set_tx_csum(&n, on).map_err(|e| NetlinkError::Request {
                    op: "ethtool tx",
                    target: name.into(),
                    source: e,
                }),
            };
            r.map_err(|e| match e {
                NetlinkError::Netns { source, .. } => {
                    NetlinkError::Request { op: "ethtool tx", target: name.into(), source }
                }
                other => other,
            })
        }
    }
}

pub use real::RtNetlink;

#[cfg(any(test, feature = "test-helpers"))]
mod fake;
#[cfg(any(test, feature = "test-helpers"))]
pub use fake::{Call, FakeNetlink};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("0a:1B:2c:3d:4e:5f").unwrap();
        assert_eq!(mac_to_string(&m), "0a:1b:2c:3d:4e:5f");
        assert!(parse_mac("0a:1b:2c:3d:4e").is_none());
        assert!(parse_mac("0a:1b:2c:3d:4e:zz").is_none());
        assert!(parse_mac("0a:1b:2c:3d:4e:5f5").is_none());
    }
}
