//! One conformance suite for both storage backends of keelson-apiserver: the embedded SQLite log
//! and etcd v3 (a private etcd-server on loopback). Also runs the API watch semantics through a
//! server backed by etcd, and checks that **user** objects survive a server restart on each
//! backend (the `kubernetes` Service is no proof: the server recreates it on every start).

use std::sync::Arc;
use std::time::Duration;

use keelson_api_shim::store::cache::WatchCache;
use keelson_api_shim::store::etcd::EtcdStore;
use keelson_api_shim::store::sqlite::{SqliteStore, SyncMode};
use keelson_api_shim::store::{EventKind, Store, StoreError};
use keelson_tests::api::{ApiServer, Etcd, write_manifest};

async fn next_change(
    rx: &mut tokio::sync::mpsc::Receiver<Arc<keelson_api_shim::store::Event>>,
) -> Arc<keelson_api_shim::store::Event> {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("event in time").expect("open");
        if ev.kind != EventKind::Progress {
            return ev;
        }
    }
}

async fn conformance(s: Arc<dyn Store>) {
    let p = "/registry/configmaps/conf/";
    let k = |n: &str| format!("{p}{n}");
    let r0 = s.current_revision().await.expect("rev");

    // create / get / conflict / update / delete with revisions.
    let r1 = s.create(&k("a"), b"1".to_vec()).await.expect("create");
    assert!(r1 > r0);
    assert!(matches!(s.create(&k("a"), b"x".to_vec()).await, Err(StoreError::AlreadyExists { .. })));
    let kv = s.get(&k("a")).await.expect("get").expect("present");
    assert_eq!((kv.value.as_slice(), kv.mod_revision, kv.create_revision), (&b"1"[..], r1, r1));
    let r2 = s.update(&k("a"), b"2".to_vec(), r1).await.expect("update");
    assert!(r2 > r1);
    assert!(
        matches!(s.update(&k("a"), b"3".to_vec(), r1).await, Err(StoreError::Conflict { found, .. }) if found == r2)
    );
    assert!(matches!(s.update(&k("zz"), b"3".to_vec(), r1).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(s.delete(&k("a"), r1).await, Err(StoreError::Conflict { .. })));

    // Watch from r1: sees the update, then live writes, in order, with prev values.
    let mut w = s.watch(p, r1).await.expect("watch");
    let e = next_change(&mut w).await;
    assert_eq!(
        (e.kind, e.revision, e.value.as_slice(), e.prev.as_deref()),
        (EventKind::Put, r2, &b"2"[..], Some(&b"1"[..]))
    );
    let r3 = s.delete(&k("a"), r2).await.expect("delete");
    let e = next_change(&mut w).await;
    assert_eq!((e.kind, e.revision, e.value.as_slice()), (EventKind::Delete, r3, &b"2"[..]));
    assert!(s.get(&k("a")).await.expect("get").is_none());
    let r4 = s.create(&k("a"), b"again".to_vec()).await.expect("recreate");
    let e = next_change(&mut w).await;
    assert!(e.created && e.prev.is_none() && e.revision == r4);
    s.create("/registry/configmaps/other/x", b"o".to_vec()).await.expect("create elsewhere");

    // Paginated list at a fixed revision stays consistent while writes continue.
    for i in 0..7 {
        s.create(&k(&format!("p{i}")), vec![b'0' + i]).await.expect("create");
    }
    let page1 = s.list(p, None, 3, None).await.expect("list");
    assert_eq!(page1.items.len(), 3);
    assert!(page1.more);
    let last = page1.items.last().expect("item").key.clone();
    let p3 = s.get(&k("p3")).await.expect("get").expect("p3");
    s.update(&k("p3"), b"changed".to_vec(), p3.mod_revision).await.expect("update");
    s.create(&k("p9"), b"9".to_vec()).await.expect("create");
    let rest = s.list(p, Some(&last), 0, Some(page1.revision)).await.expect("list rest");
    let names: Vec<&str> = rest.items.iter().map(|kv| kv.key.trim_start_matches(p)).collect();
    assert_eq!(names, ["p2", "p3", "p4", "p5", "p6"]);
    assert_eq!(rest.items[1].value, b"3");
    let all = s.list(p, None, 0, None).await.expect("list");
    assert_eq!(all.items.len(), 9, "a, p0..p6, p9");

    // Compaction: old revisions are gone for lists and watches, current data stays.
    let c = s.compact(0).await.expect("compact");
    assert!(c >= all.revision);
    assert!(matches!(s.list(p, None, 0, Some(page1.revision)).await, Err(StoreError::Compacted { .. })));
    assert!(matches!(s.watch(p, r1).await, Err(StoreError::Compacted { .. })));
    assert_eq!(s.list(p, None, 0, None).await.expect("list").items.len(), 9);
}

#[tokio::test]
async fn sqlite_store_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SqliteStore::open(&dir.path().join("db"), SyncMode::Full).expect("open");
    conformance(Arc::new(s)).await;
}

#[tokio::test]
async fn etcd_store_conformance() {
    let etcd = Etcd::start().expect("start etcd");
    let s = EtcdStore::connect(&etcd.endpoint).await.expect("connect");
    conformance(Arc::new(s)).await;
}

