//! Helpers for the keelson-cni integration tests: a "node" netns in which the plugin runs (so its
//! bridge, routes and nft table never touch the host), pod netns, plugin invocations, background
//! TCP servers owned by PID, and the leak probes (IPAM files, veths, routes, nft elements).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::Netns;

/// The built plugin (`cargo build -p keelson-cni` with the same CARGO_TARGET_DIR).
pub fn plugin_path() -> PathBuf {
    let p = crate::target_dir().join("debug").join("keelson-cni");
    assert!(p.exists(), "{} missing: run `cargo build -p keelson-cni` first", p.display());
    p
}

/// A node: its netns plus a private IPAM data dir and the network config.
pub struct Node {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub network: String,
    pub subnet: String,
    pub bridge: String,
}

/// Result of one plugin run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Value,
    pub stderr: String,
}

impl Run {
    /// The spec error code, if this run failed.
    pub fn err_code(&self) -> Option<u64> {
        self.stdout.get("code").and_then(Value::as_u64)
    }
}

impl Node {
    /// A node netns with forwarding on and a config for `subnet` (e.g. `10.244.1.0/24`).
    pub fn new(subnet: &str) -> anyhow::Result<Node> {
        let ns = Netns::new("cn")?;
        let dir = tempfile::tempdir()?;
        Ok(Node { ns, dir, network: "kt".into(), subnet: subnet.into(), bridge: "kb0".into() })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The network config (`extra` is spliced into the top-level object, e.g. `"ipMasq":true`).
    pub fn conf(&self, version: &str, extra: &str) -> Value {
        let mut v = serde_json::json!({
            "cniVersion": version,
            "name": self.network,
            "type": "keelson-cni",
            "bridge": self.bridge,
            "mtu": 1450,
            "ipam": { "subnet": self.subnet, "dataDir": self.data_dir() },
        });
        if !extra.is_empty() {
            let e: Value = serde_json::from_str(&format!("{{{extra}}}")).expect("extra config is JSON");
            for (k, x) in e.as_object().expect("object") {
                v[k] = x.clone();
            }
        }
        v
    }

    /// Runs `plugin` (a path) in the node netns with the given CNI env and stdin.
    pub fn exec_plugin(&self, plugin: &Path, env: &[(&str, &str)], stdin: &[u8]) -> anyhow::Result<Run> {
        use std::io::Write;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.ns.path().display())).arg("--").arg(plugin);
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").env("CNI_PATH", "/usr/lib/cni");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        child.stdin.take().context("stdin")?.write_all(stdin)?;
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let stdout =
            if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).context(text.to_string())? };
        Ok(Run { code: out.status.code().unwrap_or(-1), stdout, stderr: String::from_utf8_lossy(&out.stderr).into() })
    }

    /// Runs keelson-cni with `cmd` for a pod.
    pub fn cni(&self, cmd: &str, id: &str, pod: Option<&Path>, conf: &Value) -> anyhow::Result<Run> {
        let netns = pod.map(|p| p.display().to_string()).unwrap_or_default();
        let env =
            [("CNI_COMMAND", cmd), ("CNI_CONTAINERID", id), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", netns.as_str())];
        let env: Vec<(&str, &str)> = env.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        self.exec_plugin(&plugin_path(), &env, conf.to_string().as_bytes())
    }

    /// ADD that must succeed; returns the result JSON.
    pub fn add(&self, id: &str, pod: &Netns) -> anyhow::Result<Value> {
        let r = self.cni("ADD", id, Some(&pod.path()), &self.conf("1.1.0", ""))?;
        if r.code != 0 {
            bail!("ADD {id} failed: {} {}", r.stdout, r.stderr);
        }
        Ok(r.stdout)
    }

    /// DEL that must succeed.
    pub fn del(&self, id: &str, pod: Option<&Netns>) -> anyhow::Result<()> {
        let p = pod.map(|p| p.path());
        let r = self.cni("DEL", id, p.as_deref(), &self.conf("1.1.0", ""))?;
        if r.code != 0 {
            bail!("DEL {id} failed: {} {}", r.stdout, r.stderr);
        }
        Ok(())
    }

    /// Files in the IPAM dir other than `lock` and `last_reserved_ip` (none before the first ADD
    /// creates the dir). Panics on any other read error: a probe that cannot look must not pass.
    pub fn ipam_records(&self) -> Vec<String> {
        let dir = self.data_dir().join(&self.network);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("listing {}: {e}", dir.display()),
        };
        rd.map(|e| {
            e.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())).file_name().to_string_lossy().into_owned()
        })
        .filter(|n| n != "lock" && n != "last_reserved_ip")
        .collect()
    }

    /// Our host veths (`kc…`) in the node netns.
    pub fn host_veths(&self) -> anyhow::Result<Vec<String>> {
        let out = self.ns.exec_ok(&["ip", "-o", "link", "show", "type", "veth"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| n.starts_with("kc"))
            .collect())
    }
}

/// The pod address (without prefix) from an ADD result.
pub fn pod_ip(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().expect("result has an address");
    a.split('/').next().unwrap_or(a).to_string()
}

/// A process we started (by PID), killed on drop.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP server in `ns` on `port` answering every connection with `reply`.
pub fn tcp_server(ns: &Netns, port: u16, reply: &str) -> anyhow::Result<Bg> {
    let child = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["--", "socat", &format!("TCP-LISTEN:{port},reuseaddr,fork"), &format!("SYSTEM:echo {reply}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Bg(child))
}

/// Connects from `ns` to `ip:port` and returns what the server said (retrying until `timeout`).
pub fn tcp_get(ns: &Netns, ip: &str, port: u16, timeout: Duration) -> Option<String> {
    crate::wait_for(timeout, || {
        let out: Output = ns.exec(&["socat", "-T2", "-", &format!("TCP:{ip}:{port},connect-timeout=1")]).ok()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    })
}

/// One ping from `ns` to `ip`.
pub fn ping(ns: &Netns, ip: &str) -> bool {
    ns.exec(&["ping", "-c1", "-W2", ip]).map(|o| o.status.success()).unwrap_or(false)
}
