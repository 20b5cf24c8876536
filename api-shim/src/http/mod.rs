//! The HTTP layer: transport (TLS, HTTP/1.1 and h2), authentication, authorization of each
//! request, routing onto the registry, and everything that only exists on the wire: discovery,
//! OpenAPI documents, Table output, protobuf request bodies, the PKI.
//!
//! It calls [`crate::registry`] for every verb and never touches [`crate::storage`] directly.

pub mod discovery;
mod health;
pub mod openapi;
pub mod proto;
mod request;
pub mod request_info;
mod response;
mod routing;
pub mod server;
pub mod table;
pub mod tls;
