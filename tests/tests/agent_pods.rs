//! Static pods on a real node: containerd, runc, reference CNI plugins, v1 cgroups.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use keelson_tests::agent::Node;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn cs<'a>(p: &'a Pod, name: &str) -> &'a ContainerStatus {
    p.status.as_ref().unwrap().container_statuses.as_ref().unwrap().iter().find(|c| c.name == name).unwrap()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

/// An init container prepares what the server serves; a second app fetches it over localhost
/// (shared net namespace) and logs it. Also: env, hostname, resolv.conf, pod IP reachable from the
/// node, CRI log format.
///
/// Why the init check can fail: pod containers share the network and IPC namespaces but no
/// filesystem (no volumes yet), so the init container (with CAP_NET_ADMIN) leaves its mark in the
/// pod's netns: it adds 10.77.0.7/32 to `lo`. The server reads `lo`'s addresses once, when it
/// starts, and writes them into the page it serves; if it started before the init container ran
/// (or the init container never ran) the address is missing, the server exits (`set -e`) and is
/// restarted, and the page / restart count assertions below fail.
#[test]
fn init_and_two_apps_share_the_pod_network() {
    let node = Node::start(&[]).unwrap();
    node.write_manifest(
        "web.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 2
  initContainers:
  - name: prepare
    image: keelson.local/busybox:latest
    securityContext: {capabilities: {add: [NET_ADMIN]}}
    command: [sh, -c, "ip addr add 10.77.0.7/32 dev lo && echo init done"]
  containers:
  - name: server
    image: keelson.local/busybox:latest
    command: [sh, -c]
    args:
    - |
      set -e
      mkdir -p /tmp/www
      addr=`ip -o -4 addr show dev lo | grep -o '10\.77\.0\.[0-9]*'`
      [ -n "$addr" ] || { echo "no address from the init container"; exit 1; }
      echo "prepared by init: $addr" > /tmp/www/index.html
      exec httpd -f -p 8080 -h /tmp/www
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 1}
  - name: client
    image: keelson.local/busybox:latest
    env:
    - {name: TARGET, value: "127.0.0.1"}
    - {name: MY_POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    command: [sh, -c]
    args:
    - |
      echo "pod=$(MY_POD) ip=$MY_IP host=$(hostname)"
      cat /etc/resolv.conf
      until printf "GET /index.html HTTP/1.0\r\n\r\n" | nc $(TARGET) 8080 | grep "prepared by init"; do sleep 0.2; done
      sleep 3600
"#,
    )
    .unwrap();
    let p = node.wait_pod("web", "Ready", T, ready);
    assert_eq!(phase(&p), "Running");
    let st = p.status.as_ref().unwrap();
    let ip = st.pod_ip.clone().unwrap();
    assert!(ip.starts_with(&node.subnet_prefix), "{ip}");
    assert_eq!(st.host_ip.as_deref(), Some("192.0.2.10"));
    let init = &st.init_container_statuses.as_ref().unwrap()[0];
    assert_eq!(init.state.as_ref().unwrap().terminated.as_ref().unwrap().reason.as_deref(), Some("Completed"));
    assert!(cs(&p, "server").ready && cs(&p, "client").ready);
    assert_eq!(cs(&p, "server").restart_count, 0, "the server's first start must already see the init's address");
    let init_done = init.state.as_ref().unwrap().terminated.as_ref().unwrap().finished_at.clone().unwrap();
    let server_started = cs(&p, "server").state.as_ref().unwrap().running.as_ref().unwrap().started_at.clone().unwrap();
    assert!(init_done.0 <= server_started.0, "init finished {init_done:?} after the server started {server_started:?}");

    // The client's log (CRI format) shows env expansion, hostname, DNS config and the page fetched
    // over localhost.
    let log = node.log_file(&p, "client", 0);
    let text =
        keelson_tests::wait_for(T, || std::fs::read_to_string(&log).ok().filter(|t| t.contains("prepared by init")))
            .unwrap_or_else(|| panic!("client log {}: {:?}", log.display(), std::fs::read_to_string(&log)));
    for l in text.lines() {
        let mut f = l.splitn(4, ' ');
        let ts = f.next().unwrap();
        assert!(chrono_like(ts), "timestamp {ts:?} in {l:?}");
        assert!(matches!(f.next(), Some("stdout" | "stderr")), "{l}");
        assert!(matches!(f.next(), Some("F" | "P")), "{l}");
    }
    assert!(text.contains(&format!("stdout F pod=web-node1 ip={ip} host=web-node1")), "{text}");
    assert!(text.contains("nameserver 192.0.2.53"), "{text}");
    assert!(text.contains("stdout F prepared by init: 10.77.0.7"), "{text}");
    let init_log = std::fs::read_to_string(node.log_file(&p, "prepare", 0)).unwrap();
    assert!(init_log.contains("stdout F init done"), "{init_log}");

    // The node reaches the pod IP.
    let page = node
        .exec(&["sh", "-c", &format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | busybox nc {ip} 8080")])
        .unwrap();
    assert_eq!(page.lines().last(), Some("prepared by init: 10.77.0.7"), "{page}");

    // Delete → nothing left.
    node.remove_manifest("web.yaml").unwrap();
    keelson_tests::wait_for(T, || node.pods().is_empty().then_some(())).expect("pod removed from status");
    assert_clean(&node);
}

fn chrono_like(ts: &str) -> bool {
    ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T') && (ts.ends_with('Z') || ts.contains('+'))
}

fn assert_clean(node: &Node) {
    let ok = keelson_tests::wait_for(Duration::from_secs(20), || {
        (node.containers().is_empty()
            && node.snapshots().is_empty()
            && node.netns_files().is_empty()
            && node.veths().is_empty()
            && node.ipam_files().is_empty()
            && node.pod_cgroups().is_empty())
        .then_some(())
    });
    assert!(
        ok.is_some(),
        "leftovers: containers {:?} snapshots {:?} netns {:?} veths {:?} ipam {:?} cgroups {:?}",
        node.containers(),
        node.snapshots(),
        node.netns_files(),
        node.veths(),
        node.ipam_files(),
        node.pod_cgroups()
    );
}

fn restarts(p: &Pod, c: &str) -> i32 {
    cs(p, c).restart_count
}

fn last_terminated(p: &Pod, c: &str) -> Option<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    cs(p, c).last_state.as_ref().and_then(|s| s.terminated.clone())
}

fn container_id(p: &Pod, c: &str) -> String {
    cs(p, c).container_id.clone().unwrap_or_default().trim_start_matches("containerd://").to_string()
}

/// A memory hog is OOM-killed (reason OOMKilled, exit 137) and restarted under Always; the CPU
/// limit of its sibling is visible as a CFS quota in the container's cgroup.
#[test]
fn oom_kill_is_reported_and_cpu_quota_is_applied() {
    let node = Node::start(&["--backoff-base", "1s"]).unwrap();
    node.write_manifest(
        "hog.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: hog
    image: keelson.local/busybox:latest
    command: [sh, -c, "echo allocating; exec dd if=/dev/zero of=/dev/null bs=96M count=1"]
    resources: {limits: {memory: 32Mi}}
  - name: cpu
    image: keelson.local/busybox:latest
    command: [sleep, "3600"]
    resources: {requests: {cpu: 100m}, limits: {cpu: 200m, memory: 64Mi}}
"#,
    )
    .unwrap();
    let p = node.wait_pod("hog", "an OOM-killed restart", T, |p| {
        last_terminated(p, "hog").is_some_and(|t| t.reason.as_deref() == Some("OOMKilled")) && restarts(p, "hog") >= 1
    });
    let t = last_terminated(&p, "hog").unwrap();
    assert_eq!(t.exit_code, 137);
    assert_eq!(p.status.as_ref().unwrap().qos_class.as_deref(), Some("Burstable"));

    let p = node.wait_pod("hog", "cpu container running", T, |p| {
        cs(p, "cpu").state.as_ref().is_some_and(|s| s.running.is_some())
    });
    let uid = p.metadata.uid.clone().unwrap();
    let cid = container_id(&p, "cpu");
    let dir = format!("/sys/fs/cgroup/cpu/{}/burstable/pod{uid}/{cid}", node.cgroup_root);
    let quota = std::fs::read_to_string(format!("{dir}/cpu.cfs_quota_us")).unwrap();
    let period = std::fs::read_to_string(format!("{dir}/cpu.cfs_period_us")).unwrap();
    let shares = std::fs::read_to_string(format!("{dir}/cpu.shares")).unwrap();
    assert_eq!((quota.trim(), period.trim()), ("20000", "100000"));
    assert_eq!(shares.trim(), "102");
    let mem = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/{}/burstable/pod{uid}/{cid}/memory.limit_in_bytes",
        node.cgroup_root
    ))
    .unwrap();
    assert_eq!(mem.trim(), (64u64 << 20).to_string());
}

