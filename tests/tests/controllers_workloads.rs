//! The workload controllers (ReplicaSet, ReplicationController, Deployment) in a real
//! keelson-apiserver, driven by kubectl 1.33 and 1.27: sets recreate deleted pods and follow
//! `kubectl scale`; a Deployment created with `kubectl create deployment` becomes Available,
//! rolls an image change in batches that never break maxSurge/maxUnavailable (checked on a pod
//! watch), and `kubectl rollout status|history|undo|pause|resume|restart` behave as upstream.
//!
//! Pods become Ready on a hollow node (`keelson_tests::hollow`); the sets' templates name it in
//! `nodeName`, and for `kubectl create deployment` a small binder stands in for the scheduler.
//! (The tests run on a multi-thread runtime: kubectl blocks the test thread, and the fixtures
//! must keep working meanwhile.)

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use keelson_tests::api::ApiServer;
use keelson_tests::eventually;
use keelson_tests::hollow::{HollowNodes, HollowOpts};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const NODE: &str = "hollow-workloads-0";

/// A hollow node (the shared fixture: Lease, pods Running/Ready, graceful deletes finished) and,
/// until the scheduler is on main, a stand-in for it that binds the unscheduled pods of `ns` to
/// that node through `pods/binding` (`kubectl create deployment` cannot set `nodeName`).
struct Node {
    _hollow: HollowNodes,
    binder: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.binder.abort();
    }
}

