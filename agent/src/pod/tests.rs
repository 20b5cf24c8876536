//! Transition tests for `step` and `status`: every branch of the lifecycle without root.
#![allow(clippy::unwrap_used)]

use super::*;
use chrono::TimeZone;

fn pod(yaml: &str) -> Pod {
    serde_yaml::from_str(yaml).unwrap()
}

const BASIC: &str = r#"
metadata: {name: p, namespace: default, uid: u1}
spec:
  restartPolicy: Always
  initContainers: [{name: init, image: busybox}]
  containers: [{name: a, image: busybox}, {name: b, image: busybox}]
"#;

fn t(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
}

fn sandbox(id: &str, attempt: u32, running: bool) -> SandboxObs {
    SandboxObs {
        id: id.into(),
        attempt,
        state: if running {
            RunState::Running { started_at: Some(t(0)) }
        } else {
            RunState::Exited { exit_code: 137, reason: None, started_at: Some(t(0)), finished_at: Some(t(1)) }
        },
        ip: Some("10.0.0.2".into()),
        created_at: Some(t(0)),
    }
}

fn cont(p: &Pod, name: &str, kind: Kind, attempt: u32, state: RunState) -> ContainerObs {
    let spec = p.spec.as_ref().unwrap();
    let c = spec.init_containers.iter().flatten().chain(&spec.containers).find(|c| c.name == name).unwrap();
    ContainerObs {
        id: format!("{name}-{attempt}"),
        name: name.into(),
        kind,
        attempt,
        backoff_level: attempt,
        sandbox_id: "sb0".into(),
        spec_hash: spec_hash(c),
        image: "busybox".into(),
        image_id: "sha256:x".into(),
        state,
    }
}

fn running() -> RunState {
    RunState::Running { started_at: Some(t(1)) }
}

fn exited(code: i32, at: i64) -> RunState {
    RunState::Exited { exit_code: code, reason: None, started_at: Some(t(at - 1)), finished_at: Some(t(at)) }
}

fn cfg() -> Config {
    Config {
        backoff_base: Duration::from_secs(10),
        backoff_max: Duration::from_secs(300),
        backoff_reset: Duration::from_secs(600),
    }
}

fn ready_probes(names: &[&str]) -> BTreeMap<String, ProbeView> {
    names.iter().map(|n| (n.to_string(), ProbeView { started: true, ready: true, ..Default::default() })).collect()
}

/// The backoff table, pinned to kubelet (`kuberuntime` `doBackOff` over `flowcontrol.Backoff`,
/// initial 10 s, max 300 s): start failures wait from the first failure on; crash restarts are
/// immediate after the first exit, then 10 s, 20 s, … 300 s.
#[test]
fn backoff_table_matches_kubelet() {
    let c = cfg();
    let s = Duration::from_secs;
    // (consecutive failures or backoff level, start-failure delay, crash-restart delay)
    let table = [
        (0, s(0), s(0)),
        (1, s(10), s(0)),
        (2, s(20), s(10)),
        (3, s(40), s(20)),
        (4, s(80), s(40)),
        (5, s(160), s(80)),
        (6, s(300), s(160)),
        (7, s(300), s(300)),
        (60, s(300), s(300)),
    ];
    for (level, fail, crash) in table {
        assert_eq!((c.delay(level), c.restart_delay(level)), (fail, crash), "level {level}");
    }
}

#[test]
fn new_pod_creates_a_sandbox_first() {
    let p = pod(BASIC);
    let d = step(&p, false, &Observed::default(), t(0), &cfg());
    assert_eq!(d.actions, vec![Action::CreateSandbox { attempt: 0 }]);
    let st = status(&p, &Observed::default(), &d, "192.168.0.1", t(0));
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    let w = st.container_statuses.unwrap()[0].state.clone().unwrap().waiting.unwrap();
    assert_eq!(w.reason.as_deref(), Some("ContainerCreating"));
}

