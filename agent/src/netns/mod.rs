//! Pod network namespaces, owned by the agent and pinned by a bind mount under its run dir.
//!
//! Why the agent creates the netns itself (instead of letting runc create one with the pause
//! container): the namespace must exist *before* the sandbox so that CNI can wire it, it must
//! outlive restarts of the pause container, and after an agent restart it must be findable by
//! name (`<run dir>/netns/<name>`) so teardown and CNI DEL still work. This is what
//! containerd's CRI plugin and `ip netns add` do.
//!
//! Creation happens on a short-lived dedicated OS thread: `unshare(CLONE_NEWNET)` only moves
//! that thread, which bind-mounts `/proc/self/task/<tid>/ns/net` onto the target file and then
//! exits. The calling thread (often a tokio worker) never changes namespace. The same rule holds
//! for [`run_in`]: the closure runs on a fresh thread that is discarded afterwards, so a thread
//! "stuck" in a pod namespace can never be reused for unrelated work.
//!
//! Removal is idempotent: a missing file or a file that is no longer a mount point is fine.

#[cfg(feature = "test-helpers")]
pub mod fake;

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// `statfs` magic of nsfs: a bind-mounted namespace file reports it.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Errors of netns operations; every variant names the namespace path involved.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("invalid netns name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("netns {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("netns {path}: {op}: {source}")]
    Sys {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: Errno,
    },
    #[error("netns {path}: {path} exists but is not a network namespace")]
    NotANetns { path: PathBuf },
    #[error("netns {path}: worker thread panicked")]
    ThreadPanicked { path: PathBuf },
}

pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> NetnsError + use<> {
    let path = path.to_path_buf();
    move |source| NetnsError::Io { path, op, source }
}

fn sys_err(path: &Path, op: &'static str) -> impl FnOnce(Errno) -> NetnsError + use<> {
    let path = path.to_path_buf();
    move |source| NetnsError::Sys { path, op, source }
}

/// The directory holding the bind-mounted namespaces: `<run_dir>/netns`.
pub fn netns_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("netns")
}

/// Validates a netns name: one non-empty path component of at most 255 bytes, no `/`, not `.`/`..`.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 255 {
        Some("longer than 255 bytes")
    } else if name.contains('/') || name.contains('\0') {
        Some("contains '/' or NUL")
    } else if name == "." || name == ".." {
        Some("is a relative path component")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetnsError::InvalidName { name: name.to_string(), reason }),
        None => Ok(()),
    }
}

/// True if `path` is a bind-mounted namespace file (its filesystem is nsfs).
pub fn is_netns_mount(path: &Path) -> bool {
    match nix::sys::statfs::statfs(path) {
        Ok(st) => st.filesystem_type().0 == NSFS_MAGIC,
        Err(_) => false,
    }
}

/// Creates (idempotently) a new network namespace pinned at `<run_dir>/netns/<name>` and returns
/// that path. Loopback is brought up inside it. If the path is already a mounted namespace it is
/// returned unchanged (so a retried sandbox creation after a crash reuses the namespace).
pub fn create(run_dir: &Path, name: &str) -> Result<PathBuf> {
    validate_name(name)?;
    let dir = netns_dir(run_dir);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir, "create netns dir"))?;
    let path = dir.join(name);
    if is_netns_mount(&path) {
        tracing::debug!(path = %path.display(), "netns already exists");
        return Ok(path);
    }
    // The mount point: an empty regular file (left over from a crash between create and mount is fine).
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path, "create mount point"))?;

    let target = path.clone();
    let res = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(sys_err(&target, "unshare(CLONE_NEWNET)"))?;
            let tid = nix::unistd::gettid();
            let src = PathBuf::from(format!("/proc/self/task/{tid}/ns/net"));
            nix::mount::mount(Some(&src), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(sys_err(&target, "bind-mount netns"))?;
            loopback_up().map_err(sys_err(&target, "set lo up"))?;
            Ok(())
        })
        .map_err(io_err(&path, "spawn netns thread"))?
        .join()
        .map_err(|_| NetnsError::ThreadPanicked { path: path.clone() })?;
    if let Err(e) = res {
        // Leave nothing half-made behind: a failed create must not leave a mount or file.
        let _ = remove(&path);
        return Err(e);
    }
    tracing::debug!(path = %path.display(), "netns created");
    Ok(path)
}

