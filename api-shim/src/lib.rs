//! keelson-api-shim: a small, honest Kubernetes API server.
//!
//! `keelson-apiserver` serves the core, apps, batch, discovery.k8s.io and coordination.k8s.io
//! resources that unmodified kubectl, kube-rs and the official Python client need: HTTPS with
//! token and client-certificate auth, RBAC authorization, discovery (legacy and aggregated),
//! OpenAPI v3 for server-side field validation, list/watch with real resourceVersion semantics,
//! all patch types including server-side apply, validation with field causes, Table output, and
//! storage in an embedded SQLite log (default) or etcd v3. The controllers (`keelson-controllers`:
//! garbage collector, namespace lifecycle) run in-process by default, as k3s runs its controller
//! manager, through a kube-rs client to this server over loopback TLS as
//! `system:kube-controller-manager`; the registry's delete only marks objects for them.
//!
//! # Layers
//!
//! The server is three layers, as kube-apiserver is (`endpoints` → `registry` → `storage`), so
//! that each can be read, tested and replaced without the ones above it:
//!
//! ```text
//!   http      transport (TLS, h1/h2), authentication, per-request authorization, routing,
//!    │        discovery, OpenAPI, Table, protobuf bodies, PKI
//!    ▼
//!   registry  the verbs and subresources on generic objects; a per-kind strategy (defaults,
//!    │        validation, prepare create/update, after delete, ClusterIP/NodePort allocation);
//!    │        delete (marking; cascades are the controllers'); the RBAC policy cache
//!    ▼
//!   storage   the `Store` trait: embedded SQLite log, etcd v3, the watch cache
//!
//!   keelson-apimachinery (objects, validation, selectors, patch, apply, error, resources,
//!   kinds): pure semantics used by every layer, using none of them
//! ```
//!
//! An arrow is the only direction a `use` may point: `storage` names neither `registry` nor
//! `http`, and `registry` never names `http` (`grep -rn 'crate::http' src/registry src/storage`
//! finds nothing). [`run`] is the composition root that wires the three together.
//!
//! Data directory layout (default `/var/lib/keelson/apiserver`): `state.db` (embedded store),
//! `ca.crt`, `apiserver.crt`, `admin.crt` + keys, `tokens.csv`, and the kubeconfigs
//! `admin.kubeconfig` (token) and `admin-cert.kubeconfig` (client certificate).

pub mod http;
pub mod registry;
pub mod storage;

// The Kubernetes semantics live in keelson-apimachinery; these keep `crate::selectors::X` and
// friends working. What of them needs the server (protobuf bodies, RBAC rules, store errors,
// apply's store round trip) is in the layers: `http::request`, `registry::strategy`,
// `storage`, `registry::apply`.
pub use keelson_apimachinery::{apply, error, kinds, objects, patch, resources, selectors, validation};

// The path of `storage` before the layering, still named by `tests/tests/api_store.rs`.
pub use storage as store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::error::ApiError;
use crate::objects::FieldValidation;
use crate::registry::{Api, WriteOpts};
use crate::storage::Store;

/// Which storage backend to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Sqlite { sync: storage::sqlite::SyncMode },
    Etcd { endpoints: Vec<String> },
}

/// Server configuration (the binary maps its flags onto this).
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Address put into kubeconfigs, the serving certificate and the `kubernetes` Endpoints.
    pub advertise: Option<String>,
    pub service_cidr: ipnet::Ipv4Net,
    pub backend: Backend,
    /// Revisions of history kept for watch resume before compaction.
    pub history: i64,
    pub compact_interval: Duration,
    pub bookmark_interval: Duration,
    /// In-process controllers, upstream `--controllers` syntax (`*`, `name`, `-name`).
    pub controllers: Vec<String>,
    /// Controllers turned off (`--disable-controllers`).
    pub disable_controllers: Vec<String>,
    /// Leader election of the in-process controllers: `None` = on with etcd (several servers may
    /// share it), off with SQLite (one server owns the database, and electing would only delay
    /// the controllers by a lease duration after a restart).
    pub leader_elect: Option<bool>,
    /// Lease duration, renew deadline and retry period of the election (upstream: 15 s, 10 s, 2 s).
    pub leader_elect_timings: (Duration, Duration, Duration),
    /// Node lifecycle: how long a node may be silent before it is Unknown, and how often to look.
    pub node_monitor_grace_period: Duration,
    pub node_monitor_period: Duration,
    /// DefaultTolerationSeconds admission (not-ready, unreachable).
    pub default_tolerations: registry::strategy::tolerations::DefaultTolerationSeconds,
    /// Node IPAM: the range pod CIDRs come from and their size.
    pub cluster_cidr: ipnet::Ipv4Net,
    pub node_cidr_mask_size: u8,
}

