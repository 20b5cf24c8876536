//! `keelson-datapath`: the service datapath without the agent. Reads Services and EndpointSlices
//! from YAML/JSON files (multi-document YAML and `kind: List` accepted), programs the kernel, then
//! keeps re-reading the files and resyncing (level-triggered: edits to the files are picked up, and
//! kernel tampering is repaired) until killed. Kernel state is left in place on exit so traffic keeps
//! flowing; a restarted driver adopts it. `--cleanup` removes it instead.

use anyhow::{Context, Result};
use clap::Parser;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_datapath::datapath::{Datapath, DatapathConfig, Mode};
use keelson_datapath::model::{ModelConfig, NodeInfo, ServiceTable};
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "keelson-datapath", about = "Apply Services + EndpointSlices from files to the kernel datapath")]
struct Args {
    /// This node's name (endpoints with this nodeName are local).
    #[arg(long)]
    node_name: String,
    /// This node's IPv4 addresses (NodePorts answer on them); repeatable.
    #[arg(long = "node-ip", required = true)]
    node_ips: Vec<Ipv4Addr>,
    #[arg(long, value_enum, default_value = "auto")]
    mode: Mode,
    #[arg(long, default_value = "/sys/fs/bpf/keelson")]
    pin_dir: PathBuf,
    /// cgroup2 directory to attach the socket-LB to.
    #[arg(long, default_value = "/sys/fs/cgroup/unified")]
    cgroup: PathBuf,
    /// Uplink interface for the tc NodePort/LoadBalancer/externalIP programs (eBPF mode).
    #[arg(long)]
    uplink: Option<String>,
    #[arg(long, default_value = "keelson")]
    nft_table: String,
    /// Honour spec.externalIPs (off by default, CVE-2020-8554).
    #[arg(long)]
    allow_external_ips: bool,
    /// Seconds between resyncs (file re-read, tamper check).
    #[arg(long, default_value_t = 2.0)]
    resync_secs: f64,
    /// Sync once and exit.
    #[arg(long)]
    once: bool,
    /// Write Prometheus metrics here after every sync.
    #[arg(long)]
    metrics_file: Option<PathBuf>,
    /// Remove all kernel state (nft table, pins) and exit.
    #[arg(long)]
    cleanup: bool,
    /// Files with Services and EndpointSlices.
    files: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct Typed {
    kind: Option<String>,
}

fn load(files: &[PathBuf]) -> Result<(Vec<Service>, Vec<EndpointSlice>)> {
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = match serde_yaml::Value::deserialize(doc) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(file = %f.display(), error = %e, "malformed document skipped");
                    continue;
                }
            };
            collect(f, v, &mut svcs, &mut slices);
        }
    }
    Ok((svcs, slices))
}

fn collect(f: &Path, v: serde_yaml::Value, svcs: &mut Vec<Service>, slices: &mut Vec<EndpointSlice>) {
    if v.is_null() {
        return;
    }
    let kind = serde_yaml::from_value::<Typed>(v.clone()).ok().and_then(|t| t.kind).unwrap_or_default();
    let res = match kind.as_str() {
        "List" | "ServiceList" | "EndpointSliceList" => {
            for item in v.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default() {
                collect(f, item, svcs, slices);
            }
            Ok(())
        }
        "Service" => serde_yaml::from_value::<Service>(v).map(|s| svcs.push(s)),
        "EndpointSlice" => serde_yaml::from_value::<EndpointSlice>(v).map(|s| slices.push(s)),
        other => {
            tracing::warn!(file = %f.display(), kind = other, "object of unsupported kind skipped");
            Ok(())
        }
    };
    if let Err(e) = res {
        tracing::error!(file = %f.display(), kind, error = %e, "malformed object skipped");
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let node = NodeInfo { name: args.node_name.clone(), ips: args.node_ips.clone() };
    if args.cleanup {
        keelson_datapath::ebpf::SockLb::remove(&args.pin_dir).context("remove pins")?;
        let mut p = keelson_datapath::nft::NftProxier::new(keelson_datapath::nft::NftCli::default(), &args.nft_table);
        if let Err(e) = p.cleanup() {
            tracing::warn!(error = %e, "nft cleanup");
        }
        return Ok(());
    }
    let cfg = DatapathConfig {
        mode: args.mode,
        node: node.clone(),
        pin_dir: args.pin_dir.clone(),
        cgroup: args.cgroup.clone(),
        uplink: args.uplink.clone().map(|iface| keelson_datapath::ebpf::loader::Uplink { iface, netns: None }),
        nft_table: args.nft_table.clone(),
        nft_netns: None,
    };
    let mut dp = Datapath::start(&cfg)?;
    eprintln!("keelson-datapath: active backend {}", dp.backend().name());
    let model_cfg = ModelConfig { allow_external_ips: args.allow_external_ips };
    let mut last_errors = Vec::new();
    loop {
        match load(&args.files) {
            Ok((svcs, slices)) => {
                let table = ServiceTable::build(&svcs, &slices, &node, &model_cfg);
                if table.errors != last_errors {
                    for e in &table.errors {
                        tracing::error!("{e}");
                    }
                    last_errors = table.errors.clone();
                }
                match dp.sync(&table) {
                    Ok(()) => tracing::debug!(frontends = table.frontends.len(), "synced"),
                    Err(e) => tracing::error!(error = %e, "sync failed; will resync fully"),
                }
            }
            Err(e) => tracing::error!(error = %e, "reading input failed; keeping the current datapath"),
        }
        if let Some(m) = &args.metrics_file {
            let tmp = m.with_extension("tmp");
            if std::fs::write(&tmp, dp.metrics_text()).and_then(|_| std::fs::rename(&tmp, m)).is_err() {
                tracing::warn!(file = %m.display(), "cannot write metrics");
            }
        }
        if args.once {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs_f64(args.resync_secs));
        if let Err(e) = dp.check() {
            tracing::error!(error = %e, "tamper check/repair failed");
        }
    }
}
