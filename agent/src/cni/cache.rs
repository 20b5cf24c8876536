//! The result cache: one JSON file per attachment, `<cache dir>/results/<network>-<container>-<ifname>`
//! (libcni's naming). It holds what DEL, CHECK and GC need after an agent restart: the result
//! (for `prevResult`), the netns, CNI_ARGS, capability args and the network config used at ADD.
//! Files are written atomically (temp file + rename), so a crash never leaves a torn entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CniError;

const KIND: &str = "keelsonCniCacheV1";

/// One cached attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    pub kind: String,
    pub container_id: String,
    pub if_name: String,
    pub network_name: String,
    pub netns: String,
    pub cni_args: Vec<(String, String)>,
    pub capability_args: BTreeMap<String, Value>,
    /// The network config list used at ADD.
    pub config: Value,
    /// The chain's final result.
    pub result: Value,
}

impl CacheEntry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        container_id: &str,
        if_name: &str,
        network_name: &str,
        netns: &str,
        cni_args: Vec<(String, String)>,
        capability_args: BTreeMap<String, Value>,
        config: Value,
        result: Value,
    ) -> Self {
        CacheEntry {
            kind: KIND.to_string(),
            container_id: container_id.to_string(),
            if_name: if_name.to_string(),
            network_name: network_name.to_string(),
            netns: netns.to_string(),
            cni_args,
            capability_args,
            config,
            result,
        }
    }
}

/// The cache rooted at a directory.
#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    /// Entries live in `<cache_dir>/results`.
    pub fn new(cache_dir: &Path) -> Self {
        ResultCache { dir: cache_dir.join("results") }
    }

    pub fn path(&self, network: &str, container_id: &str, if_name: &str) -> PathBuf {
        self.dir.join(format!("{network}-{container_id}-{if_name}"))
    }

    pub fn write(&self, e: &CacheEntry) -> Result<(), CniError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| CniError::Io {
            path: self.dir.clone(),
            op: "create cache dir",
            source,
        })?;
        let path = self.path(&e.network_name, &e.container_id, &e.if_name);
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(e).map_err(|source| CniError::CacheParse { path: path.clone(), source })?;
        std::fs::write(&tmp, bytes).map_err(|source| CniError::Io { path: tmp.clone(), op: "write cache", source })?;
        std::fs::rename(&tmp, &path).map_err(|source| CniError::Io { path: path.clone(), op: "rename cache", source })
    }

    pub fn read(&self, network: &str, container_id: &str, if_name: &str) -> Result<Option<CacheEntry>, CniError> {
        let path = self.path(network, container_id, if_name);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|source| CniError::CacheParse { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CniError::Io { path, op: "read cache", source }),
        }
    }

    pub fn remove(&self, network: &str, container_id: &str, if_name: &str) -> Result<(), CniError> {
        let path = self.path(network, container_id, if_name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Io { path, op: "remove cache", source }),
        }
    }

    /// All readable entries, sorted by file name; unreadable files are skipped with a warning.
    pub fn list(&self) -> Result<Vec<CacheEntry>, CniError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CniError::Io { path: self.dir.clone(), op: "read cache dir", source }),
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "tmp"))
            .collect();
        paths.sort();
        let mut out = Vec::new();
        for p in paths {
            match std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<CacheEntry>(&b).ok()) {
                Some(e) if e.kind == KIND => out.push(e),
                _ => tracing::warn!(file = %p.display(), "skipping unreadable CNI cache entry"),
            }
        }
        Ok(out)
    }

    /// Finds the entry of an attachment in any network (for DEL after the config changed).
    pub fn find(&self, container_id: &str, if_name: &str) -> Result<Option<CacheEntry>, CniError> {
        Ok(self.list()?.into_iter().find(|e| e.container_id == container_id && e.if_name == if_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cache_round_trip_and_listing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ResultCache::new(dir.path());
        assert!(c.list().expect("empty").is_empty());
        assert_eq!(c.read("net", "c1", "eth0").expect("read"), None);
        let e = CacheEntry::new(
            "c1",
            "eth0",
            "net",
            "/run/netns/p1",
            vec![("K8S_POD_NAME".into(), "web".into())],
            BTreeMap::from([("portMappings".to_string(), json!([]))]),
            json!({"name": "net"}),
            json!({"cniVersion": "1.0.0"}),
        );
        c.write(&e).expect("write");
        assert!(dir.path().join("results/net-c1-eth0").is_file(), "libcni-style file name");
        assert_eq!(c.read("net", "c1", "eth0").expect("read"), Some(e.clone()));
        std::fs::write(dir.path().join("results/garbage"), "{").expect("write");
        assert_eq!(c.list().expect("list"), vec![e.clone()]);
        assert_eq!(c.find("c1", "eth0").expect("find"), Some(e));
        c.remove("net", "c1", "eth0").expect("remove");
        c.remove("net", "c1", "eth0").expect("remove is idempotent");
        assert_eq!(c.find("c1", "eth0").expect("find"), None);
    }
}
