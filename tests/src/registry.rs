//! A test fixture, not a product: a small OCI distribution registry (the pull half of the API)
//! over real HTTP, serving images built from the project's OCI archives (`cargo xtask images`).
//!
//! Why not Debian's `docker-registry`: tests need to count the requests a pull makes (two pods of
//! one image → one set of blob downloads), to corrupt one blob on purpose, and to run the server
//! inside a node's network namespace; an in-process fixture does all three without root-owned
//! config files or a push step. What it serves is what a real registry serves for a pull:
//! `GET /v2/`, manifests by tag or digest (with `Docker-Content-Digest`), blobs by digest, and —
//! when `auth` is set — the bearer-token flow of Docker's token spec: a 401 with
//! `WWW-Authenticate: Bearer realm=…` and a token endpoint that checks Basic credentials.
//!
//! Each image gets one extra layer with a file unique to it, so its layers are never already in
//! the node's content store (the node imports the plain archives at start) and a pod can prove
//! its rootfs came from the registry.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

const TOKEN: &str = "fixture-token-1";

#[derive(Default)]
struct Inner {
    blobs: HashMap<String, (String, Vec<u8>)>,
    tags: HashMap<(String, String), String>,
    corrupt: HashSet<String>,
    /// Blobs whose download breaks off after half the bytes (the connection is reset).
    cut: HashSet<String>,
    log: Vec<String>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    auth: Option<(String, String)>,
    host: String,
    blob_delay: std::time::Duration,
}

/// Options of [`Registry::start`].
#[derive(Default, Clone)]
pub struct Options {
    /// Listen inside this network namespace (`/var/run/netns/<name>`), e.g. a test node's.
    pub netns: Option<std::path::PathBuf>,
    /// Require a bearer token obtained with these Basic credentials.
    pub auth: Option<(String, String)>,
    /// Wait this long before answering each blob download (makes concurrent pulls overlap).
    pub blob_delay: std::time::Duration,
}

/// A pushed image: what the fixture serves under `repo:tag`.
#[derive(Debug, Clone)]
pub struct Image {
    pub reference: String,
    pub manifest: String,
    pub config: String,
    /// Layer digests, base first; the last one is the fixture's own layer.
    pub layers: Vec<String>,
}

