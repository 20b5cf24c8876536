//! Probe handlers: what a probe checks, resolved from the container spec once (named ports, host
//! defaulting), and how each kind is run with the probe's timeout.

use super::state::{Outcome, ProbeConfigError};
use super::{grpc, http};
use crate::runtime::{ContainerRuntime, RuntimeError};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::net::IpAddr;
use std::time::Duration;

/// Most probe output kept in a failure message (kubelet caps probe output at 10 KiB as well).
pub(crate) const MAX_OUTPUT: usize = 10 * 1024;

/// `http` or `https` for an `httpGet` probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A resolved `httpGet` action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    pub scheme: Scheme,
    /// Host to connect to: `httpGet.host`, or the pod IP.
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
    /// `httpHeaders` in order (a `Host` header overrides the request's Host).
    pub headers: Vec<(String, String)>,
}

/// What a probe does, with every name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// Runs `command` in the container; exit 0 is success.
    Exec {
        command: Vec<String>,
    },
    HttpGet(HttpGet),
    /// Opens a TCP connection.
    TcpSocket {
        host: String,
        port: u16,
    },
    /// `grpc.health.v1.Health/Check`; `SERVING` is success.
    Grpc {
        host: String,
        port: u16,
        service: Option<String>,
    },
}

impl ProbeAction {
    /// Resolves the handler of `probe` (at `field`) for `container` in a pod with `pod_ip`.
    pub fn from_probe(
        probe: &Probe,
        container: &Container,
        pod_ip: IpAddr,
        field: &str,
    ) -> Result<Self, ProbeConfigError> {
        let found = usize::from(probe.exec.is_some())
            + usize::from(probe.http_get.is_some())
            + usize::from(probe.tcp_socket.is_some())
            + usize::from(probe.grpc.is_some());
        if found != 1 {
            return Err(ProbeConfigError::Handlers { field: field.to_string(), found });
        }
        let invalid = |sub: &str, reason: String| ProbeConfigError::Invalid { field: format!("{field}.{sub}"), reason };
        let host_or_pod = |h: &Option<String>| match h.as_deref() {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => pod_ip.to_string(),
        };
        if let Some(exec) = &probe.exec {
            let command = exec.command.clone().unwrap_or_default();
            if command.is_empty() {
                return Err(invalid("exec.command", "must not be empty".into()));
            }
            return Ok(ProbeAction::Exec { command });
        }
        if let Some(h) = &probe.http_get {
            let scheme = match h.scheme.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("") | Some("http") => Scheme::Http,
                Some("https") => Scheme::Https,
                Some(other) => return Err(invalid("httpGet.scheme", format!("must be HTTP or HTTPS, got {other:?}"))),
            };
            let port = resolve_port(&h.port, container).map_err(|r| invalid("httpGet.port", r))?;
            let mut headers = Vec::new();
            for (i, hh) in h.http_headers.iter().flatten().enumerate() {
                ::http::HeaderName::from_bytes(hh.name.as_bytes()).map_err(|_| {
                    invalid(&format!("httpGet.httpHeaders[{i}].name"), format!("invalid header name {:?}", hh.name))
                })?;
                ::http::HeaderValue::from_str(&hh.value).map_err(|_| {
                    invalid(&format!("httpGet.httpHeaders[{i}].value"), format!("invalid header value {:?}", hh.value))
                })?;
                headers.push((hh.name.clone(), hh.value.clone()));
            }
            let path = normalize_path(h.path.as_deref().unwrap_or(""));
            ::http::uri::PathAndQuery::try_from(path.as_str())
                .map_err(|e| invalid("httpGet.path", format!("invalid path {path:?}: {e}")))?;
            return Ok(ProbeAction::HttpGet(HttpGet { scheme, host: host_or_pod(&h.host), port, path, headers }));
        }
        if let Some(t) = &probe.tcp_socket {
            let port = resolve_port(&t.port, container).map_err(|r| invalid("tcpSocket.port", r))?;
            return Ok(ProbeAction::TcpSocket { host: host_or_pod(&t.host), port });
        }
        if let Some(g) = &probe.grpc {
            let port = u16::try_from(g.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid("grpc.port", format!("must be between 1 and 65535, got {}", g.port)))?;
            let service = g.service.clone().filter(|s| !s.is_empty());
            return Ok(ProbeAction::Grpc { host: pod_ip.to_string(), port, service });
        }
        Err(ProbeConfigError::Handlers { field: field.to_string(), found: 0 })
    }

    /// Runs the action once with `timeout`. `runtime` and `container_id` are used by exec only.
    pub async fn run(&self, runtime: &dyn ContainerRuntime, container_id: &str, timeout: Duration) -> Outcome {
        match self {
            ProbeAction::Exec { command } => run_exec(runtime, container_id, command, timeout).await,
            ProbeAction::HttpGet(get) => http::probe(get, timeout).await,
            ProbeAction::TcpSocket { host, port } => run_tcp(host, *port, timeout).await,
            ProbeAction::Grpc { host, port, service } => grpc::probe(host, *port, service.as_deref(), timeout).await,
        }
    }
}

