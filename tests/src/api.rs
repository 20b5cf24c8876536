//! Harness for keelson-apiserver tests: starts the real binary on a loopback port with a
//! temporary data directory and stops it (by PID) on drop; runs the preinstalled kubectl
//! versions and the Python client against it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// kubectl versions the suites run against (`/usr/lib/google-cloud-sdk/bin/kubectl.<v>`).
pub const KUBECTL_VERSIONS: &[&str] = &["1.33", "1.32", "1.27"];

/// A running keelson-apiserver.
pub struct ApiServer {
    child: Child,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub port: u16,
}

fn binary() -> PathBuf {
    crate::target_dir().join("debug").join("keelson-apiserver")
}

impl ApiServer {
    /// Starts a server with a fresh data directory and default flags plus `extra`.
    pub fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new().prefix("keelson-api").tempdir()?;
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_in(&dir, 0, extra)?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// Starts a server on `dir` (reusing its state) and `port` (0: any free port).
    pub fn start_in(dir: &Path, port: u16, extra: &[&str]) -> anyhow::Result<Self> {
        let bin = binary();
        anyhow::ensure!(bin.exists(), "{} not built: run `cargo build -p keelson-api-shim`", bin.display());
        let mut child = Command::new(&bin)
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(dir.join("server.log"))?))
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("https://127.0.0.1:").nth(1) {
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    let _ = tx.send(port.parse::<u16>().unwrap_or(0));
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(p) if p != 0 => p,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                anyhow::bail!("keelson-apiserver did not start:\n{log}");
            }
        };
        Ok(ApiServer { child, dir: dir.to_path_buf(), _tmp: None, port })
    }

    /// Starts a server whose static token file holds, besides a random admin token (group
    /// `system:masters`), one line per `(token, user, groups)`. The file is written before the
    /// first start; the server keeps an existing token file.
    pub fn start_with_users(users: &[(&str, &str, &[&str])], extra: &[&str]) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new().prefix("keelson-api").tempdir()?;
        write_token_file(tmp.path(), users)?;
        let mut s = Self::start_in(tmp.path(), 0, extra)?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// Runs kubectl as the user owning `token` (the admin kubeconfig's cluster, `--token` override).
    pub fn kubectl_as(&self, version: &str, token: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut full = vec!["--token", token];
        full.extend_from_slice(args);
        self.kubectl_output(version, &full)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server with SIGKILL (simulates a crash) and waits for it.
    pub fn kill9(mut self) -> (PathBuf, Option<tempfile::TempDir>, u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.dir.clone(), self._tmp.take(), self.port)
    }

    /// Runs kubectl `version` with this server's kubeconfig.
    pub fn kubectl(&self, version: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl_output(version, args)?;
        if !out.status.success() {
            anyhow::bail!(
                "kubectl.{version} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl and returns its raw output whatever the exit status (exit 124: it ran for
    /// more than two minutes and was stopped).
    pub fn kubectl_output(&self, version: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let bin = format!("/usr/lib/google-cloud-sdk/bin/kubectl.{version}");
        let kc = self.kubeconfig();
        let mut full: Vec<&str> = vec!["--kubeconfig", kc.to_str().unwrap_or_default()];
        full.extend_from_slice(args);
        // A bound on every call: a server bug that makes kubectl wait forever (e.g. a namespace
        // that never finishes deleting) fails the test instead of hanging CI.
        Ok(Command::new("timeout")
            .args(["--kill-after=5", "120", &bin])
            .args(&full)
            .env("HOME", &self.dir)
            .env("KUBECACHEDIR", self.dir.join(format!("kcache-{version}")))
            .output()?)
    }

    /// A kube-rs client for this server (token auth from the admin kubeconfig).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig())?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }

    /// Runs curl against the server with the cluster CA (no credentials unless given in `args`).
    pub fn curl(&self, args: &[&str]) -> anyhow::Result<String> {
        let ca = self.dir.join("ca.crt");
        let out = Command::new("curl")
            .args(["-sS", "--cacert", ca.to_str().unwrap_or_default(), "-w", "\n%{http_code}"])
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// The admin bearer token.
    pub fn token(&self) -> anyhow::Result<String> {
        let s = std::fs::read_to_string(self.dir.join("tokens.csv"))?;
        s.split(',').next().map(str::to_string).ok_or_else(|| anyhow::anyhow!("empty token file"))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `dir/tokens.csv` (kube-apiserver's static token format) with a random admin token in
/// `system:masters` and the given `(token, user, groups)` lines.
pub fn write_token_file(dir: &Path, users: &[(&str, &str, &[&str])]) -> anyhow::Result<()> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let admin = format!("admin{:x}{nanos:x}", std::process::id());
    let mut text = format!("{admin},admin,admin,\"system:masters\"\n");
    for (token, user, groups) in users {
        text.push_str(&format!("{token},{user},{user}-uid,\"{}\"\n", groups.join(",")));
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("tokens.csv"), text)?;
    Ok(())
}

/// Applies YAML from a string through a temp file.
pub fn write_manifest(dir: &Path, name: &str, yaml: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, yaml)?;
    Ok(p)
}

/// A private etcd (Debian `etcd-server` 3.4) on loopback with a temporary data directory,
/// killed by PID on drop.
pub struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    pub endpoint: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    /// The etcd process id (tests pause it with SIGSTOP to make it unreachable).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("keelson-etcd").tempdir()?;
        let (client, peer) = (free_port()?, free_port()?);
        let endpoint = format!("http://127.0.0.1:{client}");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--name", "keelson-test"])
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &format!("keelson-test=http://127.0.0.1:{peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("etcd.log"))?))
            .spawn()
            .map_err(|e| anyhow::anyhow!("spawn etcd (Debian package etcd-server): {e}"))?;
        let mut etcd = Etcd { child, _dir: dir, endpoint };
        let health = format!("{}/health", etcd.endpoint);
        let ok = crate::wait_for(Duration::from_secs(20), || {
            let out = Command::new("curl").args(["-sf", &health]).output().ok()?;
            String::from_utf8_lossy(&out.stdout).contains("true").then_some(())
        });
        if ok.is_none() {
            let _ = etcd.child.kill();
            anyhow::bail!("etcd did not become healthy");
        }
        Ok(etcd)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
