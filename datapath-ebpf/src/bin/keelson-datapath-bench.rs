//! `keelson-datapath-bench` (run by `cargo xtask bench datapath`) `[--sizes 1,100,1000,10000,30000] [--iters 500]`: the service datapath
//! against kube-proxy-style iptables rules, all measured in one run, on namespaces created here.
//!
//! Topology: client netns ─ node netns (forwarding; nft table / iptables rules live here) ─ server
//! netns with two TCP listeners (the real service's two endpoints). For each size N the node gets
//! N services × 2 endpoints (N-1 dummies plus the real one, which kube-proxy's iptables layout scans
//! last), then we measure:
//! - latency of connect + 1-byte request/response through the ClusterIP vs. straight to the pod IP
//!   (medians; each round alternates the two targets so load drift hits both), plus a baseline
//!   measured before anything is installed (iptables slows *every* new connection, direct ones too);
//! - programming time: full sync of N services from empty, and adding one service to N present
//!   (kube-proxy's iptables mode re-applies the whole table, so that is what its "add one" does),
//!   and the pure `ServiceTable::diff` part of every add-one;
//! - bytes of state per service / endpoint.
//!
//! eBPF: the bench process moves itself into a fresh cgroup2 dir for its client connects (socket-LB),
//! and back out afterwards.

use anyhow::{Context, Result, bail};
use keelson_datapath::ebpf::{EbpfProxier, SockLb};
use keelson_datapath::model::{
    Backend, Frontend, FrontendAddr, FrontendKey, FrontendKind, NodeInfo, Protocol, ServicePortName, ServiceTable,
};
use keelson_datapath::nft::{NftCli, NftProxier};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);
const REAL_VIP: Ipv4Addr = Ipv4Addr::new(10, 95, 0, 1);
const NFT_TABLE: &str = "kbench";

struct Ns(String);
impl Ns {
    fn new(tag: &str) -> Result<Ns> {
        let name = format!("kb{}{tag}", std::process::id() % 100_000);
        sh("ip", &["netns", "add", &name])?;
        let ns = Ns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.0)
    }
    fn exec(&self, argv: &[&str]) -> Result<String> {
        let mut a = vec![format!("--net={}", self.path().display()), "--".into()];
        a.extend(argv.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        sh("nsenter", &refs)
    }
    fn exec_stdin(&self, argv: &[&str], input: &str) -> Result<()> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .arg("--")
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("{argv:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn sh(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog).args(args).output().with_context(|| format!("spawn {prog}"))?;
    if !out.status.success() {
        bail!("{prog} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Enters `ns` on the current thread only.
fn enter(ns: &Path) -> Result<()> {
    let f = std::fs::File::open(ns)?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid fd; affects only the calling thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {}: {}", ns.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

fn start_server(ns: PathBuf, port: u16) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let l = enter(&ns).and_then(|_| Ok(TcpListener::bind(SocketAddrV4::new(SERVER_IP, port))?));
        let l = match l {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(b"k");
            }
        }
    });
    rx.recv()?
}

/// Median and p99 (µs) of `iters` connect+request+response rounds to `vip` and to `direct`, from
/// netns `ns`. Rounds alternate between the two targets so machine load drifts affect both alike.
fn latency_pair(ns: &Path, vip: SocketAddrV4, direct: SocketAddrV4, iters: usize) -> Result<((f64, f64), (f64, f64))> {
    let ns = ns.to_path_buf();
    let h = std::thread::spawn(move || -> Result<((f64, f64), (f64, f64))> {
        enter(&ns)?;
        let one = |dst: SocketAddrV4| -> Result<f64> {
            let t = Instant::now();
            let mut s = TcpStream::connect_timeout(&dst.into(), Duration::from_secs(2))
                .with_context(|| format!("connect {dst}"))?;
            s.set_nodelay(true)?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            Ok(t.elapsed().as_secs_f64() * 1e6)
        };
        let (mut v, mut d) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
        for i in 0..iters + 20 {
            let (a, b) = (one(vip)?, one(direct)?);
            if i >= 20 {
                v.push(a);
                d.push(b);
            }
        }
        let stats = |mut x: Vec<f64>| {
            x.sort_by(f64::total_cmp);
            (x[x.len() / 2], x[x.len() * 99 / 100])
        };
        Ok((stats(v), stats(d)))
    });
    h.join().map_err(|_| anyhow::anyhow!("latency thread panicked"))?
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1)
}

