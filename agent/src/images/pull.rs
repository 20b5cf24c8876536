//! One pull: registry → content store → unpacked snapshots → image record.
//!
//! The order is what keeps a failed pull from leaving a usable-looking image behind: everything
//! is written under one store lease (containerd's collector cannot take it mid-pull), layers first
//! (streamed, in parallel, each verified against its digest by the client while streaming and by
//! the store when it commits), then the config and manifest (and index) blobs with the GC labels
//! that make the image record keep them, then the unpack, and only then the image record. A pull
//! that fails anywhere before the record leaves at most content that the collector removes once
//! the lease is gone; a retry skips blobs that did arrive.
//!
//! Every pull builds its own registry client: tokens and credentials are never shared between
//! pulls (so one pod's pull secret cannot serve another pod's image), and a changed
//! `--registry-config` applies to the next pull.

use super::auth::{self, Credential, DockerConfig, RegistryConfig};
use super::reference::{self, InvalidImageName};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{self as mt, OciDescriptor};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::{debug, info, instrument};

/// Largest manifest or index accepted (containerd's limit too).
pub const MAX_MANIFEST: usize = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG: i64 = 8 << 20;
/// Layers fetched at once.
const PARALLEL_LAYERS: usize = 3;

const MANIFEST_TYPES: &[&str] = &[mt::OCI_IMAGE_MEDIA_TYPE, mt::IMAGE_MANIFEST_MEDIA_TYPE];
const INDEX_TYPES: &[&str] = &[mt::OCI_IMAGE_INDEX_MEDIA_TYPE, mt::IMAGE_MANIFEST_LIST_MEDIA_TYPE];
const CONFIG_TYPES: &[&str] = &[mt::IMAGE_CONFIG_MEDIA_TYPE, mt::IMAGE_DOCKER_CONFIG_MEDIA_TYPE];
const LAYER_TYPES: &[&str] = &[
    mt::IMAGE_LAYER_MEDIA_TYPE,
    mt::IMAGE_LAYER_GZIP_MEDIA_TYPE,
    "application/vnd.oci.image.layer.v1.tar+zstd",
    mt::IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE,
    mt::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
];

/// An error from the store, opaque to the puller (the runtime's own error type).
pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// A content-addressed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