#[test]
fn init_containers_run_before_apps() {
    let p = pod(BASIC);
    let mut o = Observed { sandboxes: vec![sandbox("sb0", 0, true)], ..Default::default() };
    let d = step(&p, false, &o, t(1), &cfg());
    assert_eq!(
        d.actions,
        vec![Action::StartContainer { name: "init".into(), kind: Kind::Init, attempt: 0, backoff_level: 0 }]
    );
    assert_eq!(d.waiting["a"].0, "PodInitializing");

    o.containers.push(cont(&p, "init", Kind::Init, 0, running()));
    let d = step(&p, false, &o, t(2), &cfg());
    assert!(d.actions.is_empty(), "waits for the init container: {:?}", d.actions);
    let st = status(&p, &o, &d, "h", t(0));
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    assert_eq!(cond(&st, "Initialized"), "False");

    o.containers[0].state = exited(0, 3);
    let d = step(&p, false, &o, t(4), &cfg());
    assert_eq!(
        d.actions,
        vec![
            Action::StartContainer { name: "a".into(), kind: Kind::App, attempt: 0, backoff_level: 0 },
            Action::StartContainer { name: "b".into(), kind: Kind::App, attempt: 0, backoff_level: 0 },
        ]
    );
}

fn cond(st: &k8s_openapi::api::core::v1::PodStatus, t: &str) -> String {
    st.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).unwrap().status.clone()
}

fn running_pod() -> (Pod, Observed) {
    let p = pod(BASIC);
    let o = Observed {
        sandboxes: vec![sandbox("sb0", 0, true)],
        containers: vec![
            cont(&p, "init", Kind::Init, 0, exited(0, 1)),
            cont(&p, "a", Kind::App, 0, running()),
            cont(&p, "b", Kind::App, 0, running()),
        ],
        probes: ready_probes(&["a", "b"]),
        ..Default::default()
    };
    (p, o)
}

#[test]
fn steady_state_does_nothing_and_is_ready() {
    let (p, o) = running_pod();
    let d = step(&p, false, &o, t(10), &cfg());
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    let st = status(&p, &o, &d, "h", t(0));
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert_eq!(cond(&st, "Ready"), "True");
    assert_eq!(cond(&st, "Initialized"), "True");
    assert_eq!(st.pod_ip.as_deref(), Some("10.0.0.2"));
    assert_eq!(st.qos_class.as_deref(), Some("BestEffort"));
}

#[test]
fn readiness_failure_flips_ready_without_restart() {
    let (p, mut o) = running_pod();
    o.probes.insert("b".into(), ProbeView { started: true, ready: false, ..Default::default() });
    let d = step(&p, false, &o, t(10), &cfg());
    assert!(d.actions.is_empty());
    let st = status(&p, &o, &d, "h", t(0));
    assert_eq!(cond(&st, "Ready"), "False");
    assert_eq!(cond(&st, "ContainersReady"), "False");
    assert!(!st.container_statuses.unwrap()[1].ready);
}

#[test]
fn liveness_and_startup_failures_kill_the_container() {
    let (p, mut o) = running_pod();
    o.probes.insert("a".into(), ProbeView { started: true, ready: true, liveness_failed: true, startup_failed: false });
    let d = step(&p, false, &o, t(10), &cfg());
    assert_eq!(
        d.actions,
        vec![Action::KillContainer { id: "a-0".into(), name: "a".into(), reason: KillReason::LivenessFailed }]
    );
    o.probes
        .insert("a".into(), ProbeView { started: false, ready: false, liveness_failed: false, startup_failed: true });
    let d = step(&p, false, &o, t(10), &cfg());
    assert_eq!(
        d.actions,
        vec![Action::KillContainer { id: "a-0".into(), name: "a".into(), reason: KillReason::StartupFailed }]
    );
}

