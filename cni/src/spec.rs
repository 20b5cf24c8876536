//! CNI 1.1.0 wire types: the network configuration on stdin, the `CNI_*` environment, results and
//! errors, each rendered in the `cniVersion` the runtime asked for.
//!
//! Both sides of the protocol use them: the plugin reads configs and writes results, and the
//! agent's CNI caller (a runtime, like libcni) reads any plugin's result ([`CniResult::parse`],
//! every version down to 0.1.0) and error object ([`CniError::parse`]) with the same types, so the
//! two cannot drift apart.
//!
//! Everything here is pure (no I/O besides reading the given environment map) so that parsing and
//! validation are unit-tested without root. The plugin refuses bad input *before* touching the
//! kernel or the IPAM store, which is what keeps a rejected ADD from leaving anything behind.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Versions this plugin can read configs in and render results for (VERSION's `supportedVersions`).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version, used when no usable version is known (e.g. the config did not parse).
pub const LATEST_VERSION: &str = "1.1.0";

/// Reserved CNI error codes (spec §"Error") and keelson's plugin-specific codes (≥ 100).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_READY: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// The node subnet has no free address left.
    pub const IPAM_EXHAUSTED: u32 = 100;
    /// `CNI_IFNAME` already exists in the pod netns (and is not ours to reuse).
    pub const INTERFACE_EXISTS: u32 = 101;
    /// A netlink request failed.
    pub const NETLINK: u32 = 102;
    /// Loading the plugin's nft table failed.
    pub const NFTABLES: u32 = 103;
    /// The IPAM store (data dir, lock, allocation files) failed.
    pub const IPAM_STORE: u32 = 104;
    /// CHECK found the pod's wiring differs from what ADD created.
    pub const CHECK_FAILED: u32 = 105;
}

/// A spec error: printed as JSON on stdout with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", details_suffix(details))]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    /// The spec's error object in `version`.
    pub fn to_json(&self, version: &str) -> Value {
        serde_json::json!({ "cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details })
    }

    /// Reads an error object a plugin printed (`{"code": 7, "msg": …, "details": …}`); `None` if
    /// the bytes are not one (not JSON, or no numeric `code`).
    pub fn parse(bytes: &[u8]) -> Option<CniError> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        let code = u32::try_from(v.get("code")?.as_u64()?).ok()?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        Some(CniError { code, msg: text("msg"), details: text("details") })
    }
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() { String::new() } else { format!(" ({details})") }
}

/// The CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// The `CNI_*` environment, validated per command (spec §"Parameters").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Env {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: Vec<(String, String)>,
}

/// Reads `CNI_COMMAND` (always required).
pub fn command_from_env(env: &BTreeMap<String, String>) -> Result<Command, CniError> {
    let raw = env.get("CNI_COMMAND").ok_or_else(|| {
        CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set", "the runtime must set CNI_COMMAND")
    })?;
    Command::parse(raw).ok_or_else(|| CniError::new(code::INVALID_ENV, "unknown CNI_COMMAND", raw.clone()))
}

fn required(env: &BTreeMap<String, String>, key: &str) -> Result<String, CniError> {
    match env.get(key) {
        Some(v) if !v.is_empty() => Ok(v.clone()),
        _ => Err(CniError::new(code::INVALID_ENV, format!("{key} is required"), format!("{key} is missing or empty"))),
    }
}

/// Validates the environment for `cmd`: ADD/CHECK need id, netns and ifname; DEL needs id and ifname
/// (netns may be gone); GC/STATUS/VERSION need nothing.
pub fn env_for(cmd: Command, env: &BTreeMap<String, String>) -> Result<Env, CniError> {
    let mut out = Env::default();
    match cmd {
        Command::Add | Command::Check | Command::Del => {
            out.container_id = required(env, "CNI_CONTAINERID")?;
            validate_container_id(&out.container_id)?;
            out.ifname = required(env, "CNI_IFNAME")?;
            validate_ifname(&out.ifname)?;
            if cmd == Command::Del {
                out.netns = env.get("CNI_NETNS").filter(|s| !s.is_empty()).map(PathBuf::from);
            } else {
                out.netns = Some(PathBuf::from(required(env, "CNI_NETNS")?));
            }
            if let Some(args) = env.get("CNI_ARGS") {
                out.args = parse_cni_args(args)?;
            }
        }
        Command::Gc | Command::Status | Command::Version => {}
    }
    Ok(out)
}

