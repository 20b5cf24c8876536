//! Shared harness for keelson's privileged integration tests.
//!
//! Every kernel or daemon object a test creates is owned by an RAII guard defined here, named
//! uniquely per test (`kt<pid><counter>…`), and removed on drop — also when the test panics. Tests
//! never touch the host's default containerd, `/etc/cni`, `/var/lib/cni`, host routes or nft tables.
//! Area-specific helpers live in their own modules.

pub mod agent;
pub mod agent_infra;
pub mod api;
pub mod cni;
pub mod containerd;
pub mod datapath;
pub mod hollow;
pub mod netns;
pub mod registry;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub use containerd::Containerd;
pub use netns::Netns;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique name (≤ 15 bytes, fits an interface or netns name): `<tag><pid%10000><n>`.
/// `tag` should be 1–4 ASCII letters.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 100_000;
    let name = format!("{tag}{pid}x{n}");
    assert!(name.len() <= 15, "unique_name too long: {name}");
    name
}

/// Panics with a clear message unless running as root: these tests need real namespaces,
/// cgroups and daemons, and a silent skip would hide that nothing was tested.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "keelson integration tests must run as root (use `cargo xtask ci`)");
}

/// Runs a command, returning its output; fails with the command line and stderr on a non-zero exit.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(program).args(args).output().map_err(|e| anyhow::anyhow!("spawn {program}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Like [`run`] but returns stdout as a trimmed string.
pub fn run_stdout(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = run(program, args)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` elapses.
pub fn wait_for<T>(timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The workspace root (for locating built binaries and image archives).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| std::path::PathBuf::from("."))
}

/// The cargo target directory in use (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Polls `f` every 100 ms until it says `Ok(true)`; panics after `timeout` with `what` and the
/// last error `f` returned. For control-plane tests that wait on controllers through the API.
pub async fn eventually<F, Fut>(what: &str, timeout: std::time::Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let end = std::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match f().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => last = e,
        }
        assert!(std::time::Instant::now() < end, "timed out after {timeout:?} waiting for {what}: {last}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
