//! Watch semantics and kube-rs against keelson-apiserver: conflicts, resume without gaps or
//! duplicates, 410 after compaction, streaming lists, concurrent watchers, and a kube-rs
//! watcher with a field selector plus patch_status.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use keelson_tests::api::ApiServer;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde_json::json;

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": v}})).expect("configmap")
}

fn rv<K: kube::Resource>(o: &K) -> i64 {
    o.meta().resource_version.as_deref().expect("rv").parse().expect("numeric rv")
}

async fn next_events(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin),
    n: usize,
) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("watch event within 10s")
            .expect("stream open")
            .expect("event ok");
        let (t, o) = match ev {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        };
        // The root-CA publisher writes kube-root-ca.crt into every namespace (as upstream's
        // does), possibly while a test runs; the tests here are about their own objects.
        if o.metadata.name.as_deref() == Some("kube-root-ca.crt") {
            continue;
        }
        out.push((t.to_string(), o.metadata.name.clone().unwrap_or_default(), rv(&o)));
    }
    out
}

#[tokio::test]
async fn conflict_resume_and_concurrent_watchers() {
    let s = ApiServer::start(&[]).expect("start");
    let client = s.client().await.expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client, "default");

    // 409 on a stale resourceVersion.
    let c0 = api.create(&PostParams::default(), &cm("c", "0")).await.expect("create");
    let mut newer = c0.clone();
    newer.data = Some(BTreeMap::from([("v".into(), "1".into())]));
    let c1 = api.replace("c", &PostParams::default(), &newer).await.expect("replace");
    assert!(rv(&c1) > rv(&c0));
    let err = api.replace("c", &PostParams::default(), &c0).await.expect_err("stale replace must fail");
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("unexpected {other}"),
    }

    // Three watchers from the same revision, writers racing: identical, gap-free sequences.
    let start = rv(&c1).to_string();
    let mut watchers = Vec::new();
    for _ in 0..3 {
        watchers.push(api.watch(&WatchParams::default(), &start).await.expect("watch").boxed());
    }
    let mut acked = Vec::new();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..10 {
                let o = api.create(&PostParams::default(), &cm(&format!("w{w}-{i}"), "x")).await.expect("create");
                revs.push(rv(&o));
            }
            revs
        }));
    }
    for t in tasks {
        acked.extend(t.await.expect("writer"));
    }
    acked.sort_unstable();
    let mut seqs = Vec::new();
    for w in &mut watchers {
        seqs.push(next_events(w, 40).await);
    }
    let revs: Vec<i64> = seqs[0].iter().map(|e| e.2).collect();
    assert_eq!(revs, acked, "every acknowledged write exactly once, in revision order");
    assert_eq!(seqs[0], seqs[1]);
    assert_eq!(seqs[0], seqs[2]);

    // Resume from the middle: exactly the suffix.
    let mid = acked[19];
    let mut resumed = api.watch(&WatchParams::default(), &mid.to_string()).await.expect("watch").boxed();
    let tail = next_events(&mut resumed, 20).await;
    assert_eq!(tail.iter().map(|e| e.2).collect::<Vec<_>>(), acked[20..].to_vec());

    // Label-selected watch: an object leaving the selection is reported as DELETED.
    let sel = WatchParams::default().labels("team=a");
    let mut labelled: Api<ConfigMap> = api.clone();
    let here = rv(&api.get("c").await.expect("get"));
    let mut lw = labelled.watch(&sel, &here.to_string()).await.expect("watch").boxed();
    labelled = api.clone();
    labelled
        .patch("c", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})))
        .await
        .expect("patch");
    labelled
        .patch("c", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"team": "b"}}})))
        .await
        .expect("patch");
    let evs = next_events(&mut lw, 2).await;
    assert_eq!(evs.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["ADDED", "DELETED"]);

    // timeoutSeconds ends the stream.
    let mut short = api.watch(&WatchParams::default().timeout(1), "0").await.expect("watch").boxed();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = short.next().await {
            ev.expect("event");
        }
    })
    .await;
    assert!(ended.is_ok(), "watch with timeoutSeconds=1 must end");
}

