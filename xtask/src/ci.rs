//! `cargo xtask ci`: the README's test command. Static checks and unit tests first (cheap, no
//! root), then the artifacts the integration tests need, then the privileged integration tests.

use crate::util::{cargo, is_root, sh, sh_count_tests};
use anyhow::bail;
use clap::Args;

#[derive(Args)]
pub struct CiArgs {
    /// Only fmt, clippy and unit tests (no root needed).
    #[arg(long)]
    pub unit_only: bool,
    /// Filter passed to the integration test run (e.g. a test name substring).
    #[arg(long)]
    pub filter: Option<String>,
    /// Seconds each api-shim fuzz target runs after the unit tests (0 skips the fuzz step).
    #[arg(long, default_value_t = 30)]
    pub fuzz_seconds: u32,
}

pub fn run_ci(args: CiArgs) -> anyhow::Result<()> {
    // On a fresh machine the build itself needs system packages (protoc for containerd-client,
    // clang for the eBPF objects), so install them first when we can.
    if is_root() {
        crate::deps::run_deps()?;
    } else {
        println!("ci: not root; skipping `cargo xtask deps` (system packages must already be installed)");
    }
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    sh(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    let mut unit = sh_count_tests(cargo().args(["test", "--workspace", "--exclude", "keelson-tests"]))?;
    // Each fuzz target that runs its time without a crash counts as one passed check.
    if args.fuzz_seconds == 0 {
        unit.2 += crate::fuzz::TARGETS.len() as u64;
    } else {
        let fuzz = crate::fuzz::FuzzArgs { seconds: args.fuzz_seconds, targets: Vec::new() };
        unit.0 += crate::fuzz::run_fuzz(&fuzz)?.len() as u64;
    }
    if args.unit_only {
        println!("ci: unit stage passed (integration skipped by --unit-only)");
        println!("ci: {} passed, {} failed, {} skipped", unit.0, unit.1, unit.2);
        return Ok(());
    }
    if !is_root() {
        bail!("the integration stage needs root (namespaces, cgroups, containerd); rerun as root or pass --unit-only");
    }
    // Artifacts the integration tests spawn: workspace binaries and OCI image archives.
    sh(cargo().args(["build", "--workspace", "--bins"]))?;
    crate::images::run()?;
    let mut t = cargo();
    t.args(["test", "-p", "keelson-tests", "--tests", "--", "--test-threads=2"]);
    if let Some(f) = &args.filter {
        t.arg(f);
    }
    let integ = sh_count_tests(&mut t)?;
    // The README's first command, end to end: build, start containerd + agent, demo pod answers.
    crate::up::run(crate::up::UpArgs { check: true })?;
    println!("ci: all stages passed (unit {} passed, integration {} passed)", unit.0, integ.0);
    println!("ci: {} passed, {} failed, {} skipped", unit.0 + integ.0, unit.1 + integ.1, unit.2 + integ.2);
    Ok(())
}

pub fn run(args: CiArgs) -> anyhow::Result<()> {
    run_ci(args)
}
