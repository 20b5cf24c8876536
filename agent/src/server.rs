//! The agent's local read-only endpoint: HTTP on a Unix socket in the run dir.
//!
//! A Unix socket (rather than kubelet's TCP read-only port) is reachable by root on the node from
//! any network namespace, exposes nothing on the network, and is what `keelson-agent pods` reads.
//! Routes: `/pods` (a `v1` PodList with statuses), `/events`, `/manifests` (rejected static pod
//! manifests), `/healthz`.

use axum::{Json, Router, routing::get};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the endpoint serves; implemented by the daemon's composition root.
pub trait StatusSource: Send + Sync + 'static {
    fn pods(&self) -> Vec<Pod>;
    fn events(&self) -> serde_json::Value;
    fn manifest_errors(&self) -> serde_json::Value;
}

pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("agent.sock")
}

/// Serves until the task is dropped.
pub async fn serve(run_dir: &Path, src: Arc<dyn StatusSource>) -> std::io::Result<()> {
    let path = socket_path(run_dir);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let s1 = src.clone();
    let s2 = src.clone();
    let s3 = src;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/pods",
            get(move || {
                let s = s1.clone();
                async move {
                    let mut items = s.pods();
                    items.sort_by(|a, b| {
                        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
                    });
                    Json(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}))
                }
            }),
        )
        .route(
            "/events",
            get(move || {
                let s = s2.clone();
                async move { Json(s.events()) }
            }),
        )
        .route(
            "/manifests",
            get(move || {
                let s = s3.clone();
                async move { Json(s.manifest_errors()) }
            }),
        );
    axum::serve(listener, app).await
}

/// Minimal client: `GET path` over the socket, returning the body.
pub fn get_blocking(run_dir: &Path, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket_path(run_dir))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: keelson-agent\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200") => {
            Ok(body.to_string())
        }
        Some((head, _)) => Err(std::io::Error::other(format!("agent answered: {}", head.lines().next().unwrap_or("")))),
        None => Err(std::io::Error::other("malformed response from agent")),
    }
}
