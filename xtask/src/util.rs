//! Small process helpers shared by xtask commands.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::Command;

/// The workspace root (xtask's manifest dir is `<root>/xtask`).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(|p| p.to_path_buf()).unwrap_or(here)
}

/// The cargo target dir (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// Runs a command in the workspace root, inheriting stdio; fails on non-zero exit.
pub fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: $ {shown}");
    let status = cmd.current_dir(root()).status().with_context(|| format!("spawn {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// `cargo` with the same toolchain that runs xtask.
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// True when the current process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Does `program` resolve on PATH?
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a `cargo test` command, echoing its stdout, and sums the `test result:` lines.
/// Returns (passed, failed, ignored); fails on a non-zero exit like [`sh`].
pub fn sh_count_tests(cmd: &mut Command) -> anyhow::Result<(u64, u64, u64)> {
    use std::io::BufRead;
    let shown = format!("{cmd:?}");
    eprintln!("xtask: $ {shown}");
    let mut child = cmd
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {shown}"))?;
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines() {
            let line = line.unwrap_or_default();
            println!("{line}");
            if let Some(rest) = line.trim().strip_prefix("test result:") {
                for part in rest.split(';') {
                    let mut w = part.split_whitespace().rev();
                    let (Some(kind), Some(n)) = (w.next(), w.next()) else { continue };
                    let n: u64 = n.parse().unwrap_or(0);
                    match kind {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{shown} failed: {status} ({passed} passed, {failed} failed)");
    }
    Ok((passed, failed, ignored))
}
