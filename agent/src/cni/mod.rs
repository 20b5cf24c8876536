//! The CNI runtime: the agent as a CNI *caller*, like libcni.
//!
//! The network is the first valid config in the conf dir ([`config::load_from_dir`]), re-read on
//! every operation so a network plugin that installs its config after the agent started is
//! picked up. Plugins are executables found in the bin dirs and run with `CNI_*` variables and
//! the plugin config on stdin:
//!
//! - **ADD** runs the chain in order, feeding each plugin the previous result (`prevResult`) and
//!   the capabilities it declares (`runtimeConfig.portMappings`, …); the final result is cached.
//!   If a plugin fails, the chain is rolled back with a best-effort DEL so nothing leaks.
//! - **DEL** runs the chain in reverse with the cached result as `prevResult`. It works when the
//!   netns is gone (`CNI_NETNS` is then empty) and when nothing is cached, and is idempotent.
//! - **CHECK** runs the chain in order against the cached result (cniVersion ≥ 0.4.0).
//! - **GC** DELs cached attachments that are not in the caller's valid set (like libcni, for any
//!   version), then, for cniVersion ≥ 1.1.0, sends `GC` with `cni.dev/valid-attachments` so
//!   plugins can release what they track themselves.
//!
//! [`CniConfig::plugin_netns`] runs the plugins inside a given network namespace (`setns` between
//! fork and exec): tests and the multi-node e2e use it to run a whole "node" inside a netns
//! without touching the host's network.
//!
//! The wire types (results of every version, error objects, commands, version ordering) are
//! `keelson_cni::spec`'s, the same ones the plugin writes with: caller and plugin cannot disagree.

pub mod cache;
pub mod config;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

pub use cache::{CacheEntry, ResultCache};
pub use config::{NetworkConfigList, PluginConf, load_from_dir};
/// A plugin's error object (`{"code", "msg", "details"}`): the spec's error type.
pub use keelson_cni::spec::CniError as PluginError;
pub use keelson_cni::spec::{CniResult, Interface, IpConfig, RouteConfig};
use keelson_cni::spec::{Command, version_at_least};

/// What a chain (or one plugin of it) returned: the parsed result and the JSON exactly as the
/// plugin wrote it. The raw JSON is what the next plugin gets as `prevResult` and what the cache
/// keeps for CHECK/DEL, so fields the agent does not model (a plugin's extensions) survive.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainResult {
    pub result: CniResult,
    pub raw: Value,
}

impl ChainResult {
    /// Parses a plugin's result of any version (see [`CniResult::parse`]).
    pub fn parse(raw: Value) -> Result<ChainResult, PluginError> {
        Ok(ChainResult { result: CniResult::parse(&raw)?, raw })
    }

    /// The `cniVersion` the result was written in (0.1.0 when absent, as the spec says).
    pub fn cni_version(&self) -> &str {
        self.raw.get("cniVersion").and_then(Value::as_str).unwrap_or("0.1.0")
    }

    /// The pod's addresses, IPv4 first (see [`CniResult::pod_ips`]).
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        self.result.pod_ips()
    }
}

