//! `cargo xtask fuzz [--seconds N] [target...]`: run the api-shim cargo-fuzz targets briefly.
//!
//! Stable Rust only: `cargo fuzz` with `--sanitizer none` needs no nightly flags (libFuzzer
//! coverage comes from the stable `-Cpasses=sancov-module` / `-Cllvm-args` codegen options it
//! passes). The tool is installed at a pinned version into ~/.cargo/bin when missing. Each target
//! runs for N seconds on a temporary copy of its committed seed corpus, so the committed corpus
//! never grows; a crash, leak, timeout or out-of-memory input fails the run with the path of the
//! saved input (under api-shim/fuzz/artifacts/<target>/).

use crate::util::{cargo, root, sh, target_dir};
use anyhow::{Context, bail};
use clap::Args;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Pinned cargo-fuzz release (installed with `--locked`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Every target in api-shim/fuzz/Cargo.toml, in run order.
pub const TARGETS: &[&str] = &["decode_object", "apply_patch", "selectors"];
/// Per-input limits: memory (MiB), input length (bytes), time (s).
const RSS_LIMIT_MB: u32 = 2048;
const MAX_LEN: u32 = 16 * 1024;
const INPUT_TIMEOUT_S: u32 = 10;

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 30)]
    pub seconds: u32,
    /// Targets to run (default: all).
    pub targets: Vec<String>,
}

/// What one target's run reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FuzzStats {
    pub executions: u64,
    pub exec_per_sec: u64,
    pub coverage: u64,
    pub features: u64,
    pub corpus: u64,
    pub peak_rss_mb: u64,
}

fn fuzz_dir() -> PathBuf {
    root().join("api-shim").join("fuzz")
}

fn installed_version() -> Option<String> {
    let out = cargo().args(["fuzz", "--version"]).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Installs the pinned cargo-fuzz unless that version is already on PATH (idempotent).
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    match installed_version() {
        Some(v) if v.ends_with(CARGO_FUZZ_VERSION) => {
            println!("fuzz: {v} already installed");
            return Ok(());
        }
        Some(v) => println!("fuzz: found {v}, installing cargo-fuzz {CARGO_FUZZ_VERSION}"),
        None => println!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION}"),
    }
    // Its own target dir: the install build must not disturb the workspace's artifacts.
    sh(cargo()
        .args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION])
        .env("CARGO_TARGET_DIR", target_dir().join("cargo-fuzz-install")))
}

/// Common `cargo fuzz <sub>` arguments (build and run must agree, or run rebuilds): stable (no
/// sanitizer), 16 codegen units (cold build 4m15s instead of 5m10s on 2 cores, ~15% fewer
/// executions per second), a target dir beside the workspace's.
fn cargo_fuzz(sub: &str) -> Command {
    let mut c = cargo();
    c.args(["fuzz", sub, "--sanitizer", "none", "--codegen-units", "16", "--fuzz-dir"]).arg(fuzz_dir());
    c.arg("--target-dir").arg(target_dir().join("fuzz"));
    c
}

/// Copies the committed seeds of `target` into `dir` (libFuzzer adds its finds there).
fn seed_corpus(target: &str, dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let seeds = fuzz_dir().join("corpus").join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&seeds).with_context(|| format!("read {}", seeds.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Parses libFuzzer's status lines (`#N DONE cov: C ft: F corp: K/..`) and `-print_final_stats`.
pub fn parse_stats(lines: &[String]) -> FuzzStats {
    let mut s = FuzzStats::default();
    let num = |v: &str| v.trim().trim_end_matches("Mb").parse::<u64>().unwrap_or(0);
    for line in lines {
        if line.starts_with('#') {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                let next = words.clone().next().unwrap_or_default();
                match w {
                    "cov:" => s.coverage = num(next),
                    "ft:" => s.features = num(next),
                    "corp:" => s.corpus = num(next.split('/').next().unwrap_or_default()),
                    _ => {}
                }
            }
        } else if let Some((k, v)) = line.split_once(": ") {
            match k.trim() {
                "stat::number_of_executed_units" => s.executions = num(v),
                "stat::average_exec_per_sec" => s.exec_per_sec = num(v),
                "stat::peak_rss_mb" => s.peak_rss_mb = num(v),
                _ => {}
            }
        }
    }
    s
}

/// The input libFuzzer saved for a failure (`... Test unit written to <path>`).
pub fn crash_input(lines: &[String]) -> Option<String> {
    lines.iter().find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim().to_string()))
}

