//! Network configuration: loading the conf dir, converting single-plugin configs into lists, and
//! building each plugin's stdin (name, cniVersion, prevResult, runtimeConfig injection) — all pure
//! except [`load_from_dir`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::CniError;

/// A parsed network configuration list (`.conflist`, or a single plugin config converted to one).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<PluginConf>,
    /// The list as JSON (what the result cache stores, so DEL/GC work after the conf dir changed).
    pub raw: Value,
    /// The file it came from (empty when built from bytes).
    pub source: PathBuf,
}

/// One plugin entry of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    /// The executable name (`type`).
    pub plugin_type: String,
    /// Declared capabilities (`"capabilities": {"portMappings": true}`).
    pub capabilities: BTreeMap<String, bool>,
    /// The plugin's own config object, as written.
    pub raw: Map<String, Value>,
}

fn invalid(path: &Path, reason: impl Into<String>) -> CniError {
    CniError::InvalidConfig { path: path.to_path_buf(), reason: reason.into() }
}

fn parse_plugin(path: &Path, v: &Value) -> Result<PluginConf, CniError> {
    let obj = v.as_object().ok_or_else(|| invalid(path, "plugin entry is not an object"))?;
    let plugin_type = obj
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid(path, "plugin entry without \"type\""))?;
    if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
        return Err(invalid(path, format!("plugin type {plugin_type:?} is not a plain executable name")));
    }
    let capabilities = match obj.get("capabilities") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.as_bool().unwrap_or(false))).collect(),
        Some(_) => return Err(invalid(path, "\"capabilities\" is not an object")),
    };
    Ok(PluginConf { plugin_type: plugin_type.to_string(), capabilities, raw: obj.clone() })
}

/// Parses a `.conflist` document.
pub fn parse_conflist(path: &Path, bytes: &[u8]) -> Result<NetworkConfigList, CniError> {
    let raw: Value =
        serde_json::from_slice(bytes).map_err(|source| CniError::ConfigParse { path: path.to_path_buf(), source })?;
    let obj = raw.as_object().ok_or_else(|| invalid(path, "not a JSON object"))?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid(path, "missing \"name\""))?;
    // The spec's network name grammar; it also ends up in cache file names.
    let valid_name = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid_name {
        return Err(invalid(path, format!("network name {name:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*")));
    }
    let cni_version = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid(path, "missing \"cniVersion\""))?;
    let plugins =
        obj.get("plugins").and_then(Value::as_array).ok_or_else(|| invalid(path, "missing \"plugins\" array"))?;
    if plugins.is_empty() {
        return Err(invalid(path, "\"plugins\" is empty"));
    }
    let plugins = plugins.iter().map(|p| parse_plugin(path, p)).collect::<Result<Vec<_>, _>>()?;
    let flag = |k: &str| obj.get(k).and_then(Value::as_bool).unwrap_or(false);
    Ok(NetworkConfigList {
        name: name.to_string(),
        cni_version: cni_version.to_string(),
        disable_check: flag("disableCheck"),
        disable_gc: flag("disableGC"),
        plugins,
        raw: raw.clone(),
        source: path.to_path_buf(),
    })
}

/// Parses a single-plugin config (`.conf`/`.json`) into a one-plugin list, as libcni's
/// `ConfListFromConf` does: the list takes the plugin's `name` and `cniVersion`. A document that
/// has a `plugins` array is read as a list whatever its extension.
pub fn parse_conf(path: &Path, bytes: &[u8]) -> Result<NetworkConfigList, CniError> {
    let raw: Value =
        serde_json::from_slice(bytes).map_err(|source| CniError::ConfigParse { path: path.to_path_buf(), source })?;
    if raw.get("plugins").is_some() {
        return parse_conflist(path, bytes);
    }
    let obj = raw.as_object().ok_or_else(|| invalid(path, "not a JSON object"))?;
    let mut list = Map::new();
    for key in ["name", "cniVersion"] {
        if let Some(v) = obj.get(key) {
            list.insert(key.to_string(), v.clone());
        }
    }
    list.insert("plugins".to_string(), Value::Array(vec![raw.clone()]));
    let bytes = serde_json::to_vec(&Value::Object(list))
        .map_err(|source| CniError::ConfigParse { path: path.to_path_buf(), source })?;
    parse_conflist(path, &bytes)
}

/// Loads the network from `dir`: files ending in `.conflist`, `.conf` or `.json`, sorted by name;
/// the first one that parses wins (invalid ones are skipped with a warning, like containerd).
pub fn load_from_dir(dir: &Path) -> Result<NetworkConfigList, CniError> {
    let entries =
        std::fs::read_dir(dir).map_err(|source| CniError::Io { path: dir.into(), op: "read conf dir", source })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("conflist" | "conf" | "json")))
        .collect();
    files.sort();
    let mut skipped = Vec::new();
    for file in files {
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) => {
                skipped.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        let parsed = if file.extension().is_some_and(|e| e == "conflist") {
            parse_conflist(&file, &bytes)
        } else {
            parse_conf(&file, &bytes)
        };
        match parsed {
            Ok(list) => return Ok(list),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "skipping invalid CNI config");
                skipped.push(e.to_string());
            }
        }
    }
    Err(CniError::NoConfig { dir: dir.to_path_buf(), skipped })
}

