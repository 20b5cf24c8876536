//! The node daemon's run loop, as a library: [`run`] wires the seams (containerd, cgroups, CNI,
//! netns, status and event sinks), the pod sources and the manager, and supervises what must keep
//! running: the local status endpoint is restarted if it dies, image archives that failed to
//! import are retried, the manager is resynced and the orphan sweep runs periodically.
//!
//! `main.rs` only turns flags into a [`Config`] and calls [`run`].

use crate::cgroups::CgroupFs;
use crate::cni;
use crate::events::EventRing;
use crate::manifest::ManifestError;
use crate::netns::HostNamespaces;
use crate::network::CniNetwork;
use crate::node::{self, NodeFacts};
use crate::podworker::{self, Manager, ManagerConfig, ManagerError, Seams};
use crate::runtime::containerd::Containerd;
use crate::runtime::{ContainerRuntime, RuntimeError};
use crate::server::{self, StatusSource};
use crate::source::{FileSource, Mux, PodSet, PodSource};
use crate::status::LocalStatus;
use k8s_openapi::api::core::v1::Pod;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// Everything `keelson-agent run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    /// status.hostIP; defaults to the node's first global address.
    pub node_ip: Option<String>,
    pub containerd_socket: PathBuf,
    pub namespace: String,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub manifest_dir: PathBuf,
    pub manifest_poll: Duration,
    pub image_dir: Option<PathBuf>,
    pub pause_image: String,
    pub cni: cni::CniConfig,
    pub cgroup_root: String,
    pub resolv_conf: PathBuf,
    pub logger: PathBuf,
    pub pod: crate::pod::Config,
    pub resync: Duration,
    pub orphan_grace: Duration,
    pub pids_limit: Option<i64>,
    /// How often the orphan sweep runs (it also runs after the first sync).
    pub gc_period: Duration,
    /// Registry credentials and insecure hosts (`crate::images::auth::RegistryConfig`).
    pub registry_config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("container runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error("cgroups: {0}")]
    Cgroups(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log driver {0} not found (build keelson-logger or pass --logger)")]
    NoLogger(PathBuf),
}

/// The forced resync period of the manager even when no source changed.
const FORCED_SYNC: Duration = Duration::from_secs(10);

/// Runs the agent until SIGINT/SIGTERM. Like kubelet, stopping leaves pods running; a restarted
/// agent adopts them.
pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    let facts = node_facts(&cfg.node_name).await;
    let host_ip = cfg
        .node_ip
        .clone()
        .or_else(|| facts.as_ref().and_then(NodeFacts::internal_ip).map(|a| a.to_string()))
        .unwrap_or_else(|| "127.0.0.1".into());
    let memory_capacity = facts.as_ref().map_or(8 << 30, |f| i64::try_from(f.memory_bytes).unwrap_or(i64::MAX));
    info!(node = %cfg.node_name, %host_ip, "keelson-agent starting");
    std::fs::create_dir_all(&cfg.run_dir).map_err(|source| DaemonError::Io {
        what: "create run dir",
        path: cfg.run_dir.clone(),
        source,
    })?;
    let runtime =
        Arc::new(Containerd::connect(&cfg.containerd_socket, &cfg.namespace, &cfg.run_dir.join("exec")).await?);
    info!(runtime = %runtime.version().await?, "connected to the container runtime");
    if let Some(dir) = &cfg.image_dir {
        import_images(runtime.clone(), dir).await?;
    }
    let cgroups = Arc::new(CgroupFs::detect(&cfg.cgroup_root).map_err(|e| DaemonError::Cgroups(e.to_string()))?);
    let network = Arc::new(CniNetwork { cni: cni::CniRuntime::new(cfg.cni.clone()), ifname: "eth0".into() });
    if !cfg.logger.exists() {
        return Err(DaemonError::NoLogger(cfg.logger.clone()));
    }
    let mcfg = ManagerConfig {
        node_name: cfg.node_name.clone(),
        host_ip,
        run_dir: cfg.run_dir.clone(),
        log_root: cfg.log_dir.clone(),
        logger: cfg.logger.clone(),
        pause_image: cfg.pause_image.clone(),
        resolv_conf: cfg.resolv_conf.clone(),
        pod: cfg.pod.clone(),
        resync: cfg.resync,
        memory_capacity,
        pids_limit: cfg.pids_limit,
        orphan_grace: cfg.orphan_grace,
        oom_score_floor: podworker::oom_floor(),
        teardown_retry: Duration::from_millis(500),
        registry_config: cfg.registry_config.clone(),
    };
    if let Some(f) = mcfg.oom_score_floor {
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
        netns: Arc::new(HostNamespaces { run_dir: cfg.run_dir.clone() }),
        status: pods.clone(),
        events: events.clone(),
    };
    let manager = Manager::new(seams, mcfg);
    manager.start().await?;

    let file = FileSource::new(&cfg.manifest_dir, &cfg.node_name, cfg.manifest_poll);
    let status: Arc<dyn StatusSource> = Arc::new(Endpoint { pods, events, manifest_errors: file.errors() });
    tokio::spawn(serve_forever(cfg.run_dir.clone(), status));
    let sources: Vec<Box<dyn PodSource>> = vec![Box::new(file)];
    let mut mux = Mux::spawn(sources);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| DaemonError::Io { what: "install SIGTERM handler", path: PathBuf::new(), source })?;
    let mut desired: Option<PodSet> = None;
    let mut dirty = false;
    let mut last_sync = tokio::time::Instant::now();
    let mut swept_once = false;
    let mut gc_tick = tokio::time::interval(cfg.gc_period.max(Duration::from_secs(1)));
    gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            set = mux.changed() => {
                if let Some(set) = set {
                    desired = Some(set);
                    dirty = true;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = gc_tick.tick(), if swept_once => sweep(&manager).await,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        let Some(set) = &desired else { continue };
        if dirty || last_sync.elapsed() >= FORCED_SYNC {
            match manager.sync(set.clone()).await {
                Ok(()) => {
                    dirty = false;
                    last_sync = tokio::time::Instant::now();
                    if !swept_once {
                        // After the first sync every adopted sandbox has a worker.
                        sweep(&manager).await;
                        swept_once = true;
                    }
                }
                Err(e) => warn!(error = %e, "sync failed; retrying"),
            }
        }
    }
    info!("keelson-agent stopping (pods keep running)");
    let _ = std::fs::remove_file(server::socket_path(&cfg.run_dir));
    Ok(())
}

