//! Where pod statuses go: the [`StatusSink`] seam.
//!
//! Each pod worker computes its pod's status every turn (from the runtime, probes and `pod::step`)
//! and hands the whole pod to the sink; it never keeps a status map of its own. The sink decides
//! what to do with repeats: [`local::LocalStatus`] stores the latest pod for the local endpoint
//! (`/pods`); [`api::ApiStatus`] keeps the last status it sent per uid, diffs, and sends coalesced
//! `PATCH pods/<name>/status` (kubelet's status manager), which is why `set` takes the
//! full pod and must be cheap and non-blocking.

pub mod api;
pub mod local;
pub mod table;

use k8s_openapi::api::core::v1::Pod;

pub use api::ApiStatus;
pub use local::LocalStatus;

pub trait StatusSink: Send + Sync + 'static {
    /// The latest view of the pod with uid `uid` (spec as desired, status as computed).
    fn set(&self, uid: &str, pod: &Pod);
    /// The pod is gone from the node (torn down).
    fn remove(&self, uid: &str);
}
