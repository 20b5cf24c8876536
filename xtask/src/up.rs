//! `cargo xtask up` / `cargo xtask down`: a one-node keelson cluster on this machine.
//!
//! `up` builds the binaries and the images, starts a private containerd, `keelson-apiserver` on
//! 127.0.0.1:6443 (embedded store, with the in-process controllers and scheduler), and the agent
//! inside a node network namespace (`keelson-up`, so the host's own routes, bridges and nft tables
//! are never touched). The agent joins the API server as `kubeadm join` does: a bootstrap token from
//! `keelson-apiserver token create`, the CA pinned by its hash, a CSR for `system:node:keelson-up`.
//! The node netns reaches the host's loopback API through a `socat` pair over a unix socket. `up`
//! then shows the node Ready, a static pod (mirrored into the API) and a pod created with kubectl,
//! placed by the scheduler, Ready and answering on its pod IP. Everything keeps running in the
//! background until `cargo xtask down`, which stops only the processes `up` started (by PID) and
//! removes what they created. State lives under `target/keelson-up/`.

use crate::util::{cargo, sh, target_dir};
use anyhow::{Context, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NETNS: &str = "keelson-up";
const NAMESPACE: &str = "keelson-up";
const CGROUP_ROOT: &str = "keelson-up";
const API_LISTEN: &str = "127.0.0.1:6443";
/// The node's name (its Node object, its certificate's `system:node:<name>`).
const NODE: &str = "keelson-up";

/// kubectl: the one on PATH, else the newest preinstalled Google Cloud SDK one.
fn kubectl() -> PathBuf {
    if crate::util::have("kubectl") {
        return PathBuf::from("kubectl");
    }
    PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.33")
}

#[derive(Args)]
pub struct UpArgs {
    /// Stop and remove everything afterwards (a smoke test of the whole path).
    #[arg(long)]
    pub check: bool,
}

fn state_dir() -> PathBuf {
    target_dir().join("keelson-up")
}

/// The pod `up` creates through the API (no nodeName: the scheduler places it).
const API_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: hello-api
  labels: {app: hello-api}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: web
    image: keelson.local/busybox:latest
    command: [httpd, -f, -v, -p, "80", -h, /var/www]
    ports: [{name: http, containerPort: 80}]
    readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 2}
    resources:
      requests: {cpu: 50m, memory: 16Mi}
      limits: {cpu: 200m, memory: 64Mi}
"#;

const DEMO_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: hello
  labels: {app: hello}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: web
    image: keelson.local/busybox:latest
    command: [httpd, -f, -v, -p, "80", -h, /var/www]
    ports: [{name: http, containerPort: 80}]
    readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 2}
    livenessProbe: {tcpSocket: {port: http}, periodSeconds: 5}
    resources:
      requests: {cpu: 50m, memory: 16Mi}
      limits: {cpu: 200m, memory: 64Mi}
"#;

fn spawn_bg(cmd: &mut Command, log: &Path, pidfile: &Path) -> anyhow::Result<u32> {
    let f = std::fs::File::create(log)?;
    let child =
        cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f).spawn().with_context(|| format!("spawn {cmd:?}"))?;
    std::fs::write(pidfile, child.id().to_string())?;
    Ok(child.id())
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

