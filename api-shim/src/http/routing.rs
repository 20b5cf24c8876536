//! Routing: discovery, OpenAPI and health paths, then each resource verb onto the registry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::discovery::{self, Aggregated};
use super::request::{
    Target, content_type, decode_body, decode_object, delete_opts, list_opts, parse_resource_path, read_body,
    write_opts,
};
use super::response::{Body, full, json_response, render_one, wants, watch_response};
use super::server::Server;
use super::table;
use super::tls::UserInfo;
use crate::error::ApiError;
use crate::objects::{self, FieldValidation};
use crate::patch;
use crate::registry::{Api, WatchOpts, WriteOpts};
use crate::resources::{self, ResourceDef};

impl Server {
    pub(super) async fn route(
        &self,
        req: Request<Incoming>,
        q: HashMap<String, String>,
    ) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let get = req.method() == Method::GET;
        match segs.as_slice() {
            [endpoint @ ("healthz" | "livez" | "readyz"), rest @ ..] if get => {
                return super::health::answer(&self.api, endpoint, rest, &q).await;
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
                return Ok(json_response(StatusCode::OK, &crate::http::openapi::documents().index, &[]));
            }
            ["openapi", "v3", rest @ ..] if get => {
                let doc = crate::http::openapi::documents().get(&rest.join("/")).ok_or(ApiError::NoRoute)?;
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
        if crate::registry::rbac::is_review(res) {
            let (true, None, None, Some(user)) = (parts.method == Method::POST, &t.name, &t.sub, user) else {
                return Err(ApiError::MethodNotAllowed);
            };
            let body = read_body(body).await?;
            let opts = write_opts(&q, &headers)?;
            let obj = decode_body(&content_type(&headers), &body)?;
            let (obj, warnings) = objects::check_schema(res.kind, obj, opts.field_validation)?;
            let out = crate::registry::rbac::review(&self.authz, res, &user, obj)?;
            return Ok(json_response(StatusCode::CREATED, &out, &warnings));
        }
        // Roles and bindings are admitted only without privilege escalation (see rbac::Authorizer::admit).
        let admit = user.filter(|_| res.group == crate::registry::rbac::authz::RBAC_GROUP).map(|u| {
            let authz = self.authz.clone();
            crate::registry::Admit(Arc::new(move |r: &ResourceDef, new: &Value, old: Option<&Value>| {
                authz.admit(&u, r, new, old)
            }))
        });
        // Nodes write only their own objects (NodeRestriction).
        let admit = admit.or_else(|| crate::registry::node_restriction::admission(parts.extensions.get::<UserInfo>()));
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
                let (mut obj, mut warnings) = decode_object(&content_type(&headers), &body, opts.field_validation)?;
                if let (crate::registry::certificates::GROUP, Some(u)) = (res.group, parts.extensions.get::<UserInfo>())
                {
                    crate::registry::certificates::set_requester(&mut obj, u);
                }
                let (obj, w2) = api.create(res, ns, obj, &opts).await?;
                warnings.extend(w2);
                Ok(render_one(res, &obj, w, StatusCode::CREATED, &warnings))
            }
            (Method::POST, Some(name), Some("binding")) => {
                let body = read_body(body).await?;
                let b = decode_body(&content_type(&headers), &body)?;
                let ns = ns.unwrap_or("default");
                let status = api.bind(ns, name, &b).await?;
                Ok(json_response(StatusCode::CREATED, &status, &[]))
            }
            (Method::PUT, Some(name), sub) => {
                let w = wants(&headers, &q)?;
                let body = read_body(body).await?;
                let opts = write_opts(&q, &headers)?;
                let (obj, mut warnings) = decode_object(&content_type(&headers), &body, opts.field_validation)?;
                if sub == Some("scale") {
                    let out = api.update_scale(res, ns, name, &opts, |_| Ok(obj.clone())).await?;
                    return Ok(json_response(StatusCode::OK, &out, &[]));
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
                let patch_doc = decode_body(&ct, &body)?;
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
                    let (out, warnings, created) = api.apply(res, ns, name, sub, patch_doc, &opts, force).await?;
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
                    let out = api.update_scale(res, ns, name, &opts, |scale| apply(scale)).await?;
                    return Ok(json_response(StatusCode::OK, &out, &[]));
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
}
