//! The containerd runtime implementation against a real, private containerd: image import,
//! container lifecycle, logs through the `binary://` logger, exec, events and cleanup.
#![allow(clippy::unwrap_used)]

use keelson_agent::runtime::containerd::Containerd as Runtime;
use keelson_agent::runtime::{ContainerRuntime, ContainerSpec, RuntimeEvent, Stdio, TaskState};
use keelson_tests::{Containerd, require_root};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

fn images() -> std::path::PathBuf {
    keelson_tests::target_dir().join("images")
}

fn minimal_spec(args: &[&str]) -> serde_json::Value {
    let ns = ["pid", "mount", "ipc", "uts", "network"].iter().map(|t| json!({ "type": t })).collect();
    keelson_tests::agent::minimal_oci_spec(args, ns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_run_exec_log_and_remove() {
    require_root();
    let ctrd = Containerd::start().unwrap();
    let ns = keelson_tests::unique_name("rt");
    let rt = Runtime::connect(&ctrd.socket(), &ns, &ctrd.dir().join("exec")).await.unwrap();
    assert!(rt.version().await.unwrap().starts_with("containerd "));

    // Import is idempotent and yields the annotated names.
    for _ in 0..2 {
        let names = rt.import_archive(&images().join("busybox.tar")).await.unwrap();
        assert_eq!(names, vec!["keelson.local/busybox:latest".to_string()]);
    }
    let cfg = rt.image_config("keelson.local/busybox:latest").await.unwrap();
    assert_eq!(cfg.cmd, vec!["sh"]);
    assert!(cfg.id.starts_with("sha256:"));
    assert!(rt.image_config("keelson.local/nope:1").await.unwrap_err().is_not_found());

    let mut events = rt.events().await.unwrap();
    let mut labels = BTreeMap::new();
    labels.insert("io.keelson.pod.uid".to_string(), "u1".to_string());
    let spec = ContainerSpec {
        id: "c1".into(),
        image: "keelson.local/busybox:latest".into(),
        labels,
        oci_spec: minimal_spec(&["sh", "-c", "echo hello; echo oops >&2; sleep 300"]),
    };
    rt.create_container(&spec).await.unwrap();
    assert!(matches!(
        rt.create_container(&spec).await,
        Err(keelson_agent::runtime::RuntimeError::AlreadyExists { .. })
    ));

    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("c/0.log");
    let logger = keelson_tests::target_dir().join("debug/keelson-logger");
    assert!(logger.exists(), "build keelson-logger first (cargo build -p keelson-agent)");
    let stdio = Stdio::Binary { binary: logger, args: vec![("path".into(), log.to_string_lossy().to_string())] };
    let pid = rt.start("c1", &stdio).await.unwrap();
    assert!(pid > 0);

    let listed = rt.list().await.unwrap();
    let c = listed.iter().find(|c| c.id == "c1").unwrap();
    assert_eq!(c.label("io.keelson.pod.uid"), Some("u1"));
    assert_eq!(c.label("io.keelson.managed"), Some("true"));
    assert!(matches!(c.task, TaskState::Running { .. }));

    let ex =
        rt.exec("c1", &["sh".into(), "-c".into(), "echo out; exit 3".into()], Duration::from_secs(10)).await.unwrap();
    assert_eq!(ex.exit_code, 3);
    assert_eq!(String::from_utf8_lossy(&ex.output).trim(), "out");
    let slow = rt.exec("c1", &["sleep".into(), "30".into()], Duration::from_millis(300)).await;
    assert!(matches!(slow, Err(keelson_agent::runtime::RuntimeError::Timeout { .. })), "{slow:?}");

    let text = keelson_tests::wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).ok().filter(|t| t.lines().count() >= 2)
    })
    .expect("log lines written by the logger");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.ends_with(" stdout F hello")), "{text}");
    assert!(lines.iter().any(|l| l.ends_with(" stderr F oops")), "{text}");

    rt.kill("c1", libc::SIGKILL, false).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(RuntimeEvent::TaskExit { container_id, exit_code }) if container_id == "c1" => break exit_code,
                Some(_) => continue,
                None => panic!("event stream closed"),
            }
        }
    })
    .await
    .expect("exit event");
    assert_eq!(ev, 137);
    let c = rt.list().await.unwrap().into_iter().find(|c| c.id == "c1").unwrap();
    assert!(matches!(c.task, TaskState::Stopped { exit_code: 137, exited_at: Some(_) }), "{:?}", c.task);

    rt.remove("c1").await.unwrap();
    rt.remove("c1").await.unwrap(); // idempotent
    assert!(rt.list().await.unwrap().is_empty());
}
