//! Named network namespaces owned by a test: created with `ip netns add`, deleted on drop.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A network namespace `/var/run/netns/<name>` that is deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a uniquely named netns (`tag` = 1–4 letters) with loopback up.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let name = crate::unique_name(tag);
        crate::run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`, usable as CNI_NETNS or with `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace via `nsenter --net` (keeps /sys/fs/bpf visible,
    /// unlike `ip netns exec`).
    pub fn exec(&self, argv: &[&str]) -> std::io::Result<Output> {
        let net = format!("--net={}", self.path().display());
        Command::new("nsenter").arg(net).arg("--").args(argv).output()
    }

    /// Like [`Netns::exec`] but fails on non-zero exit; returns trimmed stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> anyhow::Result<String> {
        let out = self.exec(argv).map_err(|e| anyhow::anyhow!("nsenter {}: {e}", self.name))?;
        if !out.status.success() {
            anyhow::bail!(
                "in netns {}: `{}` failed ({}): {}",
                self.name,
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
