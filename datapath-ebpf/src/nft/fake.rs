//! A stateful fake of the kernel's nftables for unit tests: it keeps tables, chains (with rules),
//! maps and sets, applies each batch atomically, and rejects what the kernel would reject (rules
//! jumping to missing chains, deleting referenced or non-empty chains, deleting missing elements).
//! Its [`FakeNft::trace`] follows a frontend through map → chains → DNAT like a packet tracer.

use super::{NftBackend, NftError};
use crate::model::FrontendKey;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, Default)]
struct Table {
    chains: BTreeMap<String, Vec<Value>>,
    maps: BTreeMap<String, BTreeMap<String, String>>,
    sets: BTreeMap<String, BTreeSet<String>>,
}

/// See the module docs.
#[derive(Clone, Debug, Default)]
pub struct FakeNft {
    tables: BTreeMap<String, Table>,
    /// Fail the next `apply` with this message (nothing is applied).
    pub fail_next: Option<String>,
    /// Successful transactions so far.
    pub transactions: usize,
    /// Commands in the last successful transaction.
    pub last_commands: usize,
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                if (k == "goto" || k == "jump")
                    && let Some(t) = val.get("target").and_then(Value::as_str)
                {
                    out.push(t.to_string());
                }
                refs(val, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        Value::String(s) if s.starts_with('@') => out.push(s.clone()),
        _ => {}
    }
}

fn name_of(o: &Value) -> Result<String, String> {
    o.get("name").and_then(Value::as_str).map(String::from).ok_or_else(|| format!("object without name: {o}"))
}

impl Table {
    fn referenced(&self, name: &str) -> bool {
        let at = format!("@{name}");
        let mut all = Vec::new();
        self.chains.values().flatten().for_each(|r| refs(r, &mut all));
        all.iter().any(|r| r == name || *r == at) || self.maps.values().any(|m| m.values().any(|t| t == name))
    }
    fn check_refs(&self, expr: &Value) -> Result<(), String> {
        let mut all = Vec::new();
        refs(expr, &mut all);
        for r in all {
            let ok = match r.strip_prefix('@') {
                Some(set) => self.sets.contains_key(set) || self.maps.contains_key(set),
                None => self.chains.contains_key(&r),
            };
            if !ok {
                return Err(format!("reference to missing object {r}"));
            }
        }
        Ok(())
    }
}

impl FakeNft {
    fn apply_one(tables: &mut BTreeMap<String, Table>, cmd: &Value) -> Result<(), String> {
        let (verb, body) = cmd.as_object().and_then(|m| m.iter().next()).ok_or("empty command")?;
        let (kind, o) = body.as_object().and_then(|m| m.iter().next()).ok_or("empty object")?;
        if kind == "table" {
            let name = name_of(o)?;
            return match verb.as_str() {
                "add" => {
                    tables.entry(name).or_default();
                    Ok(())
                }
                "delete" => tables.remove(&name).map(|_| ()).ok_or(format!("delete of missing table {name}")),
                v => Err(format!("unsupported {v} table")),
            };
        }
        let tname = o.get("table").and_then(Value::as_str).ok_or("no table")?;
        let t = tables.get_mut(tname).ok_or(format!("no such table {tname}"))?;
        match (verb.as_str(), kind.as_str()) {
            ("add", "chain") => {
                t.chains.entry(name_of(o)?).or_default();
            }
            ("add", "map") => {
                t.maps.entry(name_of(o)?).or_default();
            }
            ("add", "set") => {
                t.sets.entry(name_of(o)?).or_default();
            }
            ("add", "rule") => {
                let chain = o.get("chain").and_then(Value::as_str).ok_or("rule without chain")?;
                let expr = o.get("expr").ok_or("rule without expr")?;
                t.check_refs(expr)?;
                t.chains.get_mut(chain).ok_or(format!("rule for missing chain {chain}"))?.push(expr.clone());
            }
            ("flush", "chain") => {
                let n = name_of(o)?;
                t.chains.get_mut(&n).ok_or(format!("flush of missing chain {n}"))?.clear();
            }
            ("delete", "chain") => {
                let n = name_of(o)?;
                match t.chains.get(&n) {
                    None => return Err(format!("delete of missing chain {n}")),
                    Some(r) if !r.is_empty() => return Err(format!("delete of non-empty chain {n}")),
                    _ => {}
                }
                if t.referenced(&n) {
                    return Err(format!("delete of referenced chain {n}"));
                }
                t.chains.remove(&n);
            }
            ("delete", "set") => {
                let n = name_of(o)?;
                if t.referenced(&n) {
                    return Err(format!("delete of referenced set {n}"));
                }
                if t.sets.remove(&n).is_none() {
                    return Err(format!("delete of missing set {n}"));
                }
            }
            ("add", "element") | ("delete", "element") => {
                let n = name_of(o)?;
                let elems = o.get("elem").and_then(Value::as_array).ok_or("element without elem")?;
                if let Some(set) = t.sets.get_mut(&n) {
                    for e in elems {
                        let k = e.to_string();
                        if verb == "add" {
                            set.insert(k);
                        } else if !set.remove(&k) {
                            return Err(format!("delete of missing element {k} in set {n}"));
                        }
                    }
                    return Ok(());
                }
                for e in elems {
                    // Verdict maps store the goto target; data maps store the value's JSON.
                    let (key, value) = match e.as_array() {
                        Some(pair) if pair.len() == 2 && verb == "add" => {
                            let tgt = pair[1].get("goto").and_then(|g| g.get("target")).and_then(Value::as_str);
                            if let Some(tgt) = tgt
                                && !t.chains.contains_key(tgt)
                            {
                                return Err(format!("element points at missing chain {tgt}"));
                            }
                            (pair[0].to_string(), Some(tgt.map(String::from).unwrap_or_else(|| pair[1].to_string())))
                        }
                        _ => (e.to_string(), None),
                    };
                    let m = t.maps.get_mut(&n).ok_or(format!("no such map {n}"))?;
                    if verb == "add" {
                        let value = value.ok_or("map element without value")?;
                        // The kernel refuses to overwrite an element with different data (EBUSY).
                        if let Some(prev) = m.get(&key)
                            && *prev != value
                        {
                            return Err(format!("element {key} exists with other data"));
                        }
                        m.insert(key, value);
                    } else if m.remove(&key).is_none() {
                        return Err(format!("delete of missing element {key} in {n}"));
                    }
                }
            }
            (v, k) => return Err(format!("unsupported command {v} {k}")),
        }
        Ok(())
    }