#[tokio::test]
async fn gone_after_compaction_and_streaming_lists() {
    let s =
        ApiServer::start(&["--history", "5", "--compact-interval", "1", "--bookmark-interval", "1"]).expect("start");
    let client = s.client().await.expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let first = api.create(&PostParams::default(), &cm("g0", "x")).await.expect("create");
    for i in 1..30 {
        api.create(&PostParams::default(), &cm(&format!("g{i}"), "x")).await.expect("create");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut w = api.watch(&WatchParams::default(), &rv(&first).to_string()).await.expect("watch").boxed();
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("event") {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    // A continue token older than the compaction is also 410.
    let page = api.list(&kube::api::ListParams::default().limit(5)).await.expect("page");
    let token = page.metadata.continue_.clone().expect("continue token");
    for i in 30..45 {
        api.create(&PostParams::default(), &cm(&format!("g{i}"), "x")).await.expect("create");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    match api.list(&kube::api::ListParams::default().limit(5).continue_token(&token)).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 410),
        other => panic!("expected 410 for an expired continue token, got {other:?}"),
    }

    // Streaming list: initial ADDED events, the initial-events-end bookmark, then live events.
    let mut sl = api.watch(&WatchParams::streaming_lists(), "").await.expect("watch").boxed();
    let mut added = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sl.next()).await.expect("event").expect("open").expect("ok")
        {
            // kube-root-ca.crt: the root-CA publisher's, in every namespace.
            WatchEvent::Added(o) if o.metadata.name.as_deref() == Some("kube-root-ca.crt") => {}
            WatchEvent::Added(_) => added += 1,
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.metadata.annotations.get("k8s.io/initial-events-end").map(String::as_str), Some("true"));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, 45);
    api.create(&PostParams::default(), &cm("live", "x")).await.expect("create");
    let mut saw_live = false;
    let mut bookmarks = 0;
    while !saw_live || bookmarks == 0 {
        match tokio::time::timeout(Duration::from_secs(10), sl.next()).await.expect("event").expect("open").expect("ok")
        {
            WatchEvent::Added(o) => saw_live |= o.metadata.name.as_deref() == Some("live"),
            WatchEvent::Modified(o) if o.metadata.name.as_deref() == Some("kube-root-ca.crt") => {}
            WatchEvent::Bookmark(_) => bookmarks += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn kube_rs_watcher_with_field_selector_and_patch_status() {
    let s = ApiServer::start(&[]).expect("start");
    let client = s.client().await.expect("client");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod = |name: &str, node: &str| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}))
            .expect("pod")
    };
    pods.create(&PostParams::default(), &pod("on-n1", "n1")).await.expect("create");
    pods.create(&PostParams::default(), &pod("on-n2", "n2")).await.expect("create");
    for cfg in [watcher::Config::default(), watcher::Config::default().streaming_lists()] {
        let stream = watcher(pods.clone(), cfg.fields("spec.nodeName=n1"));
        let mut stream = stream.boxed();
        let mut seen_running = false;
        let patched = pods
            .patch_status(
                "on-n1",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.244.0.5"}})),
            )
            .await;
        let patched = patched.expect("patch_status");
        assert_eq!(patched.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running"));
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
                .await
                .expect("event")
                .expect("ok")
                .expect("open");
            match ev {
                watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                    assert_eq!(p.metadata.name.as_deref(), Some("on-n1"), "field selector must exclude on-n2");
                    if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                        seen_running = true;
                    }
                }
                _ => {}
            }
            if seen_running {
                break;
            }
        }
        // Reset the phase for the next round; the watcher must report the change.
        pods.patch_status("on-n1", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Pending"}})))
            .await
            .expect("patch_status");
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
                .await
                .expect("event")
                .expect("ok")
                .expect("open");
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                assert_eq!(p.metadata.name.as_deref(), Some("on-n1"));
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending") {
                    break;
                }
            }
        }
    }
}
