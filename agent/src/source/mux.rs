//! Merges pod sources into the desired set (see the module docs of [`super`]).

use super::{CONFIG_SOURCE, PodSet, PodSource};
use tokio::sync::{mpsc, watch};
use tracing::warn;

/// Merges the latest set of every source (in source order): pods keyed by uid, each stamped with
/// its source. A uid two sources claim goes to the earlier source; the other copy is dropped and
/// reported. Pure.
pub fn merge(sets: &[(&'static str, PodSet)]) -> PodSet {
    let mut out = PodSet::new();
    for (name, set) in sets {
        for (uid, pod) in set {
            if out.contains_key(uid) {
                warn!(uid, source = name, "pod uid already provided by another source; ignored");
                continue;
            }
            let mut pod = pod.clone();
            pod.metadata.annotations.get_or_insert_with(Default::default).insert(CONFIG_SOURCE.into(), (*name).into());
            out.insert(uid.clone(), pod);
        }
    }
    out
}

/// Runs the sources and publishes their merged set.
pub struct Mux {
    rx: watch::Receiver<Option<PodSet>>,
}

impl Mux {
    /// Spawns one task per source and a merger. The published value stays `None` until every
    /// source has reported once.
    pub fn spawn(sources: Vec<Box<dyn PodSource>>) -> Mux {
        let (tx, rx) = watch::channel(None);
        let (up_tx, mut up_rx) = mpsc::channel::<(usize, PodSet)>(16);
        let names: Vec<&'static str> = sources.iter().map(|s| s.name()).collect();
        for (i, mut src) in sources.into_iter().enumerate() {
            let up_tx = up_tx.clone();
            tokio::spawn(async move {
                loop {
                    let set = src.next().await;
                    if up_tx.send((i, set)).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(up_tx);
        tokio::spawn(async move {
            let mut latest: Vec<Option<PodSet>> = vec![None; names.len()];
            while let Some((i, set)) = up_rx.recv().await {
                if let Some(slot) = latest.get_mut(i) {
                    *slot = Some(set);
                }
                if latest.iter().any(Option::is_none) {
                    continue;
                }
                let sets: Vec<(&'static str, PodSet)> =
                    names.iter().zip(&latest).map(|(n, s)| (*n, s.clone().unwrap_or_default())).collect();
                let merged = merge(&sets);
                tx.send_if_modified(|cur| {
                    if cur.as_ref() == Some(&merged) {
                        false
                    } else {
                        *cur = Some(merged);
                        true
                    }
                });
            }
        });
        Mux { rx }
    }

    /// Waits for the first merged set (all sources ready) or a change, and returns it.
    pub async fn changed(&mut self) -> Option<PodSet> {
        loop {
            if self.rx.changed().await.is_err() {
                return None;
            }
            if let Some(set) = self.rx.borrow_and_update().clone() {
                return Some(set);
            }
        }
    }

    /// The current merged set (`None` until every source has reported).
    pub fn current(&self) -> Option<PodSet> {
        self.rx.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use async_trait::async_trait;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(uid: &str, name: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.name = Some(name.into());
        p
    }

    #[test]
    fn merge_stamps_sources_and_first_source_wins() {
        let a = PodSet::from([("u1".to_string(), pod("u1", "from-file"))]);
        let b = PodSet::from([("u1".to_string(), pod("u1", "from-api")), ("u2".to_string(), pod("u2", "x"))]);
        let m = merge(&[("file", a), ("api", b)]);
        assert_eq!(m.len(), 2);
        assert_eq!(m["u1"].metadata.name.as_deref(), Some("from-file"));
        let src = |uid: &str| m[uid].metadata.annotations.as_ref().unwrap()[CONFIG_SOURCE].clone();
        assert_eq!((src("u1"), src("u2")), ("file".to_string(), "api".to_string()));
    }

    /// A source that reports the sets it is given, one per `next`.
    struct Scripted {
        name: &'static str,
        rx: mpsc::Receiver<PodSet>,
    }

    #[async_trait]
    impl PodSource for Scripted {
        fn name(&self) -> &'static str {
            self.name
        }
        async fn next(&mut self) -> PodSet {
            match self.rx.recv().await {
                Some(s) => s,
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test]
    async fn nothing_is_published_until_every_source_reported() {
        let (file_tx, file_rx) = mpsc::channel(4);
        let (api_tx, api_rx) = mpsc::channel(4);
        let mut mux = Mux::spawn(vec![
            Box::new(Scripted { name: "file", rx: file_rx }),
            Box::new(Scripted { name: "api", rx: api_rx }),
        ]);
        file_tx.send(PodSet::from([("u1".to_string(), pod("u1", "a"))])).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(mux.current().is_none(), "published before the api source was ready");
        api_tx.send(PodSet::new()).await.unwrap();
        let set = mux.changed().await.unwrap();
        assert_eq!(set.keys().cloned().collect::<Vec<_>>(), vec!["u1".to_string()]);
        api_tx.send(PodSet::from([("u2".to_string(), pod("u2", "b"))])).await.unwrap();
        let set = mux.changed().await.unwrap();
        assert_eq!(set.len(), 2);
    }
}
