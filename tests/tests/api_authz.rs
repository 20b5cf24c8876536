//! RBAC in keelson-apiserver with unmodified kubectl (1.33 and 1.27) and curl: Forbidden answers
//! in upstream's exact words, `kubectl auth can-i` / `whoami`, role bindings taking effect without
//! a restart and surviving one, privilege-escalation prevention, and the policy cache following
//! writes made through another apiserver sharing one etcd.

use std::process::Output;
use std::time::Duration;

use keelson_tests::api::{ApiServer, Etcd, write_manifest};
use keelson_tests::wait_for;

const K133: &str = "1.33";
const K127: &str = "1.27";
const ALICE: &str = "alice-token-0123456789";
const EVE: &str = "eve-token-0123456789";

fn users() -> Vec<(&'static str, &'static str, &'static [&'static str])> {
    vec![(ALICE, "alice", &[]), (EVE, "eve", &["qa"])]
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// kubectl as `token`; asserts failure with exactly `message` as the server's Forbidden text.
fn forbidden(s: &ApiServer, version: &str, token: &str, args: &[&str], message: &str) {
    let out = s.kubectl_as(version, token, args).expect("run kubectl");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "kubectl.{version} {args:?} should fail: {stdout}{stderr}");
    // `get` reports the Status as is; `create -f` and the `create <kind>` generators add context.
    let want = format!("Error from server (Forbidden): {message}");
    let suffix = format!(": {message}");
    let with_context = |l: &str| {
        (l.starts_with("error: failed to create")
            || l.starts_with("Error from server (Forbidden): error when creating"))
            && l.ends_with(&suffix)
    };
    assert!(
        stderr.lines().any(|l| l == want || with_context(l)),
        "kubectl.{version} {args:?}: want {want:?}, got {stderr}"
    );
}

fn ok(s: &ApiServer, version: &str, token: &str, args: &[&str]) -> String {
    let out = s.kubectl_as(version, token, args).expect("run kubectl");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "kubectl.{version} {args:?} failed: {stdout}{stderr}");
    stdout
}

/// `kubectl auth can-i` answer (and its exit code: 0 for yes, 1 for no).
fn can_i(s: &ApiServer, version: &str, token: &str, args: &[&str]) -> bool {
    let mut full = vec!["auth", "can-i"];
    full.extend_from_slice(args);
    let out = s.kubectl_as(version, token, &full).expect("run kubectl");
    let (stdout, stderr) = text(&out);
    match (stdout.trim(), out.status.code()) {
        ("yes", Some(0)) => true,
        ("no", Some(1)) => false,
        other => panic!("kubectl.{version} auth can-i {args:?}: {other:?} {stderr}"),
    }
}

/// Waits until `can-i` gives `want` (bindings reach the policy cache through a watch).
fn eventually_can(s: &ApiServer, token: &str, args: &[&str], want: bool) {
    let seen = wait_for(Duration::from_secs(10), || (can_i(s, K133, token, args) == want).then_some(()));
    assert!(seen.is_some(), "auth can-i {args:?} never became {want}");
}

fn admin(s: &ApiServer, args: &[&str]) -> String {
    s.kubectl(K133, args).expect("admin kubectl")
}

const SECRET_READER: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: secret-reader, namespace: team}
rules:
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list"]
"#;

