//! `cargo xtask <command>`: everything a developer or CI does besides `cargo build`.
//!
//! Each command lives in its own module; `main` only parses arguments and dispatches.

mod bench;
mod build_ebpf;
mod ci;
mod deps;
mod fuzz;
mod images;
mod up;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "keelson developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every system package keelson needs (idempotent) and mount bpffs.
    Deps,
    /// Build the OCI image archives (pause, busybox, …) into target/images.
    Images,
    /// Build, start a private containerd + agent with a demo pod, and show it answering.
    Up(up::UpArgs),
    /// Stop and remove what `up` started.
    Down,
    /// fmt check, clippy -D warnings, unit tests, then the privileged integration tests.
    Ci(ci::CiArgs),
    /// Compile the datapath's C eBPF programs into <target>/bpf (same code as datapath-ebpf/build.rs).
    BuildEbpf,
    /// Benchmarks printed as ratios against a baseline measured in the same run.
    Bench(bench::BenchArgs),
    /// Run the api-shim cargo-fuzz targets for a few seconds each (stable Rust, no sanitizer).
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Deps => deps::run(),
        Cmd::Images => images::run().map(|_| ()),
        Cmd::Up(a) => up::run(a),
        Cmd::Down => up::down(),
        Cmd::Ci(a) => ci::run(a),
        Cmd::BuildEbpf => build_ebpf::run(),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Fuzz(a) => fuzz::run(a),
    }
}
