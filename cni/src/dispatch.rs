//! One plugin invocation: the `CNI_*` environment and stdin in, the JSON for stdout and the exit
//! status out. Kept separate from `main` so every error path is unit-tested.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::masq::NftMasq;
use crate::netlink::{Netlink, NetlinkError, RtNetlink};
use crate::plugin;
use crate::spec::{self, CniError, Command, LATEST_VERSION, code};

/// What to print and how to exit.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub stdout: Option<Value>,
    pub exit: i32,
}

/// The config's `cniVersion` if it is readable and supported (for rendering errors), else latest.
fn error_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|x| x.as_str()).map(str::to_string))
        .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_string())
}

/// Runs one invocation against the real kernel.
pub fn run(env: &BTreeMap<String, String>, stdin: &[u8]) -> Outcome {
    match execute(env, stdin) {
        Ok(v) => Outcome { stdout: v, exit: 0 },
        Err(e) => {
            tracing::error!(code = e.code, msg = %e.msg, details = %e.details, "CNI command failed");
            Outcome { stdout: Some(e.to_json(&error_version(stdin))), exit: 1 }
        }
    }
}

fn execute(env: &BTreeMap<String, String>, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let cmd = spec::command_from_env(env)?;
    if cmd == Command::Version {
        let v = serde_json::from_slice::<Value>(stdin).ok();
        let ver = v.as_ref().and_then(|v| v.get("cniVersion")).and_then(|x| x.as_str());
        return Ok(Some(spec::version_json(ver)));
    }
    let conf = spec::parse_conf(stdin)?;
    spec::check_command_version(cmd, &conf.cni_version)?;
    let cenv = spec::env_for(cmd, env)?;
    let node_nl =
        || RtNetlink::current().map_err(|e| CniError::new(code::NETLINK, "open netlink socket", e.to_string()));
    let open_pod = |p: &Path| -> Result<Box<dyn Netlink>, NetlinkError> { Ok(Box::new(RtNetlink::in_netns(p)?)) };
    let mut masq = NftMasq::new(&conf.name);
    match cmd {
        Command::Add => {
            let mut node = node_nl()?;
            let r = plugin::cmd_add(&conf, &cenv, &mut node, &open_pod, &mut masq)?;
            Ok(Some(r.to_json(&conf.cni_version)))
        }
        Command::Del => {
            let mut node = node_nl()?;
            plugin::cmd_del(&conf, &cenv, &mut node, &mut masq)?;
            Ok(None)
        }
        Command::Check => {
            let mut node = node_nl()?;
            plugin::cmd_check(&conf, &cenv, &mut node, &open_pod)?;
            Ok(None)
        }
        Command::Gc => {
            let mut node = node_nl()?;
            let rep = plugin::cmd_gc(&conf, &mut node, &mut masq)?;
            tracing::info!(freed = ?rep.freed, deleted = ?rep.deleted_links, "GC");
            Ok(None)
        }
        Command::Status => {
            plugin::cmd_status(&conf)?;
            Ok(None)
        }
        Command::Version => Ok(Some(spec::version_json(Some(&conf.cni_version)))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn version_needs_no_config() {
        let o = run(&env(&[("CNI_COMMAND", "VERSION")]), b"");
        assert_eq!(o.exit, 0);
        assert_eq!(o.stdout.unwrap()["supportedVersions"][4], "1.1.0");
    }

    #[test]
    fn errors_are_spec_json_with_codes() {
        let o = run(&env(&[]), b"{}");
        assert_eq!((o.exit, o.stdout.unwrap()["code"].as_u64()), (1, Some(4)));
        let o = run(&env(&[("CNI_COMMAND", "ADD")]), b"{oops");
        let j = o.stdout.unwrap();
        assert_eq!((o.exit, j["code"].as_u64(), j["cniVersion"].as_str()), (1, Some(6), Some(LATEST_VERSION)));
        let o = run(&env(&[("CNI_COMMAND", "ADD")]), br#"{"cniVersion":"0.2.0","name":"n","type":"k"}"#);
        assert_eq!(o.stdout.unwrap()["code"], 1);
        let o = run(&env(&[("CNI_COMMAND", "GC")]), br#"{"cniVersion":"1.0.0","name":"n","type":"k"}"#);
        assert_eq!(o.stdout.unwrap()["code"], 1, "GC is a 1.1.0 verb");
        let conf = br#"{"cniVersion":"0.4.0","name":"n","type":"k","ipam":{"subnet":"10.0.0.0/24"}}"#;
        let o = run(&env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]), conf);
        let j = o.stdout.unwrap();
        assert_eq!((j["code"].as_u64(), j["cniVersion"].as_str()), (Some(4), Some("0.4.0")));
        assert!(j["msg"].as_str().unwrap().contains("CNI_CONTAINERID"));
    }
}
