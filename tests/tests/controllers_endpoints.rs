//! The EndpointSlice, EndpointSlice-mirroring and Endpoints controllers against a real
//! keelson-apiserver, read back with kube-rs and with kubectl 1.33 and 1.27.
//!
//! No node runs the pods: each test pod is bound to a made-up node name and the test itself
//! writes what a kubelet would (`status.podIPs`, phase Running, the Ready condition) through
//! `pods/status`, so readiness flips are exact and instant. A pod deleted with a grace period
//! stays Terminating (no kubelet confirms it), which is how termination is observed.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_tests::api::ApiServer;
use keelson_tests::eventually;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

async fn namespace(client: &Client, name: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    api.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap())
        .await
        .unwrap();
}

/// Creates a pod bound to a made-up node whose container names `port` as `http`, then writes
/// a kubelet-like status with `ip` and the given readiness.
async fn pod(api: &Api<Pod>, name: &str, ip: &str, port: i32, ready: bool) {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": "hollow-1", "containers": [{"name": "c", "image": "busybox",
                 "ports": [{"name": "http", "containerPort": port}]}]},
    }))
    .unwrap();
    api.create(&PostParams::default(), &p).await.unwrap();
    set_status(api, name, ip, ready).await;
}

async fn set_status(api: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
}

/// The endpoints of a Service's controller-managed slices: (ip, port, ready, serving, terminating).
async fn slice_view(api: &Api<EndpointSlice>, svc: &str) -> Result<Vec<(String, i32, bool, bool, bool)>, String> {
    let sel = format!(
        "kubernetes.io/service-name={svc},endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"
    );
    let slices = api.list(&ListParams::default().labels(&sel)).await.map_err(|e| e.to_string())?.items;
    if slices.is_empty() {
        return Err("no slice yet".into());
    }
    let mut out = Vec::new();
    for s in &slices {
        let owner = s.owner_references().first().map(|o| o.kind.clone());
        if owner.as_deref() != Some("Service") {
            return Err(format!("slice {} not owned by its Service", s.name_any()));
        }
        let port = s.ports.iter().flatten().next().and_then(|p| p.port).unwrap_or(0);
        for e in &s.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            out.push((
                e.addresses[0].clone(),
                port,
                c.ready == Some(true),
                c.serving == Some(true),
                c.terminating == Some(true),
            ));
        }
    }
    out.sort();
    Ok(out)
}

fn ep(ip: &str, port: i32, ready: bool, serving: bool, terminating: bool) -> (String, i32, bool, bool, bool) {
    (ip.to_string(), port, ready, serving, terminating)
}