/// Container ids: the spec requires alphanumerics plus `_ . -` and a non-empty value.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(CniError::new(code::INVALID_ENV, "invalid CNI_CONTAINERID", id.to_string())) }
}

/// Interface names: 1–15 bytes, no `/`, whitespace or `:`, not `.`/`..` (kernel `dev_valid_name`).
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
    if ok { Ok(()) } else { Err(CniError::new(code::INVALID_ENV, "invalid CNI_IFNAME", name.to_string())) }
}

/// `CNI_ARGS`: `K=V;K2=V2`.
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    raw.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CniError::new(code::INVALID_ENV, "invalid CNI_ARGS", p.to_string()))
        })
        .collect()
}

/// The plugin's network configuration (stdin).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Node bridge name (default `cni0`).
    #[serde(default)]
    pub bridge: Option<String>,
    /// MTU of the bridge and both veth ends (default: from the subnet file, else 1500).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Hairpin mode on the bridge port (default true: a pod can reach itself through a Service VIP).
    #[serde(default)]
    pub hairpin_mode: Option<bool>,
    /// Masquerade traffic from pods leaving `clusterCIDR` (default false).
    #[serde(default)]
    pub ip_masq: Option<bool>,
    /// The whole pod network; traffic to it is never masqueraded (default: the subnet file's network,
    /// else the node subnet).
    #[serde(default, rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    #[serde(default)]
    pub ipam: IpamConf,
    #[serde(default)]
    pub dns: Option<Value>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default)]
    pub runtime_config: Option<Value>,
    /// GC: the attachments that are still valid.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// IPAM section: a static node subnet or a subnet file written by the agent, plus the data dir.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    #[serde(default, rename = "type")]
    pub ipam_type: Option<String>,
    /// Node pod subnet, e.g. `10.244.1.0/24`.
    #[serde(default)]
    pub subnet: Option<String>,
    /// flannel-style `subnet.env` (see [`crate::ipam::SubnetFile`]).
    #[serde(default)]
    pub subnet_file: Option<PathBuf>,
    /// Where allocations live (default `/var/lib/keelson/cni/networks`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Parses stdin into a config, with spec error codes for each way it can be wrong.
pub fn parse_conf(bytes: &[u8]) -> Result<NetConf, CniError> {
    let raw: Value = serde_json::from_slice(bytes)
        .map_err(|e| CniError::new(code::DECODE_FAILURE, "malformed network configuration", e.to_string()))?;
    let conf: NetConf = serde_json::from_value(raw)
        .map_err(|e| CniError::new(code::INVALID_NETWORK_CONFIG, "invalid network configuration", e.to_string()))?;
    check_version(&conf.cni_version)?;
    if conf.name.is_empty() {
        return Err(CniError::new(code::INVALID_NETWORK_CONFIG, "network name is empty", "`name` is required"));
    }
    if let Some(b) = &conf.bridge {
        validate_ifname(b)
            .map_err(|_| CniError::new(code::INVALID_NETWORK_CONFIG, "invalid bridge name", b.clone()))?;
    }
    if let Some(mtu) = conf.mtu
        && !(68..=65535).contains(&mtu)
    {
        return Err(CniError::new(code::INVALID_NETWORK_CONFIG, "invalid mtu", format!("{mtu} not in 68..=65535")));
    }
    if conf.name.contains('/') || conf.name.starts_with('.') {
        return Err(CniError::new(code::INVALID_NETWORK_CONFIG, "invalid network name", conf.name.clone()));
    }
    Ok(conf)
}

