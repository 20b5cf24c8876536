//! `cargo xtask bench datapath [--sizes 1,100,1000,10000,30000] [--iters 1000]`: builds the release
//! `keelson-datapath-bench` (in the datapath crate, so xtask itself stays free of the datapath's
//! dependencies and builds before `cargo xtask deps` installed clang) and runs it as root.

use crate::util;
use std::process::Command;

pub fn run_bench(rest: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(util::is_root(), "bench datapath needs root (netns, nftables, eBPF)");
    util::sh(util::cargo().args(["build", "--release", "-p", "keelson-datapath", "--bin", "keelson-datapath-bench"]))?;
    util::sh(Command::new(util::target_dir().join("release/keelson-datapath-bench")).args(rest))
}