/// Errors of the CNI runtime, each with the file, plugin or attachment involved.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no valid CNI network config in {dir} (skipped: {skipped:?})")]
    NoConfig { dir: PathBuf, skipped: Vec<String> },
    #[error("CNI config {path}: {source}")]
    ConfigParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("CNI config {path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI cache entry {path}: {source}")]
    CacheParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid attachment: {reason}")]
    InvalidAttachment { reason: String },
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("CNI plugin {plugin} {command}: spawn: {source}")]
    Spawn {
        plugin: String,
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command} timed out after {after:?}")]
    Timeout { plugin: String, command: &'static str, after: Duration },
    #[error("CNI plugin {plugin} {command} failed: {error}")]
    Plugin { plugin: String, command: &'static str, error: PluginError },
    #[error("CNI plugin {plugin} {command} failed ({status}): {output}")]
    PluginFailed { plugin: String, command: &'static str, status: String, output: String },
    #[error("CNI plugin {plugin} {command}: bad result: {reason}")]
    BadResult { plugin: String, command: &'static str, reason: String },
    #[error("CNI {command} of {container_id}/{ifname}: {reason}")]
    Unsupported { command: &'static str, container_id: String, ifname: String, reason: String },
    #[error("netns {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: crate::netns::NetnsError,
    },
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;

/// Where the runtime finds configs and plugins, and where it keeps its cache.
#[derive(Debug, Clone)]
pub struct CniConfig {
    /// Directory of `.conflist`/`.conf`/`.json` network configs.
    pub conf_dir: PathBuf,
    /// Plugin directories, searched in order (also passed as `CNI_PATH`).
    pub bin_dirs: Vec<PathBuf>,
    /// Cache root; results are kept in `<cache_dir>/results`.
    pub cache_dir: PathBuf,
    /// Run plugins inside this network namespace instead of the agent's own.
    pub plugin_netns: Option<PathBuf>,
    /// Upper bound for one plugin execution; the plugin is killed when it is exceeded.
    pub exec_timeout: Duration,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            cache_dir: PathBuf::from("/var/lib/keelson/cni"),
            plugin_netns: None,
            exec_timeout: Duration::from_secs(60),
        }
    }
}

/// A hostPort mapping for the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp` (lower case, as the portmap plugin expects).
    pub protocol: String,
    pub host_ip: Option<String>,
}

impl PortMapping {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol.to_ascii_lowercase(),
        });
        if let (Some(ip), Some(obj)) = (&self.host_ip, v.as_object_mut()) {
            obj.insert("hostIP".into(), Value::String(ip.clone()));
        }
        v
    }
}

/// One pod's attachment to the network.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Attachment {
    /// The sandbox (pause) container id: `CNI_CONTAINERID` and `K8S_POD_INFRA_CONTAINER_ID`.
    pub container_id: String,
    /// The pod netns path. Required for ADD and CHECK; for DEL it may be `None` or point to a
    /// namespace that is already gone (`CNI_NETNS` is then empty).
    pub netns: Option<PathBuf>,
    /// Interface name in the pod, usually `eth0`.
    pub ifname: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub port_mappings: Vec<PortMapping>,
    /// Further capability values (`bandwidth`, `ips`, `mac`, …) passed as runtimeConfig to
    /// plugins that declare them.
    pub capability_args: BTreeMap<String, Value>,
}

impl Attachment {
    /// CNI_ARGS pairs, Kubernetes-style (as containerd's CRI sends them).
    pub fn cni_args(&self) -> Vec<(String, String)> {
        vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), self.pod_namespace.clone()),
            ("K8S_POD_NAME".into(), self.pod_name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), self.container_id.clone()),
            ("K8S_POD_UID".into(), self.pod_uid.clone()),
        ]
    }

    /// All capability values this attachment offers.
    pub fn capabilities(&self) -> BTreeMap<String, Value> {
        let mut caps = self.capability_args.clone();
        if !self.port_mappings.is_empty() {
            caps.insert(
                "portMappings".into(),
                Value::Array(self.port_mappings.iter().map(PortMapping::to_json).collect()),
            );
        }
        caps
    }

    /// The (container id, ifname) key of this attachment, for [`CniRuntime::gc`]'s valid set.
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey { container_id: self.container_id.clone(), ifname: self.ifname.clone() }
    }

    /// The netns path as `CNI_NETNS`, which must exist (ADD, CHECK).
    fn existing_netns(&self) -> Result<String> {
        match &self.netns {
            Some(p) if p.exists() => Ok(p.to_string_lossy().into_owned()),
            Some(p) => Err(CniError::InvalidAttachment { reason: format!("netns {} does not exist", p.display()) }),
            None => Err(CniError::InvalidAttachment { reason: "no netns given".into() }),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(CniError::InvalidAttachment { reason });
        if self.container_id.is_empty() || self.container_id.contains(['/', '\0']) {
            return bad(format!("container id {:?}", self.container_id));
        }
        if self.ifname.is_empty() || self.ifname.len() > 15 || self.ifname.contains(['/', ' ', ':', '\0']) {
            return bad(format!("interface name {:?}", self.ifname));
        }
        for (k, v) in self.cni_args() {
            if v.contains([';', '=']) {
                return bad(format!("CNI_ARGS value {k}={v:?} contains ';' or '='"));
            }
        }
        Ok(())
    }
}