/// A port by number, by the name of one of the container's ports, or a number written as a
/// string (kubelet's `ResolveContainerPort`, last-ditch parse included).
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let n: i64 = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(name) => {
            let named = container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port);
            match named {
                Some(p) => i64::from(p),
                None => name
                    .parse::<i64>()
                    .map_err(|_| format!("container {:?} has no port named {name:?}", container.name))?,
            }
        }
    };
    u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| format!("invalid port number {n} (must be 1-65535)"))
}

/// Path as kubelet would request it: empty is `/`, a relative path gets a leading `/`, a fragment
/// is not sent.
fn normalize_path(path: &str) -> String {
    let path = path.split('#').next().unwrap_or("");
    if path.starts_with('/') { path.to_string() } else { format!("/{path}") }
}

/// `host:port`, with brackets around an IPv6 literal.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// Keeps the first [`MAX_OUTPUT`] bytes of probe output, as text.
pub(crate) fn clip_output(output: &[u8]) -> String {
    let clipped = &output[..output.len().min(MAX_OUTPUT)];
    String::from_utf8_lossy(clipped).trim_end().to_string()
}

async fn run_exec(
    runtime: &dyn ContainerRuntime,
    container_id: &str,
    command: &[String],
    timeout: Duration,
) -> Outcome {
    // The runtime enforces the timeout itself; the outer bound only guards against a runtime that
    // does not (a hung exec must not stall the probe loop forever).
    let bounded = tokio::time::timeout(timeout + Duration::from_secs(1), runtime.exec(container_id, command, timeout));
    match bounded.await {
        Ok(Ok(r)) if r.exit_code == 0 => Outcome::Success,
        Ok(Ok(r)) => {
            Outcome::Failure(format!("command {command:?} exited with {}: {}", r.exit_code, clip_output(&r.output)))
        }
        Ok(Err(RuntimeError::Timeout { after, .. })) => {
            Outcome::Failure(format!("command {command:?} timed out after {after:?}"))
        }
        Ok(Err(e)) => Outcome::Error(format!("exec of {command:?} failed: {e}")),
        Err(_) => Outcome::Failure(format!("command {command:?} timed out after {timeout:?}")),
    }
}