fn dummy_ep(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * 2 + j) as u32 + 1)
}

/// `n` services × 2 endpoints: n-1 dummies and the real one (last).
fn table(n: usize, extra: bool) -> ServiceTable {
    let mut t = ServiceTable::default();
    let mk = |name: String, backends: Vec<Backend>| Frontend {
        service: ServicePortName { namespace: "bench".into(), name, port: "p".into() },
        kind: FrontendKind::ClusterIp,
        backends,
        affinity_timeout_s: None,
        masquerade_external: false,
    };
    for i in 0..n.saturating_sub(1) {
        let b = (0..2).map(|j| Backend { ip: dummy_ep(i, j), port: 8080, local: false }).collect();
        t.frontends.insert(
            FrontendKey { addr: FrontendAddr::Ip(vip(i)), port: 80, proto: Protocol::Tcp },
            mk(format!("s{i}"), b),
        );
    }
    let real = (0..2).map(|j| Backend { ip: SERVER_IP, port: 8080 + j, local: true }).collect();
    t.frontends.insert(
        FrontendKey { addr: FrontendAddr::Ip(REAL_VIP), port: 80, proto: Protocol::Tcp },
        mk("real".into(), real),
    );
    if extra {
        let b = vec![Backend { ip: dummy_ep(999_999, 0), port: 8080, local: false }];
        t.frontends.insert(
            FrontendKey { addr: FrontendAddr::Ip(Ipv4Addr::new(10, 94, 0, 1)), port: 80, proto: Protocol::Tcp },
            mk("extra".into(), b),
        );
    }
    t
}

/// kube-proxy iptables-mode layout: KUBE-SERVICES → KUBE-SVC-* (statistic random) → KUBE-SEP-* (DNAT).
/// The real service is last in KUBE-SERVICES (what a linear scan pays for).
fn iptables_rules(t: &ServiceTable) -> String {
    let mut chains = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::from("-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n");
    let mut order: Vec<(&FrontendKey, &Frontend)> = t.frontends.iter().collect();
    order.sort_by_key(|(k, _)| matches!(k.addr, FrontendAddr::Ip(ip) if ip == REAL_VIP));
    for (n, (k, fe)) in order.iter().enumerate() {
        let FrontendAddr::Ip(ip) = k.addr else { continue };
        let svc = format!("KUBE-SVC-{n:08X}");
        chains += &format!(":{svc} - [0:0]\n");
        rules += &format!("-A KUBE-SERVICES -d {ip}/32 -p tcp -m tcp --dport {} -j {svc}\n", k.port);
        let m = fe.backends.len();
        for (j, b) in fe.backends.iter().enumerate() {
            let sep = format!("KUBE-SEP-{n:08X}{j:02X}");
            chains += &format!(":{sep} - [0:0]\n");
            if j + 1 < m {
                rules += &format!(
                    "-A {svc} -m statistic --mode random --probability {:.11} -j {sep}\n",
                    1.0 / (m - j) as f64
                );
            } else {
                rules += &format!("-A {svc} -j {sep}\n");
            }
            rules += &format!("-A {sep} -p tcp -m tcp -j DNAT --to-destination {}:{}\n", b.ip, b.port);
        }
    }
    chains + &rules + "COMMIT\n"
}

#[derive(Default, Clone)]
struct Row {
    full_ms: f64,
    add_one_ms: f64,
    vip: (f64, f64),
    direct: (f64, f64),
}

