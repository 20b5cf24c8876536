//! Typed errors of the pod workers. Start errors carry the Kubernetes waiting reason they surface
//! as in the container status (`ErrImagePull`, `CreateContainerConfigError`, …).

use crate::netns::NetnsError;
use crate::network::NetworkError;
use crate::runtime::RuntimeError;
use std::path::PathBuf;

/// Why a container instance could not be created or started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no container {name} in the pod spec")]
    NotInSpec { name: String },
    #[error("no running sandbox")]
    NoSandbox,
    #[error(transparent)]
    InvalidImageName(#[from] crate::images::reference::InvalidImageName),
    #[error("container image {image:?} is not present with pull policy of Never")]
    NeverPull { image: String },
    #[error("{0}")]
    Pull(std::sync::Arc<crate::images::PullError>),
    #[error("image {image:?}: {source}")]
    Image {
        image: String,
        #[source]
        source: RuntimeError,
    },
    /// Resources, security context or OCI spec rendering rejected the container.
    #[error("{0}")]
    Config(String),
    #[error("create container: {0}")]
    Create(#[source] RuntimeError),
    #[error("start container: {0}")]
    Start(#[source] RuntimeError),
}

impl StartError {
    /// The container status waiting reason (kubelet's names).
    pub fn reason(&self) -> &'static str {
        match self {
            StartError::NotInSpec { .. } | StartError::Config(_) => "CreateContainerConfigError",
            StartError::NoSandbox | StartError::Create(_) => "CreateContainerError",
            StartError::Pull(_) | StartError::Image { .. } => "ErrImagePull",
            StartError::NeverPull { .. } => "ErrImageNeverPull",
            StartError::InvalidImageName(_) => "InvalidImageName",
            StartError::Start(_) => "RunContainerError",
        }
    }
}

/// Why a sandbox could not be created (reported as `FailedCreatePodSandBox`).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("pod resources: {0}")]
    Resources(String),
    #[error("pod cgroup: {0}")]
    Cgroup(String),
    #[error("pod dir {path}: {source}")]
    PodDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pause image {image}: {source}")]
    PauseImage {
        image: String,
        #[source]
        source: RuntimeError,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("create sandbox container: {0}")]
    Create(#[source] RuntimeError),
    #[error("start sandbox: {0}")]
    Start(#[source] RuntimeError),
}

/// One step of a teardown that did not complete; the worker retries until none is left.
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error("remove container {id}: {source}")]
    RemoveContainer {
        id: String,
        #[source]
        source: RuntimeError,
    },
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("sandbox {id} is still running")]
    SandboxRunning { id: String },
    #[error("pod cgroup: {0}")]
    Cgroup(String),
    #[error("list containers: {0}")]
    Runtime(#[source] RuntimeError),
    #[error("{} teardown steps failed; first: {}", .0.len(), .0.first().map(|e| e.to_string()).unwrap_or_default())]
    Several(Vec<TeardownError>),
}

impl TeardownError {
    /// Folds step failures into one error (`None` if there were none).
    pub fn collect(mut errs: Vec<TeardownError>) -> Result<(), TeardownError> {
        match errs.len() {
            0 => Ok(()),
            1 => Err(errs.remove(0)),
            _ => Err(TeardownError::Several(errs)),
        }
    }
}

/// Errors of the manager's node-level operations.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("cgroups: {0}")]
    Cgroups(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}