/// A container that exits quickly again and again: the waits between its exits and restarts,
/// driven through `step` as the worker would (each restart is a new instance with the level
/// `step` chose), are kubelet's 0, 10, 20, 40 s.
#[test]
fn crash_loop_backoff_gaps() {
    let (p, mut o) = running_pod();
    o.containers[1].backoff_level = 0;
    let mut exit_at = 100;
    let mut gaps = Vec::new();
    let mut last = 1; // the latest instance of "a"
    for attempt in 0..4u32 {
        let level = o.containers[last].backoff_level;
        o.containers[last].state = exited(1, exit_at);
        // Find the first second at which step restarts the container.
        let mut now = exit_at;
        let (next_level, d) = loop {
            let d = step(&p, false, &o, t(now), &cfg());
            if let Some(Action::StartContainer { attempt: a, backoff_level, .. }) =
                d.actions.iter().find(|a| matches!(a, Action::StartContainer { name, .. } if name == "a"))
            {
                assert_eq!(*a, attempt + 1);
                break (*backoff_level, d);
            }
            assert_eq!(d.waiting["a"].0, "CrashLoopBackOff");
            assert!(d.wake_at.is_some_and(|w| w > t(now)), "a backoff must say when it ends");
            now += 1;
            assert!(now < exit_at + 1000, "never restarted");
        };
        assert_eq!(next_level, level + 1);
        assert_eq!(d.waiting["a"].0, "ContainerCreating");
        gaps.push(now - exit_at);
        let mut next = cont(&p, "a", Kind::App, attempt + 1, running());
        next.backoff_level = next_level;
        o.containers.push(next);
        last = o.containers.len() - 1;
        exit_at = now + 1;
    }
    assert_eq!(gaps, vec![0, 10, 20, 40]);
    // While backing off, status says CrashLoopBackOff and keeps the last termination.
    o.containers[last].state = exited(1, exit_at);
    let d = step(&p, false, &o, t(exit_at + 1), &cfg());
    let st = status(&p, &o, &d, "h", t(0));
    let cs = &st.container_statuses.unwrap()[0];
    assert_eq!(cs.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("CrashLoopBackOff"));
    assert_eq!(cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 1);
    assert_eq!(cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap().reason.as_deref(), Some("Error"));
}

#[test]
fn backoff_resets_after_a_long_run() {
    let (p, mut o) = running_pod();
    o.containers[1].backoff_level = 5;
    // Exactly 2 × max after the start: still backing off (kubelet's expiry is strictly later).
    o.containers[1].state =
        RunState::Exited { exit_code: 1, reason: None, started_at: Some(t(0)), finished_at: Some(t(600)) };
    let d = step(&p, false, &o, t(600), &cfg());
    assert_eq!(d.wake_at, Some(t(760)), "level 6 waits 160 s");
    // Longer: the entry expired, the restart is immediate and the level starts again.
    o.containers[1].state =
        RunState::Exited { exit_code: 1, reason: None, started_at: Some(t(0)), finished_at: Some(t(700)) };
    let d = step(&p, false, &o, t(700), &cfg());
    assert_eq!(
        d.actions,
        vec![Action::StartContainer { name: "a".into(), kind: Kind::App, attempt: 1, backoff_level: 1 }]
    );
}

#[test]
fn restart_policies() {
    for (policy, code, restarts) in
        [("Always", 0, true), ("Always", 1, true), ("OnFailure", 0, false), ("OnFailure", 2, true), ("Never", 1, false)]
    {
        let p = pod(&BASIC.replace("restartPolicy: Always", &format!("restartPolicy: {policy}")));
        let mut o = Observed {
            sandboxes: vec![sandbox("sb0", 0, true)],
            containers: vec![
                cont(&p, "init", Kind::Init, 0, exited(0, 1)),
                cont(&p, "a", Kind::App, 0, exited(code, 5)),
                cont(&p, "b", Kind::App, 0, running()),
            ],
            ..Default::default()
        };
        o.containers[1].backoff_level = 0;
        let d = step(&p, false, &o, t(100), &cfg());
        let started = d.actions.iter().any(|a| matches!(a, Action::StartContainer { name, .. } if name == "a"));
        assert_eq!(started, restarts, "{policy} exit {code}");
    }
}

