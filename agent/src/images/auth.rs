//! Registry credentials from docker config JSON.
//!
//! Kubernetes hands credentials to a node in Docker's formats: `kubernetes.io/dockerconfigjson`
//! secrets (`{"auths": {"host": {...}}}`), legacy `kubernetes.io/dockercfg` secrets (the inner
//! map only), and node-level files. Each entry carries either `auth` (base64 `user:password`) or
//! `username`/`password`, or a `registrytoken` used as a bearer token directly.
//!
//! The node's `--registry-config` file is the same JSON with one keelson addition,
//! `insecureRegistries` (hosts spoken to over plain HTTP). It is read on every pull, so editing it
//! takes effect without restarting the agent.
//!
//! Credentials never outlive one pull: the puller builds a fresh client per pull (tokens are not
//! cached across pods), so one pod's secret cannot authorize another pod's image.

use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What to present to a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic { username: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("docker config: {0}")]
    Json(String),
    #[error("docker config entry for {host}: {reason}")]
    Entry { host: String, reason: String },
    #[error("secret of type {0:?} carries no registry credentials")]
    SecretType(String),
    #[error("secret of type {type_} has no {key:?} key")]
    MissingKey { type_: String, key: &'static str },
    #[error("registry config {path}: {reason}")]
    File { path: String, reason: String },
}

#[derive(Deserialize, Default)]
struct RawEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    auths: BTreeMap<String, RawEntry>,
    #[serde(default, rename = "insecureRegistries")]
    insecure_registries: Vec<String>,
}

/// Decoded credentials, keyed by normalized registry host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DockerConfig {
    auths: BTreeMap<String, Credential>,
}

/// The registry host a docker config key names: scheme and path dropped, Docker Hub's aliases
/// folded into `docker.io` (what image references resolve to).
pub fn normalize_host(key: &str) -> String {
    let k = key.trim();
    let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".into(),
        _ => host,
    }
}

fn decode_entry(host: &str, e: RawEntry) -> Result<Option<Credential>, AuthError> {
    let bad = |reason: String| AuthError::Entry { host: host.to_string(), reason };
    if let Some(t) = e.registrytoken.filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::Bearer(t)));
    }
    if let Some(a) = e.auth.filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|err| bad(format!("auth is not base64: {err}")))?;
        let s = String::from_utf8(raw).map_err(|_| bad("auth is not UTF-8".into()))?;
        let (u, p) = s.split_once(':').ok_or_else(|| bad("auth is not user:password".into()))?;
        return Ok(Some(Credential::Basic { username: u.into(), password: p.into() }));
    }
    match (e.username, e.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credential::Basic { username: u, password: p })),
        _ => Ok(None),
    }
}

impl DockerConfig {
    fn from_entries(entries: BTreeMap<String, RawEntry>) -> Result<Self, AuthError> {
        let mut auths = BTreeMap::new();
        for (k, e) in entries {
            if let Some(c) = decode_entry(&k, e)? {
                auths.insert(normalize_host(&k), c);
            }
        }
        Ok(DockerConfig { auths })
    }

    /// `.dockerconfigjson`: `{"auths": {"host": {...}}}`.
    pub fn from_dockerconfigjson(bytes: &[u8]) -> Result<Self, AuthError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| AuthError::Json(e.to_string()))?;
        Self::from_entries(raw.auths)
    }

    /// `.dockercfg` (legacy): `{"host": {...}}`.
    pub fn from_dockercfg(bytes: &[u8]) -> Result<Self, AuthError> {
        let raw: BTreeMap<String, RawEntry> =
            serde_json::from_slice(bytes).map_err(|e| AuthError::Json(e.to_string()))?;
        Self::from_entries(raw)
    }

    /// The credentials of an `imagePullSecrets` secret: its `type` and its decoded `data`.
    pub fn from_secret(type_: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<Self, AuthError> {
        let get =
            |key: &'static str| data.get(key).ok_or_else(|| AuthError::MissingKey { type_: type_.to_string(), key });
        match type_ {
            "kubernetes.io/dockerconfigjson" => Self::from_dockerconfigjson(get(".dockerconfigjson")?),
            "kubernetes.io/dockercfg" => Self::from_dockercfg(get(".dockercfg")?),
            other => Err(AuthError::SecretType(other.to_string())),
        }
    }

    /// The credential for `registry` (a host as image references name it, e.g. `docker.io`).
    pub fn lookup(&self, registry: &str) -> Option<&Credential> {
        self.auths.get(&normalize_host(registry))
    }

    pub fn is_empty(&self) -> bool {
        self.auths.is_empty()
    }
}

/// The node's registry configuration (`--registry-config`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistryConfig {
    pub auths: DockerConfig,
    /// Hosts (`host:port`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
}

