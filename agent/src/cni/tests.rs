//! Runtime tests with scripted plugins: small `/bin/sh` executables in a temp bin dir that record
//! their stdin, `CNI_*` environment and call order next to themselves and print a canned result.
//! They exercise the real exec path (env, stdin, exit codes, timeouts) without root.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
    rt: CniRuntime,
}

impl Fixture {
    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn read_json(&self, file: &str) -> Value {
        let p = self.bin().join(file);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", p.display()))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.bin().join(file)).unwrap_or_default()
    }

    fn env(&self, file: &str) -> BTreeMap<String, String> {
        self.read(file).lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn netns(&self) -> PathBuf {
        self.dir.path().join("netns-p1")
    }

    fn attachment(&self, cid: &str) -> Attachment {
        Attachment {
            container_id: cid.into(),
            netns: Some(self.netns()),
            ifname: "eth0".into(),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            pod_uid: "uid-1".into(),
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "TCP".into(),
                host_ip: None,
            }],
            capability_args: BTreeMap::new(),
        }
    }
}

/// A plugin that logs and, on ADD, prints `result` (or fails with `error` / sleeps).
fn script(name: &str, add: &str) -> String {
    format!(
        r#"#!/bin/sh
d=$(dirname "$0")
cat > "$d/$CNI_COMMAND-{name}.stdin"
env | grep '^CNI_' | sort > "$d/$CNI_COMMAND-{name}.env"
echo "$CNI_COMMAND {name}" >> "$d/order"
if [ "$CNI_COMMAND" = ADD ]; then
{add}
fi
exit 0
"#
    )
}

fn ok_result(ip: &str) -> String {
    format!(
        r#"printf '%s' '{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"'"$CNI_NETNS"'"}}],"ips":[{{"address":"{ip}/24","gateway":"10.9.0.1","interface":0}}]}}'"#
    )
}

