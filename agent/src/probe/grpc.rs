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
