//! The `httpGet` probe, behaving like kubelet's HTTP prober:
//!
//! - `GET` over HTTP/1.1 on a fresh connection (`Connection: close`), `User-Agent:
//!   kube-probe/1.33` and `Accept: */*` unless the probe sets them (an empty `Accept` removes
//!   it), a `Host` header in `httpHeaders` overrides the request's Host;
//! - HTTPS without certificate verification (kubelet uses `InsecureSkipVerify`: probes check
//!   liveness, not identity); the handshake signature is still checked;
//! - 200–399 is success, anything else (or a connection error) is failure;
//! - redirects (301/302/303/307/308) are followed only to the same host name, at most 10 requests
//!   in all; a redirect to another host is not followed and counts as success, like kubelet's
//!   "probe terminated redirects" warning;
//! - the whole exchange, redirects included, must finish within the probe's timeout, and at most
//!   10 KiB of the body is read.

use super::action::{HttpGet, MAX_OUTPUT, Scheme, clip_output, join_host_port};
use super::state::Outcome;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The `User-Agent` kubelet 1.33 sends.
pub const USER_AGENT: &str = "kube-probe/1.33";
/// Go's http client stops after this many requests in one redirect chain.
const MAX_REQUESTS: usize = 10;

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    scheme: Scheme,
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

impl Target {
    fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}{}", join_host_port(&self.host, self.port), self.path)
    }
}

/// Runs the probe once within `timeout`.
pub async fn probe(get: &HttpGet, timeout: Duration) -> Outcome {
    let first = Target { scheme: get.scheme, host: get.host.clone(), port: get.port, path: get.path.clone() };
    match tokio::time::timeout(timeout, follow(get, first.clone())).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failure(format!("Get {:?}: timed out after {timeout:?}", first.url())),
    }
}

/// Sends the request and follows same-host redirects.
async fn follow(get: &HttpGet, first: Target) -> Outcome {
    let host_override = get.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("host")).map(|(_, v)| v.clone());
    let mut target = first.clone();
    // Like Go's client: a custom Host survives only redirects to a relative location.
    let mut host_header = host_override;
    for request in 1..=MAX_REQUESTS {
        let (status, location, body) = match send(get, &target, host_header.as_deref()).await {
            Ok(r) => r,
            Err(e) => return Outcome::Failure(format!("Get {:?}: {e}", target.url())),
        };
        let code = status.as_u16();
        if let (true, Some(location)) = (is_followed_redirect(status), location) {
            if request == MAX_REQUESTS {
                return Outcome::Failure(format!("Get {:?}: stopped after {MAX_REQUESTS} redirects", target.url()));
            }
            let (next, absolute) = match resolve_location(&target, &location) {
                Ok(n) => n,
                Err(e) => return Outcome::Failure(format!("Get {:?}: bad redirect {location:?}: {e}", target.url())),
            };
            if !next.host.eq_ignore_ascii_case(&first.host) {
                // Not followed: kubelet reports a warning, which counts as success.
                return Outcome::Success;
            }
            if absolute {
                host_header = None;
            }
            target = next;
            continue;
        }
        return if (200..400).contains(&code) {
            Outcome::Success
        } else {
            let body = clip_output(&body);
            if body.is_empty() {
                Outcome::Failure(format!("HTTP probe failed with statuscode: {code}"))
            } else {
                Outcome::Failure(format!("HTTP probe failed with statuscode: {code}: {body}"))
            }
        };
    }
    Outcome::Failure(format!("Get {:?}: stopped after {MAX_REQUESTS} redirects", target.url()))
}

fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Resolves a `Location` against the current target; the flag says whether it was absolute
/// (had its own host).
fn resolve_location(current: &Target, location: &str) -> Result<(Target, bool), String> {
    let location = location.split('#').next().unwrap_or("");
    let lower = location.to_ascii_lowercase();
    let absolute = if lower.starts_with("http://") || lower.starts_with("https://") {
        Some(location.to_string())
    } else if location.starts_with("//") {
        let scheme = match current.scheme {
            Scheme::Http => "http:",
            Scheme::Https => "https:",
        };
        Some(format!("{scheme}{location}"))
    } else if lower.split_once(':').is_some_and(|(s, _)| !s.is_empty() && !s.contains('/') && !s.contains('?')) {
        return Err("unsupported protocol scheme".into());
    } else {
        None
    };
    if let Some(url) = absolute {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("https") => Scheme::Https,
            _ => Scheme::Http,
        };
        let host = uri.host().ok_or("no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        });
        let path = uri.path_and_query().map_or("/".to_string(), |p| p.as_str().to_string());
        let path = if path.starts_with('/') { path } else { format!("/{path}") };
        return Ok((Target { scheme, host, port, path }, true));
    }
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        let current_path = current.path.split('?').next().unwrap_or("/");
        let dir = current_path.rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{location}")
    };
    hyper::http::uri::PathAndQuery::try_from(path.as_str()).map_err(|e| format!("{e}"))?;
    Ok((Target { path, ..current.clone() }, false))
}