async fn endpoints_view(api: &Api<Endpoints>, name: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let e = api.get_opt(name).await.map_err(|e| e.to_string())?.ok_or("no Endpoints yet")?;
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for s in e.subsets.iter().flatten() {
        let ports: Vec<i32> = s.ports.iter().flatten().map(|p| p.port).collect();
        for a in s.addresses.iter().flatten() {
            ready.push(format!("{}:{ports:?}", a.ip));
        }
        for a in s.not_ready_addresses.iter().flatten() {
            not_ready.push(format!("{}:{ports:?}", a.ip));
        }
    }
    ready.sort();
    not_ready.sort();
    Ok((ready, not_ready))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_and_endpoints_follow_readiness_termination_named_ports_and_scale_to_zero() {
    let server = ApiServer::start(&[]).unwrap();
    let client = server.client().await.unwrap();
    let ns = "eps";
    namespace(&client, ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"tier": "front"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();

    // No pods yet: one empty placeholder slice, an Endpoints object without subsets.
    eventually("a placeholder slice", Duration::from_secs(20), || async {
        Ok(slice_view(&slices, "web").await?.is_empty())
    })
    .await;
    eventually("an empty Endpoints", Duration::from_secs(20), || async {
        Ok(endpoints_view(&endpoints, "web").await? == (vec![], vec![]))
    })
    .await;

    pod(&pods, "a", "10.244.1.10", 8080, true).await;
    pod(&pods, "b", "10.244.1.11", 8080, false).await;
    // Pod c names its `http` port 9090: a second slice with its own port.
    pod(&pods, "c", "10.244.1.12", 9090, true).await;
    let want = vec![
        ep("10.244.1.10", 8080, true, true, false),
        ep("10.244.1.11", 8080, false, false, false),
        ep("10.244.1.12", 9090, true, true, false),
    ];
    eventually("slices of three pods", Duration::from_secs(20), || async {
        Ok(slice_view(&slices, "web").await? == want)
    })
    .await;
    let sel = "kubernetes.io/service-name=web";
    let all = slices.list(&ListParams::default().labels(sel)).await.unwrap().items;
    assert_eq!(all.len(), 2, "one slice per resolved port set (placeholder gone)");
    assert!(all.iter().all(|s| s.labels().get("tier").map(String::as_str) == Some("front")));
    let a = all.iter().flat_map(|s| &s.endpoints).find(|e| e.addresses[0] == "10.244.1.10").unwrap();
    assert_eq!(a.node_name.as_deref(), Some("hollow-1"));
    assert_eq!(a.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));
    eventually("Endpoints of three pods", Duration::from_secs(20), || async {
        Ok(endpoints_view(&endpoints, "web").await?
            == (vec!["10.244.1.10:[8080]".into(), "10.244.1.12:[9090]".into()], vec!["10.244.1.11:[8080]".into()]))
    })
    .await;

    // Readiness flips both ways.
    set_status(&pods, "b", "10.244.1.11", true).await;
    set_status(&pods, "a", "10.244.1.10", false).await;
    let want = vec![
        ep("10.244.1.10", 8080, false, false, false),
        ep("10.244.1.11", 8080, true, true, false),
        ep("10.244.1.12", 9090, true, true, false),
    ];
    eventually("readiness flips in the slices", Duration::from_secs(20), || async {
        Ok(slice_view(&slices, "web").await? == want)
    })
    .await;
    eventually("readiness flips in Endpoints", Duration::from_secs(20), || async {
        Ok(endpoints_view(&endpoints, "web").await?
            == (vec!["10.244.1.11:[8080]".into(), "10.244.1.12:[9090]".into()], vec!["10.244.1.10:[8080]".into()]))
    })
    .await;

    // Termination: b is deleted with a grace period and stays Terminating (no kubelet): still
    // in the slice, serving but not ready; gone from Endpoints.
    pods.delete("b", &DeleteParams { grace_period_seconds: Some(300), ..Default::default() }).await.unwrap();
    let want = vec![
        ep("10.244.1.10", 8080, false, false, false),
        ep("10.244.1.11", 8080, false, true, true),
        ep("10.244.1.12", 9090, true, true, false),
    ];
    eventually("a terminating endpoint", Duration::from_secs(20), || async {
        Ok(slice_view(&slices, "web").await? == want)
    })
    .await;
    eventually("terminating pod out of Endpoints", Duration::from_secs(20), || async {
        Ok(endpoints_view(&endpoints, "web").await?
            == (vec!["10.244.1.12:[9090]".into()], vec!["10.244.1.10:[8080]".into()]))
    })
    .await;

    // kubectl, old and new, reads both kinds.
    for v in ["1.33", "1.27"] {
        let out = server.kubectl(v, &["get", "endpointslices", "-n", ns, "-l", sel]).unwrap();
        assert!(out.contains("IPv4") && out.contains("10.244.1.12") && out.contains("9090"), "kubectl {v}:\n{out}");
        let out = server.kubectl(v, &["get", "endpoints", "web", "-n", ns]).unwrap();
        assert!(out.contains("10.244.1.12:9090"), "kubectl {v}:\n{out}");
    }

    // Scale to zero: the placeholder slice comes back and Endpoints empties.
    for name in ["a", "b", "c"] {
        pods.delete(name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    }
    eventually("scale to zero", Duration::from_secs(30), || async {
        let n = slices.list(&ListParams::default().labels(sel)).await.map_err(|e| e.to_string())?.items.len();
        Ok(slice_view(&slices, "web").await?.is_empty() && n == 1)
    })
    .await;
    eventually("empty Endpoints after scale to zero", Duration::from_secs(20), || async {
        Ok(endpoints_view(&endpoints, "web").await? == (vec![], vec![]))
    })
    .await;

    // The Service goes: its Endpoints go (this controller) and its slices (the GC, by owner).
    services.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("Endpoints and slices removed", Duration::from_secs(30), || async {
        let e = endpoints.get_opt("web").await.map_err(|e| e.to_string())?;
        let s = slices.list(&ListParams::default().labels(sel)).await.map_err(|e| e.to_string())?.items;
        Ok(e.is_none() && s.is_empty())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_service_and_selectorless_services_are_mirrored() {
    let server = ApiServer::start(&[]).unwrap();
    let client = server.client().await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let sel = "kubernetes.io/service-name=kubernetes";
    eventually("the kubernetes slice", Duration::from_secs(20), || async {
        let s = slices.list(&ListParams::default().labels(sel)).await.map_err(|e| e.to_string())?.items;
        let Some(s) = s.first() else { return Err("none".into()) };
        let port = s.ports.iter().flatten().next().and_then(|p| p.port);
        Ok(s.labels().get("endpointslice.kubernetes.io/managed-by").map(String::as_str)
            == Some("endpointslicemirroring-controller.k8s.io")
            && s.endpoints.len() == 1
            && s.endpoints[0].addresses == ["127.0.0.1"]
            && port == Some(i32::from(server.port)))
    })
    .await;
    for v in ["1.33", "1.27"] {
        let out = server.kubectl(v, &["get", "endpointslices", "-n", "default", "-l", sel]).unwrap();
        assert!(out.contains(&format!("{}", server.port)) && out.contains("127.0.0.1"), "kubectl {v}:\n{out}");
    }

    // A user's selectorless Service with hand-written Endpoints, edited later.
    let ns = "mirror";
    namespace(&client, ns).await;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let svc: Service =
        serde_json::from_value(json!({"metadata": {"name": "ext"}, "spec": {"ports": [{"port": 5432}]}})).unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let e: Endpoints = serde_json::from_value(json!({"metadata": {"name": "ext"},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432}]}]}))
    .unwrap();
    endpoints.create(&PostParams::default(), &e).await.unwrap();
    let ips = || async {
        let s = slices.list(&ListParams::default().labels("kubernetes.io/service-name=ext")).await;
        let s = s.map_err(|e| e.to_string())?.items;
        let mut v: Vec<String> = s.iter().flat_map(|s| s.endpoints.iter().map(|e| e.addresses[0].clone())).collect();
        v.sort();
        Ok::<_, String>(v)
    };
    eventually("mirrored slice", Duration::from_secs(20), || async { Ok(ips().await? == ["192.0.2.10"]) }).await;
    let patch =
        json!({"subsets": [{"addresses": [{"ip": "192.0.2.10"}, {"ip": "192.0.2.11"}], "ports": [{"port": 5432}]}]});
    endpoints.patch("ext", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    eventually("mirrored edit", Duration::from_secs(20), || async { Ok(ips().await? == ["192.0.2.10", "192.0.2.11"]) })
        .await;
    // The Endpoints controller leaves hand-written Endpoints of selectorless Services alone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(endpoints.get_opt("ext").await.unwrap().is_some());
}
