//! The in-process controllers (garbage collector, namespace controller) against a real
//! keelson-apiserver, driven by kubectl 1.33 and kube-rs: background, foreground and orphan
//! propagation, dangling owner references, and cascades and namespace deletions that survive a
//! SIGKILL of the server in the middle.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use keelson_tests::api::ApiServer;
use keelson_tests::eventually;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

const KUBECTL: &str = "1.33";
/// A finalizer of the test's own: it holds an object in Terminating until the test lets go.
const HOLD: &str = "keelson.test/hold";

fn owner_ref(owner: &ConfigMap, block: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "name": owner.name_any(), "uid": owner.uid().unwrap(),
           "blockOwnerDeletion": block})
}

async fn create_cm(api: &Api<ConfigMap>, name: &str, owners: Vec<Value>, finalizers: &[&str]) -> ConfigMap {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owners, "finalizers": finalizers},
        "data": {"k": "v"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap()
}

async fn create_secret(api: &Api<Secret>, name: &str, owners: Vec<Value>) -> Secret {
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owners},
        "stringData": {"k": "v"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &s).await.unwrap()
}

async fn exists<K>(api: &Api<K>, name: &str) -> Result<bool, String>
where
    K: Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.map(|o| o.is_some()).map_err(|e| e.to_string())
}

async fn release<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [HOLD]}});
    api.patch(name, &PatchParams::default(), &Patch::Strategic(patch)).await.unwrap();
}

fn kubectl(s: &ApiServer, args: &[&str]) -> String {
    s.kubectl(KUBECTL, args).unwrap()
}

/// An owner ConfigMap with two dependent ConfigMaps (one blocking) and a dependent Secret.
async fn family(client: &Client, ns: &str, owner: &str) -> ConfigMap {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let o = create_cm(&cms, owner, vec![], &[]).await;
    create_cm(&cms, &format!("{owner}-a"), vec![owner_ref(&o, true)], &[]).await;
    create_cm(&cms, &format!("{owner}-b"), vec![owner_ref(&o, false)], &[]).await;
    create_secret(&secrets, &format!("{owner}-s"), vec![owner_ref(&o, true)]).await;
    o
}

async fn dependents_left(client: &Client, ns: &str, owner: &str) -> Result<Vec<String>, String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut left = Vec::new();
    for n in [format!("{owner}-a"), format!("{owner}-b")] {
        if exists(&cms, &n).await? {
            left.push(n);
        }
    }
    if exists(&secrets, &format!("{owner}-s")).await? {
        left.push(format!("{owner}-s"));
    }
    Ok(left)
}

