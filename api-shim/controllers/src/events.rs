//! core/v1 Events about the objects the controllers act on.
//!
//! keelson-apiserver serves `v1/events` (what `kubectl describe` shows), not
//! `events.k8s.io/v1`, so this writes the core kind directly instead of using kube-runtime's
//! recorder. Publishing is best effort: an Event that cannot be written is logged and the sync's
//! own error handling (backoff, retry) carries on regardless.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

/// Records a `Warning` Event `reason`/`message` on `obj` from `component`.
pub async fn warn<K>(client: &Client, obj: &K, component: &str, reason: &str, message: &str)
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    publish(client, obj, component, "Warning", reason, message).await;
}

/// Records a `Normal` Event.
pub async fn normal<K>(client: &Client, obj: &K, component: &str, reason: &str, message: &str)
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    publish(client, obj, component, "Normal", reason, message).await;
}

async fn publish<K>(client: &Client, obj: &K, component: &str, type_: &str, reason: &str, message: &str)
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ev = json!({
        "metadata": {"generateName": format!("{}.", obj.name_any()), "namespace": ns},
        "involvedObject": {"apiVersion": K::api_version(&()), "kind": K::kind(&()), "name": obj.name_any(),
                           "namespace": ns, "uid": obj.uid(), "resourceVersion": obj.resource_version()},
        "reason": reason, "message": message, "type": type_, "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": component},
        "reportingComponent": component,
    });
    let r = match serde_json::from_value::<Event>(ev) {
        Ok(ev) => Api::<Event>::namespaced(client.clone(), &ns).create(&PostParams::default(), &ev).await.map(|_| ()),
        Err(e) => {
            tracing::debug!(error = %e, "event body");
            return;
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, reason, "could not record event");
    }
}