/// Where a pull puts what it fetches (containerd's content store, snapshotter and image store in
/// the real agent: `runtime::containerd::pull`).
#[async_trait]
pub trait Store: Send + Sync {
    /// Starts the lease everything of this pull is written under; returns its id.
    async fn begin(&self) -> Result<String, StoreError>;
    /// Ends the lease (what is still unreferenced becomes collectable).
    async fn end(&self, lease: &str);
    async fn has_blob(&self, digest: &str) -> Result<bool, StoreError>;
    /// Streams a blob in; the store verifies `blob.digest` and `blob.size` when it commits and
    /// keeps nothing of a stream that ends in an error.
    async fn write_stream(
        &self,
        lease: &str,
        blob: &Blob,
        data: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<(), StoreError>;
    /// Writes a small blob with garbage-collection labels (manifest → config and layers, …).
    async fn write(
        &self,
        lease: &str,
        blob: &Blob,
        data: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<(), StoreError>;
    /// Writes the image config, labelled so that it keeps the snapshots of `diff_ids` alive.
    async fn write_config(&self, lease: &str, blob: &Blob, data: &[u8], diff_ids: &[String]) -> Result<(), StoreError>;
    /// Unpacks the layers into snapshots (skipping those present).
    async fn unpack(&self, lease: &str, layers: &[Blob], diff_ids: &[String]) -> Result<(), StoreError>;
    /// Creates or updates the image record `name` → `target`.
    async fn set_image(&self, name: &str, target: &Blob) -> Result<(), StoreError>;
}

/// Why a pull failed. The message is what the container status shows under `ErrImagePull`.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    InvalidName(#[from] InvalidImageName),
    #[error("{0}")]
    Config(#[from] auth::AuthError),
    #[error("pulling {image}: registry refused authorization: {message}")]
    Auth { image: String, message: String },
    #[error("pulling {image}: {message}")]
    Registry { image: String, message: String },
    #[error("pulling {image}: {what}: {reason}")]
    Invalid { image: String, what: String, reason: String },
    #[error("pulling {image}: {op}: {source}")]
    Store {
        image: String,
        op: &'static str,
        #[source]
        source: StoreError,
    },
    #[error("this runtime cannot pull images")]
    Unsupported,
}

/// What a pull did (for the `Pulled` event and the benchmark).
#[derive(Debug, Clone, PartialEq)]
pub struct PullReport {
    /// The name the image is recorded under (normalized).
    pub name: String,
    /// Digest of the image config (the image ID).
    pub id: String,
    /// Compressed size of config + layers.
    pub size: u64,
    /// Bytes downloaded by this pull (0 when every blob was present).
    pub fetched: u64,
    /// Blobs (layers and config) downloaded by this pull.
    pub fetched_blobs: usize,
}

/// One pull's inputs.
#[derive(Debug, Clone, Copy)]
pub struct PullRequest<'a> {
    pub image: &'a str,
    /// Decoded `imagePullSecrets` of the pod, in order.
    pub pod_secrets: &'a [DockerConfig],
    pub node: &'a RegistryConfig,
}

/// Picks the linux/amd64 manifest of an index (skipping attestation entries, which carry
/// `unknown/unknown`). Pure.
pub fn select_platform(index: &serde_json::Value) -> Option<&serde_json::Value> {
    index["manifests"].as_array()?.iter().find(|m| {
        m["platform"]["os"] == "linux"
            && m["platform"]["architecture"] == "amd64"
            && m["platform"]["variant"].as_str().is_none_or(|v| v == "v1" || v.is_empty())
    })
}

/// A descriptor from manifest JSON, with its digest checked to be a sha256 digest (it ends up in
/// URLs and store keys).
pub fn descriptor(v: &serde_json::Value) -> Result<Blob, String> {
    let media_type = v["mediaType"].as_str().ok_or("descriptor without mediaType")?.to_string();
    let digest = v["digest"].as_str().ok_or("descriptor without digest")?.to_string();
    let size = v["size"].as_i64().ok_or("descriptor without size")?;
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| format!("unsupported digest {digest:?}"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("malformed digest {digest:?}"));
    }
    if size < 0 {
        return Err(format!("negative size for {digest}"));
    }
    Ok(Blob { media_type, digest, size })
}

/// The manifest's config and layers, checked for supported media types. Pure.
pub fn parse_manifest(manifest: &serde_json::Value) -> Result<(Blob, Vec<Blob>), String> {
    if manifest["schemaVersion"] != 2 {
        return Err(format!("unsupported schemaVersion {}", manifest["schemaVersion"]));
    }
    let config = descriptor(&manifest["config"]).map_err(|e| format!("config: {e}"))?;
    if !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        return Err(format!("unsupported config media type {:?}", config.media_type));
    }
    if config.size > MAX_CONFIG {
        return Err(format!("config of {} bytes exceeds {MAX_CONFIG}", config.size));
    }
    let layers = manifest["layers"].as_array().ok_or("manifest without layers")?;
    let layers = layers.iter().map(descriptor).collect::<Result<Vec<_>, _>>().map_err(|e| format!("layer: {e}"))?;
    if let Some(l) = layers.iter().find(|l| !LAYER_TYPES.contains(&l.media_type.as_str())) {
        return Err(format!("unsupported layer media type {:?}", l.media_type));
    }
    Ok((config, layers))
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// The text a registry put in an error body (`{"errors": [{"message": …}]}`), else the body.
fn registry_message(body: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| {
        let msgs: Vec<String> = v["errors"]
            .as_array()?
            .iter()
            .filter_map(|e| {
                let m = e["message"].as_str()?;
                Some(match e["code"].as_str() {
                    Some(c) => format!("{c}: {m}"),
                    None => m.to_string(),
                })
            })
            .collect();
        (!msgs.is_empty()).then(|| msgs.join("; "))
    });
    let s = from_json.unwrap_or_else(|| body.trim().to_string());
    s.chars().take(512).collect()
}

