//! The Job controller against a real keelson-apiserver, read back with kube-rs and kubectl
//! 1.33 and 1.27.
//!
//! No kubelet runs the pods: the test plays the node. It finishes each pod the controller
//! creates by writing its status (phase Succeeded or Failed with the container's exit code and
//! finish time) through `pods/status`, exactly what a kubelet reports, and checks what the
//! controller does next.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use keelson_tests::api::ApiServer;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap())
        .await
        .unwrap();
}

async fn create_job(api: &Api<Job>, name: &str, spec: serde_json::Value) -> Job {
    let mut s = json!({"template": {"spec": {"restartPolicy": "Never",
        "containers": [{"name": "work", "image": "busybox", "command": ["true"]}]}}});
    for (k, v) in spec.as_object().unwrap() {
        s[k] = v.clone();
    }
    let job: Job = serde_json::from_value(json!({"metadata": {"name": name}, "spec": s})).unwrap();
    api.create(&PostParams::default(), &job).await.unwrap()
}

fn running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// Writes what a kubelet reports when the pod's only container exits with `code`.
async fn finish(api: &Api<Pod>, name: &str, code: i32) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let phase = if code == 0 { "Succeeded" } else { "Failed" };
    let status = json!({"status": {"phase": phase, "containerStatuses": [{"name": "work", "image": "busybox",
        "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": code, "startedAt": now, "finishedAt": now}}}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
}

fn condition(job: &Job, type_: &str) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.reason.clone().unwrap_or_default())
}

async fn job_pods(api: &Api<Pod>, job: &str) -> Vec<Pod> {
    api.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"))).await.unwrap().items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_five_parallelism_two_and_a_failing_job_hitting_its_backoff_limit() {
    let server = ApiServer::start(&[]).unwrap();
    let client = server.client().await.unwrap();
    let ns = "batch";
    namespace(&client, ns).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);

    // completions=5, parallelism=2: never more than two pods run; five succeed.
    create_job(&jobs, "five", json!({"completions": 5, "parallelism": 2})).await;
    let end = Instant::now() + Duration::from_secs(60);
    let mut max_active = 0;
    loop {
        let job = jobs.get("five").await.unwrap();
        if condition(&job, "Complete").is_some() {
            break;
        }
        assert!(Instant::now() < end, "job did not complete: {:?}", job.status);
        let ps = job_pods(&pods, "five").await;
        let active: Vec<&Pod> = ps.iter().filter(|p| running(p)).collect();
        max_active = max_active.max(active.len());
        assert!(active.len() <= 2, "{} active pods", active.len());
        for p in active {
            assert!(p.finalizers().iter().any(|f| f == "batch.kubernetes.io/job-tracking"));
            finish(&pods, &p.name_any(), 0).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(max_active, 2, "parallelism 2 was used");
    let job = jobs.get("five").await.unwrap();
    let st = job.status.clone().unwrap();
    assert_eq!((st.succeeded, st.failed.unwrap_or(0)), (Some(5), 0));
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    let ps = job_pods(&pods, "five").await;
    assert_eq!(ps.len(), 5, "exactly five pods were created");
    assert!(ps.iter().all(|p| p.finalizers().is_empty()), "tracking finalizers released");
    for v in ["1.33", "1.27"] {
        let out = server.kubectl(v, &["get", "job", "five", "-n", ns]).unwrap();
        assert!(out.contains("5/5"), "kubectl {v}:\n{out}");
        server.kubectl(v, &["wait", "--for=condition=complete", "job/five", "-n", ns, "--timeout=5s"]).unwrap();
    }

    // backoffLimit=1: the first failure waits the 10 s backoff, the second fails the Job.
    create_job(&jobs, "bad", json!({"backoffLimit": 1})).await;
    let first = wait_pod(&pods, "bad", 1).await;
    finish(&pods, &first, 1).await;
    let failed_at = Instant::now();
    let second = wait_pod(&pods, "bad", 2).await;
    let waited = failed_at.elapsed();
    assert!(waited >= Duration::from_secs(9), "replacement after {waited:?}, before the 10 s backoff");
    finish(&pods, &second, 1).await;
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let job = jobs.get("bad").await.unwrap();
        if let Some(reason) = condition(&job, "Failed") {
            assert_eq!(reason, "BackoffLimitExceeded");
            assert_eq!(job.status.unwrap().failed, Some(2));
            break;
        }
        assert!(Instant::now() < end, "job did not fail: {:?}", job.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(job_pods(&pods, "bad").await.len(), 2, "no pod after the Job failed");
}

/// Waits until the Job has `n` pods and returns the newest running one.
async fn wait_pod(api: &Api<Pod>, job: &str, n: usize) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let ps = job_pods(api, job).await;
        if let Some(p) = ps.iter().find(|p| running(p)).filter(|_| ps.len() >= n) {
            assert_eq!(ps.len(), n, "more pods than expected");
            return p.name_any();
        }
        assert!(Instant::now() < end, "no pod {n} of {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_suspend_and_ttl() {
    let server = ApiServer::start(&[]).unwrap();
    let client = server.client().await.unwrap();
    let ns = "batch2";
    namespace(&client, ns).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);

    // Indexed, created suspended: no pods until resumed; then one pod per index, and the Job
    // is deleted 1 s after it completes.
    create_job(
        &jobs,
        "idx",
        json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed", "suspend": true,
               "ttlSecondsAfterFinished": 1}),
    )
    .await;
    let end = Instant::now() + Duration::from_secs(20);
    while condition(&jobs.get("idx").await.unwrap(), "Suspended").is_none() {
        assert!(Instant::now() < end, "never Suspended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(job_pods(&pods, "idx").await.is_empty());
    jobs.patch("idx", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": false}}))).await.unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let ps = loop {
        let ps = job_pods(&pods, "idx").await;
        if ps.len() == 3 {
            break ps;
        }
        assert!(Instant::now() < end, "{} pods", ps.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut idx: Vec<String> = ps
        .iter()
        .map(|p| p.annotations().get("batch.kubernetes.io/job-completion-index").cloned().unwrap_or_default())
        .collect();
    idx.sort();
    assert_eq!(idx, ["0", "1", "2"]);
    for p in &ps {
        let i = &p.annotations()["batch.kubernetes.io/job-completion-index"];
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(format!("idx-{i}").as_str()));
        let env = spec.containers[0].env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX" && e.value.as_deref() == Some(i.as_str())));
        finish(&pods, &p.name_any(), 0).await;
    }
    let end = Instant::now() + Duration::from_secs(30);
    while jobs.get_opt("idx").await.unwrap().is_some() {
        assert!(Instant::now() < end, "the finished Job was not deleted after its TTL");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