/// Liveness failure restarts; readiness flips Ready both ways; a startup probe holds back a
/// failing liveness probe until it succeeds; a tcpSocket readiness probe on a closed port keeps a
/// container unready.
///
/// The startup gating is checked from the first instance's own log, not by catching a short
/// window in the status: `slow` logs `started` 6 s after it starts, and its liveness probe fails
/// from the first try (2 failures at 1 s kill it). Gated, the first instance lives past 6 s and
/// its log has `started`; ungated, liveness kills it after ~2 s and the log ends at `starting`.
#[test]
fn probes_drive_restarts_and_readiness() {
    let node = Node::start(&["--backoff-base", "1s"]).unwrap();
    node.write_manifest(
        "probes.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: probes}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: live
    image: keelson.local/busybox:latest
    command: [sh, -c, "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 3600"]
    livenessProbe: {exec: {command: [test, -f, /tmp/healthy]}, periodSeconds: 1, failureThreshold: 1}
  - name: ready
    image: keelson.local/busybox:latest
    command: [sh, -c, "sleep 2; touch /tmp/ready; sleep 4; rm /tmp/ready; sleep 3600"]
    readinessProbe: {exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1}
  - name: slow
    image: keelson.local/busybox:latest
    command: [sh, -c, "echo starting; sleep 6; touch /tmp/started; echo started; sleep 3600"]
    startupProbe: {exec: {command: [test, -f, /tmp/started]}, periodSeconds: 1, failureThreshold: 30}
    livenessProbe: {exec: {command: ["false"]}, periodSeconds: 1, failureThreshold: 2}
  - name: closed
    image: keelson.local/busybox:latest
    command: [sleep, "3600"]
    readinessProbe: {tcpSocket: {port: 9}, periodSeconds: 1}
"#,
    )
    .unwrap();
    // Not ready at first (readiness starts as failure).
    let p =
        node.wait_pod("probes", "running", T, |p| cs(p, "ready").state.as_ref().is_some_and(|s| s.running.is_some()));
    assert!(!cs(&p, "ready").ready);
    assert_eq!(cs(&p, "slow").started, Some(false));
    // Readiness turns true, then false again.
    node.wait_pod("probes", "ready=true", T, |p| cs(p, "ready").ready);
    node.wait_pod("probes", "ready=false again", T, |p| !cs(p, "ready").ready && restarts(p, "ready") == 0);
    // Liveness restarted `live`.
    node.wait_pod("probes", "live restarted", T, |p| restarts(p, "live") >= 1);
    // The startup probe held the always-failing liveness probe back: the first instance of `slow`
    // lived until its startup probe passed (its log says `started`), and liveness killed it after.
    let p = node.wait_pod("probes", "slow restarted by liveness after startup", T, |p| restarts(p, "slow") >= 1);
    let t = last_terminated(&p, "slow").unwrap();
    let (began, ended) = (t.started_at.clone().unwrap(), t.finished_at.clone().unwrap());
    let first_log = std::fs::read_to_string(node.log_file(&p, "slow", 0)).unwrap();
    assert!(
        first_log.contains("stdout F starting") && first_log.contains("stdout F started"),
        "liveness killed `slow` before its startup probe passed (ran {began:?} .. {ended:?}):\n{first_log}"
    );
    let ran = ended.0.duration_since(began.0);
    assert!(
        ran >= k8s_openapi::jiff::SignedDuration::from_secs(5),
        "a gated instance runs 6 s + 2 probes, not {ran:?}"
    );
    assert!(!cs(&p, "closed").ready, "tcpSocket readiness on a closed port must fail");
    assert!(node.events().contains("failed liveness probe"), "{}", node.events());
}

