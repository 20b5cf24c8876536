//! `keelson-api-bench`: measures keelson-apiserver (driven by `cargo xtask bench api`).
//!
//! For each backend (embedded SQLite, etcd) it starts a real `keelson-apiserver` (the binary next
//! to this one) on loopback and measures, over HTTPS/h2 with the admin token:
//! create and update throughput with 64 requests in flight, write latency (request sent → write
//! acknowledged, one in flight), and watch event latency (write **acknowledged** → event parsed by
//! each watcher, so the write's own latency is not counted twice) with 100 and 1,000 concurrent
//! watchers. An event may arrive before its acknowledgement: that counts as 0. For the embedded
//! store it also reports the server's RSS with 10,000 pods stored. etcd is the baseline; ratios
//! are embedded / etcd.
//!
//! Both sides are durable by default: the embedded store fsyncs every (group) commit, as etcd
//! fsyncs its WAL. `--unsafe-no-fsync` runs the embedded side without fsync (the table says so).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Target {
    _server: Proc,
    _etcd: Option<Proc>,
    _dir: tempfile::TempDir,
    pid: u32,
    port: u16,
    token: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Target {
    fn endpoint(&self) -> Endpoint {
        Endpoint { port: self.port, token: self.token.clone() }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_etcd(dir: &Path) -> anyhow::Result<(Proc, String)> {
    let (c, p) = (free_port()?, free_port()?);
    let ep = format!("http://127.0.0.1:{c}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &ep, "--advertise-client-urls", &ep])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{p}")])
        .args(["--initial-cluster", &format!("default=http://127.0.0.1:{p}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn etcd (Debian etcd-server)")?;
    let proc = Proc(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", c)).is_ok() {
            std::thread::sleep(Duration::from_millis(300));
            return Ok((proc, ep));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("etcd did not start")
}

fn start(server_bin: &Path, etcd: bool, no_fsync: bool) -> anyhow::Result<Target> {
    let dir = tempfile::tempdir()?;
    let (etcd_proc, mut extra) = if etcd {
        let (p, ep) = start_etcd(dir.path())?;
        (Some(p), vec!["--storage".to_string(), "etcd".into(), "--etcd-endpoints".into(), ep])
    } else {
        (None, Vec::new())
    };
    if no_fsync {
        extra.push("--unsafe-no-fsync".into());
    }
    let mut child = Command::new(server_bin)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--compact-interval", "3600"])
        .args(&extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn {}", server_bin.display()))?;
    let out = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
    let port: u16 = line
        .split("https://127.0.0.1:")
        .nth(1)
        .map(|r| r.chars().take_while(char::is_ascii_digit).collect::<String>())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("server did not start: {line:?}"))?;
    let token =
        std::fs::read_to_string(dir.path().join("tokens.csv"))?.split(',').next().unwrap_or_default().to_string();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.path().join("ca.crt"))? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Target { pid: child.id(), _server: Proc(child), _etcd: etcd_proc, _dir: dir, port, token, tls: Arc::new(tls) })
}

async fn connect(t: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", t.port)).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(t.tls.clone()).connect(ServerName::try_from("localhost")?, tcp).await?;
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(send)
}

fn now_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
}

/// Creates `n` configmaps then updates each once with `inflight` concurrent requests.
async fn throughput(t: &Target, n: usize, inflight: usize) -> anyhow::Result<(f64, f64)> {
    let conns: Vec<_> = futures::future::try_join_all((0..4).map(|_| connect(t))).await?;
    let mut rates = Vec::new();
    for phase in ["create", "update"] {
        let started = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in 0..inflight {
            let mut c = conns[w % conns.len()].clone();
            let next = next.clone();
            let tt = t.endpoint();
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let name = format!("tp-{i}");
                    let (code, body) = if phase == "create" {
                        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"i": i.to_string()}});
                        tt.call(&mut c, "POST", "/api/v1/namespaces/default/configmaps", Some(&cm), "application/json").await?
                    } else {
                        let p = json!({"data": {"i": format!("u{i}")}});
                        tt.call(&mut c, "PATCH", &format!("/api/v1/namespaces/default/configmaps/{name}"), Some(&p), "application/merge-patch+json").await?
                    };
                    if code >= 300 {
                        bail!("{phase} {name}: {code} {}", String::from_utf8_lossy(&body));
                    }
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        rates.push(n as f64 / started.elapsed().as_secs_f64());
    }
    Ok((rates[0], rates[1]))
}

