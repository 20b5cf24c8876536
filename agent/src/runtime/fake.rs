//! A stateful in-memory [`ContainerRuntime`] for unit tests (feature `test-helpers`).
//!
//! It models what the executor relies on: images that are present or not, containers with labels,
//! tasks that are created, run, and exit (tests drive exits with [`FakeRuntime::exit`]), and a log of
//! calls so tests can assert what the executor did.

use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ExecResult, ImageConfig, Result, RuntimeError, RuntimeEvent, Stdio,
    TaskState,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    images: BTreeMap<String, ImageConfig>,
    containers: BTreeMap<String, ContainerInfo>,
    specs: BTreeMap<String, serde_json::Value>,
    calls: Vec<String>,
    next_pid: u32,
    exec_results: BTreeMap<String, ExecResult>,
    subscribers: Vec<tokio::sync::mpsc::Sender<RuntimeEvent>>,
    fail_creates: u32,
}

/// See the module docs.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Makes an image present.
    pub fn add_image(&self, cfg: ImageConfig) {
        self.lock().images.insert(cfg.name.clone(), cfg);
    }

    /// Makes a running task exit with `code` and emits the exit event.
    pub fn exit(&self, id: &str, code: i32) {
        let subs = {
            let mut st = self.lock();
            if let Some(c) = st.containers.get_mut(id) {
                c.task = TaskState::Stopped { exit_code: code, exited_at: Some(chrono::Utc::now()) };
            }
            st.subscribers.clone()
        };
        for s in subs {
            let _ = s.try_send(RuntimeEvent::TaskExit { container_id: id.to_string(), exit_code: code });
        }
    }

    /// The next `n` container creates fail.
    pub fn fail_creates(&self, n: u32) {
        self.lock().fail_creates = n;
    }

    /// The result the next execs in container `id` return.
    pub fn set_exec_result(&self, id: &str, r: ExecResult) {
        self.lock().exec_results.insert(id.to_string(), r);
    }

    /// Every call made so far, as `"verb id"` strings.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The OCI spec a container was created with.
    pub fn spec(&self, id: &str) -> Option<serde_json::Value> {
        self.lock().specs.get(id).cloned()
    }

    pub fn containers(&self) -> Vec<ContainerInfo> {
        self.lock().containers.values().cloned().collect()
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn version(&self) -> Result<String> {
        Ok("fake 0".into())
    }

    async fn import_archive(&self, path: &Path) -> Result<Vec<String>> {
        Err(RuntimeError::Invalid {
            what: path.display().to_string(),
            reason: "the fake cannot import archives".into(),
        })
    }

    async fn image_config(&self, image: &str) -> Result<ImageConfig> {
        self.lock().images.get(image).cloned().ok_or_else(|| RuntimeError::ImageNotFound { image: image.into() })
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<()> {
        let mut st = self.lock();
        st.calls.push(format!("create {}", spec.id));
        if st.fail_creates > 0 {
            st.fail_creates -= 1;
            return Err(RuntimeError::Invalid {
                what: format!("container {}", spec.id),
                reason: "injected failure".into(),
            });
        }
        if !st.images.contains_key(&spec.image) {
            return Err(RuntimeError::ImageNotFound { image: spec.image.clone() });
        }
        if st.containers.contains_key(&spec.id) {
            return Err(RuntimeError::AlreadyExists { what: format!("container {}", spec.id) });
        }
        let mut labels = spec.labels.clone();
        labels.insert(super::labels::MANAGED.into(), "true".into());
        st.specs.insert(spec.id.clone(), spec.oci_spec.clone());
        st.containers.insert(
            spec.id.clone(),
            ContainerInfo {
                id: spec.id.clone(),
                image: spec.image.clone(),
                labels,
                created_at: Some(chrono::Utc::now()),
                task: TaskState::None,
            },
        );
        Ok(())
    }

    async fn start(&self, id: &str, _stdio: &Stdio) -> Result<u32> {
        let mut st = self.lock();
        st.calls.push(format!("start {id}"));
        st.next_pid += 1;
        let pid = 1000 + st.next_pid;
        let c = st.containers.get_mut(id).ok_or_else(|| RuntimeError::NotFound { what: format!("container {id}") })?;
        match c.task {
            TaskState::None | TaskState::Created => {
                c.task = TaskState::Running { pid };
                Ok(pid)
            }
            TaskState::Running { pid } => Ok(pid),
            ref other => Err(RuntimeError::Invalid { what: format!("task {id}"), reason: format!("state {other:?}") }),
        }
    }

    async fn kill(&self, id: &str, signal: i32, _all: bool) -> Result<()> {
        self.lock().calls.push(format!("kill {id} {signal}"));
        // Fake processes die on any terminating signal.
        if signal == libc::SIGKILL || signal == libc::SIGTERM || signal == libc::SIGINT {
            let running = matches!(self.lock().containers.get(id).map(|c| &c.task), Some(TaskState::Running { .. }));
            if running {
                self.exit(id, 128 + signal);
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>> {
        Ok(self.containers())
    }

    async fn set_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        let mut st = self.lock();
        let c = st.containers.get_mut(id).ok_or_else(|| RuntimeError::NotFound { what: format!("container {id}") })?;
        c.labels.extend(labels.clone());
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let mut st = self.lock();
        st.calls.push(format!("remove {id}"));
        st.containers.remove(id);
        st.specs.remove(id);
        Ok(())
    }

    async fn exec(&self, id: &str, argv: &[String], _timeout: Duration) -> Result<ExecResult> {
        let mut st = self.lock();
        st.calls.push(format!("exec {id} {}", argv.join(" ")));
        match st.containers.get(id).map(|c| &c.task) {
            Some(TaskState::Running { .. }) => {}
            _ => return Err(RuntimeError::NotFound { what: format!("running task {id}") }),
        }
        Ok(st.exec_results.get(id).cloned().unwrap_or(ExecResult { exit_code: 0, output: Vec::new() }))
    }

    async fn events(&self) -> Result<tokio::sync::mpsc::Receiver<RuntimeEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        self.lock().subscribers.push(tx);
        Ok(rx)
    }
}
