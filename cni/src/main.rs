//! `keelson-cni`: a CNI plugin when run by a runtime (no arguments, `CNI_*` environment), and
//! `keelson-cni overlay <nodes.yaml> [--watch SECONDS]` to drive the VXLAN overlay from a file.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use keelson_cni::netlink::RtNetlink;
use keelson_cni::overlay::{LocalNode, Overlay, RemoteNode};

/// The overlay CLI's input file (YAML or JSON).
#[derive(serde::Deserialize)]
struct NodesFile {
    local: LocalNode,
    #[serde(default)]
    remotes: Vec<RemoteNode>,
}

fn read_nodes(path: &PathBuf) -> anyhow::Result<NodesFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

fn overlay_cli(args: &[String]) -> anyhow::Result<()> {
    let usage = "usage: keelson-cni overlay <nodes.yaml> [--watch SECONDS]";
    let path = PathBuf::from(args.first().context(usage)?);
    let watch = match args.get(1).map(String::as_str) {
        Some("--watch") => Some(Duration::from_secs(args.get(2).context(usage)?.parse().context("--watch SECONDS")?)),
        Some(other) => anyhow::bail!("unexpected argument {other:?}; {usage}"),
        None => None,
    };
    let nodes = read_nodes(&path)?;
    let overlay = Overlay::new(nodes.local);
    let mut nl = RtNetlink::current()?;
    let report = overlay.converge(&mut nl, &nodes.remotes)?;
    let dev = overlay.ensure_device(&mut nl)?;
    let out = serde_json::json!({ "report": report, "annotations": overlay.annotations(&dev) });
    println!("{out}");
    if let Some(every) = watch {
        overlay.run(&mut nl, || read_nodes(&path).map(|n| n.remotes).map_err(|e| format!("{e:#}")), every, || false);
    }
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEELSON_CNI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("overlay") {
        if let Err(e) = overlay_cli(&args[1..]) {
            eprintln!("keelson-cni overlay: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let env: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("CNI_")).collect();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => keelson_cni::dispatch::run(&env, &stdin),
        Err(e) => keelson_cni::dispatch::Outcome {
            stdout: Some(
                keelson_cni::spec::CniError::new(keelson_cni::spec::code::IO_FAILURE, "read stdin", e.to_string())
                    .to_json(keelson_cni::spec::LATEST_VERSION),
            ),
            exit: 1,
        },
    };
    if let Some(v) = outcome.stdout {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }
    std::process::exit(outcome.exit);
}