impl Config {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Config {
            data_dir,
            listen,
            advertise: None,
            service_cidr: ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(10, 96, 0, 0), 12).unwrap_or_default(),
            backend: Backend::Sqlite { sync: storage::sqlite::SyncMode::Full },
            history: 10_000,
            compact_interval: Duration::from_secs(60),
            bookmark_interval: Duration::from_secs(5),
            controllers: vec!["*".into()],
            disable_controllers: Vec::new(),
            leader_elect: None,
            leader_elect_timings: (Duration::from_secs(15), Duration::from_secs(10), Duration::from_secs(2)),
            node_monitor_grace_period: Duration::from_secs(20),
            node_monitor_period: Duration::from_secs(1),
            default_tolerations: Default::default(),
            cluster_cidr: ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
            node_cidr_mask_size: 24,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("tls: {0}")]
    Tls(#[from] http::tls::TlsError),
    #[error("store: {0}")]
    Store(#[from] storage::StoreError),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] ApiError),
    #[error("listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("serve: {0}")]
    Serve(std::io::Error),
    #[error("controllers: {0}")]
    Controllers(#[from] keelson_controllers::Error),
    #[error("controller client: {0}")]
    ControllerClient(String),
}

/// The identity of the in-process controllers (bound in the bootstrap RBAC policy).
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";

/// A kube-rs client to this server for the in-process controllers: loopback TLS checked against
/// our CA, with a bearer token that exists only in this process's memory (a new one at every
/// start, so there is no credential on disk to protect or rotate).
async fn controller_client(local: SocketAddr, ca_pem: &str, token: &str) -> Result<kube::Client, RunError> {
    use base64::Engine;
    let ip = match local.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let server = SocketAddr::new(ip, local.port());
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: self\n  cluster:\n    server: https://{server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: self\n  context:\n    cluster: self\n    user: controllers\ncurrent-context: self\nusers:\n- name: controllers\n  user:\n    token: {token}\n"
    );
    let err = |e: &dyn std::fmt::Display| RunError::ControllerClient(e.to_string());
    let kc = kube::config::Kubeconfig::from_yaml(&yaml).map_err(|e| err(&e))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.map_err(|e| err(&e))?;
    kube::Client::try_from(cfg).map_err(|e| err(&e))
}

async fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, RunError> {
    match &cfg.backend {
        Backend::Sqlite { sync } => {
            std::fs::create_dir_all(&cfg.data_dir)
                .map_err(|e| storage::StoreError::Backend(format!("{}: {e}", cfg.data_dir.display())))?;
            Ok(Arc::new(storage::sqlite::SqliteStore::open(&cfg.data_dir.join("state.db"), *sync)?))
        }
        Backend::Etcd { endpoints } => {
            let ep = endpoints.first().cloned().unwrap_or_else(|| "http://127.0.0.1:2379".into());
            let etcd: Arc<dyn Store> = Arc::new(storage::etcd::EtcdStore::connect(&ep).await?);
            Ok(Arc::new(storage::cache::WatchCache::new(etcd, cfg.history.clamp(100, 1_000) as usize)))
        }
    }
}

/// Creates the namespaces and the `kubernetes` Service every cluster has.
async fn bootstrap(api: &Arc<Api>, advertise: &str, port: u16) -> Result<(), ApiError> {
    let ns = resources::find("", "v1", "namespaces").ok_or(ApiError::NoRoute)?;
    let opts = WriteOpts { field_validation: FieldValidation::Strict, ..Default::default() };
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match api.create(ns, None, obj, &opts).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let svc = resources::find("", "v1", "services").ok_or(ApiError::NoRoute)?;
    let ip = api.kubernetes_service_ip().to_string();
    let exists = match api.get(svc, Some("default"), "kubernetes").await {
        Ok(_) => true,
        Err(ApiError::NotFound { .. }) => false,
        Err(e) => return Err(e),
    };
    let obj = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
    });
    if !exists {
        api.create(svc, Some("default"), obj, &opts).await?;
    }
    let ep = resources::find("", "v1", "endpoints").ok_or(ApiError::NoRoute)?;
    let subsets =
        json!([{"addresses": [{"ip": advertise}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]);
    let obj = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default"}, "subsets": subsets});
    match api.create(ep, Some("default"), obj, &opts).await {
        Ok(_) => {}
        Err(ApiError::AlreadyExists { .. }) => {
            let s = subsets.clone();
            api.update_with(ep, Some("default"), "kubernetes", None, &opts, |cur| {
                let mut n = cur.clone();
                n["subsets"] = s.clone();
                Ok((n, None))
            })
            .await?;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Runs the server until the listener fails.
pub async fn run(cfg: Config) -> Result<(), RunError> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Listen { addr: cfg.listen, source })?;
    let local = listener.local_addr().map_err(|source| RunError::Listen { addr: cfg.listen, source })?;
    let advertise = cfg.advertise.clone().unwrap_or_else(|| local.ip().to_string());
    let server_url = format!("https://{advertise}:{}", local.port());
    let store = open_store(&cfg).await?;
    let api = Arc::new(
        Api::new(store.clone(), cfg.service_cidr, cfg.bookmark_interval)
            .with_default_tolerations(cfg.default_tolerations),
    );
    api.recover().await?;
    let mut hosts = vec![advertise.clone(), local.ip().to_string(), api.kubernetes_service_ip().to_string()];
    hosts.dedup();
    let pki = http::tls::Pki::ensure(&cfg.data_dir, &hosts, &server_url)?;
    let tls_cfg = pki.server_config()?;
    let selection = keelson_controllers::Selection::parse(&cfg.controllers, &cfg.disable_controllers)?;
    let mut tokens = http::tls::load_tokens(&pki.token_file)?;
    let controller_token: String = {
        use rand::Rng;
        let bytes: [u8; 24] = rand::rng().random();
        hex::encode(bytes)
    };
    tokens.insert(
        controller_token.clone(),
        http::tls::UserInfo { name: CONTROLLER_MANAGER_USER.into(), groups: Vec::new() },
    );
    bootstrap(&api, &advertise, local.port()).await?;
    registry::rbac::ensure_bootstrap(&api).await?;
    // Serve only once the policy cache has listed every RBAC resource (like upstream's RBAC hook).
    let authz = Arc::new(registry::rbac::Authorizer::default());
    authz.start(&api);
    authz.wait_synced().await;

    // Build the OpenAPI documents now rather than on a client's first request.
    tokio::task::spawn_blocking(|| http::openapi::documents().docs.len());
    let sweeper = api.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_millis(500));
        loop {
            t.tick().await;
            sweeper.sweep_graceful().await;
        }
    });
    let (history, every) = (cfg.history, cfg.compact_interval);
    tokio::spawn(async move {
        let mut t = tokio::time::interval(every);
        loop {
            t.tick().await;
            if let Err(e) = store.compact(history).await {
                tracing::warn!(error = %e, "compaction failed");
            }
        }
    });
    if !selection.enabled.is_empty() {
        let ca_pem = std::fs::read_to_string(&pki.ca_cert)
            .map_err(|e| RunError::ControllerClient(format!("{}: {e}", pki.ca_cert.display())))?;
        let client = controller_client(local, &ca_pem, &controller_token).await?;
        let elect = cfg.leader_elect.unwrap_or(matches!(cfg.backend, Backend::Etcd { .. }));
        let (lease_duration, renew_deadline, retry_period) = cfg.leader_elect_timings;
        let leader = elect.then(|| keelson_controllers::leader::LeaderOpts {
            lease_duration,
            renew_deadline,
            retry_period,
            ..keelson_controllers::leader::LeaderOpts::new()
        });
        let opts = keelson_controllers::Opts {
            selection,
            node_lifecycle: keelson_controllers::nodelifecycle::LifecycleOpts {
                monitor_period: cfg.node_monitor_period,
                grace_period: cfg.node_monitor_grace_period,
            },
            node_ipam: keelson_controllers::nodeipam::IpamOpts {
                cluster_cidr: cfg.cluster_cidr,
                node_cidr_mask_size: cfg.node_cidr_mask_size,
                ..Default::default()
            },
            leader,
            ..Default::default()
        };
        // Started before serving: they retry discovery until the listener below answers.
        tokio::spawn(async move {
            if let Err(e) = keelson_controllers::run(client, opts).await {
                tracing::error!(error = %e, "in-process controllers stopped");
            }
        });
    }
    let server =
        Arc::new(http::server::Server { api, tokens, server_address: format!("{advertise}:{}", local.port()), authz });
    tracing::info!(%local, kubeconfig = %pki.admin_kubeconfig.display(), "keelson-apiserver listening");
    println!("keelson-apiserver listening on https://{local} kubeconfig={}", pki.admin_kubeconfig.display());
    http::server::serve(server, listener, tls_cfg).await.map_err(RunError::Serve)
}
