//! `keelson-agent`: the node daemon's composition root and a few inspection commands.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use keelson_agent::cgroups::CgroupFs;
use keelson_agent::events::EventRing;
use keelson_agent::netns::HostNamespaces;
use keelson_agent::network::CniNetwork;
use keelson_agent::podworker::{Manager, ManagerConfig, Seams};
use keelson_agent::runtime::ContainerRuntime;
use keelson_agent::runtime::containerd::Containerd;
use keelson_agent::server::{self, StatusSource};
use keelson_agent::status::LocalStatus;
use keelson_agent::{cni, pod, static_pods};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

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
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(run(*a))
        }
        Cmd::Pods { run_dir, output } => pods(&run_dir, &output),
        Cmd::Events { run_dir } => {
            println!("{}", server::get_blocking(&run_dir, "/manifests")?);
            println!("{}", server::get_blocking(&run_dir, "/events")?);
            Ok(())
        }
        Cmd::Import { containerd_socket, namespace, archives } => {
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
                let scratch = std::env::temp_dir().join("keelson-import");
                let rt = Containerd::connect(&containerd_socket, &namespace, &scratch).await?;
                for a in archives {
                    let names = rt.import_archive(&a).await.with_context(|| format!("import {}", a.display()))?;
                    println!("{}: {}", a.display(), names.join(", "));
                }
                Ok(())
            })
        }
    }
}

fn first_ipv4() -> Option<String> {
    let out = std::process::Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.split_whitespace().skip_while(|w| *w != "inet").nth(1).map(|a| a.split('/').next().unwrap_or("").to_string())
    })
}

fn memory_capacity() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok())
        })
        .map_or(8 << 30, |kb| kb * 1024)
}

struct Status {
    pods: Arc<LocalStatus>,
    events: Arc<EventRing>,
    manifest_errors: Arc<Mutex<Vec<keelson_agent::manifest::ManifestError>>>,
}

