//! [`ContainerRuntime`] over containerd's native gRPC API (`containerd-client`).
//!
//! containerd 1.6 has no transfer or sandbox service, so this module does what containerd's own
//! Go client does: writes image blobs into the content store, unpacks layers into snapshots
//! (`snapshots.Prepare` + `diff.Apply` + `snapshots.Commit`, named by chain ID), labels content so
//! containerd's garbage collector keeps what an image references, and runs everything it creates
//! under a lease so the collector cannot race an import.
//!
//! All calls carry the agent's containerd namespace; every container it creates carries the
//! `io.keelson.managed=true` label, and [`ContainerRuntime::list`] only returns those.

mod pull;

use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ExecResult, ImageConfig, Result, RuntimeError, RuntimeEvent, Stdio,
    TaskState, labels,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::Descriptor;
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tracing::{debug, info, instrument, warn};

const SNAPSHOTTER: &str = "overlayfs";
const RUNTIME: &str = "io.containerd.runc.v2";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const CHUNK: usize = 1 << 20;

/// A connection to one containerd namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    /// Directory for exec output files (must be visible to the shim, i.e. on the same host).
    scratch: PathBuf,
}

fn grpc(op: &'static str) -> impl FnOnce(tonic::Status) -> RuntimeError {
    move |s| match s.code() {
        Code::NotFound => RuntimeError::NotFound { what: format!("{op}: {}", s.message()) },
        Code::AlreadyExists => RuntimeError::AlreadyExists { what: format!("{op}: {}", s.message()) },
        _ => RuntimeError::Grpc { op, source: Box::new(s) },
    }
}

fn ts(t: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let t = t?;
    if t.seconds <= 0 {
        return None;
    }
    DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
}

fn sha256_digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// OCI chain IDs: chain(0) = diff(0); chain(n) = sha256(chain(n-1) + " " + diff(n)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