/// Where and as whom requests go (cheap to clone into tasks).
#[derive(Clone)]
struct Endpoint {
    port: u16,
    token: String,
}

impl Endpoint {
    async fn call(
        &self,
        c: &mut SendRequest<Full<Bytes>>,
        method: &str,
        path: &str,
        body: Option<&Value>,
        ct: &str,
    ) -> anyhow::Result<(u16, Bytes)> {
        c.ready().await?;
        let req = http::Request::builder()
            .method(method)
            .uri(format!("https://127.0.0.1:{}{path}", self.port))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", ct)
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))?;
        let resp = c.send_request(req).await?;
        let code = resp.status().as_u16();
        Ok((code, resp.into_body().collect().await?.to_bytes()))
    }
}

/// Latency percentiles (p50, p99) of a sample in ms.
fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    (pct(0.50), pct(0.99))
}

/// Latencies measured with `watchers` concurrent watches while `writes` creates go in one at a time.
struct WatchRun {
    /// Write acknowledged → event parsed by a watcher (p50, p99 ms).
    watch: (f64, f64),
    /// Request sent → write acknowledged (p50, p99 ms).
    write: (f64, f64),
}

async fn watch_latency(t: &Target, watchers: usize, writes: usize) -> anyhow::Result<WatchRun> {
    let ns = format!("w{watchers}");
    let mut c = connect(t).await?;
    t.endpoint()
        .call(
            &mut c,
            "POST",
            "/api/v1/namespaces",
            Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
            "application/json",
        )
        .await?;
    // (write index, receive time in µs) per event seen by a watcher.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u128)>();
    let mut conns = Vec::new();
    for _ in 0..watchers.div_ceil(100) {
        conns.push(connect(t).await?);
    }
    let ready = Arc::new(tokio::sync::Barrier::new(watchers + 1));
    for w in 0..watchers {
        let mut c = conns[w / 100].clone();
        let (port, token) = (t.port, t.token.clone());
        let tx = tx.clone();
        let ready = ready.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            let run = async {
                c.ready().await?;
                let req = http::Request::get(format!(
                    "https://127.0.0.1:{port}/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion=0"
                ))
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))?;
                let resp = c.send_request(req).await?;
                ready.wait().await;
                let mut body = resp.into_body();
                let mut buf = Vec::new();
                while let Some(frame) = body.frame().await {
                    if let Ok(d) = frame?.into_data() {
                        buf.extend_from_slice(&d);
                    }
                    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let v: Value = serde_json::from_slice(&line)?;
                        let now = now_micros();
                        let index = v
                            .pointer("/object/metadata/name")
                            .and_then(Value::as_str)
                            .and_then(|n| n.strip_prefix('e'))
                            .and_then(|i| i.parse().ok());
                        if let (Some("ADDED"), Some(i)) = (v.get("type").and_then(Value::as_str), index) {
                            let _ = tx.send((i, now));
                        }
                    }
                }
                Ok::<_, anyhow::Error>(())
            };
            let _ = run.await;
        });
    }
    drop(tx);
    ready.wait().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // (sent, acknowledged) in µs per write.
    let mut times = Vec::with_capacity(writes);
    for i in 0..writes {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("e{i}")}});
        let sent = now_micros();
        let (code, _) = t
            .endpoint()
            .call(&mut c, "POST", &format!("/api/v1/namespaces/{ns}/configmaps"), Some(&cm), "application/json")
            .await?;
        let acked = now_micros();
        if code >= 300 {
            bail!("watch write failed: {code}");
        }
        times.push((sent, acked));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lat = Vec::with_capacity(watchers * writes);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lat.len() < watchers * writes && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some((i, seen))) => {
                let (_, acked) = times.get(i).with_context(|| format!("event for unknown write e{i}"))?;
                lat.push(seen.saturating_sub(*acked) as f64 / 1000.0);
            }
            _ => break,
        }
    }
    if lat.len() < watchers * writes {
        bail!("only {} of {} watch events arrived", lat.len(), watchers * writes);
    }
    let write = percentiles(times.iter().map(|(s, a)| a.saturating_sub(*s) as f64 / 1000.0).collect());
    Ok(WatchRun { watch: percentiles(lat), write })
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn rss_with_pods(t: &Target, pods: usize) -> anyhow::Result<(u64, u64)> {
    let before = rss_kib(t.pid);
    let mut c = connect(t).await?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let mut c2 = c.clone();
        let next = next.clone();
        let tr = t.endpoint();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= pods {
                    return Ok::<_, anyhow::Error>(());
                }
                let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("pod-{i}"), "labels": {"app": "bench"}},
                    "spec": {"nodeName": format!("node-{}", i % 50), "containers": [{"name": "app", "image": "registry.example/app:1.0", "ports": [{"containerPort": 8080}]}]}});
                let (code, body) = tr.call(&mut c2, "POST", "/api/v1/namespaces/default/pods", Some(&pod), "application/json").await?;
                if code >= 300 {
                    bail!("pod create: {code} {}", String::from_utf8_lossy(&body));
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    // One full list, as an informer would do.
    let (code, body) = t.endpoint().call(&mut c, "GET", "/api/v1/pods", None, "application/json").await?;
    if code != 200 {
        bail!("list pods: {code}");
    }
    drop(body);
    Ok((before, rss_kib(t.pid)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin: PathBuf = std::env::current_exe()?.parent().context("exe dir")?.join("keelson-apiserver");
    let quick = std::env::args().any(|a| a == "--quick");
    let no_fsync = std::env::args().any(|a| a == "--unsafe-no-fsync");
    let n = if quick { 1000 } else { 5000 };
    let durability = [
        if no_fsync {
            "UNSAFE: WAL synchronous=NORMAL, no fsync (loses acked writes on power loss)"
        } else {
            "durable: WAL synchronous=FULL, fsync per group commit"
        },
        "durable: WAL fsync per batch (etcd default)",
    ];
    let mut rows: Vec<(String, f64, f64, &str)> = Vec::new();
    let mut results = Vec::new();
    for etcd in [false, true] {
        let name = if etcd { "etcd 3.4" } else { "embedded (SQLite)" };
        eprintln!("== {name}");
        let t = start(&bin, etcd, !etcd && no_fsync)?;
        let (create, update) = throughput(&t, n, 64).await?;
        eprintln!("  create {create:.0}/s, update {update:.0}/s");
        let w100 = watch_latency(&t, 100, if quick { 50 } else { 200 }).await?;
        eprintln!(
            "  watch x100 p50 {:.2} ms p99 {:.2} ms; write p50 {:.2} ms",
            w100.watch.0, w100.watch.1, w100.write.0
        );
        let w1k = watch_latency(&t, 1000, if quick { 20 } else { 100 }).await?;
        eprintln!("  watch x1000 p50 {:.2} ms p99 {:.2} ms", w1k.watch.0, w1k.watch.1);
        let rss = if etcd { None } else { Some(rss_with_pods(&t, 10_000).await?) };
        results.push((create, update, w100, w1k, rss));
    }
    let (e, b) = (&results[0], &results[1]);
    rows.push(("creates/s (64 in flight)".into(), e.0, b.0, "higher is better"));
    rows.push(("updates/s (merge patch)".into(), e.1, b.1, "higher is better"));
    rows.push(("write p50 ms (1 in flight)".into(), e.2.write.0, b.2.write.0, "lower is better"));
    rows.push(("write p99 ms (1 in flight)".into(), e.2.write.1, b.2.write.1, "lower is better"));
    rows.push(("watch p50 ms, 100 watchers".into(), e.2.watch.0, b.2.watch.0, "ack → event, lower is better"));
    rows.push(("watch p99 ms, 100 watchers".into(), e.2.watch.1, b.2.watch.1, "ack → event, lower is better"));
    rows.push(("watch p50 ms, 1000 watchers".into(), e.3.watch.0, b.3.watch.0, "ack → event, lower is better"));
    rows.push(("watch p99 ms, 1000 watchers".into(), e.3.watch.1, b.3.watch.1, "ack → event, lower is better"));
    println!("\nkeelson-apiserver: embedded store vs etcd baseline ({n} objects per write phase)\n");
    println!("durability  embedded: {}", durability[0]);
    println!("durability  etcd:     {}\n", durability[1]);
    println!("{:<30} {:>12} {:>12} {:>8}", "metric", "embedded", "etcd", "ratio");
    for (m, a, bb, note) in rows {
        println!("{m:<30} {a:>12.2} {bb:>12.2} {:>8.2}  ({note})", a / bb);
    }
    if let Some((before, after)) = e.4 {
        println!(
            "\nRSS (embedded): {:.1} MiB with the bootstrap objects, {:.1} MiB with 10,000 pods stored (+ one full list) — ratio {:.2}",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after as f64 / before.max(1) as f64
        );
    }
    Ok(())
}
