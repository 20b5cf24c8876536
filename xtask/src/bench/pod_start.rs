//! `cargo xtask bench pod-start`: static pod start p50/p99 through the agent beside a floor that
//! does the same work without the agent (netns, CNI ADD through the same conflist, pod cgroup,
//! pause, app with keelson-logger; each part shown), both after one warm-up pod, and agent RSS
//! idle / with 30 pods. Builds release binaries and runs `keelson-bench-pod-start` (in the tests
//! crate, which links the agent library), as root.

use crate::util;
use std::process::Command;

pub fn run_bench(rest: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(util::is_root(), "bench pod-start needs root (containerd, netns, cgroups)");
    util::sh(util::cargo().args(["build", "--release", "-p", "keelson-agent", "--bins"]))?;
    util::sh(util::cargo().args(["build", "--release", "-p", "keelson-tests", "--bin", "keelson-bench-pod-start"]))?;
    crate::images::run()?;
    let rel = util::target_dir().join("release");
    util::sh(Command::new(rel.join("keelson-bench-pod-start")).env("KEELSON_BIN_DIR", &rel).args(rest))
}
