//! From a runtime listing to [`Observed`]: pure, so what a restarted agent rebuilds from container
//! labels is unit-tested here.
//!
//! Effects that feed the observation (OOM detection from cgroup files, image ids from the image
//! store, probe results) are gathered by the worker and passed in.

use crate::pod::{ContainerObs, Kind, Observed, RunState, SandboxObs};
use crate::runtime::{ContainerInfo, TaskState, labels};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

/// The instances of pod `uid` in `all`, with image ids from `image_ids` (image name → id; unknown
/// images get an empty id). Also returns the creation time of the pod's oldest sandbox (the pod's
/// start time after an agent restart). Probes and start failures are left empty for the caller.
pub fn observe(
    uid: &str,
    all: &[ContainerInfo],
    image_ids: &BTreeMap<String, String>,
) -> (Observed, Option<DateTime<Utc>>) {
    let mut obs = Observed::default();
    let mut earliest: Option<DateTime<Utc>> = None;
    for c in all.iter().filter(|c| c.label(labels::POD_UID) == Some(uid)) {
        let attempt = c.label(labels::ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(0);
        let started_at = parse_time(c.label(labels::STARTED_AT));
        let state = match &c.task {
            TaskState::Running { .. } | TaskState::Paused | TaskState::Unknown => RunState::Running { started_at },
            TaskState::Stopped { exit_code, exited_at } => RunState::Exited {
                exit_code: *exit_code,
                reason: c.label(labels::EXIT_REASON).map(String::from),
                started_at,
                finished_at: *exited_at,
            },
            TaskState::None | TaskState::Created => RunState::Created,
        };
        if c.label(labels::KIND) == Some("sandbox") {
            earliest = match (earliest, c.created_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            obs.sandboxes.push(SandboxObs {
                id: c.id.clone(),
                attempt,
                state,
                ip: c.label(labels::POD_IP).filter(|s| !s.is_empty()).map(String::from),
                created_at: c.created_at,
            });
            continue;
        }
        obs.containers.push(ContainerObs {
            id: c.id.clone(),
            name: c.label(labels::CONTAINER_NAME).unwrap_or_default().to_string(),
            kind: if c.label(labels::KIND) == Some("init") { Kind::Init } else { Kind::App },
            attempt,
            backoff_level: c.label(labels::BACKOFF_LEVEL).and_then(|a| a.parse().ok()).unwrap_or(0),
            sandbox_id: c.label(labels::SANDBOX_ID).unwrap_or_default().to_string(),
            spec_hash: c.label(labels::SPEC_HASH).unwrap_or_default().to_string(),
            image: c.image.clone(),
            image_id: image_ids.get(&c.image).cloned().unwrap_or_default(),
            state,
        });
    }
    (obs, earliest)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn info(id: &str, uid: &str, kind: &str, task: TaskState, extra: &[(&str, &str)]) -> ContainerInfo {
        let mut l: BTreeMap<String, String> = [(labels::POD_UID, uid), (labels::KIND, kind)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        ContainerInfo { id: id.into(), image: "img".into(), labels: l, created_at: None, task }
    }

    #[test]
    fn labels_rebuild_the_pod_view() {
        let all = vec![
            info("sb", "u1", "sandbox", TaskState::Running { pid: 1 }, &[(labels::POD_IP, "10.0.0.2")]),
            info(
                "c1",
                "u1",
                "app",
                TaskState::Stopped { exit_code: 137, exited_at: None },
                &[
                    (labels::CONTAINER_NAME, "a"),
                    (labels::ATTEMPT, "3"),
                    (labels::BACKOFF_LEVEL, "2"),
                    (labels::EXIT_REASON, "OOMKilled"),
                ],
            ),
            info("c2", "u1", "init", TaskState::Created, &[(labels::CONTAINER_NAME, "i")]),
            info("other", "u2", "app", TaskState::Running { pid: 2 }, &[]),
        ];
        let ids = BTreeMap::from([("img".to_string(), "sha256:1".to_string())]);
        let (o, _) = observe("u1", &all, &ids);
        assert_eq!(o.sandboxes.len(), 1);
        assert_eq!(o.sandboxes[0].ip.as_deref(), Some("10.0.0.2"));
        assert_eq!(o.containers.len(), 2);
        let a = &o.containers[0];
        assert_eq!((a.name.as_str(), a.kind, a.attempt, a.backoff_level), ("a", Kind::App, 3, 2));
        assert_eq!(a.image_id, "sha256:1");
        assert!(matches!(&a.state, RunState::Exited { exit_code: 137, reason: Some(r), .. } if r == "OOMKilled"));
        assert_eq!((o.containers[1].kind, &o.containers[1].state), (Kind::Init, &RunState::Created));
    }
}