/// Errors with code 1 unless `v` is one of [`SUPPORTED_VERSIONS`].
pub fn check_version(v: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!("config version {v:?}; plugin supports {}", SUPPORTED_VERSIONS.join(", ")),
        ))
    }
}

/// Verbs newer than the config's version are refused (code 1): CHECK exists since 0.4.0, GC and
/// STATUS since 1.1.0.
pub fn check_command_version(cmd: Command, version: &str) -> Result<(), CniError> {
    let min = match cmd {
        Command::Check => "0.4.0",
        Command::Gc | Command::Status => "1.1.0",
        _ => return Ok(()),
    };
    let idx = |v: &str| SUPPORTED_VERSIONS.iter().position(|x| *x == v);
    if idx(version) < idx(min) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{} needs cniVersion {min} or newer", cmd.as_str()),
            format!("config cniVersion is {version}"),
        ));
    }
    Ok(())
}

/// Orders CNI versions numerically ("0.3.1" < "0.4.0" < "1.0.0" < "1.1.0" < "1.10.0"); missing or
/// non-numeric parts count as 0.
pub fn version_tuple(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.trim().parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// True if version `v >= min`.
pub fn version_at_least(v: &str, min: &str) -> bool {
    version_tuple(v) >= version_tuple(min)
}

/// Parses an IPv4 CIDR for config fields (code 7 on failure).
pub fn parse_v4_net(field: &str, s: &str) -> Result<Ipv4Net, CniError> {
    s.parse::<Ipv4Net>()
        .map_err(|e| CniError::new(code::INVALID_NETWORK_CONFIG, format!("invalid {field}"), format!("{s:?}: {e}")))
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: ipnet::IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_as_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub dst: ipnet::IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_as_none")]
    pub gw: Option<IpAddr>,
}

/// Some plugins write `"gateway": ""` for "none".
fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    match Option::<String>::deserialize(d)?.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// A version-independent result; [`CniResult::to_json`] renders it for a given cniVersion.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteConfig>,
    pub dns: Value,
}

