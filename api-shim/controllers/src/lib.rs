//! keelson-controllers: the cluster's level-triggered controllers, on `kube-runtime`.
//!
//! They talk to the API server only through a [`kube::Client`], so they run against any
//! conformant server: in-process in `keelson-apiserver` (as k3s embeds its controller manager)
//! or as the standalone `keelson-controller-manager --kubeconfig PATH`.
//!
//! Every controller has the same shape: a pure `plan` (state in, operations out, unit-tested
//! without a server) and a thin reconciler that reads the state through watches or lists and
//! executes the operations; each loop resyncs periodically and retries failures with backoff,
//! so a restart of anything resumes the work from what is stored. One module per controller:
//! [`gc`] (ownerReferences: background, foreground and orphan propagation) and [`namespace`]
//! (namespace content cleanup and finalization), [`replicaset`] (ReplicaSets and
//! ReplicationControllers), [`deployment`] (rollouts over ReplicaSets), [`nodelifecycle`]
//! (Lease expiry → Unknown, NoExecute taints, taint-based eviction), [`nodeipam`] (a pod CIDR
//! per node), [`endpointslice`] (with its mirroring controller) and [`endpoints`],
//! [`serviceaccount`] and [`rootca`] (per-namespace defaults), [`job`], and the [`scheduler`]
//! (kube-scheduler's default profile: filters, scores, binding, the `Unschedulable` condition).
//! [`run`] starts the enabled set; which one runs is chosen with upstream's `--controllers`
//! syntax ([`Selection`]). With [`Opts::leader`] set, the set runs only while this
//! process holds the `kube-system/kube-controller-manager` Lease ([`leader`]), so several API
//! servers on one etcd have one active set; losing the Lease stops (drops) every controller task
//! at once.

pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod events;
pub mod gc;
pub mod job;
pub mod kinds;
pub mod leader;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod object;
pub mod replicaset;
pub mod rootca;
pub mod scheduler;
pub mod serviceaccount;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use crate::kinds::Kinds;

/// The controllers this crate provides, by their upstream `--controllers` names.
pub const CONTROLLERS: &[&str] = &[
    "garbagecollector",
    "namespace",
    "replicaset",
    "replicationcontroller",
    "deployment",
    "nodelifecycle",
    "nodeipam",
    "endpointslice",
    "endpointslicemirroring",
    "endpoint",
    "serviceaccount",
    "root-ca-cert-publisher",
    "job",
    "scheduler",
];

/// Short names accepted for convenience.
fn canonical(name: &str) -> &str {
    match name {
        "gc" | "garbage-collector" => "garbagecollector",
        "endpoints" => "endpoint",
        other => other,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown controller {0:?} (known: {known})", known = CONTROLLERS.join(", "))]
    UnknownController(String),
    #[error("kind {0} is not served (or not listable, watchable and deletable)")]
    UnknownKind(String),
    #[error("invalid object: {0}")]
    Invalid(String),
    #[error("a watch store was dropped before it synced")]
    StoreClosed,
    #[error("configuration: {0}")]
    Config(String),
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
}

/// Which controllers run: upstream's `--controllers` list (`*` = all on by default, `name` turns
/// one on, `-name` off) minus `--disable-controllers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub enabled: Vec<&'static str>,
}

impl Selection {
    pub fn parse<S: AsRef<str>>(controllers: &[S], disabled: &[S]) -> Result<Selection, Error> {
        let mut star = false;
        let mut on = Vec::new();
        let mut off = Vec::new();
        let known = |n: &str| -> Result<&'static str, Error> {
            let c = canonical(n);
            CONTROLLERS.iter().copied().find(|k| *k == c).ok_or_else(|| Error::UnknownController(n.to_string()))
        };
        for item in controllers.iter().map(|s| s.as_ref().trim()).filter(|s| !s.is_empty()) {
            match item {
                "*" => star = true,
                _ => match item.strip_prefix('-') {
                    Some(n) => off.push(known(n)?),
                    None => on.push(known(item)?),
                },
            }
        }
        for d in disabled.iter().map(|s| s.as_ref().trim()).filter(|s| !s.is_empty()) {
            off.push(known(d)?);
        }
        let enabled = CONTROLLERS.iter().copied().filter(|c| !off.contains(c) && (star || on.contains(c))).collect();
        Ok(Selection { enabled })
    }

    pub fn all() -> Selection {
        Selection { enabled: CONTROLLERS.to_vec() }
    }

    pub fn is_enabled(&self, name: &str) -> bool {
        self.enabled.contains(&canonical(name))
    }
}

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct Opts {
    pub selection: Selection,
    pub gc: gc::GcOpts,
    /// How often the namespace controller looks at every namespace again.
    pub namespace_resync: Duration,
    pub node_lifecycle: nodelifecycle::LifecycleOpts,
    pub node_ipam: nodeipam::IpamOpts,
    /// Leader election; `None` runs the controllers unconditionally (`--leader-elect=false`).
    pub leader: Option<leader::LeaderOpts>,
    /// The cluster CA (PEM) the `root-ca-cert-publisher` puts in every namespace's
    /// `kube-root-ca.crt` ConfigMap; `None` leaves that controller idle.
    pub root_ca: Option<String>,
    /// Settings of the Job controller (the pod-failure backoff).
    pub job: job::Opts,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            selection: Selection::all(),
            gc: gc::GcOpts::default(),
            namespace_resync: Duration::from_secs(300),
            node_lifecycle: nodelifecycle::LifecycleOpts::default(),
            node_ipam: nodeipam::IpamOpts::default(),
            leader: None,
            root_ca: None,
            job: job::Opts::default(),
        }
    }
}

