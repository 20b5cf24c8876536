//! An in-memory [`Namespaces`] for unit tests (feature `test-helpers`): names only, with
//! injectable failures, so the pod worker and the orphan sweep run without root.

use super::{Namespaces, NetnsError, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    names: BTreeSet<String>,
    fail_creates: u32,
    fail_removes: u32,
    calls: Vec<String>,
}

/// See the module docs. Clones share state.
#[derive(Clone, Default)]
pub struct FakeNamespaces {
    state: Arc<Mutex<State>>,
}

const DIR: &str = "/fake/netns";

impl FakeNamespaces {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The names of the namespaces that exist.
    pub fn names(&self) -> Vec<String> {
        self.lock().names.iter().cloned().collect()
    }

    /// Makes a namespace exist (e.g. one left by a crash).
    pub fn insert(&self, name: &str) {
        self.lock().names.insert(name.to_string());
    }

    /// The next `n` creates fail.
    pub fn fail_creates(&self, n: u32) {
        self.lock().fail_creates = n;
    }

    /// The next `n` removes fail.
    pub fn fail_removes(&self, n: u32) {
        self.lock().fail_removes = n;
    }

    /// Every call so far, as `"verb name"` strings.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }
}

fn name_of(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}

fn injected(path: &Path, op: &'static str) -> NetnsError {
    NetnsError::Io { path: path.to_path_buf(), op, source: std::io::Error::other("injected failure") }
}

impl Namespaces for FakeNamespaces {
    fn path(&self, name: &str) -> PathBuf {
        Path::new(DIR).join(name)
    }

    fn create(&self, name: &str) -> Result<PathBuf> {
        super::validate_name(name)?;
        let path = self.path(name);
        let mut st = self.lock();
        st.calls.push(format!("create {name}"));
        if st.fail_creates > 0 {
            st.fail_creates -= 1;
            return Err(injected(&path, "create"));
        }
        st.names.insert(name.to_string());
        Ok(path)
    }

    fn remove(&self, path: &Path) -> Result<()> {
        let name = name_of(path);
        let mut st = self.lock();
        st.calls.push(format!("remove {name}"));
        if st.fail_removes > 0 {
            st.fail_removes -= 1;
            return Err(injected(path, "remove"));
        }
        st.names.remove(&name);
        Ok(())
    }

    fn list(&self) -> Result<Vec<PathBuf>> {
        Ok(self.lock().names.iter().map(|n| self.path(n)).collect())
    }
}
