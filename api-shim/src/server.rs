//! HTTPS transport, authentication and request routing.
//!
//! One rustls listener (h2 and http/1.1). A request is authenticated by bearer token (static
//! token file) or by a client certificate issued by our CA; anything else gets 401, except the
//! health and version endpoints. Paths are parsed by hand into (group, version, namespace,
//! resource, name, subresource) and dispatched to [`Api`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api::{Api, DeleteOpts, ListOpts, WatchEvent, WatchOpts, WriteOpts};
use crate::discovery::{self, Aggregated};
use crate::error::ApiError;
use crate::objects::{self, FieldValidation, MAX_BODY};
use crate::patch;
use crate::resources::{self, ResourceDef};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::table::{self, IncludeObject};
use crate::tls::UserInfo;

pub type Body = BoxBody<Bytes, Infallible>;

/// Everything a request handler needs.
pub struct Server {
    pub api: Arc<Api>,
    pub tokens: HashMap<String, UserInfo>,
    pub server_address: String,
    /// RBAC decisions (see [`crate::rbac`]).
    pub authz: Arc<crate::rbac::Authorizer>,
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: StatusCode, v: &Value, warnings: &[String]) -> Response<Body> {
    let mut resp = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
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

fn error_response(e: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.to_status(), &[])
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
        out.insert(dec(k), dec(v));
    }
    out
}

/// What the client wants back.
#[derive(Debug, Clone, Copy)]
struct Wants {
    table: bool,
    include: IncludeObject,
}

fn wants(headers: &HeaderMap, q: &HashMap<String, String>) -> Result<Wants, ApiError> {
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

/// A parsed resource path.
#[derive(Debug)]
struct Target {
    res: &'static ResourceDef,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_resource_path(segs: &[&str]) -> Result<Option<(Target, bool)>, ApiError> {
    // segs after /api or /apis: [group,] version, ...
    let (group, rest) = match segs.first() {
        Some(&"api") => ("", &segs[1..]),
        Some(&"apis") if segs.len() >= 2 => (segs[1], &segs[2..]),
        _ => return Ok(None),
    };
    let Some((&version, mut rest)) = rest.split_first() else { return Ok(None) };
    let mut legacy_watch = false;
    if rest.first() == Some(&"watch") {
        legacy_watch = true;
        rest = &rest[1..];
    }
    if rest.is_empty() {
        return Ok(None);
    }
    let lookup = |plural: &str| resources::find(group, version, plural).ok_or(ApiError::NoRoute);
    let target = match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            let res = lookup(plural)?;
            if !res.namespaced {
                return Err(ApiError::NoRoute);
            }
            match tail {
                [] => Target { res, ns: Some((*ns).into()), name: None, sub: None },
                [name] => Target { res, ns: Some((*ns).into()), name: Some((*name).into()), sub: None },
                [name, sub] => {
                    Target { res, ns: Some((*ns).into()), name: Some((*name).into()), sub: Some((*sub).into()) }
                }
                _ => return Err(ApiError::NoRoute),
            }
        }
        [plural] => Target { res: lookup(plural)?, ns: None, name: None, sub: None },
        [plural, name] => {
            let res = lookup(plural)?;
            if res.namespaced {
                return Err(ApiError::NoRoute);
            }
            Target { res, ns: None, name: Some((*name).into()), sub: None }
        }
        [plural, name, sub] => {
            let res = lookup(plural)?;
            if res.namespaced {
                return Err(ApiError::NoRoute);
            }
            Target { res, ns: None, name: Some((*name).into()), sub: Some((*sub).into()) }
        }
        _ => return Err(ApiError::NoRoute),
    };
    if let Some(sub) = &target.sub
        && !target.res.has_sub(sub)
    {
        return Err(ApiError::NoRoute);
    }
    Ok(Some((target, legacy_watch)))
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Err(ApiError::TooLarge { limit: MAX_BODY })
            } else {
                Err(ApiError::bad_request(format!("reading request body: {e}")))
            }
        }
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_string()
}

