//! A scripted exec-only runtime for the probe unit tests: each command (by `argv[0]`) exits with
//! a configurable code, hangs, or errors, and every exec is logged with the (tokio) time it ran.
//! The stateful `FakeRuntime` decides exec results per container, not per command, which cannot
//! express "startup fails while liveness passes" in one container.

use crate::runtime::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ExecResult, ImageConfig, Result, RuntimeError, RuntimeEvent, Stdio,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Exit(i32),
    /// Never returns, ignoring the timeout (a misbehaving runtime).
    Hang,
    /// The runtime cannot run the exec at all.
    Error,
}

pub struct ScriptedRuntime {
    t0: Instant,
    script: Mutex<HashMap<String, Behaviour>>,
    calls: Mutex<Vec<(String, Duration)>>,
}

impl ScriptedRuntime {
    pub fn new() -> Self {
        ScriptedRuntime { t0: Instant::now(), script: Mutex::new(HashMap::new()), calls: Mutex::new(Vec::new()) }
    }

    /// What exec of `command` does from now on (default: exit 0).
    pub fn set(&self, command: &str, b: Behaviour) {
        self.script.lock().expect("script lock").insert(command.to_string(), b);
    }

    /// Every exec so far: command and time since this runtime was created.
    pub fn calls(&self) -> Vec<(String, Duration)> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// How often `command` was executed.
    pub fn count(&self, command: &str) -> usize {
        self.calls().iter().filter(|(c, _)| c == command).count()
    }

    fn unsupported<T>(op: &str) -> Result<T> {
        Err(RuntimeError::Invalid { what: op.to_string(), reason: "not scripted".into() })
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for ScriptedRuntime {
    async fn version(&self) -> Result<String> {
        Ok("scripted".into())
    }
    async fn import_archive(&self, _: &Path) -> Result<Vec<String>> {
        Self::unsupported("import_archive")
    }
    async fn image_config(&self, _: &str) -> Result<ImageConfig> {
        Self::unsupported("image_config")
    }
    async fn create_container(&self, _: &ContainerSpec) -> Result<()> {
        Self::unsupported("create_container")
    }
    async fn start(&self, _: &str, _: &Stdio) -> Result<u32> {
        Self::unsupported("start")
    }
    async fn kill(&self, _: &str, _: i32, _: bool) -> Result<()> {
        Self::unsupported("kill")
    }
    async fn list(&self) -> Result<Vec<ContainerInfo>> {
        Ok(Vec::new())
    }
    async fn set_labels(&self, _: &str, _: &BTreeMap<String, String>) -> Result<()> {
        Self::unsupported("set_labels")
    }
    async fn remove(&self, _: &str) -> Result<()> {
        Self::unsupported("remove")
    }
    async fn exec(&self, _id: &str, argv: &[String], _timeout: Duration) -> Result<ExecResult> {
        let command = argv.first().cloned().unwrap_or_default();
        self.calls.lock().expect("calls lock").push((command.clone(), self.t0.elapsed()));
        let behaviour = self.script.lock().expect("script lock").get(&command).copied().unwrap_or(Behaviour::Exit(0));
        match behaviour {
            Behaviour::Exit(exit_code) => {
                Ok(ExecResult { exit_code, output: format!("{command} says {exit_code}").into_bytes() })
            }
            Behaviour::Hang => std::future::pending().await,
            Behaviour::Error => Err(RuntimeError::NotFound { what: "running task".into() }),
        }
    }
    async fn events(&self) -> Result<tokio::sync::mpsc::Receiver<RuntimeEvent>> {
        Ok(tokio::sync::mpsc::channel(1).1)
    }
}
