//! keelson-apiserver answers like kube-apiserver where keelson-apimachinery's rules apply:
//! negative quantities (422, canonical form stored), the 1 MiB ConfigMap cap (422) and
//! duplicate JSON keys (400 under `fieldValidation=Strict`, a warning under Warn). Over HTTPS with
//! curl, so the status code and the exact wording are what a client sees.
#![allow(clippy::unwrap_used)]

use keelson_tests::api::ApiServer;

/// POSTs `body` (JSON) to `path`; returns (response body, status code, headers).
fn post(s: &ApiServer, path: &str, body: &str) -> (String, u16, String) {
    let file = s.dir.join("body.json");
    std::fs::write(&file, body).unwrap();
    let headers = s.dir.join("headers.txt");
    let auth = format!("Authorization: Bearer {}", s.token().unwrap());
    let out = s
        .curl(&[
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-D",
            headers.to_str().unwrap(),
            "--data-binary",
            &format!("@{}", file.display()),
            &s.url(path),
        ])
        .unwrap();
    let (body, code) = out.rsplit_once('\n').unwrap();
    (body.to_string(), code.trim().parse().unwrap(), std::fs::read_to_string(&headers).unwrap_or_default())
}

#[test]
fn negative_quantities_are_refused_and_stored_quantities_are_canonical() {
    let s = ApiServer::start(&[]).expect("apiserver");
    let pod = |name: &str, mem: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"containers":[{{"name":"c","image":"i","resources":{{"requests":{{"cpu":"0.5","memory":"{mem}"}}}}}}]}}}}"#
        )
    };
    let (body, code, _) = post(&s, "/api/v1/namespaces/default/pods", &pod("neg", "-5Mi"));
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains(r#"spec.containers[0].resources.requests[memory]: Invalid value: \"-5Mi\": must be greater than or equal to 0"#),
        "{body}"
    );
    let (body, code, _) = post(&s, "/api/v1/namespaces/default/pods", &pod("ok", "1.5Gi"));
    assert_eq!(code, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let req = &v["spec"]["containers"][0]["resources"]["requests"];
    assert_eq!((req["cpu"].as_str(), req["memory"].as_str()), (Some("500m"), Some("1536Mi")));
}

#[test]
fn configmap_data_over_one_mebibyte_is_refused() {
    let s = ApiServer::start(&[]).expect("apiserver");
    let cm = |name: &str, n: usize| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"a":"{}"}}}}"#,
            "x".repeat(n)
        )
    };
    let (body, code, _) = post(&s, "/api/v1/namespaces/default/configmaps", &cm("fits", 1024 * 1024));
    assert_eq!(code, 201, "{}", &body[..body.len().min(300)]);
    let (body, code, _) = post(&s, "/api/v1/namespaces/default/configmaps", &cm("big", 1024 * 1024 + 1));
    assert_eq!(code, 422, "{}", &body[..body.len().min(300)]);
    assert!(body.contains(r#"ConfigMap \"big\" is invalid: []: Too long: must have at most 1048576 bytes"#), "{body}");
}

#[test]
fn duplicate_json_keys_follow_field_validation() {
    let s = ApiServer::start(&[]).expect("apiserver");
    let body = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup"},"data":{"a":"1","a":"2"}}"#;
    let (out, code, _) = post(&s, "/api/v1/namespaces/default/configmaps?fieldValidation=Strict", body);
    assert_eq!(code, 400, "{out}");
    assert!(out.contains(r#"strict decoding error: duplicate field \"data.a\""#), "{out}");
    let (out, code, headers) = post(&s, "/api/v1/namespaces/default/configmaps?fieldValidation=Warn", body);
    assert_eq!(code, 201, "{out}");
    // The server writes the warning's inner quotes as apostrophes (header quoting).
    assert!(headers.contains(r#"299 - "duplicate field 'data.a'""#), "{headers}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"]["a"], "2");
}

/// `stringData` is write-only: folded into `data` (base64) on create and on every update, as
/// upstream's conversion does, and never returned. kubectl apply (client-side) and kubectl 1.27
/// see the same.
#[test]
fn secret_string_data_is_folded_into_data() {
    let s = ApiServer::start(&[]).expect("apiserver");
    let data = |v: &str| {
        let out = s.kubectl(v, &["get", "secret", "sd", "-o", "json"]).unwrap();
        let obj: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(obj.get("stringData").is_none(), "stringData returned: {out}");
        obj["data"].clone()
    };
    let apply = |yaml: &str| {
        let f = s.dir.join("secret.yaml");
        std::fs::write(&f, yaml).unwrap();
        s.kubectl("1.33", &["apply", "-f", f.to_str().unwrap()]).unwrap();
    };
    apply("apiVersion: v1\nkind: Secret\nmetadata: {name: sd}\ndata: {keep: eQ==}\nstringData: {a: hello}\n");
    assert_eq!(data("1.33"), serde_json::json!({"a": "aGVsbG8=", "keep": "eQ=="}));
    apply("apiVersion: v1\nkind: Secret\nmetadata: {name: sd}\ndata: {keep: eQ==}\nstringData: {a: bye, b: x}\n");
    assert_eq!(data("1.27"), serde_json::json!({"a": "Ynll", "b": "eA==", "keep": "eQ=="}));
}
