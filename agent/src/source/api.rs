//! The API pod source: the pods bound to this node (`spec.nodeName=<node>`), as a [`PodSource`].
//!
//! A `kube::runtime::watcher` lists and then watches; it resumes from the last resourceVersion
//! after a dropped connection, relists after `410 Gone`, and backs off after errors (including an
//! object that does not decode: the event is reported as an error and the watch restarts, never a
//! crash). The task keeps the current set and publishes the whole set after every change, so the
//! mux and the manager stay level-triggered. Mirror pods (static pods shown in the API) are skipped. Until the first list completes nothing is published:
//! the mux waits for every source, so an agent that cannot reach the API keeps its pods.

use super::{PodSet, PodSource};
use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

/// The pods bound to this node, from the API.
pub struct ApiSource {
    rx: watch::Receiver<Option<PodSet>>,
    first: bool,
}

/// Applies one watcher event to the current set (`pods`) and the relist buffer (`init`);
/// returns whether `pods` changed. Pure.
pub fn apply(pods: &mut PodSet, init: &mut Option<PodSet>, ev: Event<Pod>) -> bool {
    // Mirror pods are the API's view of static pods, not pods to run.
    let uid = |p: &Pod| p.metadata.uid.clone().filter(|u| !u.is_empty() && !super::mirror::is_mirror(p));
    match ev {
        Event::Init => {
            *init = Some(PodSet::new());
            false
        }
        Event::InitApply(p) => {
            if let (Some(buf), Some(u)) = (init.as_mut(), uid(&p)) {
                buf.insert(u, p);
            }
            false
        }
        Event::InitDone => {
            let new = init.take().unwrap_or_default();
            let changed = *pods != new;
            *pods = new;
            // Always publish after a (re)list: the first one makes the source ready.
            changed || pods.is_empty()
        }
        Event::Apply(p) => match uid(&p) {
            Some(u) if pods.get(&u) != Some(&p) => {
                pods.insert(u, p);
                true
            }
            _ => false,
        },
        Event::Delete(p) => uid(&p).is_some_and(|u| pods.remove(&u).is_some()),
    }
}

impl ApiSource {
    /// Starts the watch of pods with `spec.nodeName=<node_name>`.
    pub fn spawn(client: kube::Client, node_name: &str) -> ApiSource {
        let (tx, rx) = watch::channel(None);
        let api: Api<Pod> = Api::all(client);
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
        tokio::spawn(
            async move {
                let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
                let mut pods = PodSet::new();
                let mut init: Option<PodSet> = None;
                let mut listed = false;
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(ev) => {
                            let done = matches!(ev, Event::InitDone);
                            if apply(&mut pods, &mut init, ev) || (done && !listed) {
                                if done && !listed {
                                    info!(pods = pods.len(), "pods bound to this node listed");
                                }
                                listed |= done;
                                debug!(pods = pods.len(), "api pod set changed");
                                if listed && tx.send(Some(pods.clone())).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => warn!(error = %e, "pod watch failed; retrying with backoff"),
                    }
                }
                warn!("pod watch stream ended");
            }
            .instrument(info_span!("api_source", node = %node_name)),
        );
        ApiSource { rx, first: true }
    }
}

#[async_trait]
impl PodSource for ApiSource {
    fn name(&self) -> &'static str {
        "api"
    }

    async fn next(&mut self) -> PodSet {
        if !self.first && self.rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        self.first = false;
        loop {
            if let Some(set) = self.rx.borrow_and_update().clone() {
                return set;
            }
            if self.rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(uid: &str, rv: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.resource_version = Some(rv.into());
        p
    }

    #[test]
    fn relist_replaces_the_set_and_events_update_it() {
        let mut pods = PodSet::new();
        let mut init = None;
        assert!(!apply(&mut pods, &mut init, Event::Init));
        assert!(!apply(&mut pods, &mut init, Event::InitApply(pod("a", "1"))));
        assert!(!apply(&mut pods, &mut init, Event::InitApply(Pod::default())), "no uid: ignored");
        assert!(apply(&mut pods, &mut init, Event::InitDone));
        assert_eq!(pods.keys().collect::<Vec<_>>(), vec!["a"]);
        assert!(!apply(&mut pods, &mut init, Event::Apply(pod("a", "1"))), "same object: no change");
        assert!(apply(&mut pods, &mut init, Event::Apply(pod("a", "2"))));
        assert!(apply(&mut pods, &mut init, Event::Apply(pod("b", "3"))));
        assert!(apply(&mut pods, &mut init, Event::Delete(pod("a", "4"))));
        assert!(!apply(&mut pods, &mut init, Event::Delete(pod("zz", "5"))));
        let mut mirror = pod("m", "6");
        mirror.metadata.annotations = Some([(super::super::mirror::CONFIG_MIRROR.to_string(), "h".to_string())].into());
        assert!(!apply(&mut pods, &mut init, Event::Apply(mirror)), "mirror pods are not run");
        // A relist after 410 that no longer has b drops it.
        apply(&mut pods, &mut init, Event::Init);
        assert!(apply(&mut pods, &mut init, Event::InitDone));
        assert!(pods.is_empty());
    }
}
