//! The real [`Cgroups`] implementation on cgroupfs, for cgroup v1 (per-controller hierarchies,
//! including the hybrid layout with an extra controller-less cgroup2 mount) and cgroup v2.
//!
//! Hierarchies are discovered from `/proc/self/mountinfo` ([`CgroupFs::detect`]) or given
//! explicitly ([`CgroupFs::new`]), which is how the v2 code path is tested against a fixture
//! tree in a temp dir. On a real cgroupfs `rmdir` removes a cgroup with its control files; on a
//! plain filesystem (a fixture) the control files are ordinary files and are deleted first.
//!
//! In hybrid mode the pod hierarchy is also created in the cgroup2 mount, which has no
//! controllers there: it gives cgroup-BPF programs (socket load balancing) a directory that
//! contains every pod ([`CgroupFs::bpf_attach_dir`]). runc adds the container leaves itself.
//!
//! # Why not `cgroups-rs`
//!
//! The design names `cgroups-rs`; its newest release (0.5.1) builds on this toolchain but does not
//! do what the agent needs, so this small layer stays. Evaluated on 2026-12-07 on the hybrid CI
//! machine with a probe program (`cgroups_rs::fs::hierarchies::auto()`, `CgroupBuilder` for
//! `cgexp-<pid>/burstable/podX` with cpu shares 512, quota 20000, memory 32 MiB, pids 50, then a
//! process in a child leaf), run as root:
//!
//! ```text
//! is_cgroup2_unified_mode = false
//! auto().v2() = false  root() = /sys/fs/cgroup
//!   subsystem BlkIo|Mem|Pids|CpuSet|CpuAcct|Cpu|Devices|Freezer|Systemd  (the v1 mounts only)
//! build(cgexp-22894/burstable/podX) ok
//!   exists /sys/fs/cgroup/{cpu,memory,pids,cpuset,freezer}/cgexp-22894/burstable/podX: true
//!   exists /sys/fs/cgroup/unified/cgexp-22894/burstable/podX: false
//!   cpu.shares = 512, cpu.cfs_quota_us = 20000, memory.limit_in_bytes = 33554432, pids.max = 50,
//!   cpuset.cpus = 0-1
//! procs(pod) = []                          (a `sleep` sits in the child leaf podX/ctr)
//! kill() = Err(Error { kind: CgroupVersion, cause: None })
//! delete() with a busy leaf = Err(Error { kind: RemoveFailed, cause: Some(Os { code: 16, .. }) })
//! ```
//!
//! What that means for the agent:
//! - **No hybrid mode.** Detection is "/sys/fs/cgroup is cgroup2 or not"; its mountinfo parser keeps
//!   only `cgroup` (v1) mounts, so the controller-less cgroup2 tree at `/sys/fs/cgroup/unified` is
//!   never created. The agent needs the pod tree there: runc puts every container in it, and the
//!   service datapath attaches cgroup-BPF programs to `<unified>/<root>`.
//! - **v1 limits only for writes.** `kill()` is v2-only (`cgroup.kill`); `procs()` is not recursive,
//!   so processes in runc's container leaves are invisible; a busy `delete()` says EBUSY without the
//!   PIDs. Killing, collecting PIDs, leaves-first removal and listing pods would stay hand-written.
//! - **Untestable v2 path here.** The v2 hierarchy root is the constant `/sys/fs/cgroup` and v1
//!   discovery always reads `/proc/self/mountinfo`: the v2 code could not run against a fixture tree,
//!   which is the only way to test v2 on this hybrid machine (see the tests below).
//! - **Weight.** It depends unconditionally on `zbus` 5 (an async D-Bus stack for its systemd
//!   driver), `nix` 0.25 and `thiserror` 1 beside the workspace's `nix` 0.30 and `thiserror` 2:
//!   92 crates for what here is five file writes per pod.
//!
//! Reconsider when it learns hybrid layouts and a configurable mount root.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::resources::{self, QosClass, ResourceConfig};
use super::{CgroupError, Cgroups, PodCgroup, PodCgroupRef, Result, validate_component};

