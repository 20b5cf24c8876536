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
    /// replicationcontroller, deployment, nodelifecycle, nodeipam).
    #[arg(long, default_value = "*", value_delimiter = ',')]
    controllers: Vec<String>,
    /// Controllers to turn off (same names; `--disable-controllers=garbagecollector,namespace`).
    #[arg(long, value_delimiter = ',')]
    disable_controllers: Vec<String>,
    /// Run the controllers only while holding the `kube-system/kube-controller-manager` Lease
    /// (default: on with --storage etcd, off with sqlite).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    leader_elect: Option<bool>,
    /// Leader election lease duration (Go duration syntax: 15s, 1m30s).
    #[arg(long, default_value = "15s", value_parser = go_duration)]
    leader_elect_lease_duration: Duration,
    /// How long a leader keeps trying to renew before it stops its controllers.
    #[arg(long, default_value = "10s", value_parser = go_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    #[arg(long, default_value = "2s", value_parser = go_duration)]
    leader_elect_retry_period: Duration,
    /// How long a node may go without renewing its Lease before it is marked Unknown and tainted
    /// unreachable (upstream default 50s).
    #[arg(long, default_value = "20s", value_parser = go_duration)]
    node_monitor_grace_period: Duration,
    /// How often the node lifecycle controller checks node health.
    #[arg(long, default_value = "1s", value_parser = go_duration)]
    node_monitor_period: Duration,
    /// tolerationSeconds added to pods for the not-ready NoExecute taint (upstream default 300).
    #[arg(long, default_value_t = 30)]
    default_not_ready_toleration_seconds: i64,
    /// tolerationSeconds added to pods for the unreachable NoExecute taint (upstream default 300).
    #[arg(long, default_value_t = 30)]
    default_unreachable_toleration_seconds: i64,
    /// The range node IPAM gives pod CIDRs from.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnet::Ipv4Net,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
}

/// Go's `time.ParseDuration` syntax as upstream flags take it (`50s`, `1m30s`, `500ms`); a bare
/// number is seconds.
fn go_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or(format!("{s:?}: missing unit"))?;
        let value: f64 = rest[..n].parse().map_err(|_| format!("{s:?}: bad number"))?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("{s:?}: unknown unit {other:?}")),
        };
        rest = &rest[u..];
        total += Duration::try_from_secs_f64(value * unit).map_err(|e| format!("{s:?}: {e}"))?;
    }
    Ok(total)
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
    cfg.leader_elect = a.leader_elect;
    cfg.leader_elect_timings =
        (a.leader_elect_lease_duration, a.leader_elect_renew_deadline, a.leader_elect_retry_period);
    anyhow::ensure!(
        a.leader_elect_renew_deadline < a.leader_elect_lease_duration,
        "--leader-elect-renew-deadline must be shorter than --leader-elect-lease-duration"
    );
    cfg.node_monitor_grace_period = a.node_monitor_grace_period;
    cfg.node_monitor_period = a.node_monitor_period.max(Duration::from_millis(100));
    cfg.default_tolerations = keelson_api_shim::registry::strategy::tolerations::DefaultTolerationSeconds {
        not_ready: a.default_not_ready_toleration_seconds,
        unreachable: a.default_unreachable_toleration_seconds,
    };
    anyhow::ensure!(
        (a.cluster_cidr.prefix_len()..=32).contains(&a.node_cidr_mask_size),
        "--node-cidr-mask-size {} must be within {}..=32 for --cluster-cidr {}",
        a.node_cidr_mask_size,
        a.cluster_cidr.prefix_len(),
        a.cluster_cidr
    );
    cfg.cluster_cidr = a.cluster_cidr;
    cfg.node_cidr_mask_size = a.node_cidr_mask_size;
    cfg.backend = match a.storage.as_str() {
        "sqlite" => Backend::Sqlite { sync: if a.unsafe_no_fsync { SyncMode::Normal } else { SyncMode::Full } },
        "etcd" => Backend::Etcd { endpoints: a.etcd_endpoints },
        other => anyhow::bail!("unknown --storage {other:?} (sqlite or etcd)"),
    };
    keelson_api_shim::run(cfg).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn go_durations_parse_as_upstream_flags_write_them() {
        assert_eq!(go_duration("50s").unwrap(), Duration::from_secs(50));
        assert_eq!(go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(go_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(go_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(go_duration("20").unwrap(), Duration::from_secs(20));
        assert!(go_duration("5x").is_err());
        assert!(go_duration("s").is_err());
        assert!(go_duration("").is_err());
    }
}