/// Brings `lo` up in the current thread's network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS ioctl).
fn loopback_up() -> std::result::Result<(), Errno> {
    // SAFETY: plain socket(2) call; the returned fd is owned and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req` into `req`.
    if unsafe { libc::ioctl(raw, libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the union member ifru_flags was filled by SIOCGIFFLAGS above.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS sets the flags of the interface named in `req`.
    if unsafe { libc::ioctl(raw, libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Opens a namespace file for `setns` (read-only, close-on-exec).
pub fn open(path: &Path) -> Result<File> {
    let f = File::open(path).map_err(io_err(path, "open"))?;
    if !is_netns_mount(path) {
        return Err(NetnsError::NotANetns { path: path.to_path_buf() });
    }
    Ok(f)
}

/// Runs `f` inside the network namespace at `path`, on a dedicated thread that is discarded
/// afterwards. The caller's thread never changes namespace. Blocking: call it from
/// `spawn_blocking` in async code if `f` is slow. Only the network namespace changes: `/sys`
/// still shows the caller's view, so inspect links through netlink or `ip`, not sysfs.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let ns = open(path)?;
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("netns-run".into())
            .spawn_scoped(s, move || -> Result<T> {
                nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(sys_err(path, "setns"))?;
                Ok(f())
            })
            .map_err(io_err(path, "spawn netns thread"))?;
        handle.join().map_err(|_| NetnsError::ThreadPanicked { path: path.to_path_buf() })?
    })
}

/// Makes `cmd` enter the network namespace `ns` between fork and exec (the parent is untouched).
/// `ns` must stay open until the command has been spawned.
pub fn pre_exec_setns(cmd: &mut std::process::Command, ns: &File) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook only calls setns(2), which is async-signal-safe, on an fd inherited
    // across fork (it is O_CLOEXEC, so it closes only at exec, after setns ran).
    unsafe {
        cmd.pre_exec(setns_hook(ns.as_raw_fd()));
    }
}

/// The between-fork-and-exec hook: join the network namespace open at `fd`.
fn setns_hook(fd: std::os::fd::RawFd) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    move || {
        // SAFETY: setns(2) on a caller-owned fd; no memory is touched.
        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// [`pre_exec_setns`] for a `tokio::process::Command`.
pub fn tokio_pre_exec_setns(cmd: &mut tokio::process::Command, ns: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: as in `pre_exec_setns`: only setns(2), async-signal-safe, on an fd open until exec.
    unsafe {
        cmd.pre_exec(setns_hook(ns.as_raw_fd()));
    }
}

/// Spawns `cmd` inside the network namespace at `path`.
pub fn spawn_in(path: &Path, cmd: &mut std::process::Command) -> Result<std::process::Child> {
    let ns = open(path)?;
    pre_exec_setns(cmd, &ns);
    cmd.spawn().map_err(io_err(path, "spawn command in netns"))
}

/// Lists the namespace files under `<run_dir>/netns` (mounted or left over), sorted by name.
/// A missing directory means no namespaces.
pub fn list(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = netns_dir(run_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir, "read netns dir")(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&dir, "read netns dir"))?;
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

/// Removes a namespace pinned at `path`: lazy unmount (the namespace itself lives on while a
/// process or fd still uses it) and unlink. Already unmounted or already gone is success.
pub fn remove(path: &Path) -> Result<()> {
    // Two racing creates can stack mounts on one file: peel them all off.
    for _ in 0..8 {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            Err(e) => return Err(sys_err(path, "umount")(e)),
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path, "unlink")(e)),
    }
    tracing::debug!(path = %path.display(), "netns removed");
    Ok(())
}

/// The namespace operations the pod worker and the orphan sweep need, behind a seam so that both
/// are tested over [`fake::FakeNamespaces`] (feature `test-helpers`) without root.
pub trait Namespaces: Send + Sync + 'static {
    /// Where the namespace called `name` is (or would be) pinned.
    fn path(&self, name: &str) -> PathBuf;
    /// Creates (idempotently) the namespace called `name`; see [`create`].
    fn create(&self, name: &str) -> Result<PathBuf>;
    /// Removes the namespace pinned at `path`; see [`remove`].
    fn remove(&self, path: &Path) -> Result<()>;
    /// Every pinned namespace (see [`list`]).
    fn list(&self) -> Result<Vec<PathBuf>>;
}

/// [`Namespaces`] on the host: bind mounts under `<run_dir>/netns`.
#[derive(Debug, Clone)]
pub struct HostNamespaces {
    pub run_dir: PathBuf,
}

impl Namespaces for HostNamespaces {
    fn path(&self, name: &str) -> PathBuf {
        netns_dir(&self.run_dir).join(name)
    }
    fn create(&self, name: &str) -> Result<PathBuf> {
        create(&self.run_dir, name)
    }
    fn remove(&self, path: &Path) -> Result<()> {
        remove(path)
    }
    fn list(&self) -> Result<Vec<PathBuf>> {
        list(&self.run_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("cni-1234").is_ok());
        for bad in ["", ".", "..", "a/b", &"x".repeat(256)] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn list_of_missing_dir_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(list(&dir.path().join("nope")).expect("list").is_empty());
    }

    #[test]
    fn remove_of_missing_path_is_ok() {
        let dir = tempfile::tempdir().expect("tempdir");
        remove(&dir.path().join("netns/absent")).expect("idempotent remove");
    }

    #[test]
    fn open_rejects_plain_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("plain");
        std::fs::write(&p, b"").expect("write");
        assert!(matches!(open(&p), Err(NetnsError::NotANetns { .. })));
    }
}