/// cgroup v1 controllers in which the agent creates the pod hierarchy.
const V1_MANAGED: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids"];
/// cgroup v2 controllers enabled for the keelson subtree when available.
const V2_ENABLE: &[&str] = &["cpuset", "cpu", "io", "memory", "hugetlb", "pids"];
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory` or `/sys/fs/cgroup/unified`.
    pub mount: PathBuf,
    /// v1: the controllers bound to it (`cpu`, `name=systemd`, …); v2: empty.
    pub controllers: Vec<String>,
    /// True for a cgroup2 mount.
    pub v2: bool,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// Which API the limits are written through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Per-controller v1 hierarchies (possibly with a controller-less cgroup2 mount: hybrid).
    V1,
    /// One unified cgroup2 hierarchy with controllers.
    V2,
}

/// Parses `/proc/self/mountinfo` text into the cgroup hierarchies mounted at their root.
/// Bind mounts of a hierarchy already seen (same controllers) are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let (root, mount) = (l[3], unescape(l[4]));
        let fstype = r[0];
        if root != "/" || (fstype != "cgroup" && fstype != "cgroup2") {
            continue;
        }
        let v2 = fstype == "cgroup2";
        let mut controllers: Vec<String> = if v2 {
            Vec::new()
        } else {
            r[2].split(',')
                .filter(|o| {
                    !matches!(*o, "rw" | "ro" | "noprefix" | "clone_children" | "xattr" | "cpuset_v2_mode")
                        && (!o.contains('=') || o.starts_with("name="))
                })
                .map(str::to_string)
                .collect()
        };
        controllers.sort();
        if out.iter().any(|h| h.v2 == v2 && h.controllers == controllers) {
            continue;
        }
        out.push(Hierarchy { mount: PathBuf::from(mount), controllers, v2 });
    }
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// cgroupfs-backed [`Cgroups`].
#[derive(Debug, Clone)]
pub struct CgroupFs {
    root_name: String,
    mode: CgroupMode,
    hierarchies: Vec<Hierarchy>,
}

impl CgroupFs {
    /// Discovers the mounted hierarchies from `/proc/self/mountinfo`.
    pub fn detect(root_name: &str) -> Result<Self> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
            path: path.into(),
            op: "read",
            source,
        })?;
        Self::new(root_name, parse_mountinfo(&text))
    }

    /// Uses the given hierarchies. v1 mode if any v1 hierarchy carries `cpu` or `memory`
    /// (a cgroup2 mount beside them is the hybrid layout), else v2 if a cgroup2 mount is given.
    pub fn new(root_name: &str, hierarchies: Vec<Hierarchy>) -> Result<Self> {
        validate_component(root_name)?;
        let v1 = hierarchies.iter().any(|h| !h.v2 && (h.has("cpu") || h.has("memory")));
        let mode = if v1 {
            CgroupMode::V1
        } else if hierarchies.iter().any(|h| h.v2) {
            CgroupMode::V2
        } else {
            return Err(CgroupError::NoHierarchy { reason: "neither v1 cpu/memory nor a cgroup2 mount".into() });
        };
        Ok(CgroupFs { root_name: root_name.to_string(), mode, hierarchies })
    }

    /// A pure cgroup v2 layout mounted at `mount`.
    pub fn v2(root_name: &str, mount: impl Into<PathBuf>) -> Result<Self> {
        Self::new(root_name, vec![Hierarchy { mount: mount.into(), controllers: Vec::new(), v2: true }])
    }

    pub fn mode(&self) -> CgroupMode {
        self.mode
    }

    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    /// The directory of `rel` (e.g. a [`super::pod_cgroup_path`]) in the hierarchy holding
    /// `controller` (v1), or in the unified hierarchy (v2, any controller).
    pub fn controller_dir(&self, controller: &str, rel: &str) -> Option<PathBuf> {
        let h = match self.mode {
            CgroupMode::V1 => self.hierarchies.iter().find(|h| !h.v2 && h.has(controller))?,
            CgroupMode::V2 => self.hierarchies.iter().find(|h| h.v2)?,
        };
        Some(h.mount.join(rel.trim_start_matches('/')))
    }

    /// The cgroup2 directory containing every pod (`<cgroup2 mount>/<root>`), where cgroup-BPF
    /// programs attach; `None` without a cgroup2 mount.
    pub fn bpf_attach_dir(&self) -> Option<PathBuf> {
        self.hierarchies.iter().find(|h| h.v2).map(|h| h.mount.join(&self.root_name))
    }

    /// Hierarchies in which the agent creates the root, tiers and pods.
    fn managed(&self) -> impl Iterator<Item = &Hierarchy> {
        self.hierarchies.iter().filter(move |h| match self.mode {
            CgroupMode::V1 => h.v2 || V1_MANAGED.iter().any(|c| h.has(c)),
            CgroupMode::V2 => h.v2,
        })
    }

    /// Controllers to enable in `cgroup.subtree_control` (v2 mode only).
    fn v2_controllers(&self, h: &Hierarchy) -> Result<Vec<&'static str>> {
        if self.mode != CgroupMode::V2 {
            return Ok(Vec::new());
        }
        let available = read_opt(&h.mount.join("cgroup.controllers"))?.unwrap_or_default();
        let available: BTreeSet<&str> = available.split_whitespace().collect();
        Ok(V2_ENABLE.iter().copied().filter(|c| available.contains(c)).collect())
    }

    /// Creates `components` below the hierarchy mount one level at a time, initialising each new
    /// level (cpuset copy on v1, controller delegation on v2). Returns the deepest directory.
    fn ensure_chain(&self, h: &Hierarchy, components: &[&str]) -> Result<PathBuf> {
        let enable = self.v2_controllers(h)?;
        let mut dir = h.mount.clone();
        if !enable.is_empty() {
            enable_controllers(&dir, &enable)?;
        }
        for c in components {
            validate_component(c)?;
            let parent = dir.clone();
            dir.push(c);
            match std::fs::create_dir(&dir) {
                Ok(()) => tracing::debug!(path = %dir.display(), "cgroup created"),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(CgroupError::Io { path: dir, op: "mkdir", source }),
            }
            if h.has("cpuset") {
                inherit_cpuset(&parent, &dir)?;
            }
            if !enable.is_empty() {
                enable_controllers(&dir, &enable)?;
            }
        }
        Ok(dir)
    }

    fn pod_components<'a>(&'a self, qos: QosClass, pod_dir: &'a str) -> Vec<&'a str> {
        let mut v = vec![self.root_name.as_str()];
        v.extend(qos.tier_dir());
        v.push(pod_dir);
        v
    }

    /// All existing directories of a pod, over every hierarchy and tier.
    fn pod_dirs(&self, uid: &str) -> Result<Vec<PathBuf>> {
        validate_component(uid)?;
        let mut out = Vec::new();
        for h in &self.hierarchies {
            for qos in [QosClass::Guaranteed, QosClass::Burstable, QosClass::BestEffort] {
                let dir = h.mount.join(super::pod_cgroup_path(&self.root_name, qos, uid).trim_start_matches('/'));
                if dir.is_dir() {
                    out.push(dir);
                }
            }
        }
        Ok(out)
    }

    /// Writes cpu.shares (v1) or the equivalent cpu.weight (v2) of an existing cgroup.
    fn write_cpu_shares(&self, rel: &str, shares: u64) -> Result<()> {
        match self.mode {
            CgroupMode::V1 => match self.controller_dir("cpu", rel) {
                Some(dir) => write(&dir.join("cpu.shares"), &shares.to_string()),
                None => Ok(()),
            },
            CgroupMode::V2 => {
                let Some(h) = self.hierarchies.iter().find(|h| h.v2) else { return Ok(()) };
                if !self.v2_controllers(h)?.contains(&"cpu") {
                    return Ok(());
                }
                let dir = h.mount.join(rel.trim_start_matches('/'));
                write(&dir.join("cpu.weight"), &resources::shares_to_weight(shares).to_string())
            }
        }
    }

    fn apply_v1(&self, pod_rel: &str, r: &ResourceConfig) -> Result<()> {
        if let Some(dir) = self.controller_dir("cpu", pod_rel) {
            write(&dir.join("cpu.shares"), &r.cpu_shares.to_string())?;
            write(&dir.join("cpu.cfs_period_us"), &r.cpu_period_us.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &resources::cfs_quota_v1(r.cpu_quota_us))?;
        }
        if let Some(dir) = self.controller_dir("memory", pod_rel) {
            write(&dir.join("memory.limit_in_bytes"), &resources::memory_limit_v1(r.memory_limit_bytes))?;
        }
        if let Some(dir) = self.controller_dir("pids", pod_rel) {
            write(&dir.join("pids.max"), &resources::max_or(r.pids_limit))?;
        }
        Ok(())
    }

    fn apply_v2(&self, h: &Hierarchy, dir: &Path, r: &ResourceConfig) -> Result<()> {
        let enabled = self.v2_controllers(h)?;
        if enabled.contains(&"cpu") {
            write(&dir.join("cpu.weight"), &resources::shares_to_weight(r.cpu_shares).to_string())?;
            write(&dir.join("cpu.max"), &resources::cpu_max(r.cpu_quota_us, r.cpu_period_us))?;
        }
        if enabled.contains(&"memory") {
            write(&dir.join("memory.max"), &resources::max_or(r.memory_limit_bytes))?;
        }
        if enabled.contains(&"pids") {
            write(&dir.join("pids.max"), &resources::max_or(r.pids_limit))?;
        }
        Ok(())
    }
}

impl Cgroups for CgroupFs {
    fn ensure_root(&self) -> Result<()> {
        for h in self.managed() {
            self.ensure_chain(h, &[&self.root_name])?;
            for tier in [QosClass::Burstable, QosClass::BestEffort].iter().filter_map(|q| q.tier_dir()) {
                self.ensure_chain(h, &[&self.root_name, tier])?;
            }
        }
        // As kubelet: the best-effort tier gets the minimum cpu weight, so under contention its
        // pods only get what the others leave.
        let besteffort = format!("/{}/besteffort", self.root_name);
        self.write_cpu_shares(&besteffort, resources::MIN_SHARES)
    }

    fn set_burstable_cpu_requests(&self, total_milli: i64) -> Result<()> {
        let burstable = format!("/{}/burstable", self.root_name);
        self.write_cpu_shares(&burstable, resources::milli_cpu_to_shares(total_milli))
    }

    fn ensure_pod(&self, pod: &PodCgroup) -> Result<()> {
        validate_component(&pod.uid)?;
        let pod_dir = format!("pod{}", pod.uid);
        let components = self.pod_components(pod.qos, &pod_dir);
        let rel = super::pod_cgroup_path(&self.root_name, pod.qos, &pod.uid);
        let _span = tracing::debug_span!("ensure_pod_cgroup", uid = %pod.uid, path = %rel).entered();
        for h in self.managed() {
            let dir = self.ensure_chain(h, &components)?;
            if self.mode == CgroupMode::V2 {
                self.apply_v2(h, &dir, &pod.resources)?;
            }
        }
        if self.mode == CgroupMode::V1 {
            self.apply_v1(&rel, &pod.resources)?;
        }
        Ok(())
    }

    fn remove_pod(&self, uid: &str) -> Result<()> {
        let _span = tracing::debug_span!("remove_pod_cgroup", uid).entered();
        for dir in self.pod_dirs(uid)? {
            remove_tree(&dir)?;
        }
        Ok(())
    }

    fn pod_pids(&self, uid: &str) -> Result<Vec<i32>> {
        let mut pids = BTreeSet::new();
        for dir in self.pod_dirs(uid)? {
            collect_pids(&dir, &mut pids)?;
        }
        Ok(pids.into_iter().collect())
    }

    fn kill_pod_processes(&self, uid: &str) -> Result<Vec<i32>> {
        let pids = self.pod_pids(uid)?;
        for &pid in &pids {
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    return Err(CgroupError::Io {
                        path: PathBuf::from(format!("/proc/{pid}")),
                        op: "kill",
                        source: std::io::Error::from(e),
                    });
                }
            }
        }
        if !pids.is_empty() {
            tracing::info!(uid, ?pids, "killed processes left in pod cgroup");
        }
        Ok(pids)
    }

    fn list_pods(&self) -> Result<Vec<PodCgroupRef>> {
        let primary = match self.mode {
            CgroupMode::V1 => self.hierarchies.iter().find(|h| !h.v2 && (h.has("memory") || h.has("cpu"))),
            CgroupMode::V2 => self.hierarchies.iter().find(|h| h.v2),
        };
        let Some(h) = primary else { return Ok(Vec::new()) };
        let root = h.mount.join(&self.root_name);
        let mut out = Vec::new();
        for qos in [QosClass::Guaranteed, QosClass::Burstable, QosClass::BestEffort] {
            let dir = match qos.tier_dir() {
                Some(t) => root.join(t),
                None => root.clone(),
            };
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::Io { path: dir, op: "read_dir", source }),
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(uid) = name.strip_prefix("pod")
                    && entry.file_type().is_ok_and(|t| t.is_dir())
                {
                    out.push(PodCgroupRef { uid: uid.to_string(), qos });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn root_name(&self) -> &str {
        &self.root_name
    }
}

fn read_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Io { path: path.into(), op: "read", source }),
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write { path: path.into(), value: value.into(), source })
}

/// v1 cpuset: a new cgroup starts with empty cpus/mems and cannot hold tasks; copy the parent's.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let Some(own) = read_opt(&dir.join(file))? else { continue };
        if own.trim().is_empty() {
            let from_parent = read_opt(&parent.join(file))?.unwrap_or_default();
            if !from_parent.trim().is_empty() {
                write(&dir.join(file), from_parent.trim())?;
            }
        }
    }
    Ok(())
}

/// v2: enables `controllers` for the children of `dir` if they are not all enabled yet.
fn enable_controllers(dir: &Path, controllers: &[&str]) -> Result<()> {
    let path = dir.join("cgroup.subtree_control");
    let current = read_opt(&path)?.unwrap_or_default();
    let current: BTreeSet<&str> = current.split_whitespace().map(|c| c.trim_start_matches('+')).collect();
    let missing: Vec<String> = controllers.iter().filter(|c| !current.contains(*c)).map(|c| format!("+{c}")).collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(&path, &missing.join(" "))
}

fn read_pids(dir: &Path) -> Result<Vec<i32>> {
    Ok(read_opt(&dir.join("cgroup.procs"))?.unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CgroupError::Io { path: dir.into(), op: "read_dir", source }),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Io { path: dir.into(), op: "read_dir", source })?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

fn collect_pids(dir: &Path, into: &mut BTreeSet<i32>) -> Result<()> {
    into.extend(read_pids(dir)?);
    for child in subdirs(dir)? {
        collect_pids(&child, into)?;
    }
    Ok(())
}

fn is_cgroupfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|st| {
        let t = st.filesystem_type().0;
        t == CGROUP_SUPER_MAGIC || t == CGROUP2_SUPER_MAGIC
    })
}

/// Removes a cgroup directory bottom-up. Refuses (Busy) while any level still has processes.
fn remove_tree(dir: &Path) -> Result<()> {
    for child in subdirs(dir)? {
        remove_tree(&child)?;
    }
    let pids = read_pids(dir)?;
    if !pids.is_empty() {
        return Err(CgroupError::Busy { path: dir.into(), pids });
    }
    if !is_cgroupfs(dir) {
        // A fixture tree: control files are plain files that rmdir would trip over.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {
            tracing::debug!(path = %dir.display(), "cgroup removed");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            Err(CgroupError::Busy { path: dir.into(), pids: read_pids(dir).unwrap_or_default() })
        }
        Err(source) => Err(CgroupError::Io { path: dir.into(), op: "rmdir", source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
34 30 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
37 30 0:33 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset,clone_children
38 1 0:31 /sub /mnt/memsub rw - cgroup cgroup rw,memory
39 1 0:31 / /mnt/mem\\040again rw - cgroup cgroup rw,memory
";

    #[test]
    fn mountinfo_hybrid_is_parsed() {
        let hs = parse_mountinfo(MOUNTINFO);
        let names: Vec<(String, Vec<String>, bool)> =
            hs.iter().map(|h| (h.mount.display().to_string(), h.controllers.clone(), h.v2)).collect();
        assert_eq!(names.len(), 7, "{names:?}");
        assert_eq!(names[0], ("/sys/fs/cgroup/unified".into(), vec![], true));
        assert_eq!(names[1], ("/sys/fs/cgroup/systemd".into(), vec!["name=systemd".to_string()], false));
        assert_eq!(names[6], ("/sys/fs/cgroup/cpuset".into(), vec!["cpuset".to_string()], false));
        let fs = CgroupFs::new("keelson", hs).expect("hybrid");
        assert_eq!(fs.mode(), CgroupMode::V1);
        assert_eq!(fs.bpf_attach_dir(), Some(PathBuf::from("/sys/fs/cgroup/unified/keelson")));
        assert_eq!(
            fs.controller_dir("memory", "/keelson/podx"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/keelson/podx"))
        );
    }

    #[test]
    fn mountinfo_escapes_and_comounts() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        let hs = parse_mountinfo("40 1 0:5 / /c\\040d rw - cgroup cgroup rw,cpu,cpuacct\n");
        assert_eq!(hs[0].mount, PathBuf::from("/c d"));
        assert_eq!(hs[0].controllers, vec!["cpu".to_string(), "cpuacct".to_string()]);
        let v2 = parse_mountinfo("41 1 0:6 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        assert_eq!(CgroupFs::new("k", v2).expect("v2").mode(), CgroupMode::V2);
        assert!(CgroupFs::new("k", Vec::new()).is_err());
        assert!(CgroupFs::v2("a/b", "/x").is_err(), "root name must be one component");
    }

    /// A cgroup2 fixture: the root advertises controllers; everything else is created by the code.
    fn v2_fixture() -> (tempfile::TempDir, CgroupFs) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cgroup.controllers"), "cpuset cpu io memory hugetlb pids rdma misc\n")
            .expect("write controllers");
        std::fs::write(dir.path().join("cgroup.subtree_control"), "").expect("write subtree_control");
        let fs = CgroupFs::v2("keelson", dir.path()).expect("v2");
        (dir, fs)
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    #[test]
    fn v2_root_tiers_and_delegation() {
        let (dir, fs) = v2_fixture();
        fs.ensure_root().expect("ensure_root");
        fs.ensure_root().expect("ensure_root is idempotent");
        let root = dir.path().join("keelson");
        assert!(root.join("burstable").is_dir());
        assert!(root.join("besteffort").is_dir());
        assert_eq!(read(&root.join("besteffort/cpu.weight")), "1", "best-effort tier gets the minimum weight");
        fs.set_burstable_cpu_requests(2500).expect("burstable tier");
        assert_eq!(read(&root.join("burstable/cpu.weight")), resources::shares_to_weight(2560).to_string());
        let want = "+cpuset +cpu +io +memory +hugetlb +pids";
        assert_eq!(read(&dir.path().join("cgroup.subtree_control")), want);
        assert_eq!(read(&root.join("cgroup.subtree_control")), want);
        assert_eq!(read(&root.join("burstable/cgroup.subtree_control")), want);
    }

    #[test]
    fn v2_pod_limits_are_written_and_converge() {
        let (dir, fs) = v2_fixture();
        let mut pod = PodCgroup {
            uid: "1234-abcd".into(),
            qos: QosClass::Burstable,
            resources: ResourceConfig {
                cpu_shares: 1024,
                cpu_quota_us: Some(50_000),
                cpu_period_us: 100_000,
                memory_limit_bytes: Some(64 << 20),
                pids_limit: Some(100),
            },
        };
        fs.ensure_pod(&pod).expect("ensure_pod");
        let p = dir.path().join("keelson/burstable/pod1234-abcd");
        assert_eq!(read(&p.join("cpu.weight")), "39");
        assert_eq!(read(&p.join("cpu.max")), "50000 100000");
        assert_eq!(read(&p.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(&p.join("pids.max")), "100");
        assert!(read(&p.join("cgroup.subtree_control")).contains("+memory"), "children get controllers");

        // Converges back to unlimited.
        pod.resources = ResourceConfig::default();
        fs.ensure_pod(&pod).expect("ensure_pod again");
        assert_eq!(read(&p.join("cpu.max")), "max 100000");
        assert_eq!(read(&p.join("memory.max")), "max");
        assert_eq!(read(&p.join("pids.max")), "max");
        assert_eq!(read(&p.join("cpu.weight")), "1");

        assert_eq!(
            fs.list_pods().expect("list"),
            vec![PodCgroupRef { uid: "1234-abcd".into(), qos: QosClass::Burstable }]
        );
    }

    #[test]
    fn v2_guaranteed_pods_sit_at_the_root() {
        let (dir, fs) = v2_fixture();
        let pod = PodCgroup { uid: "g1".into(), qos: QosClass::Guaranteed, resources: ResourceConfig::default() };
        fs.ensure_pod(&pod).expect("ensure_pod");
        assert!(dir.path().join("keelson/podg1").is_dir());
        let be = PodCgroup { uid: "b1".into(), qos: QosClass::BestEffort, resources: ResourceConfig::default() };
        fs.ensure_pod(&be).expect("ensure_pod");
        let pods = fs.list_pods().expect("list");
        assert_eq!(
            pods,
            vec![
                PodCgroupRef { uid: "b1".into(), qos: QosClass::BestEffort },
                PodCgroupRef { uid: "g1".into(), qos: QosClass::Guaranteed },
            ]
        );
    }

    #[test]
    fn v2_remove_handles_leaves_and_busy_cgroups() {
        let (dir, fs) = v2_fixture();
        let pod = PodCgroup { uid: "r1".into(), qos: QosClass::BestEffort, resources: ResourceConfig::default() };
        fs.ensure_pod(&pod).expect("ensure_pod");
        let p = dir.path().join("keelson/besteffort/podr1");
        // A container leaf left behind by runc, still holding a process.
        std::fs::create_dir(p.join("ctr1")).expect("mkdir leaf");
        std::fs::write(p.join("ctr1/cgroup.procs"), "4242\n").expect("write procs");
        assert_eq!(fs.pod_pids("r1").expect("pids"), vec![4242]);
        match fs.remove_pod("r1") {
            Err(CgroupError::Busy { path, pids }) => {
                assert_eq!(pids, vec![4242]);
                assert!(path.ends_with("podr1/ctr1"), "{}", path.display());
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(p.is_dir(), "busy pod cgroup stays");
        // The process is gone: removal succeeds and is idempotent.
        std::fs::write(p.join("ctr1/cgroup.procs"), "").expect("empty procs");
        fs.remove_pod("r1").expect("remove");
        assert!(!p.exists());
        fs.remove_pod("r1").expect("remove again");
        assert!(fs.list_pods().expect("list").is_empty());
        assert!(fs.remove_pod("../x").is_err(), "uid must be one path component");
    }

    #[test]
    fn v1_fixture_writes_v1_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mk = |c: &str| {
            let m = dir.path().join(c);
            std::fs::create_dir(&m).expect("mkdir");
            Hierarchy { mount: m, controllers: vec![c.to_string()], v2: false }
        };
        let cpuset = mk("cpuset");
        std::fs::write(cpuset.mount.join("cpuset.cpus"), "0-1\n").expect("write");
        let hs = vec![mk("cpu"), mk("memory"), mk("pids"), cpuset, mk("freezer")];
        let fs = CgroupFs::new("kt", hs).expect("v1");
        // Simulate the kernel creating an empty cpuset.cpus in new cgroups.
        std::fs::create_dir_all(dir.path().join("cpuset/kt")).expect("mkdir");
        std::fs::write(dir.path().join("cpuset/kt/cpuset.cpus"), "").expect("write");
        let pod = PodCgroup {
            uid: "u1".into(),
            qos: QosClass::Guaranteed,
            resources: ResourceConfig {
                cpu_shares: 512,
                cpu_quota_us: Some(20_000),
                cpu_period_us: 100_000,
                memory_limit_bytes: Some(1 << 20),
                pids_limit: None,
            },
        };
        fs.ensure_pod(&pod).expect("ensure_pod");
        let d = |c: &str| dir.path().join(c).join("kt/podu1");
        assert_eq!(read(&d("cpu").join("cpu.shares")), "512");
        assert_eq!(read(&d("cpu").join("cpu.cfs_quota_us")), "20000");
        assert_eq!(read(&d("cpu").join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&d("memory").join("memory.limit_in_bytes")), "1048576");
        assert_eq!(read(&d("pids").join("pids.max")), "max");
        assert_eq!(read(&dir.path().join("cpuset/kt/cpuset.cpus")), "0-1", "cpuset copied from parent");
        assert!(!dir.path().join("freezer/kt").exists(), "unmanaged hierarchies are left to runc");
        // runc created the pod path in freezer too: removal covers every hierarchy.
        std::fs::create_dir_all(d("freezer").join("ctr")).expect("mkdir");
        fs.remove_pod("u1").expect("remove");
        for c in ["cpu", "memory", "pids", "cpuset", "freezer"] {
            assert!(!d(c).exists(), "{c} pod cgroup removed");
        }
    }
}
