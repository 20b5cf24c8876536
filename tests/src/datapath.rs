//! Helpers for the service datapath tests: a one-node topology in network namespaces, a unique
//! cgroup2 directory for the socket-LB, a unique bpffs pin directory, and socat clients/servers.
//!
//! Topology (all names unique per test, removed on drop):
//! ```text
//!   pod p1 10.200.1.2 ─┐                        ┌─ ext 192.168.77.2 (external client)
//!   pod p2 10.200.2.2 ─┼─ node netns (forwarding)┤  node IP 192.168.77.1
//!   pod c  10.200.3.2 ─┘  (nft table lives here) └
//! ```
//! p1 and p2 run TCP and UDP echo servers on :8080 answering `<pod> <peer address>`. Whether an
//! endpoint is "local" is decided by the EndpointSlice's nodeName, so p2 plays the remote endpoint.

use crate::{Netns, unique_name};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const NODE_IP: &str = "192.168.77.1";
pub const EXT_IP: &str = "192.168.77.2";
pub const P1_IP: &str = "10.200.1.2";
pub const P2_IP: &str = "10.200.2.2";
pub const CLIENT_IP: &str = "10.200.3.2";
pub const NODE_NAME: &str = "node-a";
/// Port of the line-echo servers (long-lived connections).
pub const ECHO_PORT: u16 = 8081;

/// A cgroup2 directory under `/sys/fs/cgroup/unified` (hybrid hosts) or `/sys/fs/cgroup`
/// (pure v2), removed on drop.
pub struct Cgroup2 {
    pub path: PathBuf,
}

impl Cgroup2 {
    pub fn new() -> anyhow::Result<Self> {
        let root = if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
            PathBuf::from("/sys/fs/cgroup/unified")
        } else {
            PathBuf::from("/sys/fs/cgroup")
        };
        let path = root.join(unique_name("kcg"));
        std::fs::create_dir(&path)?;
        Ok(Cgroup2 { path })
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        // Members are short-lived clients; wait for them to be gone.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A unique pin directory under `/sys/fs/bpf` (bpffs mounted if absent), removed on drop — which
/// also detaches the socket-LB links pinned there.
pub struct BpfPinDir {
    pub path: PathBuf,
}

impl BpfPinDir {
    pub fn new() -> anyhow::Result<Self> {
        keelson_datapath::ebpf::loader::ensure_bpffs()?;
        let path = PathBuf::from("/sys/fs/bpf").join(unique_name("kpd"));
        Ok(BpfPinDir { path })
    }
}

impl Drop for BpfPinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A background process killed (by PID) and reaped on drop.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The one-node topology described in the module docs.
pub struct Topology {
    pub node: Netns,
    pub p1: Netns,
    pub p2: Netns,
    pub client: Netns,
    pub ext: Netns,
    _servers: Vec<Bg>,
}

fn link_pod(node: &Netns, pod: &Netns, idx: u8) -> anyhow::Result<()> {
    let host_if = format!("h{idx}");
    node.exec_ok(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", pod.name()])?;
    node.exec_ok(&["ip", "addr", "add", &format!("10.200.{idx}.1/24"), "dev", &host_if])?;
    node.exec_ok(&["ip", "link", "set", &host_if, "up"])?;
    pod.exec_ok(&["ip", "addr", "add", &format!("10.200.{idx}.2/24"), "dev", "eth0"])?;
    pod.exec_ok(&["ip", "link", "set", "eth0", "up"])?;
    pod.exec_ok(&["ip", "route", "add", "default", "via", &format!("10.200.{idx}.1")])?;
    Ok(())
}

fn server(ns: &Netns, name: &str, kind: &str) -> anyhow::Result<Bg> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path().display())).arg("--");
    match kind {
        "tcp" => cmd.args(["socat", "TCP4-LISTEN:8080,fork,reuseaddr", &format!("SYSTEM:echo {name} $SOCAT_PEERADDR")]),
        "echo" => cmd.args(["socat", &format!("TCP4-LISTEN:{ECHO_PORT},fork,reuseaddr"), "EXEC:cat"]),
        // A single-process UDP responder: socat's forking UDP server lets a lingering child steal
        // the next datagram, which makes answers flaky.
        _ => cmd.args([
            "python3",
            "-c",
            &format!(
                "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',8080))\n\
                 while True:\n d,a=s.recvfrom(2048)\n s.sendto(('{name} %s:%d\\n'%a).encode(),a)\n"
            ),
        ]),
    };
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    Ok(Bg(child))
}

