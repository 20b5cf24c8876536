//! The in-process scheduler against a real keelson-apiserver with hollow nodes: placement by
//! requests, nodeSelector, required node affinity, taints and tolerations, pod anti-affinity
//! and topology spread; pods for another scheduler left alone; an unschedulable pod shows
//! upstream's message through `kubectl describe pod` (1.33 and 1.27) and is placed as soon as a
//! fitting node joins; `--disable-controllers=scheduler` turns it off.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Taint};
use keelson_tests::api::ApiServer;
use keelson_tests::eventually;
use keelson_tests::hollow::{HollowNodes, HollowOpts};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

fn opts(cpu: &str, labels: &[(&str, &str)], taints: Value) -> HollowOpts {
    HollowOpts {
        cpu: cpu.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        taints: serde_json::from_value::<Vec<Taint>>(taints).unwrap(),
        ..Default::default()
    }
}

async fn create_pod(client: &Client, name: &str, cpu: &str, extra: Value) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]});
    if let (Some(s), Value::Object(e)) = (spec.as_object_mut(), extra) {
        s.extend(e);
    }
    let role = name.split('-').next().unwrap_or_default();
    let labels = json!({"app": name, "role": role});
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": spec})).unwrap();
    Api::<Pod>::namespaced(client.clone(), "default").create(&PostParams::default(), &pod).await.unwrap()
}

async fn node_of(client: &Client, name: &str) -> Option<String> {
    let p = Api::<Pod>::namespaced(client.clone(), "default").get(name).await.ok()?;
    p.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty())
}

async fn wait_bound(client: &Client, name: &str) -> String {
    eventually(&format!("pod {name} bound"), Duration::from_secs(20), || async {
        Ok(node_of(client, name).await.is_some())
    })
    .await;
    node_of(client, name).await.unwrap()
}

