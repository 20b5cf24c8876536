//! Pod workers: one task per pod uid that observes, calls [`crate::pod::step`], and executes.
//!
//! Kubelet's shape, one concern per module:
//! - [`dispatch`]: the [`Manager`] — takes the merged desired pods from the sources, keeps one
//!   worker per uid (adopting orphans found in the runtime), and sweeps leftovers ([`Manager::gc`]);
//! - [`worker`]: the loop — observe, decide, publish status, act, sleep until something changes;
//! - [`observe`] (pure): a runtime listing → [`crate::pod::Observed`];
//! - [`execute`]: performs one [`crate::pod::Action`]; [`sandbox`] creates and removes sandboxes
//!   (netns, CNI, pause), [`stop`] stops containers and tears pods down;
//! - [`podfiles`] (pure): the pod's `/etc/hosts`, `resolv.conf` and `hostname`.
//!
//! Every effect goes through a seam (`ContainerRuntime`, `Cgroups`, `PodNetwork`, `Namespaces`,
//! `StatusSink`, `EventSink`), each with a fake behind `test-helpers`, so the worker itself is
//! table-tested over fakes (see `tests.rs`).
//!
//! Restart safety: containers carry labels ([`crate::runtime::labels`]) and deterministic ids
//! (hash of pod uid, container name and attempt), so a restarted agent rebuilds the same view,
//! adopts running containers without touching them, and a create that raced a crash simply finds
//! its container already there. A sandbox container is removed only after its network and netns
//! are gone, so it stays the durable record of what teardown still owes.

pub mod dispatch;
pub mod error;
pub mod execute;
pub mod observe;
pub mod podfiles;
pub mod sandbox;
pub mod stop;
#[cfg(test)]
mod tests;
pub mod worker;

pub use dispatch::{GcReport, Manager};
pub use error::{ManagerError, SandboxError, StartError, TeardownError};

use crate::cgroups::Cgroups;
use crate::events::{self, EventSink};
use crate::images::inflight::InFlight;
use crate::images::{PullError, PullReport};
use crate::netns::Namespaces;
use crate::network::{PodNetwork, PodRef};
use crate::runtime::{ContainerRuntime, ImageConfig};
use crate::status::StatusSink;
use k8s_openapi::api::core::v1::{Container, Pod};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Node-level settings of the manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub node_name: String,
    pub host_ip: String,
    /// Agent run dir: `pods/<uid>/` (hosts, resolv.conf, hostname), `exec/`.
    pub run_dir: PathBuf,
    /// Root of container logs: `<ns>_<pod>_<uid>/<container>/<restart>.log`.
    pub log_root: PathBuf,
    /// The `keelson-logger` binary the shim runs for each container.
    pub logger: PathBuf,
    pub pause_image: String,
    /// resolv.conf used for dnsPolicy Default (and ClusterFirst until cluster DNS exists).
    pub resolv_conf: PathBuf,
    pub pod: crate::pod::Config,
    pub resync: Duration,
    pub memory_capacity: i64,
    pub pids_limit: Option<i64>,
    /// Grace period used for orphaned pods whose spec is unknown; also how long the sweep waits
    /// before removing a netns no sandbox claims (it may be a sandbox being created).
    pub orphan_grace: Duration,
    /// Lowest oom_score_adj the agent may give (kernel rule: going below the agent's own value needs
    /// CAP_SYS_RESOURCE). `None` = no limit. See [`oom_floor`].
    pub oom_score_floor: Option<i32>,
    /// First wait before retrying a failed teardown (doubles up to `resync`).
    pub teardown_retry: Duration,
    /// The node's registry credentials and insecure hosts (`crate::images::auth`), read on
    /// every pull. `None`: anonymous HTTPS only.
    pub registry_config: Option<PathBuf>,
}

/// The lowest oom_score_adj this process can hand to its children: unlimited with
/// CAP_SYS_RESOURCE, otherwise its own current value (e.g. in sandboxes that drop the capability).
pub fn oom_floor() -> Option<i32> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_RESOURCE: u32 = 24;
    if cap_eff & (1 << CAP_SYS_RESOURCE) != 0 {
        return None;
    }
    let own = std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    Some(own)
}

/// The seams a manager drives.
pub struct Seams<R, C, N> {
    pub runtime: Arc<R>,
    pub cgroups: Arc<C>,
    pub network: Arc<N>,
    pub netns: Arc<dyn Namespaces>,
    pub status: Arc<dyn StatusSink>,
    pub events: Arc<dyn EventSink>,
}

/// State shared by the manager and its workers.
pub struct Shared<R, C, N> {
    pub runtime: Arc<R>,
    pub cgroups: Arc<C>,
    pub network: Arc<N>,
    pub netns: Arc<dyn Namespaces>,
    pub status: Arc<dyn StatusSink>,
    pub events: Arc<dyn EventSink>,
    pub cfg: ManagerConfig,
    /// Woken on any runtime event; workers re-observe.
    pub runtime_changed: Notify,
    /// Sandbox ids (= netns names) that live workers own, registered *before* the netns is
    /// created and released only once it is gone: the orphan sweep never touches these.
    owned_sandboxes: Mutex<BTreeMap<String, String>>,
    image_cache: Mutex<HashMap<String, ImageConfig>>,
    /// Registry pulls running now, by image and credential (see `crate::images::inflight`).
    pub pulls: InFlight<Result<PullReport, Arc<PullError>>>,
}