/// An error with its causes (`error sending request …: connection reset`): reqwest's own
/// message leaves out why.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn oci_auth(c: Option<&Credential>) -> RegistryAuth {
    match c {
        None => RegistryAuth::Anonymous,
        Some(Credential::Basic { username, password }) => RegistryAuth::Basic(username.clone(), password.clone()),
        Some(Credential::Bearer(t)) => RegistryAuth::Bearer(t.clone()),
    }
}

fn client(node: &RegistryConfig) -> Client {
    // reqwest is built without a bundled crypto provider: the agent uses ring everywhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(node.insecure.clone()),
        // We select platforms ourselves (`select_platform`) from the raw index.
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    })
}

/// Pulls `req.image` into `store` and records it under its normalized name.
#[instrument(skip_all, fields(image = %req.image))]
pub async fn pull<S: Store + ?Sized>(store: &S, req: PullRequest<'_>) -> Result<PullReport, PullError> {
    let r: Reference = reference::parse(req.image)?;
    let name = r.whole();
    let image = name.clone();
    let reg = |e: OciDistributionError| PullError::Registry { image: image.clone(), message: chain(&e) };
    let invalid = |what: &str, reason: String| PullError::Invalid { image: name.clone(), what: what.into(), reason };
    let store_err = |op: &'static str| {
        let image = name.clone();
        move |source: StoreError| PullError::Store { image, op, source }
    };

    let cred = auth::select(req.pod_secrets, &req.node.auths, r.registry());
    let auth = oci_auth(cred);
    let client = client(req.node);
    // Authenticate first and explicitly: the client would otherwise swallow a refused token
    // request and go on anonymously, and the status would say "not authorized" without the
    // registry's reason.
    if let Err(e) = client.auth(&r, &auth, RegistryOperation::Pull).await {
        return Err(match e {
            OciDistributionError::AuthenticationFailure(body) => {
                PullError::Auth { image: name.clone(), message: registry_message(&body) }
            }
            other => reg(other),
        });
    }

    let accept: Vec<&str> = MANIFEST_TYPES.iter().chain(INDEX_TYPES).copied().collect();
    let (top_bytes, top_digest) = client.pull_manifest_raw(&r, &auth, &accept).await.map_err(reg)?;
    if top_bytes.len() > MAX_MANIFEST {
        return Err(invalid("manifest", format!("{} bytes exceeds {MAX_MANIFEST}", top_bytes.len())));
    }
    let top: serde_json::Value =
        serde_json::from_slice(&top_bytes).map_err(|e| invalid("manifest", format!("not JSON: {e}")))?;
    let top_type = top["mediaType"].as_str().map(String::from);
    let mut index: Option<(Blob, Bytes)> = None;
    let (manifest_blob, manifest_bytes, manifest) = if top.get("manifests").is_some() {
        let entry = select_platform(&top).ok_or_else(|| invalid("image index", "no linux/amd64 manifest".into()))?;
        let mdesc = descriptor(entry).map_err(|e| invalid("image index", e))?;
        if !MANIFEST_TYPES.contains(&mdesc.media_type.as_str()) {
            return Err(invalid("image index", format!("unsupported manifest media type {:?}", mdesc.media_type)));
        }
        let mref = r.clone_with_digest(mdesc.digest.clone());
        let (mbytes, _) = client.pull_manifest_raw(&mref, &auth, MANIFEST_TYPES).await.map_err(reg)?;
        if mbytes.len() > MAX_MANIFEST || sha256(&mbytes) != mdesc.digest {
            return Err(invalid("manifest", format!("content does not match {}", mdesc.digest)));
        }
        let m: serde_json::Value =
            serde_json::from_slice(&mbytes).map_err(|e| invalid("manifest", format!("not JSON: {e}")))?;
        let itype = top_type.unwrap_or_else(|| mt::OCI_IMAGE_INDEX_MEDIA_TYPE.to_string());
        if !INDEX_TYPES.contains(&itype.as_str()) {
            return Err(invalid("image index", format!("unsupported media type {itype:?}")));
        }
        index = Some((Blob { media_type: itype, digest: top_digest, size: top_bytes.len() as i64 }, top_bytes));
        (mdesc, mbytes, m)
    } else {
        let mtype = top_type.unwrap_or_else(|| mt::OCI_IMAGE_MEDIA_TYPE.to_string());
        if !MANIFEST_TYPES.contains(&mtype.as_str()) {
            return Err(invalid("manifest", format!("unsupported media type {mtype:?}")));
        }
        (Blob { media_type: mtype, digest: top_digest, size: top_bytes.len() as i64 }, top_bytes, top)
    };
    let (config, layers) = parse_manifest(&manifest).map_err(|e| invalid("manifest", e))?;

    let mut config_bytes = Vec::with_capacity(config.size.max(0) as usize);
    let cdesc = oci_desc(&config);
    client.pull_blob(&r, &cdesc, &mut config_bytes).await.map_err(reg)?;
    if sha256(&config_bytes) != config.digest {
        return Err(invalid("config", format!("content does not match {}", config.digest)));
    }
    let config_json: serde_json::Value =
        serde_json::from_slice(&config_bytes).map_err(|e| invalid("config", format!("not JSON: {e}")))?;
    let diff_ids: Vec<String> = config_json["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_str().map(String::from)).collect())
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(invalid("config", format!("{} layers but {} diff_ids", layers.len(), diff_ids.len())));
    }

    let lease = store.begin().await.map_err(store_err("lease"))?;
    let out = async {
        let fetched = Arc::new(AtomicU64::new(0));
        let mut present = Vec::with_capacity(layers.len());
        for l in &layers {
            present.push(store.has_blob(&l.digest).await.map_err(store_err("content info"))?);
        }
        let fetched_blobs = present.iter().filter(|p| !**p).count() + 1;
        debug!(layers = layers.len(), missing = fetched_blobs - 1, "fetching layers");
        // Downloads run PARALLEL_LAYERS at a time and finish in layer order (`buffered`); each
        // finished layer is applied at once on top of the previous ones while later layers are
        // still downloading, as containerd's own unpacker does.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let (client_r, r_r, lease_r, fetched_r, present_r, layers_r) =
            (&client, &r, &lease, &fetched, &present, &layers);
        let download = async move {
            let mut done = stream::iter(0..layers_r.len())
                .map(|i| {
                    let fetched = fetched_r.clone();
                    async move {
                        let l = &layers_r[i];
                        if present_r[i] {
                            return Ok(i);
                        }
                        let s = client_r.pull_blob_stream(r_r, &oci_desc(l)).await.map_err(reg)?;
                        let counted = s.stream.inspect_ok(move |b| {
                            fetched.fetch_add(b.len() as u64, Ordering::Relaxed);
                        });
                        store.write_stream(lease_r, l, counted.boxed()).await.map_err(store_err("layer"))?;
                        Ok::<_, PullError>(i)
                    }
                })
                .buffered(PARALLEL_LAYERS);
            while let Some(i) = done.try_next().await? {
                // The receiver only goes away when applying failed; that error is reported.
                let _ = tx.send(i);
            }
            Ok::<_, PullError>(())
        };
        let apply = async {
            while let Some(i) = rx.recv().await {
                store.unpack(&lease, &layers[..=i], &diff_ids[..=i]).await.map_err(store_err("unpack"))?;
            }
            Ok::<_, PullError>(())
        };
        futures::try_join!(download, apply)?;
        if layers.is_empty() {
            store.unpack(&lease, &layers, &diff_ids).await.map_err(store_err("unpack"))?;
        }
        store.write_config(&lease, &config, &config_bytes, &diff_ids).await.map_err(store_err("config"))?;
        let mut labels = HashMap::from([("containerd.io/gc.ref.content.config".to_string(), config.digest.clone())]);
        for (i, l) in layers.iter().enumerate() {
            labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
        }
        store.write(&lease, &manifest_blob, &manifest_bytes, labels).await.map_err(store_err("manifest"))?;
        let target = match &index {
            Some((iblob, ibytes)) => {
                let labels =
                    HashMap::from([("containerd.io/gc.ref.content.m.0".to_string(), manifest_blob.digest.clone())]);
                store.write(&lease, iblob, ibytes, labels).await.map_err(store_err("index"))?;
                iblob
            }
            None => &manifest_blob,
        };
        store.set_image(&name, target).await.map_err(store_err("image record"))?;
        Ok::<_, PullError>((fetched.load(Ordering::Relaxed) + config_bytes.len() as u64, fetched_blobs))
    }
    .await;
    store.end(&lease).await;
    let (fetched, fetched_blobs) = out?;
    let size = layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>() + config.size.max(0) as u64;
    info!(image = %name, id = %config.digest, size, fetched, "pulled image");
    Ok(PullReport { name, id: config.digest, size, fetched, fetched_blobs })
}

