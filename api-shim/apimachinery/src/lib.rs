//! keelson-apimachinery: one copy of the Kubernetes API semantics keelson needs.
//!
//! Why a crate of its own: the API server (api-shim) and the node agent's static-pod path both
//! have to agree on what a valid pod, a quantity or a name is. Two copies drifted apart (the agent
//! accepted `-` as a zero quantity where the server refused it), so the rules live here once,
//! pure — no I/O, no async runtime, no HTTP — and both depend on this crate.
//!
//! - [`objects`]: strict decoding (unknown fields), defaulting and validation per kind.
//! - [`validation`]: kind-specific rules beyond the common ones.
//! - [`selectors`]: label and field selectors.
//! - [`patch`]: JSON patch, merge patch and strategic merge patch.
//! - [`apply`]: managed fields and the pure half of server-side apply.
//! - [`error`]: the `Status`/cause error type the validators return.
//! - [`resources`], [`kinds`]: the served-kind catalogue and kind → Rust type table.

pub mod apply;
pub mod error;
pub mod kinds;
pub mod objects;
pub mod patch;
pub mod resources;
pub mod selectors;
pub mod validation;
