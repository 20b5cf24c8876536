//! Where pods come from: pod sources, merged into the one desired set the manager syncs to.
//!
//! Kubelet's config sources (file, http, apiserver) each report the full set of pods they want on
//! this node; a mux merges them and the pod workers converge. Here a [`PodSource`] yields its full
//! set whenever it may have changed ([`file::FileSource`] today: static pods; the API source next: a
//! `kube::runtime::watcher` on `spec.nodeName=<node>` feeding a reflector store, whose `next` returns
//! the store's pods after each watcher event). Full sets, not deltas, keep sources level-triggered:
//! a lost event cannot lose a pod.
//!
//! [`mux::Mux`] merges by uid and publishes only once *every* source has reported once (kubelet's
//! "sources ready"): until the API source has listed, an empty set from it must not make the
//! manager terminate the pods it is about to report. Each pod is stamped with the source it came
//! from (`kubernetes.io/config.source`), which is how static pods will be told apart for their
//! mirror pods in the API.

pub mod api;
pub mod file;
pub mod mirror;
pub mod mux;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;

pub use api::ApiSource;
pub use file::FileSource;
pub use mux::Mux;

/// A source's pods, keyed by uid.
pub type PodSet = BTreeMap<String, Pod>;

/// The annotation naming a pod's source (kubelet's `kubernetes.io/config.source`).
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";

#[async_trait]
pub trait PodSource: Send + 'static {
    /// The source's name (`file`, `api`), stamped into [`CONFIG_SOURCE`].
    fn name(&self) -> &'static str;
    /// Returns the full set of pods the source wants on this node: at once on the first call, then
    /// whenever it may have changed (returning an unchanged set is fine; the mux drops repeats).
    async fn next(&mut self) -> PodSet;
}