fn run_target(target: &str, seconds: u32) -> anyhow::Result<FuzzStats> {
    let tmp = tempfile::Builder::new().prefix(&format!("keelson-fuzz-{target}-")).tempdir()?;
    let corpus = tmp.path().join("corpus");
    let seeds = seed_corpus(target, &corpus)?;
    let dict = fuzz_dir().join("dict").join("k8s.dict");
    let mut c = cargo_fuzz("run");
    c.arg(target).arg(&corpus).arg("--");
    c.args([
        format!("-max_total_time={seconds}"),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-max_len={MAX_LEN}"),
        format!("-timeout={INPUT_TIMEOUT_S}"),
        "-print_final_stats=1".into(),
    ]);
    c.arg(format!("-dict={}", dict.display()));
    println!("fuzz: {target}: {seconds}s from {seeds} seeds (temporary corpus {})", corpus.display());
    eprintln!("xtask: $ {c:?}");
    let mut child =
        c.current_dir(root()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().context("spawn cargo fuzz")?;
    let mut lines = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in std::io::BufReader::new(err).lines() {
            let line = line.unwrap_or_default();
            // Every new corpus entry is a line; keep the log to milestones, pulses and failures.
            if !matches!(line.split_whitespace().nth(1), Some("NEW" | "REDUCE")) {
                eprintln!("{line}");
            }
            lines.push(line);
        }
    }
    let status = child.wait()?;
    let stats = parse_stats(&lines);
    if !status.success() {
        match crash_input(&lines) {
            Some(p) => bail!(
                "fuzz target {target} failed ({status}); input saved at {p} — reproduce with `cargo fuzz run --sanitizer none --codegen-units 16 --fuzz-dir api-shim/fuzz {target} {p}`"
            ),
            None => bail!("fuzz target {target} failed ({status}) without saving an input (build error?)"),
        }
    }
    Ok(stats)
}

/// Builds and runs the targets; returns (target, stats) per target or the first failure.
pub fn run_fuzz(args: &FuzzArgs) -> anyhow::Result<Vec<(String, FuzzStats)>> {
    let targets: Vec<String> =
        if args.targets.is_empty() { TARGETS.iter().map(|t| t.to_string()).collect() } else { args.targets.clone() };
    if let Some(bad) = targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        bail!("unknown fuzz target {bad:?} (known: {})", TARGETS.join(", "));
    }
    ensure_cargo_fuzz()?;
    // The fuzz crate is its own workspace: start from the main lock file so api-shim is fuzzed
    // with the dependency versions CI tests (cargo adds libfuzzer-sys and prunes the rest).
    std::fs::copy(root().join("Cargo.lock"), fuzz_dir().join("Cargo.lock")).context("seed api-shim/fuzz/Cargo.lock")?;
    sh(&mut cargo_fuzz("build"))?;
    let mut out = Vec::new();
    for t in &targets {
        let stats = run_target(t, args.seconds)?;
        out.push((t.clone(), stats));
    }
    println!(
        "fuzz: {:<14} {:>12} {:>9} {:>7} {:>8} {:>7} {:>8}",
        "target", "executions", "exec/s", "cov", "features", "corpus", "rss MiB"
    );
    for (t, s) in &out {
        println!(
            "fuzz: {t:<14} {:>12} {:>9} {:>7} {:>8} {:>7} {:>8}",
            s.executions, s.exec_per_sec, s.coverage, s.features, s.corpus, s.peak_rss_mb
        );
    }
    Ok(out)
}

pub fn run(args: FuzzArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let out = run_fuzz(&args)?;
    println!("fuzz: {} targets passed in {:.0?}", out.len(), started.elapsed());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn parses_libfuzzer_summary() {
        let out = lines(
            "#8\tINITED cov: 4011 ft: 5680 corp: 7/1420b exec/s: 0 rss: 33Mb\n\
             #1302037\tDONE   cov: 7966 ft: 23211 corp: 3448/524Kb lim: 777 exec/s: 10760 rss: 44Mb\n\
             Done 1302037 runs in 121 second(s)\n\
             stat::number_of_executed_units: 1302037\n\
             stat::average_exec_per_sec:     10760\n\
             stat::peak_rss_mb:              44\n",
        );
        let s = parse_stats(&out);
        assert_eq!(
            s,
            FuzzStats {
                executions: 1_302_037,
                exec_per_sec: 10760,
                coverage: 7966,
                features: 23211,
                corpus: 3448,
                peak_rss_mb: 44
            }
        );
        assert_eq!(crash_input(&out), None);
    }

    #[test]
    fn finds_the_saved_crash_input() {
        let out = lines(
            "==1== ERROR: libFuzzer: deadly signal\n\
             artifact_prefix='/f/artifacts/apply_patch/'; Test unit written to /f/artifacts/apply_patch/crash-a7ef\n\
             Base64: e30=\n",
        );
        assert_eq!(crash_input(&out).as_deref(), Some("/f/artifacts/apply_patch/crash-a7ef"));
    }
}