struct CgroupMove {
    dir: PathBuf,
    orig: PathBuf,
}
impl CgroupMove {
    fn new() -> Result<Self> {
        let root = PathBuf::from("/sys/fs/cgroup/unified");
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let rel = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").trim_start_matches('/').to_string();
        let dir = root.join(format!("kbench{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(CgroupMove { dir, orig: root.join(rel) })
    }
    fn join(&self) -> Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), std::process::id().to_string())?;
        Ok(())
    }
}
impl Drop for CgroupMove {
    fn drop(&mut self) {
        let _ = std::fs::write(self.orig.join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn parse_args(args: &[String]) -> Result<(Vec<usize>, usize)> {
    let mut sizes = vec![1, 100, 1000, 10_000, 30_000];
    let mut iters = 500;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sizes" => {
                sizes = it.next().context("--sizes N,N")?.split(',').map(|s| s.parse()).collect::<Result<_, _>>()?
            }
            "--iters" => iters = it.next().context("--iters N")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok((sizes, iters))
}

pub fn run_bench(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("bench datapath needs root (netns, nft, bpf)");
    }
    let (sizes, iters) = parse_args(args)?;
    let node = Ns::new("n")?;
    let srv = Ns::new("s")?;
    let cli = Ns::new("c")?;
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    for (i, ns) in [(1, &srv), (2, &cli)] {
        let h = format!("h{i}");
        node.exec(&["ip", "link", "add", &h, "type", "veth", "peer", "name", "eth0", "netns", &ns.0])?;
        node.exec(&["ip", "addr", "add", &format!("10.201.{i}.1/24"), "dev", &h])?;
        node.exec(&["ip", "link", "set", &h, "up"])?;
        ns.exec(&["ip", "addr", "add", &format!("10.201.{i}.2/24"), "dev", "eth0"])?;
        ns.exec(&["ip", "link", "set", "eth0", "up"])?;
        ns.exec(&["ip", "route", "add", "default", "via", &format!("10.201.{i}.1")])?;
    }
    start_server(srv.path(), 8080)?;
    start_server(srv.path(), 8081)?;
    let direct = SocketAddrV4::new(SERVER_IP, 8080);
    let via_vip = SocketAddrV4::new(REAL_VIP, 80);
    let ipt = if have("iptables-legacy-restore") { "iptables-legacy-restore" } else { "iptables-restore" };
    let ipt_save = ipt.replace("-restore", "-save");
    let node_info = NodeInfo { name: "bench".into(), ips: vec![] };

    // Baseline: straight to the pod with no service rules or programs installed at all.
    let (base, _) = latency_pair(&cli.path(), direct, direct, iters)?;
    let mut diff_ms: Vec<f64> = Vec::new();
    let mut results: Vec<(usize, [Row; 3])> = Vec::new();
    let mut bytes = [0f64; 3];
    for &n in &sizes {
        let full_t = table(n, false);
        let plus_t = table(n, true);
        // The pure part of every incremental sync: diffing the new table against the applied one.
        let t = Instant::now();
        let changes = ServiceTable::diff(&full_t, &plus_t);
        diff_ms.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(changes.len() == 1, "add-one diff should have one change");
        let mut rows: [Row; 3] = Default::default();

        // eBPF socket-LB.
        {
            let pin_dir = PathBuf::from(format!("/sys/fs/bpf/kbench{}", std::process::id()));
            let cg = CgroupMove::new()?;
            let (_lb, maps, _) = SockLb::ensure(&pin_dir, &cg.dir, None)?;
            let mut p = EbpfProxier::new(maps, node_info.clone());
            let t = Instant::now();
            p.sync(&full_t)?;
            rows[0].full_ms = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            p.sync(&plus_t)?;
            rows[0].add_one_ms = t.elapsed().as_secs_f64() * 1e3;
            cg.join()?;
            (rows[0].vip, rows[0].direct) = latency_pair(&cli.path(), via_vip, direct, iters)?;
            drop(cg);
            let _ = SockLb::remove(&pin_dir);
            // logical bytes: service entry key+value, backend slot key+value
            bytes[0] = (std::mem::size_of::<keelson_datapath::ebpf::SvcKey>()
                + std::mem::size_of::<keelson_datapath::ebpf::SvcVal>()) as f64;
        }
        // nftables.
        {
            let mut p = NftProxier::new(NftCli { netns: Some(node.path()) }, NFT_TABLE);
            let t = Instant::now();
            p.sync(&full_t)?;
            rows[1].full_ms = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            p.sync(&plus_t)?;
            rows[1].add_one_ms = t.elapsed().as_secs_f64() * 1e3;
            (rows[1].vip, rows[1].direct) = latency_pair(&cli.path(), via_vip, direct, iters)?;
            if n == *sizes.iter().max().unwrap_or(&n) {
                bytes[1] =
                    node.exec(&["nft", "list", "table", "ip", NFT_TABLE])?.len() as f64 / plus_t.frontends.len() as f64;
            }
            p.cleanup()?;
        }
        // kube-proxy-style iptables (the peer baseline): a full iptables-restore per sync, like kube-proxy.
        {
            let t = Instant::now();
            node.exec_stdin(&[ipt], &iptables_rules(&full_t))?;
            rows[2].full_ms = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            node.exec_stdin(&[ipt], &iptables_rules(&plus_t))?;
            rows[2].add_one_ms = t.elapsed().as_secs_f64() * 1e3;
            (rows[2].vip, rows[2].direct) = latency_pair(&cli.path(), via_vip, direct, iters)?;
            if n == *sizes.iter().max().unwrap_or(&n) {
                bytes[2] = node.exec(&[&ipt_save, "-t", "nat"])?.len() as f64 / plus_t.frontends.len() as f64;
            }
            node.exec_stdin(&[ipt], "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")?;
            let _ = node.exec(&[&ipt.replace("-restore", ""), "-t", "nat", "-X"]);
        }
        eprintln!("bench datapath: size {n} done");
        results.push((n, rows));
    }

    println!("\n== connect + 1-byte request/response latency, µs median, {iters} rounds each ==");
    println!(
        "baseline with no rules/programs installed: pod IP {:.0} µs median (p99 {:.0}). Cells: vip/direct (vip ÷ same-run direct) [vip ÷ baseline]",
        base.0, base.1
    );
    println!("{:>7} | {:>26} | {:>26} | {:>26}", "svcs", "eBPF", "nft", "iptables");
    for (n, rows) in &results {
        let cell = |r: &Row| {
            format!("{:.0}/{:.0} ({:.2}x) [{:.2}b]", r.vip.0, r.direct.0, r.vip.0 / r.direct.0, r.vip.0 / base.0)
        };
        println!("{n:>7} | {:>26} | {:>26} | {:>26}", cell(&rows[0]), cell(&rows[1]), cell(&rows[2]));
    }
    println!("\n== programming time, ms: full sync of N svcs x 2 endpoints from empty / add one service ==");
    println!(
        "{:>7} | {:>20} | {:>20} | {:>20} | {:>14} | {:>14}",
        "svcs", "eBPF full/add", "nft full/add", "iptables full/add", "nft/eBPF full", "ipt/nft full"
    );
    for (n, r) in &results {
        println!(
            "{n:>7} | {:>9.1} / {:>8.2} | {:>9.1} / {:>8.2} | {:>9.1} / {:>8.2} | {:>13.1}x | {:>13.1}x",
            r[0].full_ms,
            r[0].add_one_ms,
            r[1].full_ms,
            r[1].add_one_ms,
            r[2].full_ms,
            r[2].add_one_ms,
            r[1].full_ms / r[0].full_ms,
            r[2].full_ms / r[1].full_ms
        );
    }
    println!("\n== pure table diff (included in every add-one above), ms ==");
    for ((n, _), d) in results.iter().zip(&diff_ms) {
        println!("{n:>7} | {d:.2}");
    }
    println!("\n== state per service (2 endpoints) ==");
    println!(
        "eBPF: {:.0} B per frontend entry + {} B per endpoint slot (logical key+value; kernel hash overhead extra)",
        bytes[0],
        std::mem::size_of::<keelson_datapath::ebpf::BeKey>() + std::mem::size_of::<keelson_datapath::ebpf::BeVal>()
    );
    println!(
        "nft: {:.0} B of `nft list table` text per service; iptables ({ipt}): {:.0} B of iptables-save text per service",
        bytes[1], bytes[2]
    );
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run_bench(&args)
}
