//! [`StatusSink`] for the local endpoint: the latest pod per uid, in memory.

use super::StatusSink;
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::sync::RwLock;

#[derive(Default)]
pub struct LocalStatus {
    pods: RwLock<BTreeMap<String, Pod>>,
}

impl LocalStatus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every pod with its status, by uid.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    pub fn get(&self, uid: &str) -> Option<Pod> {
        self.pods.read().ok().and_then(|m| m.get(uid).cloned())
    }
}

impl StatusSink for LocalStatus {
    fn set(&self, uid: &str, pod: &Pod) {
        if let Ok(mut m) = self.pods.write()
            && m.get(uid) != Some(pod)
        {
            m.insert(uid.to_string(), pod.clone());
        }
    }

    fn remove(&self, uid: &str) {
        if let Ok(mut m) = self.pods.write() {
            m.remove(uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_and_forgets_removed() {
        let s = LocalStatus::new();
        let mut p = Pod::default();
        p.metadata.name = Some("a".into());
        s.set("u1", &p);
        p.metadata.name = Some("b".into());
        s.set("u1", &p);
        assert_eq!(s.pods().len(), 1);
        assert_eq!(s.get("u1").and_then(|p| p.metadata.name), Some("b".into()));
        s.remove("u1");
        assert!(s.pods().is_empty());
    }
}