    /// Deletes a table behind the proxier's back (tamper simulation).
    pub fn tamper_delete_table(&mut self, table: &str) {
        self.tables.remove(table);
    }

    pub fn chain_count(&self, table: &str) -> usize {
        self.tables.get(table).map(|t| t.chains.len()).unwrap_or(0)
    }

    pub fn set_count(&self, table: &str) -> usize {
        self.tables.get(table).map(|t| t.sets.len()).unwrap_or(0)
    }

    /// Elements of a named set (JSON-encoded), e.g. the hairpin pairs.
    pub fn set_elements(&self, table: &str, set: &str) -> Vec<String> {
        self.tables.get(table).and_then(|t| t.sets.get(set)).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// Follows `key` through the dispatch map and chains: `None` if no map element matches,
    /// `Some(vec![])` if the frontend drops, otherwise the sorted set of DNAT targets `ip:port`.
    pub fn trace(&self, table: &str, key: &FrontendKey) -> Option<Vec<String>> {
        let t = self.tables.get(table)?;
        let (map, elem) = super::Renderer::map_element(key);
        let Some(chain) = t.maps.get(map).and_then(|m| m.get(&elem.to_string())) else {
            return Self::trace_elements(t, key);
        };
        let mut out = BTreeSet::new();
        let mut stack = vec![chain.clone()];
        let mut seen = BTreeSet::new();
        while let Some(c) = stack.pop() {
            if !seen.insert(c.clone()) {
                continue;
            }
            for rule in t.chains.get(&c).into_iter().flatten() {
                for stmt in rule.as_array().into_iter().flatten() {
                    if let Some(target) = stmt.get("goto").and_then(|g| g.get("target")).and_then(Value::as_str) {
                        stack.push(target.to_string());
                    }
                    if let Some(d) = stmt.get("dnat") {
                        let addr = d.get("addr").and_then(Value::as_str).unwrap_or("?");
                        out.insert(format!("{addr}:{}", d.get("port").unwrap_or(&Value::Null)));
                    }
                }
            }
        }
        Some(out.into_iter().collect())
    }
}

impl FakeNft {
    /// The element-only path: `*-info` gives count and masquerade bit, `*-backends` the buckets.
    fn trace_elements(t: &Table, key: &FrontendKey) -> Option<Vec<String>> {
        let (info, prefix, base) = match key.addr {
            crate::model::FrontendAddr::Ip(ip) => {
                ("svc-info", "svc", vec![serde_json::json!(ip.to_string()), key.proto.name().into(), key.port.into()])
            }
            crate::model::FrontendAddr::NodePort => {
                ("np-info", "np", vec![serde_json::json!(key.proto.name()), key.port.into()])
            }
        };
        let v: u32 = t.maps.get(info)?.get(&serde_json::json!({"concat": base.clone()}).to_string())?.parse().ok()?;
        let (count, masq) = ((v >> 16).saturating_sub(1), v & super::MASQ_MARK);
        let mut out = BTreeSet::new();
        for bucket in 0..count {
            let mut k = base.clone();
            k.push(serde_json::json!(bucket | masq));
            let key = serde_json::json!({"concat": k}).to_string();
            let ip = t.maps.get(&format!("{prefix}-backend-ips")).and_then(|m| m.get(&key));
            let port = t.maps.get(&format!("{prefix}-backend-ports")).and_then(|m| m.get(&key));
            match (ip, port) {
                (Some(ip), Some(port)) => out.insert(format!("{}:{port}", ip.trim_matches('"'))),
                _ => out.insert(format!("<missing bucket {bucket}>")),
            };
        }
        Some(out.into_iter().collect())
    }
}

impl NftBackend for FakeNft {
    fn apply(&mut self, _table: &str, commands: &[Value]) -> Result<(), NftError> {
        if let Some(msg) = self.fail_next.take() {
            return Err(NftError::Fake(msg));
        }
        let mut staged = self.tables.clone();
        for (i, c) in commands.iter().enumerate() {
            Self::apply_one(&mut staged, c).map_err(|e| NftError::Fake(format!("command {i}: {e}")))?;
        }
        self.tables = staged;
        self.transactions += 1;
        self.last_commands = commands.len();
        Ok(())
    }

    fn table_exists(&mut self, table: &str) -> Result<bool, NftError> {
        Ok(self.tables.contains_key(table))
    }
}
