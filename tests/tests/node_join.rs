//! Node TLS bootstrapping end to end against a real keelson-apiserver: `token create
//! --print-join-command`, the agent's bootstrap (cluster-info pinned by the CA hash, a CSR
//! auto-approved for the bootstrap token and signed by the server), the node identity seen by
//! kubectl 1.33 and 1.27, refusal of expired tokens and wrong CA pins, rotation under a short
//! `--cluster-signing-duration` without restarting, reuse of a valid certificate on restart, and
//! `kubectl certificate approve|deny` for CSRs the approver leaves alone.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keelson_agent::bootstrap::{self, BootstrapError, PkiError};
use keelson_tests::api::ApiServer;

fn kubectl(version: &str, kubeconfig: &Path, home: &Path, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .args(["--kill-after=5", "60", &format!("/usr/lib/google-cloud-sdk/bin/kubectl.{version}")])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("HOME", home)
        .env("KUBECACHEDIR", home.join(format!("kcache-{version}")))
        .output()
        .unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(server, token, hash)` from `keelson-apiserver token create --print-join-command`.
fn join_command(s: &ApiServer, extra: &[&str]) -> (String, String, String) {
    let bin = keelson_tests::target_dir().join("debug").join("keelson-apiserver");
    let out = Command::new(bin)
        .args(["token", "create", "--data-dir"])
        .arg(&s.dir)
        .arg("--print-join-command")
        .args(extra)
        .output()
        .unwrap();
    let line = ok(out);
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&words[..2], ["keelson-agent", "run"], "{line}");
    let flag = |f: &str| words.iter().position(|w| *w == f).map(|i| words[i + 1].to_string()).unwrap();
    (flag("--server"), flag("--token"), flag("--discovery-token-ca-cert-hash"))
}

fn cfg(server: &str, token: Option<&str>, hash: &str, dir: &Path, node: &str) -> bootstrap::Config {
    bootstrap::Config {
        server: server.into(),
        token: token.map(str::to_string),
        ca_hashes: vec![hash.into()],
        cert_dir: dir.to_path_buf(),
        node_name: node.into(),
        wait: Duration::from_secs(30),
    }
}

fn embedded_cert(kubeconfig: &Path) -> String {
    bootstrap::pki::embedded_cert(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_with_a_bootstrap_token_and_rotates_its_certificate() {
    let s = ApiServer::start(&["--cluster-signing-duration", "60s"]).unwrap();
    let home = s.dir.clone();
    let admin = s.kubeconfig();
    let (server, token, hash) = join_command(&s, &[]);
    assert_eq!(server, s.url(""));
    assert!(hash.starts_with("sha256:") && hash.len() == 7 + 64, "{hash}");

    // cluster-info is readable without credentials; other paths are not.
    let anon = s.curl(&[&s.url("/api/v1/namespaces/kube-public/configmaps/cluster-info")]).unwrap();
    assert!(anon.ends_with("\n200") && anon.contains("certificate-authority-data"), "{anon}");
    let other = s.curl(&[&s.url("/api/v1/namespaces/kube-public/configmaps")]).unwrap();
    assert!(other.ends_with("\n401"), "{other}");

    // A wrong pin is refused before anything is sent to the server.
    let dir = tempfile::tempdir().unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = bootstrap::ensure(cfg(&server, Some(&token), &wrong, &dir.path().join("x"), "node-x")).await.unwrap_err();
    assert!(matches!(err, BootstrapError::Pki(PkiError::CaMismatch { .. })), "{err}");

    // Join.
    let node_a = dir.path().join("a");
    let kubeconfig = bootstrap::ensure(cfg(&server, Some(&token), &hash, &node_a, "node-a")).await.unwrap();
    for f in ["kubelet.kubeconfig", "kubelet-client.key", "kubelet-client.crt"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(node_a.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // SelfSubjectReview is v1 from kubectl 1.28 on (1.27 asks for v1beta1, which is not served);
    // kubectl 1.27 is exercised with the node's kubeconfig below.
    for v in ["1.33", "1.28"] {
        let who = ok(kubectl(v, &kubeconfig, &home, &["auth", "whoami", "-o", "json"]));
        let who: serde_json::Value = serde_json::from_str(&who).unwrap();
        assert_eq!(who["status"]["userInfo"]["username"], "system:node:node-a", "kubectl {v}: {who}");
        let groups = who["status"]["userInfo"]["groups"].to_string();
        assert!(groups.contains("system:nodes") && groups.contains("system:authenticated"), "{groups}");
    }
    // The CSR: requested by the bootstrap token, auto-approved, issued.
    let csrs = ok(kubectl("1.33", &admin, &home, &["get", "csr", "-o", "json"]));
    let csrs: serde_json::Value = serde_json::from_str(&csrs).unwrap();
    let first = &csrs["items"][0];
    let token_id = token.split('.').next().unwrap();
    assert_eq!(first["spec"]["username"], format!("system:bootstrap:{token_id}"));
    assert_eq!(first["spec"]["signerName"], "kubernetes.io/kube-apiserver-client-kubelet");
    assert_eq!(first["status"]["conditions"][0]["reason"], "AutoApproved");
    for v in ["1.33", "1.27"] {
        let table = ok(kubectl(v, &admin, &home, &["get", "csr"]));
        assert!(table.contains(first["metadata"]["name"].as_str().unwrap()), "kubectl {v}: {table}");
    }

    // Node authorizer: node-a reads only the secrets of pods bound to it.
    let objs = dir.path().join("objs.yaml");
    std::fs::write(&objs, "apiVersion: v1\nkind: Secret\nmetadata: {name: s-a, namespace: default}\nstringData: {k: a}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s-b, namespace: default}\nstringData: {k: b}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p-a, namespace: default}\nspec:\n  nodeName: node-a\n  containers: [{name: c, image: busybox}]\n  volumes: [{name: v, secret: {secretName: s-a}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p-b, namespace: default}\nspec:\n  nodeName: node-b\n  containers: [{name: c, image: busybox, env: [{name: X, valueFrom: {secretKeyRef: {name: s-b, key: k}}}]}]\n").unwrap();
    ok(kubectl("1.33", &admin, &home, &["apply", "-f", objs.to_str().unwrap()]));
    for v in ["1.33", "1.27"] {
        ok(kubectl(v, &kubeconfig, &home, &["get", "secret", "s-a", "-n", "default"]));
        let out = kubectl(v, &kubeconfig, &home, &["get", "secret", "s-b", "-n", "default"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success()
                && err.contains("Forbidden")
                && err.contains("no relationship found between node 'node-a'"),
            "kubectl {v}: {err}"
        );
        let out = kubectl(v, &kubeconfig, &home, &["get", "secrets", "-n", "default"]);
        assert!(!out.status.success(), "a node never lists secrets");
        ok(kubectl(v, &kubeconfig, &home, &["get", "pods", "-A"]));
    }
    // NodeRestriction: its own Node only, no restricted labels, only mirror pods bound to itself.
    let write = |name: &str, yaml: &str| -> std::process::Output {
        let f = dir.path().join(name);
        std::fs::write(&f, yaml).unwrap();
        kubectl("1.33", &kubeconfig, &home, &["create", "-f", f.to_str().unwrap()])
    };
    let out = write("nb.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: node-b}\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not allowed to modify node \"node-b\""), "{out:?}");
    let out = write(
        "role.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a, labels: {node-role.kubernetes.io/control-plane: \"\"}}\n",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("node-role.kubernetes.io/control-plane"), "{out:?}");
    ok(write(
        "na.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a, labels: {kubernetes.io/hostname: node-a}}\n",
    ));
    let out = write(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: sneaky, namespace: default}\nspec: {nodeName: node-a, containers: [{name: c, image: busybox}]}\n",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("can only create mirror pods"), "{out:?}");
    ok(write(
        "mirror.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: mirror, namespace: default, annotations: {kubernetes.io/config.mirror: x}}\nspec: {nodeName: node-a, containers: [{name: c, image: busybox}]}\n",
    ));
    let out = kubectl("1.33", &kubeconfig, &home, &["delete", "pod", "p-b", "-n", "default", "--wait=false"]);
    assert!(!out.status.success(), "node-a cannot delete node-b's pod");

    // An expired token is refused (401), and so is its bootstrap.
    let expired = "abcdef.0123456789abcdef";
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-abcdef\n  namespace: kube-system\ntype: bootstrap.kubernetes.io/token\nstringData:\n  token-id: abcdef\n  token-secret: 0123456789abcdef\n  usage-bootstrap-authentication: \"true\"\n  expiration: \"2020-01-01T00:00:00Z\"\n";
    let file = dir.path().join("expired.yaml");
    std::fs::write(&file, secret).unwrap();
    ok(kubectl("1.33", &admin, &home, &["apply", "-f", file.to_str().unwrap()]));
    let out = s.curl(&["-H", &format!("Authorization: Bearer {expired}"), &s.url("/api/v1/namespaces")]).unwrap();
    assert!(out.ends_with("\n401"), "{out}");
    let err = bootstrap::ensure(cfg(&server, Some(expired), &hash, &dir.path().join("e"), "node-e")).await.unwrap_err();
    assert!(err.to_string().contains("401") || err.to_string().contains("Unauthorized"), "{err}");
    // The live token still authenticates as its bootstrap user.
    let out = s
        .curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &s.url("/apis/certificates.k8s.io/v1/certificatesigningrequests"),
        ])
        .unwrap();
    assert!(out.ends_with("\n200"), "{out}");

    // Rotation: with 60 s certificates a new one replaces the first within ~54 s, no restart (60 s
    // rather than less leaves the renewal window wide enough for a loaded CI machine).
    let first_cert = embedded_cert(&kubeconfig);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while embedded_cert(&kubeconfig) == first_cert {
        assert!(std::time::Instant::now() < deadline, "no rotation within 90 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let who =
        ok(kubectl("1.33", &kubeconfig, &home, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]));
    assert_eq!(who, "system:node:node-a");
    let csrs = ok(kubectl("1.33", &admin, &home, &["get", "csr", "-o", "json"]));
    let csrs: serde_json::Value = serde_json::from_str(&csrs).unwrap();
    let renewal = csrs["items"].as_array().unwrap().iter().find(|c| c["spec"]["username"] == "system:node:node-a");
    assert!(renewal.is_some(), "the renewal was filed by the node itself: {csrs}");

    // A restart with a valid certificate files no CSR (and needs no token).
    let count = csrs["items"].as_array().unwrap().len();
    let again = bootstrap::ensure(cfg(&server, None, &hash, &node_a, "node-a")).await.unwrap();
    assert_eq!(again, kubeconfig);
    let csrs = ok(kubectl("1.33", &admin, &home, &["get", "csr", "-o", "json"]));
    let now: serde_json::Value = serde_json::from_str(&csrs).unwrap();
    assert!(now["items"].as_array().unwrap().len() <= count + 1, "at most the running rotation's CSR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_approves_and_denies_what_the_approver_leaves_alone() {
    let s = ApiServer::start(&[]).unwrap();
    let home = s.dir.clone();
    let admin = s.kubeconfig();
    let dir = tempfile::tempdir().unwrap();
    // A non-node client CSR (user alice) filed by the admin: not auto-approved.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, "alice");
    let pem = p.serialize_request(&key).unwrap().pem().unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
    for name in ["alice-1", "alice-2"] {
        let yaml = format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {name}\nspec:\n  request: {b64}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [\"client auth\"]\n"
        );
        let f = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        ok(kubectl("1.33", &admin, &home, &["create", "-f", f.to_str().unwrap()]));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let get = |name: &str| -> serde_json::Value {
        serde_json::from_str(&ok(kubectl("1.33", &admin, &home, &["get", "csr", name, "-o", "json"]))).unwrap()
    };
    assert!(get("alice-1")["status"].get("conditions").is_none(), "not auto-approved");
    assert_eq!(get("alice-1")["spec"]["username"], "admin");
    ok(kubectl("1.27", &admin, &home, &["certificate", "approve", "alice-1"]));
    ok(kubectl("1.33", &admin, &home, &["certificate", "deny", "alice-2"]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = get("alice-1");
        if c["status"]["certificate"].is_string() {
            let pem =
                base64::engine::general_purpose::STANDARD.decode(c["status"]["certificate"].as_str().unwrap()).unwrap();
            let pem = String::from_utf8(pem).unwrap();
            let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            let cert = p.parse_x509().unwrap();
            assert_eq!(cert.subject().iter_common_name().next().unwrap().as_str().unwrap(), "alice");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "alice-1 not signed: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let denied = get("alice-2");
    assert_eq!(denied["status"]["conditions"][0]["type"], "Denied");
    assert!(denied["status"].get("certificate").is_none());
    // The spec cannot be changed once filed; a garbage request is refused with a field cause.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: bad\nspec:\n  request: aGVsbG8=\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [\"client auth\"]\n").unwrap();
    let out = kubectl("1.33", &admin, &home, &["create", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.request"), "{}", String::from_utf8_lossy(&out.stderr));
}
