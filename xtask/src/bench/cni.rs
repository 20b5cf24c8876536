//! `cargo xtask bench cni [--debug] [--pods N] [--seconds S]`
//!
//! 1. ADD/DEL latency over N pods (default 100): keelson-cni vs the reference bridge + host-local
//!    plugins (/usr/lib/cni), interleaved pod by pod in the same run, both invoked the same way
//!    (`nsenter --net=<node>` + plugin, wall clock per invocation, process start included).
//! 2. Pod↔pod TCP throughput (iperf3, S seconds, default 5) across two node netns over VXLAN
//!    (keelson-cni pods + `keelson-cni overlay`) vs the same two node netns talking directly over
//!    the plain veth underlay.
//!
//! Everything lives in benchmark-owned netns (`kb<pid>…`), deleted at the end, also on error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::util;

struct Ns(String);

impl Ns {
    fn new(tag: &str, n: usize) -> anyhow::Result<Ns> {
        let name = format!("kb{}{tag}{n}", std::process::id() % 10000);
        run("ip", &["netns", "add", &name])?;
        let ns = Ns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
    fn exec(&self, argv: &[&str]) -> anyhow::Result<String> {
        let mut a = vec![format!("--net={}", self.path()), "--".to_string()];
        a.extend(argv.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run("nsenter", &refs)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(prog).args(args).output().with_context(|| format!("spawn {prog}"))?;
    if !out.status.success() {
        bail!("{prog} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs a CNI plugin in `node`, returns (elapsed, stdout JSON).
fn cni(node: &Ns, plugin: &Path, cmd: &str, id: &str, pod: &Ns, conf: &str) -> anyhow::Result<(Duration, Value)> {
    let t = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", node.path()))
        .arg("--")
        .arg(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", pod.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(conf.as_bytes())?;
    let out = child.wait_with_output()?;
    let el = t.elapsed();
    if !out.status.success() {
        bail!(
            "{} {cmd} {id}: {} {}",
            plugin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v = if out.stdout.is_empty() { Value::Null } else { serde_json::from_slice(&out.stdout)? };
    Ok((el, v))
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = (((v.len() as f64) * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

fn build(debug: bool) -> anyhow::Result<PathBuf> {
    let mut c = util::cargo();
    c.args(["build", "-p", "keelson-cni"]);
    if !debug {
        c.arg("--release");
    }
    util::sh(&mut c)?;
    Ok(util::target_dir().join(if debug { "debug" } else { "release" }).join("keelson-cni"))
}

pub fn run_bench(rest: &[String]) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("bench cni needs root (netns, veth, VXLAN)");
    }
    let debug = rest.iter().any(|a| a == "--debug");
    let arg = |name: &str, d: usize| -> anyhow::Result<usize> {
        match rest.iter().position(|a| a == name) {
            Some(i) => rest.get(i + 1).context("missing value")?.parse().context(name.to_string()),
            None => Ok(d),
        }
    };
    let pods = arg("--pods", 100)?;
    let secs = arg("--seconds", 5)?;
    let bin = build(debug)?;
    let dir = tempfile::tempdir()?;

    // ---- latency ----
    let node = Ns::new("n", 0)?;
    let ours = serde_json::json!({
        "cniVersion": "1.0.0", "name": "kbench", "type": "keelson-cni", "bridge": "kb0", "mtu": 1450,
        "ipam": {"subnet": "10.254.0.0/24", "dataDir": dir.path().join("k")}
    })
    .to_string();
    let reference = serde_json::json!({
        "cniVersion": "1.0.0", "name": "rbench", "type": "bridge", "bridge": "rb0", "isGateway": true,
        "hairpinMode": true, "mtu": 1450,
        "ipam": {"type": "host-local", "subnet": "10.254.1.0/24", "dataDir": dir.path().join("r")}
    })
    .to_string();
    let refbin = PathBuf::from("/usr/lib/cni/bridge");
    let kp: Vec<Ns> = (0..pods).map(|i| Ns::new("k", i)).collect::<anyhow::Result<_>>()?;
    let rp: Vec<Ns> = (0..pods).map(|i| Ns::new("r", i)).collect::<anyhow::Result<_>>()?;
    let (mut ka, mut kd, mut ra, mut rd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..pods {
        ka.push(cni(&node, &bin, "ADD", &format!("k{i}"), &kp[i], &ours)?.0);
        ra.push(cni(&node, &refbin, "ADD", &format!("r{i}"), &rp[i], &reference)?.0);
    }
    for i in 0..pods {
        kd.push(cni(&node, &bin, "DEL", &format!("k{i}"), &kp[i], &ours)?.0);
        rd.push(cni(&node, &refbin, "DEL", &format!("r{i}"), &rp[i], &reference)?.0);
    }
    drop(kp);
    drop(rp);
    drop(node);

    let build_kind = if debug { "debug" } else { "release" };
    println!();
    println!("keelson-cni bench ({build_kind} build, {pods} pods, iperf3 {secs}s)");
    println!("{:<28} {:>12} {:>12} {:>8}", "metric", "keelson-cni", "reference", "ratio");
    let row = |name: &str, a: &mut Vec<Duration>, b: &mut Vec<Duration>, p: f64| {
        let (x, y) = (pct(a, p), pct(b, p));
        println!("{:<28} {:>9.2} ms {:>9.2} ms {:>8.2}", name, x, y, x / y);
    };
    row("ADD p50", &mut ka, &mut ra, 0.50);
    row("ADD p99", &mut ka, &mut ra, 0.99);
    row("DEL p50", &mut kd, &mut rd, 0.50);
    row("DEL p99", &mut kd, &mut rd, 0.99);

    // ---- throughput ----
    let (vx, vx_csum, plain) = throughput(&bin, dir.path(), secs)?;
    let tput = |name: &str, x: f64| {
        println!("{:<28} {:>7.2} Gb/s {:>7.2} Gb/s {:>8.2}", name, x / 1e9, plain / 1e9, x / plain);
    };
    tput("TCP VXLAN (tx csum off)", vx);
    tput("TCP VXLAN (tx csum on)", vx_csum);
    println!("(latency reference = /usr/lib/cni/bridge + host-local; throughput reference = the same two node");
    println!(
        " netns over the plain veth underlay; VXLAN = pod↔pod across them; tx csum off is the default, flannel #1279)"
    );
    Ok(())
}

fn iperf(server: &Ns, client: &Ns, ip: &str, secs: usize) -> anyhow::Result<f64> {
    let srv = Command::new("nsenter")
        .arg(format!("--net={}", server.path()))
        .args(["--", "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _srv = Bg(srv);
    let secs_s = secs.to_string();
    // Wait until the server listens, so the measured run is the only connection it serves.
    let mut listening = false;
    for _ in 0..100 {
        if server.exec(&["ss", "-Hltn", "sport = :5201"]).map(|o| !o.is_empty()).unwrap_or(false) {
            listening = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !listening {
        bail!("iperf3 server did not start");
    }
    let out = client.exec(&["iperf3", "-J", "-c", ip, "-t", &secs_s])?;
    let v: Value = serde_json::from_str(&out)?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"].as_f64().with_context(|| format!("iperf3 JSON without a result: {out}"))
}

/// (VXLAN pod↔pod, same with TX checksum offload on, plain underlay node↔node) in bits/s.
fn throughput(bin: &Path, dir: &Path, secs: usize) -> anyhow::Result<(f64, f64, f64)> {
    let a = Ns::new("ta", 0)?;
    let b = Ns::new("tb", 0)?;
    a.exec(&["ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0", "netns", &b.path()])?;
    for (ns, ip) in [(&a, "192.168.254.1/24"), (&b, "192.168.254.2/24")] {
        ns.exec(&["ip", "addr", "add", ip, "dev", "up0"])?;
        ns.exec(&["ip", "link", "set", "up0", "up"])?;
    }
    let plain = iperf(&b, &a, "192.168.254.2", secs)?;

    let pa = Ns::new("pa", 0)?;
    let pb = Ns::new("pb", 0)?;
    let mut macs = Vec::new();
    let mut pod_ips = Vec::new();
    for (i, (node, pod)) in [(&a, &pa), (&b, &pb)].into_iter().enumerate() {
        let conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": "kbt", "type": "keelson-cni", "bridge": "kb0", "mtu": 1450,
            "ipam": {"subnet": format!("10.254.{}.0/24", 10 + i), "dataDir": dir.join(format!("t{i}"))}
        })
        .to_string();
        let (_, r) = cni(node, bin, "ADD", &format!("t{i}"), pod, &conf)?;
        let ip = r["ips"][0]["address"].as_str().context("address")?;
        pod_ips.push(ip.split('/').next().unwrap_or(ip).to_string());
        macs.push(overlay(node, bin, dir, i, &[])?);
    }
    for i in 0..2usize {
        let j = 1 - i;
        let remote = serde_json::json!({
            "name": format!("n{j}"), "nodeIP": format!("192.168.254.{}", j + 1),
            "podCIDR": format!("10.254.{}.0/24", 10 + j), "vtepMAC": macs[j]
        });
        overlay(if i == 0 { &a } else { &b }, bin, dir, i, &[remote])?;
    }
    let vx = iperf(&pb, &pa, &pod_ips[1], secs)?;
    // Same path with TX checksum offload left on (not the default; see overlay docs).
    for (i, node) in [&a, &b].into_iter().enumerate() {
        let j = 1 - i;
        let remote = serde_json::json!({
            "name": format!("n{j}"), "nodeIP": format!("192.168.254.{}", j + 1),
            "podCIDR": format!("10.254.{}.0/24", 10 + j), "vtepMAC": macs[j]
        });
        overlay_with(node, bin, dir, i, &[remote], true)?;
    }
    let vx_csum = iperf(&pb, &pa, &pod_ips[1], secs)?;
    Ok((vx, vx_csum, plain))
}

fn overlay(node: &Ns, bin: &Path, dir: &Path, i: usize, remotes: &[Value]) -> anyhow::Result<String> {
    overlay_with(node, bin, dir, i, remotes, false)
}

fn overlay_with(node: &Ns, bin: &Path, dir: &Path, i: usize, remotes: &[Value], csum: bool) -> anyhow::Result<String> {
    let file = dir.join(format!("overlay{i}.json"));
    let doc = serde_json::json!({
        "local": {"name": format!("n{i}"), "nodeIP": format!("192.168.254.{}", i + 1),
                  "podCIDR": format!("10.254.{}.0/24", 10 + i), "uplink": "up0", "txChecksumOffload": csum},
        "remotes": remotes,
    });
    std::fs::write(&file, doc.to_string())?;
    let out = node.exec(&[&bin.display().to_string(), "overlay", &file.display().to_string()])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["annotations"]["keelson.io/vtep-mac"].as_str().context("vtep mac")?.to_string())
}
