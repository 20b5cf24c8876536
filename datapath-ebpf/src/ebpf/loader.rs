//! Loading, attaching, pinning and adopting the socket-LB programs with aya 0.14.
//!
//! Layout of the per-node pin directory: `kl_svc`, `kl_be`, `kl_aff`, `kl_rev` (maps, pinned by name
//! by the loader) and `link_<program>` (one pinned bpf link per cgroup hook). Every `ensure_*` step
//! checks what exists first: a valid pinned link is kept (no detach, no gap in service), a missing
//! one is recreated; maps are reused from their pins by the loader.

use super::{BeKey, BeVal, EbpfError, LbMaps, SOCK_LB_OBJ, SvcKey, SvcVal, pin};
use aya::maps::{HashMap, Map, MapData};
use aya::programs::links::{CgroupAttachMode, FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType};
use std::path::{Path, PathBuf};

/// The cgroup hooks: (program name in the object, link pin name).
pub const PROGRAMS: &[(&str, &str)] = &[
    ("kl_connect4", "link_connect4"),
    ("kl_sendmsg4", "link_sendmsg4"),
    ("kl_recvmsg4", "link_recvmsg4"),
    ("kl_getpeername4", "link_getpeername4"),
];
/// The tc hooks on the uplink: (program name, link pin name, ingress?).
pub const TC_PROGRAMS: &[(&str, &str, bool)] =
    &[("kl_nodeport_in", "link_tc_in", true), ("kl_nodeport_out", "link_tc_out", false)];
/// Maps pinned by name in the pin directory.
pub const MAPS: &[&str] = &["kl_svc", "kl_be", "kl_aff", "kl_rev", "kl_ct", "kl_rct"];

/// The node's uplink, where traffic from outside arrives (tc programs attach here with TCX links).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub iface: String,
    /// Network namespace holding `iface` (tests); `None` = the current one.
    pub netns: Option<PathBuf>,
}

/// Runs `f` on a thread that has entered `netns` (only that thread switches namespace).
fn in_netns<T: Send>(netns: Option<&Path>, f: impl FnOnce() -> Result<T, EbpfError> + Send) -> Result<T, EbpfError> {
    let Some(ns) = netns else { return f() };
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            let file =
                std::fs::File::open(ns).map_err(|e| EbpfError::Object(format!("open netns {}: {e}", ns.display())))?;
            // SAFETY: setns with a valid namespace fd; affects only this scoped thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(EbpfError::Object(format!("setns {}: {}", ns.display(), std::io::Error::last_os_error())));
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(EbpfError::Object("netns thread panicked".into())))
    })
}

/// Mounts bpffs at `/sys/fs/bpf` unless something is mounted there already.
pub fn ensure_bpffs() -> Result<(), EbpfError> {
    let root = Path::new("/sys/fs/bpf");
    let err = |reason: String| EbpfError::Bpffs { path: root.into(), reason };
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| err(e.to_string()))?;
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf ")) {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(|e| err(e.to_string()))?;
    let st = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .output()
        .map_err(|e| err(format!("spawn mount: {e}")))?;
    if !st.status.success() {
        return Err(err(String::from_utf8_lossy(&st.stderr).trim().to_string()));
    }
    Ok(())
}

/// The error with its whole source chain (aya puts the errno in the source of `SyscallError`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

fn prog_err(program: &str, e: ProgramError) -> EbpfError {
    // ProgramError::LoadError's Display carries the verifier log; keep it whole.
    EbpfError::Program { program: program.into(), reason: chain(&e) }
}

/// Loads (verifies) every program of an eBPF object without attaching anything: a preflight check
/// whose error carries the kernel verifier's log when a program is rejected. Maps the object pins by
/// name go to `pin_dir` (never to the bpffs root).
pub fn verify_object(bytes: &[u8], pin_dir: &Path) -> Result<Vec<String>, EbpfError> {
    if bytes.is_empty() {
        return Err(EbpfError::NotBuilt);
    }
    std::fs::create_dir_all(pin_dir).map_err(|e| EbpfError::Bpffs { path: pin_dir.into(), reason: e.to_string() })?;
    let mut obj = aya::EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(bytes)
        .map_err(|e| EbpfError::Object(chain(&e)))?;
    let mut loaded = Vec::new();
    for (name, prog) in obj.programs_mut() {
        let res = match prog {
            aya::programs::Program::CgroupSockAddr(p) => p.load(),
            aya::programs::Program::SchedClassifier(p) => p.load(),
            other => {
                return Err(EbpfError::Program {
                    program: name.into(),
                    reason: format!("unexpected program type {:?}", other.prog_type()),
                });
            }
        };
        res.map_err(|e| prog_err(name, e))?;
        loaded.push(name.to_string());
    }
    loaded.sort();
    Ok(loaded)
}

