//! TLS bootstrapping and client certificate rotation, as kubelet does with
//! `--bootstrap-kubeconfig` and `rotateCertificates` (kubeadm's token discovery in front).
//!
//! [`ensure`] produces `<cert-dir>/kubelet.kubeconfig` for `system:node:<name>` and returns its
//! path before the agent's API client starts:
//! 1. a kubeconfig whose certificate is still valid is reused (a restart files no new CSR);
//! 2. otherwise the CA is read from `kube-public/cluster-info` over an unverified connection and
//!    trusted only if its public key hash equals `--discovery-token-ca-cert-hash` (the token
//!    proves nothing about the server; the pin does);
//! 3. with the bootstrap token, a new ECDSA P-256 key's CSR is filed for signer
//!    `kubernetes.io/kube-apiserver-client-kubelet`; the server's approver and signer issue it;
//! 4. key, certificate and kubeconfig are written with mode 0600, each replaced atomically.
//!
//! [`ensure`] then keeps a rotation task: at 70–90 % of the certificate's life a new key and CSR
//! are filed, authenticated by the current certificate (approved as `selfnodeclient`), and the
//! files replaced. Failures are retried with backoff; an expired certificate falls back to the
//! bootstrap token if one was given.

pub mod pki;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::{Instrument, info, warn};

pub use self::pki::PkiError;

