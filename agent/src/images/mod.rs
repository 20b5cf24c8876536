//! Images from registries: which image a container means, whether to pull it, with which
//! credentials, and the pull itself.
//!
//! Why a module of its own rather than more of `runtime/containerd.rs`: pulling is mostly registry
//! work (the OCI distribution API, platform selection in an index, bearer-token challenges, docker
//! config credentials) that does not depend on containerd at all. The runtime only has to store
//! what the puller hands it, so the puller drives a small [`pull::Store`] seam (content writes
//! under a lease, unpack, image record) that `runtime::containerd` implements; this module never
//! imports the runtime.
//!
//! - [`reference`] (pure): `busybox` → `docker.io/library/busybox:latest`, the name images are
//!   recorded under, and the pull-policy default (`:latest` or no tag → Always);
//! - [`auth`] (pure): docker config JSON (`.dockerconfigjson`, `.dockercfg`, the node's
//!   `--registry-config`) → credentials for one registry host;
//! - [`pull`]: manifest/index → linux/amd64 → config + layers streamed into the store, digests
//!   verified by the client and again by containerd at commit;
//! - [`inflight`]: concurrent pulls of one image share one pull.

pub mod auth;
pub mod inflight;
pub mod pull;
pub mod reference;

pub use auth::{Credential, DockerConfig, RegistryConfig};
pub use pull::{PullError, PullReport, Store, StoreError};
pub use reference::{PullPolicy, normalize};