/// The attached socket-LB of one node.
#[derive(Debug)]
pub struct SockLb {
    pin_dir: PathBuf,
    cgroup: PathBuf,
    uplink: Option<Uplink>,
}

/// What [`SockLb::ensure`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnsureReport {
    /// Links that were already pinned and were kept.
    pub adopted: Vec<String>,
    /// Links that were (re)created.
    pub attached: Vec<String>,
    /// Map pins that were restored.
    pub repinned: Vec<String>,
}

impl SockLb {
    /// Ensures bpffs, the pin directory, the maps, one pinned link per hook on `cgroup` (a cgroup2
    /// directory) and, with an `uplink`, the tc ingress/egress links on it. Adopts everything that
    /// already exists.
    pub fn ensure(
        pin_dir: &Path,
        cgroup: &Path,
        uplink: Option<&Uplink>,
    ) -> Result<(SockLb, PinnedMaps, EnsureReport), EbpfError> {
        if SOCK_LB_OBJ.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        ensure_bpffs()?;
        std::fs::create_dir_all(pin_dir)
            .map_err(|e| EbpfError::Bpffs { path: pin_dir.into(), reason: e.to_string() })?;
        let lb = SockLb { pin_dir: pin_dir.into(), cgroup: cgroup.into(), uplink: uplink.cloned() };
        let report = lb.ensure_links()?;
        let maps = PinnedMaps::open(pin_dir)?;
        Ok((lb, maps, report))
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// (program, link pin) of every hook this node uses.
    fn hooks(&self) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<(&str, &str)> = PROGRAMS.to_vec();
        if self.uplink.is_some() {
            v.extend(TC_PROGRAMS.iter().map(|(p, l, _)| (*p, *l)));
        }
        v
    }

    fn ensure_links(&self) -> Result<EnsureReport, EbpfError> {
        let mut rep = EnsureReport::default();
        let hooks = self.hooks();
        let maps_missing = MAPS.iter().any(|m| !pin(&self.pin_dir, m).exists());
        if maps_missing {
            // Links still alive would keep programs bound to maps nobody can reach any more:
            // replace them together with the maps (dropping the pin detaches the link).
            for (_, link) in &hooks {
                let _ = std::fs::remove_file(pin(&self.pin_dir, link));
            }
        }
        let missing: Vec<(&str, &str)> =
            hooks.iter().copied().filter(|(_, link)| PinnedLink::from_pin(pin(&self.pin_dir, link)).is_err()).collect();
        rep.adopted = hooks.iter().filter(|p| !missing.contains(p)).map(|(_, l)| (*l).to_string()).collect();
        if missing.is_empty() && !maps_missing {
            return Ok(rep);
        }
        // The loader reuses maps already pinned in the directory and pins new ones there.
        let mut obj = aya::EbpfLoader::new()
            .default_map_pin_directory(&self.pin_dir)
            .load(SOCK_LB_OBJ)
            .map_err(|e| EbpfError::Object(chain(&e)))?;
        if maps_missing {
            rep.repinned = MAPS.iter().filter(|m| !pin(&self.pin_dir, m).exists()).map(|m| m.to_string()).collect();
        }
        for (prog_name, link_name) in missing {
            let fd = match TC_PROGRAMS.iter().find(|(p, _, _)| *p == prog_name) {
                Some((_, _, ingress)) => self.attach_tc(&mut obj, prog_name, *ingress)?,
                None => self.attach_cgroup(&mut obj, prog_name)?,
            };
            let path = pin(&self.pin_dir, link_name);
            let _ = std::fs::remove_file(&path); // a stale, invalid pin file
            fd.pin(&path).map_err(|e| EbpfError::Program { program: prog_name.into(), reason: chain(&e) })?;
            rep.attached.push(link_name.to_string());
        }
        Ok(rep)
    }

    fn attach_cgroup(&self, obj: &mut aya::Ebpf, prog_name: &str) -> Result<FdLink, EbpfError> {
        let cg = std::fs::File::open(&self.cgroup)
            .map_err(|source| EbpfError::Cgroup { path: self.cgroup.clone(), source })?;
        let prog: &mut CgroupSockAddr = obj
            .program_mut(prog_name)
            .ok_or_else(|| EbpfError::Object(format!("program {prog_name} not in object")))?
            .try_into()
            .map_err(|e| prog_err(prog_name, e))?;
        prog.load().map_err(|e| prog_err(prog_name, e))?;
        // With bpf links (kernel ≥ 5.7) "Single" means flags 0, which still coexists with other
        // programs' links on the same cgroup; the multi flag is rejected by BPF_LINK_CREATE.
        let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(|e| prog_err(prog_name, e))?;
        let link = prog.take_link(id).map_err(|e| prog_err(prog_name, e))?;
        link.try_into().map_err(|e: aya::programs::links::LinkError| EbpfError::Program {
            program: prog_name.into(),
            reason: chain(&e),
        })
    }

