//! `cargo xtask up` / `cargo xtask down`: a one-node keelson on this machine.
//!
//! `up` builds the agent and the images, starts a private containerd and the agent inside a node
//! network namespace (`keelson-up`, so the host's own routes, bridges and nft tables are never
//! touched), drops a demo static pod (busybox httpd) into the manifest directory, waits for it to be
//! Ready and fetches its page over the pod network. Everything keeps running in the background
//! until `cargo xtask down`, which stops only the processes `up` started (by PID) and removes what
//! they created. State lives under `target/keelson-up/`. `up` also starts `keelson-apiserver` on
//! 127.0.0.1:6443 (embedded store) and shows `kubectl get ns` through its admin kubeconfig; the
//! agent does not register with it yet (that is the node-registration work).

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

    let agent = target_dir().join("debug/keelson-agent");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/var/run/netns/{NETNS}"))
        .arg("--")
        .arg(&agent)
        .arg("run")
        .args([
            "--node-name",
            "keelson-up",
            "--node-ip",
            "10.88.0.1",
            "--namespace",
            NAMESPACE,
            "--cgroup-root",
            CGROUP_ROOT,
        ])
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

    let pods = |out: &str| -> anyhow::Result<String> {
        let o = Command::new(&agent).args(["pods", "-o", out, "--run-dir"]).arg(d.join("run")).output()?;
        Ok(String::from_utf8_lossy(&o.stdout).to_string())
    };
    let mut ip = String::new();
    wait_until("the demo pod to be Ready", Duration::from_secs(120), || {
        let Ok(body) = pods("json") else { return false };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let Some(p) = v["items"].as_array().and_then(|a| a.first()).cloned() else { return false };
        let ready = p["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        ip = p["status"]["podIP"].as_str().unwrap_or_default().to_string();
        ready && !ip.is_empty()
    })
    .with_context(|| format!("agent log: {}", d.join("agent.log").display()))?;
    print!("{}", pods("wide")?);
    let page = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{NETNS}"))
        .args(["sh", "-c", &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc {ip} 80")])
        .output()?;
    let page = String::from_utf8_lossy(&page.stdout).to_string();
    if !page.contains("hello from a keelson pod") {
        bail!("the demo pod did not answer on {ip}:80: {page:?}");
    }
    println!("\nup: GET http://{ip}/ from the node answered:\n{}", page.lines().last().unwrap_or_default());

    let api = d.join("api");
    spawn_bg(
        Command::new(target_dir().join("debug/keelson-apiserver"))
            .arg("--data-dir")
            .arg(&api)
            .args(["--listen", API_LISTEN]),
        &d.join("apiserver.log"),
        &d.join("apiserver.pid"),
    )?;
    let kubeconfig = api.join("admin.kubeconfig");
    let mut ns_out = String::new();
    wait_until("keelson-apiserver", Duration::from_secs(60), || {
        let Ok(o) = Command::new(kubectl()).arg("--kubeconfig").arg(&kubeconfig).args(["get", "ns"]).output() else {
            return false;
        };
        ns_out = String::from_utf8_lossy(&o.stdout).to_string();
        o.status.success() && ns_out.contains("kube-system")
    })
    .with_context(|| format!("apiserver log: {}", d.join("apiserver.log").display()))?;
    println!("\nup: kubectl --kubeconfig {} get ns\n{ns_out}", kubeconfig.display());
    println!(
        "up: keelson is running.\n  pods:    {} pods --run-dir {}\n  logs:    {}\n  network: ip netns exec {NETNS} ip addr\n  API:     kubectl --kubeconfig {} get ns\n  stop:    cargo xtask down",
        agent.display(),
        d.join("run").display(),
        d.join("logs").display(),
        kubeconfig.display()
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
