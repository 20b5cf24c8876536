//! The facade the agent (and the standalone driver) uses: pick a backend, fall back from eBPF to
//! nftables when the programs cannot be loaded, sync tables, repair tampering, expose metrics.
//!
//! In eBPF mode the socket-LB serves every client on the node (pods in the attached cgroup); traffic
//! arriving from outside for NodePort / LoadBalancer / externalIP frontends is served by the tc
//! programs on the configured uplink. The nftables table still exists in eBPF mode, for two jobs: the
//! masquerade rule the tc program relies on (it marks packets that need SNAT), and — only when no
//! uplink is configured — serving the external frontends itself.

use crate::ebpf::loader::Uplink;
use crate::ebpf::{EbpfError, EbpfProxier, PinnedMaps, SockLb};
use crate::model::{NodeInfo, ServiceTable};
use crate::nft::{NftCli, NftError, NftProxier};
use std::path::PathBuf;

/// Which backend to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Mode {
    /// eBPF, falling back to nftables (with a warning) if it cannot load.
    Auto,
    /// eBPF or fail.
    Ebpf,
    /// nftables only.
    Nft,
}

/// The backend that is actually programming the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Ebpf,
    Nft,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Ebpf => "ebpf",
            BackendKind::Nft => "nft",
        }
    }
}

