//! Guards for the agent's infrastructure tests (cgroups, pod netns, CNI runtime).
//!
//! Each guard owns exactly the kernel objects its test created (a uniquely named cgroup root, a
//! child process, namespaces under a temp run dir) and removes them on drop, also on panic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use keelson_agent::cgroups::CgroupFs;

/// A uniquely named keelson cgroup root (`keelson-test-<unique>`) on the host's real hierarchies.
/// On drop every directory below it is removed bottom-up in every hierarchy (including the ones
/// runc would have populated), after the test's processes are gone.
#[derive(Debug)]
pub struct CgroupRoot {
    fs: CgroupFs,
    name: String,
}

impl CgroupRoot {
    pub fn new() -> anyhow::Result<Self> {
        let name = format!("keelson-test-{}", crate::unique_name("cg"));
        let fs = CgroupFs::detect(&name).map_err(|e| anyhow::anyhow!("detect cgroups: {e}"))?;
        Ok(CgroupRoot { fs, name })
    }

    pub fn fs(&self) -> &CgroupFs {
        &self.fs
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

fn rmdir_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        for h in self.fs.hierarchies() {
            rmdir_tree(&h.mount.join(&self.name));
        }
    }
}

/// A child process killed (SIGKILL, by PID) and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Self> {
        Ok(ChildGuard(cmd.spawn().map_err(|e| anyhow::anyhow!("spawn {cmd:?}: {e}"))?))
    }

    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A temp run dir whose `netns/` entries are unmounted and removed on drop.
#[derive(Debug)]
pub struct RunDir {
    dir: tempfile::TempDir,
}

impl RunDir {
    pub fn new() -> anyhow::Result<Self> {
        Ok(RunDir { dir: tempfile::Builder::new().prefix("kt-run-").tempdir()? })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Ok(list) = keelson_agent::netns::list(self.dir.path()) {
            for p in list {
                let _ = keelson_agent::netns::remove(&p);
            }
        }
    }
}

/// `nsenter --net=<ns> -- argv…` as a Command (for servers and clients inside a pod netns).
pub fn nsenter(ns: &Path, argv: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.display())).arg("--").args(argv);
    cmd
}

/// Runs `nsenter --net=<ns> -- argv…`, returning (success, stdout+stderr).
pub fn nsenter_output(ns: &Path, argv: &[&str]) -> (bool, String) {
    match nsenter(ns, argv).output() {
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            (o.status.success(), s)
        }
        Err(e) => (false, e.to_string()),
    }
}

/// The inode of a namespace file (`/proc/<pid>/ns/net` or a bind mount), for identity checks.
pub fn ns_inode(path: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path).map_err(|e| anyhow::anyhow!("stat {}: {e}", path.display()))?.ino())
}

/// The reference CNI plugins' directory (Debian installs them in /usr/lib/cni).
pub fn reference_plugin_dir() -> PathBuf {
    PathBuf::from("/usr/lib/cni")
}