impl Containerd {
    /// Connects to containerd's socket and ensures the namespace exists.
    pub async fn connect(socket: &Path, namespace: &str, scratch: &Path) -> Result<Self> {
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|source| RuntimeError::Connect { path: socket.to_path_buf(), source })?;
        std::fs::create_dir_all(scratch).map_err(|e| RuntimeError::io(format!("create {}", scratch.display()), e))?;
        let c = Containerd { channel, namespace: namespace.to_string(), scratch: scratch.to_path_buf() };
        let mut ns = api::namespaces_client::NamespacesClient::new(c.channel.clone());
        let r = ns
            .create(c.req(api::CreateNamespaceRequest {
                namespace: Some(api::Namespace { name: namespace.to_string(), labels: Default::default() }),
            }))
            .await;
        match r {
            Ok(_) => info!(namespace, "created containerd namespace"),
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(grpc("namespaces.Create")(s)),
        }
        Ok(c)
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        self.req_lease(msg, None)
    }

    fn req_lease<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = self.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        if let Some(l) = lease.and_then(|l| l.parse().ok()) {
            r.metadata_mut().insert("containerd-lease", l);
        }
        r
    }

    fn content(&self) -> api::content_client::ContentClient<Channel> {
        api::content_client::ContentClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    fn snapshots(&self) -> snap::snapshots_client::SnapshotsClient<Channel> {
        snap::snapshots_client::SnapshotsClient::new(self.channel.clone())
    }
    fn containers(&self) -> api::containers_client::ContainersClient<Channel> {
        api::containers_client::ContainersClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    fn tasks(&self) -> api::tasks_client::TasksClient<Channel> {
        api::tasks_client::TasksClient::new(self.channel.clone())
    }
    fn images(&self) -> api::images_client::ImagesClient<Channel> {
        api::images_client::ImagesClient::new(self.channel.clone())
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = self
            .content()
            .read(self.req(api::ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 }))
            .await
            .map_err(grpc("content.Read"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(grpc("content.Read"))? {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    async fn blob_exists(&self, digest: &str) -> Result<bool> {
        match self.content().info(self.req(api::InfoRequest { digest: digest.to_string() })).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(grpc("content.Info")(s)),
        }
    }

    /// Writes one blob (skipping it when present) with the given GC labels.
    async fn write_blob(
        &self,
        lease: &str,
        digest: &str,
        data: &[u8],
        labels: std::collections::HashMap<String, String>,
    ) -> Result<()> {
        if self.blob_exists(digest).await? {
            if !labels.is_empty() {
                let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
                let info = api::Info { digest: digest.to_string(), labels, ..Default::default() };
                self.content()
                    .update(self.req(api::UpdateRequest {
                        info: Some(info),
                        update_mask: Some(prost_types::FieldMask { paths }),
                    }))
                    .await
                    .map_err(grpc("content.Update"))?;
            }
            return Ok(());
        }
        let total = data.len() as i64;
        let r#ref = format!("keelson-import-{digest}");
        let mut msgs = Vec::new();
        let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(CHUNK).collect() };
        let n = chunks.len();
        let mut offset = 0i64;
        for (i, c) in chunks.into_iter().enumerate() {
            let last = i + 1 == n;
            msgs.push(api::WriteContentRequest {
                action: if last { api::WriteAction::Commit as i32 } else { api::WriteAction::Write as i32 },
                r#ref: r#ref.clone(),
                total,
                expected: if last { digest.to_string() } else { String::new() },
                offset,
                data: c.to_vec(),
                labels: if last { labels.clone() } else { Default::default() },
            });
            offset += c.len() as i64;
        }
        let stream = tokio_stream::iter(msgs);
        let resp = self.content().write(self.req_lease(stream, Some(lease))).await;
        match resp {
            Ok(r) => {
                let mut s = r.into_inner();
                while s.message().await.map_err(grpc("content.Write"))?.is_some() {}
                Ok(())
            }
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(grpc("content.Write")(s)),
        }
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        match self
            .snapshots()
            .stat(self.req(snap::StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.to_string() }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(grpc("snapshots.Stat")(s)),
        }
    }

    /// Unpacks layers into committed snapshots named by chain ID.
    async fn unpack(&self, lease: &str, layers: &[Descriptor], diff_ids: &[String]) -> Result<String> {
        let chains = chain_ids(diff_ids);
        let mut parent = String::new();
        for ((layer, diff_id), chain) in layers.iter().zip(diff_ids).zip(&chains) {
            if !self.snapshot_exists(chain).await? {
                let key = format!("extract-{}-{}", uuid::Uuid::new_v4().simple(), chain);
                let prep = self
                    .snapshots()
                    .prepare(self.req_lease(
                        snap::PrepareSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            key: key.clone(),
                            parent: parent.clone(),
                            labels: Default::default(),
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(grpc("snapshots.Prepare"))?
                    .into_inner();
                let applied = api::diff_client::DiffClient::new(self.channel.clone())
                    .apply(self.req_lease(
                        api::ApplyRequest {
                            diff: Some(layer.clone()),
                            mounts: prep.mounts,
                            payloads: Default::default(),
                            sync_fs: false,
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(grpc("diff.Apply"))?
                    .into_inner();
                if let Some(a) = applied.applied
                    && &a.digest != diff_id
                {
                    let _ = self
                        .snapshots()
                        .remove(self.req(snap::RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key }))
                        .await;
                    return Err(RuntimeError::Invalid {
                        what: format!("layer {}", layer.digest),
                        reason: format!("unpacked to {} but the image config says {diff_id}", a.digest),
                    });
                }
                let r = self
                    .snapshots()
                    .commit(self.req_lease(
                        snap::CommitSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            name: chain.clone(),
                            key,
                            labels: Default::default(),
                        },
                        Some(lease),
                    ))
                    .await;
                match r {
                    Ok(_) => {}
                    Err(s) if s.code() == Code::AlreadyExists => {}
                    Err(s) => return Err(grpc("snapshots.Commit")(s)),
                }
            }
            parent = chain.clone();
        }
        Ok(parent)
    }

    /// Resolves an image name to (manifest, config JSON).
    async fn resolve(&self, image: &str) -> Result<(serde_json::Value, serde_json::Value, String)> {
        let img = match self.images().get(self.req(api::GetImageRequest { name: image.to_string() })).await {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(grpc("images.Get")(s)),
        };
        let target = img.and_then(|i| i.target).ok_or_else(|| RuntimeError::ImageNotFound { image: image.into() })?;
        let mut manifest: serde_json::Value = serde_json::from_slice(&self.read_blob(&target.digest).await?)
            .map_err(|e| RuntimeError::Invalid { what: format!("manifest of {image}"), reason: e.to_string() })?;
        if manifest.get("manifests").is_some() {
            // An index: pick linux/amd64.
            let pick = manifest["manifests"]
                .as_array()
                .and_then(|ms| {
                    ms.iter().find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
                })
                .and_then(|m| m["digest"].as_str().map(String::from))
                .ok_or_else(|| RuntimeError::Invalid {
                    what: format!("image index of {image}"),
                    reason: "no linux/amd64 manifest".into(),
                })?;
            manifest = serde_json::from_slice(&self.read_blob(&pick).await?)
                .map_err(|e| RuntimeError::Invalid { what: format!("manifest of {image}"), reason: e.to_string() })?;
        }
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| RuntimeError::Invalid { what: format!("manifest of {image}"), reason: "no config".into() })?
            .to_string();
        let config: serde_json::Value = serde_json::from_slice(&self.read_blob(&config_digest).await?)
            .map_err(|e| RuntimeError::Invalid { what: format!("config of {image}"), reason: e.to_string() })?;
        Ok((manifest, config, config_digest))
    }

    async fn task_state(&self, id: &str) -> Result<TaskState> {
        match self.tasks().get(self.req(api::GetRequest { container_id: id.to_string(), exec_id: String::new() })).await
        {
            Ok(r) => Ok(r.into_inner().process.map(process_state).unwrap_or(TaskState::Unknown)),
            Err(s) if s.code() == Code::NotFound => Ok(TaskState::None),
            Err(s) => Err(grpc("tasks.Get")(s)),
        }
    }

    async fn with_lease<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut leases = api::leases_client::LeasesClient::new(self.channel.clone());
        let mut lbl = std::collections::HashMap::new();
        lbl.insert("containerd.io/gc.expire".to_string(), (Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
        let lease = leases
            .create(
                self.req(api::CreateRequest { id: format!("keelson-{}", uuid::Uuid::new_v4().simple()), labels: lbl }),
            )
            .await
            .map_err(grpc("leases.Create"))?
            .into_inner()
            .lease
            .map(|l| l.id)
            .unwrap_or_default();
        let out = f(lease.clone()).await;
        if let Err(e) = leases.delete(self.req(api::DeleteRequest { id: lease.clone(), sync: false })).await {
            warn!(lease, error = %e, "could not delete lease (it expires on its own)");
        }
        out
    }
}

fn process_state(p: containerd_client::types::v1::Process) -> TaskState {
    use containerd_client::types::v1::Status;
    match Status::try_from(p.status).unwrap_or(Status::Unknown) {
        Status::Created => TaskState::Created,
        Status::Running => TaskState::Running { pid: p.pid },
        Status::Stopped => TaskState::Stopped { exit_code: p.exit_status as i32, exited_at: ts(p.exited_at) },
        Status::Paused | Status::Pausing => TaskState::Paused,
        Status::Unknown => TaskState::Unknown,
    }
}

fn str_list(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn descriptor(v: &serde_json::Value) -> Option<Descriptor> {
    Some(Descriptor {
        media_type: v["mediaType"].as_str()?.to_string(),
        digest: v["digest"].as_str()?.to_string(),
        size: v["size"].as_i64()?,
        annotations: Default::default(),
    })
}

/// Reads an OCI layout archive into (path → bytes).
fn read_archive(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let f = std::fs::File::open(path).map_err(|e| RuntimeError::io(format!("open {}", path.display()), e))?;
    let mut ar = tar::Archive::new(f);
    let mut files = BTreeMap::new();
    let entries = ar.entries().map_err(|e| RuntimeError::io(format!("read {}", path.display()), e))?;
    for e in entries {
        let mut e = e.map_err(|e| RuntimeError::io(format!("read {}", path.display()), e))?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = e
            .path()
            .map_err(|e| RuntimeError::io("archive entry path", e))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).map_err(|e| RuntimeError::io(format!("read {name}"), e))?;
        files.insert(name, buf);
    }
    Ok(files)
}

#[async_trait]
impl ContainerRuntime for Containerd {
    async fn version(&self) -> Result<String> {
        let v = api::version_client::VersionClient::new(self.channel.clone())
            .version(Request::new(()))
            .await
            .map_err(grpc("version"))?
            .into_inner();
        Ok(format!("containerd {}", v.version))
    }

    #[instrument(skip(self), fields(archive = %path.display()))]
    async fn import_archive(&self, path: &Path) -> Result<Vec<String>> {
        let files = read_archive(path)?;
        let blob = |d: &str| -> Result<&Vec<u8>> {
            let key = format!("blobs/{}", d.replacen(':', "/", 1));
            files.get(&key).ok_or_else(|| RuntimeError::Invalid {
                what: format!("archive {}", path.display()),
                reason: format!("missing blob {d}"),
            })
        };
        let invalid = |reason: String| RuntimeError::Invalid { what: format!("archive {}", path.display()), reason };
        let index: serde_json::Value = serde_json::from_slice(
            files.get("index.json").ok_or_else(|| invalid("no index.json (not an OCI image layout)".into()))?,
        )
        .map_err(|e| invalid(format!("index.json: {e}")))?;
        let mut names = Vec::new();
        for m in index["manifests"].as_array().cloned().unwrap_or_default() {
            let Some(name) = m["annotations"]["io.containerd.image.name"].as_str().map(String::from) else {
                warn!("skipping a manifest without io.containerd.image.name");
                continue;
            };
            let mdesc = descriptor(&m).ok_or_else(|| invalid("bad manifest descriptor".into()))?;
            let mbytes = blob(&mdesc.digest)?.clone();
            if sha256_digest(&mbytes) != mdesc.digest {
                return Err(invalid(format!("manifest digest mismatch for {}", mdesc.digest)));
            }
            let manifest: serde_json::Value =
                serde_json::from_slice(&mbytes).map_err(|e| invalid(format!("manifest: {e}")))?;
            let cdesc = descriptor(&manifest["config"]).ok_or_else(|| invalid("manifest without config".into()))?;
            let cbytes = blob(&cdesc.digest)?.clone();
            let config: serde_json::Value =
                serde_json::from_slice(&cbytes).map_err(|e| invalid(format!("config: {e}")))?;
            let layers: Vec<Descriptor> =
                manifest["layers"].as_array().map(|a| a.iter().filter_map(descriptor).collect()).unwrap_or_default();
            let diff_ids = str_list(&config["rootfs"]["diff_ids"]);
            if diff_ids.len() != layers.len() {
                return Err(invalid(format!("{} layers but {} diff_ids", layers.len(), diff_ids.len())));
            }
            let chains = chain_ids(&diff_ids);
            let name2 = name.clone();
            let mdigest = mdesc.digest.clone();
            self.with_lease(|lease| async move {
                for l in &layers {
                    let data = blob(&l.digest)?;
                    if sha256_digest(data) != l.digest {
                        return Err(invalid(format!("layer digest mismatch for {}", l.digest)));
                    }
                    self.write_blob(&lease, &l.digest, data, Default::default()).await?;
                }
                let mut clabels = std::collections::HashMap::new();
                if let Some(top) = chains.last() {
                    clabels.insert(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top.clone());
                }
                self.write_blob(&lease, &cdesc.digest, &cbytes, clabels).await?;
                let mut mlabels = std::collections::HashMap::new();
                mlabels.insert("containerd.io/gc.ref.content.config".to_string(), cdesc.digest.clone());
                for (i, l) in layers.iter().enumerate() {
                    mlabels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
                }
                self.write_blob(&lease, &mdesc.digest, &mbytes, mlabels).await?;
                self.unpack(&lease, &layers, &diff_ids).await?;
                let image = api::Image {
                    name: name2.clone(),
                    labels: [(labels::IMAGE_SOURCE.to_string(), "archive".to_string())].into(),
                    target: Some(mdesc.clone()),
                    created_at: None,
                    updated_at: None,
                };
                let created = self
                    .images()
                    .create(self.req(api::CreateImageRequest { image: Some(image.clone()), source_date_epoch: None }))
                    .await;
                match created {
                    Ok(_) => {}
                    Err(s) if s.code() == Code::AlreadyExists => {
                        self.images()
                            .update(self.req(api::UpdateImageRequest {
                                image: Some(image),
                                update_mask: None,
                                source_date_epoch: None,
                            }))
                            .await
                            .map_err(grpc("images.Update"))?;
                    }
                    Err(s) => return Err(grpc("images.Create")(s)),
                }
                Ok(())
            })
            .await?;
            info!(image = %name, manifest = %mdigest, "imported image");
            names.push(name);
        }
        Ok(names)
    }

    async fn pull_image(
        &self,
        req: crate::images::pull::PullRequest<'_>,
    ) -> std::result::Result<crate::images::PullReport, crate::images::PullError> {
        crate::images::pull::pull(self, req).await
    }

    async fn image_config(&self, image: &str) -> Result<ImageConfig> {
        let (_m, config, id) = self.resolve(image).await?;
        let from_archive = match self.images().get(self.req(api::GetImageRequest { name: image.to_string() })).await {
            Ok(r) => {
                r.into_inner().image.is_some_and(|i| i.labels.get(labels::IMAGE_SOURCE).is_some_and(|v| v == "archive"))
            }
            Err(_) => false,
        };
        let c = &config["config"];
        Ok(ImageConfig {
            name: image.to_string(),
            id,
            entrypoint: str_list(&c["Entrypoint"]),
            cmd: str_list(&c["Cmd"]),
            env: str_list(&c["Env"]),
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
            user: c["User"].as_str().unwrap_or_default().to_string(),
            stop_signal: c["StopSignal"].as_str().map(String::from),
            from_archive,
        })
    }

    #[instrument(skip(self, spec), fields(id = %spec.id, image = %spec.image))]
    async fn create_container(&self, spec: &ContainerSpec) -> Result<()> {
        let (_m, config, _id) = self.resolve(&spec.image).await?;
        let diff_ids = str_list(&config["rootfs"]["diff_ids"]);
        let parent = chain_ids(&diff_ids).pop().unwrap_or_default();
        if !self.snapshot_exists(&parent).await? {
            return Err(RuntimeError::ImageNotFound { image: format!("{} (not unpacked)", spec.image) });
        }
        let mut slabels = std::collections::HashMap::new();
        slabels.insert(labels::MANAGED.to_string(), "true".to_string());
        // Under a lease until the container record references the snapshot: containerd's GC
        // (run after any lease ends, e.g. an image pull's) would otherwise take it in between.
        self.with_lease(|lease| async move {
            let r = self
                .snapshots()
                .prepare(self.req_lease(
                    snap::PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: spec.id.clone(),
                        parent,
                        labels: slabels,
                    },
                    Some(&lease),
                ))
                .await;
            match r {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists => debug!("snapshot already prepared"),
                Err(s) => return Err(grpc("snapshots.Prepare")(s)),
            }
            let mut lbl: std::collections::HashMap<String, String> =
                spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            lbl.insert(labels::MANAGED.into(), "true".into());
            let container = api::Container {
                id: spec.id.clone(),
                labels: lbl,
                image: spec.image.clone(),
                runtime: Some(api::container::Runtime { name: RUNTIME.into(), options: None }),
                spec: Some(prost_types::Any {
                    type_url: SPEC_TYPE_URL.into(),
                    value: serde_json::to_vec(&spec.oci_spec)
                        .map_err(|e| RuntimeError::Invalid { what: "OCI spec".into(), reason: e.to_string() })?,
                }),
                snapshotter: SNAPSHOTTER.into(),
                snapshot_key: spec.id.clone(),
                ..Default::default()
            };
            self.containers()
                .create(self.req_lease(api::CreateContainerRequest { container: Some(container) }, Some(&lease)))
                .await
                .map_err(grpc("containers.Create"))?;
            Ok(())
        })
        .await
    }

    #[instrument(skip(self, stdio))]
    async fn start(&self, id: &str, stdio: &Stdio) -> Result<u32> {
        match self.task_state(id).await? {
            TaskState::Running { pid } => return Ok(pid),
            TaskState::Created => {}
            TaskState::None => {
                let mounts = self
                    .snapshots()
                    .mounts(self.req(snap::MountsRequest { snapshotter: SNAPSHOTTER.into(), key: id.to_string() }))
                    .await
                    .map_err(grpc("snapshots.Mounts"))?
                    .into_inner()
                    .mounts;
                let (stdout, stderr) = match stdio {
                    Stdio::Null => (String::new(), String::new()),
                    Stdio::Binary { binary, args } => {
                        let q: Vec<String> =
                            args.iter().map(|(k, v)| format!("{}={}", url_escape(k), url_escape(v))).collect();
                        let uri = format!("binary://{}?{}", binary.display(), q.join("&"));
                        (uri.clone(), uri)
                    }
                };
                self.tasks()
                    .create(self.req(api::CreateTaskRequest {
                        container_id: id.to_string(),
                        rootfs: mounts,
                        stdout,
                        stderr,
                        ..Default::default()
                    }))
                    .await
                    .map_err(grpc("tasks.Create"))?;
            }
            other => {
                return Err(RuntimeError::Invalid {
                    what: format!("task {id}"),
                    reason: format!("cannot start a task in state {other:?}; remove it first"),
                });
            }
        }
        let r = self
            .tasks()
            .start(self.req(api::StartRequest { container_id: id.to_string(), exec_id: String::new() }))
            .await
            .map_err(grpc("tasks.Start"))?;
        Ok(r.into_inner().pid)
    }

    async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let r = self
            .tasks()
            .kill(self.req(api::KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal: signal as u32,
                all,
            }))
            .await;
        match r {
            Ok(_) => Ok(()),
            // Already stopped / gone: the goal (not running) holds.
            Err(s) if s.code() == Code::NotFound || s.code() == Code::FailedPrecondition => Ok(()),
            Err(s) => Err(grpc("tasks.Kill")(s)),
        }
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>> {
        let resp = self
            .containers()
            .list(
                self.req(api::ListContainersRequest { filters: vec![format!("labels.\"{}\"==true", labels::MANAGED)] }),
            )
            .await
            .map_err(grpc("containers.List"))?
            .into_inner();
        let tasks = self
            .tasks()
            .list(self.req(api::ListTasksRequest { filter: String::new() }))
            .await
            .map_err(grpc("tasks.List"))?
            .into_inner()
            .tasks;
        let mut by_id: std::collections::HashMap<String, TaskState> =
            tasks.into_iter().map(|p| (p.id.clone(), process_state(p))).collect();
        Ok(resp
            .containers
            .into_iter()
            .map(|c| ContainerInfo {
                task: by_id.remove(&c.id).unwrap_or(TaskState::None),
                id: c.id,
                image: c.image,
                labels: c.labels.into_iter().collect(),
                created_at: ts(c.created_at),
            })
            .collect())
    }

    async fn set_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let c = api::Container {
            id: id.to_string(),
            labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ..Default::default()
        };
        self.containers()
            .update(self.req(api::UpdateContainerRequest {
                container: Some(c),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(grpc("containers.Update"))?;
        Ok(())
    }

    #[instrument(skip(self))]
    async fn remove(&self, id: &str) -> Result<()> {
        match self.task_state(id).await? {
            TaskState::None => {}
            TaskState::Stopped { .. } => {}
            _ => {
                self.kill(id, libc::SIGKILL, true).await?;
                let waited = tokio::time::timeout(
                    Duration::from_secs(10),
                    self.tasks().wait(self.req(api::WaitRequest { container_id: id.into(), exec_id: String::new() })),
                )
                .await;
                if waited.is_err() {
                    warn!(id, "task did not exit 10s after SIGKILL; deleting anyway");
                }
            }
        }
        if let Err(s) = self.tasks().delete(self.req(api::DeleteTaskRequest { container_id: id.to_string() })).await
            && s.code() != Code::NotFound
        {
            return Err(grpc("tasks.Delete")(s));
        }
        if let Err(s) = self.containers().delete(self.req(api::DeleteContainerRequest { id: id.to_string() })).await
            && s.code() != Code::NotFound
        {
            return Err(grpc("containers.Delete")(s));
        }
        if let Err(s) = self
            .snapshots()
            .remove(self.req(snap::RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: id.to_string() }))
            .await
            && s.code() != Code::NotFound
        {
            return Err(grpc("snapshots.Remove")(s));
        }
        Ok(())
    }

    async fn exec(&self, id: &str, argv: &[String], timeout: Duration) -> Result<ExecResult> {
        // Reuse the container's process spec (user, env, cwd, caps) with new args.
        let c = self
            .containers()
            .get(self.req(api::GetContainerRequest { id: id.to_string() }))
            .await
            .map_err(grpc("containers.Get"))?
            .into_inner()
            .container
            .ok_or_else(|| RuntimeError::NotFound { what: format!("container {id}") })?;
        let spec: serde_json::Value = c
            .spec
            .map(|a| serde_json::from_slice(&a.value))
            .transpose()
            .map_err(|e| RuntimeError::Invalid { what: format!("spec of {id}"), reason: e.to_string() })?
            .unwrap_or_default();
        let mut process = spec.get("process").cloned().unwrap_or_else(|| serde_json::json!({}));
        process["args"] = serde_json::json!(argv);
        process["terminal"] = serde_json::json!(false);
        let exec_id = format!("exec-{}", uuid::Uuid::new_v4().simple());
        let out = self.scratch.join(format!("{exec_id}.out"));
        let out_uri = format!("file://{}", out.display());
        self.tasks()
            .exec(self.req(api::ExecProcessRequest {
                container_id: id.to_string(),
                stdin: String::new(),
                stdout: out_uri.clone(),
                stderr: out_uri,
                terminal: false,
                spec: Some(
                    prost_types::Any {
                        type_url: PROCESS_TYPE_URL.into(),
                        value: serde_json::to_vec(&process).map_err(|e| RuntimeError::Invalid {
                            what: "process spec".into(),
                            reason: e.to_string(),
                        })?,
                    },
                ),
                exec_id: exec_id.clone(),
            }))
            .await
            .map_err(grpc("tasks.Exec"))?;
        let mut tasks = self.tasks();
        let wait_req = self.req(api::WaitRequest { container_id: id.to_string(), exec_id: exec_id.clone() });
        let started = tasks
            .start(self.req(api::StartRequest { container_id: id.to_string(), exec_id: exec_id.clone() }))
            .await
            .map_err(grpc("tasks.Start(exec)"));
        let result = match started {
            Err(e) => Err(e),
            Ok(_) => match tokio::time::timeout(timeout, tasks.wait(wait_req)).await {
                Ok(Ok(r)) => Ok(r.into_inner().exit_status as i32),
                Ok(Err(s)) => Err(grpc("tasks.Wait(exec)")(s)),
                Err(_) => {
                    let _ = tasks
                        .kill(self.req(api::KillRequest {
                            container_id: id.to_string(),
                            exec_id: exec_id.clone(),
                            signal: libc::SIGKILL as u32,
                            all: false,
                        }))
                        .await;
                    Err(RuntimeError::Timeout { op: format!("exec {argv:?} in {id}"), after: timeout })
                }
            },
        };
        let _ =
            tasks.delete_process(self.req(api::DeleteProcessRequest { container_id: id.to_string(), exec_id })).await;
        let output = std::fs::read(&out).unwrap_or_default();
        let _ = std::fs::remove_file(&out);
        Ok(ExecResult { exit_code: result?, output })
    }

    async fn events(&self) -> Result<tokio::sync::mpsc::Receiver<RuntimeEvent>> {
        // containerd sends the response headers of Subscribe only with the first event, so the
        // subscription is made (and re-made after errors) in the background task.
        let channel = self.channel.clone();
        let filters = vec![
            format!("namespace=={},topic==\"/tasks/exit\"", self.namespace),
            format!("namespace=={},topic==\"/tasks/oom\"", self.namespace),
        ];
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            while !tx.is_closed() {
                let mut client = api::events_client::EventsClient::new(channel.clone());
                let sub = client.subscribe(Request::new(api::SubscribeRequest { filters: filters.clone() }));
                let mut stream = tokio::select! {
                    r = sub => match r {
                        Ok(s) => s.into_inner(),
                        Err(e) => {
                            warn!(error = %e, "containerd event subscription failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                loop {
                    let env = match stream.message().await {
                        Ok(Some(e)) => e,
                        Ok(None) => break,
                        Err(e) => {
                            warn!(error = %e, "containerd event stream broke; resubscribing");
                            break;
                        }
                    };
                    let Some(any) = env.event else { continue };
                    let ev = match env.topic.as_str() {
                        "/tasks/exit" => {
                            containerd_client::events::TaskExit::decode(any.value.as_slice()).ok().and_then(|e| {
                                // Exec exits carry id != container_id; only the init process matters here.
                                (e.id == e.container_id || e.id.is_empty()).then_some(RuntimeEvent::TaskExit {
                                    container_id: e.container_id,
                                    exit_code: e.exit_status as i32,
                                })
                            })
                        }
                        "/tasks/oom" => containerd_client::events::TaskOom::decode(any.value.as_slice())
                            .ok()
                            .map(|e| RuntimeEvent::TaskOom { container_id: e.container_id }),
                        _ => None,
                    };
                    if let Some(ev) = ev
                        && tx.send(ev).await.is_err()
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(rx)
    }
}

/// Percent-encodes a query component (RFC 3986 unreserved characters pass through).
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], sha256_digest(b"sha256:a sha256:b"));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn url_escape_keeps_paths_and_escapes_the_rest() {
        assert_eq!(url_escape("/var/log/pods/a_b/c/0.log"), "/var/log/pods/a_b/c/0.log");
        assert_eq!(url_escape("a b&c=d"), "a%20b%26c%3Dd");
    }
}
