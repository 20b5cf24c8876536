//! keelson's pod network: the `keelson-cni` CNI 1.1 plugin (node bridge, veth pairs, leak-free
//! IPAM, optional masquerade) and the flannel-style VXLAN overlay library the agent drives.
//!
//! Layout: [`spec`] (wire types, validation), [`ipam`] (pure allocator + file store),
//! [`netlink`] (the `Netlink` seam, real + fake), [`masq`] (nft table), [`plugin`] (the commands),
//! [`overlay`] (VXLAN convergence), [`dispatch`] (env + stdin → stdout JSON + exit code).

pub mod dispatch;
pub mod ipam;
pub mod masq;
pub mod netlink;
pub mod overlay;
pub mod plugin;
pub mod spec;
