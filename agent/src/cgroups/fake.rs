//! A stateful in-memory [`Cgroups`] for unit tests of the pod manager (feature `test-helpers`).
//!
//! It records the desired state per pod, lets a test mark pods as holding processes (so
//! removal fails with [`CgroupError::Busy`] like the real one) and counts calls.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::{CgroupError, Cgroups, PodCgroup, PodCgroupRef, Result, validate_component};

#[derive(Debug, Default)]
struct State {
    root_ensured: bool,
    pods: BTreeMap<String, PodCgroup>,
    pids: BTreeMap<String, Vec<i32>>,
    ensure_calls: usize,
    remove_calls: usize,
    burstable_milli: i64,
}

/// In-memory fake of the cgroup filesystem.
#[derive(Debug)]
pub struct FakeCgroups {
    root_name: String,
    state: Mutex<State>,
}

impl Default for FakeCgroups {
    fn default() -> Self {
        FakeCgroups { root_name: super::DEFAULT_ROOT_NAME.to_string(), state: Mutex::new(State::default()) }
    }
}

impl FakeCgroups {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The recorded desired state of a pod, if its cgroup exists.
    pub fn pod(&self, uid: &str) -> Option<PodCgroup> {
        self.state().pods.get(uid).cloned()
    }

    /// Pretends the pod cgroup holds these processes (empty = none).
    pub fn set_pids(&self, uid: &str, pids: Vec<i32>) {
        self.state().pids.insert(uid.to_string(), pids);
    }

    /// The last value given to [`Cgroups::set_burstable_cpu_requests`].
    pub fn burstable_cpu_requests(&self) -> i64 {
        self.state().burstable_milli
    }

    pub fn root_ensured(&self) -> bool {
        self.state().root_ensured
    }

    /// (ensure_pod calls, remove_pod calls) so far.
    pub fn calls(&self) -> (usize, usize) {
        let s = self.state();
        (s.ensure_calls, s.remove_calls)
    }
}

impl Cgroups for FakeCgroups {
    fn ensure_root(&self) -> Result<()> {
        self.state().root_ensured = true;
        Ok(())
    }

    fn set_burstable_cpu_requests(&self, total_milli: i64) -> Result<()> {
        self.state().burstable_milli = total_milli;
        Ok(())
    }

    fn ensure_pod(&self, pod: &PodCgroup) -> Result<()> {
        validate_component(&pod.uid)?;
        let mut s = self.state();
        s.ensure_calls += 1;
        s.root_ensured = true;
        s.pods.insert(pod.uid.clone(), pod.clone());
        Ok(())
    }

    fn remove_pod(&self, uid: &str) -> Result<()> {
        validate_component(uid)?;
        let mut s = self.state();
        s.remove_calls += 1;
        if let Some(pids) = s.pids.get(uid).filter(|p| !p.is_empty())
            && let Some(pod) = s.pods.get(uid)
        {
            let path = PathBuf::from(super::pod_cgroup_path(&self.root_name, pod.qos, uid));
            return Err(CgroupError::Busy { path, pids: pids.clone() });
        }
        s.pods.remove(uid);
        s.pids.remove(uid);
        Ok(())
    }

    fn pod_pids(&self, uid: &str) -> Result<Vec<i32>> {
        let s = self.state();
        Ok(if s.pods.contains_key(uid) { s.pids.get(uid).cloned().unwrap_or_default() } else { Vec::new() })
    }

    fn kill_pod_processes(&self, uid: &str) -> Result<Vec<i32>> {
        Ok(self.state().pids.remove(uid).unwrap_or_default())
    }

    fn list_pods(&self) -> Result<Vec<PodCgroupRef>> {
        let mut out: Vec<PodCgroupRef> =
            self.state().pods.values().map(|p| PodCgroupRef { uid: p.uid.clone(), qos: p.qos }).collect();
        out.sort();
        Ok(out)
    }

    fn root_name(&self) -> &str {
        &self.root_name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{QosClass, ResourceConfig};

    #[test]
    fn fake_tracks_pods_and_busy_state() {
        let fake = FakeCgroups::new();
        let pod = PodCgroup { uid: "u".into(), qos: QosClass::Burstable, resources: ResourceConfig::default() };
        fake.ensure_pod(&pod).expect("ensure");
        assert_eq!(fake.pod("u"), Some(pod.clone()));
        fake.set_pids("u", vec![7]);
        assert_eq!(fake.pod_pids("u").expect("pids"), vec![7]);
        assert!(matches!(fake.remove_pod("u"), Err(CgroupError::Busy { .. })));
        assert_eq!(fake.kill_pod_processes("u").expect("kill"), vec![7]);
        fake.remove_pod("u").expect("remove");
        fake.remove_pod("u").expect("idempotent");
        assert!(fake.list_pods().expect("list").is_empty());
        assert_eq!(fake.calls(), (1, 3));
    }
}
