//! The manager: one worker per pod uid, fed the merged desired pods by the sources
//! ([`Manager::sync`]), and the sweep of leftovers no worker owns ([`Manager::gc`]).
//!
//! The sweep runs periodically, concurrently with workers that are creating sandboxes, so it
//! must never take what a worker is about to use. A netns, a CNI attachment or a pod cgroup is
//! removed only when (1) no container in the runtime references it, (2) no live worker owns it
//! (workers register a sandbox id before creating its netns), and (3) for netns, it has been seen
//! unclaimed for at least the grace period (`orphan_grace`): a netns found by one sweep is only
//! removed by a later one.

use super::error::ManagerError;
use super::worker::{Worker, span_key};
use super::{ManagerConfig, Seams, Shared, pod_key};
use crate::cgroups::Cgroups;
use crate::network::{PodNetwork, PodRef};
use crate::runtime::{ContainerInfo, ContainerRuntime, RuntimeError, RuntimeEvent, labels};
use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{Instrument, debug, info, info_span, warn};

struct WorkerHandle {
    tx: watch::Sender<Option<Pod>>,
    task: AbortHandle,
}

/// What one sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub netns_removed: Vec<String>,
    /// Unclaimed netns left for a later sweep (younger than the grace period).
    pub netns_deferred: Vec<String>,
    pub cgroups_removed: Vec<String>,
}

/// The pod manager. Dropping it aborts the workers and leaves the pods running (as a stopping
/// agent does); a new manager over the same runtime adopts them.
pub struct Manager<R, C, N> {
    pub shared: Arc<Shared<R, C, N>>,
    workers: Mutex<HashMap<String, WorkerHandle>>,
    /// Unclaimed netns names and when a sweep first saw them.
    suspects: Mutex<BTreeMap<String, Instant>>,
}

impl<R, C, N> Drop for Manager<R, C, N> {
    fn drop(&mut self) {
        let workers = match self.workers.get_mut() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        for w in workers.values() {
            w.task.abort();
        }
    }
}