#[test]
fn unprivileged_users_are_forbidden_until_bound() {
    let s = ApiServer::start_with_users(&users(), &[]).expect("start apiserver");
    admin(&s, &["create", "namespace", "team"]);
    admin(&s, &["create", "namespace", "other"]);

    // Nothing granted: list and create are refused in upstream's words, with both kubectl versions.
    for v in [K133, K127] {
        forbidden(
            &s,
            v,
            ALICE,
            &["get", "pods", "-n", "team"],
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "team""#,
        );
        forbidden(
            &s,
            v,
            ALICE,
            &["create", "configmap", "c1", "--from-literal=a=b", "-n", "team"],
            r#"configmaps is forbidden: User "alice" cannot create resource "configmaps" in API group "" in the namespace "team""#,
        );
        forbidden(
            &s,
            v,
            ALICE,
            &["get", "nodes"],
            r#"nodes is forbidden: User "alice" cannot list resource "nodes" in API group "" at the cluster scope"#,
        );
        assert!(!can_i(&s, v, ALICE, &["list", "pods", "-n", "team"]));
    }

    // The raw Status, as curl sees it.
    let auth = format!("Authorization: Bearer {ALICE}");
    let out = s.curl(&["-H", &auth, &s.url("/api/v1/namespaces/team/pods/p1")]).expect("curl");
    let (body, code) = out.rsplit_once('\n').expect("status line");
    assert_eq!(code, "403", "{out}");
    let st: serde_json::Value = serde_json::from_str(body).expect("Status JSON");
    assert_eq!(
        st,
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403,
            "message": "pods \"p1\" is forbidden: User \"alice\" cannot get resource \"pods\" in API group \"\" in the namespace \"team\"",
            "details": {"name": "p1", "kind": "pods"},
        })
    );
    let out = s.curl(&["-H", &auth, &s.url("/metrics")]).expect("curl");
    assert!(
        out.ends_with("\n403") && out.contains(r#"forbidden: User \"alice\" cannot get path \"/metrics\""#),
        "{out}"
    );
    // Without credentials only the public-info paths are open (system:public-info-viewer).
    let anon = s.curl(&[&s.url("/healthz")]).expect("curl");
    assert!(anon.ends_with("\n200"), "{anon}");
    let anon = s.curl(&[&s.url("/healthz/ping")]).expect("curl");
    assert!(
        anon.ends_with("\n403")
            && anon.contains(r#"forbidden: User \"system:anonymous\" cannot get path \"/healthz/ping\""#),
        "{anon}"
    );
    assert!(s.curl(&[&s.url("/api")]).expect("curl").ends_with("\n401"));
    // Discovery, version and health stay readable for every authenticated user (bootstrap policy).
    for path in ["/api", "/apis", "/version", "/healthz", "/openapi/v3"] {
        let out = s.curl(&["-H", &auth, &s.url(path)]).expect("curl");
        assert!(out.ends_with("\n200"), "{path}: {out}");
    }
    // A body is never read before the decision: a huge create is still a plain 403.
    let big = s.dir.join("big.json");
    std::fs::write(&big, "x".repeat(4 << 20)).expect("write body");
    let data = format!("@{}", big.display());
    let url = s.url("/api/v1/namespaces/team/configmaps");
    let out =
        s.curl(&["-H", &auth, "-H", "Content-Type: application/json", "--data-binary", &data, &url]).expect("curl");
    assert!(out.ends_with("\n403"), "{}", &out[out.len().saturating_sub(300)..]);

    // who am I
    let who = ok(&s, K133, EVE, &["auth", "whoami"]);
    assert!(who.contains("eve") && who.contains("[qa system:authenticated]"), "{who}");

    // A RoleBinding to `view` in one namespace takes effect without a restart, only there.
    admin(&s, &["create", "rolebinding", "alice-view", "--clusterrole=view", "--user=alice", "-n", "team"]);
    eventually_can(&s, ALICE, &["list", "pods", "-n", "team"], true);
    for v in [K133, K127] {
        let out = s.kubectl_as(v, ALICE, &["get", "pods", "-n", "team"]).expect("kubectl");
        assert!(out.status.success(), "{:?}", text(&out));
        assert!(can_i(&s, v, ALICE, &["watch", "deployments.apps", "-n", "team"]));
        assert!(!can_i(&s, v, ALICE, &["list", "pods", "-n", "other"]));
        assert!(!can_i(&s, v, ALICE, &["create", "pods", "-n", "team"]));
        assert!(!can_i(&s, v, ALICE, &["get", "secrets", "-n", "team"]));
    }
    forbidden(
        &s,
        K133,
        ALICE,
        &["get", "pods", "-n", "other"],
        r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "other""#,
    );
    forbidden(
        &s,
        K133,
        ALICE,
        &["run", "p", "--image=busybox", "-n", "team"],
        r#"pods is forbidden: User "alice" cannot create resource "pods" in API group "" in the namespace "team""#,
    );
    let rules = ok(&s, K133, ALICE, &["auth", "can-i", "--list", "-n", "team"]);
    assert!(rules.lines().any(|l| l.starts_with("pods ") && l.contains("[get list watch]")), "{rules}");

    // Tables: bindings with -o wide, roles with their creation time; the bootstrap policy is there.
    let wide = admin(&s, &["get", "rolebindings", "-n", "team", "-o", "wide"]);
    let head: Vec<&str> = wide.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(head, ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"], "{wide}");
    assert!(wide.lines().any(|l| l.starts_with("alice-view") && l.contains("ClusterRole/view") && l.contains("alice")));
    let roles = admin(&s, &["get", "clusterroles"]);
    assert!(roles.starts_with("NAME") && roles.lines().next().unwrap_or_default().contains("CREATED AT"), "{roles}");
    for name in ["cluster-admin", "admin", "edit", "view", "system:discovery", "system:basic-user"] {
        assert!(roles.lines().any(|l| l.split_whitespace().next() == Some(name)), "{name} missing: {roles}");
    }
    let labelled =
        admin(&s, &["get", "clusterrolebindings", "-l", "kubernetes.io/bootstrapping=rbac-defaults", "-o", "name"]);
    assert!(labelled.contains("clusterrolebinding.rbac.authorization.k8s.io/cluster-admin"), "{labelled}");

    // Validation with field paths; roleRef is immutable.
    let bad = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: bad}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: x}\nsubjects: [{kind: ServiceAccount, name: sa}]\n";
    let f = write_manifest(&s.dir, "bad.yaml", bad).expect("manifest");
    let out = s.kubectl_output(K133, &["create", "-f", f.to_str().unwrap_or_default()]).expect("kubectl");
    let (_, err) = text(&out);
    assert!(
        err.contains("roleRef.kind: Unsupported value: \"Role\"")
            && err.contains("subjects[0].namespace: Required value"),
        "{err}"
    );
    let changed = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: alice-view, namespace: team}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}\nsubjects: [{kind: User, name: alice}]\n";
    let f = write_manifest(&s.dir, "changed.yaml", changed).expect("manifest");
    let out = s.kubectl_output(K133, &["replace", "-f", f.to_str().unwrap_or_default()]).expect("kubectl");
    let (_, err) = text(&out);
    assert!(err.contains("roleRef: Invalid value") && err.contains("cannot change roleRef"), "{err}");

    // Escalation: eve may manage roles and bindings in `team` (no escalate/bind verbs) but holds
    // no secrets access, so she cannot grant it…
    let manage = "--verb=get,list,watch,create,update,patch,delete";
    let rbac_res = "--resource=roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io";
    admin(&s, &["create", "role", "rbac-manager", manage, rbac_res, "-n", "team"]);
    admin(&s, &["create", "rolebinding", "eve-rbac", "--role=rbac-manager", "--user=eve", "-n", "team"]);
    eventually_can(&s, EVE, &["create", "roles.rbac.authorization.k8s.io", "-n", "team"], true);
    let f = write_manifest(&s.dir, "secret-reader.yaml", SECRET_READER).expect("manifest");
    let path = f.to_str().unwrap_or_default();
    let escalation = |name: &str, err: &str| {
        err.contains(&format!(
            "{name} is forbidden: user \"eve\" (groups=[\"qa\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:"
        ))
    };
    let out = s.kubectl_as(K133, EVE, &["create", "-f", path]).expect("kubectl");
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(escalation("roles.rbac.authorization.k8s.io \"secret-reader\"", &err), "{err}");
    assert!(err.contains(r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#), "{err}");
    // …nor bind herself to a role holding more than she has.
    let out = s
        .kubectl_as(K133, EVE, &["create", "rolebinding", "eve-edit", "--clusterrole=edit", "--user=eve", "-n", "team"])
        .expect("kubectl");
    let (_, err) = text(&out);
    assert!(escalation("rolebindings.rbac.authorization.k8s.io \"eve-edit\"", &err), "{err}");
    // Binding to what she already holds is fine.
    ok(&s, K133, EVE, &["create", "rolebinding", "eve-self", "--role=rbac-manager", "--user=eve", "-n", "team"]);
    // Once she holds secrets access herself, the same role is accepted.
    admin(&s, &["create", "role", "secret-getter", "--verb=get,list", "--resource=secrets", "-n", "team"]);
    admin(&s, &["create", "rolebinding", "eve-secrets", "--role=secret-getter", "--user=eve", "-n", "team"]);
    eventually_can(&s, EVE, &["get", "secrets", "-n", "team"], true);
    ok(&s, K133, EVE, &["create", "-f", path]);
    assert!(admin(&s, &["get", "roles", "-n", "team"]).contains("secret-reader"));

    // Deleting a binding revokes without a restart.
    admin(&s, &["delete", "rolebinding", "eve-secrets", "-n", "team"]);
    eventually_can(&s, EVE, &["get", "secrets", "-n", "team"], false);

    // Everything survives a restart.
    // Names and resourceVersions: a restart neither duplicates nor rewrites the bootstrap policy.
    let versions = ["get", "clusterroles,clusterrolebindings", "-o", "jsonpath={.items[*].metadata.resourceVersion}"];
    let before = admin(&s, &versions);
    assert!(before.split_whitespace().count() >= 11, "{before}");
    let (dir, tmp, port) = s.kill9();
    let s = ApiServer::start_in(&dir, port, &[]).expect("restart apiserver");
    let _keep = tmp;
    assert!(can_i(&s, K133, ALICE, &["list", "pods", "-n", "team"]), "binding lost across restart");
    assert!(!can_i(&s, K133, EVE, &["get", "secrets", "-n", "team"]));
    assert_eq!(admin(&s, &versions), before);
    assert!(admin(&s, &["get", "roles", "-n", "team"]).contains("secret-reader"));
}

#[test]
fn review_apis_are_create_only_in_discovery() {
    let s = ApiServer::start_with_users(&users(), &[]).expect("start apiserver");
    let doc = admin(&s, &["get", "--raw", "/apis/authorization.k8s.io/v1"]);
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("resource list");
    let names: Vec<&str> =
        doc["resources"].as_array().into_iter().flatten().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["selfsubjectaccessreviews", "selfsubjectrulesreviews", "subjectaccessreviews"]);
    assert!(doc["resources"].as_array().into_iter().flatten().all(|r| r["verbs"] == serde_json::json!(["create"])));
    let wide = admin(&s, &["api-resources", "-o", "wide", "--api-group=authentication.k8s.io"]);
    let row: Vec<&str> =
        wide.lines().find(|l| l.starts_with("selfsubjectreviews")).unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        row,
        ["selfsubjectreviews", "authentication.k8s.io/v1", "false", "SelfSubjectReview", "create"],
        "{wide}"
    );
    let rbac = admin(&s, &["api-resources", "--api-group=rbac.authorization.k8s.io", "-o", "name"]);
    let mut got: Vec<&str> = rbac.lines().collect();
    got.sort_unstable();
    assert_eq!(
        got,
        [
            "clusterrolebindings.rbac.authorization.k8s.io",
            "clusterroles.rbac.authorization.k8s.io",
            "rolebindings.rbac.authorization.k8s.io",
            "roles.rbac.authorization.k8s.io"
        ]
    );
    // SubjectAccessReview answers for someone else (admin only); `kubectl auth can-i --as` uses impersonation, so post it raw.
    let sar = r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{"user":"bob","groups":["system:masters"],"resourceAttributes":{"verb":"delete","resource":"nodes"}}}"#;
    let f = write_manifest(&s.dir, "sar.json", sar).expect("manifest");
    let out = admin(&s, &["create", "-f", f.to_str().unwrap_or_default(), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("review");
    assert_eq!(v["status"]["allowed"], true, "{out}");
    forbidden(
        &s,
        K133,
        ALICE,
        &["create", "-f", f.to_str().unwrap_or_default()],
        r#"subjectaccessreviews.authorization.k8s.io is forbidden: User "alice" cannot create resource "subjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope"#,
    );
    // Not stored: list is not a verb here.
    let auth = format!("Authorization: Bearer {}", s.token().expect("admin token"));
    let out = s.curl(&["-H", &auth, &s.url("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")]).expect("curl");
    assert!(
        out.ends_with(
            "
405"
        ),
        "{out}"
    );
}

/// Two apiservers on one etcd: a binding written through one takes effect on the other.
#[test]
fn policy_cache_follows_etcd_writes_from_another_apiserver() {
    let etcd = Etcd::start().expect("start etcd");
    let flags = ["--storage", "etcd", "--etcd-endpoints", etcd.endpoint.as_str()];
    let a = ApiServer::start_with_users(&users(), &flags).expect("start apiserver a");
    let b = ApiServer::start_with_users(&users(), &flags).expect("start apiserver b");
    admin(&a, &["create", "namespace", "shared"]);
    assert!(!can_i(&b, K133, ALICE, &["list", "configmaps", "-n", "shared"]));
    admin(&a, &["create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", "shared"]);
    eventually_can(&b, ALICE, &["create", "configmaps", "-n", "shared"], true);
    ok(&b, K127, ALICE, &["create", "configmap", "c1", "--from-literal=a=b", "-n", "shared"]);
    admin(&b, &["delete", "rolebinding", "alice-edit", "-n", "shared"]);
    eventually_can(&a, ALICE, &["list", "configmaps", "-n", "shared"], false);
    // The bootstrap policy was written once, not twice.
    let crbs = admin(&b, &["get", "clusterrolebindings", "-o", "name"]);
    assert_eq!(crbs.lines().filter(|l| l.ends_with("/cluster-admin")).count(), 1, "{crbs}");
}