/// Identifies an attachment: (container id, interface name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// What [`CniRuntime::gc`] did.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Stale attachments that were deleted.
    pub deleted: Vec<AttachmentKey>,
    /// Failures (stale DELs that failed stay cached and are retried by the next GC).
    pub errors: Vec<CniError>,
}

/// The CNI runtime. Cheap to share behind an `Arc`; operations on different attachments may
/// run concurrently (the reference plugins lock their own state).
#[derive(Debug, Clone)]
pub struct CniRuntime {
    config: CniConfig,
    cache: ResultCache,
}

impl CniRuntime {
    pub fn new(config: CniConfig) -> Self {
        let cache = ResultCache::new(&config.cache_dir);
        CniRuntime { config, cache }
    }

    pub fn config(&self) -> &CniConfig {
        &self.config
    }

    /// The current network (the first valid config in the conf dir). Its presence is what makes
    /// the node's network "ready".
    pub fn load_network(&self) -> Result<NetworkConfigList> {
        load_from_dir(&self.config.conf_dir)
    }

    /// Cached attachments (all networks).
    pub fn cached_attachments(&self) -> Result<Vec<CacheEntry>> {
        self.cache.list()
    }

    /// The cached result of an attachment on the current network, if any: how the agent learns
    /// a pod's IPs again after a restart without re-running ADD (which is not idempotent for
    /// most plugins: bridge refuses an existing interface).
    pub fn cached_result(&self, a: &Attachment) -> Result<Option<ChainResult>> {
        a.validate()?;
        let list = self.load_network()?;
        let Some(entry) = self.cache.read(&list.name, &a.container_id, &a.ifname)? else { return Ok(None) };
        ChainResult::parse(entry.result).map(Some).map_err(|e| CniError::BadResult {
            plugin: "<cache>".into(),
            command: "ADD",
            reason: e.to_string(),
        })
    }

    /// Attaches a pod: runs ADD over the chain and caches the result.
    pub async fn add(&self, a: &Attachment) -> Result<ChainResult> {
        a.validate()?;
        let list = self.load_network()?;
        let span =
            tracing::info_span!("cni_add", network = %list.name, container_id = %a.container_id, ifname = %a.ifname);
        async {
            let netns = a.existing_netns()?;
            let caps = a.capabilities();
            let mut prev: Option<Value> = None;
            for plugin in &list.plugins {
                let conf = config::build_plugin_config(&list, plugin, prev.as_ref(), &caps, &[]);
                let out = match self.exec(plugin, Command::Add, Some(a), &netns, &conf).await {
                    Ok(out) => out,
                    Err(e) => {
                        tracing::warn!(plugin = %plugin.plugin_type, error = %e, "CNI ADD failed; rolling back");
                        if let Err(del) = self.run_del(&list, a, &netns, &caps, None).await {
                            tracing::warn!(error = %del, "rollback DEL failed");
                        }
                        return Err(e);
                    }
                };
                prev = Some(self.parse_output(plugin, Command::Add, &out)?.raw);
            }
            let raw = prev.unwrap_or(Value::Null);
            let result = ChainResult::parse(raw.clone()).map_err(|e| CniError::BadResult {
                plugin: list.plugins.last().map(|p| p.plugin_type.clone()).unwrap_or_default(),
                command: "ADD",
                reason: e.to_string(),
            })?;
            self.cache.write(&CacheEntry::new(
                &a.container_id,
                &a.ifname,
                &list.name,
                &netns,
                a.cni_args(),
                caps,
                list.raw.clone(),
                raw,
            ))?;
            tracing::info!(ips = ?result.pod_ips(), "pod attached");
            Ok(result)
        }
        .instrument(span)
        .await
    }

