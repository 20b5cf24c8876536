//! Allocation files under `<dataDir>/<network>/`: `<ip>` (JSON owner), `last_reserved_ip`, `lock`.
//!
//! Every operation takes an exclusive `flock(2)` on `lock` first, so concurrent plugin invocations
//! (a runtime may ADD many pods in parallel) serialise their read-modify-write. Files are written
//! to a temporary name and renamed into place, so a crash leaves either no record or a whole one;
//! stray temporaries from a crash are removed on the next locked access.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{IpamError, Owner};

const LOCK: &str = "lock";
const LAST: &str = "last_reserved_ip";
const TMP_PREFIX: &str = ".tmp-";

/// The allocation directory of one network.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A held lock; allocation files may be read and written while it lives.
#[derive(Debug)]
pub struct Locked<'a> {
    store: &'a Store,
    _lock: File,
}

fn io(path: &Path, source: std::io::Error) -> IpamError {
    IpamError::Io { path: path.to_path_buf(), source }
}

impl Store {
    /// `<data_dir>/<network>`; created on first lock.
    pub fn new(data_dir: &Path, network: &str) -> Store {
        Store { dir: data_dir.join(network) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the exclusive lock (blocking).
    pub fn lock(&self) -> Result<Locked<'_>, IpamError> {
        fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let path = self.dir.join(LOCK);
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| io(&path, e))?;
        loop {
            // SAFETY: flock on an fd we own; no memory is passed.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(io(&path, err));
            }
        }
        let locked = Locked { store: self, _lock: f };
        locked.remove_temporaries()?;
        Ok(locked)
    }
}

impl Locked<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.store.dir.join(name)
    }

    fn remove_temporaries(&self) -> Result<(), IpamError> {
        let dir = &self.store.dir;
        for entry in fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let entry = entry.map_err(|e| io(dir, e))?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let p = entry.path();
                fs::remove_file(&p).map_err(|e| io(&p, e))?;
            }
        }
        Ok(())
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), IpamError> {
        let tmp = self.path(&format!("{TMP_PREFIX}{name}"));
        let dst = self.path(name);
        let mut f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io(&tmp, e))?;
        // No fsync: rename makes the record atomic against a crashed *process*, which is the
        // failure that matters. After a power loss every pod netns is gone anyway and the
        // runtime's GC reconciles the store; an fsync per record would double ADD latency.
        fs::rename(&tmp, &dst).map_err(|e| io(&dst, e))
    }

    /// Every persisted allocation.
    pub fn allocations(&mut self) -> Result<BTreeMap<Ipv4Addr, Owner>, IpamError> {
        let dir = &self.store.dir;
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let entry = entry.map_err(|e| io(dir, e))?;
            let Ok(ip) = entry.file_name().to_string_lossy().parse::<Ipv4Addr>() else { continue };
            let p = entry.path();
            let bytes = fs::read(&p).map_err(|e| io(&p, e))?;
            let owner: Owner = serde_json::from_slice(&bytes)
                .map_err(|e| IpamError::Corrupt { path: p.clone(), reason: e.to_string() })?;
            out.insert(ip, owner);
        }
        Ok(out)
    }

    /// Persists `ip` for `owner`.
    pub fn reserve(&mut self, ip: Ipv4Addr, owner: &Owner) -> Result<(), IpamError> {
        let bytes = serde_json::to_vec(owner)
            .map_err(|e| IpamError::Corrupt { path: self.path(&ip.to_string()), reason: e.to_string() })?;
        self.write_atomic(&ip.to_string(), &bytes)
    }

    /// Removes the record of `ip` (absent is fine: release is idempotent).
    pub fn free(&mut self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let p = self.path(&ip.to_string());
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&p, e)),
        }
    }

    pub fn last_reserved(&mut self) -> Result<Option<Ipv4Addr>, IpamError> {
        let p = self.path(LAST);
        match fs::read_to_string(&p) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p, e)),
        }
    }

    pub fn set_last_reserved(&mut self, ip: Ipv4Addr) -> Result<(), IpamError> {
        self.write_atomic(LAST, ip.to_string().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ipam::{Allocation, Ipam, Pool};

    #[test]
    fn persisted_idempotent_release_and_gc() {
        let tmp = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(Pool::new("10.9.0.0/29".parse().unwrap()).unwrap(), Store::new(tmp.path(), "net"));
        let a = Owner::new("a", "eth0");
        let b = Owner::new("b", "eth0");
        let ia = ipam.allocate(&a).unwrap();
        assert!(matches!(ia, Allocation::New(_)));
        assert_eq!(ipam.allocate(&a).unwrap(), Allocation::Existing(ia.ip()));
        let ib = ipam.allocate(&b).unwrap().ip();
        assert_ne!(ia.ip(), ib);
        assert_eq!(ipam.lookup(&b).unwrap(), Some(ib));
        // a second Ipam over the same directory sees the same state (persistence)
        let again = Ipam::new(ipam.pool, Store::new(tmp.path(), "net"));
        assert_eq!(again.allocations().unwrap().len(), 2);
        assert_eq!(again.release(&a).unwrap(), vec![ia.ip()]);
        assert!(again.release(&a).unwrap().is_empty(), "release is idempotent");
        let valid = [a.clone()].into_iter().collect();
        assert_eq!(again.gc(&valid).unwrap(), vec![(ib, b)]);
        assert!(again.allocations().unwrap().is_empty());
        let mut names: Vec<String> = fs::read_dir(tmp.path().join("net"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec![LAST.to_string(), LOCK.to_string()]);
    }

    #[test]
    fn stray_temporaries_and_corrupt_records() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path(), "n");
        drop(store.lock().unwrap());
        fs::write(tmp.path().join("n").join(".tmp-10.0.0.2"), b"half").unwrap();
        drop(store.lock().unwrap());
        assert!(!tmp.path().join("n").join(".tmp-10.0.0.2").exists());
        fs::write(tmp.path().join("n").join("10.0.0.2"), b"garbage").unwrap();
        let err = store.lock().unwrap().allocations().unwrap_err();
        assert!(matches!(err, IpamError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn concurrent_allocations_are_distinct() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let ipam = Ipam::new(Pool::new("10.1.0.0/24".parse().unwrap()).unwrap(), Store::new(&dir, "n"));
                    (0..10)
                        .map(|j| ipam.allocate(&Owner::new(format!("c{i}-{j}"), "eth0")).unwrap().ip())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "no address handed out twice");
    }
}
