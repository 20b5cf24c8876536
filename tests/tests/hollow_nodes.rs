//! The hollow-node fixture itself against a real keelson-apiserver: nodes Ready in kubectl, leases
//! renewed (and no longer once a node is stopped), bound pods marked Running/Ready with an IP,
//! graceful deletes finished. Other control-plane tests rely on exactly these behaviours.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use keelson_tests::api::ApiServer;
use keelson_tests::hollow::{HollowNodes, HollowOpts};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

async fn renew_time(leases: &Api<Lease>, name: &str) -> Option<String> {
    let l = leases.get(name).await.ok()?;
    l.spec?.renew_time.map(|t| t.0.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hollow_nodes_look_alive_and_die_on_request() {
    let api = ApiServer::start(&[]).unwrap();
    let client = api.client().await.unwrap();
    let opts = HollowOpts { lease_period: Duration::from_millis(500), ..HollowOpts::default() };
    let hollow = HollowNodes::start(client.clone(), &["hn-a", "hn-b", "hn-c"], opts).await.unwrap();

    for v in ["1.33", "1.27"] {
        let out = api.kubectl(v, &["get", "nodes", "--no-headers"]).unwrap();
        for n in hollow.names() {
            let line = out.lines().find(|l| l.starts_with(n.as_str())).unwrap_or_else(|| panic!("{n} missing:\n{out}"));
            assert!(line.split_whitespace().nth(1) == Some("Ready"), "kubectl.{v}: {line}");
        }
    }

    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let first = renew_time(&leases, "hn-b").await;
    assert!(first.is_some(), "no lease for hn-b");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = renew_time(&leases, "hn-b").await;
    assert_ne!(first, second, "lease of a live node not renewed");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "hp"},
        "spec": {"nodeName": "hn-a", "terminationGracePeriodSeconds": 30,
                 "containers": [{"name": "c", "image": "example.invalid/x:1"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let p = pods.get("hp").await.unwrap();
        let st = p.status.unwrap_or_default();
        let ready = st.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
        if st.phase.as_deref() == Some("Running") && ready && st.pod_ip.is_some() {
            break;
        }
        assert!(Instant::now() < end, "pod on a hollow node never became Running/Ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wide = api.kubectl("1.33", &["get", "pod", "hp", "-o", "wide", "--no-headers"]).unwrap();
    assert!(wide.contains("Running") && wide.contains("hn-a") && wide.contains("10."), "{wide}");

    // A graceful delete is finished by the node, as kubelet does after stopping the containers.
    pods.delete("hp", &DeleteParams::default()).await.unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while pods.get_opt("hp").await.unwrap().is_some() {
        assert!(Instant::now() < end, "graceful delete never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A stopped node: its lease stands still, its pods are not touched.
    hollow.stop("hn-c");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let frozen = renew_time(&leases, "hn-c").await;
    let mut p2 = pod.clone();
    p2.metadata.name = Some("dead".into());
    p2.spec.as_mut().unwrap().node_name = Some("hn-c".into());
    pods.create(&PostParams::default(), &p2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(renew_time(&leases, "hn-c").await, frozen, "a stopped node's lease moved");
    let p = pods.get("dead").await.unwrap();
    assert_ne!(p.status.and_then(|s| s.phase), Some("Running".into()), "a stopped node ran a pod");
}
