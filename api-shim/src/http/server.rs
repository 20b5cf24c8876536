//! HTTPS transport, authentication and authorization.
//!
//! One rustls listener (h2 and http/1.1). A request is authenticated by bearer token (static
//! token file, or a bootstrap token: `crate::auth`) or by a client certificate issued by our CA;
//! anything else gets 401, except the health and version endpoints and `kube-public/cluster-info`. Every request is then authorized by RBAC (the request-info
//! glue: the caller's implied groups, the anonymous user, path → attributes) before its body is
//! read, and routed (`routing.rs`) onto the registry's [`Api`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::request::parse_query;
use super::response::{Body, error_response};
use super::tls::UserInfo;
use crate::error::ApiError;
use crate::registry::Api;

/// Everything a request handler needs.
pub struct Server {
    pub api: Arc<Api>,
    pub tokens: HashMap<String, UserInfo>,
    pub server_address: String,
    /// RBAC decisions (see [`crate::registry::rbac`]).
    pub authz: Arc<crate::registry::rbac::Authorizer>,
    /// The Node authorizer, asked before RBAC (`--authorization-mode=Node,RBAC`).
    pub node_authz: crate::registry::rbac::node::NodeAuthorizer,
}

impl Server {
    async fn authenticate(&self, headers: &HeaderMap, cert_user: Option<&UserInfo>) -> Option<UserInfo> {
        if let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            let token = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer "))?.trim();
            if let Some(u) = self.tokens.get(token) {
                return Some(u.clone());
            }
            return crate::auth::bootstrap::authenticate(&self.api, token).await;
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
            || path.starts_with("/readyz/")
            // A joining node reads the CA before it has credentials (RBAC still decides).
            || (method == http::Method::GET && path == crate::auth::cluster_info::PATH);
        let mut user = self.authenticate(req.headers(), cert_user.as_ref()).await;
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
            crate::registry::rbac::authz::implied_groups(&u.name, &mut u.groups);
        }
        let anonymous = [crate::registry::rbac::authz::UNAUTHENTICATED.to_string()];
        let (name, groups): (&str, &[String]) = match &user {
            Some(u) => (&u.name, &u.groups),
            None => (crate::registry::rbac::authz::ANONYMOUS, &anonymous),
        };
        let attrs = super::request_info::request_attributes(name, groups, method.as_str(), &path, &q);
        use crate::registry::rbac::node::NodeDecision;
        let node = self.node_authz.authorize(&attrs).await;
        if node != NodeDecision::Allow && !self.authz.authorize(&attrs).allowed {
            tracing::debug!(user = name, verb = attrs.verb, path, "forbidden");
            let err = match node {
                NodeDecision::NoOpinion(Some(why)) => crate::registry::rbac::authz::forbidden(
                    &attrs.api_group,
                    &attrs.resource,
                    &attrs.name,
                    &format!("{}: {why}", attrs.forbidden_reason()),
                ),
                _ => attrs.forbidden(),
            };
            return error_response(&err);
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
                .and_then(|c| crate::http::tls::user_from_cert(c.as_ref()));
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
