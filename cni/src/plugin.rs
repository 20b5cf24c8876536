//! The CNI commands: ADD, DEL, CHECK, GC, STATUS (VERSION lives in `main`/[`run`]).
//!
//! Order of ADD, chosen so that a rejected or failed ADD leaves nothing behind:
//! 1. validate config + environment (pure, [`crate::spec`]); open the pod netns; refuse an existing
//!    `CNI_IFNAME` — nothing has been created yet;
//! 2. ensure the node bridge (idempotent, shared by all pods; never rolled back);
//! 3. allocate the address (IPAM, persisted) — from here on every failure rolls back: the host
//!    veth is deleted (which removes the pod end too), a *new* allocation is released and the nft
//!    element removed;
//! 4. create the veth pair directly across namespaces (one netlink request), enslave, hairpin, up;
//! 5. configure the pod end: accept_ra=0, address, up, default route;
//! 6. optional masquerade element.
//!
//! A crash (SIGKILL) between 3 and 4 cannot roll back; the allocation's owner is then not among the
//! runtime's valid attachments and the next GC frees it (and deletes any half-wired host veth).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ipam::{Allocation, Ipam, IpamError, Owner, Pool, Store, SubnetFile};
use crate::masq::Masq;
use crate::netlink::{LinkInfo, Netlink, NetlinkError, Route, mac_to_string};
use crate::spec::{self, CniError, CniResult, Env, Interface, IpConfig, NetConf, RouteConfig, code};

/// Default node bridge.
pub const DEFAULT_BRIDGE: &str = "cni0";
/// Default IPAM data dir.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/keelson/cni/networks";
/// Prefix of host-side veth names (`kc` + 13 hex digits of sha256(container id, ifname)).
pub const VETH_PREFIX: &str = "kc";

/// The deterministic host-side veth name for an attachment (≤ 15 bytes).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    let hex = hex::encode(h.finalize());
    format!("{VETH_PREFIX}{}", &hex[..13])
}

/// Everything resolved from the config (and the subnet file) that the commands need.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub network: String,
    pub bridge: String,
    pub mtu: u32,
    pub hairpin: bool,
    pub ip_masq: bool,
    pub cluster: Vec<Ipv4Net>,
    pub subnet: Ipv4Net,
    pub data_dir: PathBuf,
}

impl Settings {
    /// Resolves settings. The node subnet comes from `ipam.subnet`, else from `ipam.subnetFile`
    /// (code 11 "try again later" while the agent has not written it yet).
    pub fn resolve(conf: &NetConf) -> Result<Settings, CniError> {
        let file = match (&conf.ipam.subnet, &conf.ipam.subnet_file) {
            (Some(_), _) => None,
            (None, Some(p)) => Some(SubnetFile::read(p).map_err(|e| {
                CniError::new(code::TRY_AGAIN_LATER, "node subnet file is not available", e.to_string())
            })?),
            (None, None) => {
                return Err(CniError::new(
                    code::INVALID_NETWORK_CONFIG,
                    "no node subnet configured",
                    "set ipam.subnet or ipam.subnetFile",
                ));
            }
        };
        let subnet = match (&conf.ipam.subnet, &file) {
            (Some(s), _) => spec::parse_v4_net("ipam.subnet", s)?.trunc(),
            (None, Some(f)) => f.subnet,
            (None, None) => {
                return Err(CniError::new(
                    code::INVALID_NETWORK_CONFIG,
                    "no node subnet configured",
                    "set ipam.subnet",
                ));
            }
        };
        Pool::new(subnet)
            .map_err(|e| CniError::new(code::INVALID_NETWORK_CONFIG, "invalid node subnet", e.to_string()))?;
        let cluster = match (&conf.cluster_cidr, file.as_ref().and_then(|f| f.network)) {
            (Some(c), _) => vec![spec::parse_v4_net("clusterCIDR", c)?.trunc()],
            (None, Some(n)) => vec![n],
            (None, None) => vec![subnet],
        };
        let mtu = conf.mtu.or(file.as_ref().and_then(|f| f.mtu)).unwrap_or(1500);
        Ok(Settings {
            network: conf.name.clone(),
            bridge: conf.bridge.clone().unwrap_or_else(|| DEFAULT_BRIDGE.to_string()),
            mtu,
            hairpin: conf.hairpin_mode.unwrap_or(true),
            ip_masq: conf.ip_masq.or(file.as_ref().and_then(|f| f.ip_masq)).unwrap_or(false),
            cluster,
            subnet,
            data_dir: conf.ipam.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        })
    }

