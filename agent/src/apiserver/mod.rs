//! The agent's link to an API server (kubelet's `--kubeconfig`): building the `kube::Client` and
//! the backoff every API loop shares.
//!
//! Everything the agent does against the API (Node registration and status, the Lease heartbeat,
//! the pod watch, pod status, events) goes through one client built here from a kubeconfig file,
//! so the credential can come from the admin kubeconfig in tests or from TLS bootstrapping
//! (which ends with a kubeconfig on disk) without the loops knowing. Only the public API subset
//! kubelet uses is called, so the agent could join a real kube-apiserver.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("client from kubeconfig {path}: {source}")]
    Client {
        path: PathBuf,
        #[source]
        source: kube::Error,
    },
}

/// A client for the API server the kubeconfig at `path` names (its current context).
pub async fn client(path: &Path) -> Result<kube::Client, ClientError> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .map_err(|source| ClientError::Kubeconfig { path: path.to_path_buf(), source })?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|source| ClientError::Kubeconfig { path: path.to_path_buf(), source })?;
    kube::Client::try_from(cfg).map_err(|source| ClientError::Client { path: path.to_path_buf(), source })
}

/// Exponential backoff with a cap, reset after a success. Pure (the caller sleeps).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max, next: base }
    }

    /// The wait before the next retry; doubles each call up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

impl Default for Backoff {
    /// 200 ms doubling to 10 s: short enough that status catches up soon after the API returns.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
