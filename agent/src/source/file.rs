//! The file pod source: a manifest directory (kubelet's `staticPodPath`), as a [`PodSource`].
//!
//! The directory is re-read every poll interval (level-triggered: a missed notification cannot lose
//! a pod, and editors that replace files are handled) and, in addition, as soon as inotify reports
//! a change ([`DirWatcher`]), so a new manifest is picked up without waiting for the next poll. Files are `*.yaml`, `*.yml` or `*.json`; hidden files and
//! editor backups are ignored. Rejected documents are reported (logged once per content change,
//! and listed by the status endpoint) without disturbing other pods.

use super::{PodSet, PodSource};
use crate::manifest::{self, ManifestError};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::warn;

/// The manifest directory as a pod source: re-read every `poll` and on inotify changes.
pub struct FileSource {
    dir: PathBuf,
    node_name: String,
    poll: Duration,
    watcher: Option<DirWatcher>,
    first: bool,
    prev_errors: Vec<ManifestError>,
    errors: Arc<Mutex<Vec<ManifestError>>>,
}

impl FileSource {
    pub fn new(dir: &Path, node_name: &str, poll: Duration) -> Self {
        let watcher = match DirWatcher::new(dir) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "no inotify on the manifest dir; polling only");
                None
            }
        };
        FileSource {
            dir: dir.to_path_buf(),
            node_name: node_name.to_string(),
            poll,
            watcher,
            first: true,
            prev_errors: Vec::new(),
            errors: Arc::default(),
        }
    }

    /// The manifests rejected by the last read (shown by the local endpoint).
    pub fn errors(&self) -> Arc<Mutex<Vec<ManifestError>>> {
        self.errors.clone()
    }

    async fn changed(&self) {
        let inotify = async {
            match &self.watcher {
                Some(w) if w.changed().await.is_ok() => {}
                _ => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(self.poll) => {}
            _ = inotify => {}
        }
    }
}

#[async_trait]
impl PodSource for FileSource {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn next(&mut self) -> PodSet {
        if !self.first {
            self.changed().await;
        }
        self.first = false;
        let snap = read_dir(&self.dir, &self.node_name);
        report_new_errors(&self.prev_errors, &snap.errors);
        if let Ok(mut e) = self.errors.lock() {
            e.clone_from(&snap.errors);
        }
        self.prev_errors = snap.errors;
        snap.pods
    }
}

/// The result of reading the manifest directory once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Accepted pods keyed by uid.
    pub pods: BTreeMap<String, Pod>,
    pub errors: Vec<ManifestError>,
}

fn wanted(name: &str) -> bool {
    !name.starts_with('.') && !name.ends_with('~') && [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e))
}

/// Reads every manifest in `dir`. A missing directory yields no pods (and one error).
pub fn read_dir(dir: &Path, node_name: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            snap.errors.push(ManifestError {
                file: dir.to_path_buf(),
                doc: None,
                field: String::new(),
                reason: format!("cannot read manifest directory: {e}"),
            });
            return snap;
        }
    };
    let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if !wanted(&name) || !f.is_file() {
            continue;
        }
        let text = match std::fs::read(&f) {
            Ok(b) if b.len() > 1 << 20 => {
                snap.errors.push(ManifestError {
                    file: f.clone(),
                    doc: None,
                    field: String::new(),
                    reason: "file larger than 1 MiB".into(),
                });
                continue;
            }
            Ok(b) => String::from_utf8_lossy(&b).to_string(),
            Err(e) => {
                snap.errors.push(ManifestError {
                    file: f.clone(),
                    doc: None,
                    field: String::new(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        for r in manifest::decode_file(&f, &text, node_name) {
            match r {
                Ok(sp) => {
                    let uid = sp.pod.metadata.uid.clone().unwrap_or_default();
                    let key = (sp.pod.metadata.namespace.clone(), sp.pod.metadata.name.clone());
                    let dup =
                        snap.pods.values().any(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()) == key);
                    if dup {
                        snap.errors.push(ManifestError {
                            file: f.clone(),
                            doc: None,
                            field: "metadata.name".into(),
                            reason: format!(
                                "pod {}/{} is already defined by another manifest",
                                key.0.unwrap_or_default(),
                                key.1.unwrap_or_default()
                            ),
                        });
                        continue;
                    }
                    snap.pods.insert(uid, sp.pod);
                }
                Err(e) => snap.errors.push(e),
            }
        }
    }
    snap
}

/// Wakes the static pod loop when the manifest directory changes (inotify). Only a latency
/// optimisation: the periodic re-read stays the source of truth.
pub struct DirWatcher {
    fd: tokio::io::unix::AsyncFd<InotifyFd>,
}

/// `AsyncFd` needs `AsRawFd`; nix's `Inotify` only implements `AsFd`.
struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl DirWatcher {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(std::io::Error::from)?;
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_ATTRIB;
        ino.add_watch(dir, mask).map_err(std::io::Error::from)?;
        // SAFETY: `InotifyFd` owns the inotify descriptor (nix's `Inotify` holds an `OwnedFd`), so it
        // stays open and is the same descriptor for as long as the `AsyncFd` holds it.
        let fd =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(InotifyFd(ino), tokio::io::Interest::READABLE) }
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(DirWatcher { fd })
    }

    /// Resolves after the next batch of changes (events are drained, not interpreted).
    pub async fn changed(&self) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.get_inner().0.read_events() {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Logs errors that are new since the previous snapshot (so a bad file is reported once, not
/// every poll).
pub fn report_new_errors(prev: &[ManifestError], cur: &[ManifestError]) {
    for e in cur {
        if !prev.contains(e) {
            warn!(file = %e.file.display(), field = %e.field, reason = %e.reason, "rejected static pod manifest: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_good_files_and_reports_bad_ones() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("a.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: i}]}\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("b.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec: {containerz: []}\n",
        )
        .unwrap();
        std::fs::write(d.path().join(".hidden.yaml"), "garbage: [").unwrap();
        std::fs::write(d.path().join("notes.txt"), "garbage: [").unwrap();
        std::fs::write(
            d.path().join("c.json"),
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#,
        )
        .unwrap();
        let s = read_dir(d.path(), "n1");
        assert_eq!(s.pods.len(), 1);
        assert_eq!(s.pods.values().next().unwrap().metadata.name.as_deref(), Some("a-n1"));
        assert_eq!(s.errors.len(), 2, "{:?}", s.errors);
        assert!(s.errors.iter().any(|e| e.field == "spec.containerz"));
        assert!(s.errors.iter().any(|e| e.reason.contains("already defined")));
    }

    #[test]
    fn missing_dir_is_an_error_not_a_panic() {
        let s = read_dir(Path::new("/nonexistent/keelson"), "n1");
        assert!(s.pods.is_empty());
        assert_eq!(s.errors.len(), 1);
    }
}