    pub fn gateway(&self) -> Ipv4Addr {
        spec::gateway_of(self.subnet)
    }

    pub fn store(&self) -> Store {
        Store::new(&self.data_dir, &self.network)
    }
}

/// The data dir used when DEL/GC cannot resolve the subnet (the store does not need it).
fn store_for(conf: &NetConf) -> Store {
    Store::new(conf.ipam.data_dir.as_deref().unwrap_or(Path::new(DEFAULT_DATA_DIR)), &conf.name)
}

fn nl_err(msg: &str, e: NetlinkError) -> CniError {
    match e {
        NetlinkError::Netns { .. } => CniError::new(code::CONTAINER_UNKNOWN, msg, e.to_string()),
        other => CniError::new(code::NETLINK, msg, other.to_string()),
    }
}

fn ipam_err(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted { .. } => {
            CniError::new(code::IPAM_EXHAUSTED, "no free address in the node subnet", e.to_string())
        }
        other => CniError::new(code::IPAM_STORE, "IPAM store failure", other.to_string()),
    }
}

/// Opens a [`Netlink`] inside a pod's namespace.
pub type PodOpener<'a> = &'a dyn Fn(&Path) -> Result<Box<dyn Netlink>, NetlinkError>;

/// Opens the pod's netns; a path that does not exist is the spec's "container unknown".
fn open_existing(netns: &Path, open_pod: PodOpener<'_>) -> Result<Box<dyn Netlink>, CniError> {
    if !netns.exists() {
        return Err(CniError::new(
            code::CONTAINER_UNKNOWN,
            "network namespace does not exist",
            netns.display().to_string(),
        ));
    }
    open_pod(netns).map_err(|e| nl_err("open pod netns", e))
}

/// Ensures the node bridge exists, is a bridge, is up, has the gateway address; returns it.
pub fn ensure_bridge(node: &mut dyn Netlink, s: &Settings) -> Result<LinkInfo, CniError> {
    let br = match node.link(&s.bridge).map_err(|e| nl_err("look up bridge", e))? {
        Some(l) => l,
        None => {
            match node.add_bridge(&s.bridge, s.mtu) {
                Ok(()) | Err(NetlinkError::Exists { .. }) => {}
                Err(e) => return Err(nl_err("create bridge", e)),
            }
            node.link(&s.bridge)
                .map_err(|e| nl_err("look up bridge", e))?
                .ok_or_else(|| CniError::new(code::NETLINK, "bridge vanished after creation", s.bridge.clone()))?
        }
    };
    if br.kind.as_deref() != Some("bridge") {
        return Err(CniError::new(
            code::INVALID_NETWORK_CONFIG,
            "bridge name is taken by a non-bridge link",
            format!("{} is {:?}", s.bridge, br.kind),
        ));
    }
    let gw = IpNet::V4(
        Ipv4Net::new(s.gateway(), s.subnet.prefix_len())
            .map_err(|e| CniError::new(code::INVALID_NETWORK_CONFIG, "invalid subnet", e.to_string()))?,
    );
    let addrs = node.addresses(br.index).map_err(|e| nl_err("list bridge addresses", e))?;
    if !addrs.contains(&gw) {
        node.add_address(br.index, gw).map_err(|e| nl_err("add bridge gateway address", e))?;
    }
    if !br.up {
        node.set_up(br.index).map_err(|e| nl_err("set bridge up", e))?;
    }
    Ok(br)
}

/// Everything ADD created so far (for rollback).
#[derive(Default)]
struct Undo {
    host_veth: Option<String>,
    new_ip: Option<Ipv4Addr>,
    masq_ip: Option<Ipv4Addr>,
}