/// CrashLoopBackOff: restarts of an always-failing container come at growing intervals as in kubelet
/// (base 1 s: the first restart immediately, then about 1, 2 s), the waiting reason says so, and each
/// instance's log is its own file.
#[test]
fn crash_loop_backoff_gaps_grow() {
    let node = Node::start(&["--backoff-base", "1s", "--backoff-max", "8s"]).unwrap();
    node.write_manifest(
        "crash.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: keelson.local/busybox:latest
    command: [sh, -c, "echo run $(date +%s); exit 3"]
"#,
    )
    .unwrap();
    // Each instance logs its start into its own file (<restart>.log); the CRI timestamps of the
    // first lines give the start times. start(n+1) - start(n) = run time (ms) + backoff + start-up.
    let saw_backoff = std::cell::Cell::new(false);
    let p = node.wait_pod("crash", "three restarts", T, |p| {
        let st = cs(p, "c");
        if st.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref())
            == Some("CrashLoopBackOff")
        {
            saw_backoff.set(true);
        }
        st.restart_count >= 3
    });
    assert!(saw_backoff.get());
    let start = |n: u32| -> i64 {
        let text = keelson_tests::wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(node.log_file(&p, "c", n)).ok().filter(|t| !t.is_empty())
        })
        .unwrap_or_else(|| panic!("log {n} missing"));
        let ts = text.split(' ').next().unwrap_or_default();
        ts.parse::<k8s_openapi::jiff::Timestamp>().unwrap_or_else(|e| panic!("{ts:?}: {e}")).as_millisecond()
    };
    let starts: Vec<i64> = (0..4).map(start).collect();
    let gaps: Vec<f64> = starts.windows(2).map(|w| (w[1] - w[0]) as f64 / 1000.0).collect();
    // Backoff 0 s, 1 s, 2 s: never shorter, and not much longer.
    for (got, want) in gaps.iter().zip([0.0, 1.0, 2.0]) {
        assert!(*got >= want && *got < want + 2.5, "gaps {gaps:?}");
    }
    let p = node.pod("crash").unwrap();
    let t = last_terminated(&p, "c").unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    // The previous instance's log is kept next to the current one.
    let p = node.pod("crash").unwrap();
    let n = restarts(&p, "c") as u32;
    let prev = std::fs::read_to_string(node.log_file(&p, "c", n - 1)).unwrap();
    assert!(prev.contains(" stdout F run "), "{prev}");
}