#[tokio::test]
async fn etcd_behind_the_watch_cache_conformance() {
    let etcd = Etcd::start().expect("start etcd");
    let s: Arc<dyn Store> = Arc::new(EtcdStore::connect(&etcd.endpoint).await.expect("connect"));
    let cache = Arc::new(WatchCache::new(s, 1000));
    conformance(cache.clone()).await;

    // Many watchers of one prefix share one etcd watch and see the same events in order.
    let p = "/registry/pods/";
    let r0 = cache.current_revision().await.expect("rev");
    let before = cache.feeds();
    let mut ws = Vec::new();
    for _ in 0..100 {
        ws.push(cache.watch(p, r0).await.expect("watch"));
    }
    assert_eq!(cache.feeds(), before + 1, "one upstream watch for {p}");
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(cache.create(&format!("{p}ns/p{i}"), b"{}".to_vec()).await.expect("create"));
    }
    for w in &mut ws {
        let mut got = Vec::new();
        for _ in 0..10 {
            got.push(next_change(w).await.revision);
        }
        assert_eq!(got, revs);
    }
}

/// Creates two user objects through kubectl: a ConfigMap with a fixed name and a Secret with a
/// server-generated name. Returns their `kind/name` references.
fn create_user_objects(s: &ApiServer, tag: &str) -> Vec<String> {
    let k = |args: &[&str]| s.kubectl("1.33", args).unwrap_or_else(|e| panic!("{e}"));
    k(&["create", "configmap", &format!("{tag}-cm"), "--from-literal=answer=42"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml =
        format!("apiVersion: v1\nkind: Secret\nmetadata:\n  generateName: {tag}-gen-\ndata:\n  token: czNjcjN0\n");
    let manifest = write_manifest(tmp.path(), "gen.yaml", &yaml).expect("manifest");
    let generated = k(&["create", "-f", manifest.to_str().expect("utf-8 path"), "-o", "name"]);
    let generated = generated.trim().to_string();
    assert!(generated.starts_with(&format!("secret/{tag}-gen-")) && generated.len() > "secret/".len() + tag.len() + 5);
    vec![format!("configmap/{tag}-cm"), generated]
}

/// What must not change across a restart: uid, resourceVersion, creation time, name and data.
fn identity(s: &ApiServer, object: &str) -> String {
    let out = s
        .kubectl(
            "1.33",
            &[
                "get",
                object,
                "-o",
                "jsonpath={.metadata.uid} {.metadata.resourceVersion} {.metadata.creationTimestamp} {.metadata.name} {.data}",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert!(fields.len() >= 5 && fields.iter().all(|f| !f.is_empty()), "{object}: incomplete identity {out:?}");
    out
}

#[test]
fn user_objects_survive_sigkill_and_restart_on_sqlite() {
    let s = ApiServer::start(&[]).expect("start apiserver (embedded store)");
    let objects = create_user_objects(&s, "keep");
    let before: Vec<String> = objects.iter().map(|o| identity(&s, o)).collect();
    assert!(before[0].contains("42"), "configmap data: {}", before[0]);
    let (dir, tmp, port) = s.kill9();
    let s = ApiServer::start_in(&dir, port, &[]).expect("restart on the same data dir");
    let _keep = tmp;
    let after: Vec<String> = objects.iter().map(|o| identity(&s, o)).collect();
    assert_eq!(after, before, "user objects changed across SIGKILL + restart");
    // Revisions keep growing after the restart: a new write gets a higher resourceVersion.
    let old_rv: i64 = before[0].split_whitespace().nth(1).and_then(|r| r.parse().ok()).expect("rv");
    s.kubectl("1.33", &["annotate", &objects[0], "after=restart"]).unwrap_or_else(|e| panic!("{e}"));
    let new_rv: i64 = s
        .kubectl("1.33", &["get", &objects[0], "-o", "jsonpath={.metadata.resourceVersion}"])
        .unwrap_or_else(|e| panic!("{e}"))
        .parse()
        .expect("rv");
    assert!(new_rv > old_rv, "resourceVersion went from {old_rv} to {new_rv} after the restart");
}

#[test]
fn kubectl_flow_on_etcd_backend() {
    let etcd = Etcd::start().expect("start etcd");
    let s =
        ApiServer::start(&["--storage", "etcd", "--etcd-endpoints", &etcd.endpoint]).expect("start apiserver on etcd");
    let k = |args: &[&str]| s.kubectl("1.33", args).unwrap_or_else(|e| panic!("{e}"));
    assert!(k(&["get", "ns"]).contains("kube-node-lease"));
    k(&["create", "configmap", "c1", "--from-literal=a=b"]);
    k(&["label", "configmap", "c1", "x=y"]);
    assert_eq!(k(&["get", "cm", "-l", "x=y", "-o", "name"]).trim(), "configmap/c1");
    let rv1: i64 = k(&["get", "cm", "c1", "-o", "jsonpath={.metadata.resourceVersion}"]).parse().expect("rv");
    k(&["annotate", "configmap", "c1", "n=1"]);
    let rv2: i64 = k(&["get", "cm", "c1", "-o", "jsonpath={.metadata.resourceVersion}"]).parse().expect("rv");
    assert!(rv2 > rv1, "resourceVersion is etcd's mod_revision");
    k(&["delete", "configmap", "c1"]);
    // State lives in etcd: a new server (SIGKILLed, then a fresh data dir) sees the same user
    // objects with the same uid and resourceVersion.
    let objects = create_user_objects(&s, "etcd");
    let before: Vec<String> = objects.iter().map(|o| identity(&s, o)).collect();
    let _ = s.kill9();
    let s2 = ApiServer::start(&["--storage", "etcd", "--etcd-endpoints", &etcd.endpoint]).expect("restart");
    let after: Vec<String> = objects.iter().map(|o| identity(&s2, o)).collect();
    assert_eq!(after, before, "user objects changed across a server restart on etcd");
    let gone = s2.kubectl_output("1.33", &["get", "configmap", "c1"]).expect("kubectl");
    assert!(!gone.status.success(), "deleted configmap c1 came back");
}
