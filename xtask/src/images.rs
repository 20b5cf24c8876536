//! `cargo xtask images`: deterministic OCI image archives built in Rust, no registry or docker.
//!
//! Each image is one layer: a tar with sorted entries, mtime 0 and uid/gid 0, gzipped with mtime 0,
//! so the same inputs give byte-identical archives (and digests) on every machine. The archive is an
//! OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) whose index entry carries the
//! `io.containerd.image.name` annotation, which is what the agent's importer uses as the image name.

use crate::util::{root, sh, target_dir};
use anyhow::{Context, bail};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const PAUSE_IMAGE: &str = "keelson.local/pause:latest";
pub const BUSYBOX_IMAGE: &str = "keelson.local/busybox:latest";

/// One entry of a layer.
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

struct ImageSpec {
    name: &'static str,
    file: &'static str,
    entries: BTreeMap<String, Entry>,
    config: serde_json::Value,
}

pub fn images_dir() -> PathBuf {
    target_dir().join("images")
}

/// Builds every image; returns the archive paths.
pub fn run() -> anyhow::Result<Vec<PathBuf>> {
    let out = images_dir();
    std::fs::create_dir_all(&out)?;
    let mut written = Vec::new();
    for spec in [pause_image(&out)?, busybox_image()?] {
        let path = out.join(spec.file);
        let digest = write_archive(&spec, &path)?;
        println!("images: {} -> {} ({})", spec.name, path.display(), &digest[..19]);
        written.push(path);
    }
    Ok(written)
}

fn pause_image(out: &Path) -> anyhow::Result<ImageSpec> {
    let src = root().join("xtask/images/pause.c");
    let bin = out.join("pause.bin");
    sh(Command::new("cc").args(["-static", "-Os", "-s", "-Wall", "-Werror", "-o"]).arg(&bin).arg(&src))?;
    let data = std::fs::read(&bin).with_context(|| format!("read {}", bin.display()))?;
    let mut entries = BTreeMap::new();
    entries.insert("pause".to_string(), Entry::File { data, mode: 0o755 });
    Ok(ImageSpec {
        name: PAUSE_IMAGE,
        file: "pause.tar",
        entries,
        config: json!({"Entrypoint": ["/pause"], "StopSignal": "SIGTERM", "User": "65535:65535"}),
    })
}

fn busybox_image() -> anyhow::Result<ImageSpec> {
    let bb = Path::new("/bin/busybox");
    let data = std::fs::read(bb).context("read /bin/busybox (install busybox-static: cargo xtask deps)")?;
    let list = Command::new(bb).arg("--list").output().context("busybox --list")?;
    if !list.status.success() {
        bail!("busybox --list failed");
    }
    let mut entries = BTreeMap::new();
    for d in ["bin", "etc", "tmp", "var", "var/www", "root", "home", "proc", "sys", "dev"] {
        entries.insert(d.to_string(), Entry::Dir);
    }
    entries.insert("bin/busybox".into(), Entry::File { data, mode: 0o755 });
    for applet in String::from_utf8_lossy(&list.stdout).lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet != "busybox" && !applet.contains('/') {
            entries.insert(format!("bin/{applet}"), Entry::Symlink("busybox".into()));
        }
    }
    entries.insert(
        "etc/passwd".into(),
        Entry::File {
            data: b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n".to_vec(),
            mode: 0o644,
        },
    );
    entries.insert("etc/group".into(), Entry::File { data: b"root:x:0:\nnogroup:x:65534:\n".to_vec(), mode: 0o644 });
    entries.insert(
        "var/www/index.html".into(),
        Entry::File { data: b"<h1>hello from a keelson pod</h1>\n".to_vec(), mode: 0o644 },
    );
    Ok(ImageSpec {
        name: BUSYBOX_IMAGE,
        file: "busybox.tar",
        entries,
        config: json!({"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]}),
    })
}

fn sha256_hex(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A deterministic tar of `entries` (BTreeMap order = sorted).
fn layer_tar(entries: &BTreeMap<String, Entry>) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, e) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
            }
            Entry::File { data, mode } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice())?;
            }
            Entry::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target)?;
            }
        }
    }
    Ok(b.into_inner()?)
}

fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    // GzBuilder without filename/mtime → a deterministic header (mtime 0).
    let mut enc = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

/// Writes the OCI layout archive; returns the manifest digest.
fn write_archive(spec: &ImageSpec, path: &Path) -> anyhow::Result<String> {
    let tar = layer_tar(&spec.entries)?;
    let diff_id = sha256_hex(&tar);
    let layer = gzip(&tar)?;
    let layer_digest = sha256_hex(&layer);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": spec.config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "cargo xtask images"}],
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = sha256_hex(&config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = sha256_hex(&manifest_bytes);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": spec.name, "org.opencontainers.image.ref.name": spec.name.rsplit(':').next().unwrap_or("latest")},
        }],
    });
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    files.insert("index.json".into(), serde_json::to_vec(&index)?);
    for (d, bytes) in [(&layer_digest, layer), (&config_digest, config_bytes), (&manifest_digest, manifest_bytes)] {
        files.insert(format!("blobs/sha256/{}", d.trim_start_matches("sha256:")), bytes);
    }
    let mut b = tar::Builder::new(Vec::new());
    for d in ["blobs/", "blobs/sha256/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_size(0);
        b.append_data(&mut h, d, std::io::empty())?;
    }
    for (name, bytes) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(bytes.len() as u64);
        b.append_data(&mut h, name, bytes.as_slice())?;
    }
    let archive = b.into_inner()?;
    let tmp = path.with_extension("tar.tmp");
    std::fs::write(&tmp, archive)?;
    std::fs::rename(&tmp, path)?;
    Ok(manifest_digest)
}