/// Deleting a pod runs preStop, then SIGTERM (handled by the app), within the grace period; a
/// container that ignores SIGTERM is SIGKILLed when the grace period ends.
#[test]
fn graceful_termination_runs_prestop_then_sigterm() {
    let node = Node::start(&[]).unwrap();
    node.write_manifest(
        "term.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: term}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: app
    image: keelson.local/busybox:latest
    command: [sh, -c]
    args:
    - |
      trap 'if [ -f /tmp/prestop ]; then echo "TERM after preStop"; else echo "TERM before preStop"; fi; exit 0' TERM
      echo started
      while true; do sleep 0.1; done
    lifecycle:
      preStop: {exec: {command: [sh, -c, "echo prestop > /tmp/prestop"]}}
  - name: stubborn
    image: keelson.local/busybox:latest
    command: [sh, -c, "trap '' TERM; echo stubborn; while true; do sleep 0.1; done"]
"#,
    )
    .unwrap();
    let p =
        node.wait_pod("term", "running", T, |p| phase(p) == "Running" && cs(p, "app").ready && cs(p, "stubborn").ready);
    let app_log = node.log_file(&p, "app", 0);
    keelson_tests::wait_for(T, || std::fs::read_to_string(&app_log).ok().filter(|t| t.contains("started"))).unwrap();
    let t0 = std::time::Instant::now();
    node.remove_manifest("term.yaml").unwrap();
    // Logs are removed with the pod, so read the app's log as soon as it shows the TERM handler.
    let text = keelson_tests::wait_for(T, || std::fs::read_to_string(&app_log).ok().filter(|t| t.contains("TERM ")))
        .unwrap_or_else(|| panic!("no TERM line; events {}", node.events()));
    assert!(text.contains("stdout F TERM after preStop"), "{text}");
    keelson_tests::wait_for(T, || node.pods().is_empty().then_some(())).expect("pod gone");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "the stubborn container must be killed only after the 3 s grace ({took:?})"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_clean(&node);
}