fn condition(p: &Pod) -> Option<(String, String, String)> {
    let c = p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "PodScheduled")?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_placed_by_requests_selectors_affinity_and_taints() {
    let s = ApiServer::start(&[]).unwrap();
    let client = s.client().await.unwrap();
    let _small =
        HollowNodes::start(client.clone(), &["small"], opts("1", &[("size", "small")], json!([]))).await.unwrap();
    let _big = HollowNodes::start(client.clone(), &["big"], opts("8", &[("size", "big")], json!([]))).await.unwrap();
    let taint = json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
    let _gpu = HollowNodes::start(client.clone(), &["gpu"], opts("8", &[("size", "big")], taint)).await.unwrap();

    // Only "big" has 2 free cores without a taint the pod does not tolerate.
    create_pod(&client, "needs-cpu", "2", json!({})).await;
    // The selector allows only "small".
    create_pod(&client, "selects-small", "100m", json!({"nodeSelector": {"size": "small"}})).await;
    // Tolerates the taint and requires the node by name (matchFields).
    create_pod(
        &client,
        "on-gpu",
        "100m",
        json!({
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu"]}]}]}}},
        }),
    )
    .await;
    // Required expressions: size In [big] and NotIn gpu via the taint → "big".
    create_pod(
        &client,
        "affine-big",
        "100m",
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "size", "operator": "In", "values": ["big"]}]}]}}}}),
    )
    .await;
    create_pod(&client, "other-scheduler", "100m", json!({"schedulerName": "someone-else"})).await;

    assert_eq!(wait_bound(&client, "needs-cpu").await, "big");
    assert_eq!(wait_bound(&client, "selects-small").await, "small");
    assert_eq!(wait_bound(&client, "on-gpu").await, "gpu");
    assert_eq!(wait_bound(&client, "affine-big").await, "big");
    // Bound pods run (hollow node stand-in) and the other scheduler's pod is left alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node_of(&client, "other-scheduler").await, None);
    let out = s.kubectl("1.33", &["get", "pods", "-o", "wide"]).unwrap();
    assert!(out.lines().any(|l| l.starts_with("needs-cpu ") && l.contains(" big ")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pod_gets_upstreams_message_and_is_placed_when_a_node_fits() {
    let s = ApiServer::start(&[]).unwrap();
    let client = s.client().await.unwrap();
    let _small = HollowNodes::start(client.clone(), &["n1", "n2"], opts("1", &[], json!([]))).await.unwrap();
    let taint = json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]);
    let _tainted = HollowNodes::start(client.clone(), &["n3"], opts("8", &[], taint)).await.unwrap();
    create_pod(&client, "huge", "2", json!({})).await;

    let expected = "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu. \
                    preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, \
                    2 No preemption victims found for incoming pod.";
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    eventually("PodScheduled=False", Duration::from_secs(20), || async {
        let p = pods.get("huge").await.map_err(|e| e.to_string())?;
        Ok(condition(&p) == Some(("False".into(), "Unschedulable".into(), expected.into())))
    })
    .await;
    for v in ["1.33", "1.27"] {
        let mut out = String::new();
        eventually(&format!("kubectl {v} describe shows the event"), Duration::from_secs(10), || {
            let o = s.kubectl(v, &["describe", "pod", "huge"]).unwrap_or_default();
            out = o.clone();
            async move { Ok(o.contains("FailedScheduling") && o.contains(expected)) }
        })
        .await;
        assert!(out.contains("default-scheduler"), "{out}");
        assert!(out.contains("PodScheduled") && out.contains("False"), "{out}");
    }
    assert_eq!(node_of(&client, "huge").await, None);

    // A node with room joins: the parked pod is retried and placed there.
    let _big = HollowNodes::start(client.clone(), &["roomy"], opts("4", &[], json!([]))).await.unwrap();
    assert_eq!(wait_bound(&client, "huge").await, "roomy");
    eventually("PodScheduled=True", Duration::from_secs(10), || async {
        let p = pods.get("huge").await.map_err(|e| e.to_string())?;
        Ok(condition(&p).is_some_and(|c| c.0 == "True"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fill_nodes_and_the_rest_wait() {
    let s = ApiServer::start(&[]).unwrap();
    let client = s.client().await.unwrap();
    let _nodes = HollowNodes::start(client.clone(), &["a", "b", "c"], opts("1", &[], json!([]))).await.unwrap();
    // Three nodes of 1 core: six 400m pods fit two per node, the seventh fits nowhere.
    for i in 0..7 {
        create_pod(&client, &format!("w{i}"), "400m", json!({})).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    eventually("six pods bound, one reported", Duration::from_secs(20), || async {
        let list = pods.list(&Default::default()).await.map_err(|e| e.to_string())?;
        let bound = list.items.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()).count();
        let waiting = list.items.iter().filter(|p| condition(p).is_some_and(|c| c.1 == "Unschedulable")).count();
        Ok(bound == 6 && waiting == 1)
    })
    .await;
    let list = pods.list(&Default::default()).await.unwrap();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &list.items {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *per_node.entry(n).or_default() += 1;
        }
    }
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [2, 2, 2], "{per_node:?}");
    let waiting = list.items.iter().find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none()).unwrap();
    assert_eq!(
        condition(waiting).unwrap().2,
        "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_scheduler_leaves_pods_pending() {
    let s = ApiServer::start(&["--disable-controllers=scheduler"]).unwrap();
    let client = s.client().await.unwrap();
    let _n = HollowNodes::start(client.clone(), &["only"], opts("4", &[], json!([]))).await.unwrap();
    create_pod(&client, "waits", "100m", json!({})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(node_of(&client, "waits").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_affinity_and_topology_spread_place_replicas_apart() {
    let s = ApiServer::start(&[]).unwrap();
    let client = s.client().await.unwrap();
    let zone = |z: &str| opts("8", &[("topology.kubernetes.io/zone", z)], json!([]));
    let _a = HollowNodes::start(client.clone(), &["za-1", "za-2"], zone("a")).await.unwrap();
    let _b = HollowNodes::start(client.clone(), &["zb-1"], zone("b")).await.unwrap();

    // One "web" pod per node (hostname anti-affinity): three fit, the fourth waits with the reason.
    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"role": "web"}}}]}}});
    let mut nodes = Vec::new();
    for i in 0..4 {
        let name = format!("web-{i}");
        create_pod(&client, &name, "100m", anti.clone()).await;
        if i < 3 {
            nodes.push(wait_bound(&client, &name).await);
        }
    }
    nodes.sort();
    assert_eq!(nodes, ["za-1", "za-2", "zb-1"]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    eventually("web-3 reported", Duration::from_secs(20), || async {
        let p = pods.get("web-3").await.map_err(|e| e.to_string())?;
        Ok(condition(&p).is_some_and(|c| {
            c.2 == "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
        }))
    })
    .await;

    // Zone spread with maxSkew 1, one pod at a time: the zones never differ by more than one,
    // so after four pods they hold two each although zone a has twice the nodes (least-allocated
    // alone would put three there).
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"role": "db"}}}]});
    let mut zones: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..4 {
        let name = format!("db-{i}");
        create_pod(&client, &name, "100m", spread.clone()).await;
        let node = wait_bound(&client, &name).await;
        *zones.entry(if node.starts_with("za") { "a".into() } else { "b".into() }).or_default() += 1;
    }
    assert_eq!(zones.values().copied().collect::<Vec<_>>(), [2, 2], "{zones:?}");
}
