//! Node controllers against a real keelson-apiserver with hollow nodes: a node whose Lease stops
//! goes Unknown/NotReady with the unreachable NoExecute taint after the grace period, its pods are
//! evicted after their tolerationSeconds (the DefaultTolerationSeconds admission's, a pod's own, or
//! never), and it is untainted when it comes back; node IPAM gives unique pod CIDRs that survive a
//! server restart and reports exhaustion; leader election on etcd keeps one active controller set
//! among two API servers and fails over when the leader hangs (measured times are printed).

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use keelson_tests::api::{ApiServer, Etcd};
use keelson_tests::hollow::{HollowNodes, HollowOpts};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn condition(node: &Node, ty: &str) -> Option<(String, Option<String>)> {
    let c = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == ty)?;
    Some((c.status.clone(), c.reason.clone()))
}

fn taint_keys(node: &Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| ts.iter().filter(|t| t.effect == "NoExecute").map(|t| t.key.clone()).collect())
        .unwrap_or_default()
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn create_pod(pods: &Api<Pod>, name: &str, node: &str, tolerations: Value) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "tolerations": tolerations,
                 "containers": [{"name": "c", "image": "example.invalid/x:1"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
}

async fn deleting(pods: &Api<Pod>, name: &str) -> bool {
    pods.get_opt(name).await.unwrap().is_none_or(|p| p.metadata.deletion_timestamp.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_tainted_and_its_pods_evicted_by_toleration_seconds() {
    let (grace, tol) = (6u64, 5u64);
    let api = ApiServer::start(&[
        &format!("--node-monitor-grace-period={grace}s"),
        &format!("--default-not-ready-toleration-seconds={tol}"),
        &format!("--default-unreachable-toleration-seconds={tol}"),
    ])
    .unwrap();
    let client = api.client().await.unwrap();
    let opts = HollowOpts { lease_period: Duration::from_millis(500), ..HollowOpts::default() };
    let hollow = HollowNodes::start(client.clone(), &["nl-a", "nl-b"], opts).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    create_pod(&pods, "defaulted", "nl-a", json!(null)).await;
    let unreach = |secs: Value| json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": secs}]);
    create_pod(&pods, "zero", "nl-a", unreach(json!(0))).await;
    create_pod(&pods, "forever", "nl-a", unreach(json!(null))).await;
    create_pod(&pods, "elsewhere", "nl-b", json!(null)).await;

    // DefaultTolerationSeconds admission: both tolerations, with the configured seconds; a pod's
    // own toleration for one key is kept and only the other is added.
    let tols = |p: &Pod| -> Vec<(String, Option<i64>)> {
        p.spec
            .as_ref()
            .unwrap()
            .tolerations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|t| (t.key.unwrap_or_default(), t.toleration_seconds))
            .collect()
    };
    let d = pods.get("defaulted").await.unwrap();
    assert_eq!(tols(&d), vec![(NOT_READY.to_string(), Some(tol as i64)), (UNREACHABLE.to_string(), Some(tol as i64))]);
    let z = pods.get("zero").await.unwrap();
    assert_eq!(tols(&z), vec![(UNREACHABLE.to_string(), Some(0)), (NOT_READY.to_string(), Some(tol as i64))]);

    for name in ["defaulted", "zero", "forever", "elsewhere"] {
        eventually(&format!("pod {name} Ready"), Duration::from_secs(20), || async {
            pod_ready(&pods.get(name).await.ok()?).then_some(())
        })
        .await;
    }
    // Live nodes are left alone for longer than the grace period.
    tokio::time::sleep(Duration::from_secs(grace + 2)).await;
    for n in ["nl-a", "nl-b"] {
        let node = nodes.get(n).await.unwrap();
        assert_eq!(condition(&node, "Ready").unwrap().0, "True", "{n} touched while alive");
        assert!(taint_keys(&node).is_empty(), "{n} tainted while alive");
    }

    hollow.stop("nl-a");
    let t0 = Instant::now();
    let tainted = eventually("nl-a Unknown and tainted unreachable", Duration::from_secs(grace + 10), || async {
        let n = nodes.get("nl-a").await.ok()?;
        (condition(&n, "Ready") == Some(("Unknown".into(), Some("NodeStatusUnknown".into())))
            && taint_keys(&n) == vec![UNREACHABLE.to_string()])
        .then(|| t0.elapsed())
    })
    .await;
    assert!(tainted >= Duration::from_secs(grace - 2), "marked Unknown after {tainted:?}, before the {grace}s grace");
    let n = nodes.get("nl-a").await.unwrap();
    for ty in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert_eq!(condition(&n, ty).unwrap().0, "Unknown", "{ty}");
    }
    let ready = n.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.message.as_deref(), Some("Kubelet stopped posting node status."));
    let line = api.kubectl("1.33", &["get", "node", "nl-a", "--no-headers"]).unwrap();
    assert!(line.split_whitespace().nth(1) == Some("NotReady"), "{line}");

    // No toleration time → evicted at once; the default 5 s → after them; tolerate forever → never.
    let zero = eventually("pod zero evicted", Duration::from_secs(5), || async {
        deleting(&pods, "zero").await.then(|| t0.elapsed())
    })
    .await;
    let defaulted = eventually("pod defaulted evicted", Duration::from_secs(tol + 10), || async {
        deleting(&pods, "defaulted").await.then(|| t0.elapsed())
    })
    .await;
    assert!(
        defaulted >= tainted + Duration::from_secs(tol - 1),
        "evicted at {defaulted:?}, before its {tol}s toleration from the taint at {tainted:?}"
    );
    let forever = pods.get("forever").await.unwrap();
    assert!(forever.metadata.deletion_timestamp.is_none(), "a pod tolerating forever was evicted");
    let forever = eventually("pod forever marked not ready", Duration::from_secs(5), || async {
        let p = pods.get("forever").await.ok()?;
        (!pod_ready(&p)).then_some(p)
    })
    .await;
    assert!(forever.metadata.deletion_timestamp.is_none());
    let elsewhere = pods.get("elsewhere").await.unwrap();
    assert!(
        elsewhere.metadata.deletion_timestamp.is_none() && pod_ready(&elsewhere),
        "a pod on a live node was touched"
    );
    println!(
        "node failover (grace {grace}s, toleration {tol}s): node stopped → Unknown + unreachable taint {:.1}s; \
         untolerated pod evicted {:.1}s; default-toleration pod evicted {:.1}s",
        tainted.as_secs_f64(),
        zero.as_secs_f64(),
        defaulted.as_secs_f64()
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let evs = events.list(&ListParams::default()).await.unwrap();
    assert!(evs.items.iter().any(|e| e.reason.as_deref() == Some("NodeNotReady")), "no NodeNotReady event");
    assert!(evs.items.iter().any(|e| e.reason.as_deref() == Some("TaintManagerEviction")), "no eviction event");

    // The node comes back (its Lease resumes and it posts Ready): the taint goes, its remaining
    // pod stays.
    hollow.revive("nl-a");
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let conds: Vec<Value> = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
        .iter()
        .map(|t| {
            let s = if *t == "Ready" { "True" } else { "False" };
            json!({"type": t, "status": s, "reason": "KubeletPosted", "lastHeartbeatTime": now, "lastTransitionTime": now})
        })
        .collect();
    let ready = json!({"status": {"conditions": conds}});
    nodes.patch_status("nl-a", &PatchParams::default(), &Patch::Merge(ready)).await.unwrap();
    eventually("nl-a untainted", Duration::from_secs(10), || async {
        taint_keys(&nodes.get("nl-a").await.ok()?).is_empty().then_some(())
    })
    .await;
    assert!(!deleting(&pods, "forever").await);
}

fn cidr_of(n: &Node) -> Option<(String, Vec<String>)> {
    let s = n.spec.as_ref()?;
    Some((s.pod_cidr.clone()?, s.pod_cidrs.clone().unwrap_or_default()))
}

async fn create_node(nodes: &Api<Node>, name: &str) {
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    nodes.create(&PostParams::default(), &n).await.unwrap();
}

async fn cidr(nodes: &Api<Node>, name: &str) -> String {
    eventually(&format!("a pod CIDR on {name}"), Duration::from_secs(15), || async {
        let (c, list) = cidr_of(&nodes.get(name).await.ok()?)?;
        assert_eq!(list, vec![c.clone()], "podCIDRs must hold podCIDR");
        Some(c)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_cidrs_are_unique_survive_a_restart_and_report_exhaustion() {
    // 10.250.0.0/23 in /25s: room for four nodes.
    let flags = ["--cluster-cidr=10.250.0.0/23", "--node-cidr-mask-size=25"];
    let s = ApiServer::start(&flags).unwrap();
    let client = s.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    for n in ["ipam-1", "ipam-2", "ipam-3"] {
        create_node(&nodes, n).await;
    }
    let mut before = Vec::new();
    for n in ["ipam-1", "ipam-2", "ipam-3"] {
        before.push(cidr(&nodes, n).await);
    }
    let mut uniq = before.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 3, "CIDRs not unique: {before:?}");
    let range: ipnet::Ipv4Net = "10.250.0.0/23".parse().unwrap();
    for c in &before {
        let net: ipnet::Ipv4Net = c.parse().unwrap();
        assert!(range.contains(&net) && net.prefix_len() == 25, "{c} outside the cluster CIDR");
    }
    let out = s.kubectl("1.27", &["get", "node", "ipam-2", "-o", "jsonpath={.spec.podCIDR}"]).unwrap();
    assert_eq!(out.trim(), before[1]);

    // A crash and restart: allocations are rebuilt from the Nodes, nothing is handed out twice.
    let (dir, tmp, port) = s.kill9();
    let s = ApiServer::start_in(&dir, port, &flags).unwrap();
    let _tmp = tmp;
    let client = s.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    create_node(&nodes, "ipam-4").await;
    let fourth = cidr(&nodes, "ipam-4").await;
    assert!(!before.contains(&fourth), "{fourth} handed out twice: {before:?}");
    for (n, c) in ["ipam-1", "ipam-2", "ipam-3"].iter().zip(&before) {
        assert_eq!(&cidr(&nodes, n).await, c, "{n} changed its CIDR across a restart");
    }

    // The range is full: an Event and NetworkUnavailable, no CIDR.
    create_node(&nodes, "ipam-5").await;
    eventually("NetworkUnavailable on ipam-5", Duration::from_secs(15), || async {
        let n = nodes.get("ipam-5").await.ok()?;
        (condition(&n, "NetworkUnavailable") == Some(("True".into(), Some("CIDRNotAvailable".into())))).then_some(())
    })
    .await;
    assert!(cidr_of(&nodes.get("ipam-5").await.unwrap()).is_none());
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let evs = events.list(&ListParams::default()).await.unwrap();
    let cidr_events: Vec<_> = evs
        .items
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some("CIDRNotAvailable") && e.involved_object.name.as_deref() == Some("ipam-5")
        })
        .collect();
    assert_eq!(cidr_events.len(), 1, "one Event, not a loop: {cidr_events:?}");

    // A deleted node's CIDR is released and goes to the waiting node.
    nodes.delete("ipam-2", &DeleteParams::default()).await.unwrap();
    assert_eq!(cidr(&nodes, "ipam-5").await, before[1]);
    eventually("NetworkUnavailable cleared", Duration::from_secs(10), || async {
        let n = nodes.get("ipam-5").await.ok()?;
        (condition(&n, "NetworkUnavailable").map(|c| c.0).as_deref() == Some("False")).then_some(())
    })
    .await;
    let evs = events.list(&ListParams::default()).await.unwrap();
    let n = evs.items.iter().filter(|e| e.reason.as_deref() == Some("CIDRNotAvailable")).count();
    assert_eq!(n, 1, "exhaustion reported more than once");
}

/// The server's log without ANSI colour sequences.
fn server_log(s: &ApiServer) -> String {
    let raw = std::fs::read_to_string(s.dir.join("server.log")).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn identity_in_log(s: &ApiServer, what: &str) -> Option<String> {
    let log = server_log(s);
    let line = log.lines().rfind(|l| l.contains(what))?;
    let rest = line.split("identity=").nth(1)?;
    Some(rest.split_whitespace().next()?.trim_matches('"').to_string())
}

fn log_has(s: &ApiServer, what: &str) -> bool {
    server_log(s).contains(what)
}

async fn lease(client: &Client) -> Option<LeaseSpec> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    leases.get("kube-controller-manager").await.ok()?.spec
}

async fn holder(client: &Client) -> Option<String> {
    lease(client).await?.holder_identity
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_controller_set_among_two_apiservers_with_failover() {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("SKIPPED: etcd is not installed (Debian package etcd-server); leader election needs a shared etcd");
        return;
    }
    let etcd = Etcd::start().unwrap();
    let flags = ["--storage", "etcd", "--etcd-endpoints", &etcd.endpoint];
    let a = ApiServer::start(&flags).unwrap();
    let b = ApiServer::start(&flags).unwrap();
    let (ca, cb) = (a.client().await.unwrap(), b.client().await.unwrap());
    let first = eventually("a leader", Duration::from_secs(30), || async { holder(&ca).await }).await;
    let (leader, follower, fclient) = match (identity_in_log(&a, "became leader"), identity_in_log(&b, "became leader"))
    {
        (Some(i), None) if i == first => (&a, &b, &cb),
        (None, Some(i)) if i == first => (&b, &a, &ca),
        other => panic!("expected exactly one leader with identity {first}, logs say {other:?}"),
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(first.starts_with(&format!("{}_", host.trim())), "identity {first} is not <hostname>_<uuid>");
    // The leader's controllers work (node IPAM), the follower's are not running.
    let nodes: Api<Node> = Api::all(fclient.clone());
    create_node(&nodes, "le-1").await;
    cidr(&nodes, "le-1").await;
    assert!(log_has(leader, "starting controllers"));
    assert!(!log_has(follower, "starting controllers"), "the follower runs controllers too");

    // The leader hangs (SIGSTOP): after the lease runs out, the follower takes over.
    signal(leader.pid(), "-STOP");
    let t0 = Instant::now();
    // The leader's API server is stopped too, so nothing it sent can still land: this is its
    // last renewal.
    let last = lease(fclient).await.unwrap();
    let second =
        eventually("a new leader", Duration::from_secs(40), || async { holder(fclient).await.filter(|h| *h != first) })
            .await;
    let failover = t0.elapsed();
    assert_eq!(identity_in_log(follower, "became leader").as_deref(), Some(second.as_str()));
    println!("leader election failover after the leader hung: {:.1}s (lease 15s, retry 2s)", failover.as_secs_f64());
    let next = lease(fclient).await.unwrap();
    let (renewed, acquired) = (last.renew_time.unwrap().0, next.acquire_time.unwrap().0);
    let gap = acquired.as_millisecond() - renewed.as_millisecond();
    assert!(gap >= 14_500, "taken over {gap} ms after the last renewal, before the 15 s lease ran out");
    assert_eq!(next.lease_transitions, Some(last.lease_transitions.unwrap_or(0) + 1));
    create_node(&nodes, "le-2").await;
    cidr(&nodes, "le-2").await;
    assert!(log_has(follower, "starting controllers"));

    // The old leader wakes up, sees it lost the lease and stops its controllers.
    signal(leader.pid(), "-CONT");
    eventually("the old leader steps down", Duration::from_secs(15), || async {
        (log_has(leader, "lost leadership") && log_has(leader, "controllers stopped")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(holder(fclient).await.as_deref(), Some(second.as_str()), "the old leader took the lease back");
    drop(etcd);
}
