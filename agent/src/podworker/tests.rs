//! The pod worker, table-tested over fakes (runtime, cgroups, netns, pod network): crash →
//! backoff, sandbox failures clean up, adoption after an agent restart, teardown retried until
//! clean, and the orphan sweep never racing a sandbox being created.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::cgroups::fake::FakeCgroups;
use crate::events::EventRing;
use crate::netns::fake::FakeNamespaces;
use crate::network::fake::FakeNetwork;
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{TaskState, labels};
use crate::status::LocalStatus;
use std::time::Instant;

type M = Manager<FakeRuntime, FakeCgroups, FakeNetwork>;

struct Node {
    rt: Arc<FakeRuntime>,
    cg: Arc<FakeCgroups>,
    net: Arc<FakeNetwork>,
    ns: FakeNamespaces,
    events: Arc<EventRing>,
    dir: tempfile::TempDir,
}

const POD: &str = r#"
metadata: {name: p, namespace: default, uid: u1}
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 1
  containers: [{name: a, image: busybox}]
"#;

fn pods(yaml: &str) -> BTreeMap<String, Pod> {
    let p: Pod = serde_yaml::from_str(yaml).unwrap();
    BTreeMap::from([(p.metadata.uid.clone().unwrap(), p)])
}

impl Node {
    fn new() -> Self {
        let rt = FakeRuntime::new();
        for name in ["pause", "busybox"] {
            rt.add_image(crate::runtime::ImageConfig {
                name: name.into(),
                id: format!("sha256:{name}"),
                cmd: vec!["/bin/sh".into()],
                ..Default::default()
            });
        }
        Node {
            rt: Arc::new(rt),
            cg: Arc::new(FakeCgroups::new()),
            net: Arc::new(FakeNetwork::new()),
            ns: FakeNamespaces::new(),
            events: Arc::new(EventRing::default()),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn cfg(&self, orphan_grace: Duration) -> ManagerConfig {
        ManagerConfig {
            node_name: "n1".into(),
            host_ip: "192.168.0.1".into(),
            run_dir: self.dir.path().join("run"),
            log_root: self.dir.path().join("logs"),
            logger: "/bin/true".into(),
            pause_image: "pause".into(),
            resolv_conf: self.dir.path().join("resolv.conf"),
            pod: crate::pod::Config {
                backoff_base: Duration::from_secs(1),
                backoff_max: Duration::from_secs(4),
                backoff_reset: Duration::from_secs(600),
            },
            resync: Duration::from_millis(100),
            memory_capacity: 1 << 30,
            pids_limit: Some(100),
            orphan_grace,
            oom_score_floor: None,
            teardown_retry: Duration::from_millis(20),
            registry_config: None,
        }
    }

    async fn manager(&self, status: Arc<LocalStatus>, orphan_grace: Duration) -> Arc<M> {
        let seams = Seams {
            runtime: self.rt.clone(),
            cgroups: self.cg.clone(),
            network: self.net.clone(),
            netns: Arc::new(self.ns.clone()),
            status,
            events: self.events.clone(),
        };
        let m = Manager::new(seams, self.cfg(orphan_grace));
        m.start().await.unwrap();
        m
    }

    /// The instance `attempt` of container `name`, if it exists.
    fn instance(&self, name: &str, attempt: u32) -> Option<crate::runtime::ContainerInfo> {
        self.rt.containers().into_iter().find(|c| {
            c.label(labels::CONTAINER_NAME) == Some(name) && c.label(labels::ATTEMPT) == Some(&attempt.to_string())
        })
    }

    fn running(&self, name: &str, attempt: u32) -> bool {
        self.instance(name, attempt).is_some_and(|c| matches!(c.task, TaskState::Running { .. }))
    }

    fn has_event(&self, reason: &str) -> bool {
        self.events.recent().iter().any(|e| e.reason == reason)
    }
}

async fn wait(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const T: Duration = Duration::from_secs(5);

fn waiting_reason(status: &LocalStatus) -> Option<String> {
    let p = status.get("u1")?;
    let cs = p.status?.container_statuses?;
    cs.first()?.state.as_ref()?.waiting.as_ref()?.reason.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restarts_at_once_then_backs_off() {
    let node = Node::new();
    let status = Arc::new(LocalStatus::new());
    let m = node.manager(status.clone(), Duration::from_secs(3600)).await;
    m.sync(pods(POD)).await.unwrap();
    wait("first instance", T, || node.running("a", 0)).await;

    // First exit: restarted immediately (kubelet's doBackOff has no entry yet).
    let t0 = Instant::now();
    node.rt.exit(&node.instance("a", 0).unwrap().id, 1);
    wait("second instance", T, || node.running("a", 1)).await;
    assert!(t0.elapsed() < Duration::from_millis(900), "first restart took {:?}", t0.elapsed());

    // Second quick exit: CrashLoopBackOff for the base delay (1 s), then the third instance.
    let t1 = Instant::now();
    node.rt.exit(&node.instance("a", 1).unwrap().id, 1);
    wait("CrashLoopBackOff", T, || waiting_reason(&status).as_deref() == Some("CrashLoopBackOff")).await;
    wait("third instance", T, || node.instance("a", 2).is_some()).await;
    assert!(t1.elapsed() >= Duration::from_secs(1), "backoff too short: {:?}", t1.elapsed());
    let lvl = node.instance("a", 2).unwrap().labels[labels::BACKOFF_LEVEL].clone();
    assert_eq!(lvl, "2");
}

/// A sandbox that fails at any step after the netns exists leaves neither netns nor CNI
/// attachment behind, and the retry (after the sandbox backoff) succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sandbox_cleans_up_then_retries() {
    for case in ["netns create", "cni add", "pause create"] {
        let node = Node::new();
        let status = Arc::new(LocalStatus::new());
        match case {
            "netns create" => node.ns.fail_creates(1),
            "cni add" => node.net.fail_setups(1),
            _ => node.rt.fail_creates(1),
        }
        let m = node.manager(status.clone(), Duration::from_secs(3600)).await;
        m.sync(pods(POD)).await.unwrap();
        wait("the sandbox failure", T, || node.has_event("FailedCreatePodSandBox")).await;
        let sid = sandbox_id("u1", 0);
        assert!(node.ns.names().is_empty(), "{case}: netns left: {:?}", node.ns.names());
        assert!(node.net.attachments().is_empty(), "{case}: CNI attachment left");
        assert!(m.shared.owned_sandboxes().is_empty(), "{case}: ownership not released");
        wait("the retried sandbox", T, || node.running("a", 0)).await;
        assert_eq!(node.ns.names(), vec![sid.clone()], "{case}");
        assert_eq!(node.net.attachments().keys().cloned().collect::<Vec<_>>(), vec![sid], "{case}");
    }
}

/// A failed CNI DEL during sandbox-failure cleanup is retried by the worker until it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_cleanup_of_a_failed_sandbox_is_retried() {
    let node = Node::new();
    let status = Arc::new(LocalStatus::new());
    node.rt.fail_creates(1);
    node.net.fail_teardowns(2);
    let m = node.manager(status.clone(), Duration::from_secs(3600)).await;
    m.sync(pods(POD)).await.unwrap();
    wait("the sandbox failure", T, || node.has_event("FailedCreatePodSandBox")).await;
    let sid = sandbox_id("u1", 0);
    // The attachment is held by the worker until DEL succeeds, and the sweep leaves it alone.
    assert!(m.shared.owned_sandboxes().contains_key(&sid));
    wait("the retried DEL", T, || node.net.calls().iter().filter(|c| **c == format!("del {sid}")).count() >= 3).await;
    wait("the pod running", T, || node.running("a", 0)).await;
}

/// A second manager over the same runtime (an agent restart) adopts the running pod: it creates,
/// starts, kills and removes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_manager_adopts_without_touching() {
    let node = Node::new();
    let m1 = node.manager(Arc::new(LocalStatus::new()), Duration::from_secs(3600)).await;
    m1.sync(pods(POD)).await.unwrap();
    wait("the pod running", T, || node.running("a", 0)).await;
    drop(m1);
    let before = node.rt.calls().len();

    let status = Arc::new(LocalStatus::new());
    let m2 = node.manager(status.clone(), Duration::ZERO).await;
    m2.sync(pods(POD)).await.unwrap();
    wait("the adopted pod's status", T, || {
        status.get("u1").and_then(|p| p.status?.phase).as_deref() == Some("Running")
    })
    .await;
    // A sweep with no grace does not touch the adopted sandbox either.
    let report = m2.gc().await.unwrap();
    assert!(report.netns_removed.is_empty(), "{report:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<String> = node.rt.calls()[before..].to_vec();
    assert!(after.is_empty(), "the restarted manager acted: {after:?}");
    assert_eq!(node.ns.names(), vec![sandbox_id("u1", 0)]);
    assert_eq!(node.net.attachments().len(), 1);
}

/// Deleting a pod whose CNI DEL fails: the worker keeps retrying until everything is gone, and
/// only then ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_cni_del_is_retried_until_clean() {
    let node = Node::new();
    let status = Arc::new(LocalStatus::new());
    let m = node.manager(status.clone(), Duration::from_secs(3600)).await;
    m.sync(pods(POD)).await.unwrap();
    wait("the pod running", T, || node.running("a", 0)).await;
    let sid = sandbox_id("u1", 0);
    node.net.fail_teardowns(4);
    m.sync(BTreeMap::new()).await.unwrap();
    wait("the worker to finish", T, || m.worker_count() == 0).await;
    let dels = node.net.calls().iter().filter(|c| **c == format!("del {sid}")).count();
    assert!(dels >= 5, "{dels} DELs");
    assert!(node.has_event("FailedKillPod"));
    assert!(node.net.attachments().is_empty());
    assert!(node.ns.names().is_empty());
    assert!(node.rt.containers().is_empty());
    assert!(node.cg.pod("u1").is_none());
    assert!(status.get("u1").is_none());
}

/// The orphan sweep (issue 16, item 5): a netns younger than the grace period is deferred, an old
/// unclaimed one removed, and a netns that a worker is wiring (CNI ADD in flight) is never
/// touched, even with no grace at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_spares_young_and_owned_netns() {
    let node = Node::new();
    node.ns.insert("stray");
    let m = node.manager(Arc::new(LocalStatus::new()), Duration::from_millis(300)).await;
    let r = m.gc().await.unwrap();
    assert_eq!((r.netns_deferred.clone(), r.netns_removed.clone()), (vec!["stray".to_string()], vec![]));
    assert_eq!(node.ns.names(), vec!["stray".to_string()]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r = m.gc().await.unwrap();
    assert_eq!(r.netns_removed, vec!["stray".to_string()]);
    assert!(node.ns.names().is_empty());

    let m = node.manager(Arc::new(LocalStatus::new()), Duration::ZERO).await;
    node.net.hold_setups();
    m.sync(pods(POD)).await.unwrap();
    wait("CNI ADD in flight", T, || node.net.setups_waiting() == 1).await;
    let sid = sandbox_id("u1", 0);
    for _ in 0..2 {
        let r = m.gc().await.unwrap();
        assert!(r.netns_removed.is_empty() && r.netns_deferred.is_empty(), "{r:?}");
        assert_eq!(node.ns.names(), vec![sid.clone()]);
    }
    assert!(node.cg.pod("u1").is_some(), "the new pod's cgroup must survive the sweep");
    node.net.release();
    wait("the pod running", T, || node.running("a", 0)).await;
    m.gc().await.unwrap();
    assert_eq!(node.ns.names(), vec![sid.clone()]);
    assert_eq!(node.net.attachments().keys().cloned().collect::<Vec<_>>(), vec![sid]);
}
