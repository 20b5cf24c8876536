//! A whole keelson node for agent integration tests: a node network namespace (the agent and the
//! reference CNI plugins live there, never in the host netns), a private containerd, a unique
//! containerd namespace and cgroup root, and a `keelson-agent` process started and ended by PID.
//! Drop removes everything the node created, also after a failed assertion.
//!
//! The leak probes (`containers`, `snapshots`, `ipam_files`, `netns_files`, `veths`,
//! `pod_cgroups`, `pods`) panic when their tool or read fails: an empty list must mean "nothing
//! there", never "could not look" (a dead containerd or agent would otherwise pass every leak check).

use crate::{Containerd, Netns, run, unique_name, wait_for};
use k8s_openapi::api::core::v1::Pod;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Node {
    pub netns: Netns,
    pub containerd: Containerd,
    pub dir: tempfile::TempDir,
    pub namespace: String,
    pub cgroup_root: String,
    pub subnet_prefix: String,
    pub extra_args: Vec<String>,
    agent: Option<Child>,
}

/// Workspace binaries: `KEELSON_BIN_DIR` if set (benchmarks use release builds), else target/debug.
pub fn bin(name: &str) -> PathBuf {
    std::env::var_os("KEELSON_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::target_dir().join("debug"))
        .join(name)
}

impl Node {
    /// Creates the node and starts its agent. `extra_args` go to `keelson-agent run`.
    pub fn start(extra_args: &[&str]) -> anyhow::Result<Node> {
        let mut node = Node::create(extra_args)?;
        node.start_agent()?;
        Ok(node)
    }

    /// Creates the node (netns, containerd, directories, CNI config) without starting the agent:
    /// for tests that must prepare more (e.g. an [`ApiBridge`]) before [`Node::start_agent`].
    pub fn create(extra_args: &[&str]) -> anyhow::Result<Node> {
        crate::require_root();
        let netns = Netns::new("nd")?;
        netns.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let containerd = Containerd::start()?;
        let dir = tempfile::Builder::new().prefix("kt-node-").tempdir()?;
        let name = netns.name().to_string();
        let d = dir.path();
        for sub in ["manifests", "run", "logs", "cni/net.d", "cni/cache", "ipam"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let subnet_prefix = "10.88.0".to_string();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "keelson-test",
            "plugins": [
                {"type": "bridge", "bridge": "kbr0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("{subnet_prefix}.0/24")}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": d.join("ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(d.join("cni/net.d/10-keelson.conflist"), serde_json::to_vec_pretty(&conflist)?)?;
        std::fs::write(d.join("resolv.conf"), "nameserver 192.0.2.53\nsearch example.test\n")?;
        let node = Node {
            netns,
            containerd,
            dir,
            namespace: name.clone(),
            cgroup_root: format!("keelson-{name}"),
            subnet_prefix,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            agent: None,
        };
        Ok(node)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn run_dir(&self) -> PathBuf {
        self.path("run")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.path("logs")
    }

    /// Starts (or restarts) the agent process inside the node netns.
    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("agent.log"))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.path().display()))
            .arg("--")
            .arg(bin("keelson-agent"))
            .arg("run")
            .args(["--node-name", "node1", "--node-ip", "192.0.2.10"])
            .arg("--containerd-socket")
            .arg(self.containerd.socket())
            .args(["--namespace", &self.namespace])
            .arg("--run-dir")
            .arg(d.join("run"))
            .arg("--log-dir")
            .arg(d.join("logs"))
            .arg("--manifest-dir")
            .arg(d.join("manifests"))
            .arg("--image-dir")
            .arg(crate::target_dir().join("images"))
            .arg("--cni-conf-dir")
            .arg(d.join("cni/net.d"))
            .arg("--cni-cache-dir")
            .arg(d.join("cni/cache"))
            .args(["--cgroup-root", &self.cgroup_root])
            .arg("--resolv-conf")
            .arg(d.join("resolv.conf"))
            .args(["--resync", "500ms"])
            .args(&self.extra_args)
            .args(if self.extra_args.iter().any(|a| a == "--manifest-poll") {
                &[][..]
            } else {
                &["--manifest-poll", "200ms"][..]
            })
            .env("RUST_LOG", "info,keelson_agent=debug,h2=warn,tower=warn,hyper=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn()?;
        self.agent = Some(child);
        let sock = d.join("run/agent.sock");
        let ok = wait_for(Duration::from_secs(60), || {
            keelson_agent::server::get_blocking(&self.run_dir(), "/healthz").ok().map(|_| ())
        });
        if ok.is_none() || !sock.exists() {
            anyhow::bail!("agent did not come up; log:\n{}", self.agent_log());
        }
        Ok(())
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|c| c.id())
    }

    /// Stops the agent with SIGTERM (a clean stop; pods keep running) and waits for it to exit.
    pub fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: signalling a child we started and still own (not yet reaped).
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let _ = c.wait();
        }
    }

    /// SIGKILLs the agent (pods keep running).
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    pub fn write_manifest(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        let tmp = self.path(&format!("manifests/.{file}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.path(&format!("manifests/{file}")))?;
        Ok(())
    }

    pub fn remove_manifest(&self, file: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.path(&format!("manifests/{file}")))?;
        Ok(())
    }

    /// The pods the agent reports. Fails when the agent does not answer or answers garbage.
    pub fn try_pods(&self) -> anyhow::Result<Vec<Pod>> {
        let body = keelson_agent::server::get_blocking(&self.run_dir(), "/pods")
            .map_err(|e| anyhow::anyhow!("agent /pods did not answer: {e}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| anyhow::anyhow!("agent /pods: {e}: {body}"))?;
        serde_json::from_value(v["items"].clone()).map_err(|e| anyhow::anyhow!("agent /pods items: {e}: {body}"))
    }

    /// The pods the agent reports; panics with the agent log tail when the agent does not answer
    /// ("agent down" is not "no pods").
    pub fn pods(&self) -> Vec<Pod> {
        self.try_pods().unwrap_or_else(|e| panic!("{e}\nagent log tail:\n{}", tail(&self.agent_log(), 40)))
    }

    pub fn pod(&self, name: &str) -> Option<Pod> {
        let full = format!("{name}-node1");
        self.pods().into_iter().find(|p| p.metadata.name.as_deref() == Some(full.as_str()))
    }

    pub fn events(&self) -> String {
        keelson_agent::server::get_blocking(&self.run_dir(), "/events").unwrap_or_default()
    }

    pub fn manifest_errors(&self) -> serde_json::Value {
        keelson_agent::server::get_blocking(&self.run_dir(), "/manifests")
            .ok()
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default()
    }

    /// Waits until `pred` holds for the pod; panics with the pod, events and agent log otherwise.
    pub fn wait_pod(&self, name: &str, what: &str, timeout: Duration, pred: impl Fn(&Pod) -> bool) -> Pod {
        if let Some(p) = wait_for(timeout, || self.pod(name).filter(|p| pred(p))) {
            return p;
        }
        panic!(
            "pod {name}: timed out after {timeout:?} waiting for {what}\npod: {}\nevents: {}\nagent log tail:\n{}",
            serde_json::to_string_pretty(&self.pod(name)).unwrap_or_default(),
            self.events(),
            tail(&self.agent_log(), 60)
        );
    }

    /// The container log file of `container` in pod `name` for restart `n`.
    pub fn log_file(&self, pod: &Pod, container: &str, n: u32) -> PathBuf {
        let md = &pod.metadata;
        self.log_dir()
            .join(format!(
                "{}_{}_{}",
                md.namespace.as_deref().unwrap_or(""),
                md.name.as_deref().unwrap_or(""),
                md.uid.as_deref().unwrap_or("")
            ))
            .join(container)
            .join(format!("{n}.log"))
    }

    /// Every keelson container in this node's containerd namespace (via `ctr`).
    pub fn containers(&self) -> Vec<String> {
        ctr(&self.containerd.socket(), &self.namespace, &["containers", "ls", "-q"])
            .unwrap_or_else(|e| panic!("listing containers: {e}"))
    }

    /// Active snapshots (container rootfs) in this node's containerd namespace.
    pub fn snapshots(&self) -> Vec<String> {
        ctr(&self.containerd.socket(), &self.namespace, &["snapshots", "ls"])
            .unwrap_or_else(|e| panic!("listing snapshots: {e}"))
            .into_iter()
            .skip(1)
            .filter(|l| l.contains("Active"))
            .collect()
    }

    /// Files under the host-local IPAM data dir that hold an allocation (not the lock file).
    pub fn ipam_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.path("ipam");
        for n in read_dir_or_panic(&root) {
            if !n.is_dir() {
                continue;
            }
            for f in read_dir_or_panic(&n) {
                let name = f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                if name != "lock" && !name.starts_with("last_reserved_ip") {
                    out.push(name);
                }
            }
        }
        out
    }

    /// Pod netns bind mounts under the agent's run dir (none before the first pod: no dir yet).
    pub fn netns_files(&self) -> Vec<PathBuf> {
        self.try_netns_files().unwrap_or_else(|e| panic!("listing {}: {e}", self.run_dir().join("netns").display()))
    }

    fn try_netns_files(&self) -> std::io::Result<Vec<PathBuf>> {
        match std::fs::read_dir(self.run_dir().join("netns")) {
            Ok(rd) => rd.map(|e| e.map(|e| e.path())).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// veth interfaces in the node netns.
    pub fn veths(&self) -> Vec<String> {
        self.netns
            .exec_ok(&["ip", "-o", "link", "show", "type", "veth"])
            .unwrap_or_else(|e| panic!("listing veths in the node netns: {e}"))
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(|s| s.split('@').next().unwrap_or(s).to_string()))
            .collect()
    }

    /// Pod cgroups under this node's root in the memory hierarchy (a QoS tier or the root that
    /// was never created holds none).
    pub fn pod_cgroups(&self) -> Vec<String> {
        let root = PathBuf::from("/sys/fs/cgroup/memory").join(&self.cgroup_root);
        let mut out = Vec::new();
        for tier in [root.clone(), root.join("burstable"), root.join("besteffort")] {
            let rd = match std::fs::read_dir(&tier) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("listing {}: {e}", tier.display()),
            };
            for e in rd {
                let e = e.unwrap_or_else(|e| panic!("listing {}: {e}", tier.display()));
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with("pod") && e.path().is_dir() {
                    out.push(n);
                }
            }
        }
        out
    }

    /// Runs a command in the node netns (e.g. to reach a pod IP).
    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<String> {
        self.netns.exec_ok(argv)
    }
}

/// A minimal OCI runtime spec (root, /proc, CAP_KILL) running `args` with the given namespaces, for
/// tests and benchmarks that drive the runtime directly without the agent's spec builder.
pub fn minimal_oci_spec(args: &[&str], namespaces: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/",
                    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": namespaces}
    })
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The entries of `dir`; panics on any read error (a leak probe that cannot look must not pass).
fn read_dir_or_panic(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .and_then(|rd| rd.map(|e| e.map(|e| e.path())).collect::<std::io::Result<Vec<_>>>())
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
}

/// Runs `ctr` against the node's containerd namespace; fails when ctr fails (exit status, spawn).
fn ctr(sock: &Path, ns: &str, args: &[&str]) -> anyhow::Result<Vec<String>> {
    let sock = sock.to_string_lossy().to_string();
    let mut a = vec!["-a", sock.as_str(), "-n", ns];
    a.extend_from_slice(args);
    let o = run("ctr", &a)?;
    Ok(String::from_utf8_lossy(&o.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_agent();
        // Remove every container (tasks die with SIGKILL), then netns mounts, cgroups.
        let sock = self.containerd.socket();
        // Cleanup is best effort (a panic in drop would abort); the probes above are strict.
        let list = |what: &str| ctr(&sock, &self.namespace, &[what, "ls", "-q"]).unwrap_or_default();
        for id in list("tasks") {
            let _ = run(
                "ctr",
                &["-a", &sock.to_string_lossy(), "-n", &self.namespace, "tasks", "kill", "-a", "-s", "SIGKILL", &id],
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        for id in list("tasks") {
            let _ = run("ctr", &["-a", &sock.to_string_lossy(), "-n", &self.namespace, "tasks", "delete", "-f", &id]);
        }
        for id in list("containers") {
            let _ = run("ctr", &["-a", &sock.to_string_lossy(), "-n", &self.namespace, "containers", "delete", &id]);
        }
        for ns in self.try_netns_files().unwrap_or_default() {
            let _ = Command::new("umount").arg("-l").arg(&ns).output();
            let _ = std::fs::remove_file(&ns);
        }
        remove_cgroup_tree(&self.cgroup_root);
        let _ = unique_name; // names come from the harness
    }
}

/// Removes `/<root>` from every cgroup hierarchy, deepest first.
pub fn remove_cgroup_tree(root: &str) {
    let Ok(mounts) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    for m in mounts.flatten() {
        let top = m.path().join(root);
        if top.is_dir() {
            let mut dirs = Vec::new();
            collect_dirs(&top, &mut dirs);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = std::fs::remove_dir(&d);
            }
        }
    }
}

fn collect_dirs(p: &Path, out: &mut Vec<PathBuf>) {
    out.push(p.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Makes an API server on the host's loopback reachable at the same `127.0.0.1:<port>` inside a
/// node netns, so an agent there can use the server's own kubeconfig (and its certificate for
/// 127.0.0.1) unchanged: one `socat` in the host netns listens on a unix socket in a temp dir and
/// connects to the server; one in the node netns listens on the port and connects to that socket
/// (a path is reachable from any netns). Both are stopped by PID on drop. Host routes, addresses
/// and firewall rules are not touched.
pub struct ApiBridge {
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl ApiBridge {
    pub fn start(netns: &Netns, port: u16) -> anyhow::Result<ApiBridge> {
        let dir = tempfile::Builder::new().prefix("kt-apibridge-").tempdir()?;
        let sock = dir.path().join("api.sock");
        let mut b = ApiBridge { children: Vec::new(), _dir: dir };
        b.children.push(
            Command::new("socat")
                .arg(format!("UNIX-LISTEN:{},fork", sock.display()))
                .arg(format!("TCP:127.0.0.1:{port}"))
                .stdin(Stdio::null())
                // "connection refused" while a test restarts the server is expected
                .stderr(Stdio::null())
                .spawn()?,
        );
        if crate::wait_for(Duration::from_secs(10), || sock.exists().then_some(())).is_none() {
            anyhow::bail!("socat did not create {}", sock.display());
        }
        b.children.push(
            Command::new("nsenter")
                .arg(format!("--net={}", netns.path().display()))
                .args(["--", "socat"])
                .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
                .arg(format!("UNIX-CONNECT:{}", sock.display()))
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let listening =
            || netns.exec_ok(&["ss", "-ltnH", &format!("sport = :{port}")]).ok().filter(|o| !o.trim().is_empty());
        if crate::wait_for(Duration::from_secs(10), listening).is_none() {
            anyhow::bail!("socat did not listen on 127.0.0.1:{port} in the node netns");
        }
        Ok(b)
    }
}

impl Drop for ApiBridge {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