fn fixture(version: &str, plugins: &[(&str, &str, Value)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    let mut entries = Vec::new();
    for (name, add, extra) in plugins {
        let path = bin.join(name);
        std::fs::write(&path, script(name, add)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut entry = json!({"type": name});
        if let (Some(e), Some(x)) = (entry.as_object_mut(), extra.as_object()) {
            e.extend(x.clone());
        }
        entries.push(entry);
    }
    let list = json!({"cniVersion": version, "name": "testnet", "plugins": entries});
    std::fs::write(conf.join("10-test.conflist"), list.to_string()).unwrap();
    std::fs::write(dir.path().join("netns-p1"), "").unwrap();
    let rt = CniRuntime::new(CniConfig {
        conf_dir: conf,
        bin_dirs: vec![dir.path().join("nonexistent"), bin],
        cache_dir: dir.path().join("cache"),
        plugin_netns: None,
        exec_timeout: Duration::from_secs(10),
    });
    Fixture { dir, rt }
}

fn two_plugin_fixture(version: &str) -> Fixture {
    fixture(
        version,
        &[
            ("first", &ok_result("10.9.0.5"), json!({"ipam": {"type": "x"}})),
            ("second", &ok_result("10.9.0.5"), json!({"capabilities": {"portMappings": true}})),
        ],
    )
}

#[tokio::test]
async fn add_runs_the_chain_with_env_prev_result_and_capabilities() {
    let f = two_plugin_fixture("1.0.0");
    let a = f.attachment("c1");
    let r = f.rt.add(&a).await.expect("ADD");
    assert_eq!(r.pod_ips(), vec!["10.9.0.5".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(f.read("order"), "ADD first\nADD second\n");

    let env = f.env("ADD-first.env");
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], "c1");
    assert_eq!(env["CNI_NETNS"], f.netns().display().to_string());
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(
        env["CNI_ARGS"],
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=uid-1"
    );
    assert!(env["CNI_PATH"].ends_with("/bin"), "{}", env["CNI_PATH"]);

    let first = f.read_json("ADD-first.stdin");
    assert_eq!(first["name"], "testnet");
    assert_eq!(first["cniVersion"], "1.0.0");
    assert!(first.get("prevResult").is_none());
    assert!(first.get("runtimeConfig").is_none(), "first plugin declares no capability");
    let second = f.read_json("ADD-second.stdin");
    assert_eq!(second["prevResult"]["ips"][0]["address"], "10.9.0.5/24", "prevResult is the first plugin's output");
    assert_eq!(
        second["runtimeConfig"]["portMappings"],
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
    );
    assert_eq!(f.rt.cached_result(&a).expect("cached result"), Some(r.clone()));
    let cached = f.rt.cached_attachments().expect("cache");
    assert_eq!(cached.len(), 1);
    assert_eq!(cached[0].result, r.raw);
    assert!(f.dir.path().join("cache/results/testnet-c1-eth0").is_file());
}

#[tokio::test]
async fn del_reverses_the_chain_and_is_idempotent_without_netns() {
    let f = two_plugin_fixture("1.0.0");
    let mut a = f.attachment("c1");
    f.rt.add(&a).await.expect("ADD");
    std::fs::remove_file(f.netns()).unwrap();
    a.port_mappings.clear();
    f.rt.del(&a).await.expect("DEL");
    assert_eq!(f.read("order"), "ADD first\nADD second\nDEL second\nDEL first\n");
    assert_eq!(f.env("DEL-first.env")["CNI_NETNS"], "", "gone netns is passed as empty");
    let del = f.read_json("DEL-second.stdin");
    assert_eq!(del["prevResult"]["ips"][0]["address"], "10.9.0.5/24", "cached result on DEL");
    assert_eq!(del["runtimeConfig"]["portMappings"][0]["hostPort"], 8080, "port mappings from the cache");
    assert!(f.rt.cached_attachments().expect("cache").is_empty());

    // Again: no cache any more, still runs and succeeds, without prevResult.
    f.rt.del(&a).await.expect("DEL again");
    assert!(f.read_json("DEL-second.stdin").get("prevResult").is_none());
}

#[tokio::test]
async fn check_uses_the_cached_result() {
    let f = two_plugin_fixture("1.0.0");
    let a = f.attachment("c1");
    assert!(matches!(f.rt.check(&a).await, Err(CniError::Unsupported { .. })), "nothing cached yet");
    f.rt.add(&a).await.expect("ADD");
    f.rt.check(&a).await.expect("CHECK");
    assert!(f.read("order").ends_with("CHECK first\nCHECK second\n"));
    assert_eq!(f.read_json("CHECK-first.stdin")["prevResult"]["ips"][0]["address"], "10.9.0.5/24");
}

#[tokio::test]
async fn check_is_unsupported_before_040() {
    let f = two_plugin_fixture("0.3.1");
    let a = f.attachment("c1");
    f.rt.add(&a).await.expect("ADD");
    assert!(matches!(f.rt.check(&a).await, Err(CniError::Unsupported { .. })));
    // DEL before 0.4.0 gets no prevResult.
    f.rt.del(&a).await.expect("DEL");
    assert!(f.read_json("DEL-first.stdin").get("prevResult").is_none());
}

#[tokio::test]
async fn plugin_error_json_is_typed_and_add_rolls_back() {
    let fail = r#"printf '%s' '{"cniVersion":"1.0.0","code":7,"msg":"no addresses left","details":"pool 10.9.0.0/24"}'; exit 1"#;
    let f = fixture("1.0.0", &[("first", &ok_result("10.9.0.5"), json!({})), ("second", fail, json!({}))]);
    match f.rt.add(&f.attachment("c1")).await {
        Err(CniError::Plugin { plugin, command, error }) => {
            assert_eq!((plugin.as_str(), command), ("second", "ADD"));
            assert_eq!(error.code, 7);
            assert_eq!(error.msg, "no addresses left");
            assert_eq!(error.details, "pool 10.9.0.0/24");
        }
        other => panic!("expected a typed plugin error, got {other:?}"),
    }
    assert_eq!(f.read("order"), "ADD first\nADD second\nDEL second\nDEL first\n", "rolled back");
    assert!(f.rt.cached_attachments().expect("cache").is_empty(), "failed ADD is not cached");
}

#[tokio::test]
async fn plugin_failures_without_json_and_bad_results() {
    let f = fixture("1.0.0", &[("crash", "echo boom >&2; exit 3", json!({}))]);
    match f.rt.add(&f.attachment("c1")).await {
        Err(CniError::PluginFailed { plugin, output, .. }) => {
            assert_eq!(plugin, "crash");
            assert!(output.contains("boom"), "{output}");
        }
        other => panic!("expected PluginFailed, got {other:?}"),
    }
    let f = fixture("1.0.0", &[("garbage", "echo not-json", json!({}))]);
    assert!(matches!(f.rt.add(&f.attachment("c1")).await, Err(CniError::BadResult { .. })));
}

#[tokio::test]
async fn slow_plugins_time_out() {
    let mut f = fixture("1.0.0", &[("slow", "sleep 30", json!({}))]);
    f.rt.config.exec_timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    match f.rt.add(&f.attachment("c1")).await {
        Err(CniError::Timeout { plugin, command, .. }) => assert_eq!((plugin.as_str(), command), ("slow", "ADD")),
        other => panic!("expected Timeout, got {other:?}"),
    }
    // The ADD timed out and the rollback DEL (which does not sleep) ran.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn missing_plugins_and_bad_attachments_are_reported() {
    let f = two_plugin_fixture("1.0.0");
    std::fs::remove_file(f.bin().join("second")).unwrap();
    assert!(matches!(f.rt.add(&f.attachment("c1")).await, Err(CniError::PluginNotFound { .. })));
    let mut a = f.attachment("c2");
    a.ifname = "this-name-is-too-long".into();
    assert!(matches!(f.rt.add(&a).await, Err(CniError::InvalidAttachment { .. })));
    let mut a = f.attachment("c3");
    a.pod_name = "x;y".into();
    assert!(matches!(f.rt.add(&a).await, Err(CniError::InvalidAttachment { .. })));
    let mut a = f.attachment("c4");
    a.netns = Some(f.dir.path().join("no-such-netns"));
    assert!(matches!(f.rt.add(&a).await, Err(CniError::InvalidAttachment { .. })));
    a.netns = None;
    assert!(matches!(f.rt.add(&a).await, Err(CniError::InvalidAttachment { .. })));
}

#[tokio::test]
async fn gc_deletes_stale_attachments_and_sends_valid_set_from_1_1() {
    let f = two_plugin_fixture("1.1.0");
    f.rt.add(&f.attachment("keep")).await.expect("ADD keep");
    f.rt.add(&f.attachment("stale")).await.expect("ADD stale");
    let valid = [AttachmentKey { container_id: "keep".into(), ifname: "eth0".into() }];
    let report = f.rt.gc_report(&valid).await.expect("GC");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.deleted, vec![AttachmentKey { container_id: "stale".into(), ifname: "eth0".into() }]);
    assert_eq!(f.env("DEL-first.env")["CNI_CONTAINERID"], "stale");
    let cached: Vec<String> = f.rt.cached_attachments().unwrap().into_iter().map(|e| e.container_id).collect();
    assert_eq!(cached, vec!["keep".to_string()]);
    let gc = f.read_json("GC-first.stdin");
    assert_eq!(gc["cni.dev/valid-attachments"], json!([{"containerID": "keep", "ifname": "eth0"}]));
    let env = f.env("GC-second.env");
    assert_eq!(env["CNI_COMMAND"], "GC");
    assert!(!env.contains_key("CNI_CONTAINERID"), "GC carries no attachment env");
}

#[tokio::test]
async fn gc_before_1_1_only_deletes_stale_cache_entries() {
    let f = two_plugin_fixture("1.0.0");
    f.rt.add(&f.attachment("stale")).await.expect("ADD");
    f.rt.gc(&[]).await.expect("GC");
    assert!(f.rt.cached_attachments().expect("cache").is_empty(), "stale attachment deleted");
    assert_eq!(f.read("order"), "ADD first\nADD second\nDEL second\nDEL first\n");
    assert!(!f.read("order").contains("GC "), "no GC verb before 1.1.0");
}

#[tokio::test]
async fn del_uses_the_cached_network_after_the_config_changed() {
    let f = two_plugin_fixture("1.0.0");
    let a = f.attachment("c1");
    f.rt.add(&a).await.expect("ADD");
    // The conf dir now holds another network with a different chain.
    let conf = f.dir.path().join("conf");
    std::fs::remove_file(conf.join("10-test.conflist")).unwrap();
    std::fs::write(
        conf.join("20-other.conflist"),
        r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"second"}]}"#,
    )
    .unwrap();
    f.rt.del(&a).await.expect("DEL");
    assert!(f.read("order").ends_with("DEL second\nDEL first\n"), "{}", f.read("order"));
    assert_eq!(f.read_json("DEL-first.stdin")["name"], "testnet");
}

#[tokio::test]
async fn single_plugin_conf_files_work() {
    let f = fixture("0.4.0", &[("only", &ok_result("10.9.0.7"), json!({}))]);
    let conf = f.dir.path().join("conf");
    std::fs::remove_file(conf.join("10-test.conflist")).unwrap();
    std::fs::write(conf.join("10-single.conf"), r#"{"cniVersion":"0.4.0","name":"single","type":"only"}"#).unwrap();
    let r = f.rt.add(&f.attachment("c1")).await.expect("ADD");
    assert_eq!(r.result.ips[0].address.to_string(), "10.9.0.7/24");
    assert_eq!(r.cni_version(), "1.0.0", "the plugin's own result version is kept");
    assert_eq!(f.read_json("ADD-only.stdin")["name"], "single");
}
