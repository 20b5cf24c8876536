//! Authentication beyond the static token file and client certificates (see `http::tls`):
//! bootstrap tokens, with which a new node proves it may ask for a client certificate, and the
//! `kube-public/cluster-info` ConfigMap from which it learns the cluster CA before it trusts
//! anything (kubeadm's token discovery, pinned by the CA's public key hash).
//!
//! Both live in the API (Secrets, a ConfigMap) rather than in files so that every apiserver
//! sharing one store sees the same tokens, and `keelson-apiserver token create` works through
//! the API like `kubeadm token create`.

pub mod bootstrap;
pub mod cluster_info;