fn oci_desc(b: &Blob) -> OciDescriptor {
    OciDescriptor { media_type: b.media_type.clone(), digest: b.digest.clone(), size: b.size, ..Default::default() }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn index_selection_prefers_linux_amd64_and_skips_attestations() {
        let idx = json!({"manifests": [
            {"digest": "a", "platform": {"os": "unknown", "architecture": "unknown"}},
            {"digest": "b", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": "c", "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "d", "platform": {"os": "linux", "architecture": "amd64"}}
        ]});
        assert_eq!(select_platform(&idx).unwrap()["digest"], "c");
        assert!(
            select_platform(&json!({"manifests": [{"platform": {"os": "windows", "architecture": "amd64"}}]}))
                .is_none()
        );
        assert!(select_platform(&json!({"manifests": "x"})).is_none());
    }

    #[test]
    fn descriptors_are_checked() {
        assert!(descriptor(&json!({"mediaType": "x", "digest": D, "size": 3})).is_ok());
        for bad in [
            json!({"mediaType": "x", "digest": "sha256:../../etc", "size": 3}),
            json!({"mediaType": "x", "digest": "sha512:abcd", "size": 3}),
            json!({"mediaType": "x", "digest": D, "size": -1}),
            json!({"digest": D, "size": 1}),
            json!({"mediaType": "x", "digest": D.to_uppercase(), "size": 1}),
        ] {
            assert!(descriptor(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifests_with_unknown_media_types_are_rejected() {
        let ok = json!({"schemaVersion": 2,
            "config": {"mediaType": mt::IMAGE_CONFIG_MEDIA_TYPE, "digest": D, "size": 10},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": D, "size": 10},
                       {"mediaType": mt::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE, "digest": D, "size": 10}]});
        let (c, l) = parse_manifest(&ok).unwrap();
        assert_eq!((c.size, l.len()), (10, 2));
        let mut bad = ok.clone();
        bad["layers"][0]["mediaType"] = json!("application/vnd.example.weird");
        assert!(parse_manifest(&bad).unwrap_err().contains("weird"));
        let mut bad = ok.clone();
        bad["config"]["size"] = json!(MAX_CONFIG + 1);
        assert!(parse_manifest(&bad).unwrap_err().contains("exceeds"));
        let mut bad = ok.clone();
        bad["schemaVersion"] = json!(1);
        assert!(parse_manifest(&bad).is_err());
        assert!(parse_manifest(&json!({"schemaVersion": 2, "config": ok["config"]})).is_err());
    }

    #[test]
    fn registry_messages_are_extracted() {
        assert_eq!(
            registry_message(r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad creds"}]}"#),
            "UNAUTHORIZED: bad creds"
        );
        assert_eq!(registry_message("  plain text \n"), "plain text");
        assert_eq!(registry_message(&"x".repeat(2000)).len(), 512);
    }
}
