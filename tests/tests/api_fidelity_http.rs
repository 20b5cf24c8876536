//! Wire fidelity of keelson-apiserver against what kube-apiserver answers (issue 16, items 4 and
//! 7, and the health endpoints), checked byte for byte with curl and through kube-rs and kubectl
//! 1.33 where a client's reading of the answer matters.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use keelson_tests::api::{ApiServer, Etcd};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

/// (body, status code) of a curl call made with `-w "\n%{http_code}"`.
fn split(out: &str) -> (String, u16) {
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", out));
    (body.to_string(), code.trim().parse().unwrap_or(0))
}

fn authed(s: &ApiServer, extra: &[&str]) -> (String, u16) {
    let auth = format!("Authorization: Bearer {}", s.token().unwrap());
    let mut args = vec!["-H", auth.as_str()];
    args.extend_from_slice(extra);
    split(&s.curl(&args).unwrap())
}

fn current_revision(s: &ApiServer) -> i64 {
    let (body, code) = authed(s, &[&s.url("/api/v1/namespaces/default/configmaps")]);
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

#[test]
fn a_watch_from_a_future_resource_version_is_told_to_relist() {
    let s = ApiServer::start(&[]).expect("start");
    let current = current_revision(&s);
    let future = current + 1000;
    let url = s.url(&format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={future}"));
    let started = Instant::now();
    let (body, code) = authed(&s, &["--max-time", "20", &url]);
    let waited = started.elapsed();
    assert_eq!(code, 200, "{body}");
    // One event: upstream's Status from NewTooLargeResourceVersionError, then the stream ends.
    let current_now = current_revision(&s);
    let expected = format!(
        concat!(
            r#"{{"type":"ERROR","object":{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","#,
            r#""message":"Timeout: Too large resource version: {}, current: {}","reason":"Timeout","#,
            r#""details":{{"causes":[{{"reason":"ResourceVersionTooLarge","message":"Too large resource version"}}],"#,
            r#""retryAfterSeconds":1}},"code":504}}}}"#,
            "\n"
        ),
        future, current_now
    );
    assert_eq!(body, expected);
    assert!(waited >= Duration::from_millis(2500), "the server first waits for the store to catch up ({waited:?})");

    // A resourceVersion the store reaches within the wait is served normally.
    let next = current_now + 1;
    let url = s.url(&format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={next}&timeoutSeconds=4"));
    let watcher = {
        let auth = format!("Authorization: Bearer {}", s.token().unwrap());
        let ca = s.dir.join("ca.crt");
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert", ca.to_str().unwrap(), "-H", &auth, &url])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(700));
    // The first write brings the store to `next`; a watch from `next` sees what follows it.
    for name in ["reaches", "later"] {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}).to_string();
        let cms = s.url("/api/v1/namespaces/default/configmaps");
        let (_, code) = authed(&s, &["-H", "Content-Type: application/json", "--data-binary", &cm, &cms]);
        assert_eq!(code, 201);
    }
    let out = watcher.wait_with_output().unwrap();
    let events = String::from_utf8_lossy(&out.stdout).into_owned();
    let first: Value =
        serde_json::from_str(events.lines().next().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {events:?}"));
    assert_eq!((first["type"].as_str(), first["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("later")));
    assert!(!events.contains("ERROR"), "{events}");

    // kube-rs reads the event as a 504 Timeout Status (its watcher then relists).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cms: Api<ConfigMap> = Api::namespaced(s.client().await.unwrap(), "default");
        let mut stream = cms.watch(&WatchParams::default(), &(current_now + 1000).to_string()).await.unwrap().boxed();
        match stream.next().await {
            Some(Ok(WatchEvent::Error(status))) => {
                assert_eq!((status.code, status.reason.as_str()), (504, "Timeout"));
                let causes = status.details.map(|d| d.causes).unwrap_or_default();
                assert_eq!(causes[0].reason, "ResourceVersionTooLarge");
            }
            other => panic!("expected an ERROR event, got {other:?}"),
        }
        // An ordinary create still works through the same client.
        cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "kube-rs"}})).unwrap())
            .await
            .unwrap();
    });
}