impl RegistryConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, AuthError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| AuthError::Json(e.to_string()))?;
        let insecure = raw.insecure_registries.iter().map(|h| normalize_host(h)).collect();
        Ok(RegistryConfig { auths: DockerConfig::from_entries(raw.auths)?, insecure })
    }

    /// Reads the file (`None`: no file configured → empty config).
    pub fn load(path: Option<&Path>) -> Result<Self, AuthError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let bytes = std::fs::read(path)
            .map_err(|e| AuthError::File { path: path.display().to_string(), reason: e.to_string() })?;
        Self::parse(&bytes).map_err(|e| AuthError::File { path: path.display().to_string(), reason: e.to_string() })
    }

    pub fn is_insecure(&self, registry: &str) -> bool {
        let h = normalize_host(registry);
        self.insecure.contains(&h)
    }
}

/// The credential to use for `registry`: the pod's pull secrets first (in order), then the node's.
pub fn select<'a>(pod: &'a [DockerConfig], node: &'a DockerConfig, registry: &str) -> Option<&'a Credential> {
    pod.iter().find_map(|c| c.lookup(registry)).or_else(|| node.lookup(registry))
}

/// A short digest of a credential (empty for anonymous): pulls are shared only between callers
/// presenting the same one, without keeping the secret itself in the key.
pub fn fingerprint(c: Option<&Credential>) -> String {
    use sha2::{Digest, Sha256};
    let raw = match c {
        None => return String::new(),
        Some(Credential::Basic { username, password }) => format!("basic\0{username}\0{password}"),
        Some(Credential::Bearer(t)) => format!("bearer\0{t}"),
    };
    hex::encode(&Sha256::digest(raw.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn dockerconfigjson_forms() {
        let j = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "127.0.0.1:5000": {{"username": "u", "password": "p:w"}},
                "tok.example": {{"registrytoken": "T"}},
                "empty.example": {{}}
            }}}}"#,
            b64("hub:secret:x")
        );
        let c = DockerConfig::from_dockerconfigjson(j.as_bytes()).unwrap();
        assert_eq!(
            c.lookup("docker.io"),
            Some(&Credential::Basic { username: "hub".into(), password: "secret:x".into() })
        );
        assert_eq!(
            c.lookup("127.0.0.1:5000"),
            Some(&Credential::Basic { username: "u".into(), password: "p:w".into() })
        );
        assert_eq!(c.lookup("tok.example"), Some(&Credential::Bearer("T".into())));
        assert_eq!(c.lookup("empty.example"), None);
        assert_eq!(c.lookup("127.0.0.1:5001"), None);
        assert!(!format!("{c:?}").contains("secret"), "Debug must not print passwords");
    }

    #[test]
    fn dockercfg_and_secrets() {
        let cfg = format!(r#"{{"reg.example:443": {{"auth": "{}"}}}}"#, b64("a:b"));
        let data = BTreeMap::from([(".dockercfg".to_string(), cfg.into_bytes())]);
        let c = DockerConfig::from_secret("kubernetes.io/dockercfg", &data).unwrap();
        assert_eq!(
            c.lookup("reg.example:443"),
            Some(&Credential::Basic { username: "a".into(), password: "b".into() })
        );
        assert!(matches!(
            DockerConfig::from_secret("kubernetes.io/dockerconfigjson", &data),
            Err(AuthError::MissingKey { .. })
        ));
        assert!(matches!(DockerConfig::from_secret("Opaque", &data), Err(AuthError::SecretType(_))));
    }

    #[test]
    fn bad_entries_say_which_host() {
        let e = DockerConfig::from_dockerconfigjson(br#"{"auths": {"r.example": {"auth": "!!"}}}"#).unwrap_err();
        assert!(e.to_string().contains("r.example"), "{e}");
        let e = DockerConfig::from_dockerconfigjson(
            format!(r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#, b64("nocolon")).as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("user:password"), "{e}");
        assert!(DockerConfig::from_dockerconfigjson(b"\"auths\"").is_err());
    }

    #[test]
    fn pod_secrets_come_before_the_node() {
        let pod =
            DockerConfig::from_dockerconfigjson(br#"{"auths": {"r": {"username": "pod", "password": "x"}}}"#).unwrap();
        let node = RegistryConfig::parse(
            br#"{"auths": {"r": {"username": "node", "password": "y"}, "s": {"username": "node", "password": "y"}},
                 "insecureRegistries": ["http://127.0.0.1:5000/"]}"#,
        )
        .unwrap();
        let user = |c: Option<&Credential>| match c {
            Some(Credential::Basic { username, .. }) => username.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(user(select(std::slice::from_ref(&pod), &node.auths, "r")), "pod");
        assert_eq!(user(select(std::slice::from_ref(&pod), &node.auths, "s")), "node");
        assert_eq!(select(&[], &node.auths, "t"), None);
        assert!(node.is_insecure("127.0.0.1:5000"));
        assert!(!node.is_insecure("127.0.0.1:5001"));
    }
}