async fn sweep<R: ContainerRuntime>(manager: &Manager<R, CgroupFs, CniNetwork>) {
    match manager.gc().await {
        Ok(r) if r != podworker::GcReport::default() => info!(report = ?r, "orphan sweep"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "orphan sweep failed"),
    }
}

/// Node facts through netlink on a dedicated thread (the netlink seam is blocking and runs its own
/// event loop). `None` (with a warning) if the kernel would not say.
async fn node_facts(hostname: &str) -> Option<NodeFacts> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let hostname = hostname.to_string();
    std::thread::spawn(move || {
        let r = keelson_cni::netlink::RtNetlink::current()
            .map_err(node::NodeError::from)
            .and_then(|mut nl| node::gather(&mut nl, &hostname, node::DEFAULT_MAX_PODS));
        let _ = tx.send(r);
    });
    match rx.await {
        Ok(Ok(f)) => {
            info!(addresses = ?f.addresses, cpus = f.cpus, memory = f.memory_bytes, "node facts");
            Some(f)
        }
        Ok(Err(e)) => {
            warn!(error = %e, "could not gather node facts; using defaults");
            None
        }
        Err(_) => None,
    }
}

/// Imports every `*.tar` in `dir`; archives that fail are retried in the background (doubling
/// from 1 s to 1 min) until they succeed, so a transient containerd error does not leave pods in
/// ErrImagePull for the agent's lifetime.
async fn import_images<R: ContainerRuntime>(runtime: Arc<R>, dir: &Path) -> Result<(), DaemonError> {
    let mut tars: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| DaemonError::Io { what: "read image dir", path: dir.to_path_buf(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    tars.sort();
    let failed = import_all(runtime.as_ref(), tars).await;
    if !failed.is_empty() {
        tokio::spawn(async move {
            let mut left = failed;
            let mut wait = Duration::from_secs(1);
            while !left.is_empty() {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
                left = import_all(runtime.as_ref(), left).await;
            }
        });
    }
    Ok(())
}

/// Imports `tars`, returning those that failed.
async fn import_all<R: ContainerRuntime>(runtime: &R, tars: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut failed = Vec::new();
    for t in tars {
        match runtime.import_archive(&t).await {
            Ok(names) => info!(archive = %t.display(), images = ?names, "imported"),
            Err(e) => {
                warn!(archive = %t.display(), error = %e, "image import failed; will retry");
                failed.push(t);
            }
        }
    }
    failed
}

/// Serves the local endpoint, restarting it (after a second) whenever it stops.
async fn serve_forever(run_dir: PathBuf, status: Arc<dyn StatusSource>) {
    loop {
        match server::serve(&run_dir, status.clone()).await {
            Ok(()) => warn!("status endpoint stopped; restarting"),
            Err(e) => warn!(error = %e, "status endpoint failed; restarting"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the local endpoint serves.
struct Endpoint {
    pods: Arc<LocalStatus>,
    events: Arc<EventRing>,
    manifest_errors: Arc<Mutex<Vec<ManifestError>>>,
}

impl StatusSource for Endpoint {
    fn pods(&self) -> Vec<Pod> {
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
