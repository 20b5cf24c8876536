//! `cargo xtask bench api [--quick] [--unsafe-no-fsync]`: keelson-apiserver create/update
//! throughput, write latency, and watch event latency from write acknowledged to event (p50/p99
//! with 100 and 1,000 watchers), embedded SQLite store vs an etcd 3.4 baseline, plus server RSS
//! with 10,000 pods. Both sides are durable (fsync per commit batch) unless `--unsafe-no-fsync`
//! drops the embedded side's fsync; the table prints each side's durability so the comparison is
//! like for like. Builds the release binaries and runs `keelson-api-bench`, which starts its own
//! servers and etcd on loopback and prints the table with ratios.

use std::process::Command;

use crate::util;

pub fn run_bench(rest: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(util::have("etcd"), "etcd not found: install the Debian package etcd-server (cargo xtask deps)");
    let mut build = util::cargo();
    build.args(["build", "--release", "-p", "keelson-api-shim", "--bins"]);
    util::sh(&mut build)?;
    let bench = util::target_dir().join("release").join("keelson-api-bench");
    util::sh(Command::new(bench).args(rest))
}
