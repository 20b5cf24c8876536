//! `cargo xtask deps`: idempotently install the system packages keelson needs and prepare the
//! kernel mounts (bpffs). Prints what it did; running it twice does nothing the second time.

use crate::util::{is_root, sh};
use anyhow::bail;
use std::process::Command;

/// Debian packages: container runtime, protoc (containerd-client), eBPF toolchain, network tools,
/// reference CNI plugins (baseline + default network), etcd (HA storage backend tests).
pub const PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "crun",
    "protobuf-compiler",
    "clang",
    "llvm",
    "libbpf-dev",
    "bpftool",
    "nftables",
    "iptables",
    "iproute2",
    "busybox-static",
    "containernetworking-plugins",
    "iputils-ping",
    "socat",
    "iperf3",
    "tcpdump",
    "etcd-server",
    "util-linux",
    "ethtool",
    "curl",
    // libfuzzer-sys builds libFuzzer (C++) for `cargo xtask fuzz`.
    "g++",
];

/// Python packages for client-compatibility tests.
pub const PIP_PACKAGES: &[&str] = &["kubernetes"];

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

pub fn run_deps() -> anyhow::Result<()> {
    if !is_root() {
        bail!("cargo xtask deps must run as root (it installs packages and mounts bpffs)");
    }
    let missing = missing_packages();
    if missing.is_empty() {
        println!("deps: all {} Debian packages already installed", PACKAGES.len());
    } else {
        println!("deps: installing {}", missing.join(" "));
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        sh(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))?;
    }
    ensure_pip()?;
    ensure_bpffs()?;
    Ok(())
}

fn ensure_pip() -> anyhow::Result<()> {
    let mut need = Vec::new();
    for p in PIP_PACKAGES {
        let ok = Command::new("python3").args(["-c", &format!("import {p}")]).output().map(|o| o.status.success());
        if !matches!(ok, Ok(true)) {
            need.push(*p);
        }
    }
    if need.is_empty() {
        println!("deps: python packages present ({})", PIP_PACKAGES.join(", "));
        return Ok(());
    }
    println!("deps: pip install {}", need.join(" "));
    sh(Command::new("python3").args(["-m", "pip", "install", "-q"]).args(&need))
}

fn is_mounted(target: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split_whitespace();
                let _src = f.next();
                f.next() == Some(target) && f.next() == Some(fstype)
            })
        })
        .unwrap_or(false)
}

fn ensure_bpffs() -> anyhow::Result<()> {
    if is_mounted("/sys/fs/bpf", "bpf") {
        println!("deps: bpffs already mounted at /sys/fs/bpf");
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf")?;
    sh(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    println!("deps: mounted bpffs at /sys/fs/bpf");
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    run_deps()
}
