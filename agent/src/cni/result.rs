//! Plugin results (0.1.x/0.2.x legacy, 0.3.x, 0.4.0, 1.x) normalized into one [`CniResult`], and
//! the spec's error object ([`PluginError`]).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde_json::Value;

/// An address with a prefix length, as CNI writes it (`10.1.0.5/24`; host bits are kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNetwork {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl FromStr for IpNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("{s:?}: missing /prefix"))?;
        let addr: IpAddr = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix_len: u8 = p.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(IpNetwork { addr, prefix_len })
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An interface a plugin created or configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    /// The netns path for interfaces inside the container; `None` for host-side interfaces.
    pub sandbox: Option<String>,
}

/// An assigned address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

/// A route inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

/// DNS settings a plugin suggests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// A plugin result in one normalized shape, plus the raw JSON the chain produced (injected as
/// `prevResult` and cached for CHECK/DEL exactly as the plugin wrote it).
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    pub raw: Value,
}

impl CniResult {
    /// The pod's addresses: IPs on a sandbox interface (or on no named interface), IPv4 first.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(|ip| match ip.interface.and_then(|i| self.interfaces.get(i)) {
                Some(iface) => iface.sandbox.as_deref().is_some_and(|s| !s.is_empty()),
                None => true,
            })
            .map(|ip| ip.address.addr)
            .collect();
        out.sort_by_key(|ip| ip.is_ipv6());
        out.dedup();
        out
    }
}

/// The spec's error object (`{"code": 7, "msg": "...", "details": "..."}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl PluginError {
    /// Parses an error object; `None` if the bytes are not one (no numeric `code`).
    pub fn parse(bytes: &[u8]) -> Option<PluginError> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        let code = u32::try_from(v.get("code")?.as_u64()?).ok()?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        Some(PluginError { code, msg: text("msg"), details: text("details") })
    }
}

fn ip_opt(v: Option<&Value>, what: &str) -> Result<Option<IpAddr>, String> {
    match v.and_then(Value::as_str) {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|e| format!("{what} {s:?}: {e}")),
    }
}

fn net(v: Option<&Value>, what: &str) -> Result<IpNetwork, String> {
    v.and_then(Value::as_str).ok_or_else(|| format!("missing {what}"))?.parse()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn routes(v: Option<&Value>) -> Result<Vec<Route>, String> {
    let mut out = Vec::new();
    for r in v.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        out.push(Route { dst: net(r.get("dst"), "route dst")?, gw: ip_opt(r.get("gw"), "route gw")? });
    }
    Ok(out)
}

fn dns(v: Option<&Value>) -> Dns {
    let Some(d) = v else { return Dns::default() };
    Dns {
        nameservers: strings(d.get("nameservers")),
        domain: d.get("domain").and_then(Value::as_str).map(str::to_string),
        search: strings(d.get("search")),
        options: strings(d.get("options")),
    }
}