/// ADD.
pub fn cmd_add(
    conf: &NetConf,
    env: &Env,
    node: &mut dyn Netlink,
    open_pod: PodOpener<'_>,
    masq: &mut dyn Masq,
) -> Result<CniResult, CniError> {
    let s = Settings::resolve(conf)?;
    let prev = match &conf.prev_result {
        Some(v) => Some(CniResult::from_prev(v)?),
        None => None,
    };
    let netns = env
        .netns
        .clone()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is required", "ADD needs a netns"))?;
    let mut pod = open_existing(&netns, open_pod)?;
    if pod.link(&env.ifname).map_err(|e| nl_err("look up pod interface", e))?.is_some() {
        return Err(CniError::new(
            code::INTERFACE_EXISTS,
            "interface already exists in the pod netns",
            format!("{} in {}", env.ifname, netns.display()),
        ));
    }
    let br = ensure_bridge(node, &s)?;
    // A router for the pods: forwarding must be on in the node namespace.
    node.write_sysctl("net/ipv4/ip_forward", "1").map_err(|e| nl_err("enable ip_forward", e))?;

    let ipam = Ipam::new(Pool::new(s.subnet).map_err(ipam_err)?, s.store());
    let owner = Owner::new(&env.container_id, &env.ifname);
    let alloc = ipam.allocate(&owner).map_err(ipam_err)?;
    let mut undo = Undo { new_ip: matches!(alloc, Allocation::New(_)).then_some(alloc.ip()), ..Default::default() };
    let r = wire(&s, env, &netns, &br, alloc.ip(), node, pod.as_mut(), masq, &mut undo);
    match r {
        Ok(mut result) => {
            if let Some(p) = prev {
                result = merge_prev(p, result);
            }
            if let Some(dns) = &conf.dns {
                result.dns = dns.clone();
            }
            Ok(result)
        }
        Err(e) => {
            rollback(&s, node, &ipam, masq, undo);
            Err(e)
        }
    }
}

