//! `keelson-agent pods` output: a `PodList` as kubectl-like columns. Pure.

use k8s_openapi::api::core::v1::Pod;

/// Renders the `items` of a `PodList` (as served by `/pods`) as a table; `wide` adds NODE.
pub fn render(list: &serde_json::Value, wide: bool) -> Result<String, serde_json::Error> {
    let mut rows = vec![
        ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "IP"].into_iter().map(String::from).collect::<Vec<_>>(),
    ];
    if wide {
        rows[0].push("NODE".into());
    }
    for p in list["items"].as_array().cloned().unwrap_or_default() {
        let pod: Pod = serde_json::from_value(p)?;
        let st = pod.status.clone().unwrap_or_default();
        let cs = st.container_statuses.clone().unwrap_or_default();
        let ready = cs.iter().filter(|c| c.ready).count();
        let restarts: i32 = cs.iter().map(|c| c.restart_count).sum();
        let reason = cs
            .iter()
            .find_map(|c| {
                let s = c.state.as_ref()?;
                s.waiting
                    .as_ref()
                    .and_then(|w| w.reason.clone())
                    .or_else(|| s.terminated.as_ref().and_then(|t| t.reason.clone()))
            })
            .filter(|_| {
                st.phase.as_deref() != Some("Running")
                    || cs.iter().any(|c| c.state.as_ref().is_some_and(|s| s.waiting.is_some()))
            })
            .unwrap_or_else(|| st.phase.clone().unwrap_or_default());
        let mut row = vec![
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
            format!("{ready}/{}", cs.len()),
            reason,
            restarts.to_string(),
            st.pod_ip.clone().unwrap_or_else(|| "<none>".into()),
        ];
        if wide {
            row.push(pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default());
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn waiting_reason_replaces_the_phase() {
        let list = serde_json::json!({"items": [{
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.2", "containerStatuses": [{
                "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}
            }]}
        }]});
        let t = render(&list, true).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>().last(), Some(&"NODE"));
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            vec!["default", "p", "0/1", "CrashLoopBackOff", "3", "10.0.0.2", "n1"]
        );
    }
}
