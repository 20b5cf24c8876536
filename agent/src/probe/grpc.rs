//! The `grpc` probe: one `grpc.health.v1.Health/Check` call over plaintext HTTP/2 with the
//! probe's service name, as kubelet's gRPC prober does. `SERVING` is success; every other answer,
//! a failed connection, an unimplemented health service or a deadline is a failure.

use super::action::join_host_port;
use super::http::USER_AGENT;
use super::state::Outcome;
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Runs the probe once within `timeout`.
pub async fn probe(host: &str, port: u16, service: Option<&str>, timeout: Duration) -> Outcome {
    let addr = join_host_port(host, port);
    match tokio::time::timeout(timeout, check(&addr, service, timeout)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failure(format!("gRPC health check of {addr} did not complete within {timeout:?}")),
    }
}

async fn check(addr: &str, service: Option<&str>, timeout: Duration) -> Outcome {
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return Outcome::Failure(format!("invalid gRPC address {addr}: {e}")),
    };
    let endpoint = match endpoint.user_agent(USER_AGENT) {
        Ok(e) => e,
        Err(e) => return Outcome::Failure(format!("invalid gRPC user agent: {e}")),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return Outcome::Failure(format!("failed to connect to gRPC service at {addr}: {e}")),
    };
    let request = HealthCheckRequest { service: service.unwrap_or_default().to_string() };
    match HealthClient::new(channel).check(request).await {
        Ok(resp) => {
            let status = resp.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                Outcome::Success
            } else {
                let name = ServingStatus::try_from(status)
                    .map_or_else(|_| status.to_string(), |s| s.as_str_name().to_string());
                Outcome::Failure(format!("service unhealthy (responded with {name})"))
            }
        }
        Err(status) => match status.code() {
            tonic::Code::Unimplemented => Outcome::Failure(format!(
                "the server at {addr} does not implement the gRPC health protocol (grpc.health.v1.Health): {}",
                status.message()
            )),
            tonic::Code::DeadlineExceeded => {
                Outcome::Failure(format!("gRPC health check of {addr} did not complete within {timeout:?}"))
            }
            code => Outcome::Failure(format!("gRPC health check of {addr} failed: {code:?}: {}", status.message())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tonic_health::ServingStatus as Status;

    /// A real tonic server with tonic-health's Health service on loopback. Aborted on drop.
    struct HealthServer {
        addr: SocketAddr,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for HealthServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn health_server() -> HealthServer {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("shop.Cart", Status::Serving).await;
        reporter.set_service_status("shop.Payments", Status::NotServing).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _keep_reporter = reporter;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        HealthServer { addr, task }
    }

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn serving_is_success() {
        let s = health_server().await;
        // No service name: the server's overall health, SERVING by default.
        assert_eq!(probe("127.0.0.1", s.addr.port(), None, T).await, Outcome::Success);
        assert_eq!(probe("127.0.0.1", s.addr.port(), Some("shop.Cart"), T).await, Outcome::Success);
    }

    #[tokio::test]
    async fn not_serving_and_unknown_services_fail() {
        let s = health_server().await;
        assert_eq!(
            probe("127.0.0.1", s.addr.port(), Some("shop.Payments"), T).await,
            Outcome::Failure("service unhealthy (responded with NOT_SERVING)".into())
        );
        let outcome = probe("127.0.0.1", s.addr.port(), Some("shop.Nope"), T).await;
        assert!(matches!(&outcome, Outcome::Failure(m) if m.contains("NotFound")), "{outcome:?}");
    }

    #[tokio::test]
    async fn unreachable_or_silent_servers_fail() {
        let s = health_server().await;
        let port = s.addr.port();
        drop(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let outcome = probe("127.0.0.1", port, None, T).await;
        assert!(matches!(&outcome, Outcome::Failure(m) if m.contains("failed to connect")), "{outcome:?}");

        // Accepts TCP but never speaks HTTP/2: bounded by the probe timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let bounded =
            tokio::time::timeout(Duration::from_secs(30), probe("127.0.0.1", port, None, Duration::from_millis(300)));
        let outcome = bounded.await.expect("the probe's own timeout ends it");
        assert!(matches!(outcome, Outcome::Failure(_)), "{outcome:?}");
        drop(silent);
    }
}