fn rollback(s: &Settings, node: &mut dyn Netlink, ipam: &Ipam, masq: &mut dyn Masq, undo: Undo) {
    if let Some(h) = undo.host_veth {
        match node.link(&h) {
            Ok(Some(l)) => {
                if let Err(e) = node.del_link(l.index) {
                    tracing::warn!(veth = %h, error = %e, "rollback: delete host veth");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(veth = %h, error = %e, "rollback: look up host veth"),
        }
    }
    if let Some(ip) = undo.masq_ip
        && let Err(e) = masq.remove_pods(&[ip])
    {
        tracing::warn!(%ip, error = %e, "rollback: remove masquerade element");
    }
    if let Some(ip) = undo.new_ip {
        let r = ipam.store.lock().and_then(|mut l| l.free(ip));
        if let Err(e) = r {
            tracing::warn!(%ip, network = %s.network, error = %e, "rollback: release address");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn wire(
    s: &Settings,
    env: &Env,
    netns: &Path,
    br: &LinkInfo,
    ip: Ipv4Addr,
    node: &mut dyn Netlink,
    pod: &mut dyn Netlink,
    masq: &mut dyn Masq,
    undo: &mut Undo,
) -> Result<CniResult, CniError> {
    let host = host_veth_name(&env.container_id, &env.ifname);
    // A host veth with our deterministic name is a leftover of an earlier, interrupted ADD of this
    // very attachment: replace it.
    if let Some(old) = node.link(&host).map_err(|e| nl_err("look up host veth", e))? {
        node.del_link(old.index).map_err(|e| nl_err("delete stale host veth", e))?;
    }
    match node.add_veth(&host, &env.ifname, netns, s.mtu) {
        Ok(()) => {}
        Err(NetlinkError::Exists { .. }) => {
            return Err(CniError::new(
                code::INTERFACE_EXISTS,
                "interface already exists",
                format!("{host} on the node or {} in the pod", env.ifname),
            ));
        }
        Err(e) => return Err(nl_err("create veth pair", e)),
    }
    undo.host_veth = Some(host.clone());
    let hl = node
        .link(&host)
        .map_err(|e| nl_err("look up host veth", e))?
        .ok_or_else(|| CniError::new(code::NETLINK, "host veth vanished", host.clone()))?;
    node.set_master(hl.index, br.index).map_err(|e| nl_err("attach veth to bridge", e))?;
    if s.hairpin {
        node.set_hairpin(hl.index, true).map_err(|e| nl_err("set hairpin", e))?;
    }
    node.set_up(hl.index).map_err(|e| nl_err("set host veth up", e))?;

    let pl = pod
        .link(&env.ifname)
        .map_err(|e| nl_err("look up pod interface", e))?
        .ok_or_else(|| CniError::new(code::NETLINK, "pod interface vanished", env.ifname.clone()))?;
    // Pods must not configure themselves from router advertisements on the pod network.
    match pod.write_sysctl(&format!("net/ipv6/conf/{}/accept_ra", env.ifname), "0") {
        Ok(()) => {}
        Err(NetlinkError::Request { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(nl_err("disable router advertisements", e)),
    }
    let addr = IpNet::V4(
        Ipv4Net::new(ip, s.subnet.prefix_len())
            .map_err(|e| CniError::new(code::INVALID_NETWORK_CONFIG, "invalid subnet", e.to_string()))?,
    );
    pod.add_address(pl.index, addr).map_err(|e| nl_err("add pod address", e))?;
    pod.set_up(pl.index).map_err(|e| nl_err("set pod interface up", e))?;
    let gw = s.gateway();
    let default = Route { dst: Ipv4Net::default(), gw: Some(gw), oif: Some(pl.index), onlink: false };
    pod.replace_route(&default).map_err(|e| nl_err("add pod default route", e))?;
    if s.ip_masq {
        undo.masq_ip = Some(ip);
        masq.add_pod(&s.cluster, ip).map_err(|e| CniError::new(code::NFTABLES, "install masquerade", e.to_string()))?;
    }
    let mac = |l: &LinkInfo| l.mac.as_ref().map(mac_to_string).unwrap_or_default();
    // A bridge takes its MAC from its ports: report the MAC it has now that ours is attached.
    let br = node.link(&s.bridge).ok().flatten().unwrap_or_else(|| br.clone());
    let br = &br;
    Ok(CniResult {
        interfaces: vec![
            Interface { name: s.bridge.clone(), mac: mac(br), mtu: Some(br.mtu), sandbox: None },
            Interface { name: host, mac: mac(&hl), mtu: Some(s.mtu), sandbox: None },
            Interface {
                name: env.ifname.clone(),
                mac: mac(&pl),
                mtu: Some(s.mtu),
                sandbox: Some(netns.display().to_string()),
            },
        ],
        ips: vec![IpConfig { address: addr, gateway: Some(IpAddr::V4(gw)), interface: Some(2) }],
        routes: vec![RouteConfig {
            dst: "0.0.0.0/0".parse().unwrap_or(IpNet::V4(Ipv4Net::default())),
            gw: Some(IpAddr::V4(gw)),
        }],
        dns: Value::Null,
    })
}

/// Appends our result to a previous plugin's, shifting our interface indices.
pub fn merge_prev(mut prev: CniResult, ours: CniResult) -> CniResult {
    let off = prev.interfaces.len();
    prev.interfaces.extend(ours.interfaces);
    prev.ips.extend(ours.ips.into_iter().map(|mut i| {
        i.interface = i.interface.map(|x| x + off);
        i
    }));
    prev.routes.extend(ours.routes);
    if prev.dns.is_null() {
        prev.dns = ours.dns;
    }
    prev
}

/// DEL: release the address (the netns may be gone), delete the host veth, drop the nft element.
/// Idempotent: deleting what is already gone succeeds.
pub fn cmd_del(conf: &NetConf, env: &Env, node: &mut dyn Netlink, masq: &mut dyn Masq) -> Result<(), CniError> {
    let store = match Settings::resolve(conf) {
        Ok(s) => s.store(),
        Err(_) => store_for(conf),
    };
    let owner = Owner::new(&env.container_id, &env.ifname);
    let freed = {
        let mut locked = store.lock().map_err(ipam_err)?;
        let current = locked.allocations().map_err(ipam_err)?;
        let freed = crate::ipam::core::release(&current, &owner);
        for ip in &freed {
            locked.free(*ip).map_err(ipam_err)?;
        }
        freed
    };
    let host = host_veth_name(&env.container_id, &env.ifname);
    if let Some(l) = node.link(&host).map_err(|e| nl_err("look up host veth", e))? {
        match node.del_link(l.index) {
            Ok(()) | Err(NetlinkError::NotFound { .. }) => {}
            Err(e) => return Err(nl_err("delete host veth", e)),
        }
    }
    if conf.ip_masq == Some(true) || Settings::resolve(conf).map(|s| s.ip_masq).unwrap_or(false) {
        masq.remove_pods(&freed).map_err(|e| CniError::new(code::NFTABLES, "remove masquerade", e.to_string()))?;
    }
    Ok(())
}

/// CHECK: the pod interface, its address, the default route, the host veth on the bridge and the
/// IPAM record must all still match `prevResult`.
pub fn cmd_check(conf: &NetConf, env: &Env, node: &mut dyn Netlink, open_pod: PodOpener<'_>) -> Result<(), CniError> {
    let s = Settings::resolve(conf)?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_NETWORK_CONFIG, "CHECK needs prevResult", "prevResult missing"))?;
    let prev = CniResult::from_prev(prev)?;
    let fail = |what: String| Err(CniError::new(code::CHECK_FAILED, "attachment does not match prevResult", what));
    let netns = env.netns.clone().unwrap_or_default();
    let mut pod = open_existing(&netns, open_pod)?;
    let Some(pl) = pod.link(&env.ifname).map_err(|e| nl_err("look up pod interface", e))? else {
        return fail(format!("{} missing in {}", env.ifname, netns.display()));
    };
    let ipam = Ipam::new(Pool::new(s.subnet).map_err(ipam_err)?, s.store());
    let held = ipam.lookup(&Owner::new(&env.container_id, &env.ifname)).map_err(ipam_err)?;
    let addrs = pod.addresses(pl.index).map_err(|e| nl_err("list pod addresses", e))?;
    let ours: Vec<&IpConfig> =
        prev.ips.iter().filter(|i| matches!(i.address.addr(), IpAddr::V4(v) if s.subnet.contains(&v))).collect();
    if ours.is_empty() {
        return fail("prevResult has no address in the node subnet".into());
    }
    for ip in ours {
        if !addrs.contains(&ip.address) {
            return fail(format!("address {} missing on {}", ip.address, env.ifname));
        }
        if held
            != Some(match ip.address.addr() {
                IpAddr::V4(v) => v,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            })
        {
            return fail(format!("IPAM does not hold {} for this attachment", ip.address));
        }
    }
    let routes = pod.routes().map_err(|e| nl_err("list pod routes", e))?;
    let gw = s.gateway();
    if !routes.iter().any(|r| r.dst.prefix_len() == 0 && r.gw == Some(gw)) {
        return fail(format!("default route via {gw} missing in the pod"));
    }
    let host = host_veth_name(&env.container_id, &env.ifname);
    let br = node.link(&s.bridge).map_err(|e| nl_err("look up bridge", e))?;
    match (node.link(&host).map_err(|e| nl_err("look up host veth", e))?, br) {
        (Some(h), Some(b)) if h.master == Some(b.index) => Ok(()),
        (Some(_), _) => fail(format!("{host} is not attached to {}", s.bridge)),
        (None, _) => fail(format!("host veth {host} missing")),
    }
}

/// GC: free every allocation whose attachment is not in `cni.dev/valid-attachments`, delete our
/// host veths on the bridge that belong to no valid attachment, drop their nft elements.
///
/// Host veths are recognised by name (`kc` + 13 hex) and must be on our bridge or on no bridge at
/// all (a crash between creating and enslaving the veth); veths on another bridge belong to
/// another network and are left alone. As the spec requires, the runtime does not run GC
/// concurrently with ADD for the same network.
pub fn cmd_gc(conf: &NetConf, node: &mut dyn Netlink, masq: &mut dyn Masq) -> Result<GcReport, CniError> {
    let valid_list = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(code::INVALID_NETWORK_CONFIG, "GC needs cni.dev/valid-attachments", "field missing")
    })?;
    let valid: BTreeSet<Owner> = valid_list.iter().map(|a| Owner::new(&a.container_id, &a.ifname)).collect();
    let store = match Settings::resolve(conf) {
        Ok(s) => s.store(),
        Err(_) => store_for(conf),
    };
    let freed = {
        let mut locked = store.lock().map_err(ipam_err)?;
        let current = locked.allocations().map_err(ipam_err)?;
        let stale = crate::ipam::core::gc(&current, &valid);
        for (ip, _) in &stale {
            locked.free(*ip).map_err(ipam_err)?;
        }
        stale
    };
    let bridge = conf.bridge.clone().unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
    let br_index = node.link(&bridge).map_err(|e| nl_err("look up bridge", e))?.map(|b| b.index);
    let keep: BTreeSet<String> = valid.iter().map(|o| host_veth_name(&o.container_id, &o.ifname)).collect();
    let mut deleted = Vec::new();
    for l in node.links().map_err(|e| nl_err("list links", e))? {
        let ours = l.kind.as_deref() == Some("veth") && l.name.starts_with(VETH_PREFIX) && l.name.len() == 15;
        // on our bridge, or never enslaved (a crash between veth creation and enslaving)
        let attached_here = l.master.is_none() || l.master == br_index;
        if ours && attached_here && !keep.contains(&l.name) {
            match node.del_link(l.index) {
                Ok(()) | Err(NetlinkError::NotFound { .. }) => deleted.push(l.name.clone()),
                Err(e) => return Err(nl_err("delete stale veth", e)),
            }
        }
    }
    let ips: Vec<Ipv4Addr> = freed.iter().map(|(ip, _)| *ip).collect();
    if !ips.is_empty() && Settings::resolve(conf).map(|s| s.ip_masq).unwrap_or(conf.ip_masq == Some(true)) {
        masq.remove_pods(&ips).map_err(|e| CniError::new(code::NFTABLES, "remove masquerade", e.to_string()))?;
    }
    Ok(GcReport { freed: ips, deleted_links: deleted })
}

/// What GC removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcReport {
    pub freed: Vec<Ipv4Addr>,
    pub deleted_links: Vec<String>,
}

/// STATUS: ready when the subnet resolves and the IPAM store can be locked and has room.
pub fn cmd_status(conf: &NetConf) -> Result<(), CniError> {
    let s = Settings::resolve(conf)
        .map_err(|e| CniError::new(code::NOT_READY, "plugin is not ready", e.msg + ": " + &e.details))?;
    let pool = Pool::new(s.subnet).map_err(|e| CniError::new(code::NOT_READY, "plugin is not ready", e.to_string()))?;
    let used = s
        .store()
        .lock()
        .and_then(|mut l| l.allocations())
        .map_err(|e| CniError::new(code::NOT_READY, "IPAM store unavailable", e.to_string()))?;
    if used.len() >= pool.size() {
        return Err(CniError::new(code::NOT_READY, "node subnet exhausted", s.subnet.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::masq::FakeMasq;
    use crate::netlink::{Call, FakeNetlink};
    use crate::spec::parse_conf;

    fn conf(dir: &Path, extra: &str) -> NetConf {
        parse_conf(
            format!(
                r#"{{"cniVersion":"1.1.0","name":"kn","type":"keelson-cni","bridge":"kb0","mtu":1450,"ipMasq":true,
                "ipam":{{"subnet":"10.244.1.0/24","dataDir":"{}"}}{extra}}}"#,
                dir.display()
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn env(id: &str) -> Env {
        Env {
            container_id: id.into(),
            netns: Some(PathBuf::from("/proc/self/ns/net")),
            ifname: "eth0".into(),
            args: vec![],
        }
    }

    #[test]
    fn veth_names_are_deterministic_and_short() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abc0", "eth"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(VETH_PREFIX));
    }

    #[test]
    fn add_wires_bridge_veth_pod_and_masq_then_del_cleans() {
        let tmp = tempfile::tempdir().unwrap();
        let c = conf(tmp.path(), "");
        let mut node = FakeNetlink::new();
        let mut masq = FakeMasq::default();
        let opener = |_: &Path| -> Result<Box<dyn Netlink>, NetlinkError> {
            // the veth peer "arrives" after the existence check, as when the node creates it
            let mut f = FakeNetlink::new();
            f.arriving.push(("eth0".into(), "veth".into(), 1450));
            Ok(Box::new(f))
        };
        let r = cmd_add(&c, &env("c1"), &mut node, &opener, &mut masq).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.244.1.2/24");
        assert_eq!(r.ips[0].gateway.unwrap().to_string(), "10.244.1.1");
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("/proc/self/ns/net"));
        let br = node.link("kb0").unwrap().unwrap();
        assert!(br.up);
        assert_eq!(node.addresses(br.index).unwrap(), vec!["10.244.1.1/24".parse::<IpNet>().unwrap()]);
        let host = host_veth_name("c1", "eth0");
        let hl = node.link(&host).unwrap().unwrap();
        assert_eq!(hl.master, Some(br.index));
        assert!(node.calls.contains(&Call::SetHairpin { name: host.clone(), on: true }));
        assert_eq!(node.sysctls.get("net/ipv4/ip_forward").map(String::as_str), Some("1"));
        assert!(masq.pods.contains(&"10.244.1.2".parse().unwrap()));

        cmd_del(&c, &env("c1"), &mut node, &mut masq).unwrap();
        assert!(node.link(&host).unwrap().is_none());
        assert!(masq.pods.is_empty());
        cmd_del(&c, &env("c1"), &mut node, &mut masq).unwrap();
        let ipam = Settings::resolve(&c).unwrap().store();
        assert!(ipam.lock().unwrap().allocations().unwrap().is_empty());
    }

    #[test]
    fn existing_pod_interface_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let c = conf(tmp.path(), "");
        let mut node = FakeNetlink::new();
        let mut masq = FakeMasq::default();
        let opener = |_: &Path| -> Result<Box<dyn Netlink>, NetlinkError> {
            Ok(Box::new(FakeNetlink::new().with_link("eth0", "veth", 1500)))
        };
        let e = cmd_add(&c, &env("c1"), &mut node, &opener, &mut masq).unwrap_err();
        assert_eq!(e.code, code::INTERFACE_EXISTS);
        assert!(node.calls.is_empty(), "nothing created: {:?}", node.calls);
        assert!(
            !tmp.path().join("kn").exists()
                || Settings::resolve(&c).unwrap().store().lock().unwrap().allocations().unwrap().is_empty()
        );
    }

    #[test]
    fn failure_after_allocation_rolls_back() {
        let tmp = tempfile::tempdir().unwrap();
        let c = conf(tmp.path(), "");
        let mut node = FakeNetlink::new();
        let mut masq = FakeMasq::default();
        // The pod end never shows up → wiring fails after the veth and the allocation exist.
        let opener = |_: &Path| -> Result<Box<dyn Netlink>, NetlinkError> { Ok(Box::new(FakeNetlink::new())) };
        let e = cmd_add(&c, &env("c1"), &mut node, &opener, &mut masq).unwrap_err();
        assert_eq!(e.code, code::NETLINK, "{e}");
        assert!(node.link(&host_veth_name("c1", "eth0")).unwrap().is_none(), "host veth rolled back");
        assert!(Settings::resolve(&c).unwrap().store().lock().unwrap().allocations().unwrap().is_empty());
    }

    #[test]
    fn gc_frees_what_is_not_valid() {
        let tmp = tempfile::tempdir().unwrap();
        let c = conf(tmp.path(), r#","cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]"#);
        let s = Settings::resolve(&c).unwrap();
        let ipam = Ipam::new(Pool::new(s.subnet).unwrap(), s.store());
        ipam.allocate(&Owner::new("keep", "eth0")).unwrap();
        let leaked = ipam.allocate(&Owner::new("crashed", "eth0")).unwrap().ip();
        let mut node = FakeNetlink::new();
        let mut masq = FakeMasq::default();
        ensure_bridge(&mut node, &s).unwrap();
        let br = node.link("kb0").unwrap().unwrap().index;
        let stale = host_veth_name("crashed", "eth0");
        node.add_veth(&stale, "eth0", Path::new("/x"), 1450).unwrap();
        let si = node.link(&stale).unwrap().unwrap().index;
        node.set_master(si, br).unwrap();
        node.add_veth(&host_veth_name("keep", "eth0"), "eth0", Path::new("/x"), 1450).unwrap();
        let unenslaved = host_veth_name("crashed-early", "eth0");
        node.add_veth(&unenslaved, "eth0", Path::new("/x"), 1450).unwrap();
        node.add_bridge("other0", 1500).unwrap();
        let other = host_veth_name("other-net", "eth0");
        node.add_veth(&other, "eth0", Path::new("/x"), 1450).unwrap();
        let (oi, ob) = (node.link(&other).unwrap().unwrap().index, node.link("other0").unwrap().unwrap().index);
        node.set_master(oi, ob).unwrap();
        let report = cmd_gc(&c, &mut node, &mut masq).unwrap();
        assert_eq!(report.freed, vec![leaked]);
        let mut deleted = report.deleted_links.clone();
        deleted.sort();
        let mut want = vec![stale, unenslaved];
        want.sort();
        assert_eq!(deleted, want, "stale veths on our bridge or on none; not another network's");
        assert!(node.link(&other).unwrap().is_some());
        assert_eq!(ipam.allocations().unwrap().len(), 1);
        let no_list = conf(tmp.path(), "");
        assert_eq!(cmd_gc(&no_list, &mut node, &mut masq).unwrap_err().code, code::INVALID_NETWORK_CONFIG);
    }

    #[test]
    fn settings_from_subnet_file_and_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("subnet.env");
        std::fs::write(&f, "KEELSON_NETWORK=10.244.0.0/16\nKEELSON_SUBNET=10.244.7.1/24\nKEELSON_MTU=1400\n").unwrap();
        let c = parse_conf(
            format!(r#"{{"cniVersion":"0.4.0","name":"n","type":"k","ipam":{{"subnetFile":"{}"}}}}"#, f.display())
                .as_bytes(),
        )
        .unwrap();
        let s = Settings::resolve(&c).unwrap();
        assert_eq!(s.subnet.to_string(), "10.244.7.0/24");
        assert_eq!(s.mtu, 1400);
        assert_eq!(s.cluster, vec!["10.244.0.0/16".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(s.bridge, DEFAULT_BRIDGE);
        std::fs::remove_file(&f).unwrap();
        assert_eq!(Settings::resolve(&c).unwrap_err().code, code::TRY_AGAIN_LATER);
        assert_eq!(cmd_status(&c).unwrap_err().code, code::NOT_READY);
        let bad =
            parse_conf(br#"{"cniVersion":"1.1.0","name":"n","type":"k","ipam":{"subnet":"10.0.0.0/33"}}"#).unwrap();
        assert_eq!(Settings::resolve(&bad).unwrap_err().code, code::INVALID_NETWORK_CONFIG);
        let tiny =
            parse_conf(br#"{"cniVersion":"1.1.0","name":"n","type":"k","ipam":{"subnet":"10.0.0.0/31"}}"#).unwrap();
        assert_eq!(Settings::resolve(&tiny).unwrap_err().code, code::INVALID_NETWORK_CONFIG);
        let none = parse_conf(br#"{"cniVersion":"1.1.0","name":"n","type":"k"}"#).unwrap();
        assert_eq!(Settings::resolve(&none).unwrap_err().code, code::INVALID_NETWORK_CONFIG);
    }

    #[test]
    fn merge_shifts_interface_indices() {
        let prev = CniResult {
            interfaces: vec![Interface { name: "lo".into(), mac: String::new(), mtu: None, sandbox: None }],
            ..Default::default()
        };
        let ours = CniResult {
            interfaces: vec![Interface { name: "eth0".into(), mac: String::new(), mtu: None, sandbox: None }],
            ips: vec![IpConfig { address: "10.0.0.2/24".parse().unwrap(), gateway: None, interface: Some(0) }],
            ..Default::default()
        };
        let m = merge_prev(prev, ours);
        assert_eq!(m.interfaces.len(), 2);
        assert_eq!(m.ips[0].interface, Some(1));
    }
}