impl CniResult {
    /// Renders the result in `version` (0.3.x/0.4.0 carry `"version": "4"` per IP; 1.1.0 adds the
    /// interface MTU, which older versions do not know).
    pub fn to_json(&self, version: &str) -> Value {
        let legacy = version.starts_with("0.");
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = serde_json::json!({ "name": i.name, "mac": i.mac });
                if let Some(s) = &i.sandbox {
                    v["sandbox"] = Value::from(s.clone());
                }
                if let (Some(m), "1.1.0") = (i.mtu, version) {
                    v["mtu"] = Value::from(m);
                }
                v
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = serde_json::json!({ "address": ip.address.to_string() });
                if legacy {
                    v["version"] = Value::from(if ip.address.addr().is_ipv4() { "4" } else { "6" });
                }
                if let Some(g) = ip.gateway {
                    v["gateway"] = Value::from(g.to_string());
                }
                if let Some(i) = ip.interface {
                    v["interface"] = Value::from(i);
                }
                v
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut v = serde_json::json!({ "dst": r.dst.to_string() });
                if let Some(g) = r.gw {
                    v["gw"] = Value::from(g.to_string());
                }
                v
            })
            .collect();
        let dns = if self.dns.is_null() { serde_json::json!({}) } else { self.dns.clone() };
        serde_json::json!({ "cniVersion": version, "interfaces": interfaces, "ips": ips, "routes": routes, "dns": dns })
    }

    /// Parses a `prevResult` (any supported version) into the neutral form; see [`CniResult::parse`].
    pub fn from_prev(v: &Value) -> Result<CniResult, CniError> {
        Self::parse(v)
    }

    /// Parses a result of any version a plugin may print: 0.1.x/0.2.x (`ip4`/`ip6` blocks, no
    /// interfaces; a missing `cniVersion` means 0.1.0) and 0.3.0–1.1.x (`interfaces`, `ips` with
    /// their interface index checked, `routes`). Unknown fields (0.3.x's per-IP `version`) are
    /// ignored. Errors are code 6 (decode failure).
    pub fn parse(v: &Value) -> Result<CniResult, CniError> {
        let bad = |what: &str, e: String| CniError::new(code::DECODE_FAILURE, format!("invalid result {what}"), e);
        if !v.is_object() {
            return Err(bad("", "not a JSON object".into()));
        }
        fn field<T: serde::de::DeserializeOwned>(v: &Value, key: &str) -> Result<Vec<T>, String> {
            match v.get(key) {
                Some(x) if !x.is_null() => serde_json::from_value(x.clone()).map_err(|e| e.to_string()),
                _ => Ok(Vec::new()),
            }
        }
        let dns = v.get("dns").cloned().unwrap_or(Value::Null);
        let version = v.get("cniVersion").and_then(Value::as_str).unwrap_or("0.1.0");
        if !version_at_least(version, "0.3.0") {
            // {"ip4": {"ip": "10.0.0.2/24", "gateway": "…", "routes": […]}, "ip6": {…}}
            #[derive(Deserialize)]
            struct Legacy {
                ip: ipnet::IpNet,
                #[serde(default, deserialize_with = "empty_as_none")]
                gateway: Option<IpAddr>,
                #[serde(default)]
                routes: Vec<RouteConfig>,
            }
            let mut out = CniResult { dns, ..CniResult::default() };
            for key in ["ip4", "ip6"] {
                let Some(block) = v.get(key).filter(|b| !b.is_null()) else { continue };
                let l: Legacy = serde_json::from_value(block.clone()).map_err(|e| bad(key, e.to_string()))?;
                out.ips.push(IpConfig { address: l.ip, gateway: l.gateway, interface: None });
                out.routes.extend(l.routes);
            }
            return Ok(out);
        }
        let interfaces: Vec<Interface> = field(v, "interfaces").map_err(|e| bad("interfaces", e))?;
        let ips: Vec<IpConfig> = field(v, "ips").map_err(|e| bad("ips", e))?;
        let routes: Vec<RouteConfig> = field(v, "routes").map_err(|e| bad("routes", e))?;
        if let Some(i) = ips.iter().filter_map(|ip| ip.interface).find(|i| *i >= interfaces.len()) {
            return Err(bad("ips", format!("ip refers to interface {i} of {}", interfaces.len())));
        }
        Ok(CniResult { interfaces, ips, routes, dns })
    }

    /// The pod's addresses: IPs on a sandbox (container-side) interface or on no interface at all,
    /// IPv4 first, without duplicates. Host-side IPs (the bridge's) are not the pod's.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(|ip| match ip.interface.and_then(|i| self.interfaces.get(i)) {
                Some(iface) => iface.sandbox.as_deref().is_some_and(|s| !s.is_empty()),
                None => true,
            })
            .map(|ip| ip.address.addr())
            .collect();
        out.sort_by_key(IpAddr::is_ipv6);
        out.dedup();
        out
    }
}

/// VERSION's answer.
pub fn version_json(config_version: Option<&str>) -> Value {
    let v = config_version.filter(|v| SUPPORTED_VERSIONS.contains(v)).unwrap_or(LATEST_VERSION);
    serde_json::json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS })
}

