//! Unmodified kubectl 1.33, 1.32 and 1.27 against keelson-apiserver: the everyday flows.

use std::process::{Command, Stdio};
use std::time::Duration;

use keelson_tests::api::{ApiServer, write_manifest};

const DEPLOY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        env:
        - {name: MODE, value: one}
        - {name: KEEP, value: same}
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - port: 80
"#;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: busy
  labels: {app: busy, tier: fe}
spec:
  nodeName: node-a
  containers:
  - name: c
    image: busybox:1.36
"#;

const SSA: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: ssa
data:
  a: "1"
"#;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).expect("kubectl -o json prints JSON")
}

fn flow(v: &str) {
    // API behaviour only: no workload controllers making pods for the Deployment applied below.
    let s =
        ApiServer::start(&["--controllers=*,-deployment,-replicaset,-replicationcontroller"]).expect("start apiserver");
    let k = |args: &[&str]| s.kubectl(v, args).unwrap_or_else(|e| panic!("{e}"));
    let dir = s.dir.clone();

    // Discovery and namespaces.
    let ns = k(&["get", "ns"]);
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(n), "{ns}");
    }
    let ar = k(&["api-resources"]);
    assert!(ar.lines().any(|l| l.starts_with("deployments") && l.contains("deploy") && l.contains("apps/v1")), "{ar}");
    assert!(ar.lines().any(|l| l.starts_with("leases") && l.contains("coordination.k8s.io/v1")), "{ar}");

    // OpenAPI v3 schemas: kubectl explain finds the kind by its group-version-kind and walks
    // $ref/allOf down to a nested list's item type and its required fields.
    let ex = k(&["explain", "deployment.spec.template.spec.containers.env"]);
    for want in ["GROUP:      apps", "KIND:       Deployment", "FIELD: env <[]EnvVar>", "<string> -required-"] {
        assert!(ex.contains(want), "explain lacks {want:?}:\n{ex}");
    }
    let ex = k(&["explain", "leases.spec", "--recursive"]);
    assert!(ex.contains("holderIdentity") && ex.contains("leaseDurationSeconds"), "{ex}");

    // Client-side apply: create, then an update changing an image and an env entry (strategic merge).
    let m = write_manifest(&dir, "deploy.yaml", DEPLOY).expect("manifest");
    let out = k(&["apply", "-f", m.to_str().expect("utf8")]);
    assert!(out.contains("deployment.apps/web created") && out.contains("service/web created"), "{out}");
    let m2 = write_manifest(
        &dir,
        "deploy2.yaml",
        &DEPLOY.replace("nginx:1.25", "nginx:1.26").replace("value: one", "value: two"),
    )
    .expect("manifest");
    let out = k(&["apply", "-f", m2.to_str().expect("utf8")]);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let d = json(&k(&["get", "deploy", "web", "-o", "json"]));
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "nginx:1.26");
    assert_eq!(c["env"], serde_json::json!([{"name": "MODE", "value": "two"}, {"name": "KEEP", "value": "same"}]));
    assert_eq!(d["metadata"]["generation"], 2);
    assert!(d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string());

    // Moving the same configuration to server-side apply: no conflicts with the client-side
    // manager (same values), and kubectl migrates the managedFields to its Apply manager.
    let out = k(&["apply", "--server-side", "-f", m2.to_str().expect("utf8")]);
    assert!(out.contains("deployment.apps/web serverside-applied"), "{out}");
    let d = json(&k(&["get", "deploy", "web", "-o", "json", "--show-managed-fields"]));
    let ops: Vec<String> = d["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .map(|m| {
            format!("{}/{}", m["manager"].as_str().unwrap_or_default(), m["operation"].as_str().unwrap_or_default())
        })
        .collect();
    assert!(ops.contains(&"kubectl/Apply".to_string()), "{ops:?}");

    // Service got a ClusterIP and a NodePort.
    let svc = json(&k(&["get", "svc", "web", "-o", "json"]));
    let ip = svc["spec"]["clusterIP"].as_str().expect("clusterIP");
    assert!(ip.starts_with("10.9") && ip != "10.96.0.1", "{ip}");
    let np = svc["spec"]["ports"][0]["nodePort"].as_i64().expect("nodePort");
    assert!((30000..=32767).contains(&np));

    // Table output, wide columns, selectors.
    let table = k(&["get", "deploy"]);
    let header: Vec<&str> = table.lines().next().expect("header").split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert!(table.contains("0/2"), "{table}");
    let wide = k(&["get", "deploy", "-o", "wide"]);
    assert!(wide.contains("IMAGES") && wide.contains("nginx:1.26") && wide.contains("app=web"), "{wide}");

    let p = write_manifest(&dir, "pod.yaml", POD).expect("manifest");
    k(&["apply", "-f", p.to_str().expect("utf8")]);
    let pods = k(&["get", "pods", "-o", "wide"]);
    let header: Vec<&str> = pods.lines().next().expect("header").split_whitespace().collect();
    assert_eq!(&header[..7], ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]);
    assert!(pods.contains("node-a") && pods.contains("Pending") && pods.contains("0/1"), "{pods}");
    assert!(k(&["get", "pods", "-l", "tier in (fe,be),app=busy", "-o", "name"]).contains("pod/busy"));
    assert!(k(&["get", "pods", "-l", "app!=busy", "-o", "name"]).trim().is_empty());
    assert!(k(&["get", "pods", "--field-selector", "spec.nodeName=node-a", "-o", "name"]).contains("pod/busy"));
    assert!(k(&["get", "pods", "--field-selector", "status.phase=Running", "-o", "name"]).trim().is_empty());

    // label / annotate / scale.
    k(&["label", "pod", "busy", "color=blue"]);
    k(&["annotate", "pod", "busy", "note=hello"]);
    let pod = json(&k(&["get", "pod", "busy", "-o", "json"]));
    assert_eq!(pod["metadata"]["labels"]["color"], "blue");
    assert_eq!(pod["metadata"]["annotations"]["note"], "hello");
    k(&["scale", "deploy", "web", "--replicas=4"]);
    assert_eq!(k(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]), "4");

    // create configmap / secret from literals.
    k(&["create", "configmap", "lit", "--from-literal=a=b", "--from-literal=c=d"]);
    k(&["create", "secret", "generic", "sec", "--from-literal=pw=s3cret"]);
    let cm = json(&k(&["get", "cm", "lit", "-o", "json"]));
    assert_eq!(cm["data"], serde_json::json!({"a": "b", "c": "d"}));
    let sec = json(&k(&["get", "secret", "sec", "-o", "json"]));
    assert_eq!(sec["data"]["pw"], "czNjcmV0");
    assert_eq!(sec["type"], "Opaque");

    // Validation answers 422 with every cause and its field path, as kube-apiserver words it.
    let bad = write_manifest(
        &dir,
        "bad-cj.yaml",
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: bad}\nspec:\n  schedule: '61 * * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Always\n          containers: [{name: c, image: busybox, env: [{name: 'A=B', value: x}]}]\n",
    )
    .expect("manifest");
    let out = s.kubectl_output(v, &["apply", "-f", bad.to_str().expect("utf8")]).expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "invalid CronJob accepted");
    for want in [
        "The CronJob \"bad\" is invalid",
        "spec.schedule: Invalid value: \"61 * * * *\": unparseable schedule",
        "spec.jobTemplate.spec.template.spec.restartPolicy: Unsupported value: \"Always\"",
        "spec.jobTemplate.spec.template.spec.containers[0].env[0].name: Invalid value: \"A=B\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }

    // The generators (protobuf bodies from kubectl >= 1.32).
    k(&["create", "deployment", "gen", "--image=nginx:1.27", "--replicas=3", "--port=8080"]);
    let d = json(&k(&["get", "deploy", "gen", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "gen");
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 8080);
    k(&["create", "job", "gen-job", "--image=busybox:1.36", "--", "echo", "hi"]);
    let j = json(&k(&["get", "job", "gen-job", "-o", "json"]));
    assert_eq!(j["spec"]["template"]["spec"]["containers"][0]["command"], serde_json::json!(["echo", "hi"]));
    assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "Never");
    k(&["create", "cronjob", "gen-cj", "--image=busybox:1.36", "--schedule=*/5 * * * *"]);
    assert_eq!(k(&["get", "cronjob", "gen-cj", "-o", "jsonpath={.spec.schedule}"]), "*/5 * * * *");
    k(&["create", "serviceaccount", "gen-sa"]);
    assert!(k(&["get", "sa", "-o", "name"]).contains("serviceaccount/gen-sa"));

    // Server-side apply, twice (the second is a no-op update), then a conflicting manager.
    let ssa = write_manifest(&dir, "ssa.yaml", SSA).expect("manifest");
    let ssa_path = ssa.to_str().expect("utf8");
    k(&["apply", "--server-side", "-f", ssa_path]);
    k(&["apply", "--server-side", "-f", ssa_path]);
    let cm = json(&k(&["get", "cm", "ssa", "-o", "json", "--show-managed-fields"]));
    assert_eq!(cm["data"]["a"], "1");
    let managers: Vec<&str> = cm["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"kubectl"), "{managers:?}");
    let other = write_manifest(&dir, "ssa2.yaml", &SSA.replace("\"1\"", "\"2\"")).expect("manifest");
    let out = s
        .kubectl_output(v, &["apply", "--server-side", "--field-manager=other", "-f", other.to_str().expect("utf8")])
        .expect("run");
    assert!(!out.status.success(), "conflicting apply must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("conflict"), "{}", String::from_utf8_lossy(&out.stderr));
    k(&["apply", "--server-side", "--force-conflicts", "--field-manager=other", "-f", other.to_str().expect("utf8")]);
    assert_eq!(k(&["get", "cm", "ssa", "-o", "jsonpath={.data.a}"]), "2");

    // describe shows events about the pod.
    let ev = format!(
        r#"{{"apiVersion":"v1","kind":"Event","metadata":{{"name":"busy.1"}},"involvedObject":{{"kind":"Pod","name":"busy","namespace":"default","uid":"{}"}},"reason":"Scheduled","message":"assigned default/busy to node-a","type":"Normal","count":1,"firstTimestamp":"2026-01-01T00:00:00Z","lastTimestamp":"2026-01-01T00:00:00Z","source":{{"component":"test"}}}}"#,
        pod["metadata"]["uid"].as_str().expect("uid")
    );
    let evf = write_manifest(&dir, "ev.json", &ev).expect("manifest");
    k(&["create", "-f", evf.to_str().expect("utf8")]);
    let desc = k(&["describe", "pod", "busy"]);
    assert!(desc.contains("Node:") && desc.contains("node-a"), "{desc}");
    assert!(desc.contains("Scheduled") && desc.contains("assigned default/busy to node-a"), "{desc}");
    let evs = k(&["get", "events"]);
    assert!(evs.contains("pod/busy") && evs.contains("Scheduled"), "{evs}");

    // get -w sees a create and a delete.
    let kc = s.kubeconfig();
    let mut watch = Command::new(format!("/usr/lib/google-cloud-sdk/bin/kubectl.{v}"))
        .args(["--kubeconfig", kc.to_str().expect("utf8"), "get", "cm", "-w", "--output-watch-events"])
        .env("HOME", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kubectl get -w");
    std::thread::sleep(Duration::from_millis(800));
    k(&["create", "configmap", "watched", "--from-literal=x=y"]);
    k(&["delete", "configmap", "watched"]);
    std::thread::sleep(Duration::from_millis(800));
    let _ = watch.kill();
    let out = watch.wait_with_output().expect("watch output");
    let text = String::from_utf8_lossy(&out.stdout);
    let events: Vec<&str> =
        text.lines().filter(|l| l.contains("watched")).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(events, ["ADDED", "DELETED"], "{text}");

    // Graceful pod delete: the pod stays Terminating until its status says the containers ended.
    k(&["delete", "pod", "busy", "--wait=false"]);
    let t = k(&["get", "pod", "busy"]);
    assert!(t.contains("Terminating"), "{t}");
    k(&["patch", "pod", "busy", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Succeeded"}}"#]);
    let out = s.kubectl_output(v, &["get", "pod", "busy"]).expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"), "{}", String::from_utf8_lossy(&out.stderr));

    // logs/exec answer 503 instead of faking output.
    let out = s.kubectl_output(v, &["logs", "deploy/web"]).expect("run");
    assert!(!out.status.success());

    // delete with cascading and namespace deletion.
    let out = k(&["delete", "-f", m2.to_str().expect("utf8")]);
    assert!(out.contains("deleted"), "{out}");
    k(&["create", "namespace", "scratch"]);
    k(&["-n", "scratch", "create", "configmap", "x", "--from-literal=a=b"]);
    k(&["delete", "namespace", "scratch"]);
    let out = s.kubectl_output(v, &["get", "ns", "scratch"]).expect("run");
    assert!(!out.status.success(), "namespace must be gone after kubectl delete returned");
    let out = k(&["-n", "scratch", "get", "configmap", "-o", "name"]);
    assert!(out.trim().is_empty(), "{out}");
}

#[test]
fn kubectl_1_33() {
    flow("1.33");
}

#[test]
fn kubectl_1_32() {
    flow("1.32");
}

#[test]
fn kubectl_1_27() {
    flow("1.27");
}