impl<R: ContainerRuntime, C: Cgroups + 'static, N: PodNetwork> Manager<R, C, N> {
    pub fn new(seams: Seams<R, C, N>, cfg: ManagerConfig) -> Arc<Self> {
        Arc::new(Manager {
            shared: Arc::new(Shared::new(seams, cfg)),
            workers: Mutex::new(HashMap::new()),
            suspects: Mutex::new(BTreeMap::new()),
        })
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<String, WorkerHandle>> {
        match self.workers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn suspects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Instant>> {
        match self.suspects.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Prepares node-level state and starts the runtime event pump. Call once before `sync`.
    pub async fn start(self: &Arc<Self>) -> Result<(), ManagerError> {
        self.shared.cgroups.ensure_root().map_err(|e| ManagerError::Cgroups(e.to_string()))?;
        for d in ["pods", "exec"] {
            let path = self.shared.cfg.run_dir.join(d);
            std::fs::create_dir_all(&path).map_err(|source| ManagerError::Io { path, source })?;
        }
        let path = self.shared.cfg.log_root.clone();
        std::fs::create_dir_all(&path).map_err(|source| ManagerError::Io { path, source })?;
        let mut events = self.shared.runtime.events().await?;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let RuntimeEvent::TaskOom { container_id } = &ev {
                    let l = BTreeMap::from([(labels::EXIT_REASON.to_string(), "OOMKilled".to_string())]);
                    if let Err(e) = shared.runtime.set_labels(container_id, &l).await {
                        debug!(container_id, error = %e, "could not record OOM");
                    }
                }
                debug!(?ev, "runtime event");
                shared.runtime_changed.notify_waiters();
            }
            warn!("runtime event stream ended; relying on periodic resync");
        });
        Ok(())
    }

    /// Converges the set of pods to `desired` (keyed by uid). Pods on the node that are not
    /// desired — including orphans found in the runtime after a restart — are terminated.
    pub async fn sync(self: &Arc<Self>, desired: BTreeMap<String, Pod>) -> Result<(), RuntimeError> {
        let observed = self.shared.runtime.list().await?;
        let mut orphans: BTreeMap<String, Pod> = BTreeMap::new();
        for c in &observed {
            let Some(uid) = c.label(labels::POD_UID) else { continue };
            if !desired.contains_key(uid) {
                orphans.entry(uid.to_string()).or_insert_with(|| orphan_pod(c, self.shared.cfg.orphan_grace));
            }
        }
        let mut workers = self.workers();
        workers.retain(|_, w| !w.tx.is_closed());
        for (uid, pod) in &desired {
            match workers.get(uid) {
                Some(w) => {
                    w.tx.send_if_modified(|cur| {
                        if cur.as_ref() != Some(pod) {
                            *cur = Some(pod.clone());
                            true
                        } else {
                            false
                        }
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(Some(pod.clone()));
                    let task = self.spawn_worker(uid.clone(), pod.clone(), rx);
                    workers.insert(uid.clone(), WorkerHandle { tx, task });
                }
            }
        }
        for (uid, w) in workers.iter() {
            if !desired.contains_key(uid) {
                w.tx.send_if_modified(|cur| cur.take().is_some());
            }
        }
        for (uid, pod) in orphans {
            if workers.contains_key(&uid) {
                continue;
            }
            info!(uid, pod = %pod_key(&pod), "found orphaned pod in the runtime; terminating it");
            let (tx, rx) = watch::channel(None);
            let task = self.spawn_worker(uid.clone(), pod, rx);
            workers.insert(uid, WorkerHandle { tx, task });
        }
        Ok(())
    }

    /// Removes network attachments, netns and cgroups that nothing references (left by a crash at
    /// the wrong moment). Safe to run at any time; see the module docs for what it never touches.
    pub async fn gc(&self) -> Result<GcReport, RuntimeError> {
        // Ownership first, then the runtime: a sandbox created in between is owned by then.
        let owned = self.shared.owned_sandboxes();
        let live_uids: BTreeSet<String> =
            self.workers().iter().filter(|(_, w)| !w.tx.is_closed()).map(|(u, _)| u.clone()).collect();
        let observed = self.shared.runtime.list().await?;
        let mut claimed: BTreeSet<String> =
            observed.iter().filter(|c| c.label(labels::KIND) == Some("sandbox")).map(|c| c.id.clone()).collect();
        claimed.extend(owned.keys().cloned());
        let mut report = GcReport::default();
        let valid: Vec<String> = claimed.iter().cloned().collect();
        if let Err(e) = self.shared.network.gc(&valid).await {
            warn!(error = %e, "network GC failed");
        }
        let now = Instant::now();
        let grace = self.shared.cfg.orphan_grace;
        let found = self.shared.netns.list().unwrap_or_default();
        let unclaimed: BTreeMap<String, std::path::PathBuf> = found
            .into_iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_string_lossy().to_string();
                (!claimed.contains(&name)).then_some((name, p))
            })
            .collect();
        let due: Vec<(String, std::path::PathBuf)> = {
            let mut suspects = self.suspects();
            suspects.retain(|name, _| unclaimed.contains_key(name));
            let mut due = Vec::new();
            for (name, path) in unclaimed {
                let first = *suspects.entry(name.clone()).or_insert(now);
                if now.duration_since(first) < grace {
                    report.netns_deferred.push(name);
                } else {
                    due.push((name, path));
                }
            }
            due
        };
        for (name, path) in due {
            info!(netns = %path.display(), "removing orphaned pod netns");
            let pr = PodRef { name: String::new(), namespace: String::new(), uid: String::new() };
            if let Err(e) = self.shared.network.teardown(&name, Some(&path), &pr).await {
                warn!(error = %e, "teardown of orphaned netns failed");
                continue;
            }
            match self.shared.netns.remove(&path) {
                Ok(()) => {
                    self.suspects().remove(&name);
                    report.netns_removed.push(name);
                }
                Err(e) => warn!(error = %e, "removing orphaned netns failed"),
            }
        }
        let uids: BTreeSet<&str> = observed.iter().filter_map(|c| c.label(labels::POD_UID)).collect();
        for p in self.shared.cgroups.list_pods().unwrap_or_default() {
            if uids.contains(p.uid.as_str()) || live_uids.contains(&p.uid) {
                continue;
            }
            match self.shared.cgroups.remove_pod(&p.uid) {
                Ok(()) => report.cgroups_removed.push(p.uid.clone()),
                Err(e) => warn!(uid = %p.uid, error = %e, "removing orphaned pod cgroup failed"),
            }
        }
        Ok(report)
    }

    fn spawn_worker(self: &Arc<Self>, uid: String, pod: Pod, rx: watch::Receiver<Option<Pod>>) -> AbortHandle {
        let shared = self.shared.clone();
        let span = info_span!("pod", pod = %span_key(&pod), uid = %uid);
        tokio::spawn(
            async move {
                let mut w = Worker::new(shared, uid, pod, rx);
                w.run().await;
            }
            .instrument(span),
        )
        .abort_handle()
    }

    /// Number of live pod workers (pods being run or torn down).
    pub fn worker_count(&self) -> usize {
        self.workers().values().filter(|w| !w.tx.is_closed()).count()
    }
}

/// A minimal pod reconstructed from container labels, for terminating orphans.
fn orphan_pod(c: &ContainerInfo, grace: Duration) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = c.label(labels::POD_NAME).map(String::from);
    p.metadata.namespace = c.label(labels::POD_NAMESPACE).map(String::from);
    p.metadata.uid = c.label(labels::POD_UID).map(String::from);
    p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
        termination_grace_period_seconds: Some(grace.as_secs() as i64),
        ..Default::default()
    });
    p
}