/// Parses a plugin's stdout into a [`CniResult`], whatever result version it uses.
pub fn parse_result(raw: Value) -> Result<CniResult, String> {
    let cni_version = raw.get("cniVersion").and_then(Value::as_str).unwrap_or("0.1.0").to_string();
    if !raw.is_object() {
        return Err("result is not a JSON object".into());
    }
    let (major, minor, _) = super::config::version_tuple(&cni_version);
    let mut result = CniResult {
        cni_version,
        interfaces: Vec::new(),
        ips: Vec::new(),
        routes: Vec::new(),
        dns: dns(raw.get("dns")),
        raw: Value::Null,
    };
    if major == 0 && minor < 3 {
        // Legacy: {"ip4": {"ip": "10.0.0.2/24", "gateway": "...", "routes": [...]}, "ip6": {...}}
        for key in ["ip4", "ip6"] {
            if let Some(block) = raw.get(key) {
                result.ips.push(IpConfig {
                    address: net(block.get("ip"), &format!("{key}.ip"))?,
                    gateway: ip_opt(block.get("gateway"), "gateway")?,
                    interface: None,
                });
                result.routes.extend(routes(block.get("routes"))?);
            }
        }
    } else {
        for i in raw.get("interfaces").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            result.interfaces.push(Interface {
                name: i.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                mac: i.get("mac").and_then(Value::as_str).map(str::to_string),
                sandbox: i.get("sandbox").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string),
            });
        }
        for ip in raw.get("ips").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            let interface = match ip.get("interface").and_then(Value::as_u64) {
                Some(i) => {
                    let i = usize::try_from(i).map_err(|_| "interface index out of range".to_string())?;
                    if i >= result.interfaces.len() {
                        return Err(format!("ip refers to interface {i} of {}", result.interfaces.len()));
                    }
                    Some(i)
                }
                None => None,
            };
            result.ips.push(IpConfig {
                address: net(ip.get("address"), "ips[].address")?,
                gateway: ip_opt(ip.get("gateway"), "gateway")?,
                interface,
            });
        }
        result.routes = routes(raw.get("routes"))?;
    }
    result.raw = raw;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn v1_result_with_interfaces() {
        let raw = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/p1"}
            ],
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
                    {"address": "fd00::5/64", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "10.96.0.0/12"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
        });
        let r = parse_result(raw.clone()).expect("valid");
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("/run/netns/p1"));
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/24");
        assert_eq!(r.ips[0].gateway, Some("10.1.0.1".parse().expect("ip")));
        assert_eq!(r.routes[1].gw, None);
        assert_eq!(r.dns.nameservers, vec!["10.96.0.10".to_string()]);
        assert_eq!(r.pod_ips(), vec!["10.1.0.5".parse::<IpAddr>().expect("ip"), "fd00::5".parse().expect("ip")]);
        assert_eq!(r.raw, raw);
    }

    #[test]
    fn v03_result_with_version_field_in_ips() {
        let raw = json!({
            "cniVersion": "0.3.1",
            "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"version": "4", "address": "10.2.0.9/16", "interface": 0}]
        });
        let r = parse_result(raw).expect("valid");
        assert_eq!(r.ips[0].address.prefix_len, 16);
        assert_eq!(r.pod_ips().len(), 1);
    }

    #[test]
    fn host_side_ips_are_not_pod_ips() {
        let raw = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.1.0.1/24", "interface": 0}, {"address": "10.1.0.7/24", "interface": 1}]
        });
        assert_eq!(parse_result(raw).expect("valid").pod_ips(), vec!["10.1.0.7".parse::<IpAddr>().expect("ip")]);
    }

    #[test]
    fn legacy_020_result() {
        let raw = json!({
            "cniVersion": "0.2.0",
            "ip4": {"ip": "10.3.0.4/24", "gateway": "10.3.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
            "dns": {}
        });
        let r = parse_result(raw).expect("valid");
        assert_eq!(r.pod_ips(), vec!["10.3.0.4".parse::<IpAddr>().expect("ip")]);
        assert_eq!(r.routes.len(), 1);
    }

    #[test]
    fn malformed_results_are_rejected() {
        for bad in [
            json!([]),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/33"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "interface": 3}]}),
            json!({"cniVersion": "1.0.0", "routes": [{"dst": "nope"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "gateway": "x"}]}),
        ] {
            assert!(parse_result(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn plugin_error_objects() {
        let e = PluginError::parse(br#"{"cniVersion":"1.0.0","code":11,"msg":"try again","details":"lock held"}"#)
            .expect("error object");
        assert_eq!(e, PluginError { code: 11, msg: "try again".into(), details: "lock held".into() });
        assert_eq!(e.to_string(), "code 11: try again (lock held)");
        assert!(PluginError::parse(b"not json").is_none());
        assert!(PluginError::parse(br#"{"msg":"no code"}"#).is_none());
    }
}
