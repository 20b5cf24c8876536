//! The container runtime seam.
//!
//! The pod manager never talks to containerd directly: it goes through [`ContainerRuntime`], which
//! has two implementations — [`containerd::Containerd`] over containerd's native gRPC API (the
//! real one) and [`fake::FakeRuntime`] (a stateful in-memory fake, behind `test-helpers`) so the
//! executor can be unit-tested without root.
//!
//! The trait speaks in keelson terms (a container = an OCI spec + an image + labels; a task state
//! with exit code and time) rather than in gRPC messages, so the fake stays small and honest.

pub mod containerd;
#[cfg(feature = "test-helpers")]
pub mod fake;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Label keys every keelson-managed container carries. They are the only state the agent needs to
/// rebuild its view after a restart (ARCHITECTURE principle 3).
pub mod labels {
    /// Marks a container as managed by keelson (value `"true"`).
    pub const MANAGED: &str = "io.keelson.managed";
    pub const POD_UID: &str = "io.keelson.pod.uid";
    pub const POD_NAME: &str = "io.keelson.pod.name";
    pub const POD_NAMESPACE: &str = "io.keelson.pod.namespace";
    /// `sandbox`, `init` or `app`.
    pub const KIND: &str = "io.keelson.container.kind";
    pub const CONTAINER_NAME: &str = "io.keelson.container.name";
    /// Restart count of this instance (0 for the first run).
    pub const ATTEMPT: &str = "io.keelson.container.attempt";
    /// Consecutive short-lived restarts before this instance; drives CrashLoopBackOff after a restart.
    pub const BACKOFF_LEVEL: &str = "io.keelson.container.backoff-level";
    /// Hash of the container's spec, to notice a changed spec.
    pub const SPEC_HASH: &str = "io.keelson.container.spec-hash";
    /// Termination reason recorded by the agent after exit (e.g. `OOMKilled`), so it survives restarts.
    pub const EXIT_REASON: &str = "io.keelson.container.exit-reason";
    /// Image records only: `archive` when imported from a node-local OCI archive.
    pub const IMAGE_SOURCE: &str = "io.keelson.image.source";
    /// Sandbox only: path of the pod network namespace.
    pub const NETNS: &str = "io.keelson.sandbox.netns";
    /// Sandbox only: the pod IP assigned by CNI.
    pub const POD_IP: &str = "io.keelson.sandbox.ip";
    /// App/init containers: the sandbox they were started in.
    pub const SANDBOX_ID: &str = "io.keelson.container.sandbox";
    /// Time the agent started the task (RFC 3339), since containerd's task API has no start time.
    pub const STARTED_AT: &str = "io.keelson.container.started-at";
}

/// Errors from a runtime implementation.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("image {image:?} is not present on this node")]
    ImageNotFound { image: String },
    #[error("containerd {op} failed: {source}")]
    Grpc {
        op: &'static str,
        #[source]
        source: Box<tonic::Status>,
    },
    #[error("cannot connect to containerd at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("{op} timed out after {after:?}")]
    Timeout { op: String, after: Duration },
}

impl RuntimeError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::NotFound { .. } | RuntimeError::ImageNotFound { .. })
    }
    pub fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io { op: op.into(), source }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// What an image says about how to run it (the parts of the OCI image config the agent uses).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    pub name: String,
    /// Digest of the image config (the "image ID").
    pub id: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: Option<String>,
    /// Imported from a node-local archive (no registry to ask): every pull policy, Always
    /// included, uses it as it is (`crate::images` never pulls it).
    pub from_archive: bool,
}

/// A container to create: an OCI runtime spec (with `root.path = "rootfs"`) on a fresh writable
/// snapshot of `image`.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub id: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub oci_spec: serde_json::Value,
}

/// Where a task's stdout/stderr go.
#[derive(Debug, Clone, PartialEq)]
pub enum Stdio {
    /// Discard output.
    Null,
    /// A logging binary started by the shim (containerd `binary://` IO); it outlives the agent.
    Binary { binary: PathBuf, args: Vec<(String, String)> },
}

/// The state of a container's task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskState {
    /// Container exists but has no task (never started, or the task was deleted).
    None,
    Created,
    Running {
        pid: u32,
    },
    Stopped {
        exit_code: i32,
        exited_at: Option<DateTime<Utc>>,
    },
    Paused,
    Unknown,
}

/// A container as observed in the runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: Option<DateTime<Utc>>,
    pub task: TaskState,
}

impl ContainerInfo {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.get(k).map(String::as_str)
    }
}

/// Result of an exec.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecResult {
    pub exit_code: i32,
    /// stdout and stderr, interleaved as written.
    pub output: Vec<u8>,
}

/// Events the manager reacts to (it also resyncs periodically, so a missed event only delays).
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeEvent {
    TaskExit { container_id: String, exit_code: i32 },
    TaskOom { container_id: String },
}

/// The seam between the pod manager and a container runtime.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Runtime name and version, e.g. `containerd v1.6.20`.
    async fn version(&self) -> Result<String>;
    /// Imports an OCI image-layout archive; returns the image names it carried.
    async fn import_archive(&self, path: &Path) -> Result<Vec<String>>;
    /// Pulls an image from its registry and records it under its normalized name
    /// (`crate::images::pull`). Runtimes that cannot pull (the fakes) say so.
    async fn pull_image(
        &self,
        _req: crate::images::pull::PullRequest<'_>,
    ) -> std::result::Result<crate::images::PullReport, crate::images::PullError> {
        Err(crate::images::PullError::Unsupported)
    }
    /// The config of a present image, or `ImageNotFound`.
    async fn image_config(&self, image: &str) -> Result<ImageConfig>;
    /// Creates a container (and its writable snapshot). `AlreadyExists` if the id is taken.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<()>;
    /// Creates and starts the container's task; returns its PID.
    async fn start(&self, id: &str, stdio: &Stdio) -> Result<u32>;
    /// Sends a signal to the task's init process (`all`: every process in the container).
    async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()>;
    /// Every keelson-managed container with its task state.
    async fn list(&self) -> Result<Vec<ContainerInfo>>;
    /// Merges labels into a container's labels.
    async fn set_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> Result<()>;
    /// Deletes the task (killing it if needed), the container and its snapshot. Idempotent.
    async fn remove(&self, id: &str) -> Result<()>;
    /// Runs a process in a running container and collects its output.
    async fn exec(&self, id: &str, argv: &[String], timeout: Duration) -> Result<ExecResult>;
    /// Subscribes to task exit / OOM events.
    async fn events(&self) -> Result<tokio::sync::mpsc::Receiver<RuntimeEvent>>;
}
