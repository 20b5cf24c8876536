//! containerd as the [`Store`] of a registry pull (`crate::images::pull`): content writes under a
//! lease (streamed for layers), the same unpack and GC labels as an archive import, and the image
//! record.

use super::{CHUNK, Containerd, SNAPSHOTTER, chain_ids, grpc};
use crate::images::pull::{Blob, Store, StoreError};
use crate::runtime::RuntimeError;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use containerd_client::services::v1 as api;
use containerd_client::types::Descriptor;
use futures::stream::{BoxStream, StreamExt};
use std::collections::HashMap;
use tonic::Code;
use tracing::warn;

fn desc(b: &Blob) -> Descriptor {
    Descriptor {
        media_type: b.media_type.clone(),
        digest: b.digest.clone(),
        size: b.size,
        annotations: Default::default(),
    }
}

#[async_trait]
impl Store for Containerd {
    async fn begin(&self) -> Result<String, StoreError> {
        Ok(self.create_lease().await?)
    }

    async fn end(&self, lease: &str) {
        self.delete_lease(lease).await;
    }

    async fn has_blob(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self.blob_exists(digest).await?)
    }

    async fn write_stream(
        &self,
        lease: &str,
        blob: &Blob,
        data: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<(), StoreError> {
        Ok(self.ingest(lease.to_string(), blob.clone(), data).await?)
    }

    async fn write(
        &self,
        lease: &str,
        blob: &Blob,
        data: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<(), StoreError> {
        Ok(self.write_blob(lease, &blob.digest, data, labels).await?)
    }

    async fn write_config(&self, lease: &str, blob: &Blob, data: &[u8], diff_ids: &[String]) -> Result<(), StoreError> {
        let mut labels = HashMap::new();
        if let Some(top) = chain_ids(diff_ids).last() {
            labels.insert(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top.clone());
        }
        Ok(self.write_blob(lease, &blob.digest, data, labels).await?)
    }

    async fn unpack(&self, lease: &str, layers: &[Blob], diff_ids: &[String]) -> Result<(), StoreError> {
        let layers: Vec<Descriptor> = layers.iter().map(desc).collect();
        Containerd::unpack(self, lease, &layers, diff_ids).await?;
        Ok(())
    }

    async fn set_image(&self, name: &str, target: &Blob) -> Result<(), StoreError> {
        Ok(self.put_image(name, desc(target)).await?)
    }
}

/// Feeds a download into `tx` as `content.Write` requests: re-chunked into CHUNK-sized writes,
/// ending with a Commit that carries the expected digest — or ending without one when the
/// download fails (containerd then commits nothing) with the download's error.
async fn pump(
    mut data: BoxStream<'static, std::io::Result<Bytes>>,
    tx: tokio::sync::mpsc::Sender<api::WriteContentRequest>,
    rf: String,
    total: i64,
    expected: String,
) -> Result<(), Option<std::io::Error>> {
    let mut buf = BytesMut::new();
    let mut offset = 0i64;
    // `None`: containerd stopped reading (its own error is the one to report).
    let closed = |_| None;
    while let Some(b) = data.next().await {
        buf.extend_from_slice(&b.map_err(Some)?);
        if buf.len() >= CHUNK {
            let chunk = buf.split().freeze();
            let n = chunk.len() as i64;
            tx.send(write_msg(&rf, total, offset, chunk.to_vec(), false, &expected)).await.map_err(closed)?;
            offset += n;
        }
    }
    let chunk = buf.split().freeze();
    tx.send(write_msg(&rf, total, offset, chunk.to_vec(), true, &expected)).await.map_err(closed)
}

fn write_msg(
    r#ref: &str,
    total: i64,
    offset: i64,
    data: Vec<u8>,
    last: bool,
    expected: &str,
) -> api::WriteContentRequest {
    api::WriteContentRequest {
        action: if last { api::WriteAction::Commit as i32 } else { api::WriteAction::Write as i32 },
        r#ref: r#ref.to_string(),
        total,
        expected: if last { expected.to_string() } else { String::new() },
        offset,
        data,
        labels: Default::default(),
    }
}

impl Containerd {
    /// Streams one blob into the content store under `lease`.
    async fn ingest(
        &self,
        lease: String,
        blob: Blob,
        data: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<(), RuntimeError> {
        // A ref per attempt: two pulls sharing a layer never collide on containerd's ref lock;
        // the second commit of one digest answers AlreadyExists, which is success.
        let r#ref = format!("keelson-pull-{}-{}", blob.digest, uuid::Uuid::new_v4().simple());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let feeder = tokio::spawn(pump(data, tx, r#ref.clone(), blob.size, blob.digest.clone()));
        let msgs = tokio_stream::wrappers::ReceiverStream::new(rx);
        let resp = self.content().write(self.req_lease(msgs, Some(&lease))).await;
        let result = match resp {
            Ok(r) => {
                let mut s = r.into_inner();
                loop {
                    match s.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break Ok(()),
                        Err(st) if st.code() == Code::AlreadyExists => break Ok(()),
                        Err(st) => break Err(grpc("content.Write")(st)),
                    }
                }
            }
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(grpc("content.Write")(s)),
        };
        if result.is_err() {
            feeder.abort();
        }
        let download = match feeder.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => e,
            Err(join) if join.is_cancelled() => None,
            Err(join) => Some(std::io::Error::other(join.to_string())),
        };
        if download.is_some() || result.is_err() {
            let _ = self.content().abort(self.req(api::AbortRequest { r#ref })).await;
        }
        if let Some(e) = download {
            return Err(RuntimeError::io(format!("download {}", blob.digest), e));
        }
        result?;
        // A stream that ended early without an error must not pass for the blob.
        if !self.blob_exists(&blob.digest).await? {
            return Err(RuntimeError::Invalid {
                what: format!("blob {}", blob.digest),
                reason: "the download ended before the blob was complete".into(),
            });
        }
        Ok(())
    }

    pub(super) async fn create_lease(&self) -> Result<String, RuntimeError> {
        let mut leases = api::leases_client::LeasesClient::new(self.channel.clone());
        let mut lbl = HashMap::new();
        lbl.insert(
            "containerd.io/gc.expire".to_string(),
            (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
        );
        let id = format!("keelson-{}", uuid::Uuid::new_v4().simple());
        let lease = leases
            .create(self.req(api::CreateRequest { id, labels: lbl }))
            .await
            .map_err(grpc("leases.Create"))?
            .into_inner()
            .lease
            .map(|l| l.id)
            .unwrap_or_default();
        Ok(lease)
    }

    pub(super) async fn delete_lease(&self, lease: &str) {
        let mut leases = api::leases_client::LeasesClient::new(self.channel.clone());
        if let Err(e) = leases.delete(self.req(api::DeleteRequest { id: lease.to_string(), sync: false })).await {
            warn!(lease, error = %e, "could not delete lease (it expires on its own)");
        }
    }

    /// Creates the image record, or points an existing one at `target`.
    pub(super) async fn put_image(&self, name: &str, target: Descriptor) -> Result<(), RuntimeError> {
        let image = api::Image {
            name: name.to_string(),
            labels: Default::default(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let created = self
            .images()
            .create(self.req(api::CreateImageRequest { image: Some(image.clone()), source_date_epoch: None }))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                self.images()
                    .update(self.req(api::UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    }))
                    .await
                    .map_err(grpc("images.Update"))?;
                Ok(())
            }
            Err(s) => Err(grpc("images.Create")(s)),
        }
    }
}
