//! `keelson-agent`: the composition root (flags → [`daemon::Config`] → [`daemon::run`]) and the
//! inspection commands that read the running agent's local endpoint.

use anyhow::Context;
use clap::{Parser, Subcommand};
use keelson_agent::runtime::ContainerRuntime;
use keelson_agent::runtime::containerd::Containerd;
use keelson_agent::{cni, daemon, pod, server, status};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(name = "keelson-agent", version, about = "keelson node agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node agent.
    Run(Box<RunArgs>),
    /// Show the pods the agent runs (from its local endpoint).
    Pods {
        #[arg(long, default_value = "/run/keelson")]
        run_dir: PathBuf,
        /// Output: table, wide or json.
        #[arg(short, long, default_value = "table")]
        output: String,
    },
    /// Show recent events and rejected manifests.
    Events {
        #[arg(long, default_value = "/run/keelson")]
        run_dir: PathBuf,
    },
    /// Import OCI image archives into containerd.
    Import {
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        containerd_socket: PathBuf,
        #[arg(long, default_value = "keelson")]
        namespace: String,
        archives: Vec<PathBuf>,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    #[arg(long, env = "KEELSON_NODE_NAME")]
    node_name: Option<String>,
    /// The node's IP (status.hostIP); defaults to the first non-loopback IPv4 address.
    #[arg(long)]
    node_ip: Option<String>,
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    /// containerd namespace for everything the agent creates.
    #[arg(long, default_value = "keelson")]
    namespace: String,
    #[arg(long, default_value = "/run/keelson")]
    run_dir: PathBuf,
    #[arg(long, default_value = "/var/log/pods")]
    log_dir: PathBuf,
    /// Static pod manifests (kubelet's staticPodPath).
    #[arg(long)]
    manifest_dir: PathBuf,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    manifest_poll: Duration,
    /// OCI image archives to import at start (every *.tar in the directory).
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// Registry credentials (docker config JSON `auths`) and `insecureRegistries`; re-read on every pull.
    #[arg(long)]
    registry_config: Option<PathBuf>,
    #[arg(long, default_value = "keelson.local/pause:latest")]
    pause_image: String,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    #[arg(long, default_value = "/usr/lib/cni:/opt/cni/bin")]
    cni_bin_dir: String,
    #[arg(long, default_value = "/var/lib/keelson/cni")]
    cni_cache_dir: PathBuf,
    /// Run CNI plugins inside this network namespace (tests run whole nodes in netns).
    #[arg(long)]
    cni_netns: Option<PathBuf>,
    #[arg(long, default_value = "keelson")]
    cgroup_root: String,
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// The logging binary for container output (defaults to keelson-logger next to this binary).
    #[arg(long)]
    logger: Option<PathBuf>,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    backoff_base: Duration,
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    backoff_max: Duration,
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    backoff_reset: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    resync: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    orphan_grace: Duration,
    #[arg(long, default_value_t = 4096)]
    pods_pids_limit: i64,
    /// How often leftover netns, CNI attachments and pod cgroups are swept.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    gc_period: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
                )
                .init();
            let cfg = config(*a)?;
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(async {
                daemon::run(cfg).await?;
                Ok(())
            })
        }
        Cmd::Pods { run_dir, output } => {
            let body =
                server::get_blocking(&run_dir, "/pods").context("is keelson-agent running? (querying its socket)")?;
            if output == "json" {
                println!("{body}");
            } else {
                print!("{}", status::table::render(&serde_json::from_str(&body)?, output == "wide")?);
            }
            Ok(())
        }
        Cmd::Events { run_dir } => {
            println!("{}", server::get_blocking(&run_dir, "/manifests")?);
            println!("{}", server::get_blocking(&run_dir, "/events")?);
            Ok(())
        }
        Cmd::Import { containerd_socket, namespace, archives } => import(&containerd_socket, &namespace, archives),
    }
}

fn config(a: RunArgs) -> anyhow::Result<daemon::Config> {
    let node_name = match a.node_name {
        Some(n) => n,
        None => nix::unistd::gethostname()?.to_string_lossy().to_lowercase(),
    };
    let logger = match a.logger {
        Some(l) => l,
        None => std::env::current_exe()?.parent().map(|d| d.join("keelson-logger")).unwrap_or_default(),
    };
    Ok(daemon::Config {
        node_name,
        node_ip: a.node_ip,
        containerd_socket: a.containerd_socket,
        namespace: a.namespace,
        run_dir: a.run_dir,
        log_dir: a.log_dir,
        manifest_dir: a.manifest_dir,
        manifest_poll: a.manifest_poll,
        image_dir: a.image_dir,
        pause_image: a.pause_image,
        cni: cni::CniConfig {
            conf_dir: a.cni_conf_dir,
            bin_dirs: a.cni_bin_dir.split(':').map(PathBuf::from).collect(),
            cache_dir: a.cni_cache_dir,
            plugin_netns: a.cni_netns,
            ..Default::default()
        },
        cgroup_root: a.cgroup_root,
        resolv_conf: a.resolv_conf,
        logger,
        pod: pod::Config { backoff_base: a.backoff_base, backoff_max: a.backoff_max, backoff_reset: a.backoff_reset },
        resync: a.resync,
        orphan_grace: a.orphan_grace,
        pids_limit: Some(a.pods_pids_limit),
        gc_period: a.gc_period,
        registry_config: a.registry_config,
    })
}

fn import(socket: &Path, namespace: &str, archives: Vec<PathBuf>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
        let scratch = std::env::temp_dir().join("keelson-import");
        let rt = Containerd::connect(socket, namespace, &scratch).await?;
        for a in archives {
            let names = rt.import_archive(&a).await.with_context(|| format!("import {}", a.display()))?;
            println!("{}: {}", a.display(), names.join(", "));
        }
        Ok(())
    })
}
