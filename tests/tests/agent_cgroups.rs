//! The agent's cgroupfs layer on the host's real cgroup v1 (hybrid) hierarchies: a uniquely
//! named test root, pod cgroups with limits read back from the kernel's files, processes inside
//! blocking removal, and the memory limit enforced by the kernel.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use keelson_agent::cgroups::fs::CgroupMode;
use keelson_agent::cgroups::{
    CgroupError, Cgroups, PodCgroup, PodCgroupRef, QosClass, ResourceConfig, pod_cgroup_path,
};
use keelson_tests::agent_infra::{CgroupRoot, ChildGuard};
use keelson_tests::require_root;

fn read(p: &PathBuf) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())).trim().to_string()
}

fn pod_dir(root: &CgroupRoot, controller: &str, qos: QosClass, uid: &str) -> PathBuf {
    root.fs().controller_dir(controller, &pod_cgroup_path(root.name(), qos, uid)).expect("controller mounted")
}

#[test]
fn pod_cgroups_with_limits_on_real_v1() {
    require_root();
    let root = CgroupRoot::new().expect("test cgroup root");
    let fs = root.fs();
    assert_eq!(fs.mode(), CgroupMode::V1, "this machine mounts cgroup v1 per controller");

    fs.ensure_root().expect("ensure_root");
    fs.ensure_root().expect("ensure_root twice");
    for c in ["cpu", "memory", "pids", "cpuset", "cpuacct"] {
        let tier = fs.controller_dir(c, &format!("/{}/burstable", root.name())).expect("mounted");
        assert!(tier.is_dir(), "{c} burstable tier at {}", tier.display());
    }
    let tier = |t: &str| fs.controller_dir("cpu", &format!("/{}/{t}", root.name())).expect("cpu mounted");
    assert_eq!(read(&tier("besteffort").join("cpu.shares")), "2", "best-effort tier at minimum shares");
    fs.set_burstable_cpu_requests(1500).expect("burstable tier shares");
    assert_eq!(read(&tier("burstable").join("cpu.shares")), "1536");
    let unified = fs.bpf_attach_dir().expect("hybrid has a cgroup2 mount");
    assert!(unified.join("besteffort").is_dir(), "pod tree mirrored in cgroup2 for cgroup-BPF");

    let mut pod = PodCgroup {
        uid: "0b6c3a3e-1111-4e5f-9a0b-000000000001".into(),
        qos: QosClass::Burstable,
        resources: ResourceConfig {
            cpu_shares: 512,
            cpu_quota_us: Some(20_000),
            cpu_period_us: 100_000,
            memory_limit_bytes: Some(32 << 20),
            pids_limit: Some(50),
        },
    };
    fs.ensure_pod(&pod).expect("ensure_pod");
    fs.ensure_pod(&pod).expect("ensure_pod twice");
    let cpu = pod_dir(&root, "cpu", pod.qos, &pod.uid);
    let mem = pod_dir(&root, "memory", pod.qos, &pod.uid);
    let pids = pod_dir(&root, "pids", pod.qos, &pod.uid);
    let cpuset = pod_dir(&root, "cpuset", pod.qos, &pod.uid);
    assert_eq!(read(&cpu.join("cpu.shares")), "512");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "20000");
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(&mem.join("memory.limit_in_bytes")), (32u64 << 20).to_string());
    assert_eq!(read(&pids.join("pids.max")), "50");
    assert!(!read(&cpuset.join("cpuset.cpus")).is_empty(), "cpuset inherited so tasks can join");
    assert!(!read(&cpuset.join("cpuset.mems")).is_empty());

    // Converge to new values, including back to unlimited.
    pod.resources.cpu_quota_us = None;
    pod.resources.memory_limit_bytes = None;
    pod.resources.pids_limit = None;
    pod.resources.cpu_shares = 2;
    fs.ensure_pod(&pod).expect("ensure_pod with new limits");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "-1");
    assert_eq!(read(&cpu.join("cpu.shares")), "2");
    assert_eq!(read(&pids.join("pids.max")), "max");
    let unlimited: u64 = read(&mem.join("memory.limit_in_bytes")).parse().expect("number");
    assert!(unlimited > 1 << 60, "memory back to unlimited, got {unlimited}");

    let guaranteed = PodCgroup { uid: "g-2".into(), qos: QosClass::Guaranteed, resources: ResourceConfig::default() };
    fs.ensure_pod(&guaranteed).expect("guaranteed pod");
    assert!(fs.controller_dir("memory", &format!("/{}/podg-2", root.name())).expect("memory").is_dir());
    assert_eq!(
        fs.list_pods().expect("list"),
        vec![
            PodCgroupRef { uid: pod.uid.clone(), qos: QosClass::Burstable },
            PodCgroupRef { uid: "g-2".into(), qos: QosClass::Guaranteed },
        ]
    );

    // A process in a container leaf (what runc creates from linux.cgroupsPath) blocks removal.
    let leaf = mem.join("ctr-1");
    std::fs::create_dir(&leaf).expect("leaf cgroup");
    let mut sleeper = ChildGuard::spawn(Command::new("sleep").arg("60")).expect("spawn sleep");
    std::fs::write(leaf.join("cgroup.procs"), sleeper.pid().to_string()).expect("join leaf");
    assert_eq!(fs.pod_pids(&pod.uid).expect("pids"), vec![sleeper.pid()]);
    match fs.remove_pod(&pod.uid) {
        Err(CgroupError::Busy { path, pids }) => {
            assert_eq!(path, leaf);
            assert_eq!(pids, vec![sleeper.pid()]);
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_eq!(fs.kill_pod_processes(&pod.uid).expect("kill"), vec![sleeper.pid()]);
    let status = sleeper.0.wait().expect("reap sleep");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(fs.pod_pids(&pod.uid).expect("pids").is_empty(), "reaped process left the cgroup");

    fs.remove_pod(&pod.uid).expect("remove after the process exited");
    fs.remove_pod(&pod.uid).expect("remove is idempotent");
    fs.remove_pod("g-2").expect("remove guaranteed pod");
    for h in fs.hierarchies() {
        let p = h.mount.join(pod_cgroup_path(root.name(), pod.qos, &pod.uid).trim_start_matches('/'));
        assert!(!p.exists(), "{} removed", p.display());
    }
    assert!(fs.list_pods().expect("list").is_empty());
}

#[test]
fn memory_limit_is_enforced_by_the_kernel() {
    require_root();
    let root = CgroupRoot::new().expect("test cgroup root");
    let fs = root.fs();
    let pod = PodCgroup {
        uid: "oom-1".into(),
        qos: QosClass::Guaranteed,
        resources: ResourceConfig { memory_limit_bytes: Some(16 << 20), ..ResourceConfig::default() },
    };
    fs.ensure_pod(&pod).expect("ensure_pod");
    let mem = pod_dir(&root, "memory", pod.qos, &pod.uid);

    // The hog waits on stdin until it has been moved into the pod cgroup, then allocates 64 MiB.
    let mut hog = ChildGuard::spawn(
        Command::new("python3")
            .args(["-c", "import sys; sys.stdin.readline(); b = bytearray(64 << 20); print('survived')"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    )
    .expect("spawn python3");
    std::fs::write(mem.join("cgroup.procs"), hog.pid().to_string()).expect("join pod cgroup");
    hog.0.stdin.take().expect("stdin").write_all(b"go\n").expect("release hog");
    let status = hog.0.wait().expect("wait hog");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "OOM-killed, got {status:?}");
    let oom: String = read(&mem.join("memory.oom_control"));
    let kills: u64 = oom
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .expect("oom_kill counter");
    assert!(kills >= 1, "memory.oom_control: {oom}");
    fs.remove_pod(&pod.uid).expect("remove");
}