    /// Detaches a pod: DEL over the chain in reverse, then drops the cache entry. Idempotent;
    /// works when the netns is already gone and when no result is cached.
    pub async fn del(&self, a: &Attachment) -> Result<()> {
        a.validate()?;
        let current = self.load_network();
        let cached = match &current {
            Ok(list) => self.cache.read(&list.name, &a.container_id, &a.ifname)?,
            Err(_) => None,
        };
        let cached = match cached {
            Some(c) => Some(c),
            None => self.cache.find(&a.container_id, &a.ifname)?,
        };
        // The network the pod was attached to: the current one unless the cache says otherwise.
        let list = match (&cached, current) {
            (Some(c), Ok(list)) if c.network_name == list.name => list,
            (Some(c), _) => config::parse_conflist(Path::new("<cache>"), c.config.to_string().as_bytes())?,
            (None, Ok(list)) => list,
            (None, Err(e)) => return Err(e),
        };
        let span =
            tracing::info_span!("cni_del", network = %list.name, container_id = %a.container_id, ifname = %a.ifname);
        async {
            let netns = match &a.netns {
                Some(p) if !p.as_os_str().is_empty() && p.exists() => p.to_string_lossy().into_owned(),
                _ => String::new(),
            };
            let mut caps = a.capabilities();
            if let Some(c) = &cached {
                for (k, v) in &c.capability_args {
                    caps.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            let prev = cached.as_ref().map(|c| &c.result).filter(|r| !r.is_null());
            self.run_del(&list, a, &netns, &caps, prev).await?;
            self.cache.remove(&list.name, &a.container_id, &a.ifname)?;
            tracing::info!("pod detached");
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn run_del(
        &self,
        list: &NetworkConfigList,
        a: &Attachment,
        netns: &str,
        caps: &BTreeMap<String, Value>,
        cached_result: Option<&Value>,
    ) -> Result<()> {
        // prevResult on DEL exists from spec 0.4.0 on.
        let prev = cached_result.filter(|_| version_at_least(&list.cni_version, "0.4.0"));
        for plugin in list.plugins.iter().rev() {
            let conf = config::build_plugin_config(list, plugin, prev, caps, &[]);
            self.exec(plugin, Command::Del, Some(a), netns, &conf).await?;
        }
        Ok(())
    }

    /// Verifies an attachment with CHECK against the cached result. Not supported before
    /// cniVersion 0.4.0; skipped (Ok) when the list sets `disableCheck`.
    pub async fn check(&self, a: &Attachment) -> Result<()> {
        a.validate()?;
        let list = self.load_network()?;
        let unsupported = |reason: String| CniError::Unsupported {
            command: "CHECK",
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            reason,
        };
        if !version_at_least(&list.cni_version, "0.4.0") {
            return Err(unsupported(format!("cniVersion {} has no CHECK", list.cni_version)));
        }
        if list.disable_check {
            return Ok(());
        }
        let cached = self
            .cache
            .read(&list.name, &a.container_id, &a.ifname)?
            .ok_or_else(|| unsupported("no cached result for this attachment".into()))?;
        let netns = a.existing_netns()?;
        let span = tracing::info_span!("cni_check", network = %list.name, container_id = %a.container_id);
        async {
            let mut caps = a.capabilities();
            for (k, v) in &cached.capability_args {
                caps.entry(k.clone()).or_insert_with(|| v.clone());
            }
            for plugin in &list.plugins {
                let conf = config::build_plugin_config(&list, plugin, Some(&cached.result), &caps, &[]);
                self.exec(plugin, Command::Check, Some(a), &netns, &conf).await?;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Garbage-collects attachments not in `valid` (`(container id, ifname)` pairs of the
    /// sandboxes that exist; call at agent start). Every failure is logged; the first one is
    /// returned after all stale attachments were tried. See [`CniRuntime::gc_report`].
    pub async fn gc(&self, valid: &[(String, String)]) -> Result<()> {
        let keys: Vec<AttachmentKey> =
            valid.iter().map(|(c, i)| AttachmentKey { container_id: c.clone(), ifname: i.clone() }).collect();
        let report = self.gc_report(&keys).await?;
        for e in &report.errors {
            tracing::warn!(error = %e, "CNI GC");
        }
        match report.errors.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    /// The GC behind [`CniRuntime::gc`], reporting what was deleted and what failed: DELs each
    /// stale cached attachment (with its cached netns, args and config), then sends GC with
    /// `cni.dev/valid-attachments` when the current network's cniVersion is ≥ 1.1.0.
    pub async fn gc_report(&self, valid: &[AttachmentKey]) -> Result<GcReport> {
        let span = tracing::info_span!("cni_gc", valid = valid.len());
        async {
            let mut report = GcReport::default();
            let current = self.load_network();
            for entry in self.cache.list()? {
                let key = AttachmentKey { container_id: entry.container_id.clone(), ifname: entry.if_name.clone() };
                if valid.contains(&key) {
                    continue;
                }
                let arg = |k: &str| {
                    entry.cni_args.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default()
                };
                let a = Attachment {
                    container_id: entry.container_id.clone(),
                    netns: Some(PathBuf::from(&entry.netns)).filter(|p| !p.as_os_str().is_empty()),
                    ifname: entry.if_name.clone(),
                    pod_name: arg("K8S_POD_NAME"),
                    pod_namespace: arg("K8S_POD_NAMESPACE"),
                    pod_uid: arg("K8S_POD_UID"),
                    port_mappings: Vec::new(),
                    capability_args: entry.capability_args.clone(),
                };
                match self.del(&a).await {
                    Ok(()) => {
                        tracing::info!(container_id = %key.container_id, ifname = %key.ifname, "stale attachment deleted");
                        report.deleted.push(key);
                    }
                    Err(e) => report.errors.push(e),
                }
            }
            match current {
                Ok(list) if version_at_least(&list.cni_version, "1.1.0") && !list.disable_gc => {
                    let attachments: Vec<Value> =
                        valid.iter().map(|k| json!({"containerID": k.container_id, "ifname": k.ifname})).collect();
                    let extra = [("cni.dev/valid-attachments", Value::Array(attachments))];
                    for plugin in &list.plugins {
                        let conf = config::build_plugin_config(&list, plugin, None, &BTreeMap::new(), &extra);
                        if let Err(e) = self.exec(plugin, Command::Gc, None, "", &conf).await {
                            report.errors.push(e);
                        }
                    }
                }
                Ok(_) => {}
                Err(CniError::NoConfig { .. }) => {}
                Err(e) => report.errors.push(e),
            }
            Ok(report)
        }
        .instrument(span)
        .await
    }

    fn find_plugin(&self, plugin: &str) -> Result<PathBuf> {
        self.config
            .bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::PluginNotFound { plugin: plugin.to_string(), dirs: self.config.bin_dirs.clone() })
    }

    fn parse_output(&self, plugin: &PluginConf, command: Command, out: &[u8]) -> Result<ChainResult> {
        let bad = |reason: String| CniError::BadResult {
            plugin: plugin.plugin_type.clone(),
            command: command.as_str(),
            reason,
        };
        let raw: Value = serde_json::from_slice(out).map_err(|e| bad(format!("not JSON: {e}")))?;
        ChainResult::parse(raw).map_err(|e| bad(e.to_string()))
    }

    /// Executes one plugin; returns its stdout on success.
    async fn exec(
        &self,
        plugin: &PluginConf,
        command: Command,
        a: Option<&Attachment>,
        netns: &str,
        conf: &Value,
    ) -> Result<Vec<u8>> {
        let name = plugin.plugin_type.clone();
        let path = self.find_plugin(&name)?;
        let stdin = serde_json::to_vec(conf).map_err(|e| CniError::InvalidConfig {
            path: PathBuf::from(&name),
            reason: format!("cannot serialize plugin config: {e}"),
        })?;
        let cni_path = std::env::join_paths(&self.config.bin_dirs)
            .map_err(|e| CniError::InvalidConfig { path: PathBuf::from("bin_dirs"), reason: e.to_string() })?;
        let mut cmd = tokio::process::Command::new(&path);
        cmd.env("CNI_COMMAND", command.as_str()).env("CNI_PATH", cni_path);
        match a {
            Some(a) => {
                let args: Vec<String> = a.cni_args().iter().map(|(k, v)| format!("{k}={v}")).collect();
                cmd.env("CNI_CONTAINERID", &a.container_id)
                    .env("CNI_NETNS", netns)
                    .env("CNI_IFNAME", &a.ifname)
                    .env("CNI_ARGS", args.join(";"));
            }
            None => {
                cmd.env_remove("CNI_CONTAINERID")
                    .env_remove("CNI_NETNS")
                    .env_remove("CNI_IFNAME")
                    .env_remove("CNI_ARGS");
            }
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        // Held open until the child has been spawned (setns happens between fork and exec).
        let plugin_ns = match &self.config.plugin_netns {
            Some(p) => Some(crate::netns::open(p).map_err(|source| CniError::Netns { path: p.clone(), source })?),
            None => None,
        };
        if let Some(ns) = &plugin_ns {
            crate::netns::tokio_pre_exec_setns(&mut cmd, ns);
        }
        let span = tracing::debug_span!("cni_exec", plugin = %name, command = command.as_str());
        let started = std::time::Instant::now();
        let run = async {
            // ETXTBSY: the plugin binary is being installed (or another thread of ours forked
            // while holding it open for writing); it resolves within milliseconds.
            let mut attempt = 0;
            let mut child = loop {
                match cmd.spawn() {
                    Ok(c) => break c,
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 5 => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                    }
                    Err(source) => {
                        return Err(CniError::Spawn { plugin: name.clone(), command: command.as_str(), source });
                    }
                }
            };
            drop(plugin_ns);
            let mut child_stdin = child.stdin.take();
            let write = async {
                if let Some(mut s) = child_stdin.take() {
                    // A plugin may exit without reading stdin; its exit status tells what happened.
                    let _ = s.write_all(&stdin).await;
                }
            };
            let (_, output) = tokio::join!(write, child.wait_with_output());
            output.map_err(|source| CniError::Spawn { plugin: name.clone(), command: command.as_str(), source })
        };
        let output = match tokio::time::timeout(self.config.exec_timeout, run.instrument(span)).await {
            Ok(out) => out?,
            Err(_) => {
                return Err(CniError::Timeout {
                    plugin: name,
                    command: command.as_str(),
                    after: self.config.exec_timeout,
                });
            }
        };
        tracing::debug!(plugin = %name, command = command.as_str(), elapsed = ?started.elapsed(), status = %output.status, "CNI plugin ran");
        if output.status.success() {
            return Ok(output.stdout);
        }
        if let Some(error) = PluginError::parse(&output.stdout).or_else(|| PluginError::parse(&output.stderr)) {
            return Err(CniError::Plugin { plugin: name, command: command.as_str(), error });
        }
        let mut text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !stderr.trim().is_empty() {
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(stderr.trim());
        }
        Err(CniError::PluginFailed {
            plugin: name,
            command: command.as_str(),
            status: output.status.to_string(),
            output: text,
        })
    }
}