#[test]
fn terminal_phases() {
    let p = pod(&BASIC.replace("restartPolicy: Always", "restartPolicy: OnFailure"));
    let o = Observed {
        sandboxes: vec![sandbox("sb0", 0, true)],
        containers: vec![
            cont(&p, "init", Kind::Init, 0, exited(0, 1)),
            cont(&p, "a", Kind::App, 0, exited(0, 5)),
            cont(&p, "b", Kind::App, 0, exited(0, 6)),
        ],
        ..Default::default()
    };
    let d = step(&p, false, &o, t(100), &cfg());
    assert_eq!(d.terminal, Some(Phase::Succeeded));
    assert_eq!(d.actions, vec![Action::StopPod], "the sandbox of a finished pod is stopped");
    let st = status(&p, &o, &d, "h", t(0));
    assert_eq!(st.phase.as_deref(), Some("Succeeded"));
    let term = st.container_statuses.unwrap()[0].state.clone().unwrap().terminated.unwrap();
    assert_eq!(term.reason.as_deref(), Some("Completed"));

    let p = pod(&BASIC.replace("restartPolicy: Always", "restartPolicy: Never"));
    let mut o2 = o.clone();
    o2.containers[2].state = exited(3, 6);
    let d = step(&p, false, &o2, t(100), &cfg());
    assert_eq!(d.terminal, Some(Phase::Failed));
}

#[test]
fn failed_init_container_under_never_fails_the_pod() {
    let p = pod(&BASIC.replace("restartPolicy: Always", "restartPolicy: Never"));
    let o = Observed {
        sandboxes: vec![sandbox("sb0", 0, true)],
        containers: vec![cont(&p, "init", Kind::Init, 0, exited(1, 1))],
        ..Default::default()
    };
    let d = step(&p, false, &o, t(10), &cfg());
    assert_eq!(d.terminal, Some(Phase::Failed));
    assert!(!d.actions.iter().any(|a| matches!(a, Action::StartContainer { .. })));
    assert_eq!(status(&p, &o, &d, "h", t(0)).phase.as_deref(), Some("Failed"));
}

#[test]
fn failed_init_container_is_retried_under_always() {
    let p = pod(BASIC);
    let o = Observed {
        sandboxes: vec![sandbox("sb0", 0, true)],
        containers: vec![cont(&p, "init", Kind::Init, 0, exited(1, 1))],
        ..Default::default()
    };
    let d = step(&p, false, &o, t(100), &cfg());
    assert_eq!(
        d.actions,
        vec![Action::StartContainer { name: "init".into(), kind: Kind::Init, attempt: 1, backoff_level: 1 }]
    );
    assert_eq!(status(&p, &o, &d, "h", t(0)).phase.as_deref(), Some("Pending"));
}

