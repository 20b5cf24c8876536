//! keelson-agent: the node daemon.
//!
//! Layout follows kubelet's shape and the "pure core, thin effects" rule (see the architecture
//! notes, "Inside the agent"): pod sources ([`source`]) feed the pod workers ([`podworker`]), whose
//! pure core [`pod::step`] decides and whose executor performs effects through trait seams
//! (`runtime::ContainerRuntime`, `cgroups::Cgroups`, `network::PodNetwork`, `netns::Namespaces`),
//! publishing through [`status::StatusSink`] and [`events::EventSink`]. Each seam has a real
//! implementation and a fake behind `test-helpers`.

pub mod cgroups;
pub mod cni;
pub mod daemon;
pub mod events;
pub mod images;
pub mod manifest;
pub mod netns;
pub mod network;
pub mod node;
pub mod oci;
pub mod pod;
pub mod podworker;
pub mod probe;
pub mod runtime;
pub mod server;
pub mod source;
pub mod status;