/// The first usable address of a subnet: the gateway (bridge address).
pub fn gateway_of(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).saturating_add(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn malformed_json_is_decode_failure() {
        let e = parse_conf(b"{not json").unwrap_err();
        assert_eq!(e.code, code::DECODE_FAILURE);
    }

    #[test]
    fn missing_fields_are_invalid_config() {
        let e = parse_conf(br#"{"cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
    }

    #[test]
    fn unsupported_version_is_code_1() {
        let e = parse_conf(br#"{"cniVersion":"9.9.9","name":"n","type":"keelson-cni"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.details.contains("1.1.0"));
    }

    #[test]
    fn bad_mtu_and_bridge_rejected() {
        let e = parse_conf(br#"{"cniVersion":"1.1.0","name":"n","type":"k","mtu":10}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
        let e = parse_conf(br#"{"cniVersion":"1.1.0","name":"n","type":"k","bridge":"a/b"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
        let e = parse_conf(br#"{"cniVersion":"1.1.0","name":"../x","type":"k"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
    }

    #[test]
    fn full_config_parses() {
        let c = parse_conf(
            br#"{"cniVersion":"1.1.0","name":"kn","type":"keelson-cni","bridge":"kb0","mtu":1450,"ipMasq":true,
                "clusterCIDR":"10.244.0.0/16","ipam":{"subnet":"10.244.1.0/24","dataDir":"/tmp/x"},
                "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.bridge.as_deref(), Some("kb0"));
        assert_eq!(c.ip_masq, Some(true));
        assert_eq!(c.ipam.subnet.as_deref(), Some("10.244.1.0/24"));
        assert_eq!(c.valid_attachments.unwrap(), vec![Attachment { container_id: "c1".into(), ifname: "eth0".into() }]);
    }

    #[test]
    fn env_validation_per_command() {
        let e = command_from_env(&env(&[])).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert_eq!(command_from_env(&env(&[("CNI_COMMAND", "GC")])).unwrap(), Command::Gc);
        assert_eq!(command_from_env(&env(&[("CNI_COMMAND", "NOPE")])).unwrap_err().code, code::INVALID_ENV);

        let add = env(&[("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]);
        assert_eq!(env_for(Command::Add, &add).unwrap_err().code, code::INVALID_ENV, "netns required for ADD");
        let del = env_for(Command::Del, &add).unwrap();
        assert_eq!(del.netns, None, "DEL works without a netns");
        let bad = env(&[("CNI_CONTAINERID", "a b"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/x")]);
        assert_eq!(env_for(Command::Add, &bad).unwrap_err().code, code::INVALID_ENV);
        let long = env(&[("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "0123456789abcdef"), ("CNI_NETNS", "/x")]);
        assert_eq!(env_for(Command::Add, &long).unwrap_err().code, code::INVALID_ENV);
        let args = env(&[
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
            ("CNI_ARGS", "K8S_POD_NAME=p;IgnoreUnknown=1"),
        ]);
        assert_eq!(env_for(Command::Add, &args).unwrap().args.len(), 2);
        assert!(parse_cni_args("novalue").is_err());
    }

    #[test]
    fn result_rendered_per_version() {
        let r = CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                mtu: Some(1450),
                sandbox: Some("/var/run/netns/x".into()),
            }],
            ips: vec![IpConfig {
                address: "10.1.0.2/24".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![RouteConfig { dst: "0.0.0.0/0".parse().unwrap(), gw: Some("10.1.0.1".parse().unwrap()) }],
            dns: Value::Null,
        };
        let old = r.to_json("0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let new = r.to_json("1.1.0");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][0]["mtu"], 1450);
        assert_eq!(new["cniVersion"], "1.1.0");
        assert_eq!(CniResult::from_prev(&new).unwrap().ips, r.ips);
        assert_eq!(CniResult::from_prev(&old).unwrap().routes, r.routes);
    }

    #[test]
    fn verbs_gated_by_version() {
        assert!(check_command_version(Command::Check, "0.3.1").is_err());
        assert!(check_command_version(Command::Check, "0.4.0").is_ok());
        assert_eq!(check_command_version(Command::Gc, "1.0.0").unwrap_err().code, code::INCOMPATIBLE_VERSION);
        assert!(check_command_version(Command::Status, "1.1.0").is_ok());
        assert!(check_command_version(Command::Add, "0.3.0").is_ok());
    }

    #[test]
    fn version_answer() {
        assert_eq!(version_json(Some("0.4.0"))["cniVersion"], "0.4.0");
        assert_eq!(version_json(Some("7"))["cniVersion"], LATEST_VERSION);
        assert_eq!(version_json(None)["supportedVersions"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn error_json_shape() {
        let e = CniError::new(code::IPAM_EXHAUSTED, "no free address", "10.0.0.0/30");
        let j = e.to_json("1.0.0");
        assert_eq!(j["code"], 100);
        assert_eq!(j["msg"], "no free address");
        assert_eq!(j["cniVersion"], "1.0.0");
    }

    #[test]
    fn results_of_every_version_parse() {
        let v1 = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/p1"}
            ],
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
                    {"address": "fd00::5/64", "interface": 2, "gateway": ""}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "10.96.0.0/12"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
        });
        let r = CniResult::parse(&v1).unwrap();
        assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("/run/netns/p1"));
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/24", "host bits are kept");
        assert_eq!(r.ips[1].gateway, None, "empty gateway is none");
        assert_eq!(r.routes[1].gw, None);
        assert_eq!(r.dns["nameservers"][0], "10.96.0.10");
        let want: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        assert_eq!(r.pod_ips(), want);

        let v03 = serde_json::json!({"cniVersion": "0.3.1", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"version": "4", "address": "10.2.0.9/16", "interface": 0}]});
        assert_eq!(CniResult::parse(&v03).unwrap().ips[0].address.prefix_len(), 16);

        let legacy = serde_json::json!({"cniVersion": "0.2.0",
            "ip4": {"ip": "10.3.0.4/24", "gateway": "10.3.0.1", "routes": [{"dst": "0.0.0.0/0"}]}, "dns": {}});
        let r = CniResult::parse(&legacy).unwrap();
        assert_eq!(r.pod_ips(), vec!["10.3.0.4".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.ips[0].gateway, Some("10.3.0.1".parse().unwrap()));
        let unversioned = serde_json::json!({"ip6": {"ip": "fd00::7/64"}});
        assert_eq!(CniResult::parse(&unversioned).unwrap().pod_ips(), vec!["fd00::7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn host_side_ips_are_not_pod_ips() {
        let raw = serde_json::json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/x"}, {"name": "e1", "sandbox": ""}],
            "ips": [{"address": "10.1.0.1/24", "interface": 0}, {"address": "10.1.0.7/24", "interface": 1},
                    {"address": "10.1.0.8/24", "interface": 2}]
        });
        assert_eq!(CniResult::parse(&raw).unwrap().pod_ips(), vec!["10.1.0.7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn malformed_results_are_rejected() {
        use serde_json::json;
        for bad in [
            json!([]),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/33"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "interface": 3}]}),
            json!({"cniVersion": "1.0.0", "routes": [{"dst": "nope"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "gateway": "x"}]}),
            json!({"cniVersion": "0.2.0", "ip4": {"ip": "nope"}}),
        ] {
            assert_eq!(CniResult::parse(&bad).unwrap_err().code, code::DECODE_FAILURE, "{bad}");
        }
    }

    #[test]
    fn error_objects_are_read_back() {
        let e =
            CniError::parse(br#"{"cniVersion":"1.0.0","code":11,"msg":"try again","details":"lock held"}"#).unwrap();
        assert_eq!(e, CniError::new(11, "try again", "lock held"));
        assert_eq!(e.to_string(), "CNI error 11: try again (lock held)");
        assert_eq!(CniError::new(7, "bad", "").to_string(), "CNI error 7: bad");
        assert_eq!(CniError::parse(e.to_json("0.4.0").to_string().as_bytes()), Some(e));
        assert!(CniError::parse(b"not json").is_none());
        assert!(CniError::parse(br#"{"msg":"no code"}"#).is_none());
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.1.0", "1.1.0"));
        assert!(version_at_least("1.10.0", "1.9.0"));
        assert!(!version_at_least("1.0.0", "1.1.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert_eq!(version_tuple("1"), (1, 0, 0));
    }

    #[test]
    fn gateway_is_first_address() {
        assert_eq!(gateway_of("10.244.3.0/24".parse().unwrap()), Ipv4Addr::new(10, 244, 3, 1));
    }
}