#[derive(Clone, Debug)]
pub struct DatapathConfig {
    pub mode: Mode,
    pub node: NodeInfo,
    /// Per-node bpffs directory for pins (e.g. `/sys/fs/bpf/keelson`).
    pub pin_dir: PathBuf,
    /// cgroup2 directory whose processes get the socket-LB (e.g. the pods' parent cgroup).
    pub cgroup: PathBuf,
    /// Interface where traffic from outside arrives (tc NodePort programs); `None` = nftables serves
    /// external frontends in eBPF mode too.
    pub uplink: Option<Uplink>,
    pub nft_table: String,
    /// Run `nft` inside this network namespace (tests); `None` = the current one.
    pub nft_netns: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("eBPF backend: {0}")]
    Ebpf(#[from] EbpfError),
    #[error("nftables backend: {0}")]
    Nft(#[from] NftError),
}

enum Active {
    Ebpf { lb: SockLb, proxier: Box<EbpfProxier<PinnedMaps>>, external: NftProxier<NftCli>, tc: bool },
    Nft(NftProxier<NftCli>),
}

/// A running datapath.
pub struct Datapath {
    active: Active,
    /// Why eBPF is not active, when the mode was Auto and it failed.
    pub fallback_reason: Option<String>,
    /// eBPF: which pinned links were adopted / (re)attached at start.
    pub start_report: Option<crate::ebpf::loader::EnsureReport>,
    /// eBPF: what the last map sync did (full converge after start, writes, deletes).
    pub last_ebpf_sync: Option<crate::ebpf::EbpfSyncReport>,
    syncs: u64,
    sync_errors: u64,
    frontends: usize,
}

/// Only external frontends, for the nft side-table in eBPF mode.
fn external_only(t: &ServiceTable) -> ServiceTable {
    ServiceTable {
        frontends: t.frontends.iter().filter(|(_, f)| f.kind.is_external()).map(|(k, f)| (*k, f.clone())).collect(),
        errors: vec![],
    }
}

impl Datapath {
    /// Starts (or adopts) the configured backend.
    pub fn start(cfg: &DatapathConfig) -> Result<Datapath, DatapathError> {
        let nft = || NftProxier::new(NftCli { netns: cfg.nft_netns.clone() }, &cfg.nft_table);
        let mut fallback_reason = None;
        let mut start_report = None;
        let active = match cfg.mode {
            Mode::Nft => Active::Nft(nft()),
            Mode::Ebpf | Mode::Auto => match SockLb::ensure(&cfg.pin_dir, &cfg.cgroup, cfg.uplink.as_ref()) {
                Ok((lb, maps, rep)) => {
                    tracing::info!(adopted = ?rep.adopted, attached = ?rep.attached, pin_dir = %cfg.pin_dir.display(), "eBPF socket-LB ready");
                    start_report = Some(rep);
                    Active::Ebpf {
                        lb,
                        proxier: Box::new(EbpfProxier::new(maps, cfg.node.clone())),
                        external: nft(),
                        tc: cfg.uplink.is_some(),
                    }
                }
                Err(e) if cfg.mode == Mode::Auto => {
                    tracing::warn!(error = %e, "eBPF datapath cannot load; falling back to nftables");
                    fallback_reason = Some(e.to_string());
                    Active::Nft(nft())
                }
                Err(e) => return Err(e.into()),
            },
        };
        Ok(Datapath {
            active,
            fallback_reason,
            start_report,
            last_ebpf_sync: None,
            syncs: 0,
            sync_errors: 0,
            frontends: 0,
        })
    }

    pub fn backend(&self) -> BackendKind {
        match self.active {
            Active::Ebpf { .. } => BackendKind::Ebpf,
            Active::Nft(_) => BackendKind::Nft,
        }
    }

    /// Converges the kernel to `table`. On error, the next call resyncs fully.
    pub fn sync(&mut self, table: &ServiceTable) -> Result<(), DatapathError> {
        self.syncs += 1;
        let res: Result<(), DatapathError> = match &mut self.active {
            Active::Ebpf { proxier, external, tc, .. } => match proxier.sync(table) {
                Ok(rep) => {
                    self.last_ebpf_sync = Some(rep);
                    let ext = if *tc { ServiceTable::default() } else { external_only(table) };
                    external.sync(&ext).map(|_| ()).map_err(DatapathError::from)
                }
                Err(e) => Err(e.into()),
            },
            Active::Nft(p) => p.sync(table).map(|_| ()).map_err(DatapathError::from),
        };
        match &res {
            Ok(()) => self.frontends = table.frontends.len(),
            Err(_) => self.sync_errors += 1,
        }
        res
    }

    /// Periodic tamper check and repair of kernel objects (the next `sync` rewrites content).
    pub fn check(&mut self) -> Result<(), DatapathError> {
        match &mut self.active {
            Active::Ebpf { lb, proxier, external, .. } => {
                external.check();
                let rep = lb.repair(proxier_maps(proxier))?;
                if !rep.attached.is_empty() || !rep.repinned.is_empty() {
                    tracing::warn!(attached = ?rep.attached, repinned = ?rep.repinned, "repaired eBPF pins");
                    proxier.request_full_sync();
                }
            }
            Active::Nft(p) => {
                p.check();
            }
        }
        Ok(())
    }

    /// Prometheus text exposition of the datapath's gauges and counters.
    pub fn metrics_text(&self) -> String {
        let active = self.backend();
        let mut s = String::from(
            "# HELP keelson_datapath_backend Which service datapath backend is active (1 = active).\n# TYPE keelson_datapath_backend gauge\n",
        );
        for b in [BackendKind::Ebpf, BackendKind::Nft] {
            s += &format!("keelson_datapath_backend{{backend=\"{}\"}} {}\n", b.name(), u8::from(b == active));
        }
        s += &format!(
            "# TYPE keelson_datapath_fallback gauge\nkeelson_datapath_fallback {}\n",
            u8::from(self.fallback_reason.is_some())
        );
        s += &format!("# TYPE keelson_datapath_frontends gauge\nkeelson_datapath_frontends {}\n", self.frontends);
        s += &format!("# TYPE keelson_datapath_syncs_total counter\nkeelson_datapath_syncs_total {}\n", self.syncs);
        s += &format!(
            "# TYPE keelson_datapath_sync_errors_total counter\nkeelson_datapath_sync_errors_total {}\n",
            self.sync_errors
        );
        s
    }
}

fn proxier_maps(p: &mut EbpfProxier<PinnedMaps>) -> &PinnedMaps {
    p.maps()
}