impl StatusSource for Status {
    fn pods(&self) -> Vec<k8s_openapi::api::core::v1::Pod> {
        self.pods.pods()
    }
    fn events(&self) -> serde_json::Value {
        serde_json::to_value(self.events.recent()).unwrap_or_default()
    }
    fn manifest_errors(&self) -> serde_json::Value {
        let errs = self.manifest_errors.lock().map(|e| e.clone()).unwrap_or_default();
        serde_json::Value::Array(
            errs.iter()
                .map(|e| {
                    serde_json::json!({"file": e.file, "document": e.doc, "field": e.field, "reason": e.reason, "message": e.to_string()})
                })
                .collect(),
        )
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let node_name = match a.node_name.clone() {
        Some(n) => n,
        None => nix::unistd::gethostname()?.to_string_lossy().to_lowercase(),
    };
    let host_ip = a.node_ip.clone().or_else(first_ipv4).unwrap_or_else(|| "127.0.0.1".into());
    info!(node = %node_name, %host_ip, "keelson-agent starting");
    std::fs::create_dir_all(&a.run_dir)?;
    let runtime = Arc::new(Containerd::connect(&a.containerd_socket, &a.namespace, &a.run_dir.join("exec")).await?);
    info!(runtime = %runtime.version().await?, "connected to the container runtime");
    if let Some(dir) = &a.image_dir {
        let mut tars: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("read image dir {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "tar"))
            .collect();
        tars.sort();
        for t in tars {
            match runtime.import_archive(&t).await {
                Ok(names) => info!(archive = %t.display(), images = ?names, "imported"),
                Err(e) => warn!(archive = %t.display(), error = %e, "image import failed"),
            }
        }
    }
    let cgroups = Arc::new(CgroupFs::detect(&a.cgroup_root)?);
    let cni_cfg = cni::CniConfig {
        conf_dir: a.cni_conf_dir.clone(),
        bin_dirs: a.cni_bin_dir.split(':').map(PathBuf::from).collect(),
        cache_dir: a.cni_cache_dir.clone(),
        plugin_netns: a.cni_netns.clone(),
        ..Default::default()
    };
    let network = Arc::new(CniNetwork { cni: cni::CniRuntime::new(cni_cfg), ifname: "eth0".into() });
    let logger = match &a.logger {
        Some(l) => l.clone(),
        None => std::env::current_exe()?.parent().map(|d| d.join("keelson-logger")).unwrap_or_default(),
    };
    if !logger.exists() {
        bail!("log driver {} not found (build keelson-logger or pass --logger)", logger.display());
    }
    let cfg = ManagerConfig {
        node_name: node_name.clone(),
        host_ip,
        run_dir: a.run_dir.clone(),
        log_root: a.log_dir.clone(),
        logger,
        pause_image: a.pause_image.clone(),
        resolv_conf: a.resolv_conf.clone(),
        pod: pod::Config { backoff_base: a.backoff_base, backoff_max: a.backoff_max, backoff_reset: a.backoff_reset },
        resync: a.resync,
        memory_capacity: memory_capacity(),
        pids_limit: Some(a.pods_pids_limit),
        orphan_grace: a.orphan_grace,
        oom_score_floor: keelson_agent::podworker::oom_floor(),
        teardown_retry: Duration::from_millis(500),
    };
    if let Some(f) = cfg.oom_score_floor {
        warn!(
            floor = f,
            "no CAP_SYS_RESOURCE: oom_score_adj values below {f} (Guaranteed pods, pause) are raised to {f}"
        );
    }
    let pods = Arc::new(LocalStatus::new());
    let events = Arc::new(EventRing::default());
    let seams = Seams {
        runtime,
        cgroups,
        network,
        netns: Arc::new(HostNamespaces { run_dir: a.run_dir.clone() }),
        status: pods.clone(),
        events: events.clone(),
    };
    let manager = Manager::new(seams, cfg);
    manager.start().await?;
    let manifest_errors = Arc::new(Mutex::new(Vec::new()));
    let status: Arc<dyn StatusSource> = Arc::new(Status { pods, events, manifest_errors: manifest_errors.clone() });
    let run_dir = a.run_dir.clone();
    tokio::spawn(async move {
        if let Err(e) = server::serve(&run_dir, status).await {
            warn!(error = %e, "status endpoint stopped");
        }
    });

    let mut prev = static_pods::Snapshot::default();
    let mut first = true;
    let mut last_sync = tokio::time::Instant::now();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let watcher = match static_pods::DirWatcher::new(&a.manifest_dir) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(dir = %a.manifest_dir.display(), error = %e, "no inotify on the manifest dir; polling only");
            None
        }
    };
    let dir_changed = || async {
        match &watcher {
            Some(w) => {
                if w.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    loop {
        let snap = static_pods::read_dir(&a.manifest_dir, &node_name);
        static_pods::report_new_errors(&prev.errors, &snap.errors);
        if let Ok(mut e) = manifest_errors.lock() {
            e.clone_from(&snap.errors);
        }
        if first || snap.pods != prev.pods || last_sync.elapsed() >= Duration::from_secs(10) {
            if let Err(e) = manager.sync(snap.pods.clone()).await {
                warn!(error = %e, "sync failed; retrying next round");
            } else {
                last_sync = tokio::time::Instant::now();
                if first {
                    if let Err(e) = manager.gc().await {
                        warn!(error = %e, "start-up garbage collection failed");
                    }
                    first = false;
                }
            }
        }
        prev = snap;
        tokio::select! {
            _ = tokio::time::sleep(a.manifest_poll) => {}
            _ = dir_changed() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    // Like kubelet, stopping the agent leaves pods running; a restarted agent adopts them.
    info!("keelson-agent stopping (pods keep running)");
    let _ = std::fs::remove_file(server::socket_path(&a.run_dir));
    Ok(())
}

fn pods(run_dir: &Path, output: &str) -> anyhow::Result<()> {
    let body = server::get_blocking(run_dir, "/pods").context("is keelson-agent running? (querying its socket)")?;
    if output == "json" {
        println!("{body}");
        return Ok(());
    }
    let list: serde_json::Value = serde_json::from_str(&body)?;
    let wide = output == "wide";
    let mut rows = vec![
        vec!["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "IP"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
    ];
    if wide {
        rows[0].push("NODE".into());
    }
    for p in list["items"].as_array().cloned().unwrap_or_default() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(p)?;
        let st = pod.status.clone().unwrap_or_default();
        let cs = st.container_statuses.clone().unwrap_or_default();
        let ready = cs.iter().filter(|c| c.ready).count();
        let restarts: i32 = cs.iter().map(|c| c.restart_count).sum();
        let reason = cs
            .iter()
            .find_map(|c| {
                let s = c.state.as_ref()?;
                s.waiting
                    .as_ref()
                    .and_then(|w| w.reason.clone())
                    .or_else(|| s.terminated.as_ref().and_then(|t| t.reason.clone()))
            })
            .filter(|_| {
                st.phase.as_deref() != Some("Running")
                    || cs.iter().any(|c| c.state.as_ref().is_some_and(|s| s.waiting.is_some()))
            })
            .unwrap_or_else(|| st.phase.clone().unwrap_or_default());
        let mut row = vec![
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
            format!("{ready}/{}", cs.len()),
            reason,
            restarts.to_string(),
            st.pod_ip.clone().unwrap_or_else(|| "<none>".into()),
        ];
        if wide {
            row.push(pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default());
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("   ").trim_end());
    }
    Ok(())
}