    fn attach_tc(&self, obj: &mut aya::Ebpf, prog_name: &str, ingress: bool) -> Result<FdLink, EbpfError> {
        let Some(up) = &self.uplink else {
            return Err(EbpfError::Object(format!("{prog_name}: no uplink configured")));
        };
        let prog: &mut SchedClassifier = obj
            .program_mut(prog_name)
            .ok_or_else(|| EbpfError::Object(format!("program {prog_name} not in object")))?
            .try_into()
            .map_err(|e| prog_err(prog_name, e))?;
        prog.load().map_err(|e| prog_err(prog_name, e))?;
        let dir = if ingress { TcAttachType::Ingress } else { TcAttachType::Egress };
        let iface = up.iface.clone();
        // TCX links (kernel ≥ 6.6) need no clsact qdisc and can be pinned like any bpf link.
        let link = in_netns(up.netns.as_deref(), || {
            let id = prog
                .attach_with_options(&iface, dir, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .map_err(|e| prog_err(prog_name, e))?;
            prog.take_link(id).map_err(|e| prog_err(prog_name, e))
        })?;
        link.try_into().map_err(|e: aya::programs::links::LinkError| EbpfError::Program {
            program: prog_name.into(),
            reason: format!("{iface}: {}", chain(&e)),
        })
    }

    /// Tamper check for the resync loop: re-creates missing link pins (re-attaching) and restores
    /// missing map pins from the open maps.
    pub fn repair(&self, maps: &PinnedMaps) -> Result<EnsureReport, EbpfError> {
        let mut rep = EnsureReport::default();
        for (name, data) in [("kl_svc", maps.svc.map_data()), ("kl_be", maps.be.map_data())] {
            let p = pin(&self.pin_dir, name);
            if !p.exists() {
                data.pin(&p).map_err(|e| EbpfError::Map { map: name.into(), reason: e.to_string() })?;
                rep.repinned.push(name.into());
            }
        }
        let links = self.ensure_links()?;
        rep.attached = links.attached;
        rep.adopted = links.adopted;
        rep.repinned.extend(links.repinned);
        Ok(rep)
    }

    /// Detaches everything and removes the pin directory (links die with their last reference).
    pub fn remove(pin_dir: &Path) -> std::io::Result<()> {
        if pin_dir.exists() {
            std::fs::remove_dir_all(pin_dir)?;
        }
        Ok(())
    }
}

/// The pinned service and backend maps, opened from their pins.
pub struct PinnedMaps {
    svc: HashMap<MapData, SvcKey, SvcVal>,
    be: HashMap<MapData, BeKey, BeVal>,
}

trait MapDataRef {
    fn map_data(&self) -> &MapData;
}
impl<K: aya::Pod, V: aya::Pod> MapDataRef for HashMap<MapData, K, V> {
    fn map_data(&self) -> &MapData {
        use aya::maps::IterableMap;
        self.map()
    }
}

fn map_err(map: &str, e: impl std::fmt::Display) -> EbpfError {
    EbpfError::Map { map: map.into(), reason: e.to_string() }
}

impl PinnedMaps {
    pub fn open(pin_dir: &Path) -> Result<Self, EbpfError> {
        let svc = MapData::from_pin(pin(pin_dir, "kl_svc")).map_err(|e| map_err("kl_svc", e))?;
        let be = MapData::from_pin(pin(pin_dir, "kl_be")).map_err(|e| map_err("kl_be", e))?;
        Ok(PinnedMaps {
            svc: HashMap::try_from(Map::HashMap(svc)).map_err(|e| map_err("kl_svc", e))?,
            be: HashMap::try_from(Map::HashMap(be)).map_err(|e| map_err("kl_be", e))?,
        })
    }
}

impl LbMaps for PinnedMaps {
    fn dump_services(&self) -> Result<Vec<(SvcKey, SvcVal)>, EbpfError> {
        self.svc.iter().collect::<Result<Vec<_>, _>>().map_err(|e| map_err("kl_svc", e))
    }
    fn dump_backends(&self) -> Result<Vec<(BeKey, BeVal)>, EbpfError> {
        self.be.iter().collect::<Result<Vec<_>, _>>().map_err(|e| map_err("kl_be", e))
    }
    fn put_service(&mut self, k: SvcKey, v: SvcVal) -> Result<(), EbpfError> {
        self.svc.insert(k, v, 0).map_err(|e| map_err("kl_svc", e))
    }
    fn del_service(&mut self, k: &SvcKey) -> Result<(), EbpfError> {
        match self.svc.remove(k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("kl_svc", e)),
        }
    }
    fn put_backend(&mut self, k: BeKey, v: BeVal) -> Result<(), EbpfError> {
        self.be.insert(k, v, 0).map_err(|e| map_err("kl_be", e))
    }
    fn del_backend(&mut self, k: &BeKey) -> Result<(), EbpfError> {
        match self.be.remove(k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("kl_be", e)),
        }
    }
}
