//! `keelson-apiserver`: flags → [`keelson_api_shim::Config`] → run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use keelson_api_shim::{Backend, Config, storage::sqlite::SyncMode};

#[derive(Parser)]
#[command(about = "keelson's Kubernetes API server")]
struct Args {
    /// Directory for certificates, tokens, kubeconfigs and the embedded database.
    #[arg(long, default_value = "/var/lib/keelson/apiserver")]
    data_dir: PathBuf,
    /// Address and port to serve HTTPS on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Address written into kubeconfigs and the `kubernetes` Endpoints (default: the listen IP).
    #[arg(long)]
    advertise_address: Option<String>,
    /// Service ClusterIP range.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnet::Ipv4Net,
    /// Storage backend: sqlite (embedded) or etcd.
    #[arg(long, default_value = "sqlite")]
    storage: String,
    /// etcd endpoints (comma separated) for --storage etcd.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Flush every commit to disk (the default; kept for compatibility).
    #[arg(long, conflicts_with = "unsafe_no_fsync")]
    fsync: bool,
    /// Do not fsync commits: survives a process crash but may lose acknowledged writes on power loss.
    #[arg(long)]
    unsafe_no_fsync: bool,
    /// Revisions of history kept for watch resume.
    #[arg(long, default_value_t = 10_000)]
    history: i64,
    /// Seconds between compactions.
    #[arg(long, default_value_t = 60)]
    compact_interval: u64,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 5)]
    bookmark_interval: u64,
    /// In-process controllers, upstream syntax: `*` (all), `name`, `-name`
    /// (e.g. `*,-garbagecollector`; names: garbagecollector (gc), namespace, replicaset,
    /// replicationcontroller, deployment).
    #[arg(long, default_value = "*", value_delimiter = ',')]
    controllers: Vec<String>,
    /// Controllers to turn off (same names; `--disable-controllers=garbagecollector,namespace`).
    #[arg(long, value_delimiter = ',')]
    disable_controllers: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let mut cfg = Config::new(a.data_dir, a.listen);
    cfg.advertise = a.advertise_address;
    cfg.service_cidr = a.service_cidr;
    cfg.history = a.history;
    cfg.compact_interval = Duration::from_secs(a.compact_interval.max(1));
    cfg.bookmark_interval = Duration::from_secs(a.bookmark_interval.max(1));
    cfg.controllers = a.controllers;
    cfg.disable_controllers = a.disable_controllers;
    cfg.backend = match a.storage.as_str() {
        "sqlite" => Backend::Sqlite { sync: if a.unsafe_no_fsync { SyncMode::Normal } else { SyncMode::Full } },
        "etcd" => Backend::Etcd { endpoints: a.etcd_endpoints },
        other => anyhow::bail!("unknown --storage {other:?} (sqlite or etcd)"),
    };
    keelson_api_shim::run(cfg).await?;
    Ok(())
}
