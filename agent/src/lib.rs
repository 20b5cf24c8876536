//! keelson-agent: the node daemon.
//!
//! Layout follows the "pure core, thin effects" rule: `pod::step` decides, the executor in
//! `manager` performs effects through trait seams (`runtime::ContainerRuntime`, `cgroups::Cgroups`,
//! `cni` plugin execution), each with a real implementation and a fake behind `test-helpers`.

pub mod cgroups;
pub mod cni;
pub mod manager;
pub mod manifest;
pub mod netns;
pub mod network;
pub mod oci;
pub mod pod;
pub mod probe;
pub mod runtime;
pub mod server;
pub mod static_pods;
