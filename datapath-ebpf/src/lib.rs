//! keelson's service datapath.
//!
//! [`model`] turns Services + EndpointSlices into a [`model::ServiceTable`] (pure, unit-tested);
//! backends render that one table into kernel state. Keeping the Kubernetes semantics in one pure
//! place is what lets both backends behave identically.

pub mod datapath;
pub mod ebpf;
pub mod model;
pub mod nft;
#[cfg(test)]
mod test_fixtures;

pub use model::{
    Backend, Change, Frontend, FrontendAddr, FrontendKey, FrontendKind, ModelConfig, NodeInfo, Protocol, ServiceTable,
};
