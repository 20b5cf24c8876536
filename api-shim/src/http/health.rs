//! `/healthz`, `/livez` and `/readyz` as kube-apiserver answers them: `ok` when every check
//! passes (the list of checks with `?verbose`), else 500 with one `[+]name ok` / `[-]name failed:
//! reason withheld` line per check (the reason goes to the log only: these paths are public), and
//! `/<endpoint>/<check>` for one check. Checks: `ping` (the process answers) and the store (a
//! cheap read with a timeout, named `etcd` for etcd), so a server whose storage is gone stops
//! being ready instead of answering `ok` to load balancers.

use std::collections::HashMap;

use http::{HeaderValue, Response, StatusCode, header};

use super::response::{Body, full};
use crate::error::ApiError;
use crate::registry::Api;

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

/// Answers `/{endpoint}` (`rest` empty) or `/{endpoint}/{check}`.
pub(super) async fn answer(
    api: &Api,
    endpoint: &str,
    rest: &[&str],
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let (storage, outcome) = api.check_storage().await;
    let checks: [(&str, Result<(), String>); 2] = [("ping", Ok(())), (storage, outcome)];
    match rest {
        [] => Ok(render(endpoint, &checks, q)),
        [one] => {
            let (_, r) = checks.iter().find(|(name, _)| name == one).ok_or(ApiError::NoRoute)?;
            Ok(match r {
                Ok(()) => text(StatusCode::OK, "ok".into()),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("internal server error: {e}\n")),
            })
        }
        _ => Err(ApiError::NoRoute),
    }
}

/// The root answer, excluding checks named in `?exclude=` (upstream's escape hatch).
fn render(endpoint: &str, checks: &[(&str, Result<(), String>)], q: &HashMap<String, String>) -> Response<Body> {
    let excluded: Vec<&str> = q.get("exclude").map(|e| e.split(',').collect()).unwrap_or_default();
    let mut lines = String::new();
    let mut failed = Vec::new();
    for (name, r) in checks {
        if excluded.contains(name) {
            lines.push_str(&format!("[+]{name} excluded: ok\n"));
            continue;
        }
        match r {
            Ok(()) => lines.push_str(&format!("[+]{name} ok\n")),
            Err(e) => {
                lines.push_str(&format!("[-]{name} failed: reason withheld\n"));
                failed.push(format!("{name}: {e}"));
            }
        }
    }
    if !failed.is_empty() {
        tracing::warn!(endpoint, failed = failed.join("; "), "health check failed");
        return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{lines}{endpoint} check failed\n"));
    }
    if q.contains_key("verbose") {
        return text(StatusCode::OK, format!("{lines}{endpoint} check passed\n"));
    }
    text(StatusCode::OK, "ok".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use http_body_util::BodyExt;

    use super::*;

    async fn body(r: Response<Body>) -> (u16, String) {
        let code = r.status().as_u16();
        let b = r.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8(b.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn answers_like_kube_apiserver() {
        let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let ok = [("ping", Ok(())), ("etcd", Ok(()))];
        assert_eq!(body(render("readyz", &ok, &q(&[]))).await, (200, "ok".into()));
        assert_eq!(
            body(render("readyz", &ok, &q(&[("verbose", "")]))).await,
            (200, "[+]ping ok\n[+]etcd ok\nreadyz check passed\n".into())
        );
        let down = [("ping", Ok(())), ("etcd", Err("connection refused".to_string()))];
        let (code, text) = body(render("healthz", &down, &q(&[]))).await;
        assert_eq!((code, text.as_str()), (500, "[+]ping ok\n[-]etcd failed: reason withheld\nhealthz check failed\n"));
        assert!(!text.contains("refused"), "the reason is withheld");
        let (code, _) = body(render("livez", &down, &q(&[("exclude", "etcd")]))).await;
        assert_eq!(code, 200);
    }
}