/// The registry; stops when dropped.
pub struct Registry {
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

impl Registry {
    pub fn start(opts: Options) -> anyhow::Result<Registry> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (inner2, auth, blob_delay) = (inner.clone(), opts.auth.clone(), opts.blob_delay);
        let thread = std::thread::spawn(move || {
            let bound = (|| -> anyhow::Result<std::net::TcpListener> {
                if let Some(ns) = &opts.netns {
                    // Only this thread enters the namespace; the socket stays in it.
                    let f = std::fs::File::open(ns)?;
                    // SAFETY: setns on a valid fd affects only the calling thread.
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        anyhow::bail!("setns {}: {}", ns.display(), std::io::Error::last_os_error());
                    }
                }
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                l.set_nonblocking(true)?;
                Ok(l)
            })();
            let listener = match bound {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let host = match listener.local_addr() {
                Ok(a) => a.to_string(),
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            };
            let shared = Shared { inner: inner2, auth, host: host.clone(), blob_delay };
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                let app = Router::new()
                    .route("/v2/", get(v2))
                    .route("/v2/{*rest}", get(v2_path))
                    .route("/token", get(token))
                    .with_state(shared);
                let _ = tx.send(Ok(host));
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        let host = rx.recv().map_err(|_| anyhow::anyhow!("registry thread died"))??;
        Ok(Registry {
            shared: Shared { inner, auth: opts.auth, host, blob_delay: opts.blob_delay },
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:<port>` (inside the namespace it listens in).
    pub fn host(&self) -> &str {
        &self.shared.host
    }

    /// Serves the image of the OCI archive `archive` plus one extra layer holding `/fixture.txt`
    /// = `marker` as `repo:tag`; with `as_index`, the tag names an image index listing an
    /// arm64 entry (never served) before the amd64 one.
    pub fn push_archive(
        &self,
        archive: &Path,
        repo: &str,
        tag: &str,
        marker: &str,
        as_index: bool,
    ) -> anyhow::Result<Image> {
        let files = read_archive(archive)?;
        let index: serde_json::Value =
            serde_json::from_slice(files.get("index.json").ok_or_else(|| anyhow::anyhow!("no index.json"))?)?;
        let mdigest = index["manifests"][0]["digest"].as_str().ok_or_else(|| anyhow::anyhow!("no manifest"))?;
        let blob = |d: &str| -> anyhow::Result<Vec<u8>> {
            files
                .get(&format!("blobs/{}", d.replacen(':', "/", 1)))
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("missing blob {d}"))
        };
        let mut manifest: serde_json::Value = serde_json::from_slice(&blob(mdigest)?)?;
        let mut config: serde_json::Value =
            serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap_or(""))?)?;
        let mut inner = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut layers = Vec::new();
        for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
            let d = l["digest"].as_str().unwrap_or("").to_string();
            inner.blobs.insert(d.clone(), (l["mediaType"].as_str().unwrap_or("").to_string(), blob(&d)?));
            layers.push(d);
        }
        // The fixture's own layer.
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(marker.len() as u64 + 1);
        tar.append_data(&mut h, "fixture.txt", format!("{marker}\n").as_bytes())?;
        let tar = tar.into_inner()?;
        let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar)?;
        let gz = gz.finish()?;
        let ldigest = sha256(&gz);
        let ltype = "application/vnd.oci.image.layer.v1.tar+gzip";
        manifest["layers"].as_array_mut().ok_or_else(|| anyhow::anyhow!("layers"))?.push(serde_json::json!({
            "mediaType": ltype, "digest": ldigest, "size": gz.len()
        }));
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .ok_or_else(|| anyhow::anyhow!("diff_ids"))?
            .push(sha256(&tar).into());
        inner.blobs.insert(ldigest.clone(), (ltype.into(), gz));
        layers.push(ldigest);
        let cbytes = serde_json::to_vec(&config)?;
        let cdigest = sha256(&cbytes);
        manifest["config"]["digest"] = cdigest.clone().into();
        manifest["config"]["size"] = cbytes.len().into();
        inner.blobs.insert(cdigest.clone(), ("application/vnd.oci.image.config.v1+json".into(), cbytes));
        let mtype = "application/vnd.oci.image.manifest.v1+json";
        let mbytes = serde_json::to_vec(&manifest)?;
        let mdigest = sha256(&mbytes);
        let msize = mbytes.len();
        inner.blobs.insert(mdigest.clone(), (mtype.into(), mbytes));
        let top = if as_index {
            let idx = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {"mediaType": mtype, "size": 7, "platform": {"architecture": "arm64", "os": "linux"},
                     "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000"},
                    {"mediaType": mtype, "digest": mdigest, "size": msize, "platform": {"architecture": "amd64", "os": "linux"}}
                ]
            });
            let ibytes = serde_json::to_vec(&idx)?;
            let idigest = sha256(&ibytes);
            inner.blobs.insert(idigest.clone(), ("application/vnd.oci.image.index.v1+json".into(), ibytes));
            idigest
        } else {
            mdigest.clone()
        };
        inner.tags.insert((repo.to_string(), tag.to_string()), top);
        Ok(Image {
            reference: format!("{}/{repo}:{tag}", self.shared.host),
            manifest: mdigest,
            config: cdigest,
            layers,
        })
    }

    /// Serves a generated image made of `files` (one layer each: a tar holding that one file,
    /// gzipped) as `repo:tag`. For benchmarks: no base image, nothing runnable.
    pub fn push_layers(&self, repo: &str, tag: &str, files: &[(String, Vec<u8>)]) -> anyhow::Result<Image> {
        let ltype = "application/vnd.oci.image.layer.v1.tar+gzip";
        let mut inner = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (mut layers, mut descs, mut diff_ids) = (Vec::new(), Vec::new(), Vec::new());
        for (name, data) in files {
            let mut tar = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, name, data.as_slice())?;
            let tar = tar.into_inner()?;
            let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar)?;
            let gz = gz.finish()?;
            let d = sha256(&gz);
            diff_ids.push(sha256(&tar));
            descs.push(serde_json::json!({"mediaType": ltype, "digest": d, "size": gz.len()}));
            inner.blobs.insert(d.clone(), (ltype.into(), gz));
            layers.push(d);
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        });
        let cbytes = serde_json::to_vec(&config)?;
        let cdigest = sha256(&cbytes);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": cbytes.len()},
            "layers": descs,
        });
        inner.blobs.insert(cdigest.clone(), ("application/vnd.oci.image.config.v1+json".into(), cbytes));
        let mbytes = serde_json::to_vec(&manifest)?;
        let mdigest = sha256(&mbytes);
        inner.blobs.insert(mdigest.clone(), ("application/vnd.oci.image.manifest.v1+json".into(), mbytes));
        inner.tags.insert((repo.to_string(), tag.to_string()), mdigest.clone());
        Ok(Image {
            reference: format!("{}/{repo}:{tag}", self.shared.host),
            manifest: mdigest,
            config: cdigest,
            layers,
        })
    }

    /// Serves `digest` with one byte changed from now on.
    pub fn corrupt(&self, digest: &str) {
        self.shared.inner.lock().unwrap_or_else(|p| p.into_inner()).corrupt.insert(digest.to_string());
    }

    /// Breaks off every download of `digest` halfway (`on = false`: serve it whole again), as
    /// a registry that goes away mid-pull.
    pub fn cut(&self, digest: &str, on: bool) {
        let mut inner = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            inner.cut.insert(digest.to_string());
        } else {
            inner.cut.remove(digest);
        }
    }

    /// Every request so far, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.inner.lock().unwrap_or_else(|p| p.into_inner()).log.clone()
    }

    /// How many times the blob `digest` was downloaded (GET).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.requests().iter().filter(|r| r.starts_with("GET ") && r.ends_with(&format!("/blobs/{digest}"))).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_archive(path: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut ar = tar::Archive::new(std::fs::File::open(path)?);
    let mut out = BTreeMap::new();
    for e in ar.entries()? {
        let mut e = e?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = e.path()?.to_string_lossy().trim_start_matches("./").to_string();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf)?;
        out.insert(name, buf);
    }
    Ok(out)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

/// `None` when the request may proceed; else the 401 challenge.
fn check_token(s: &Shared, headers: &HeaderMap) -> Option<Response> {
    s.auth.as_ref()?;
    let ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"));
    if ok {
        return None;
    }
    let mut r = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required");
    let challenge = format!(r#"Bearer realm="http://{}/token",service="keelson-fixture""#, s.host);
    if let Ok(v) = challenge.parse() {
        r.headers_mut().insert("www-authenticate", v);
    }
    Some(r)
}

fn log(s: &Shared, method: &Method, uri: &Uri) {
    s.inner.lock().unwrap_or_else(|p| p.into_inner()).log.push(format!("{method} {}", uri.path()));
}

async fn v2(State(s): State<Shared>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    log(&s, &method, &uri);
    check_token(&s, &headers).unwrap_or_else(|| Response::new(Body::from("{}")))
}

async fn token(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(_q): Query<HashMap<String, String>>,
) -> Response {
    log(&s, &method, &uri);
    let Some((user, pass)) = &s.auth else { return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no auth") };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    match given {
        Some(g) if g == format!("{user}:{pass}") => {
            let body = serde_json::json!({"token": TOKEN, "access_token": TOKEN, "expires_in": 300});
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap_or_default()
        }
        Some(_) => error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "keelson fixture: invalid username or password"),
        None => {
            error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "keelson fixture: credentials required for this repository")
        }
    }
}

async fn v2_path(
    State(s): State<Shared>,
    UrlPath(rest): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    log(&s, &method, &uri);
    if let Some(r) = check_token(&s, &headers) {
        return r;
    }
    if rest.contains("/blobs/") && method == Method::GET && !s.blob_delay.is_zero() {
        tokio::time::sleep(s.blob_delay).await;
    }
    let inner = s.inner.lock().unwrap_or_else(|p| p.into_inner());
    let (digest, is_manifest) = if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        if reference.starts_with("sha256:") {
            (reference.to_string(), true)
        } else {
            match inner.tags.get(&(repo.to_string(), reference.to_string())) {
                Some(d) => (d.clone(), true),
                None => return error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "manifest unknown"),
            }
        }
    } else if let Some((_repo, d)) = rest.rsplit_once("/blobs/") {
        (d.to_string(), false)
    } else {
        return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "unknown path");
    };
    let Some((media_type, data)) = inner.blobs.get(&digest) else {
        let code = if is_manifest { "MANIFEST_UNKNOWN" } else { "BLOB_UNKNOWN" };
        return error(StatusCode::NOT_FOUND, code, "unknown digest");
    };
    let mut data = data.clone();
    if inner.corrupt.contains(&digest)
        && let Some(b) = data.last_mut()
    {
        *b ^= 0xff;
    }
    let ct = if is_manifest { media_type.as_str() } else { "application/octet-stream" };
    let len = data.len();
    let body = if inner.cut.contains(&digest) {
        let half = data[..len / 2].to_vec();
        let parts: Vec<Result<Vec<u8>, std::io::Error>> =
            vec![Ok(half), Err(std::io::Error::other("fixture: connection cut mid-blob"))];
        // Headers and the first half go out; the error (a reset) comes a moment later, mid-body.
        Body::from_stream(futures::StreamExt::then(futures::stream::iter(parts), |p| async move {
            if p.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            p
        }))
    } else {
        Body::from(data)
    };
    Response::builder()
        .header("content-type", ct)
        .header("content-length", len)
        .header("docker-content-digest", &digest)
        .body(body)
        .unwrap_or_default()
}
