//! `cargo xtask bench image-pull`: the agent's registry pull beside `ctr images pull` of the same
//! generated ~200 MiB, 5-layer image from the same loopback registry, cold and warm (see
//! `tests/src/bin/keelson-bench-image-pull.rs`). Release build, as root.

use crate::util;
use std::process::Command;

pub fn run_bench(rest: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(util::is_root(), "bench image-pull needs root (private containerd, overlayfs unpack)");
    util::sh(util::cargo().args(["build", "--release", "-p", "keelson-tests", "--bin", "keelson-bench-image-pull"]))?;
    let rel = util::target_dir().join("release");
    util::sh(Command::new(rel.join("keelson-bench-image-pull")).args(rest))
}
