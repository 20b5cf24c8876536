//! The official Python client, bad input, authentication, and crash durability against
//! keelson-apiserver.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use keelson_tests::api::ApiServer;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

#[test]
fn python_client_create_list_watch_patch_delete() {
    let s = ApiServer::start(&[]).expect("start");
    let script = keelson_tests::workspace_root().join("tests/python/api_client.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(s.kubeconfig())
        .arg("pyns")
        .output()
        .expect("run python3 (the `kubernetes` package is installed by `cargo xtask deps`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("PYTHON-CLIENT-OK"),
        "python client flow failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (body, status code) of a curl call.
fn split(out: &str) -> (String, u16) {
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (body.to_string(), code.parse().unwrap_or(0))
}

#[test]
fn authentication_and_bad_input_get_4xx_status() {
    let s = ApiServer::start(&[]).expect("start");
    let token = s.token().expect("token");
    let auth = format!("Authorization: Bearer {token}");
    let cms = s.url("/api/v1/namespaces/default/configmaps");
    let call = |extra: &[&str]| split(&s.curl(extra).expect("curl"));

    // Health is public; everything else needs credentials.
    assert_eq!(call(&[&s.url("/healthz")]).1, 200);
    let (body, code) = call(&[&s.url("/api/v1/namespaces")]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"reason\":\"Unauthorized\""), "{body}");
    assert_eq!(call(&["-H", "Authorization: Bearer wrong", &s.url("/api/v1/namespaces")]).1, 401);
    assert_eq!(call(&["-H", &auth, &s.url("/api/v1/namespaces")]).1, 200);
    let crt = s.dir.join("admin.crt");
    let key = s.dir.join("admin.key");
    let (_, code) = call(&[
        "--cert",
        crt.to_str().expect("utf8"),
        "--key",
        key.to_str().expect("utf8"),
        &s.url("/api/v1/namespaces"),
    ]);
    assert_eq!(code, 200, "client-certificate authentication");
    let kc = s.dir.join("admin-cert.kubeconfig");
    let out = std::process::Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.33")
        .args(["--kubeconfig", kc.to_str().expect("utf8"), "get", "ns", "default", "-o", "name"])
        .output()
        .expect("kubectl");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "namespace/default");

    let post = |ct: &str, body: &str| {
        let path = s.dir.join("body");
        std::fs::write(&path, body).expect("write body");
        let data = format!("@{}", path.display());
        call(&["-X", "POST", "-H", &auth, "-H", &format!("Content-Type: {ct}"), "--data-binary", &data, &cms])
    };
    let t0 = Instant::now();
    // Over 3 MiB.
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(3 * 1024 * 1024 + 10)
    );
    let (body, code) = post("application/json", &big);
    assert_eq!(code, 413, "{body}");
    // A YAML alias bomb (a billion laughs) and deeply nested JSON.
    let mut bomb = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for i in 0..9 {
        let prev = if i == 0 { "a".to_string() } else { format!("l{}", i - 1) };
        bomb.push_str(&format!(
            "l{i}: &l{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    let (body, code) = post("application/yaml", &bomb);
    assert_eq!(code, 400, "{body}");
    let (_, code) = post("application/json", &format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)));
    assert_eq!(code, 400);
    // Wrong content type, unknown kind, wrong kind, not an object.
    assert_eq!(post("text/plain", "hello").1, 415);
    let (body, code) = post("application/json", r#"{"apiVersion":"v1","kind":"Frobnicator","metadata":{"name":"x"}}"#);
    assert_eq!(code, 400, "{body}");
    assert_eq!(post("application/json", r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#).1, 400);
    assert_eq!(post("application/json", "[1,2]").1, 400);
    assert!(t0.elapsed() < Duration::from_secs(10), "bad input must be rejected quickly");

    // Validation: 422 with field causes; strict field validation; warnings.
    let (body, code) = post(
        "application/json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name","labels":{"k":"-bad"}}}"#,
    );
    assert_eq!(code, 422, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status json");
    let fields: Vec<&str> =
        status["details"]["causes"].as_array().expect("causes").iter().filter_map(|c| c["field"].as_str()).collect();
    assert_eq!(fields, ["metadata.name", "metadata.labels"]);
    let strict = format!("{cms}?fieldValidation=Strict");
    let path = s.dir.join("u.json");
    std::fs::write(&path, r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"u"},"bogus":1}"#)
        .expect("write");
    let data = format!("@{}", path.display());
    let (body, code) =
        call(&["-X", "POST", "-H", &auth, "-H", "Content-Type: application/json", "--data-binary", &data, &strict]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("unknown field \\\"bogus\\\""), "{body}");
    let out = s
        .curl(&[
            "-i",
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
            &format!("{cms}?fieldValidation=Warn"),
        ])
        .expect("curl");
    assert!(out.to_ascii_lowercase().contains("warning: 299 - \"unknown field 'bogus'\""), "{out}");

    // Malformed patches.
    let patch = |ct: &str, body: &str| {
        call(&[
            "-X",
            "PATCH",
            "-H",
            &auth,
            "-H",
            &format!("Content-Type: {ct}"),
            "--data-binary",
            body,
            &format!("{cms}/u"),
        ])
    };
    assert_eq!(patch("application/json-patch+json", r#"{"op":"add"}"#).1, 400);
    assert_eq!(
        patch("application/json-patch+json", r#"[{"op":"test","path":"/metadata/name","value":"other"}]"#).1,
        422
    );
    assert_eq!(patch("application/json-patch+json", r#"[{"op":"remove","path":"/nope/x"}]"#).1, 400);
    assert_eq!(patch("application/merge-patch+json", "[1]").1, 400);
    assert_eq!(patch("application/strategic-merge-patch+json", "{not json").1, 400);
    assert_eq!(patch("application/apply-patch+yaml", "a: b").1, 400, "apply needs fieldManager");
    assert_eq!(patch("application/xml", "<a/>").1, 415);

    // Unknown resources, subresources and methods.
    assert_eq!(call(&["-H", &auth, &s.url("/api/v1/frobs")]).1, 404);
    assert_eq!(call(&["-H", &auth, &s.url("/apis/nope/v1/things")]).1, 404);
    let (body, code) = call(&["-H", &auth, &s.url("/api/v1/namespaces/default/pods/x/log")]);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("ServiceUnavailable"), "{body}");

    // pods/binding sets spec.nodeName once; a second binding conflicts.
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"b1","labels":{"grp":"x"}},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#;
    let pods = s.url("/api/v1/namespaces/default/pods");
    assert_eq!(
        call(&["-X", "POST", "-H", &auth, "-H", "Content-Type: application/json", "--data-binary", pod, &pods]).1,
        201
    );
    let binding =
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"b1"},"target":{"kind":"Node","name":"node-7"}}"#;
    let bind_url = format!("{pods}/b1/binding");
    let (body, code) =
        call(&["-X", "POST", "-H", &auth, "-H", "Content-Type: application/json", "--data-binary", binding, &bind_url]);
    assert_eq!(code, 201, "{body}");
    let (body, _) = call(&["-H", &auth, &format!("{pods}/b1")]);
    assert!(body.contains("\"nodeName\":\"node-7\""), "{body}");
    assert_eq!(
        call(&["-X", "POST", "-H", &auth, "-H", "Content-Type: application/json", "--data-binary", binding, &bind_url])
            .1,
        409
    );

    // deletecollection honours the label selector.
    for (n, g) in [("k1", "del"), ("k2", "del"), ("k3", "keep")] {
        let cm =
            format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{n}","labels":{{"g":"{g}"}}}}}}"#);
        assert_eq!(
            call(&["-X", "POST", "-H", &auth, "-H", "Content-Type: application/json", "--data-binary", &cm, &cms]).1,
            201
        );
    }
    assert_eq!(call(&["-X", "DELETE", "-H", &auth, &format!("{cms}?labelSelector=g%3Ddel")]).1, 200);
    let (body, _) = call(&["-H", &auth, &format!("{cms}?labelSelector=g")]);
    let list: serde_json::Value = serde_json::from_str(&body).expect("list");
    let names: Vec<&str> =
        list["items"].as_array().expect("items").iter().filter_map(|i| i["metadata"]["name"].as_str()).collect();
    assert_eq!(names, ["k3"]);

    // Still serving after all of that.
    assert_eq!(call(&["-H", &auth, &s.url("/readyz")]).1, 200);
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let s = ApiServer::start(&[]).expect("start");
    let client = s.client().await.expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let api = api.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let cm: ConfigMap = serde_json::from_value(
                    json!({"metadata": {"name": format!("d{w}-{i}")}, "data": {"i": i.to_string()}}),
                )
                .expect("cm");
                match api.create(&PostParams::default(), &cm).await {
                    Ok(o) => acked.push((format!("d{w}-{i}"), o.metadata.resource_version.unwrap_or_default())),
                    Err(_) => break,
                }
                i += 1;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (dir, tmp, port) = s.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    assert!(acked.len() > 50, "too few writes before the kill: {}", acked.len());

    let s2 = ApiServer::start_in(&dir, port, &[]).expect("restart on the same data dir");
    let _keep = tmp;
    let api: Api<ConfigMap> = Api::namespaced(s2.client().await.expect("client"), "default");
    let list = api.list(&ListParams::default()).await.expect("list");
    let stored: std::collections::HashMap<String, String> = list
        .items
        .iter()
        .map(|c| (c.metadata.name.clone().unwrap_or_default(), c.metadata.resource_version.clone().unwrap_or_default()))
        .collect();
    for (name, rv) in &acked {
        assert_eq!(stored.get(name), Some(rv), "acknowledged write {name}@{rv} lost");
    }
    let max_acked: i64 = acked.iter().map(|(_, rv)| rv.parse::<i64>().expect("rv")).max().unwrap_or(0);
    let after: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "after-restart"}})).expect("cm");
    let o = api.create(&PostParams::default(), &after).await.expect("create after restart");
    assert!(
        o.metadata.resource_version.expect("rv").parse::<i64>().expect("rv") > max_acked,
        "revisions never go back"
    );
}