#[test]
fn oom_killed_reason_is_reported() {
    let (p, mut o) = running_pod();
    o.containers[1].state = RunState::Exited {
        exit_code: 137,
        reason: Some("OOMKilled".into()),
        started_at: Some(t(1)),
        finished_at: Some(t(2)),
    };
    let d = step(&p, false, &o, t(3), &cfg());
    let st = status(&p, &o, &d, "h", t(0));
    let last = st.container_statuses.unwrap()[0].last_state.clone().unwrap().terminated.unwrap();
    assert_eq!(last.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(last.exit_code, 137);
}

#[test]
fn dead_sandbox_stops_containers_then_recreates() {
    let (p, mut o) = running_pod();
    o.sandboxes[0] = sandbox("sb0", 0, false);
    let d = step(&p, false, &o, t(10), &cfg());
    assert_eq!(d.actions, vec![Action::StopPod]);
    for c in &mut o.containers {
        if c.state.is_running() {
            c.state = exited(137, 11);
        }
    }
    let d = step(&p, false, &o, t(12), &cfg());
    assert_eq!(d.actions, vec![Action::CreateSandbox { attempt: 1 }]);
    // In the new sandbox the init container runs again and the restart count continues.
    o.sandboxes.push(sandbox("sb1", 1, true));
    let d = step(&p, false, &o, t(13), &cfg());
    assert!(d.actions.contains(&Action::RemoveSandbox { id: "sb0".into() }));
    assert!(d.actions.contains(&Action::StartContainer {
        name: "init".into(),
        kind: Kind::Init,
        attempt: 1,
        backoff_level: 0
    }));
}

#[test]
fn never_pod_with_dead_sandbox_is_not_recreated() {
    let p = pod(&BASIC.replace("restartPolicy: Always", "restartPolicy: Never"));
    let o = Observed {
        sandboxes: vec![sandbox("sb0", 0, false)],
        containers: vec![cont(&p, "init", Kind::Init, 0, exited(0, 1))],
        ..Default::default()
    };
    let d = step(&p, false, &o, t(10), &cfg());
    assert!(d.actions.is_empty());
    assert_eq!(d.terminal, Some(Phase::Failed));
}

#[test]
fn termination_stops_then_tears_down() {
    let (p, mut o) = running_pod();
    let d = step(&p, true, &o, t(10), &cfg());
    assert_eq!(d.actions, vec![Action::StopPod]);
    for c in &mut o.containers {
        c.state = exited(0, 11);
    }
    o.sandboxes[0] = sandbox("sb0", 0, false);
    let d = step(&p, true, &o, t(12), &cfg());
    assert_eq!(d.actions, vec![Action::Teardown]);
}

#[test]
fn created_but_not_started_containers_are_started_with_the_same_attempt() {
    let (p, mut o) = running_pod();
    o.containers[2].state = RunState::Created;
    o.containers[2].attempt = 3;
    let d = step(&p, false, &o, t(10), &cfg());
    assert_eq!(
        d.actions,
        vec![Action::StartContainer { name: "b".into(), kind: Kind::App, attempt: 3, backoff_level: 0 }]
    );
}

#[test]
fn old_instances_are_garbage_collected_keeping_the_previous_one() {
    let (p, mut o) = running_pod();
    o.containers.push(cont(&p, "a", Kind::App, 1, exited(1, 3)));
    o.containers.push(cont(&p, "a", Kind::App, 2, running()));
    o.containers[1].state = exited(1, 2); // a-0
    let d = step(&p, false, &o, t(10), &cfg());
    assert_eq!(d.actions, vec![Action::RemoveContainer { id: "a-0".into() }]);
    let st = status(&p, &o, &d, "h", t(0));
    assert_eq!(st.container_statuses.unwrap()[0].restart_count, 2);
}

#[test]
fn image_pull_failures_back_off() {
    let (p, mut o) = running_pod();
    o.containers.retain(|c| c.name != "b");
    o.start_failures.insert(
        "b".into(),
        StartFailure { reason: "ErrImagePull".into(), message: "not present".into(), count: 1, at: t(10) },
    );
    let d = step(&p, false, &o, t(12), &cfg());
    assert!(d.actions.is_empty());
    assert_eq!(d.waiting["b"].0, "ImagePullBackOff");
    let st = status(&p, &o, &d, "h", t(0));
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    let d = step(&p, false, &o, t(20), &cfg());
    assert_eq!(
        d.actions,
        vec![Action::StartContainer { name: "b".into(), kind: Kind::App, attempt: 0, backoff_level: 0 }]
    );
}

#[test]
fn spec_change_restarts_the_container() {
    let (p, mut o) = running_pod();
    o.containers[1].spec_hash = "old".into();
    let d = step(&p, false, &o, t(10), &cfg());
    assert_eq!(
        d.actions,
        vec![Action::KillContainer { id: "a-0".into(), name: "a".into(), reason: KillReason::SpecChanged }]
    );
}
