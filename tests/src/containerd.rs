//! A private containerd owned by a test: its own root, state, socket and config in a temp dir,
//! started as a child process and ended by PID on drop. The host's default containerd is never used.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Debug)]
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Containerd {
    /// Writes a minimal config (CRI plugin disabled: keelson speaks the native API) and starts
    /// `containerd`, waiting until its socket accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("kt-ctrd-").tempdir()?;
        let d = dir.path();
        let config = render_config(d);
        std::fs::write(d.join("config.toml"), config)?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("spawn containerd: {e} (run `cargo xtask deps`)"))?;
        let mut c = Containerd { dir, child: Some(child) };
        let sock = c.socket();
        let up = crate::wait_for(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock).ok().map(|_| ())
        });
        if up.is_none() {
            let log = std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default();
            c.stop();
            anyhow::bail!("containerd did not come up within 20s; log:\n{log}");
        }
        Ok(c)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the PID of a child we spawned and have not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// The containerd config used by tests and `cargo xtask up` (kept in one place).
pub fn render_config(d: &Path) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
        root = d.join("root").display(),
        state = d.join("state").display(),
        sock = d.join("containerd.sock").display(),
        opt = d.join("opt").display(),
    )
}

/// PIDs of processes whose parent is `ppid`.
fn children(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 4 (after the parenthesised command) is the parent PID.
            let ppid_field = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid_field.and_then(|p| p.parse::<u32>().ok()) == Some(ppid) {
                out.push(pid);
            }
        }
    }
    out
}

impl Containerd {
    /// SIGKILLs the runc shims this containerd started (found by their `-address <our socket>`
    /// argument) and their children, in case a test left a task behind: shims outlive containerd.
    fn kill_shims(&self) {
        let sock = self.socket().to_string_lossy().to_string();
        let Ok(rd) = std::fs::read_dir("/proc") else { return };
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> =
                cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).to_string()).collect();
            let ours = args.first().is_some_and(|a| a.contains("containerd-shim"))
                && args.windows(2).any(|w| w[0] == "-address" && w[1] == sock);
            if !ours {
                continue;
            }
            for child in children(pid) {
                // SAFETY: kill(2) on a child of a shim started by our containerd.
                unsafe { libc::kill(child as i32, libc::SIGKILL) };
            }
            // SAFETY: kill(2) on a shim started by our containerd.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        self.kill_shims();
        // Unmount anything containerd left mounted under our dir (overlay snapshots, shm) so the
        // temp dir can be removed.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let prefix = self.dir.path().to_string_lossy().to_string();
            let mut targets: Vec<&str> =
                mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|t| t.starts_with(&prefix)).collect();
            targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
            for t in targets {
                let _ = Command::new("umount").arg("-l").arg(t).output();
            }
        }
    }
}