/// Runs the enabled controllers: always, or (with [`Opts::leader`]) during each term in which
/// this process holds the Lease, stopping them the moment the Lease is lost.
pub async fn run(client: Client, opts: Opts) -> Result<(), Error> {
    if opts.selection.enabled.is_empty() {
        return Ok(());
    }
    let Some(lopts) = opts.leader.clone() else { return run_set(client, opts).await };
    let (tx, mut leading) = tokio::sync::watch::channel(false);
    let elector = tokio::spawn(leader::elect(client.clone(), lopts, tx));
    let _elector = nodeipam::AbortOnDrop(elector);
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return Ok(());
        }
        tokio::select! {
            r = run_set(client.clone(), opts.clone()) => r?,
            _ = leading.wait_for(|l| !*l) => tracing::warn!("leader lease lost: controllers stopped"),
        }
    }
}

/// Discovers the served kinds (retrying until the server answers) and runs the enabled
/// controllers until one of them stops; each is restarted after an error. Dropping the future
/// stops them all.
async fn run_set(client: Client, opts: Opts) -> Result<(), Error> {
    let mut delay = Duration::from_millis(100);
    let kinds = loop {
        match Kinds::discover(&client).await {
            Ok(k) => break Arc::new(k),
            Err(e) => {
                tracing::debug!(error = %e, "controllers: discovery (retrying)");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    };
    tracing::info!(controllers = ?opts.selection.enabled, kinds = kinds.list.len(), "starting controllers");
    let mut tasks = tokio::task::JoinSet::new();
    for name in opts.selection.enabled.iter().copied() {
        let (client, kinds, opts) = (client.clone(), kinds.clone(), opts.clone());
        tasks.spawn(async move {
            loop {
                let r = match name {
                    "garbagecollector" => gc::run(client.clone(), kinds.clone(), opts.gc.clone()).await,
                    "namespace" => namespace::run(client.clone(), kinds.clone(), opts.namespace_resync).await,
                    "replicaset" => replicaset::run::<k8s_openapi::api::apps::v1::ReplicaSet>(client.clone()).await,
                    "replicationcontroller" => {
                        replicaset::run::<k8s_openapi::api::core::v1::ReplicationController>(client.clone()).await
                    }
                    "deployment" => deployment::run(client.clone()).await,
                    "nodelifecycle" => nodelifecycle::run(client.clone(), opts.node_lifecycle.clone()).await,
                    "nodeipam" => nodeipam::run(client.clone(), opts.node_ipam.clone()).await,
                    "endpointslice" => endpointslice::run(client.clone()).await,
                    "endpointslicemirroring" => endpointslice::mirror::run(client.clone()).await,
                    "endpoint" => endpoints::run(client.clone()).await,
                    "serviceaccount" => serviceaccount::run(client.clone()).await,
                    "job" => job::run(client.clone(), opts.job.clone()).await,
                    "root-ca-cert-publisher" => rootca::run(client.clone(), opts.root_ca.clone()).await,
                    "scheduler" => scheduler::run(client.clone()).await,
                    _ => Ok(()),
                };
                if let Err(e) = r {
                    tracing::warn!(controller = name, error = %e, "controller stopped; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn selection_follows_upstreams_controllers_flag() {
        let none: &[&str] = &[];
        let p = |c: &[&str], d: &[&str]| Selection::parse(c, d).map(|s| s.enabled);
        assert_eq!(p(&["*"], none).unwrap(), CONTROLLERS.to_vec());
        assert!(!p(&["*", "-gc"], none).unwrap().contains(&"garbagecollector"));
        assert_eq!(p(&["namespace"], none).unwrap(), vec!["namespace"]);
        assert!(!p(&["*"], &["namespace"]).unwrap().contains(&"namespace"));
        assert_eq!(p(&["-garbagecollector", "*"], none).unwrap(), CONTROLLERS[1..].to_vec());
        assert!(!p(&["-garbagecollector", "*", "-nodeipam"], none).unwrap().contains(&"nodeipam"));
        assert_eq!(p(&["endpoints"], none).unwrap(), vec!["endpoint"]);
        assert!(!p(&["*"], &["scheduler"]).unwrap().contains(&"scheduler"));
        assert_eq!(p(none, none).unwrap(), Vec::<&str>::new());
        assert!(matches!(p(&["*", "-nope"], none), Err(Error::UnknownController(n)) if n == "nope"));
        assert!(Selection::parse(&["*"], none).unwrap().is_enabled("gc"));
    }
}