pub fn run(a: UpArgs) -> anyhow::Result<()> {
    if !crate::util::is_root() {
        bail!("cargo xtask up needs root (containerd, network namespaces, cgroups)");
    }
    crate::deps::run_deps()?;
    let _ = down();
    sh(cargo().args(["build", "-p", "keelson-agent", "-p", "keelson-api-shim", "--bins"]))?;
    crate::images::run()?;
    let d = state_dir();
    for sub in ["containerd", "manifests", "run", "logs", "cni/net.d", "cni/cache", "ipam", "api"] {
        std::fs::create_dir_all(d.join(sub))?;
    }
    let c = d.join("containerd");
    std::fs::write(c.join("config.toml"), containerd_config(&c))?;
    spawn_bg(
        Command::new("containerd").arg("--config").arg(c.join("config.toml")),
        &d.join("containerd.log"),
        &d.join("containerd.pid"),
    )?;
    let sock = c.join("containerd.sock");
    wait_until("containerd", Duration::from_secs(20), || std::os::unix::net::UnixStream::connect(&sock).is_ok())?;
    println!("up: containerd running ({})", sock.display());

    sh(Command::new("ip").args(["netns", "add", NETNS]))?;
    sh(Command::new("ip").args(["netns", "exec", NETNS, "ip", "link", "set", "lo", "up"]))?;
    sh(Command::new("ip").args(["netns", "exec", NETNS, "sysctl", "-qw", "net.ipv4.ip_forward=1"]))?;
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "keelson-up",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": d.join("ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(d.join("cni/net.d/10-keelson.conflist"), serde_json::to_vec_pretty(&conflist)?)?;
    std::fs::write(d.join("manifests/hello.yaml"), DEMO_POD)?;

    // The API server first: the agent joins it.
    let api = d.join("api");
    let apiserver = target_dir().join("debug/keelson-apiserver");
    spawn_bg(
        Command::new(&apiserver).arg("--data-dir").arg(&api).args(["--listen", API_LISTEN]),
        &d.join("apiserver.log"),
        &d.join("apiserver.pid"),
    )?;
    let kubeconfig = api.join("admin.kubeconfig");
    let kc = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(kubectl()).arg("--kubeconfig").arg(&kubeconfig).args(args).output()?)
    };
    wait_until("keelson-apiserver", Duration::from_secs(60), || {
        kc(&["get", "ns", "kube-system"]).is_ok_and(|o| o.status.success())
    })
    .with_context(|| format!("apiserver log: {}", d.join("apiserver.log").display()))?;
    println!("up: keelson-apiserver running on https://{API_LISTEN} (kubeconfig: {})", kubeconfig.display());

    // The node netns's 127.0.0.1:6443 is the host's, through a unix socket (no host routes).
    let bridge_sock = d.join("api.sock");
    let port = API_LISTEN.rsplit(':').next().unwrap_or("6443");
    spawn_bg(
        Command::new("socat")
            .arg(format!("UNIX-LISTEN:{},fork", bridge_sock.display()))
            .arg(format!("TCP:{API_LISTEN}")),
        &d.join("bridge-host.log"),
        &d.join("bridge-host.pid"),
    )?;
    wait_until("the API bridge socket", Duration::from_secs(10), || bridge_sock.exists())?;
    spawn_bg(
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{NETNS}"))
            .args(["--", "socat"])
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
            .arg(format!("UNIX-CONNECT:{}", bridge_sock.display())),
        &d.join("bridge-node.log"),
        &d.join("bridge-node.pid"),
    )?;

    // A bootstrap token and the CA pin, as `kubeadm token create --print-join-command`.
    let join = Command::new(&apiserver)
        .args(["token", "create", "--ttl", "1h", "--print-join-command", "--data-dir"])
        .arg(&api)
        .output()?;
    let join_line = String::from_utf8_lossy(&join.stdout).trim().to_string();
    if !join.status.success() {
        bail!("token create failed: {}", String::from_utf8_lossy(&join.stderr));
    }
    let words: Vec<&str> = join_line.split_whitespace().collect();
    let flag = |name: &str| -> anyhow::Result<String> {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
            .with_context(|| format!("no {name} in the join command {join_line:?}"))
    };
    let (server, token, ca_hash) = (flag("--server")?, flag("--token")?, flag("--discovery-token-ca-cert-hash")?);
    println!("up: join command: {}", join_line.replace(&token, "<token>"));

    let agent = target_dir().join("debug/keelson-agent");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/var/run/netns/{NETNS}"))
        .arg("--")
        .arg(&agent)
        .arg("run")
        .args(["--node-name", NODE, "--node-ip", "10.88.0.1", "--namespace", NAMESPACE, "--cgroup-root", CGROUP_ROOT])
        .args(["--server", &server, "--token", &token, "--discovery-token-ca-cert-hash", &ca_hash])
        .arg("--cert-dir")
        .arg(d.join("pki"))
        .arg("--containerd-socket")
        .arg(&sock)
        .arg("--run-dir")
        .arg(d.join("run"))
        .arg("--log-dir")
        .arg(d.join("logs"))
        .arg("--manifest-dir")
        .arg(d.join("manifests"))
        .arg("--image-dir")
        .arg(crate::images::images_dir())
        .arg("--cni-conf-dir")
        .arg(d.join("cni/net.d"))
        .arg("--cni-cache-dir")
        .arg(d.join("cni/cache"));
    spawn_bg(&mut cmd, &d.join("agent.log"), &d.join("agent.pid"))?;
    println!("up: keelson-agent running in netns {NETNS} (log: {})", d.join("agent.log").display());
    let agent_log = || format!("agent log: {}", d.join("agent.log").display());

    let mut nodes = String::new();
    wait_until("the node to be Ready in the API", Duration::from_secs(120), || {
        let Ok(o) = kc(&["get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"])
        else {
            return false;
        };
        String::from_utf8_lossy(&o.stdout).trim() == "True"
    })
    .with_context(agent_log)?;
    if let Ok(o) = kc(&["get", "nodes", "-o", "wide"]) {
        nodes = String::from_utf8_lossy(&o.stdout).to_string();
    }
    println!("\nup: kubectl get nodes -o wide\n{nodes}");

    let api_pod = d.join("hello-api.yaml");
    std::fs::write(&api_pod, API_POD)?;
    let o = kc(&["apply", "-f", api_pod.to_str().unwrap_or_default()])?;
    if !o.status.success() {
        bail!("kubectl apply of the demo pod failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let ready_ip = |name: &str| -> Option<String> {
        let o = kc(&["get", "pod", name, "-o", "json"]).ok()?;
        let p: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let ready = p["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        let ip = p["status"]["podIP"].as_str().unwrap_or_default().to_string();
        (ready && !ip.is_empty()).then_some(ip)
    };
    let mirror = format!("hello-{NODE}");
    let (mut api_ip, mut static_ip) = (String::new(), String::new());
    wait_until("both demo pods to be Ready in the API", Duration::from_secs(180), || {
        match (ready_ip("hello-api"), ready_ip(&mirror)) {
            (Some(a), Some(s)) => {
                (api_ip, static_ip) = (a, s);
                true
            }
            _ => false,
        }
    })
    .with_context(agent_log)?;
    if let Ok(o) = kc(&["get", "pods", "-o", "wide"]) {
        println!("up: kubectl get pods -o wide\n{}", String::from_utf8_lossy(&o.stdout));
    }
    for (what, ip) in [("the pod created through the API", &api_ip), ("the static pod", &static_ip)] {
        let page = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{NETNS}"))
            .args(["sh", "-c", &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc {ip} 80")])
            .output()?;
        let page = String::from_utf8_lossy(&page.stdout).to_string();
        if !page.contains("hello from a keelson pod") {
            bail!("{what} did not answer on {ip}:80: {page:?}");
        }
        println!("up: GET http://{ip}/ ({what}) from the node answered: {}", page.lines().last().unwrap_or_default());
    }
    println!(
        "\nup: keelson is running.\n  kubectl: kubectl --kubeconfig {} get nodes,pods -A\n  agent:   {} pods --run-dir {}\n  logs:    {}\n  network: ip netns exec {NETNS} ip addr\n  stop:    cargo xtask down",
        kubeconfig.display(),
        agent.display(),
        d.join("run").display(),
        d.join("logs").display(),
    );
    if a.check {
        down()?;
    }
    Ok(())
}

fn containerd_config(c: &Path) -> String {
    format!(
        "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/containerd.sock\"\n[ttrpc]\n  address = \"{0}/containerd.sock.ttrpc\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{0}/opt\"\n",
        c.display()
    )
}

fn kill_pidfile(p: &Path, sig: i32, wait: Duration) {
    let Ok(pid) = std::fs::read_to_string(p).map(|s| s.trim().parse::<i32>().unwrap_or(0)) else { return };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) on a PID this tool started and recorded.
    unsafe { libc::kill(pid, sig) };
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && Path::new(&format!("/proc/{pid}")).exists() {
        // Reap if it is our child (it is not when a previous `up` started it).
        std::thread::sleep(Duration::from_millis(100));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            break;
        }
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = std::fs::remove_file(p);
}

/// Stops what `up` started and removes what it created. Safe to run when nothing is up.
pub fn down() -> anyhow::Result<()> {
    let d = state_dir();
    if !d.exists() {
        return Ok(());
    }
    kill_pidfile(&d.join("agent.pid"), libc::SIGTERM, Duration::from_secs(5));
    kill_pidfile(&d.join("apiserver.pid"), libc::SIGTERM, Duration::from_secs(5));
    kill_pidfile(&d.join("bridge-node.pid"), libc::SIGTERM, Duration::from_secs(2));
    kill_pidfile(&d.join("bridge-host.pid"), libc::SIGTERM, Duration::from_secs(2));
    let sock = d.join("containerd/containerd.sock");
    if sock.exists() {
        let ctr = |args: &[&str]| -> Vec<String> {
            Command::new("ctr")
                .arg("-a")
                .arg(&sock)
                .args(["-n", NAMESPACE])
                .args(args)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        for t in ctr(&["tasks", "ls", "-q"]) {
            ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", &t]);
        }
        std::thread::sleep(Duration::from_millis(500));
        for t in ctr(&["tasks", "ls", "-q"]) {
            ctr(&["tasks", "delete", "-f", &t]);
        }
        for c in ctr(&["containers", "ls", "-q"]) {
            ctr(&["containers", "delete", &c]);
        }
    }
    kill_pidfile(&d.join("containerd.pid"), libc::SIGTERM, Duration::from_secs(10));
    if let Ok(rd) = std::fs::read_dir(d.join("run/netns")) {
        for e in rd.flatten() {
            let _ = Command::new("umount").arg("-l").arg(e.path()).status();
        }
    }
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        let prefix = d.to_string_lossy().to_string();
        let mut targets: Vec<&str> =
            mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|t| t.starts_with(&prefix)).collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for t in targets {
            let _ = Command::new("umount").arg("-l").arg(t).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", NETNS]).output();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in rd.flatten() {
            remove_tree(&h.path().join(CGROUP_ROOT));
        }
    }
    std::fs::remove_dir_all(&d).with_context(|| format!("remove {}", d.display()))?;
    println!("down: stopped and removed keelson-up");
    Ok(())
}

fn remove_tree(p: &Path) {
    if !p.is_dir() {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}
