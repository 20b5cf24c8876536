//! Images from a registry on a real node: the agent pulls over HTTP from the fixture registry
//! (`keelson_tests::registry`, listening inside the node's network namespace) into its private
//! containerd and runs static pods from the result.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use keelson_tests::agent::Node;
use keelson_tests::registry::{Options, Registry};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn cs(p: &Pod) -> Option<&ContainerStatus> {
    p.status.as_ref()?.container_statuses.as_ref()?.first()
}

fn running(p: &Pod) -> bool {
    cs(p).and_then(|c| c.state.as_ref()).and_then(|s| s.running.as_ref()).is_some()
}

fn waiting(p: &Pod) -> Option<(String, String)> {
    let w = cs(p)?.state.as_ref()?.waiting.as_ref()?;
    Some((w.reason.clone().unwrap_or_default(), w.message.clone().unwrap_or_default()))
}

fn busybox_archive() -> PathBuf {
    let p = keelson_tests::target_dir().join("images/busybox.tar");
    assert!(p.exists(), "{} missing: run `cargo xtask images`", p.display());
    p
}

/// A node whose agent reads `<dir>/registries.json` (written by the test once the registry's port
/// is known: the file is re-read on every pull). Backoff starts at 1 s so retries are quick.
fn node(cfg_dir: &Path) -> Node {
    let cfg = cfg_dir.join("registries.json");
    Node::start(&["--registry-config", cfg.to_str().unwrap(), "--backoff-base", "1s", "--backoff-max", "2s"]).unwrap()
}

fn write_registry_config(cfg_dir: &Path, reg: &Registry, auths: serde_json::Value) {
    let body = serde_json::json!({"insecureRegistries": [reg.host()], "auths": auths});
    std::fs::write(cfg_dir.join("registries.json"), serde_json::to_vec(&body).unwrap()).unwrap();
}

fn pod_yaml(name: &str, image: &str, policy: Option<&str>) -> String {
    let policy = policy.map(|p| format!(", imagePullPolicy: {p}")).unwrap_or_default();
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: app, image: "{image}"{policy}, command: [sh, -c, "cat /fixture.txt; sleep 3600"]}}
"#
    )
}

/// The app's first log shows `marker` (read from the registry's layer) within a few seconds:
/// a running container may not have written its output yet.
fn assert_log(node: &Node, p: &Pod, marker: &str) {
    let path = node.log_file(p, "app", 0);
    let found = keelson_tests::wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&path).ok().filter(|l| l.contains(marker)).map(|_| ())
    });
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(found.is_some(), "{} log lacks {marker:?}: {log}", p.metadata.name.as_deref().unwrap_or(""));
}

fn images_in_containerd(node: &Node) -> String {
    keelson_tests::run_stdout(
        "ctr",
        &["--address", node.containerd.socket().to_str().unwrap(), "-n", &node.namespace, "images", "ls", "-q"],
    )
    .unwrap()
}

/// Two pods of one image (a tag other than latest: IfNotPresent; behind an index listing arm64
/// first) start together: both run the registry's rootfs, and the blobs were downloaded once —
/// the second pull joined the first. The fixture delays every blob by 3 s, so both workers are
/// pulling at the same time; without the merge each would fetch the config and the new layer.
#[test]
fn pulls_an_image_and_two_pods_share_one_pull() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let node = node(cfg_dir.path());
    let reg = Registry::start(Options {
        netns: Some(node.netns.path()),
        blob_delay: Duration::from_secs(3),
        ..Default::default()
    })
    .unwrap();
    write_registry_config(cfg_dir.path(), &reg, serde_json::json!({}));
    let img = reg.push_archive(&busybox_archive(), "demo/busybox", "1.0", "from-the-registry", true).unwrap();
    let yaml = format!("{}---{}", pod_yaml("a", &img.reference, None), pod_yaml("b", &img.reference, None));
    node.write_manifest("ab.yaml", &yaml).unwrap();
    for name in ["a", "b"] {
        let p = node.wait_pod(name, "running", T, running);
        assert_log(&node, &p, "from-the-registry");
    }
    let own_layer = img.layers.last().unwrap();
    let ev = node.events();
    assert_eq!(reg.blob_gets(own_layer), 1, "layer downloads: {:#?}\nevents: {ev}", reg.requests());
    assert_eq!(reg.blob_gets(&img.config), 1, "config downloads: {:#?}\nevents: {ev}", reg.requests());
    assert_eq!(reg.blob_gets(&img.layers[0]), 0, "the base layer was already on the node: {:#?}", reg.requests());
    assert!(
        reg.requests().iter().all(|r| !r.contains("sha256:000000000000")),
        "the arm64 entry was fetched: {:#?}",
        reg.requests()
    );
    let ev = node.events();
    assert!(ev.contains("Pulling image"), "{ev}");
    assert!(ev.contains("Successfully pulled image"), "{ev}");
    assert!(ev.contains("shared with a pull already running"), "{ev}");
    assert!(images_in_containerd(&node).contains(&img.reference), "{}", images_in_containerd(&node));
}