impl<R: ContainerRuntime, C: Cgroups + 'static, N: PodNetwork> Shared<R, C, N> {
    fn new(seams: Seams<R, C, N>, cfg: ManagerConfig) -> Self {
        Shared {
            runtime: seams.runtime,
            cgroups: seams.cgroups,
            network: seams.network,
            netns: seams.netns,
            status: seams.status,
            events: seams.events,
            cfg,
            runtime_changed: Notify::new(),
            owned_sandboxes: Mutex::new(BTreeMap::new()),
            image_cache: Mutex::new(HashMap::new()),
            pulls: InFlight::default(),
        }
    }

    pub fn event(&self, type_: &'static str, pod: &Pod, reason: &str, message: impl Into<String>) {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        events::emit(self.events.as_ref(), type_, &pod_key(pod), uid, reason, message.into());
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        match self.owned_sandboxes.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Claims sandbox `id` for pod `uid` (see `owned_sandboxes`).
    pub fn own_sandbox(&self, id: &str, uid: &str) {
        self.owned().insert(id.to_string(), uid.to_string());
    }

    pub fn release_sandbox(&self, id: &str) {
        self.owned().remove(id);
    }

    /// The sandboxes live workers own.
    pub fn owned_sandboxes(&self) -> BTreeMap<String, String> {
        self.owned().clone()
    }

    /// Image config, cached (image ids and stop signals are asked for every turn). An image is
    /// found under the name the pod writes (archive imports record that name) or under its
    /// normalized name (`busybox` → `docker.io/library/busybox:latest`, what pulls record).
    pub async fn image_config(&self, image: &str) -> Result<ImageConfig, crate::runtime::RuntimeError> {
        if let Some(c) = self.image_cache.lock().ok().and_then(|m| m.get(image).cloned()) {
            return Ok(c);
        }
        let c = match self.runtime.image_config(image).await {
            Err(e) if e.is_not_found() => match crate::images::normalize(image) {
                Ok(full) if full != image => self.runtime.image_config(&full).await?,
                _ => return Err(e),
            },
            other => other?,
        };
        if let Ok(mut m) = self.image_cache.lock() {
            m.insert(image.to_string(), c.clone());
        }
        Ok(c)
    }
}

impl<R, C, N> Shared<R, C, N> {
    /// Drops the cached config of `image` (after a pull may have changed it).
    pub fn forget_image(&self, image: &str) {
        if let Ok(mut m) = self.image_cache.lock() {
            m.remove(image);
        }
    }
}

/// Deterministic container id: a crash between create and start finds the same id again.
pub fn container_id(uid: &str, name: &str, attempt: u32) -> String {
    let d = Sha256::digest(format!("{uid}/{name}/{attempt}").as_bytes());
    hex::encode(&d[..16])
}

/// Deterministic sandbox id (also the netns name and the CNI container id).
pub fn sandbox_id(uid: &str, attempt: u32) -> String {
    container_id(uid, "\u{0}sandbox", attempt)
}

pub fn pod_key(p: &Pod) -> String {
    format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or("default"), p.metadata.name.as_deref().unwrap_or(""))
}

pub fn pod_ref(p: &Pod) -> PodRef {
    PodRef {
        name: p.metadata.name.clone().unwrap_or_default(),
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
    }
}

pub fn grace(pod: &Pod) -> Duration {
    let s = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0);
    Duration::from_secs(s as u64)
}

pub fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    find_container_field(pod, name).map(|(_, c)| c)
}

/// The container called `name` and its field path (`spec.initContainers[i]` / `spec.containers[i]`).
pub fn find_container_field<'a>(pod: &'a Pod, name: &str) -> Option<(String, &'a Container)> {
    let spec = pod.spec.as_ref()?;
    if let Some((i, c)) = spec.init_containers.iter().flatten().enumerate().find(|(_, c)| c.name == name) {
        return Some((format!("spec.initContainers[{i}]"), c));
    }
    spec.containers.iter().enumerate().find(|(_, c)| c.name == name).map(|(i, c)| (format!("spec.containers[{i}]"), c))
}

/// A stop signal name (`SIGTERM`, `TERM`, `15`) as a number.
pub fn parse_signal(s: &str) -> Option<i32> {
    let u = s.trim().trim_start_matches("SIG").to_ascii_uppercase();
    if let Ok(n) = u.parse::<i32>() {
        return Some(n);
    }
    Some(match u.as_str() {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        "STOP" => libc::SIGSTOP,
        _ => return None,
    })
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(container_id("u", "c", 0), container_id("u", "c", 0));
        assert_ne!(container_id("u", "c", 0), container_id("u", "c", 1));
        assert_ne!(sandbox_id("u", 0), container_id("u", "sandbox", 0));
        assert_eq!(sandbox_id("u", 3).len(), 32);
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("QUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGBOGUS"), None);
    }
}