fn write_opts(q: &HashMap<String, String>, headers: &HeaderMap) -> Result<WriteOpts, ApiError> {
    let fv = FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => return Err(ApiError::bad_request(format!("unsupported dryRun value {other:?}"))),
    };
    let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
    let manager =
        q.get("fieldManager").cloned().unwrap_or_else(|| ua.split('/').next().unwrap_or("unknown").to_string());
    if manager.len() > 128 {
        return Err(ApiError::bad_request("fieldManager must not be longer than 128 characters"));
    }
    Ok(WriteOpts { field_validation: fv, dry_run, field_manager: manager, apply: false, admit: None })
}

fn list_opts(res: &ResourceDef, q: &HashMap<String, String>) -> Result<ListOpts, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or_default(), res.kind)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = match q.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => l.parse::<i64>().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?.max(0) as usize,
        None => 0,
    };
    Ok(ListOpts {
        labels,
        fields,
        limit,
        continue_token: q.get("continue").cloned().filter(|c| !c.is_empty()),
        resource_version: q.get("resourceVersion").cloned(),
        resource_version_match: q.get("resourceVersionMatch").cloned().filter(|c| !c.is_empty()),
    })
}

fn delete_opts(q: &HashMap<String, String>, body: &Bytes, headers: &HeaderMap) -> Result<DeleteOpts, ApiError> {
    let mut o = DeleteOpts::default();
    if !body.is_empty() {
        let v = objects::decode_body(&content_type(headers), body)?;
        let (v, _) =
            objects::check_schema("DeleteOptions", merge_kind(v, "DeleteOptions", "v1"), FieldValidation::Ignore)?;
        o.grace_period = v.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.propagation = v.get("propagationPolicy").and_then(Value::as_str).map(str::to_string);
        o.precondition_uid = v.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string);
        o.precondition_rv = v.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string);
        o.dry_run = v.get("dryRun").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) && o.propagation.is_none() {
            o.propagation = Some("Orphan".into());
        }
    }
    if let Some(g) = q.get("gracePeriodSeconds") {
        o.grace_period = Some(g.parse().map_err(|_| ApiError::bad_request("invalid gracePeriodSeconds"))?);
    }
    if let Some(p) = q.get("propagationPolicy") {
        o.propagation = Some(p.clone());
    }
    if let Some(p) = &o.propagation
        && !["Orphan", "Background", "Foreground"].contains(&p.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy {p:?} is not one of Orphan, Background, Foreground"
        )));
    }
    if q.get("dryRun").is_some_and(|d| d == "All") {
        o.dry_run = true;
    }
    Ok(o)
}

/// DeleteOptions bodies come with either meta.k8s.io/v1 or v1 apiVersion; normalize for the schema.
fn merge_kind(mut v: Value, kind: &str, _api_version: &str) -> Value {
    if let Value::Object(m) = &mut v {
        m.insert("kind".into(), json!(kind));
        m.remove("apiVersion");
        m.insert("apiVersion".into(), json!("meta.k8s.io/v1"));
    }
    v
}

fn render_one(res: &ResourceDef, obj: &Value, w: Wants, code: StatusCode, warnings: &[String]) -> Response<Body> {
    if w.table {
        let meta = json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)});
        json_response(code, &table::table(res.kind, std::slice::from_ref(obj), meta, w.include, true), warnings)
    } else {
        json_response(code, obj, warnings)
    }
}

