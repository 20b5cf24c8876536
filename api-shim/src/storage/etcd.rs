//! etcd v3 backend, spoken through etcd's gRPC gateway (JSON over HTTP, `/v3/...`).
//!
//! The gateway carries the same KV/Txn/Watch/Compaction RPCs as gRPC, so this keeps
//! kube-apiserver's semantics (mod_revision = resourceVersion, compare-and-swap transactions,
//! prefix watches with prev_kv) without a protobuf toolchain at build time. Keys use
//! kube-apiserver's layout (`/registry/<resource>/<namespace>/<name>`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Event, EventKind, KeyValue, ListResult, Store, StoreError, prefix_end};

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str().and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok()).unwrap_or_default()
}

/// proto3 JSON: int64 are strings and zero values are omitted.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv_of(v: &Value) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(&unb64(&v["key"])).into_owned(),
        value: unb64(&v["value"]),
        mod_revision: int(&v["mod_revision"]),
        create_revision: int(&v["create_revision"]),
    }
}

/// etcd v3 [`Store`].
#[derive(Clone)]
pub struct EtcdStore {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoint: String,
    compacted: Arc<AtomicI64>,
}

impl EtcdStore {
    /// `endpoint` like `http://127.0.0.1:2379`. Checks connectivity.
    pub async fn connect(endpoint: &str) -> Result<Self, StoreError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(http);
        let s = EtcdStore {
            client,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            compacted: Arc::new(AtomicI64::new(0)),
        };
        s.current_revision().await?;
        Ok(s)
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, StoreError> {
        let req = http::Request::post(format!("{}{path}", self.endpoint))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let resp = self.client.request(req).await.map_err(|e| StoreError::Backend(format!("etcd {path}: {e}")))?;
        let status = resp.status();
        let bytes =
            resp.into_body().collect().await.map_err(|e| StoreError::Backend(format!("etcd {path}: {e}")))?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| StoreError::Backend(format!("etcd {path}: {e}")))?;
        if !status.is_success() {
            let msg =
                v.get("error").or_else(|| v.get("message")).and_then(Value::as_str).unwrap_or_default().to_string();
            if msg.contains("compacted") {
                return Err(StoreError::Compacted { requested: 0, compacted: self.compacted.load(Ordering::Relaxed) });
            }
            return Err(StoreError::Backend(format!("etcd {path}: {status}: {msg}")));
        }
        Ok(v)
    }

    async fn txn(&self, key: &str, compare: Value, success: Value) -> Result<(bool, Value), StoreError> {
        let body = json!({
            "compare": [compare],
            "success": [success],
            "failure": [{"request_range": {"key": b64(key.as_bytes())}}],
        });
        let v = self.post("/v3/kv/txn", body).await?;
        Ok((v.get("succeeded").and_then(Value::as_bool).unwrap_or(false), v))
    }

    fn found_rev(v: &Value) -> Option<i64> {
        v.pointer("/responses/0/response_range/kvs/0").map(|kv| int(&kv["mod_revision"]))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let v = self.post("/v3/kv/range", json!({"key": b64(key.as_bytes())})).await?;
        Ok(v.pointer("/kvs/0").map(kv_of))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<i64>,
    ) -> Result<ListResult, StoreError> {
        let start = super::range_start(prefix, start_after);
        let mut body = json!({"key": b64(start.as_bytes()), "range_end": b64(prefix_end(prefix).as_bytes())});
        if limit > 0 {
            body["limit"] = json!(limit.to_string());
        }
        if let Some(r) = revision {
            body["revision"] = json!(r.to_string());
        }
        let v = self.post("/v3/kv/range", body).await.map_err(|e| match e {
            StoreError::Compacted { compacted, .. } => {
                StoreError::Compacted { requested: revision.unwrap_or(0), compacted }
            }
            other => other,
        })?;
        let items: Vec<KeyValue> = v.get("kvs").and_then(Value::as_array).into_iter().flatten().map(kv_of).collect();
        let rev = revision.unwrap_or_else(|| int(&v["header"]["revision"]));
        Ok(ListResult { items, revision: rev, more: v.get("more").and_then(Value::as_bool).unwrap_or(false) })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        let k = b64(key.as_bytes());
        let (ok, v) = self
            .txn(
                key,
                json!({"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}),
                json!({"request_put": {"key": k, "value": b64(&value)}}),
            )
            .await?;
        if !ok {
            return Err(StoreError::AlreadyExists { key: key.to_string() });
        }
        Ok(int(&v["header"]["revision"]))
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64, StoreError> {
        let k = b64(key.as_bytes());
        let (ok, v) = self
            .txn(
                key,
                json!({"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": expected.to_string()}),
                json!({"request_put": {"key": k, "value": b64(&value)}}),
            )
            .await?;
        if !ok {
            return Err(match Self::found_rev(&v) {
                Some(found) => StoreError::Conflict { key: key.to_string(), expected, found },
                None => StoreError::NotFound { key: key.to_string() },
            });
        }
        Ok(int(&v["header"]["revision"]))
    }

    async fn delete(&self, key: &str, expected: i64) -> Result<i64, StoreError> {
        let k = b64(key.as_bytes());
        let compare = if expected == 0 {
            json!({"key": k, "target": "CREATE", "result": "GREATER", "create_revision": "0"})
        } else {
            json!({"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": expected.to_string()})
        };
        let (ok, v) = self.txn(key, compare, json!({"request_delete_range": {"key": k}})).await?;
        if !ok {
            return Err(match Self::found_rev(&v) {
                Some(found) => StoreError::Conflict { key: key.to_string(), expected, found },
                None => StoreError::NotFound { key: key.to_string() },
            });
        }
        Ok(int(&v["header"]["revision"]))
    }

    async fn current_revision(&self) -> Result<i64, StoreError> {
        let v = self.post("/v3/kv/range", json!({"key": b64(b"/"), "limit": "1", "keys_only": true})).await?;
        Ok(int(&v["header"]["revision"]))
    }

    async fn compacted_revision(&self) -> Result<i64, StoreError> {
        Ok(self.compacted.load(Ordering::Relaxed))
    }

    fn health_name(&self) -> &'static str {
        "etcd"
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<mpsc::Receiver<Arc<Event>>, StoreError> {
        // etcd reports a compacted start revision only after the watch was created; a read at
        // `after` fails fast instead (revision `after` stays readable iff events above it are kept).
        if after > 0 {
            let probe = json!({"key": b64(prefix.as_bytes()), "range_end": b64(prefix_end(prefix).as_bytes()),
                "limit": "1", "keys_only": true, "revision": after.to_string()});
            match self.post("/v3/kv/range", probe).await {
                Err(StoreError::Compacted { compacted, .. }) => {
                    return Err(StoreError::Compacted { requested: after, compacted });
                }
                Err(StoreError::Backend(m)) if m.contains("future revision") => {}
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(prefix_end(prefix).as_bytes()),
            "start_revision": (after + 1).to_string(),
            "prev_kv": true,
            "progress_notify": true,
        }});
        let req = http::Request::post(format!("{}/v3/watch", self.endpoint))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let resp = self.client.request(req).await.map_err(|e| StoreError::Backend(format!("etcd watch: {e}")))?;
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        // Read until the "created" (or canceled/compacted) response so errors surface here.
        let mut pending: Vec<Value> = Vec::new();
        loop {
            let frame = body.frame().await.ok_or_else(|| StoreError::Backend("etcd watch closed".into()))?;
            let frame = frame.map_err(|e| StoreError::Backend(format!("etcd watch: {e}")))?;
            if let Some(d) = frame.data_ref() {
                buf.extend_from_slice(d);
            }
            let msgs = split_messages(&mut buf);
            let mut created = false;
            for m in msgs {
                let r = &m["result"];
                let compact = int(&r["compact_revision"]);
                if compact > 0 || r.get("canceled").and_then(Value::as_bool) == Some(true) {
                    self.compacted.fetch_max(compact, Ordering::Relaxed);
                    return Err(StoreError::Compacted { requested: after, compacted: compact });
                }
                if r.get("created").and_then(Value::as_bool) == Some(true) {
                    created = true;
                }
                pending.push(m);
            }
            if created {
                break;
            }
        }
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut pending = pending;
            loop {
                for m in pending.drain(..) {
                    let r = &m["result"];
                    let header_rev = int(&r["header"]["revision"]);
                    let events = r.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
                    if events.is_empty() && header_rev > 0 && r.get("created").is_none() {
                        let p = Event {
                            kind: EventKind::Progress,
                            key: String::new(),
                            revision: header_rev,
                            value: Vec::new(),
                            prev: None,
                            created: false,
                            cache: Default::default(),
                        };
                        if tx.send(Arc::new(p)).await.is_err() {
                            return;
                        }
                    }
                    for e in events {
                        let kv = kv_of(&e["kv"]);
                        let prev = e.get("prev_kv").map(|p| unb64(&p["value"]));
                        let delete = e.get("type").and_then(Value::as_str) == Some("DELETE");
                        let ev = Event {
                            kind: if delete { EventKind::Delete } else { EventKind::Put },
                            key: kv.key,
                            revision: kv.mod_revision,
                            value: if delete { prev.clone().unwrap_or_default() } else { kv.value },
                            created: !delete && kv.create_revision == kv.mod_revision,
                            prev,
                            cache: Default::default(),
                        };
                        if tx.send(Arc::new(ev)).await.is_err() {
                            return;
                        }
                    }
                }
                let frame = match body.frame().await {
                    Some(Ok(f)) => f,
                    _ => return,
                };
                if let Some(d) = frame.data_ref() {
                    buf.extend_from_slice(d);
                }
                pending = split_messages(&mut buf);
            }
        });
        Ok(rx)
    }

    async fn compact(&self, keep: i64) -> Result<i64, StoreError> {
        let target = self.current_revision().await? - keep;
        let old = self.compacted.load(Ordering::Relaxed);
        if target <= old {
            return Ok(old);
        }
        self.post("/v3/kv/compaction", json!({"revision": target.to_string()})).await?;
        self.compacted.fetch_max(target, Ordering::Relaxed);
        Ok(target)
    }
}

/// Pops complete JSON messages (newline-delimited in the gateway's stream) off `buf`.
fn split_messages(buf: &mut Vec<u8>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    let mut consumed = 0;
    while let Some(Ok(v)) = de.next() {
        consumed = de.byte_offset();
        out.push(v);
    }
    buf.drain(..consumed);
    out
}
