//! keelson's pod network: the `keelson-cni` CNI 1.1 plugin (node bridge, veth pairs, leak-free
//! IPAM, optional masquerade) and the flannel-style VXLAN overlay library the agent drives.
//!
//! Layout: [`spec`] (wire types, validation), [`ipam`] (pure allocator + file store),
//! [`netlink`] (the `Netlink` seam, real + fake), [`masq`] (nft table), [`plugin`] (the commands),
//! [`overlay`] (VXLAN convergence), [`dispatch`] (env + stdin → stdout JSON + exit code).
//!
//! # Network configuration
//!
//! ```json
//! {
//!   "cniVersion": "1.1.0", "name": "keelson", "type": "keelson-cni",
//!   "bridge": "cni0",              // default cni0; gateway = first address of the node subnet
//!   "mtu": 1450,                   // default: KEELSON_MTU from the subnet file, else 1500
//!   "hairpinMode": true,           // default true
//!   "ipMasq": false,               // masquerade pod traffic leaving clusterCIDR (nft table keelson_cni_<name>)
//!   "clusterCIDR": "10.244.0.0/16",// default: KEELSON_NETWORK from the subnet file, else the node subnet
//!   "ipam": {
//!     "subnet": "10.244.1.0/24",   // or "subnetFile": "/run/keelson/subnet.env" (see ipam::SubnetFile)
//!     "dataDir": "/var/lib/keelson/cni/networks"
//!   }
//! }
//! ```
//!
//! Chaining: `prevResult` is extended (our interfaces appended, indices shifted), and Debian's
//! `portmap` and `bandwidth` work after it (they need cniVersion ≤ 1.0.0 in the chain).
//!
//! Overlay CLI: `keelson-cni overlay <nodes.yaml> [--watch SECONDS]`, file
//! `{local: {name, nodeIP, podCIDR, uplink}, remotes: [{name, nodeIP, podCIDR, vtepMAC}]}`; prints
//! the converge report and this node's annotations ([`overlay::ANNOTATION_VTEP_MAC`],
//! [`overlay::ANNOTATION_NODE_IP`]).

pub mod dispatch;
pub mod ipam;
pub mod masq;
pub mod netlink;
pub mod overlay;
pub mod plugin;
pub mod spec;