impl Topology {
    pub fn new() -> anyhow::Result<Self> {
        let node = Netns::new("dn")?;
        let p1 = Netns::new("dpa")?;
        let p2 = Netns::new("dpb")?;
        let client = Netns::new("dpc")?;
        let ext = Netns::new("dx")?;
        node.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        link_pod(&node, &p1, 1)?;
        link_pod(&node, &p2, 2)?;
        link_pod(&node, &client, 3)?;
        node.exec_ok(&["ip", "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", ext.name()])?;
        node.exec_ok(&["ip", "addr", "add", &format!("{NODE_IP}/24"), "dev", "uplink"])?;
        node.exec_ok(&["ip", "link", "set", "uplink", "up"])?;
        ext.exec_ok(&["ip", "addr", "add", &format!("{EXT_IP}/24"), "dev", "eth0"])?;
        ext.exec_ok(&["ip", "link", "set", "eth0", "up"])?;
        // Like a real node: a default route (locally generated traffic to a VIP needs a route before
        // the nat OUTPUT hook can rewrite it).
        node.exec_ok(&["ip", "route", "add", "default", "via", EXT_IP])?;
        let servers = vec![
            server(&p1, "p1", "tcp")?,
            server(&p1, "p1", "udp")?,
            server(&p2, "p2", "tcp")?,
            server(&p2, "p2", "udp")?,
            server(&p1, "p1", "echo")?,
            server(&p2, "p2", "echo")?,
        ];
        let topo = Topology { node, p1, p2, client, ext, _servers: servers };
        for ip in [P1_IP, P2_IP] {
            crate::wait_for(Duration::from_secs(5), || tcp(&topo.client, None, ip, 8080))
                .ok_or_else(|| anyhow::anyhow!("server {ip}:8080 did not come up"))?;
        }
        Ok(topo)
    }
}

fn client_cmd(ns: &Netns, cgroup: Option<&Path>, socat_args: &[&str], input: &str) -> Option<String> {
    let enter = match cgroup {
        Some(cg) => format!("echo $$ > {}/cgroup.procs && ", cg.display()),
        None => String::new(),
    };
    let script =
        format!("{enter}exec nsenter --net={} -- timeout 3 socat -T1 {}", ns.path().display(), socat_args.join(" "));
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take()?;
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if s.is_empty() { None } else { Some(s) }
}

/// One TCP request from `ns` (optionally from inside `cgroup`): the server's answer, or `None`.
pub fn tcp(ns: &Netns, cgroup: Option<&Path>, ip: &str, port: u16) -> Option<String> {
    client_cmd(ns, cgroup, &["-", &format!("TCP4:{ip}:{port},connect-timeout=1")], "")
}

/// One UDP request with an *unconnected* socket (sendto/recvfrom): socat only accepts replies whose
/// source is the address it sent to, so this also checks that replies appear to come from the VIP.
pub fn udp(ns: &Netns, cgroup: Option<&Path>, ip: &str, port: u16) -> Option<String> {
    client_cmd(ns, cgroup, &["-", &format!("UDP4-SENDTO:{ip}:{port}")], "x\n")
}

/// Runs `n` requests and returns the set of responding pods (`"p1"`, `"p2"`), plus the peer
/// addresses the servers saw.
pub fn responders(
    n: usize,
    mut one: impl FnMut() -> Option<String>,
) -> (std::collections::BTreeSet<String>, std::collections::BTreeSet<String>) {
    let mut pods = std::collections::BTreeSet::new();
    let mut peers = std::collections::BTreeSet::new();
    for _ in 0..n {
        if let Some(ans) = one() {
            let mut it = ans.split_whitespace();
            if let Some(p) = it.next() {
                pods.insert(p.to_string());
            }
            if let Some(peer) = it.next() {
                peers.insert(peer.to_string());
            }
        }
    }
    (pods, peers)
}

/// A long-lived TCP connection (socat client with piped stdio) to `ip:port`, started from `ns` inside
/// `cgroup`. [`Conn::roundtrip`] sends a line and reads the echo.
pub struct Conn {
    child: Bg,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Conn {
    pub fn open(ns: &Netns, cgroup: Option<&Path>, ip: &str, port: u16) -> anyhow::Result<Conn> {
        let enter = match cgroup {
            Some(cg) => format!("echo $$ > {}/cgroup.procs && ", cg.display()),
            None => String::new(),
        };
        let script =
            format!("{enter}exec nsenter --net={} -- socat - TCP4:{ip}:{port},connect-timeout=2", ns.path().display());
        let mut child =
            Command::new("sh").args(["-c", &script]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        let stdout = std::io::BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
        Ok(Conn { child: Bg(child), stdin, stdout })
    }

    /// Sends `line` and returns what came back (the echo server answers the same line).
    pub fn roundtrip(&mut self, line: &str) -> anyhow::Result<String> {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut got = String::new();
        self.stdout.read_line(&mut got)?;
        Ok(got.trim().to_string())
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
}
