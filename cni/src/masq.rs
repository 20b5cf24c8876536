//! Optional masquerade for pod traffic leaving the cluster network, in an nft table the plugin owns
//! whole (`ip keelson_cni_<network>`), loaded in the namespace the plugin runs in (the node's).
//!
//! Layout: a set `pods` of pod addresses (one element per attachment, added on ADD, removed on DEL
//! and GC, so the table never holds a stale pod) and a set `cluster` of intervals that must not be
//! masqueraded; one rule `ip saddr @pods ip daddr != @cluster masquerade`. Every change is one
//! `nft -f` batch, so the kernel applies it atomically; re-running it is harmless (idempotent).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

/// nft failures, with the script that failed.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error("nft {table}: {reason}")]
    Nft { table: String, reason: String },
}

/// The masquerade seam (real: [`NftMasq`]).
pub trait Masq {
    /// Ensures the table, the rule and `cluster`, and adds `pod` to `pods`.
    fn add_pod(&mut self, cluster: &[Ipv4Net], pod: Ipv4Addr) -> Result<(), MasqError>;
    /// Removes pods from `pods` (absent elements and an absent table are fine).
    fn remove_pods(&mut self, pods: &[Ipv4Addr]) -> Result<(), MasqError>;
}

/// The table name for a network: `keelson_cni_` + the name reduced to `[a-z0-9_]`, ≤ 64 bytes.
pub fn table_name(network: &str) -> String {
    let clean: String =
        network.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let mut t = format!("keelson_cni_{clean}");
    t.truncate(64);
    t
}

/// The idempotent batch that installs the table and adds one pod.
pub fn add_script(table: &str, cluster: &[Ipv4Net], pod: Ipv4Addr) -> String {
    let nets: Vec<String> = cluster.iter().map(|n| n.trunc().to_string()).chain(["224.0.0.0/4".to_string()]).collect();
    format!(
        "add table ip {table}\n\
         add set ip {table} pods {{ type ipv4_addr; }}\n\
         add set ip {table} cluster {{ type ipv4_addr; flags interval; }}\n\
         add chain ip {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain ip {table} postrouting\n\
         flush set ip {table} cluster\n\
         add element ip {table} cluster {{ {} }}\n\
         add rule ip {table} postrouting ip saddr @pods ip daddr != @cluster masquerade\n\
         add element ip {table} pods {{ {pod} }}\n",
        nets.join(", ")
    )
}

/// Runs `nft` in the current network namespace.
#[derive(Debug, Clone)]
pub struct NftMasq {
    pub table: String,
}

impl NftMasq {
    pub fn new(network: &str) -> Self {
        NftMasq { table: table_name(network) }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<(), MasqError> {
        let err = |reason: String| MasqError::Nft { table: self.table.clone(), reason };
        let mut child = Command::new("nft")
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(format!("spawn nft: {e}")))?;
        if let (Some(s), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(s.as_bytes()).map_err(|e| err(format!("write nft stdin: {e}")))?;
        }
        let out = child.wait_with_output().map_err(|e| err(format!("wait nft: {e}")))?;
        if !out.status.success() {
            return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        Ok(())
    }
}

impl Masq for NftMasq {
    fn add_pod(&mut self, cluster: &[Ipv4Net], pod: Ipv4Addr) -> Result<(), MasqError> {
        self.run(&["-f", "-"], Some(&add_script(&self.table, cluster, pod)))
    }

    fn remove_pods(&mut self, pods: &[Ipv4Addr]) -> Result<(), MasqError> {
        for p in pods {
            // One element per command: a missing element or table must not block the others.
            let elem = format!("{{ {p} }}");
            if let Err(e) = self.run(&["delete", "element", "ip", &self.table, "pods", &elem], None) {
                let MasqError::Nft { reason, .. } = &e;
                if !(reason.contains("No such file") || reason.contains("does not exist")) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// A recording fake.
#[cfg(any(test, feature = "test-helpers"))]
#[derive(Debug, Default)]
pub struct FakeMasq {
    pub pods: std::collections::BTreeSet<Ipv4Addr>,
    pub cluster: Vec<Ipv4Net>,
}

#[cfg(any(test, feature = "test-helpers"))]
impl Masq for FakeMasq {
    fn add_pod(&mut self, cluster: &[Ipv4Net], pod: Ipv4Addr) -> Result<(), MasqError> {
        self.cluster = cluster.to_vec();
        self.pods.insert(pod);
        Ok(())
    }

    fn remove_pods(&mut self, pods: &[Ipv4Addr]) -> Result<(), MasqError> {
        for p in pods {
            self.pods.remove(p);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn table_names_are_sanitised() {
        assert_eq!(table_name("Pod-Net.1"), "keelson_cni_pod_net_1");
        assert!(table_name(&"x".repeat(200)).len() <= 64);
    }

    #[test]
    fn script_is_one_idempotent_batch() {
        let s = add_script("t", &["10.244.0.0/16".parse().unwrap()], "10.244.1.5".parse().unwrap());
        assert!(s.contains("add element ip t cluster { 10.244.0.0/16, 224.0.0.0/4 }"));
        assert!(s.contains("flush chain ip t postrouting\n"));
        assert!(s.contains("ip saddr @pods ip daddr != @cluster masquerade"));
        assert!(s.ends_with("add element ip t pods { 10.244.1.5 }\n"));
        assert!(!s.contains("flush set ip t pods"), "re-running must not drop other pods");
    }
}