async fn node(client: Client, ns: &str) -> Node {
    let hollow = HollowNodes::start(client.clone(), &[NODE], HollowOpts::default()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let binder = tokio::spawn(async move {
        loop {
            if let Ok(list) = pods.list(&ListParams::default()).await {
                let unbound = list.items.into_iter().filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty)
                });
                for p in unbound {
                    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": p.name_any()},
                                         "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}});
                    let pp = PostParams::default();
                    let _ = pods.create_subresource::<Value, Value>("binding", &p.name_any(), &pp, &binding).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    Node { _hollow: hollow, binder }
}

fn kubectl(s: &ApiServer, v: &str, args: &[&str]) -> String {
    s.kubectl(v, args).unwrap_or_else(|e| panic!("kubectl {v} {args:?}: {e}"))
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Live (not terminating) pods matching `selector`.
async fn live_pods(pods: &Api<Pod>, selector: &str) -> Result<Vec<Pod>, String> {
    let l = pods.list(&ListParams::default().labels(selector)).await.map_err(|e| e.to_string())?;
    Ok(l.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect())
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone()).unwrap_or_default()
}

async fn ready_set(pods: &Api<Pod>, selector: &str, n: usize) {
    eventually(&format!("{n} ready pods {selector}"), Duration::from_secs(30), || async {
        let live = live_pods(pods, selector).await?;
        Ok(live.len() == n && live.iter().all(is_ready))
    })
    .await;
}

async fn sets_recreate_deleted_pods(v: &str) {
    let s = ApiServer::start(&[]).unwrap();
    let client = s.client().await.unwrap();
    let ns = "default";
    let _node = node(client.clone(), ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let manifest = r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: frontend}
spec:
  replicas: 3
  selector: {matchLabels: {app: frontend}}
  template:
    metadata: {labels: {app: frontend}}
    spec: {nodeName: NODE, containers: [{name: c, image: "registry.k8s.io/pause:3.9"}]}
---
apiVersion: v1
kind: ReplicationController
metadata: {name: redis}
spec:
  replicas: 2
  selector: {app: redis}
  template:
    metadata: {labels: {app: redis}}
    spec: {nodeName: NODE, containers: [{name: c, image: "registry.k8s.io/pause:3.9"}]}
"#;
    let manifest = manifest.replace("NODE", NODE);
    let path = keelson_tests::api::write_manifest(&s.dir, "sets.yaml", &manifest).unwrap();
    kubectl(&s, v, &["apply", "-f", path.to_str().unwrap()]);
    ready_set(&pods, "app=frontend", 3).await;
    ready_set(&pods, "app=redis", 2).await;

    // Every pod is created from the template with a controller reference to its set.
    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let rs_uid = rs.get("frontend").await.unwrap().uid().unwrap();
    for p in live_pods(&pods, "app=frontend").await.unwrap() {
        assert!(p.name_any().starts_with("frontend-"), "{}", p.name_any());
        let r = &p.owner_references()[0];
        assert_eq!(
            (r.kind.as_str(), r.uid.as_str(), r.controller, r.block_owner_deletion),
            ("ReplicaSet", rs_uid.as_str(), Some(true), Some(true))
        );
    }

    // Deleted pods come back (with new names).
    for (sel, n) in [("app=frontend", 3), ("app=redis", 2)] {
        let before: Vec<String> = live_pods(&pods, sel).await.unwrap().iter().map(ResourceExt::name_any).collect();
        kubectl(&s, v, &["delete", "pod", &before[0], "--wait=false"]);
        eventually(&format!("{sel} recreated"), Duration::from_secs(30), || async {
            let live = live_pods(&pods, sel).await?;
            Ok(live.len() == n && live.iter().all(is_ready) && !live.iter().any(|p| p.name_any() == before[0]))
        })
        .await;
    }
    let out = kubectl(
        &s,
        v,
        &[
            "get",
            "rs",
            "frontend",
            "-o",
            "jsonpath={.status.readyReplicas}/{.status.availableReplicas}/{.status.observedGeneration}",
        ],
    );
    assert_eq!(out.trim(), "3/3/1");

    // kubectl scale, both kinds, through the scale subresource.
    kubectl(&s, v, &["scale", "rs", "frontend", "--replicas=1"]);
    kubectl(&s, v, &["scale", "rc", "redis", "--replicas=4"]);
    ready_set(&pods, "app=frontend", 1).await;
    ready_set(&pods, "app=redis", 4).await;
    let rcs: Api<ReplicationController> = Api::namespaced(client.clone(), ns);
    eventually("rc status", Duration::from_secs(10), || async {
        let st = rcs.get("redis").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        Ok(st.ready_replicas == Some(4) && st.observed_generation == Some(2))
    })
    .await;

    // An orphan that matches is adopted (and the surplus removed); a pod relabelled away is released.
    let orphan = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stray", "labels": {"app": "frontend"}},
                        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}]}});
    pods.create(&PostParams::default(), &serde_json::from_value(orphan).unwrap()).await.unwrap();
    eventually("orphan adopted, one of two removed", Duration::from_secs(30), || async {
        let live = live_pods(&pods, "app=frontend").await?;
        Ok(live.len() == 1 && live.iter().all(|p| p.owner_references().iter().any(|r| r.uid == rs_uid)))
    })
    .await;
    let kept = live_pods(&pods, "app=frontend").await.unwrap()[0].name_any();
    kubectl(&s, v, &["label", "pod", &kept, "app=debug", "--overwrite"]);
    eventually("relabelled pod released and replaced", Duration::from_secs(30), || async {
        let released = pods.get(&kept).await.map_err(|e| e.to_string())?;
        let live = live_pods(&pods, "app=frontend").await?;
        Ok(released.owner_references().is_empty() && live.len() == 1 && live[0].name_any() != kept)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_recreate_deleted_pods_kubectl_1_33() {
    sets_recreate_deleted_pods("1.33").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_recreate_deleted_pods_kubectl_1_27() {
    sets_recreate_deleted_pods("1.27").await;
}

/// Watches the pods of `selector` and records the extremes a rollout must stay within: the most
/// live pods at once and the fewest live ready ones (after the first time all were ready).
struct Bounds {
    max_live: usize,
    min_ready: usize,
}

fn watch_bounds(pods: Api<Pod>, selector: &str) -> (Arc<Mutex<Bounds>>, tokio::task::JoinHandle<()>) {
    let bounds = Arc::new(Mutex::new(Bounds { max_live: 0, min_ready: usize::MAX }));
    let b = bounds.clone();
    let cfg = watcher::Config::default().labels(selector);
    let task = tokio::spawn(async move {
        let mut state: BTreeMap<String, Pod> = BTreeMap::new();
        let mut stream = watcher(pods, cfg).boxed();
        // Only whole states count: not the partial ones while the initial list streams in.
        let mut listed = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => {
                    state.clear();
                    listed = false;
                }
                Ok(watcher::Event::InitApply(p)) => {
                    state.insert(p.name_any(), p);
                }
                Ok(watcher::Event::InitDone) => listed = true,
                Ok(watcher::Event::Apply(p)) => {
                    state.insert(p.name_any(), p);
                }
                Ok(watcher::Event::Delete(p)) => {
                    state.remove(&p.name_any());
                }
                Err(_) => continue,
            }
            if !listed {
                continue;
            }
            let live: Vec<&Pod> = state.values().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
            let ready = live.iter().filter(|p| is_ready(p)).count();
            let mut b = b.lock().unwrap();
            b.max_live = b.max_live.max(live.len());
            b.min_ready = b.min_ready.min(ready);
        }
    });
    (bounds, task)
}

async fn deployment_rollouts(v: &str) {
    let s = ApiServer::start(&[]).unwrap();
    let client = s.client().await.unwrap();
    let ns = "default";
    let _node = node(client.clone(), ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let sel = "app=web";
    let status = |args: &[&str]| {
        let mut a = vec!["rollout", "status", "deployment/web", "--timeout=60s"];
        a.extend_from_slice(args);
        match s.kubectl(v, &a) {
            Ok(o) => o,
            Err(e) => {
                let dump = s.kubectl(v, &["get", "deploy,rs,pods", "-o", "yaml"]).unwrap_or_default();
                panic!("kubectl {v} {a:?}: {e}\n{dump}")
            }
        }
    };

    kubectl(&s, v, &["create", "deployment", "web", "--image=registry.k8s.io/pause:3.9", "--replicas=4"]);
    let out = status(&[]);
    assert!(out.contains("successfully rolled out"), "{out}");
    kubectl(&s, v, &["wait", "deployment/web", "--for=condition=Available", "--timeout=30s"]);
    ready_set(&pods, sel, 4).await;
    let hash = rs.list(&ListParams::default()).await.unwrap().items[0].labels()["pod-template-hash"].clone();
    assert!(live_pods(&pods, sel).await.unwrap().iter().all(|p| p.labels()["pod-template-hash"] == hash));

    // Scale through the scale subresource.
    kubectl(&s, v, &["scale", "deployment", "web", "--replicas=6"]);
    status(&[]);
    ready_set(&pods, sel, 6).await;

    // An image change rolls in batches within maxSurge=1 / maxUnavailable=1.
    kubectl(
        &s,
        v,
        &[
            "patch",
            "deployment",
            "web",
            "-p",
            r#"{"spec":{"strategy":{"rollingUpdate":{"maxSurge":1,"maxUnavailable":1}}}}"#,
        ],
    );
    let (bounds, watch) = watch_bounds(pods.clone(), sel);
    tokio::time::sleep(Duration::from_millis(500)).await;
    kubectl(&s, v, &["set", "image", "deployment/web", "pause=registry.k8s.io/pause:3.10"]);
    let out = status(&[]);
    assert!(out.contains("successfully rolled out"), "{out}");
    ready_set(&pods, sel, 6).await;
    watch.abort();
    {
        let b = bounds.lock().unwrap();
        assert!(b.max_live <= 7, "more than replicas + maxSurge live at once: {}", b.max_live);
        assert!(b.min_ready >= 5, "fewer than replicas - maxUnavailable ready: {}", b.min_ready);
        assert!(b.max_live == 7 || b.min_ready == 5, "the rollout used neither surge nor unavailability");
    }
    assert!(live_pods(&pods, sel).await.unwrap().iter().all(|p| image_of(p) == "registry.k8s.io/pause:3.10"));

    // History lists both revisions; undo restores the first template as revision 3.
    let out = kubectl(&s, v, &["rollout", "history", "deployment/web"]);
    let revs: Vec<&str> = out.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(revs, vec!["1", "2"], "{out}");
    kubectl(&s, v, &["rollout", "undo", "deployment/web"]);
    status(&[]);
    ready_set(&pods, sel, 6).await;
    eventually("undo rolled out", Duration::from_secs(30), || async {
        let live = live_pods(&pods, sel).await?;
        Ok(live.len() == 6
            && live
                .iter()
                .all(|p| image_of(p) == "registry.k8s.io/pause:3.9" && p.labels()["pod-template-hash"] == hash))
    })
    .await;
    let d = deps.get("web").await.unwrap();
    assert_eq!(d.annotations()["deployment.kubernetes.io/revision"], "3");
    let out = kubectl(&s, v, &["rollout", "history", "deployment/web"]);
    let revs: Vec<&str> = out.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(revs, vec!["2", "3"], "{out}");
    let first = rs.get(&format!("web-{hash}")).await.unwrap();
    assert_eq!(first.annotations()["deployment.kubernetes.io/revision-history"], "1");

    // Paused: a template change waits; resume rolls it out.
    kubectl(&s, v, &["rollout", "pause", "deployment/web"]);
    kubectl(&s, v, &["set", "image", "deployment/web", "pause=registry.k8s.io/pause:3.8"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rs.list(&ListParams::default()).await.unwrap().items.len(), 2, "a paused deployment made a new set");
    let d = deps.get("web").await.unwrap();
    let prog = d.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Progressing").unwrap();
    assert_eq!(prog.reason.as_deref(), Some("DeploymentPaused"));
    kubectl(&s, v, &["rollout", "resume", "deployment/web"]);
    status(&[]);
    eventually("resumed rollout", Duration::from_secs(30), || async {
        let live = live_pods(&pods, sel).await?;
        Ok(live.len() == 6 && live.iter().all(|p| image_of(p) == "registry.k8s.io/pause:3.8"))
    })
    .await;

    // Restart: a template annotation, so a new set and all pods replaced.
    let before: Vec<String> = live_pods(&pods, sel).await.unwrap().iter().map(ResourceExt::name_any).collect();
    kubectl(&s, v, &["rollout", "restart", "deployment/web"]);
    status(&[]);
    eventually("restarted", Duration::from_secs(30), || async {
        let live = live_pods(&pods, sel).await?;
        Ok(live.len() == 6
            && live.iter().all(|p| {
                !before.contains(&p.name_any()) && p.annotations().contains_key("kubectl.kubernetes.io/restartedAt")
            }))
    })
    .await;

    // Scale down; the status follows.
    kubectl(&s, v, &["scale", "deployment", "web", "--replicas=2"]);
    status(&[]);
    ready_set(&pods, sel, 2).await;
    eventually("status after scale-down", Duration::from_secs(15), || async {
        let st = deps.get("web").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        Ok((st.replicas, st.updated_replicas, st.available_replicas) == (Some(2), Some(2), Some(2)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rollouts_kubectl_1_33() {
    deployment_rollouts("1.33").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rollouts_kubectl_1_27() {
    deployment_rollouts("1.27").await;
}

/// A Deployment whose pods never become ready reports `ProgressDeadlineExceeded`, and
/// `kubectl rollout status` fails on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_deadline_exceeded() {
    let s = ApiServer::start(&[]).unwrap();
    let client = s.client().await.unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    // No stand-in: nothing binds or readies the pods.
    kubectl(&s, "1.33", &["create", "deployment", "stuck", "--image=registry.k8s.io/pause:3.9", "--replicas=2"]);
    kubectl(&s, "1.33", &["patch", "deployment", "stuck", "-p", r#"{"spec":{"progressDeadlineSeconds":3}}"#]);
    eventually("ProgressDeadlineExceeded", Duration::from_secs(30), || async {
        let d = deps.get("stuck").await.map_err(|e| e.to_string())?;
        let conds = d.status.and_then(|s| s.conditions).unwrap_or_default();
        Ok(conds.iter().any(|c| {
            c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        }))
    })
    .await;
    let out = s.kubectl_output("1.33", &["rollout", "status", "deployment/stuck", "--timeout=20s"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exceeded its progress deadline"), "{out:?}");
}

/// Recreate: no pod of the new template exists while any old pod does (terminating included),
/// checked on a pod watch; minReadySeconds holds availability back after readiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_and_min_ready_seconds() {
    let s = ApiServer::start(&[]).unwrap();
    let client = s.client().await.unwrap();
    let ns = "default";
    let _node = node(client.clone(), ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: db}
spec:
  replicas: 3
  minReadySeconds: 3
  strategy: {type: Recreate}
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: "registry.k8s.io/pause:3.9"}]}
"#;
    let path = keelson_tests::api::write_manifest(&s.dir, "db.yaml", manifest).unwrap();
    kubectl(&s, "1.33", &["apply", "-f", path.to_str().unwrap()]);
    eventually("ready but not yet available", Duration::from_secs(20), || async {
        let st = deps.get("db").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        Ok(st.ready_replicas == Some(3))
    })
    .await;
    let st = deps.get("db").await.unwrap().status.unwrap();
    assert_eq!(st.available_replicas.unwrap_or(0), 0, "available before minReadySeconds: {st:?}");
    let out = kubectl(&s, "1.33", &["rollout", "status", "deployment/db", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    assert_eq!(deps.get("db").await.unwrap().status.unwrap().available_replicas, Some(3));

    let old_hash = live_pods(&pods, "app=db").await.unwrap()[0].labels()["pod-template-hash"].clone();
    let overlap = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = overlap.clone();
    let old = old_hash.clone();
    let watch = tokio::spawn(async move {
        let mut state: BTreeMap<String, String> = BTreeMap::new();
        let mut stream = watcher(pods.clone(), watcher::Config::default().labels("app=db")).boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => state.clear(),
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    state.insert(p.name_any(), p.labels()["pod-template-hash"].clone());
                }
                Ok(watcher::Event::Delete(p)) => {
                    state.remove(&p.name_any());
                }
                _ => continue,
            }
            let olds = state.values().filter(|h| **h == old).count();
            if olds > 0 && olds < state.len() {
                seen.lock().unwrap().push(format!("{state:?}"));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    kubectl(&s, "1.33", &["set", "image", "deployment/db", "db=registry.k8s.io/pause:3.10"]);
    let out = kubectl(&s, "1.33", &["rollout", "status", "deployment/db", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    watch.abort();
    let first_overlap = overlap.lock().unwrap().first().cloned();
    assert!(first_overlap.is_none(), "old and new pods at once: {first_overlap:?}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let live = live_pods(&pods, "app=db").await.unwrap();
    assert_eq!(live.len(), 3);
    assert!(live.iter().all(|p| p.labels()["pod-template-hash"] != old_hash && image_of(p).ends_with(":3.10")));

    // Orphaned by a delete, the sets are adopted by a new deployment of the same template: no new
    // set, the same pods.
    let names: Vec<String> = live.iter().map(ResourceExt::name_any).collect();
    kubectl(&s, "1.33", &["delete", "deployment", "db", "--cascade=orphan", "--timeout=30s"]);
    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let before = rs.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(before.len(), 2);
    let again = keelson_tests::api::write_manifest(&s.dir, "db2.yaml", &manifest.replace(":3.9", ":3.10")).unwrap();
    kubectl(&s, "1.33", &["apply", "-f", again.to_str().unwrap()]);
    let uid = deps.get("db").await.unwrap().uid().unwrap();
    eventually("sets adopted", Duration::from_secs(20), || async {
        let sets = rs.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items;
        Ok(sets.len() == 2 && sets.iter().all(|r| r.owner_references().iter().any(|o| o.uid == uid)))
    })
    .await;
    let out = kubectl(&s, "1.33", &["rollout", "status", "deployment/db", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let mut after: Vec<String> = live_pods(&pods, "app=db").await.unwrap().iter().map(ResourceExt::name_any).collect();
    after.sort();
    let mut names = names;
    names.sort();
    assert_eq!(after, names, "adoption replaced pods");
}