#[tokio::test]
async fn kubectl_cascades_background_foreground_and_orphan() {
    let s = ApiServer::start(&[]).unwrap();
    let client = s.client().await.unwrap();
    let ns = "default";

    // Background: the owner goes at once, the collector removes its dependents afterwards.
    family(&client, ns, "bg").await;
    kubectl(&s, &["delete", "configmap", "bg", "--cascade=background", "--timeout=30s"]);
    eventually("background dependents collected", Duration::from_secs(15), || async {
        Ok(dependents_left(&client, ns, "bg").await?.is_empty())
    })
    .await;

    // Foreground: when kubectl's wait for the owner returns, the blocking dependents are gone.
    family(&client, ns, "fg").await;
    kubectl(&s, &["delete", "configmap", "fg", "--cascade=foreground", "--timeout=30s"]);
    let left = dependents_left(&client, ns, "fg").await.unwrap();
    assert!(!left.contains(&"fg-a".to_string()) && !left.contains(&"fg-s".to_string()), "blocking left: {left:?}");
    eventually("foreground non-blocking dependent collected", Duration::from_secs(15), || async {
        Ok(dependents_left(&client, ns, "fg").await?.is_empty())
    })
    .await;

    // Orphan: the dependents stay and no longer name the owner.
    family(&client, ns, "or").await;
    kubectl(&s, &["delete", "configmap", "or", "--cascade=orphan", "--timeout=30s"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for n in ["or-a", "or-b"] {
        let c = cms.get(n).await.unwrap();
        assert!(c.owner_references().is_empty(), "{n} still owned: {:?}", c.owner_references());
        assert!(c.metadata.deletion_timestamp.is_none());
    }
    assert!(secrets.get("or-s").await.unwrap().owner_references().is_empty());

    // A reference to an owner that does not exist, or to a same-named object with another
    // uid, dangles: the dependent is collected. A dependent with another live owner only
    // loses the dangling reference.
    let live = create_cm(&cms, "live", vec![], &[]).await;
    let mut ghost = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": "00000000-0000-0000-0000-000000000001"});
    create_cm(&cms, "of-ghost", vec![ghost.clone()], &[]).await;
    ghost["name"] = json!("live");
    create_cm(&cms, "of-wrong-uid", vec![ghost.clone()], &[]).await;
    create_cm(&cms, "of-both", vec![ghost.clone(), owner_ref(&live, false)], &[]).await;
    eventually("dangling dependents collected", Duration::from_secs(15), || async {
        Ok(!exists(&cms, "of-ghost").await? && !exists(&cms, "of-wrong-uid").await?)
    })
    .await;
    eventually("dangling reference removed", Duration::from_secs(15), || async {
        let refs = cms.get("of-both").await.map_err(|e| e.to_string())?.owner_references().to_vec();
        Ok(refs.len() == 1 && Some(&refs[0].uid) == live.uid().as_ref())
    })
    .await;
    assert!(exists(&cms, "live").await.unwrap());
}

#[tokio::test]
async fn cascades_resume_after_the_server_is_killed() {
    // First life: no garbage collector, so a background delete leaves the dependents (the server
    // itself cascades nothing), and a foreground delete waits on a dependent the test holds.
    let s = ApiServer::start(&["--controllers=*,-gc"]).unwrap();
    let client = s.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    family(&client, "default", "bg").await;
    cms.delete("bg", &DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() })
        .await
        .unwrap();
    let fg = create_cm(&cms, "fg", vec![], &[]).await;
    create_cm(&cms, "fg-held", vec![owner_ref(&fg, true)], &[HOLD]).await;
    create_cm(&cms, "fg-plain", vec![owner_ref(&fg, true)], &[]).await;
    kubectl(&s, &["delete", "configmap", "fg", "--cascade=foreground", "--wait=false"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(dependents_left(&client, "default", "bg").await.unwrap().len(), 3, "nothing cascades without the GC");
    let owner = cms.get("fg").await.unwrap();
    assert!(owner.metadata.deletion_timestamp.is_some());
    assert!(owner.finalizers().contains(&"foregroundDeletion".to_string()), "{:?}", owner.finalizers());
    let (dir, tmp, port) = s.kill9();

    // Second life, same data, controllers on: the background cascade completes, the foreground
    // one deletes what it can and keeps the owner while the held blocking dependent remains.
    let s = ApiServer::start_in(&dir, port, &[]).unwrap();
    let _keep = tmp;
    let client = s.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    eventually("background cascade resumed", Duration::from_secs(20), || async {
        Ok(dependents_left(&client, "default", "bg").await?.is_empty())
    })
    .await;
    eventually("unheld foreground dependent deleted", Duration::from_secs(20), || async {
        Ok(!exists(&cms, "fg-plain").await?)
    })
    .await;
    let held = cms.get("fg-held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some(), "the held dependent is being deleted");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(exists(&cms, "fg").await.unwrap(), "owner must wait for its blocking dependent");
    release(&cms, "fg-held").await;
    eventually("foreground owner gone once its dependent is", Duration::from_secs(20), || async {
        Ok(!exists(&cms, "fg-held").await? && !exists(&cms, "fg").await?)
    })
    .await;
}

#[tokio::test]
async fn namespace_with_200_objects_is_emptied_and_removed_across_a_restart() {
    let s = ApiServer::start(&["--disable-controllers=namespace"]).unwrap();
    let client = s.client().await.unwrap();
    kubectl(&s, &["create", "namespace", "doomed"]);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "doomed");
    for i in 0..150 {
        create_cm(&cms, &format!("cm-{i}"), vec![], &[]).await;
    }
    for i in 0..49 {
        create_secret(&secrets, &format!("secret-{i}"), vec![]).await;
    }
    create_cm(&cms, "held", vec![], &[HOLD]).await;
    kubectl(&s, &["delete", "namespace", "doomed", "--wait=false"]);
    let nss: Api<Namespace> = Api::all(client.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ns = nss.get("doomed").await.unwrap();
    assert_eq!(ns.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Terminating"));
    // The root CA publisher's `kube-root-ca.crt` is not one of the test's objects.
    let listed = cms.list(&ListParams::default()).await.unwrap().items;
    let ours = listed.iter().filter(|c| c.name_any() != "kube-root-ca.crt").count();
    assert_eq!(ours, 151, "no controller, no cleanup");
    let out = s.kubectl_output(KUBECTL, &["-n", "doomed", "create", "configmap", "late"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("being terminated"), "{out:?}");
    let (dir, tmp, port) = s.kill9();

    let s = ApiServer::start_in(&dir, port, &[]).unwrap();
    let _keep = tmp;
    let client = s.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "doomed");
    let nss: Api<Namespace> = Api::all(client.clone());
    eventually("content deleted but the held object", Duration::from_secs(30), || async {
        let c = cms.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items;
        let s = secrets.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items;
        Ok(s.is_empty() && c.len() == 1 && c[0].name_any() == "held")
    })
    .await;
    // It says why it waits, and does not finalize.
    eventually("remaining-content conditions", Duration::from_secs(10), || async {
        let ns = nss.get("doomed").await.map_err(|e| e.to_string())?;
        let conds = ns.status.and_then(|s| s.conditions).unwrap_or_default();
        let is_true = |t: &str| conds.iter().any(|c| c.type_ == t && c.status == "True");
        Ok(is_true("NamespaceContentRemaining") && is_true("NamespaceFinalizersRemaining"))
    })
    .await;
    assert!(exists(&nss, "doomed").await.unwrap());

    // Kill again while it waits, then let go on the third life.
    let (dir, tmp2, port) = s.kill9();
    let s = ApiServer::start_in(&dir, port, &[]).unwrap();
    let _keep2 = tmp2;
    let client = s.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let nss: Api<Namespace> = Api::all(client.clone());
    release(&cms, "held").await;
    eventually("namespace removed", Duration::from_secs(30), || async { Ok(!exists(&nss, "doomed").await?) }).await;
    // Nothing of it remains, in any namespaced kind.
    let discovery = kube::discovery::Discovery::new(client.clone()).run().await.unwrap();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != kube::discovery::Scope::Namespaced || !caps.supports_operation("list") {
                continue;
            }
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), "doomed", &ar);
            let items = api.list(&ListParams::default()).await.unwrap().items;
            assert!(items.is_empty(), "{} left in the deleted namespace: {}", ar.plural, items.len());
        }
    }
}