/// One request on a fresh connection: status, `Location`, and up to [`MAX_OUTPUT`] body bytes.
async fn send(
    get: &HttpGet,
    target: &Target,
    host_header: Option<&str>,
) -> Result<(StatusCode, Option<String>, Vec<u8>), String> {
    let mut req = hyper::Request::builder().method(hyper::Method::GET).uri(target.path.as_str());
    let default_host = join_host_port(&target.host, target.port);
    req = req.header(hyper::header::HOST, host_header.unwrap_or(&default_host));
    let has = |name: &str| get.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("user-agent") {
        req = req.header(hyper::header::USER_AGENT, USER_AGENT);
    }
    if !has("accept") {
        req = req.header(hyper::header::ACCEPT, "*/*");
    }
    req = req.header(hyper::header::CONNECTION, "close");
    for (k, v) in &get.headers {
        if k.eq_ignore_ascii_case("host") || (k.eq_ignore_ascii_case("accept") && v.is_empty()) {
            continue;
        }
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| format!("building request: {e}"))?;

    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("dial tcp {default_host}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match target.scheme {
        Scheme::Http => exchange(TokioIo::new(tcp), req).await,
        Scheme::Https => {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| format!("invalid TLS server name {:?}: {e}", target.host))?;
            let tls = tokio_rustls::TlsConnector::from(tls_config()?)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {default_host}: {e}"))?;
            exchange(TokioIo::new(tls), req).await
        }
    }
}

/// Aborts the spawned connection driver when the exchange ends or is cancelled.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exchange<I>(io: I, req: hyper::Request<Empty<Bytes>>) -> Result<(StatusCode, Option<String>, Vec<u8>), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("{e}"))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = sender.send_request(req).await.map_err(|e| format!("{e}"))?;
    let status = resp.status();
    let location = resp.headers().get(hyper::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while out.len() < MAX_OUTPUT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    out.extend_from_slice(data);
                }
            }
            Some(Err(e)) => return Err(format!("reading body: {e}")),
            None => break,
        }
    }
    out.truncate(MAX_OUTPUT);
    Ok((status, location, out))
}

/// TLS client settings shared by all probes: no certificate verification (see module docs).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(NoCertVerification(Arc::clone(&provider)));
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("building the TLS client configuration: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
}

