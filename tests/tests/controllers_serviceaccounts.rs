//! The ServiceAccount controller and the root CA publisher against a real keelson-apiserver:
//! every namespace gets a `default` ServiceAccount and a `kube-root-ca.crt` ConfigMap holding
//! the server's own CA (`<data-dir>/ca.crt`), and both come back when deleted or edited.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use keelson_tests::api::ApiServer;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn wait<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_service_account_and_root_ca_in_every_namespace() {
    let server = ApiServer::start(&[]).unwrap();
    let client = server.client().await.unwrap();
    let ca = std::fs::read_to_string(server.dir.join("ca.crt")).unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "sa-test"}})).unwrap())
        .await
        .unwrap();
    for ns in ["default", "kube-system", "sa-test"] {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        wait(&format!("{ns}/default"), || async { sas.get_opt("default").await.ok().flatten() }).await;
        let cm =
            wait(&format!("{ns}/kube-root-ca.crt"), || async { cms.get_opt("kube-root-ca.crt").await.ok().flatten() })
                .await;
        assert_eq!(cm.data.unwrap()["ca.crt"], ca, "{ns}");
    }

    // Deleted or edited: restored.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "sa-test");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "sa-test");
    let old = sas.get("default").await.unwrap().metadata.uid;
    sas.delete("default", &DeleteParams::default()).await.unwrap();
    wait("a new default SA", || async {
        sas.get_opt("default").await.ok().flatten().filter(|s| s.metadata.uid != old)
    })
    .await;
    let patch = json!({"data": {"ca.crt": "tampered"}});
    cms.patch("kube-root-ca.crt", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    wait("the CA restored", || async {
        cms.get_opt("kube-root-ca.crt").await.ok().flatten().filter(|c| c.data.as_ref().unwrap()["ca.crt"] == ca)
    })
    .await;
    cms.delete("kube-root-ca.crt", &DeleteParams::default()).await.unwrap();
    wait("the CA recreated", || async { cms.get_opt("kube-root-ca.crt").await.ok().flatten() }).await;
    let out = server.kubectl("1.27", &["get", "serviceaccounts,configmaps", "-n", "sa-test"]).unwrap();
    assert!(out.contains("serviceaccount/default") && out.contains("configmap/kube-root-ca.crt"), "{out}");
}