/// The agent is SIGKILLed with 5 pods running and restarted: it adopts every container, restarts
/// nothing, creates no duplicates; logs keep flowing (the logger belongs to the shim).
#[test]
fn agent_restart_adopts_running_pods() {
    let mut node = Node::start(&[]).unwrap();
    for i in 0..5 {
        node.write_manifest(
            &format!("p{i}.yaml"),
            &format!(
                r#"
apiVersion: v1
kind: Pod
metadata: {{name: p{i}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: keelson.local/busybox:latest
    command: [sh, -c, "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]
"#
            ),
        )
        .unwrap();
    }
    let before: Vec<(String, String)> = (0..5)
        .map(|i| {
            let p = node.wait_pod(&format!("p{i}"), "ready", T, ready);
            (p.metadata.uid.clone().unwrap(), container_id(&p, "app"))
        })
        .collect();
    let n_containers = node.containers().len();
    assert_eq!(n_containers, 10, "5 sandboxes + 5 apps: {:?}", node.containers());
    let p0 = node.pod("p0").unwrap();
    let log = node.log_file(&p0, "app", 0);

    node.kill_agent();
    let lines_while_down = std::fs::read_to_string(&log).unwrap().lines().count();
    std::thread::sleep(Duration::from_secs(1));
    assert!(std::fs::read_to_string(&log).unwrap().lines().count() > lines_while_down, "logs flow without the agent");
    // A pod added while the agent is down is picked up; killing the agent right after it starts
    // creating it must not leave duplicates either.
    node.write_manifest(
        "late.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers: [{name: app, image: keelson.local/busybox:latest, command: [sleep, '3600']}]\n",
    )
    .unwrap();
    node.start_agent().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    node.kill_agent();
    node.start_agent().unwrap();

    node.wait_pod("late", "ready", T, ready);
    for (i, (uid, cid)) in before.iter().enumerate() {
        let p = node.wait_pod(&format!("p{i}"), "ready after restart", T, ready);
        assert_eq!(p.metadata.uid.as_ref(), Some(uid));
        assert_eq!(&container_id(&p, "app"), cid, "container was replaced");
        assert_eq!(restarts(&p, "app"), 0);
    }
    let all = node.containers();
    assert_eq!(all.len(), 12, "no duplicates: {all:?}");
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), all.len());
    assert_eq!(node.netns_files().len(), 6);
}

/// Bad manifests are rejected naming file and field while good pods run; a missing image leaves
/// the pod Pending with ErrImagePull / ImagePullBackOff.
#[test]
fn bad_manifests_are_rejected_and_missing_images_back_off() {
    let node = Node::start(&[]).unwrap();
    node.write_manifest("typo.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: typo}\nspec:\n  containers: [{name: c, image: keelson.local/busybox:latest, comand: [sh]}]\n").unwrap();
    node.write_manifest("qty.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: qty}\nspec:\n  containers: [{name: c, image: keelson.local/busybox:latest, resources: {limits: {memory: 12Qi}}}]\n").unwrap();
    node.write_manifest("dup.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: dup}\nspec:\n  containers: [{name: c, image: x}, {name: c, image: y}]\n").unwrap();
    node.write_manifest(
        "name.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec:\n  containers: [{name: c, image: x}]\n",
    )
    .unwrap();
    node.write_manifest(
        "good.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: good}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers: [{name: c, image: keelson.local/busybox:latest, command: [sleep, '3600']}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: noimage}\nspec:\n  containers: [{name: c, image: keelson.local/missing:1.0}]\n",
    )
    .unwrap();
    node.wait_pod("good", "ready", T, ready);
    let p = node.wait_pod("noimage", "image pull failure", T, |p| {
        cs(p, "c")
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
    });
    assert_eq!(phase(&p), "Pending");
    let msg = cs(&p, "c").state.clone().unwrap().waiting.unwrap().message.unwrap_or_default();
    assert!(msg.contains("keelson.local/missing:1.0"), "{msg}");
    let errs = node.manifest_errors();
    let errs = errs.as_array().unwrap();
    let find = |file: &str| {
        errs.iter().find(|e| e["file"].as_str().is_some_and(|f| f.ends_with(file))).cloned().unwrap_or_default()
    };
    assert_eq!(find("typo.yaml")["field"], "spec.containers[0].comand");
    assert_eq!(find("qty.yaml")["field"], "spec.containers[0].resources.limits.memory");
    assert_eq!(find("dup.yaml")["field"], "spec.containers[1].name");
    assert_eq!(find("name.yaml")["field"], "metadata.name");
    assert_eq!(node.pods().len(), 2, "only good and noimage are pods");
    assert!(node.agent_log().contains("rejected static pod manifest"));
}

/// Issue 16, item 5: the agent's sweep of unclaimed pod netns must never take the netns of a
/// sandbox a worker is creating. The race seen was an agent restart right after new manifests
/// appeared: the start-up sweep removed a new sandbox's netns just before its CNI ADD ("failed to
/// open netns"), and the pod started 11 s later. Here the agent restarts with eight new manifests
/// waiting and sweeps every second with a one-second grace, so sweeps overlap the sandbox
/// creations; no sandbox may fail and no live netns may be swept. A netns that really is
/// unclaimed (made by hand) must still be removed, which proves the sweep ran meanwhile.
#[test]
fn restart_with_new_manifests_sweeps_only_unclaimed_netns() {
    let sweep = ["--gc-period", "1s", "--orphan-grace", "1s"];
    let mut node = Node::start(&sweep).unwrap();
    node.kill_agent();
    let stray = keelson_agent::netns::create(&node.run_dir(), "0123456789abcdef0123456789abcdef").unwrap();
    for i in 0..8 {
        node.write_manifest(
            &format!("n{i}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: n{i}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers: [{{name: app, image: keelson.local/busybox:latest, command: [sleep, '3600']}}]\n"
            ),
        )
        .unwrap();
    }
    node.start_agent().unwrap();
    for i in 0..8 {
        node.wait_pod(&format!("n{i}"), "ready", T, ready);
    }
    let gone = keelson_tests::wait_for(Duration::from_secs(20), || (!stray.exists()).then_some(()));
    assert!(gone.is_some(), "the unclaimed netns was never swept; agent log:\n{}", node.agent_log());
    // Two more sweep periods with every pod running: nothing live may be taken.
    std::thread::sleep(Duration::from_secs(3));
    let events = node.events();
    assert!(!events.contains("FailedCreatePodSandBox"), "a sandbox failed while sweeps ran: {events}");
    let log = node.agent_log();
    let swept = log.lines().filter(|l| l.contains("removing orphaned pod netns")).count();
    assert_eq!(swept, 1, "only the stray netns is swept:\n{log}");
    assert_eq!(node.netns_files().len(), 8, "one netns per pod: {:?}", node.netns_files());
    for i in 0..8 {
        let p = node.pod(&format!("n{i}")).unwrap();
        assert!(ready(&p), "n{i} still ready");
        assert_eq!(restarts(&p, "app"), 0);
    }
}