/// Builds the stdin config for one plugin invocation, as libcni does: the plugin's own object,
/// with the list's `name` and `cniVersion`, the previous result (`prevResult`) if any, and a
/// `runtimeConfig` holding every capability the plugin declares and the runtime supplies.
/// `extra` keys (e.g. `cni.dev/valid-attachments` for GC) are set last.
pub fn build_plugin_config(
    list: &NetworkConfigList,
    plugin: &PluginConf,
    prev_result: Option<&Value>,
    capability_args: &BTreeMap<String, Value>,
    extra: &[(&str, Value)],
) -> Value {
    let mut conf = plugin.raw.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    match prev_result {
        Some(prev) => {
            conf.insert("prevResult".into(), prev.clone());
        }
        None => {
            conf.remove("prevResult");
        }
    }
    let runtime: Map<String, Value> = plugin
        .capabilities
        .iter()
        .filter(|(_, enabled)| **enabled)
        .filter_map(|(cap, _)| capability_args.get(cap).map(|v| (cap.clone(), v.clone())))
        .collect();
    if !runtime.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    for (k, v) in extra {
        conf.insert((*k).to_string(), v.clone());
    }
    Value::Object(conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIST: &str = r#"{
        "cniVersion": "1.0.0", "name": "kube", "disableCheck": false,
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}},
            {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}}
        ]
    }"#;

    #[test]
    fn conflist_is_parsed() {
        let l = parse_conflist(Path::new("/x/10-kube.conflist"), LIST.as_bytes()).expect("valid");
        assert_eq!(l.name, "kube");
        assert_eq!(l.cni_version, "1.0.0");
        assert_eq!(l.plugins.len(), 2);
        assert_eq!(l.plugins[0].plugin_type, "bridge");
        assert_eq!(l.plugins[1].capabilities.get("portMappings"), Some(&true));
        assert!(!l.disable_check && !l.disable_gc);
    }

    #[test]
    fn bad_conflists_are_rejected_with_reasons() {
        let p = Path::new("/x/a.conflist");
        let cases = [
            ("{", "EOF"),
            (r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#, "name"),
            (r#"{"name":"n","plugins":[{"type":"x"}]}"#, "cniVersion"),
            (r#"{"name":"../n","cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#, "network name"),
            (r#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#, "empty"),
            (r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"bridge":"x"}]}"#, "type"),
            (r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"../bin/sh"}]}"#, "executable"),
        ];
        for (doc, want) in cases {
            let err = parse_conflist(p, doc.as_bytes()).expect_err(doc).to_string();
            assert!(err.contains(want), "{doc}: {err}");
        }
    }

    #[test]
    fn single_conf_becomes_a_list() {
        let conf = r#"{"cniVersion":"0.4.0","name":"single","type":"bridge","ipam":{"type":"host-local"}}"#;
        let l = parse_conf(Path::new("/x/10.conf"), conf.as_bytes()).expect("valid");
        assert_eq!((l.name.as_str(), l.cni_version.as_str()), ("single", "0.4.0"));
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0].raw.get("ipam"), Some(&json!({"type": "host-local"})));
        // A list in a .conf file is read as a list.
        let l = parse_conf(Path::new("/x/10.conf"), LIST.as_bytes()).expect("list in .conf");
        assert_eq!(l.plugins.len(), 2);
    }

    #[test]
    fn dir_loading_takes_the_first_valid_file_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(load_from_dir(dir.path()), Err(CniError::NoConfig { .. })));
        std::fs::write(dir.path().join("00-broken.conflist"), "{").expect("write");
        std::fs::write(dir.path().join("05-ignored.txt"), LIST).expect("write");
        std::fs::write(dir.path().join("20-second.conf"), r#"{"cniVersion":"1.0.0","name":"second","type":"ptp"}"#)
            .expect("write");
        std::fs::write(dir.path().join("10-first.conflist"), LIST).expect("write");
        let l = load_from_dir(dir.path()).expect("load");
        assert_eq!(l.name, "kube");
        assert!(l.source.ends_with("10-first.conflist"));
        std::fs::remove_file(dir.path().join("10-first.conflist")).expect("rm");
        assert_eq!(load_from_dir(dir.path()).expect("load").name, "second");
        match load_from_dir(&dir.path().join("missing")) {
            Err(CniError::Io { .. }) => {}
            other => panic!("expected Io error, got {other:?}"),
        }
    }

    #[test]
    fn plugin_config_injection() {
        let l = parse_conflist(Path::new("/x/a.conflist"), LIST.as_bytes()).expect("valid");
        let mut caps = BTreeMap::new();
        caps.insert("portMappings".to_string(), json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]));
        caps.insert("bandwidth".to_string(), json!({"ingressRate": 1}));
        // The first plugin declares no capabilities: no runtimeConfig, no prevResult.
        let c0 = build_plugin_config(&l, &l.plugins[0], None, &caps, &[]);
        assert_eq!(c0["name"], "kube");
        assert_eq!(c0["cniVersion"], "1.0.0");
        assert!(c0.get("runtimeConfig").is_none());
        assert!(c0.get("prevResult").is_none());
        assert_eq!(c0["bridge"], "cni0");
        // portmap gets prevResult and only the capabilities it declares as true.
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24"}]});
        let c1 = build_plugin_config(&l, &l.plugins[1], Some(&prev), &caps, &[("x", json!(1))]);
        assert_eq!(c1["prevResult"], prev);
        assert_eq!(
            c1["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );
        assert_eq!(c1["x"], 1);
    }
}
