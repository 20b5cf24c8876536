//! The static pod source: a manifest directory (kubelet's `staticPodPath`).
//!
//! The directory is re-read every poll interval rather than watched with inotify: polling is
//! level-triggered (a missed notification cannot lose a pod), handles editors that replace files,
//! and costs a few `stat`s per second. Files are `*.yaml`, `*.yml` or `*.json`; hidden files and
//! editor backups are ignored. Rejected documents are reported (logged once per content change,
//! and listed by the status endpoint) without disturbing other pods.

use crate::manifest::{self, ManifestError};
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::path::Path;
use tracing::warn;

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