async fn run_tcp(host: &str, port: u16, timeout: Duration) -> Outcome {
    let addr = join_host_port(host, port);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_stream)) => Outcome::Success,
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {addr}: {e}")),
        Err(_) => Outcome::Failure(format!("dial tcp {addr}: timed out after {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::testing::{Behaviour, ScriptedRuntime};
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::{ContainerSpec, ExecResult, ImageConfig, Stdio};
    use k8s_openapi::api::core::v1::{
        ContainerPort, ExecAction, GRPCAction, HTTPGetAction, HTTPHeader, TCPSocketAction,
    };
    use std::net::Ipv4Addr;

    const POD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 7));

    fn container() -> Container {
        Container {
            name: "web".into(),
            ports: Some(vec![
                ContainerPort { name: Some("http".into()), container_port: 8080, ..Default::default() },
                ContainerPort { name: Some("grpc".into()), container_port: 9090, ..Default::default() },
            ]),
            ..Default::default()
        }
    }

    fn resolve(p: Probe) -> Result<ProbeAction, ProbeConfigError> {
        ProbeAction::from_probe(&p, &container(), POD_IP, "spec.containers[web].livenessProbe")
    }

    fn http_get(f: impl FnOnce(&mut HTTPGetAction)) -> Probe {
        let mut h = HTTPGetAction { port: IntOrString::Int(80), ..Default::default() };
        f(&mut h);
        Probe { http_get: Some(h), ..Default::default() }
    }

    #[test]
    fn http_get_defaults_to_pod_ip_http_and_root() {
        assert_eq!(
            resolve(http_get(|_| {})),
            Ok(ProbeAction::HttpGet(HttpGet {
                scheme: Scheme::Http,
                host: "10.244.0.7".into(),
                port: 80,
                path: "/".into(),
                headers: vec![],
            }))
        );
    }

    #[test]
    fn http_get_resolves_named_port_scheme_host_path_headers() {
        let p = http_get(|h| {
            h.port = IntOrString::String("http".into());
            h.scheme = Some("HTTPS".into());
            h.host = Some("example.test".into());
            h.path = Some("healthz?deep=1#frag".into());
            h.http_headers = Some(vec![HTTPHeader { name: "Host".into(), value: "svc.local".into() }]);
        });
        assert_eq!(
            resolve(p),
            Ok(ProbeAction::HttpGet(HttpGet {
                scheme: Scheme::Https,
                host: "example.test".into(),
                port: 8080,
                path: "/healthz?deep=1".into(),
                headers: vec![("Host".into(), "svc.local".into())],
            }))
        );
    }

    #[test]
    fn ports_by_number_string_number_and_bad_names() {
        let by = |port: IntOrString| {
            resolve(Probe { tcp_socket: Some(TCPSocketAction { port, host: None }), ..Default::default() })
        };
        assert_eq!(by(IntOrString::Int(5432)), Ok(ProbeAction::TcpSocket { host: "10.244.0.7".into(), port: 5432 }));
        assert_eq!(
            by(IntOrString::String("grpc".into())),
            Ok(ProbeAction::TcpSocket { host: "10.244.0.7".into(), port: 9090 })
        );
        assert_eq!(
            by(IntOrString::String("1234".into())),
            Ok(ProbeAction::TcpSocket { host: "10.244.0.7".into(), port: 1234 })
        );
        let err = by(IntOrString::String("metrics".into())).expect_err("unknown name");
        assert_eq!(
            err,
            ProbeConfigError::Invalid {
                field: "spec.containers[web].livenessProbe.tcpSocket.port".into(),
                reason: "container \"web\" has no port named \"metrics\"".into()
            }
        );
        assert!(by(IntOrString::Int(0)).is_err());
        assert!(by(IntOrString::Int(70000)).is_err());
    }

    #[test]
    fn rejects_bad_handlers() {
        assert_eq!(
            resolve(Probe::default()),
            Err(ProbeConfigError::Handlers { field: "spec.containers[web].livenessProbe".into(), found: 0 })
        );
        let two = Probe {
            exec: Some(ExecAction { command: Some(vec!["true".into()]) }),
            tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(1), host: None }),
            ..Default::default()
        };
        assert!(matches!(resolve(two), Err(ProbeConfigError::Handlers { found: 2, .. })));
        assert!(resolve(Probe { exec: Some(ExecAction { command: None }), ..Default::default() }).is_err());
        assert!(resolve(http_get(|h| h.scheme = Some("ftp".into()))).is_err());
        assert!(
            resolve(http_get(
                |h| h.http_headers = Some(vec![HTTPHeader { name: "Bad Name".into(), value: "x".into() }])
            ))
            .is_err()
        );
        assert!(resolve(Probe { grpc: Some(GRPCAction { port: 0, service: None }), ..Default::default() }).is_err());
    }

    #[test]
    fn grpc_targets_the_pod_ip() {
        let p = Probe { grpc: Some(GRPCAction { port: 9090, service: Some("".into()) }), ..Default::default() };
        assert_eq!(resolve(p), Ok(ProbeAction::Grpc { host: "10.244.0.7".into(), port: 9090, service: None }));
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(join_host_port("fd00::1", 80), "[fd00::1]:80");
        assert_eq!(join_host_port("10.0.0.1", 80), "10.0.0.1:80");
    }

    async fn running_fake(id: &str) -> FakeRuntime {
        let rt = FakeRuntime::new();
        rt.add_image(ImageConfig { name: "img".into(), ..Default::default() });
        let spec = ContainerSpec {
            id: id.into(),
            image: "img".into(),
            labels: Default::default(),
            oci_spec: serde_json::json!({}),
        };
        rt.create_container(&spec).await.expect("create");
        rt.start(id, &Stdio::Null).await.expect("start");
        rt
    }

    #[tokio::test]
    async fn exec_exit_code_decides() {
        let rt = running_fake("c1").await;
        let action = ProbeAction::Exec { command: vec!["cat".into(), "/tmp/healthy".into()] };
        assert_eq!(action.run(&rt, "c1", Duration::from_secs(1)).await, Outcome::Success);
        rt.set_exec_result("c1", ExecResult { exit_code: 1, output: b"cat: can't open '/tmp/healthy'\n".to_vec() });
        assert_eq!(
            action.run(&rt, "c1", Duration::from_secs(1)).await,
            Outcome::Failure(
                "command [\"cat\", \"/tmp/healthy\"] exited with 1: cat: can't open '/tmp/healthy'".into()
            )
        );
        assert!(rt.calls().contains(&"exec c1 cat /tmp/healthy".to_string()), "{:?}", rt.calls());
    }

    #[tokio::test]
    async fn exec_in_a_missing_container_is_an_error_not_a_failure() {
        let rt = FakeRuntime::new();
        let action = ProbeAction::Exec { command: vec!["true".into()] };
        assert!(matches!(action.run(&rt, "gone", Duration::from_secs(1)).await, Outcome::Error(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn exec_that_hangs_times_out_as_failure() {
        let action = ProbeAction::Exec { command: vec!["sleep".into(), "100".into()] };
        let rt = ScriptedRuntime::new();
        rt.set("sleep", Behaviour::Hang);
        let outcome = action.run(&rt, "c1", Duration::from_secs(1)).await;
        assert!(matches!(&outcome, Outcome::Failure(m) if m.contains("timed out")), "{outcome:?}");
    }

    #[tokio::test]
    async fn tcp_connect_succeeds_on_a_listener_and_fails_when_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let action = ProbeAction::TcpSocket { host: "127.0.0.1".into(), port };
        assert_eq!(action.run(&ScriptedRuntime::new(), "c", Duration::from_secs(1)).await, Outcome::Success);
        drop(listener);
        let outcome = action.run(&ScriptedRuntime::new(), "c", Duration::from_secs(1)).await;
        assert!(matches!(&outcome, Outcome::Failure(m) if m.contains("127.0.0.1")), "{outcome:?}");
    }
}