#[test]
fn bodies_are_serialized_as_kube_apiserver_serializes_them() {
    let s = ApiServer::start(&[]).expect("start");
    // Status: the Go struct's field order, empty group left out, a trailing newline.
    let (body, code) = authed(&s, &[&s.url("/api/v1/namespaces/default/configmaps/nope")]);
    assert_eq!(code, 404);
    assert_eq!(
        body,
        concat!(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","#,
            r#""message":"configmaps \"nope\" not found","reason":"NotFound","#,
            r#""details":{"name":"nope","kind":"configmaps"},"code":404}"#,
            "\n"
        )
    );
    let (body, code) = authed(&s, &[&s.url("/apis/apps/v1/namespaces/default/deployments/web")]);
    assert_eq!(code, 404);
    assert!(body.contains(r#""details":{"name":"web","group":"apps","kind":"deployments"},"code":404}"#), "{body}");
    // Field causes: reason, message, field.
    let bad = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}}).to_string();
    let cms = s.url("/api/v1/namespaces/default/configmaps");
    let (body, code) = authed(&s, &["-H", "Content-Type: application/json", "--data-binary", &bad, &cms]);
    assert_eq!(code, 422, "{body}");
    let causes = body.find(r#""causes":[{"reason":"FieldValueInvalid","message":"Invalid value: \"Bad_Name\""#);
    assert!(causes.is_some(), "{body}");
    assert!(body.ends_with(concat!(r#","field":"metadata.name"}]},"code":422}"#, "\n")), "{body}");

    // Typed objects: k8s-openapi's order (apiVersion, kind, then the fields by name).
    let cm = json!({"metadata": {"name": "c1"}, "data": {"b": "2", "a": "1"}, "kind": "ConfigMap", "apiVersion": "v1"});
    let (created, code) = authed(&s, &["-H", "Content-Type: application/json", "--data-binary", &cm.to_string(), &cms]);
    assert_eq!(code, 201, "{created}");
    let (got, code) = authed(&s, &[&s.url("/api/v1/namespaces/default/configmaps/c1")]);
    assert_eq!(code, 200);
    for body in [&created, &got] {
        assert!(
            body.starts_with(r#"{"apiVersion":"v1","kind":"ConfigMap","data":{"a":"1","b":"2"},"metadata":{"#),
            "{body}"
        );
        assert!(body.ends_with("}}\n"), "{body}");
    }
    let (list, _) = authed(&s, &[&cms]);
    assert!(
        list.starts_with(
            r#"{"apiVersion":"v1","kind":"ConfigMapList","items":[{"apiVersion":"v1","kind":"ConfigMap","#
        ),
        "{list}"
    );

    // kubectl reads both shapes as before.
    let out = s.kubectl_output("1.33", &["get", "configmap", "nope"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"configmaps "nope" not found"#));
    let out = s.kubectl("1.33", &["get", "configmap", "c1", "-o", "jsonpath={.data.a}"]).unwrap();
    assert_eq!(out, "1");
}

#[test]
fn a_body_over_the_limit_gets_the_413_status_over_http2_and_http11() {
    let s = ApiServer::start(&[]).expect("start");
    let big = s.dir.join("big.json");
    std::fs::write(&big, "x".repeat(16 << 20)).unwrap();
    let data = format!("@{}", big.display());
    let cms = s.url("/api/v1/namespaces/default/configmaps");
    for proto in ["--http2", "--http1.1", "--http2", "--http2"] {
        let (body, code) = authed(&s, &[proto, "-H", "Content-Type: application/json", "--data-binary", &data, &cms]);
        assert_eq!(code, 413, "{proto}: {}", &body[..body.len().min(300)]);
        let status: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["reason"], "RequestEntityTooLarge", "{proto}");
    }
    // The connection's next request works.
    assert_eq!(authed(&s, &["--http2", &cms]).1, 200);
}

/// Sends SIGCONT to a stopped process when dropped (also when an assertion fails).
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Self {
        assert!(Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap().success());
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

#[test]
fn health_endpoints_check_the_store() {
    // The embedded store: named `storage` in the check list.
    let s = ApiServer::start(&[]).expect("start");
    assert_eq!(split(&s.curl(&[&s.url("/readyz")]).unwrap()), ("ok".into(), 200));
    assert_eq!(
        split(&s.curl(&[&s.url("/readyz?verbose")]).unwrap()),
        ("[+]ping ok\n[+]storage ok\nreadyz check passed\n".into(), 200)
    );
    drop(s);

    let etcd = Etcd::start().expect("start etcd");
    let s = ApiServer::start(&["--storage", "etcd", "--etcd-endpoints", etcd.endpoint.as_str()]).expect("start");
    for path in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(split(&s.curl(&[&s.url(path)]).unwrap()), ("ok".into(), 200), "{path}");
    }
    assert_eq!(authed(&s, &[&s.url("/readyz/etcd")]), ("ok".into(), 200));
    {
        // etcd stops answering: every endpoint fails, the reason stays out of the public answer.
        let _paused = Stopped::stop(etcd.pid());
        for path in ["/healthz", "/livez", "/readyz"] {
            let name = path.trim_start_matches('/');
            let (body, code) = split(&s.curl(&["--max-time", "10", &s.url(path)]).unwrap());
            assert_eq!(code, 500, "{path}: {body}");
            assert_eq!(body, format!("[+]ping ok\n[-]etcd failed: reason withheld\n{name} check failed\n"));
        }
        let (body, code) = authed(&s, &["--max-time", "10", &s.url("/readyz/etcd")]);
        assert_eq!(code, 500);
        assert!(body.starts_with("internal server error: "), "{body}");
        assert_eq!(authed(&s, &[&s.url("/readyz/ping")]), ("ok".into(), 200));
    }
    // Back: ok again.
    let ok = keelson_tests::wait_for(Duration::from_secs(20), || {
        (split(&s.curl(&[&s.url("/readyz")]).ok()?) == ("ok".into(), 200)).then_some(())
    });
    assert!(ok.is_some(), "readyz did not recover after etcd resumed");
    assert_eq!(
        split(&s.curl(&[&s.url("/readyz?verbose")]).unwrap()),
        ("[+]ping ok\n[+]etcd ok\nreadyz check passed\n".into(), 200)
    );
}