impl Server {
    fn authenticate(&self, headers: &HeaderMap, cert_user: Option<&UserInfo>) -> Option<UserInfo> {
        if let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            let token = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer "))?.trim();
            return self.tokens.get(token).cloned();
        }
        cert_user.cloned()
    }

    /// Handles one request; never panics on input.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, cert_user: Option<UserInfo>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let public = matches!(path.as_str(), "/healthz" | "/livez" | "/readyz" | "/version")
            || path.starts_with("/healthz/")
            || path.starts_with("/livez/")
            || path.starts_with("/readyz/");
        let mut user = self.authenticate(req.headers(), cert_user.as_ref());
        if user.is_none() && !public {
            return error_response(&ApiError::Unauthorized);
        }
        // Authorize before anything else (the body is not read yet); the user travels with the
        // request for the review APIs and the escalation check. Without credentials (health and
        // version paths only) the caller is the anonymous user, allowed through the
        // `system:public-info-viewer` binding to `system:unauthenticated` (as upstream).
        let mut req = req;
        let q = parse_query(req.uri().query());
        if let Some(u) = &mut user {
            crate::authz::implied_groups(&u.name, &mut u.groups);
        }
        let anonymous = [crate::authz::UNAUTHENTICATED.to_string()];
        let (name, groups): (&str, &[String]) = match &user {
            Some(u) => (&u.name, &u.groups),
            None => (crate::authz::ANONYMOUS, &anonymous),
        };
        let attrs = crate::authz::request_attributes(name, groups, method.as_str(), &path, &q);
        if !self.authz.authorize(&attrs).allowed {
            tracing::debug!(user = name, verb = attrs.verb, path, "forbidden");
            return error_response(&attrs.forbidden());
        }
        if let Some(u) = &user {
            req.extensions_mut().insert(u.clone());
        }
        let resp = match self.route(req, q).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        tracing::debug!(%method, path, status = resp.status().as_u16(), user = user.map(|u| u.name).unwrap_or_default(), "request");
        resp
    }

    async fn route(&self, req: Request<Incoming>, q: HashMap<String, String>) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let get = req.method() == Method::GET;
        match segs.as_slice() {
            ["healthz" | "livez" | "readyz", ..] if get => {
                let mut r = Response::new(full("ok"));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                return Ok(r);
            }
            ["version"] if get => return Ok(json_response(StatusCode::OK, &discovery::version(), &[])),
            ["api"] | ["apis"] if get => {
                let core = segs[0] == "api";
                if let Some(agg) = Aggregated::from_accept(&accept) {
                    let mut r = json_response(StatusCode::OK, &discovery::aggregated(core, agg), &[]);
                    if let Ok(ct) = HeaderValue::from_str(&agg.content_type()) {
                        r.headers_mut().insert(header::CONTENT_TYPE, ct);
                    }
                    r.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept"));
                    return Ok(r);
                }
                let v = if core { discovery::api_versions(&self.server_address) } else { discovery::api_group_list() };
                let mut r = json_response(StatusCode::OK, &v, &[]);
                r.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept"));
                return Ok(r);
            }
            ["api", "v1"] if get => return Ok(json_response(StatusCode::OK, &discovery::resource_list("", "v1"), &[])),
            ["apis", g] if get && resources::GROUPS.contains(g) => {
                return Ok(json_response(StatusCode::OK, &discovery::api_group(g), &[]));
            }
            ["apis", g, v] if get && resources::group_has_version(g, v) => {
                return Ok(json_response(StatusCode::OK, &discovery::resource_list(g, v), &[]));
            }
            ["openapi", "v2"] if get => {
                // kubectl up to 1.27 insists on fetching the (protobuf) v2 document. Serve a
                // minimal valid one (`swagger: "2.0"`, no definitions): kubectl then uses its
                // built-in patch metadata and server-side field validation.
                let mut r = Response::new(full(&b"\x0a\x032.0"[..]));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                return Ok(r);
            }
            ["openapi", "v3"] if get => {
                return Ok(json_response(StatusCode::OK, &crate::openapi::documents().index, &[]));
            }
            ["openapi", "v3", rest @ ..] if get => {
                let doc = crate::openapi::documents().get(&rest.join("/")).ok_or(ApiError::NoRoute)?;
                let mut r = Response::new(full(doc.json.clone()));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", doc.hash)) {
                    r.headers_mut().insert(header::ETAG, etag);
                }
                // A URL carrying the current hash never changes content (upstream does the same).
                let cache = if q.get("hash") == Some(&doc.hash) { "public, immutable" } else { "no-cache, private" };
                r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
                return Ok(r);
            }
            _ => {}
        }
        let Some((t, legacy_watch)) = parse_resource_path(&segs)? else { return Err(ApiError::NoRoute) };
        self.resource(req, t, q, legacy_watch).await
    }

    async fn resource(
        &self,
        req: Request<Incoming>,
        t: Target,
        q: HashMap<String, String>,
        legacy_watch: bool,
    ) -> Result<Response<Body>, ApiError> {
        let (parts, body) = req.into_parts();
        let headers = parts.headers;
        let api = &self.api;
        let res = t.res;
        let ns = t.ns.as_deref();
        let user = parts.extensions.get::<UserInfo>().cloned();
        if crate::rbac::is_review(res) {
            let (true, None, None, Some(user)) = (parts.method == Method::POST, &t.name, &t.sub, user) else {
                return Err(ApiError::MethodNotAllowed);
            };
            let body = read_body(body).await?;
            let opts = write_opts(&q, &headers)?;
            let obj = objects::decode_body(&content_type(&headers), &body)?;
            let (obj, warnings) = objects::check_schema(res.kind, obj, opts.field_validation)?;
            let out = crate::rbac::review(&self.authz, res, &user, obj)?;
            return Ok(json_response(StatusCode::CREATED, &out, &warnings));
        }
        // Roles and bindings are admitted only without privilege escalation (see rbac::Authorizer::admit).
        let admit = user.filter(|_| res.group == crate::authz::RBAC_GROUP).map(|u| {
            let authz = self.authz.clone();
            crate::api::Admit(Arc::new(move |r: &ResourceDef, new: &Value, old: Option<&Value>| {
                authz.admit(&u, r, new, old)
            }))
        });
        let write_opts = |q: &HashMap<String, String>, h: &HeaderMap| -> Result<WriteOpts, ApiError> {
            Ok(WriteOpts { admit: admit.clone(), ..write_opts(q, h)? })
        };
        if t.sub.as_deref().is_some_and(|s| matches!(s, "log" | "exec" | "portforward")) {
            return Err(ApiError::ServiceUnavailable {
                message: format!(
                    "pods/{} is not available: keelson-apiserver has no connection to a kubelet API yet",
                    t.sub.as_deref().unwrap_or_default()
                ),
            });
        }
        match (parts.method.clone(), t.name.as_deref(), t.sub.as_deref()) {
            (Method::GET, None, None) => {
                let w = wants(&headers, &q)?;
                let lo = list_opts(res, &q)?;
                let watch = legacy_watch || q.get("watch").is_some_and(|v| v == "true" || v == "1");
                if watch {
                    let timeout = q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
                    let wo = WatchOpts {
                        list: lo,
                        bookmarks: q.get("allowWatchBookmarks").is_some_and(|v| v == "true"),
                        send_initial_events: q.get("sendInitialEvents").is_some_and(|v| v == "true"),
                        timeout,
                    };
                    let rx = api.watch(res, ns, wo).await?;
                    return Ok(watch_response(res, rx, w));
                }
                let (items, rv, token) = api.list(res, ns, &lo).await?;
                if w.table {
                    let mut meta = json!({"resourceVersion": rv.to_string()});
                    if let Some(tk) = token {
                        meta["continue"] = json!(tk);
                    }
                    return Ok(json_response(
                        StatusCode::OK,
                        &table::table(res.kind, &items, meta, w.include, true),
                        &[],
                    ));
                }
                Ok(json_response(StatusCode::OK, &Api::list_object(res, items, rv, token), &[]))
            }
            (Method::GET, Some(name), sub) => {
                let w = wants(&headers, &q)?;
                let obj = api.get(res, ns, name).await?;
                if sub == Some("scale") {
                    return Ok(json_response(StatusCode::OK, &Api::scale_of(res, &obj), &[]));
                }
                Ok(render_one(res, &obj, w, StatusCode::OK, &[]))
            }
            (Method::POST, None, None) => {
                let w = wants(&headers, &q)?;
                let body = read_body(body).await?;
                let opts = write_opts(&q, &headers)?;
                let (obj, mut warnings) =
                    objects::decode_object(&content_type(&headers), &body, opts.field_validation)?;
                let (obj, w2) = api.create(res, ns, obj, &opts).await?;
                warnings.extend(w2);
                Ok(render_one(res, &obj, w, StatusCode::CREATED, &warnings))
            }
            (Method::POST, Some(name), Some("binding")) => {
                let body = read_body(body).await?;
                let b = objects::decode_body(&content_type(&headers), &body)?;
                let ns = ns.unwrap_or("default");
                let status = api.bind(ns, name, &b).await?;
                Ok(json_response(StatusCode::CREATED, &status, &[]))
            }
            (Method::PUT, Some(name), sub) => {
                let w = wants(&headers, &q)?;
                let body = read_body(body).await?;
                let opts = write_opts(&q, &headers)?;
                let (obj, mut warnings) =
                    objects::decode_object(&content_type(&headers), &body, opts.field_validation)?;
                if sub == Some("scale") {
                    return self.scale_update(res, ns, name, &opts, |_| Ok(obj.clone())).await;
                }
                let rv = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
                let (out, w2) = api.update_with(res, ns, name, sub, &opts, |_| Ok((obj.clone(), rv.clone()))).await?;
                warnings.extend(w2);
                Ok(render_one(res, &out, w, StatusCode::OK, &warnings))
            }
            (Method::PATCH, Some(name), sub) => {
                let w = wants(&headers, &q)?;
                let body = read_body(body).await?;
                let mut opts = write_opts(&q, &headers)?;
                let ct = content_type(&headers);
                let mime = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
                let patch_doc = objects::decode_body(&ct, &body)?;
                if mime == "application/apply-patch+yaml" || mime == "application/apply-patch+cbor" {
                    if mime.ends_with("cbor") {
                        return Err(ApiError::UnsupportedMediaType { accepted: "application/apply-patch+yaml".into() });
                    }
                    if q.get("fieldManager").is_none_or(|m| m.is_empty()) {
                        return Err(ApiError::bad_request(
                            "PATCH requests of type application/apply-patch+yaml require fieldManager",
                        ));
                    }
                    let force = q.get("force").is_some_and(|f| f == "true");
                    opts.apply = true;
                    if opts.field_validation == FieldValidation::Warn && !q.contains_key("fieldValidation") {
                        opts.field_validation = FieldValidation::Strict;
                    }
                    let (out, warnings, created) =
                        crate::apply::server_side_apply(api, res, ns, name, sub, patch_doc, &opts, force).await?;
                    let code = if created { StatusCode::CREATED } else { StatusCode::OK };
                    return Ok(render_one(res, &out, w, code, &warnings));
                }
                let apply = |cur: &Value| -> Result<Value, ApiError> {
                    match mime.as_str() {
                        "application/json-patch+json" => patch::json_patch(cur, &patch_doc).map_err(|e| match e {
                            patch::PatchError::TestFailed(_) => ApiError::Invalid {
                                group: res.group.into(),
                                kind: res.kind.into(),
                                name: name.into(),
                                causes: vec![crate::error::Cause {
                                    reason: "FieldValueInvalid",
                                    field: String::new(),
                                    message: e.to_string(),
                                }],
                            },
                            other => ApiError::bad_request(other.to_string()),
                        }),
                        "application/merge-patch+json" => {
                            if !patch_doc.is_object() {
                                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                            }
                            Ok(patch::merge_patch(cur, &patch_doc))
                        }
                        "application/strategic-merge-patch+json" => {
                            patch::strategic_merge(cur, &patch_doc).map_err(|e| ApiError::bad_request(e.to_string()))
                        }
                        other => Err(ApiError::UnsupportedMediaType {
                            accepted: format!(
                                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"
                            ),
                        }),
                    }
                };
                if sub == Some("scale") {
                    return self.scale_update(res, ns, name, &opts, |scale| apply(scale)).await;
                }
                let rv_in_patch =
                    patch_doc.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
                let (out, warnings) = api
                    .update_with(res, ns, name, sub, &opts, |cur| {
                        let mut patched = apply(cur)?;
                        // The current RV is the precondition only if the patch itself names one.
                        if let Some(Value::Object(m)) = patched.get_mut("metadata") {
                            m.remove("resourceVersion");
                        }
                        Ok((patched, rv_in_patch.clone()))
                    })
                    .await?;
                Ok(render_one(res, &out, w, StatusCode::OK, &warnings))
            }
            (Method::DELETE, Some(name), None) => {
                let body = read_body(body).await?;
                let opts = delete_opts(&q, &body, &headers)?;
                let obj = api.delete(res, ns, name, &opts).await?;
                let code = if obj.pointer("/metadata/deletionTimestamp").is_some() && res.kind != "Namespace" {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::OK
                };
                Ok(json_response(if res.kind == "Namespace" { StatusCode::OK } else { code }, &obj, &[]))
            }
            (Method::DELETE, None, None) => {
                let body = read_body(body).await?;
                let opts = delete_opts(&q, &body, &headers)?;
                let lo = list_opts(res, &q)?;
                let out = api.delete_collection(res, ns, &lo, &opts).await?;
                Ok(json_response(StatusCode::OK, &out, &[]))
            }
            _ => Err(ApiError::MethodNotAllowed),
        }
    }

    /// Applies `f` to the Scale view and writes spec.replicas back to the parent.
    async fn scale_update(
        &self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        opts: &WriteOpts,
        f: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<Response<Body>, ApiError> {
        let (out, _) = self
            .api
            .update_with(res, ns, name, None, opts, |cur| {
                let scale = Api::scale_of(res, cur);
                let new_scale = f(&scale)?;
                let replicas =
                    new_scale.pointer("/spec/replicas").and_then(Value::as_i64).ok_or_else(|| ApiError::Invalid {
                        group: "autoscaling".into(),
                        kind: "Scale".into(),
                        name: name.into(),
                        causes: vec![crate::error::Cause::required("spec.replicas")],
                    })?;
                if replicas < 0 {
                    return Err(ApiError::Invalid {
                        group: "autoscaling".into(),
                        kind: "Scale".into(),
                        name: name.into(),
                        causes: vec![crate::error::Cause::invalid(
                            "spec.replicas",
                            replicas,
                            "must be greater than or equal to 0",
                        )],
                    });
                }
                let rv = new_scale.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
                let mut n = cur.clone();
                n["spec"]["replicas"] = json!(replicas);
                Ok((n, rv))
            })
            .await?;
        Ok(json_response(StatusCode::OK, &Api::scale_of(res, &out), &[]))
    }
}

fn watch_line(res: &ResourceDef, ev: WatchEvent, w: Wants, first: &mut bool) -> Bytes {
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
    let mut line = serde_json::to_vec(&json!({"type": ev.kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn watch_response(
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
fn async_stream<F, Fut>(producer: F) -> tokio_stream_shim::ReceiverStream<Result<Frame<Bytes>, Infallible>>
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

/// Accepts TLS connections forever.
pub async fn serve(server: Arc<Server>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let cert_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::tls::user_from_cert(c.as_ref()));
            let svc = hyper::service::service_fn(move |req| {
                let server = server.clone();
                let cu = cert_user.clone();
                async move { Ok::<_, Infallible>(server.handle(req, cu).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
        });
    }
}
