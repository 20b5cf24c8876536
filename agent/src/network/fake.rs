//! An in-memory [`PodNetwork`] for unit tests (feature `test-helpers`): it hands out IPs, keeps
//! attachments per sandbox, can fail the next ADDs or DELs, and can hold ADDs until released (to
//! reproduce races with the orphan sweep).

use super::{NetworkError, PodNetwork, PodRef};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Default)]
struct State {
    attachments: BTreeMap<String, String>,
    next_ip: u32,
    fail_setups: u32,
    fail_teardowns: u32,
    setups_waiting: u32,
    calls: Vec<String>,
}

/// See the module docs. Clones share state.
#[derive(Clone)]
pub struct FakeNetwork {
    state: Arc<Mutex<State>>,
    hold: Arc<watch::Sender<bool>>,
}

impl Default for FakeNetwork {
    fn default() -> Self {
        FakeNetwork { state: Arc::default(), hold: Arc::new(watch::channel(false).0) }
    }
}

impl FakeNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Sandbox id → IP of every attachment.
    pub fn attachments(&self) -> BTreeMap<String, String> {
        self.lock().attachments.clone()
    }

    /// The next `n` ADDs fail.
    pub fn fail_setups(&self, n: u32) {
        self.lock().fail_setups = n;
    }

    /// The next `n` DELs fail.
    pub fn fail_teardowns(&self, n: u32) {
        self.lock().fail_teardowns = n;
    }

    /// ADDs wait (after recording the call) until [`FakeNetwork::release`].
    pub fn hold_setups(&self) {
        self.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.hold.send_replace(false);
    }

    /// ADDs currently held.
    pub fn setups_waiting(&self) -> u32 {
        self.lock().setups_waiting
    }

    /// Every call so far, as `"verb sandbox"` strings.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }
}

fn injected(op: &'static str, sandbox: &str) -> NetworkError {
    NetworkError { op, sandbox: sandbox.to_string(), message: "injected failure".into() }
}

#[async_trait]
impl PodNetwork for FakeNetwork {
    async fn setup(&self, sandbox_id: &str, _netns: &Path, _pod: &PodRef) -> Result<Option<String>, NetworkError> {
        self.lock().calls.push(format!("add {sandbox_id}"));
        let mut rx = self.hold.subscribe();
        if *rx.borrow_and_update() {
            self.lock().setups_waiting += 1;
            let _ = rx.wait_for(|held| !held).await;
            self.lock().setups_waiting -= 1;
        }
        let mut st = self.lock();
        if st.fail_setups > 0 {
            st.fail_setups -= 1;
            return Err(injected("ADD", sandbox_id));
        }
        if let Some(ip) = st.attachments.get(sandbox_id) {
            return Ok(Some(ip.clone()));
        }
        st.next_ip += 1;
        let ip = format!("10.244.0.{}", st.next_ip + 1);
        st.attachments.insert(sandbox_id.to_string(), ip.clone());
        Ok(Some(ip))
    }

    async fn teardown(&self, sandbox_id: &str, _netns: Option<&Path>, _pod: &PodRef) -> Result<(), NetworkError> {
        let mut st = self.lock();
        st.calls.push(format!("del {sandbox_id}"));
        if st.fail_teardowns > 0 {
            st.fail_teardowns -= 1;
            return Err(injected("DEL", sandbox_id));
        }
        st.attachments.remove(sandbox_id);
        Ok(())
    }

    async fn gc(&self, valid: &[String]) -> Result<(), NetworkError> {
        let mut st = self.lock();
        st.calls.push(format!("gc {}", valid.join(",")));
        st.attachments.retain(|k, _| valid.contains(k));
        Ok(())
    }
}