/// The signer of kubelet client certificates.
pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// Flags of the bootstrap.
#[derive(Debug, Clone)]
pub struct Config {
    /// `https://host:port` of the API server.
    pub server: String,
    /// A bootstrap token `<id>.<secret>` (not needed while a valid certificate exists).
    pub token: Option<String>,
    /// Accepted CA public key hashes (`sha256:<hex>`).
    pub ca_hashes: Vec<String>,
    /// Where the key, certificate and kubeconfig live.
    pub cert_dir: PathBuf,
    pub node_name: String,
    /// How long to wait for the certificate of one CSR.
    pub wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{what}: {source}")]
    Api {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("client config: {0}")]
    Client(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no valid client certificate and no bootstrap token (--token)")]
    NoToken,
    #[error("CSR {name} was {how}: {message}")]
    Refused { name: String, how: &'static str, message: String },
    #[error("CSR {0} was not issued in time")]
    Timeout(String),
}

/// The files the bootstrap writes.
#[derive(Debug, Clone)]
pub struct Paths {
    pub kubeconfig: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Paths {
    pub fn in_dir(dir: &Path) -> Paths {
        Paths {
            kubeconfig: dir.join("kubelet.kubeconfig"),
            cert: dir.join("kubelet-client.crt"),
            key: dir.join("kubelet-client.key"),
            ca: dir.join("ca.crt"),
        }
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn write_private(path: &Path, data: &str) -> Result<(), BootstrapError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| BootstrapError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(data.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The certificate of an existing kubeconfig, if it is still valid for a while (a minute, or a
/// tenth of its life if that is shorter).
fn current(paths: &Paths) -> Option<(String, pki::Validity)> {
    let text = std::fs::read_to_string(&paths.kubeconfig).ok()?;
    let cert = pki::embedded_cert(&text)?;
    let v = pki::Validity::of(&cert).ok()?;
    let margin = 60.min((v.not_after - v.not_before) / 10);
    (v.not_after > now() + margin && v.not_before <= now() + 300).then_some((cert, v))
}

async fn client_from(yaml: &str) -> Result<kube::Client, BootstrapError> {
    let err = |e: &dyn std::fmt::Display| BootstrapError::Client(e.to_string());
    let kc = kube::config::Kubeconfig::from_yaml(yaml).map_err(|e| err(&e))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.map_err(|e| err(&e))?;
    kube::Client::try_from(cfg).map_err(|e| err(&e))
}

/// Reads `cluster-info` without trusting the server and returns the CA that matches the pins.
pub async fn discover_ca(server: &str, pins: &[String]) -> Result<String, BootstrapError> {
    let url = server.parse().map_err(|e: http::uri::InvalidUri| BootstrapError::Client(e.to_string()))?;
    let mut cfg = kube::Config::new(url);
    cfg.accept_invalid_certs = true;
    let client = kube::Client::try_from(cfg).map_err(|e| BootstrapError::Client(e.to_string()))?;
    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client, "kube-public");
    let cm = cms
        .get("cluster-info")
        .await
        .map_err(|source| BootstrapError::Api { what: "reading kube-public/cluster-info", source })?;
    let kc = cm
        .data
        .as_ref()
        .and_then(|d| d.get("kubeconfig"))
        .ok_or_else(|| PkiError::ClusterInfo("no data.kubeconfig".into()))?;
    Ok(pki::pinned_ca(kc, pins)?)
}

/// Files a CSR for the node with `client` and waits for its certificate; returns (key, cert).
async fn request(client: kube::Client, node: &str, wait: Duration) -> Result<(String, String), BootstrapError> {
    let (key, csr_pem) = pki::node_key_and_request(node)?;
    let csrs: kube::Api<CertificateSigningRequest> = kube::Api::all(client);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta { generate_name: Some("node-csr-".into()), ..Default::default() },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(csr_pem.into_bytes()),
            signer_name: SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let created = csrs
        .create(&Default::default(), &csr)
        .await
        .map_err(|source| BootstrapError::Api { what: "creating the CSR", source })?;
    let name = created.metadata.name.unwrap_or_default();
    info!(csr = %name, "filed certificate signing request");
    let deadline = tokio::time::Instant::now() + wait;
    let mut poll = Duration::from_millis(100);
    loop {
        match csrs.get(&name).await {
            Ok(c) => {
                let status = c.status.unwrap_or_default();
                for cond in status.conditions.iter().flatten() {
                    let how = match cond.type_.as_str() {
                        "Denied" => "denied",
                        "Failed" => "failed",
                        _ => continue,
                    };
                    return Err(BootstrapError::Refused {
                        name,
                        how,
                        message: cond.message.clone().unwrap_or_default(),
                    });
                }
                if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
                    let cert = String::from_utf8(cert.0).map_err(|_| PkiError::Certificate("not PEM text".into()))?;
                    return Ok((key, cert));
                }
            }
            // The CSR may be briefly unreadable (an apiserver restart): keep waiting.
            Err(e) => warn!(csr = %name, error = %e, "reading CSR"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BootstrapError::Timeout(name));
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(Duration::from_secs(2));
    }
}

fn store(cfg: &Config, paths: &Paths, ca: &str, key: &str, cert: &str) -> Result<(), BootstrapError> {
    std::fs::create_dir_all(&cfg.cert_dir)
        .map_err(|source| BootstrapError::Io { path: cfg.cert_dir.clone(), source })?;
    write_private(&paths.ca, ca)?;
    write_private(&paths.key, key)?;
    write_private(&paths.cert, cert)?;
    write_private(&paths.kubeconfig, &pki::kubeconfig(&cfg.server, ca, cert, key, &cfg.node_name))
}

/// Bootstraps with the token: discover and pin the CA, file the CSR, store the result.
async fn with_token(cfg: &Config, paths: &Paths) -> Result<(), BootstrapError> {
    let token = cfg.token.as_deref().ok_or(BootstrapError::NoToken)?;
    let ca = discover_ca(&cfg.server, &cfg.ca_hashes).await?;
    let client = client_from(&pki::token_kubeconfig(&cfg.server, &ca, token)).await?;
    let (key, cert) = request(client, &cfg.node_name, cfg.wait).await?;
    store(cfg, paths, &ca, &key, &cert)?;
    info!(kubeconfig = %paths.kubeconfig.display(), "joined with the bootstrap token");
    Ok(())
}

/// Renews with the current certificate (the server approves it as `selfnodeclient`).
pub async fn rotate(cfg: &Config) -> Result<(), BootstrapError> {
    let paths = Paths::in_dir(&cfg.cert_dir);
    if current(&paths).is_none() {
        return with_token(cfg, &paths).await;
    }
    let text = std::fs::read_to_string(&paths.kubeconfig)
        .map_err(|source| BootstrapError::Io { path: paths.kubeconfig.clone(), source })?;
    let ca =
        std::fs::read_to_string(&paths.ca).map_err(|source| BootstrapError::Io { path: paths.ca.clone(), source })?;
    let client = client_from(&text).await?;
    let (key, cert) = request(client, &cfg.node_name, cfg.wait).await?;
    store(cfg, &paths, &ca, &key, &cert)?;
    info!(kubeconfig = %paths.kubeconfig.display(), "client certificate rotated");
    Ok(())
}

/// Makes sure a valid node kubeconfig exists (see the module docs), starts the rotation task,
/// and returns the kubeconfig's path.
pub async fn ensure(cfg: Config) -> Result<PathBuf, BootstrapError> {
    let paths = Paths::in_dir(&cfg.cert_dir);
    match current(&paths) {
        Some(_) => info!(kubeconfig = %paths.kubeconfig.display(), "reusing the node's client certificate"),
        None => with_token(&cfg, &paths).await?,
    }
    let span = tracing::info_span!("cert_rotation", node = %cfg.node_name);
    tokio::spawn(rotation_loop(cfg).instrument(span));
    Ok(paths.kubeconfig)
}

async fn rotation_loop(cfg: Config) {
    let paths = Paths::in_dir(&cfg.cert_dir);
    let mut backoff = Duration::from_secs(1);
    loop {
        let wait = match current(&paths) {
            Some((_, v)) => {
                let at = v.rotation_deadline(rand::random::<f64>());
                Duration::from_secs(u64::try_from(at - now()).unwrap_or(0))
            }
            None => Duration::ZERO,
        };
        info!(in_secs = wait.as_secs(), "next client certificate rotation");
        tokio::time::sleep(wait).await;
        match rotate(&cfg).await {
            Ok(()) => backoff = Duration::from_secs(1),
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "client certificate rotation failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}
