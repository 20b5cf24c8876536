//! `PodStatus` computed like kubelet's `generateAPIPodStatus` + `getPhase`.

use super::{ContainerObs, Decision, Kind, Observed, Phase, RunState, current_sandbox, latest, restart_policy};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, HostIP,
    Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// k8s-openapi's `Time` wraps a `jiff::Timestamp`; the agent keeps chrono internally.
pub fn to_time(t: DateTime<Utc>) -> Time {
    Time(k8s_openapi::jiff::Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32).unwrap_or_default())
}

fn time(t: Option<DateTime<Utc>>) -> Option<Time> {
    t.map(to_time)
}

fn terminated(c: &ContainerObs) -> Option<ContainerStateTerminated> {
    match &c.state {
        RunState::Exited { exit_code, reason, started_at, finished_at } => Some(ContainerStateTerminated {
            exit_code: *exit_code,
            reason: Some(
                reason.clone().unwrap_or_else(|| if *exit_code == 0 { "Completed".into() } else { "Error".into() }),
            ),
            started_at: time(*started_at),
            finished_at: time(*finished_at),
            container_id: Some(format!("containerd://{}", c.id)),
            ..Default::default()
        }),
        _ => None,
    }
}

fn container_status(
    name: &str,
    image: &str,
    kind: Kind,
    obs: &Observed,
    d: &Decision,
    sandbox_id: Option<&str>,
) -> ContainerStatus {
    let mut instances: Vec<&ContainerObs> = obs.containers.iter().filter(|c| c.name == name).collect();
    instances.sort_by_key(|c| c.attempt);
    let cur = instances.last().copied();
    let prev = instances.iter().rev().nth(1).copied();
    let waiting = d.waiting.get(name);
    let pv = obs.probes.get(name).copied().unwrap_or_default();
    let mut st = ContainerStatus {
        name: name.to_string(),
        image: image.to_string(),
        image_id: cur.map(|c| c.image_id.clone()).unwrap_or_default(),
        container_id: cur.map(|c| format!("containerd://{}", c.id)),
        restart_count: cur.map_or(0, |c| c.attempt as i32),
        ..Default::default()
    };
    let waiting_state = |reason: &str, msg: &str| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: (!msg.is_empty()).then(|| msg.to_string()),
        }),
        ..Default::default()
    };
    match (cur, waiting) {
        (Some(c), _) if c.state.is_running() && sandbox_id == Some(c.sandbox_id.as_str()) => {
            let RunState::Running { started_at } = &c.state else { unreachable!() };
            st.state = Some(ContainerState {
                running: Some(ContainerStateRunning { started_at: time(*started_at) }),
                ..Default::default()
            });
            st.started = Some(pv.started);
            st.ready = kind == Kind::App && pv.started && pv.ready;
            st.last_state =
                prev.and_then(terminated).map(|t| ContainerState { terminated: Some(t), ..Default::default() });
        }
        (Some(c), Some((reason, msg))) if matches!(c.state, RunState::Exited { .. }) => {
            // Exited and waiting to restart (CrashLoopBackOff) or to be created again.
            st.state = Some(waiting_state(reason, msg));
            st.last_state = terminated(c).map(|t| ContainerState { terminated: Some(t), ..Default::default() });
            st.started = Some(false);
        }
        (Some(c), _) if matches!(c.state, RunState::Exited { .. }) => {
            st.state = terminated(c).map(|t| ContainerState { terminated: Some(t), ..Default::default() });
            st.last_state =
                prev.and_then(terminated).map(|t| ContainerState { terminated: Some(t), ..Default::default() });
            st.started = Some(false);
        }
        (_, Some((reason, msg))) => {
            st.state = Some(waiting_state(reason, msg));
            st.last_state =
                cur.and_then(terminated).map(|t| ContainerState { terminated: Some(t), ..Default::default() });
            st.started = Some(false);
        }
        _ => {
            st.state = Some(waiting_state("ContainerCreating", ""));
            st.started = Some(false);
        }
    }
    st
}

fn condition(type_: &str, ok: bool, reason: Option<&str>, at: DateTime<Utc>) -> PodCondition {
    PodCondition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: if ok { None } else { reason.map(String::from) },
        last_transition_time: Some(to_time(at)),
        ..Default::default()
    }
}

/// Pod status from the same inputs `step` used and its decision. `start_time`: when the agent first
/// worked on the pod (rebuilt from the oldest sandbox after a restart).
pub fn status(pod: &Pod, obs: &Observed, d: &Decision, host_ip: &str, start_time: DateTime<Utc>) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let sandbox = current_sandbox(obs);
    let sandbox_id = sandbox.map(|s| s.id.as_str());
    let init: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(&c.name, c.image.as_deref().unwrap_or(""), Kind::Init, obs, d, sandbox_id))
        .collect();
    let apps: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(&c.name, c.image.as_deref().unwrap_or(""), Kind::App, obs, d, sandbox_id))
        .collect();

    let latest = latest(obs);
    let init_done = spec.init_containers.iter().flatten().all(|ic| {
        latest.get(ic.name.as_str()).is_some_and(|c| {
            matches!(c.state, RunState::Exited { exit_code: 0, .. }) && Some(c.sandbox_id.as_str()) == sandbox_id
        })
    }) || (sandbox.is_none() && d.terminal.is_some());
    let init_failed = init.iter().any(|s| {
        s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code != 0)
            || s.last_state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code != 0)
                && s.state.as_ref().and_then(|st| st.waiting.as_ref()).is_some()
    });

    let phase = d.terminal.unwrap_or_else(|| {
        if !init_done {
            return if init_failed && restart_policy(pod) == "Never" { Phase::Failed } else { Phase::Pending };
        }
        let (mut running, mut waiting, mut stopped) = (0, 0, 0);
        for s in &apps {
            let st = s.state.clone().unwrap_or_default();
            if st.running.is_some() {
                running += 1;
            } else if st.terminated.is_some() || s.last_state.as_ref().and_then(|l| l.terminated.as_ref()).is_some() {
                stopped += 1;
            } else {
                waiting += 1;
            }
        }
        if waiting > 0 {
            Phase::Pending
        } else if running > 0 || stopped > 0 {
            // Stopped-but-restarting counts as Running; terminal cases come from `d.terminal`.
            Phase::Running
        } else {
            Phase::Pending
        }
    });

    let now = Utc::now();
    let containers_ready = !apps.is_empty() && apps.iter().all(|s| s.ready) && sandbox.is_some();
    let not_ready_reason = if phase == Phase::Succeeded { "PodCompleted" } else { "ContainersNotReady" };
    let conditions = vec![
        condition("PodReadyToStartContainers", sandbox.is_some(), None, now),
        condition("Initialized", init_done, Some("ContainersNotInitialized"), now),
        condition("Ready", containers_ready, Some(not_ready_reason), now),
        condition("ContainersReady", containers_ready, Some(not_ready_reason), now),
        condition("PodScheduled", true, None, now),
    ];
    let ip = sandbox.and_then(|s| s.ip.clone());
    PodStatus {
        phase: Some(phase.as_str().to_string()),
        conditions: Some(conditions),
        container_statuses: Some(apps),
        init_container_statuses: (!init.is_empty()).then_some(init),
        pod_ip: ip.clone(),
        pod_ips: ip.map(|ip| vec![PodIP { ip }]),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP { ip: host_ip.to_string() }]),
        start_time: Some(to_time(start_time)),
        qos_class: crate::cgroups::qos_class(&spec).ok().map(|q| q.as_str().to_string()),
        ..Default::default()
    }
}
