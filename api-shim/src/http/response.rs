//! Responses: content negotiation (JSON or `meta.k8s.io/v1 Table`), JSON bodies with warning
//! headers, Status errors, and the streamed watch body.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::http::table::{self, IncludeObject};
use crate::registry::{WatchEvent, encode};
use crate::resources::ResourceDef;

pub type Body = BoxBody<Bytes, Infallible>;

pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A JSON body as kube-apiserver writes it: upstream's field order, then a newline.
pub(super) fn json_body(v: &Value) -> Vec<u8> {
    let mut body = encode::to_json(v);
    body.push(b'\n');
    body
}

pub(super) fn json_response(code: StatusCode, v: &Value, warnings: &[String]) -> Response<Body> {
    let mut resp = Response::new(full(json_body(v)));
    *resp.status_mut() = code;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "'"));
        if let Ok(h) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, h);
        }
    }
    resp
}

pub(super) fn error_response(e: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.to_status(), &[])
}

/// What the client wants back.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wants {
    pub(super) table: bool,
    pub(super) include: IncludeObject,
}

pub(super) fn wants(headers: &HeaderMap, q: &HashMap<String, String>) -> Result<Wants, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let mut table = false;
    let mut json_ok = false;
    for range in accept.split(',') {
        let params: Vec<String> = range.split(';').map(|p| p.trim().to_ascii_lowercase()).collect();
        let mime = params.first().cloned().unwrap_or_default();
        if mime == "application/json" || mime == "*/*" || mime == "application/*" || mime == "application/yaml" {
            if params.iter().any(|p| p == "as=table") {
                if params.iter().any(|p| p == "g=meta.k8s.io") && !table && !json_ok {
                    table = true;
                }
            } else if params.iter().any(|p| p.starts_with("as=")) {
                // Another conversion (e.g. PartialObjectMetadata): not served, skip.
            } else {
                json_ok = true;
            }
        }
    }
    if !table && !json_ok {
        return Err(ApiError::NotAcceptable {
            accepted: "application/json, application/json;as=Table;v=v1;g=meta.k8s.io".into(),
        });
    }
    let include = match q.get("includeObject").map(String::as_str) {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    };
    Ok(Wants { table, include })
}

pub(super) fn render_one(
    res: &ResourceDef,
    obj: &Value,
    w: Wants,
    code: StatusCode,
    warnings: &[String],
) -> Response<Body> {
    if w.table {
        let meta = json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)});
        json_response(code, &table::table(res.kind, std::slice::from_ref(obj), meta, w.include, true), warnings)
    } else {
        json_response(code, obj, warnings)
    }
}

pub(super) fn watch_line(res: &ResourceDef, ev: WatchEvent, w: Wants, first: &mut bool) -> Bytes {
    if !w.table
        && let Some(enc) = &ev.encoded
    {
        let mut line = Vec::with_capacity(enc.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(ev.kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(enc);
        line.extend_from_slice(b"}\n");
        return Bytes::from(line);
    }
    let object = if w.table && matches!(ev.kind, "ADDED" | "MODIFIED" | "DELETED") {
        let meta =
            json!({"resourceVersion": ev.object.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)});
        let t = table::table(res.kind, std::slice::from_ref(&ev.object), meta, w.include, *first);
        *first = false;
        t
    } else {
        (*ev.object).clone()
    };
    let mut line = encode::watch_event(ev.kind, &encode::to_json(&object));
    line.push(b'\n');
    Bytes::from(line)
}

pub(super) fn watch_response(
    res: &'static ResourceDef,
    mut rx: tokio::sync::mpsc::Receiver<WatchEvent>,
    w: Wants,
) -> Response<Body> {
    let stream = async_stream(move |tx| async move {
        let mut first = true;
        while let Some(ev) = rx.recv().await {
            if tx.send(Ok::<_, Infallible>(Frame::data(watch_line(res, ev, w, &mut first)))).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    resp
}

/// A stream fed by a spawned producer task (ends when the producer returns or the body is dropped).
pub(super) fn async_stream<F, Fut>(producer: F) -> tokio_stream_shim::ReceiverStream<Result<Frame<Bytes>, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(producer(tx));
    tokio_stream_shim::ReceiverStream(rx)
}

mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// `futures::Stream` over an mpsc receiver.
    pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

    impl<T> futures::Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}