/// A registry that wants a bearer token: with no credentials the pod waits in ErrImagePull /
/// ImagePullBackOff with the registry's own reason; once the node's registry config gains the
/// credentials (no agent restart) the retry pulls and the pod runs.
#[test]
fn bearer_token_registry_needs_credentials() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let node = node(cfg_dir.path());
    let reg = Registry::start(Options {
        netns: Some(node.netns.path()),
        auth: Some(("puller".into(), "s3cret".into())),
        ..Default::default()
    })
    .unwrap();
    write_registry_config(cfg_dir.path(), &reg, serde_json::json!({}));
    let img = reg.push_archive(&busybox_archive(), "private/app", "2.0", "private-bits", false).unwrap();
    node.write_manifest("p.yaml", &pod_yaml("p", &img.reference, None)).unwrap();
    let p = node.wait_pod("p", "refused pull", T, |p| {
        waiting(p).is_some_and(|(r, _)| r == "ErrImagePull" || r == "ImagePullBackOff")
    });
    let (_, msg) = waiting(&p).unwrap();
    eprintln!("no credentials: {msg}");
    assert!(msg.contains("credentials required for this repository"), "{msg}");
    assert!(!images_in_containerd(&node).contains(&img.reference));

    // Wrong password: the registry's reason for that.
    write_registry_config(
        cfg_dir.path(),
        &reg,
        serde_json::json!({ reg.host(): {"username": "puller", "password": "wrong"} }),
    );
    node.wait_pod("p", "wrong password refused", T, |p| {
        waiting(p).is_some_and(|(_, m)| m.contains("invalid username or password"))
    });

    let auth = base64_encode("puller:s3cret");
    write_registry_config(
        cfg_dir.path(),
        &reg,
        serde_json::json!({ format!("http://{}/v2/", reg.host()): {"auth": auth} }),
    );
    let p = node.wait_pod("p", "running", T, running);
    assert_log(&node, &p, "private-bits");
    assert!(reg.requests().iter().any(|r| r.starts_with("GET /token")), "{:#?}", reg.requests());
}

/// Never without the image → ErrImageNeverPull and no request to the registry; a blob the registry
/// changed → ErrImagePull naming the digest problem, and no image record.
#[test]
fn never_policy_and_a_corrupt_blob() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let node = node(cfg_dir.path());
    let reg = Registry::start(Options { netns: Some(node.netns.path()), ..Default::default() }).unwrap();
    write_registry_config(cfg_dir.path(), &reg, serde_json::json!({}));
    let never = reg.push_archive(&busybox_archive(), "n/never", "1", "never", false).unwrap();
    let bad = reg.push_archive(&busybox_archive(), "n/bad", "1", "tampered", false).unwrap();
    reg.corrupt(bad.layers.last().unwrap());
    let yaml =
        format!("{}---{}", pod_yaml("never", &never.reference, Some("Never")), pod_yaml("bad", &bad.reference, None));
    node.write_manifest("nb.yaml", &yaml).unwrap();
    let p =
        node.wait_pod("never", "ErrImageNeverPull", T, |p| waiting(p).is_some_and(|(r, _)| r == "ErrImageNeverPull"));
    assert!(waiting(&p).unwrap().1.contains("pull policy of Never"), "{:?}", waiting(&p));
    let p = node.wait_pod("bad", "digest error", T, |p| {
        waiting(p).is_some_and(|(r, m)| (r == "ErrImagePull" || r == "ImagePullBackOff") && !m.is_empty())
    });
    let (_, msg) = waiting(&p).unwrap();
    eprintln!("corrupt blob: {msg}");
    assert!(msg.to_lowercase().contains("digest"), "{msg}");
    let listed = images_in_containerd(&node);
    assert!(!listed.contains(&bad.reference) && !listed.contains(&never.reference), "{listed}");
    assert!(
        reg.requests().iter().all(|r| !r.contains("n/never")),
        "Never must not ask the registry: {:#?}",
        reg.requests()
    );
}

/// The registry breaks off the new layer halfway: the pull fails (ErrImagePull / backoff) and
/// leaves no image behind; once the registry serves it whole again, the retry pulls and the pod
/// runs with the complete layer.
#[test]
fn a_download_cut_mid_blob_is_retried_and_leaves_no_image() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let node = node(cfg_dir.path());
    let reg = Registry::start(Options { netns: Some(node.netns.path()), ..Default::default() }).unwrap();
    write_registry_config(cfg_dir.path(), &reg, serde_json::json!({}));
    let img = reg.push_archive(&busybox_archive(), "flaky/app", "3", "whole-layer", false).unwrap();
    let layer = img.layers.last().unwrap().clone();
    reg.cut(&layer, true);
    node.write_manifest("f.yaml", &pod_yaml("f", &img.reference, None)).unwrap();
    let p = node.wait_pod("f", "failed pull", T, |p| {
        waiting(p).is_some_and(|(r, m)| (r == "ErrImagePull" || r == "ImagePullBackOff") && !m.is_empty())
    });
    let (_, msg) = waiting(&p).unwrap();
    eprintln!("cut mid-blob: {msg}");
    assert!(msg.contains(&layer), "the message names the layer: {msg}");
    assert!(!images_in_containerd(&node).contains(&img.reference), "a failed pull left an image record");
    let cut_gets = reg.blob_gets(&layer);
    assert!(cut_gets >= 1);
    reg.cut(&layer, false);
    let p = node.wait_pod("f", "running", T, running);
    assert_log(&node, &p, "whole-layer");
    assert!(reg.blob_gets(&layer) > cut_gets, "the layer was fetched again");
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