/// Accepts any server certificate, but still checks the handshake signatures with it.
#[derive(Debug)]
struct NoCertVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoCertVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// A tiny HTTP/1.1 server on loopback: records each request head and answers with whatever
    /// `route(path, port)` returns (a full response). Aborted on drop.
    struct TestServer {
        addr: SocketAddr,
        requests: Arc<Mutex<Vec<String>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TestServer {
        fn requests(&self) -> Vec<String> {
            self.requests.lock().expect("lock").clone()
        }
    }

    type Route = fn(&str, u16) -> Option<String>;

    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, port: u16, route: Route, log: &Mutex<Vec<String>>) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let target = head.split_whitespace().nth(1).unwrap_or("/");
        let path = target.split('?').next().unwrap_or("/").to_string();
        log.lock().expect("lock").push(head);
        // `None` = never answer (for timeouts).
        match route(&path, port) {
            Some(resp) => {
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            }
            None => std::future::pending::<()>().await,
        }
    }

    async fn serve_on(ip: &str, route: Route, tls: Option<tokio_rustls::TlsAcceptor>) -> TestServer {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let log = Arc::clone(&log);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                handle(s, addr.port(), route, &log).await;
                            }
                        }
                        None => handle(stream, addr.port(), route, &log).await,
                    }
                });
            }
        });
        TestServer { addr, requests, task }
    }

    async fn serve(route: Route) -> TestServer {
        serve_on("127.0.0.1", route, None).await
    }

    fn response(status: &str, extra: &str, body: &str) -> Option<String> {
        Some(format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}", body.len()))
    }

    fn get(addr: SocketAddr, path: &str) -> HttpGet {
        HttpGet {
            scheme: Scheme::Http,
            host: addr.ip().to_string(),
            port: addr.port(),
            path: path.into(),
            headers: vec![],
        }
    }

    const T: Duration = Duration::from_secs(2);

    fn by_path(path: &str, _port: u16) -> Option<String> {
        match path {
            "/ok" => response("200 OK", "", "fine"),
            "/nocontent" => response("204 No Content", "", ""),
            "/399" => response("399 Whatever", "", ""),
            "/notfound" => response("404 Not Found", "", ""),
            "/error" => response("500 Internal Server Error", "", "database down"),
            "/moved-nowhere" => response("302 Found", "", ""),
            "/relative" => response("301 Moved Permanently", "Location: ok\r\n", ""),
            "/absolute-path" => response("307 Temporary Redirect", "Location: /error\r\n", ""),
            "/loop" => response("302 Found", "Location: /loop\r\n", ""),
            "/elsewhere" => response("302 Found", "Location: http://127.0.0.2:9/ok\r\n", ""),
            "/hang" => None,
            _ => response("418 I'm a teapot", "", ""),
        }
    }

    #[tokio::test]
    async fn status_codes_200_to_399_succeed() {
        let s = serve(by_path).await;
        assert_eq!(probe(&get(s.addr, "/ok"), T).await, Outcome::Success);
        assert_eq!(probe(&get(s.addr, "/nocontent"), T).await, Outcome::Success);
        assert_eq!(probe(&get(s.addr, "/399"), T).await, Outcome::Success);
        // A redirect without a Location is a final 3xx answer: success.
        assert_eq!(probe(&get(s.addr, "/moved-nowhere"), T).await, Outcome::Success);
    }

    #[tokio::test]
    async fn other_status_codes_fail_with_the_code_and_body() {
        let s = serve(by_path).await;
        assert_eq!(
            probe(&get(s.addr, "/notfound"), T).await,
            Outcome::Failure("HTTP probe failed with statuscode: 404".into())
        );
        assert_eq!(
            probe(&get(s.addr, "/error"), T).await,
            Outcome::Failure("HTTP probe failed with statuscode: 500: database down".into())
        );
    }

    #[tokio::test]
    async fn sends_kubelet_headers_and_honours_overrides() {
        let s = serve(by_path).await;
        assert_eq!(probe(&get(s.addr, "/ok?x=1"), T).await, Outcome::Success);
        let head = s.requests()[0].to_ascii_lowercase();
        assert!(head.starts_with("get /ok?x=1 http/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("host: 127.0.0.1:{}\r\n", s.addr.port())), "{head}");
        assert!(head.contains("user-agent: kube-probe/1.33\r\n"), "{head}");
        assert!(head.contains("accept: */*\r\n"), "{head}");
        assert!(head.contains("connection: close\r\n"), "{head}");

        let mut g = get(s.addr, "/ok");
        g.headers = vec![
            ("Host".into(), "svc.example".into()),
            ("User-Agent".into(), "custom/1".into()),
            ("Accept".into(), "".into()),
            ("X-Probe".into(), "a".into()),
            ("X-Probe".into(), "b".into()),
        ];
        assert_eq!(probe(&g, T).await, Outcome::Success);
        let head = s.requests()[1].to_ascii_lowercase();
        assert!(head.contains("host: svc.example\r\n"), "{head}");
        assert!(!head.contains("127.0.0.1"), "only the override Host is sent: {head}");
        assert!(head.contains("user-agent: custom/1\r\n"), "{head}");
        assert!(!head.contains("kube-probe"), "{head}");
        assert!(!head.contains("accept:"), "an empty Accept removes the header: {head}");
        assert!(head.contains("x-probe: a\r\n") && head.contains("x-probe: b\r\n"), "{head}");
    }

    #[tokio::test]
    async fn follows_same_host_redirects() {
        let s = serve(by_path).await;
        assert_eq!(probe(&get(s.addr, "/relative"), T).await, Outcome::Success);
        let paths: Vec<String> =
            s.requests().iter().filter_map(|h| h.split_whitespace().nth(1).map(str::to_string)).collect();
        assert_eq!(paths, ["/relative", "/ok"]);
        // Followed to a failing page: the final answer decides.
        assert_eq!(
            probe(&get(s.addr, "/absolute-path"), T).await,
            Outcome::Failure("HTTP probe failed with statuscode: 500: database down".into())
        );
    }

    #[tokio::test]
    async fn follows_redirects_to_the_same_host_on_another_port() {
        fn to_b(path: &str, _: u16) -> Option<String> {
            // The target port is smuggled in the path: /go/<port>.
            let port = path.strip_prefix("/go/")?;
            response("302 Found", &format!("Location: http://127.0.0.1:{port}/notfound\r\n"), "")
        }
        let b = serve(by_path).await;
        let a = serve(to_b).await;
        let outcome = probe(&get(a.addr, &format!("/go/{}", b.addr.port())), T).await;
        assert_eq!(outcome, Outcome::Failure("HTTP probe failed with statuscode: 404".into()));
        assert_eq!(b.requests().len(), 1, "the redirect was followed to the other port");
    }

    #[tokio::test]
    async fn redirect_to_another_host_is_not_followed_and_succeeds() {
        // The other host (127.0.0.2 — loopback, but a different host name) would fail the probe.
        let other = serve_on("127.0.0.2", by_path, None).await;
        fn redirect_to_other(path: &str, _: u16) -> Option<String> {
            let port = path.strip_prefix("/go/")?;
            response("302 Found", &format!("Location: http://127.0.0.2:{port}/notfound\r\n"), "")
        }
        let s = serve(redirect_to_other).await;
        assert_eq!(probe(&get(s.addr, &format!("/go/{}", other.addr.port())), T).await, Outcome::Success);
        assert!(other.requests().is_empty(), "the other host must not be contacted");
        // Same with a Location whose host does not even listen.
        let s2 = serve(by_path).await;
        assert_eq!(probe(&get(s2.addr, "/elsewhere"), T).await, Outcome::Success);
    }

    #[tokio::test]
    async fn ipv6_pod_addresses_are_bracketed_in_host() {
        let s = serve_on("::1", by_path, None).await;
        assert_eq!(probe(&get(s.addr, "/ok"), T).await, Outcome::Success);
        let head = s.requests()[0].to_ascii_lowercase();
        assert!(head.contains(&format!("host: [::1]:{}\r\n", s.addr.port())), "{head}");
    }

    #[tokio::test]
    async fn redirect_loops_stop_after_ten_requests() {
        let s = serve(by_path).await;
        let outcome = probe(&get(s.addr, "/loop"), T).await;
        assert!(matches!(&outcome, Outcome::Failure(m) if m.contains("stopped after 10 redirects")), "{outcome:?}");
        assert_eq!(s.requests().len(), 10);
    }

    #[tokio::test]
    async fn a_custom_host_survives_only_relative_redirects() {
        let s = serve(by_path).await;
        let mut g = get(s.addr, "/relative");
        g.headers = vec![("Host".into(), "svc.example".into())];
        assert_eq!(probe(&g, T).await, Outcome::Success);
        let heads: Vec<String> = s.requests().iter().map(|h| h.to_ascii_lowercase()).collect();
        assert!(heads.iter().all(|h| h.contains("host: svc.example\r\n")), "{heads:?}");
    }

    #[tokio::test]
    async fn refused_and_timed_out_requests_fail() {
        let s = serve(by_path).await;
        let outcome = probe(&get(s.addr, "/hang"), Duration::from_millis(300)).await;
        assert!(matches!(&outcome, Outcome::Failure(m) if m.contains("timed out")), "{outcome:?}");
        let addr = s.addr;
        drop(s);
        // Give the aborted listener task a moment to close its socket.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let outcome = probe(&get(addr, "/ok"), T).await;
        assert!(matches!(&outcome, Outcome::Failure(m) if m.contains("dial tcp")), "{outcome:?}");
    }

    #[test]
    fn resolves_locations() {
        let cur = Target { scheme: Scheme::Http, host: "10.0.0.1".into(), port: 8080, path: "/a/b?q=1".into() };
        let r = |l: &str| resolve_location(&cur, l);
        assert_eq!(r("/x"), Ok((Target { path: "/x".into(), ..cur.clone() }, false)));
        assert_eq!(r("c?d=1#frag"), Ok((Target { path: "/a/c?d=1".into(), ..cur.clone() }, false)));
        assert_eq!(
            r("https://10.0.0.1/secure"),
            Ok((Target { scheme: Scheme::Https, host: "10.0.0.1".into(), port: 443, path: "/secure".into() }, true))
        );
        assert_eq!(
            r("//other:81"),
            Ok((Target { scheme: Scheme::Http, host: "other".into(), port: 81, path: "/".into() }, true))
        );
        assert_eq!(
            r("http://[fd00::1]:90/v6"),
            Ok((Target { scheme: Scheme::Http, host: "fd00::1".into(), port: 90, path: "/v6".into() }, true))
        );
        assert!(r("ftp://10.0.0.1/file").is_err());
    }

    #[tokio::test]
    async fn https_without_certificate_verification() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("self-signed cert");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
            ck.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let s = serve_on("127.0.0.1", by_path, Some(acceptor)).await;
        let mut g = get(s.addr, "/ok");
        g.scheme = Scheme::Https;
        // The certificate is self-signed and names "localhost", not 127.0.0.1: still probed.
        assert_eq!(probe(&g, T).await, Outcome::Success);
        g.path = "/notfound".into();
        assert_eq!(probe(&g, T).await, Outcome::Failure("HTTP probe failed with statuscode: 404".into()));
        assert_eq!(s.requests().len(), 2);
        // Plain HTTP against the TLS port fails rather than hanging or succeeding.
        g.scheme = Scheme::Http;
        assert!(matches!(probe(&g, T).await, Outcome::Failure(_)));
    }
}
