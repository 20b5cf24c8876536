//! The nftables backend: renders a [`ServiceTable`] into one owned `ip` table, kube-proxy-nftables
//! style in behaviour, but laid out so that loading 10k services stays fast.
//!
//! Layout (everything lives in table `ip <name>`, default `keelson`; nothing else is touched). Most
//! frontends are pure **map elements** — no chain, no rule of their own:
//! - `svc-info` (`ip daddr . meta l4proto . th dport → mark`) and `np-info` (`meta l4proto . th dport
//!   → mark`, behind `fib daddr type local`): the frontend's backend count and masquerade flag,
//!   loaded into the packet mark;
//! - one shared `pick` chain turns the mark into a random bucket (`numgen random mod N [offset
//!   0x4000]`, one rule per count up to [`FAST_MAX_BACKENDS`]; count 0 → drop);
//! - `svc-backend-ips` / `-ports` and `np-backend-ips` / `-ports` (`frontend . bucket → backend
//!   address`, `→ port`) feed `dnat to <map> : <map>`;
//! - `hairpin`: named set of `endpoint . endpoint` pairs; postrouting masquerades a DNATed packet whose
//!   `ip saddr . ip daddr` is in it (a backend reaching itself through its service).
//!
//! Frontends with ClientIP affinity or more than [`FAST_MAX_BACKENDS`] backends use the
//! kube-proxy-like shape instead: `service-ips` / `service-nodeports` verdict maps → one chain
//! `fe-<hash>` per frontend with affinity lookups (named dynamic sets with timeouts, one per
//! backend) and a probability cascade `numgen random mod (N-i) == 0 … dnat to B_i`.
//!
//! Why: every `numgen … vmap { … }` creates an anonymous set, and the kernel's cost of adding a set
//! grows with the number of sets already in the table (measured: 24 s for 10k services). Chains are
//! cheaper but not free: each transaction that adds a jump/goto makes the kernel re-validate the
//! whole jump graph (`nft_chain_validate`, seen with perf), so adding one chained service costs time
//! proportional to the table. Adding an element-only service touches four small data maps and
//! never triggers that walk. The packet mark is used as scratch space on the first packet of a
//! connection (bit 0x4000 keeps its kube-proxy meaning: masquerade).
//!
//! Changes are applied as one atomic `nft -j -f` transaction per sync; a failed transaction leaves
//! the previous table intact and forces a full resync (delete + recreate the table in one
//! transaction) on the next sync.

use crate::model::{Backend, Change, Frontend, FrontendAddr, FrontendKey, ServiceTable};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Packet mark bit that asks the postrouting chain to masquerade (kube-proxy uses the same bit).
pub const MASQ_MARK: u32 = 0x4000;
/// Frontends with at most this many backends (and no affinity) are rendered as map elements only.
pub const FAST_MAX_BACKENDS: usize = 64;

/// Element-only rendering applies (see the module docs).
pub fn is_fast(fe: &Frontend) -> bool {
    fe.affinity_timeout_s.is_none() && fe.backends.len() <= FAST_MAX_BACKENDS
}

/// `svc-info` / `np-info` value: (backend count + 1) << 16, plus the masquerade bit.
fn info_value(fe: &Frontend) -> u32 {
    ((fe.backends.len() as u32 + 1) << 16) | if fe.masquerade_external { MASQ_MARK } else { 0 }
}
/// Default owned table name.
pub const DEFAULT_TABLE: &str = "keelson";

/// Errors of the nftables backend.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft transaction failed (table {table}, {commands} commands): {reason}")]
    Apply { table: String, commands: usize, reason: String },
    #[error("nft query of table {table} failed: {reason}")]
    Query { table: String, reason: String },
    #[error("fake nft rejected the transaction: {0}")]
    Fake(String),
}

/// The seam to the kernel: apply one atomic batch of nft JSON commands, and tell whether the table
/// still exists (tamper detection).
pub trait NftBackend {
    fn apply(&mut self, table: &str, commands: &[Value]) -> Result<(), NftError>;
    fn table_exists(&mut self, table: &str) -> Result<bool, NftError>;
}

/// Runs the real `nft` binary (through the `nftables` crate), optionally inside a network namespace
/// given by path (`nsenter --net=<path> nft …`), so tests never touch the host's ruleset.
#[derive(Clone, Debug, Default)]
pub struct NftCli {
    pub netns: Option<PathBuf>,
}

impl NftCli {
    fn program_and_args(&self) -> (String, Vec<String>) {
        match &self.netns {
            Some(p) => ("nsenter".into(), vec![format!("--net={}", p.display()), "--".into(), "nft".into()]),
            None => ("nft".into(), vec![]),
        }
    }
}

impl NftBackend for NftCli {
    fn apply(&mut self, table: &str, commands: &[Value]) -> Result<(), NftError> {
        let payload = json!({ "nftables": commands }).to_string();
        let (prog, args) = self.program_and_args();
        nftables::helper::apply_ruleset_raw(&payload, Some(prog.as_str()), args.iter().map(String::as_str))
            .map(|_| ())
            .map_err(|e| {
                // The crate's Display omits nft's stderr, which is the useful part.
                let reason = match e {
                    nftables::helper::NftablesError::NftFailed { stderr, .. } => stderr.trim().to_string(),
                    other => other.to_string(),
                };
                NftError::Apply { table: table.into(), commands: commands.len(), reason }
            })
    }

    fn table_exists(&mut self, table: &str) -> Result<bool, NftError> {
        // Listing one fixed small chain is O(1) in the table size, unlike listing the table.
        let (prog, mut args) = self.program_and_args();
        args.extend(["list", "chain", "ip", table, "services"].map(String::from));
        let out = std::process::Command::new(&prog)
            .args(&args)
            .output()
            .map_err(|e| NftError::Query { table: table.into(), reason: format!("spawn {prog}: {e}") })?;
        if out.status.success() {
            return Ok(true);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            Ok(false)
        } else {
            Err(NftError::Query { table: table.into(), reason: err.trim().to_string() })
        }
    }
}

fn hash12(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    hex::encode(&d[..6])
}

/// Chain name of a frontend (stable: derived from the key only).
pub fn frontend_chain(key: &FrontendKey) -> String {
    format!("fe-{}", hash12(&format!("fe|{key}")))
}

/// Affinity set name of one backend of a frontend.
pub fn affinity_set(key: &FrontendKey, b: &Backend) -> String {
    format!("af-{}", hash12(&format!("af|{key}|{}:{}", b.ip, b.port)))
}

/// Builds nft JSON commands for one table.
#[derive(Clone, Debug)]
pub struct Renderer {
    pub table: String,
}

impl Default for Renderer {
    fn default() -> Self {
        Renderer { table: DEFAULT_TABLE.into() }
    }
}

fn payload(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}
fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}
fn eq(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}
fn goto(target: &str) -> Value {
    json!({"goto": {"target": target}})
}
fn jump(target: &str) -> Value {
    json!({"jump": {"target": target}})
}

/// Every distinct endpoint address of a table (one hairpin element each).
fn endpoint_ips(t: &ServiceTable) -> BTreeSet<Ipv4Addr> {
    t.frontends.values().flat_map(|f| f.backends.iter().map(|b| b.ip)).collect()
}

impl Renderer {
    fn obj(&self, extra: Value) -> Value {
        let mut o = json!({"family": "ip", "table": self.table});
        if let (Some(m), Some(e)) = (o.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        o
    }
    fn add_chain(&self, name: &str) -> Value {
        json!({"add": {"chain": self.obj(json!({"name": name}))}})
    }
    fn base_chain(&self, name: &str, ty: &str, hook: &str, prio: i32) -> Value {
        json!({"add": {"chain": self.obj(json!({"name": name, "type": ty, "hook": hook, "prio": prio, "policy": "accept"}))}})
    }
    fn rule(&self, chain: &str, expr: Vec<Value>) -> Value {
        json!({"add": {"rule": self.obj(json!({"chain": chain, "expr": expr}))}})
    }
    fn flush_chain(&self, name: &str) -> Value {
        json!({"flush": {"chain": self.obj(json!({"name": name}))}})
    }
    fn delete_chain(&self, name: &str) -> Value {
        json!({"delete": {"chain": self.obj(json!({"name": name}))}})
    }
    fn elements(&self, verb: &str, set: &str, elems: Vec<Value>) -> Option<Value> {
        if elems.is_empty() {
            return None;
        }
        Some(json!({verb: {"element": self.obj(json!({"name": set, "elem": elems}))}}))
    }
    fn hairpin_elem(ip: Ipv4Addr) -> Value {
        json!({"concat": [ip.to_string(), ip.to_string()]})
    }

    /// The fixed skeleton: table, base chains, dispatch maps, masquerade plumbing.
    pub fn skeleton(&self) -> Vec<Value> {
        let masq = json!({"|": [meta("mark"), MASQ_MARK]});
        let mut out = vec![
            json!({"add": {"table": {"family": "ip", "name": self.table}}}),
            json!({"add": {"map": self.obj(json!({"name": "service-ips",
                "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict"}))}}),
            json!({"add": {"map": self.obj(json!({"name": "service-nodeports",
                "type": ["inet_proto", "inet_service"], "map": "verdict"}))}}),
            json!({"add": {"set": self.obj(json!({"name": "hairpin", "type": ["ipv4_addr", "ipv4_addr"]}))}}),
            json!({"add": {"map": self.obj(json!({"name": "svc-info",
                "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "mark"}))}}),
            json!({"add": {"map": self.obj(json!({"name": "np-info", "type": ["inet_proto", "inet_service"], "map": "mark"}))}}),
            // Address and port live in two maps: nft 1.0.6's JSON parser cannot declare a map whose
            // data is a concatenation (`ipv4_addr . inet_service`).
            json!({"add": {"map": self.obj(json!({"name": "svc-backend-ips",
                "type": ["ipv4_addr", "inet_proto", "inet_service", "mark"], "map": "ipv4_addr"}))}}),
            json!({"add": {"map": self.obj(json!({"name": "svc-backend-ports",
                "type": ["ipv4_addr", "inet_proto", "inet_service", "mark"], "map": "inet_service"}))}}),
            json!({"add": {"map": self.obj(json!({"name": "np-backend-ips",
                "type": ["inet_proto", "inet_service", "mark"], "map": "ipv4_addr"}))}}),
            json!({"add": {"map": self.obj(json!({"name": "np-backend-ports",
                "type": ["inet_proto", "inet_service", "mark"], "map": "inet_service"}))}}),
            self.add_chain("pick"),
            self.add_chain("select"),
            self.add_chain("select-np"),
            self.add_chain("services"),
            self.add_chain("mark-for-masquerade"),
            self.add_chain("masquerading"),
            self.base_chain("nat-prerouting", "nat", "prerouting", -100),
            self.base_chain("nat-output", "nat", "output", -100),
            self.base_chain("nat-postrouting", "nat", "postrouting", 100),
            self.rule("nat-prerouting", vec![jump("services")]),
            self.rule("nat-output", vec![jump("services")]),
            self.rule("nat-postrouting", vec![jump("masquerading")]),
            self.rule(
                "services",
                vec![json!({"vmap": {"key": {"concat": [payload("ip", "daddr"), meta("l4proto"), payload("th", "dport")]},
                    "data": "@service-ips"}})],
            ),
            self.rule(
                "services",
                vec![
                    json!({"mangle": {"key": meta("mark"), "value": {"map": {"key": {"concat": [payload("ip", "daddr"), meta("l4proto"), payload("th", "dport")]},
                        "data": "@svc-info"}}}}),
                    goto("select"),
                ],
            ),
            self.rule(
                "services",
                vec![
                    eq(json!({"fib": {"result": "type", "flags": ["daddr"]}}), json!("local")),
                    json!({"vmap": {"key": {"concat": [meta("l4proto"), payload("th", "dport")]},
                        "data": "@service-nodeports"}}),
                ],
            ),
            self.rule(
                "services",
                vec![
                    eq(json!({"fib": {"result": "type", "flags": ["daddr"]}}), json!("local")),
                    json!({"mangle": {"key": meta("mark"), "value": {"map": {"key": {"concat": [meta("l4proto"), payload("th", "dport")]},
                        "data": "@np-info"}}}}),
                    goto("select-np"),
                ],
            ),
            self.rule("mark-for-masquerade", vec![json!({"mangle": {"key": meta("mark"), "value": masq}})]),
            self.rule("select", vec![jump("pick")]),
            self.rule("select-np", vec![jump("pick")]),
            // Hairpin: a backend that reached itself through a service must see the node as source.
            self.rule(
                "masquerading",
                vec![
                    json!({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}),
                    eq(json!({"concat": [payload("ip", "saddr"), payload("ip", "daddr")]}), json!("@hairpin")),
                    json!({"masquerade": null}),
                ],
            ),
            self.rule(
                "masquerading",
                vec![eq(json!({"&": [meta("mark"), MASQ_MARK]}), json!(0)), json!({"return": null})],
            ),
            self.rule(
                "masquerading",
                vec![json!({"mangle": {"key": meta("mark"), "value": {"^": [meta("mark"), MASQ_MARK]}}})],
            ),
            self.rule("masquerading", vec![json!({"masquerade": {"flags": ["fully-random"]}})]),
        ];
        out.extend(self.pick_rules());
        for proto in ["tcp", "udp"] {
            for (chain, key, prefix) in [
                ("select", vec![payload("ip", "daddr"), meta("l4proto"), payload("th", "dport"), meta("mark")], "svc"),
                ("select-np", vec![meta("l4proto"), payload("th", "dport"), meta("mark")], "np"),
            ] {
                let lookup = |suffix: &str| json!({"map": {"key": {"concat": key.clone()}, "data": format!("@{prefix}-backend-{suffix}")}});
                out.push(self.rule(
                    chain,
                    vec![
                        eq(meta("l4proto"), json!(proto)),
                        json!({"dnat": {"addr": lookup("ips"), "port": lookup("ports")}}),
                    ],
                ));
            }
        }
        out
    }

    /// The shared bucket picker: mark `(count+1) << 16 | masq` → `masq | random bucket`, or drop.
    fn pick_rules(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for masq in [0, MASQ_MARK] {
            out.push(self.rule("pick", vec![eq(meta("mark"), json!((1u32 << 16) | masq)), json!({"drop": null})]));
        }
        for k in 1..=FAST_MAX_BACKENDS as u32 {
            for masq in [0, MASQ_MARK] {
                let ng = json!({"numgen": {"mode": "random", "mod": k, "offset": masq}});
                out.push(self.rule(
                    "pick",
                    vec![
                        eq(meta("mark"), json!(((k + 1) << 16) | masq)),
                        json!({"mangle": {"key": meta("mark"), "value": ng}}),
                    ],
                ));
            }
        }
        out
    }

    /// The data-map elements of an element-only frontend: (map, element) pairs.
    fn fast_elements(key: &FrontendKey, fe: &Frontend) -> Vec<(&'static str, Value)> {
        let masq = if fe.masquerade_external { MASQ_MARK } else { 0 };
        let (info_map, ip_map, port_map, base): (&str, &str, &str, Vec<Value>) = match key.addr {
            FrontendAddr::Ip(ip) => (
                "svc-info",
                "svc-backend-ips",
                "svc-backend-ports",
                vec![json!(ip.to_string()), json!(key.proto.name()), json!(key.port)],
            ),
            FrontendAddr::NodePort => {
                ("np-info", "np-backend-ips", "np-backend-ports", vec![json!(key.proto.name()), json!(key.port)])
            }
        };
        let mut out = vec![(info_map, json!([{"concat": base.clone()}, info_value(fe)]))];
        for (i, b) in fe.backends.iter().enumerate() {
            let mut k = base.clone();
            k.push(json!(i as u32 | masq));
            out.push((ip_map, json!([{"concat": k.clone()}, b.ip.to_string()])));
            out.push((port_map, json!([{"concat": k}, b.port])));
        }
        out
    }

    /// Keys only (for deletion) of [`Self::fast_elements`].
    fn fast_keys(key: &FrontendKey, fe: &Frontend) -> Vec<(&'static str, Value)> {
        Self::fast_elements(key, fe).into_iter().map(|(m, e)| (m, e[0].clone())).collect()
    }

    fn map_element(key: &FrontendKey) -> (&'static str, Value) {
        match key.addr {
            FrontendAddr::Ip(ip) => ("service-ips", json!({"concat": [ip.to_string(), key.proto.name(), key.port]})),
            FrontendAddr::NodePort => ("service-nodeports", json!({"concat": [key.proto.name(), key.port]})),
        }
    }

    fn map_entry(key: &FrontendKey) -> (&'static str, Value) {
        let (map, elem) = Self::map_element(key);
        (map, json!([elem, goto(&frontend_chain(key))]))
    }

    fn affinity_sets(&self, key: &FrontendKey, fe: &Frontend) -> Vec<Value> {
        let Some(t) = fe.affinity_timeout_s else { return vec![] };
        fe.backends
            .iter()
            .map(|b| {
                json!({"add": {"set": self.obj(json!({"name": affinity_set(key, b), "type": "ipv4_addr",
                    "flags": ["timeout"], "timeout": t}))}})
            })
            .collect()
    }

    fn delete_affinity_sets(&self, key: &FrontendKey, fe: &Frontend) -> Vec<Value> {
        if fe.affinity_timeout_s.is_none() {
            return vec![];
        }
        fe.backends
            .iter()
            .map(|b| json!({"delete": {"set": self.obj(json!({"name": affinity_set(key, b)}))}}))
            .collect()
    }

    /// Chain + rules of a frontend (its map element is added separately, batched).
    fn frontend_body(&self, key: &FrontendKey, fe: &Frontend) -> Vec<Value> {
        let mut out = self.affinity_sets(key, fe);
        out.push(self.add_chain(&frontend_chain(key)));
        out.extend(self.frontend_rules(key, fe));
        out
    }

    fn dnat(key: &FrontendKey, b: &Backend) -> [Value; 2] {
        [eq(meta("l4proto"), json!(key.proto.name())), json!({"dnat": {"addr": b.ip.to_string(), "port": b.port}})]
    }

    fn frontend_rules(&self, key: &FrontendKey, fe: &Frontend) -> Vec<Value> {
        let chain = frontend_chain(key);
        let mut out = Vec::new();
        if fe.masquerade_external {
            out.push(self.rule(&chain, vec![jump("mark-for-masquerade")]));
        }
        if fe.backends.is_empty() {
            out.push(self.rule(&chain, vec![json!({"drop": null})]));
            return out;
        }
        let update = |b: &Backend| {
            fe.affinity_timeout_s.map(|_| {
                json!({"set": {"op": "update", "elem": payload("ip", "saddr"), "set": format!("@{}", affinity_set(key, b))}})
            })
        };
        if fe.affinity_timeout_s.is_some() {
            for b in &fe.backends {
                let mut e = vec![eq(payload("ip", "saddr"), json!(format!("@{}", affinity_set(key, b))))];
                e.extend(update(b));
                e.extend(Self::dnat(key, b));
                out.push(self.rule(&chain, e));
            }
        }
        let n = fe.backends.len();
        for (i, b) in fe.backends.iter().enumerate() {
            let mut e = Vec::new();
            if i + 1 < n {
                let ng = json!({"numgen": {"mode": "random", "mod": (n - i) as u32, "offset": 0}});
                e.push(eq(ng, json!(0)));
            }
            e.extend(update(b));
            e.extend(Self::dnat(key, b));
            out.push(self.rule(&chain, e));
        }
        out
    }

    /// A full, atomic resync: recreate the table from scratch in one transaction. (`add table`
    /// first so that `delete table` cannot fail when it is missing.) Map and set elements are
    /// batched into one command per map.
    pub fn full(&self, table: &ServiceTable) -> Vec<Value> {
        let mut out = vec![
            json!({"add": {"table": {"family": "ip", "name": self.table}}}),
            json!({"delete": {"table": {"family": "ip", "name": self.table}}}),
        ];
        out.extend(self.skeleton());
        let mut elems: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for (k, fe) in &table.frontends {
            if is_fast(fe) {
                for (map, e) in Self::fast_elements(k, fe) {
                    elems.entry(map).or_default().push(e);
                }
                continue;
            }
            out.extend(self.frontend_body(k, fe));
            let (map, e) = Self::map_entry(k);
            elems.entry(map).or_default().push(e);
        }
        for (map, e) in elems {
            out.extend(self.elements("add", map, e));
        }
        out.extend(self.elements("add", "hairpin", endpoint_ips(table).into_iter().map(Self::hairpin_elem).collect()));
        out
    }

    fn add_into(&self, k: &FrontendKey, fe: &Frontend, out: &mut Vec<Value>, add: &mut BTreeMap<&str, Vec<Value>>) {
        if is_fast(fe) {
            for (map, e) in Self::fast_elements(k, fe) {
                add.entry(map).or_default().push(e);
            }
            return;
        }
        out.extend(self.frontend_body(k, fe));
        let (map, e) = Self::map_entry(k);
        add.entry(map).or_default().push(e);
    }

    fn remove_into(
        &self,
        k: &FrontendKey,
        old: &Frontend,
        out: &mut Vec<Value>,
        del: &mut BTreeMap<&str, Vec<Value>>,
        deleted_chains: &mut Vec<Value>,
        deleted_sets: &mut Vec<Value>,
    ) {
        if is_fast(old) {
            for (map, e) in Self::fast_keys(k, old) {
                del.entry(map).or_default().push(e);
            }
            return;
        }
        let (map, e) = Self::map_element(k);
        del.entry(map).or_default().push(e);
        let chain = frontend_chain(k);
        out.push(self.flush_chain(&chain));
        deleted_chains.push(self.delete_chain(&chain));
        deleted_sets.extend(self.delete_affinity_sets(k, old));
    }

    /// Incremental commands for `changes` computed against `applied`, turning it into `desired`.
    pub fn incremental(&self, applied: &ServiceTable, desired: &ServiceTable, changes: &[Change]) -> Vec<Value> {
        let mut out = Vec::new();
        let mut add_elems: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        let mut del_elems: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        let mut deleted_chains = Vec::new();
        let mut deleted_sets = Vec::new();
        for c in changes {
            match c {
                Change::Upsert(k, fe) => match applied.frontends.get(k) {
                    Some(old) if is_fast(old) || is_fast(fe) => {
                        // Element-only on at least one side: remove the old shape, add the new one.
                        self.remove_into(k, old, &mut out, &mut del_elems, &mut deleted_chains, &mut deleted_sets);
                        self.add_into(k, fe, &mut out, &mut add_elems);
                    }
                    Some(old) => {
                        // Rewrite the chain in place; the map element keeps pointing at it.
                        let chain = frontend_chain(k);
                        out.push(self.flush_chain(&chain));
                        // The flush unreferenced the old affinity sets: drop those not kept, add new ones.
                        let same_timeout = old.affinity_timeout_s == fe.affinity_timeout_s;
                        let names = |f: &Frontend| -> BTreeSet<String> {
                            if f.affinity_timeout_s.is_none() {
                                return BTreeSet::new();
                            }
                            f.backends.iter().map(|b| affinity_set(k, b)).collect()
                        };
                        let (old_sets, new_sets) = (names(old), names(fe));
                        for name in &old_sets {
                            if !(same_timeout && new_sets.contains(name)) {
                                out.push(json!({"delete": {"set": self.obj(json!({"name": name}))}}));
                            }
                        }
                        for cmd in self.affinity_sets(k, fe) {
                            let name = cmd.pointer("/add/set/name").and_then(Value::as_str).unwrap_or_default();
                            if !(same_timeout && old_sets.contains(name)) {
                                out.push(cmd);
                            }
                        }
                        out.extend(self.frontend_rules(k, fe));
                    }
                    None => self.add_into(k, fe, &mut out, &mut add_elems),
                },
                Change::Remove(k) => {
                    if let Some(old) = applied.frontends.get(k) {
                        self.remove_into(k, old, &mut out, &mut del_elems, &mut deleted_chains, &mut deleted_sets);
                    }
                }
            }
        }
        let (old_ips, new_ips) = (endpoint_ips(applied), endpoint_ips(desired));
        for (map, e) in del_elems {
            out.extend(self.elements("delete", map, e));
        }
        for (map, e) in add_elems {
            out.extend(self.elements("add", map, e));
        }
        let gone: Vec<Value> = old_ips.difference(&new_ips).map(|ip| Self::hairpin_elem(*ip)).collect();
        let added: Vec<Value> = new_ips.difference(&old_ips).map(|ip| Self::hairpin_elem(*ip)).collect();
        out.extend(self.elements("delete", "hairpin", gone));
        out.extend(self.elements("add", "hairpin", added));
        // Unreferenced only now: chains after their map elements, sets after the rules using them.
        out.extend(deleted_chains);
        out.extend(deleted_sets);
        out
    }
}

/// What one sync did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncReport {
    pub full: bool,
    pub commands: usize,
    pub changes: usize,
}

/// Level-triggered driver: remembers the last applied table, applies diffs, falls back to a full
/// resync after any failure or when the table was tampered with.
pub struct NftProxier<B: NftBackend> {
    backend: B,
    renderer: Renderer,
    applied: ServiceTable,
    need_full: bool,
}

impl<B: NftBackend> NftProxier<B> {
    /// A proxier that starts with a full sync (it adopts the table by atomically replacing it:
    /// established connections keep their conntrack NAT state).
    pub fn new(backend: B, table: &str) -> Self {
        NftProxier {
            backend,
            renderer: Renderer { table: table.into() },
            applied: ServiceTable::default(),
            need_full: true,
        }
    }

    pub fn backend(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The table as last applied successfully.
    pub fn applied(&self) -> &ServiceTable {
        &self.applied
    }

    /// Converges the kernel to `desired`.
    pub fn sync(&mut self, desired: &ServiceTable) -> Result<SyncReport, NftError> {
        if self.need_full {
            let cmds = self.renderer.full(desired);
            let n = cmds.len();
            self.backend.apply(&self.renderer.table, &cmds)?;
            self.applied = desired.clone();
            self.need_full = false;
            tracing::info!(table = %self.renderer.table, frontends = desired.frontends.len(), commands = n, "nft full sync");
            return Ok(SyncReport { full: true, commands: n, changes: desired.frontends.len() });
        }
        let changes = ServiceTable::diff(&self.applied, desired);
        if changes.is_empty() {
            return Ok(SyncReport { full: false, commands: 0, changes: 0 });
        }
        let cmds = self.renderer.incremental(&self.applied, desired, &changes);
        let n = cmds.len();
        if let Err(e) = self.backend.apply(&self.renderer.table, &cmds) {
            tracing::warn!(error = %e, "nft incremental sync failed; next sync is a full resync");
            self.need_full = true;
            return Err(e);
        }
        // Apply the changes to the remembered table instead of cloning the whole desired table:
        // the cost of a sync stays proportional to what changed (plus the diff's comparison walk).
        for c in changes.iter() {
            match c {
                Change::Upsert(k, f) => {
                    self.applied.frontends.insert(*k, f.clone());
                }
                Change::Remove(k) => {
                    self.applied.frontends.remove(k);
                }
            }
        }
        tracing::debug!(changes = changes.len(), commands = n, "nft incremental sync");
        Ok(SyncReport { full: false, commands: n, changes: changes.len() })
    }

    /// Periodic tamper check: a missing table (or an error asking) forces the next sync to be full.
    /// Returns whether a repair is needed.
    pub fn check(&mut self) -> bool {
        match self.backend.table_exists(&self.renderer.table) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(table = %self.renderer.table, "nft table missing; scheduling full resync");
                self.need_full = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "nft table check failed; scheduling full resync");
                self.need_full = true;
            }
        }
        self.need_full
    }

    /// Removes the owned table (shutdown without leaving state behind).
    pub fn cleanup(&mut self) -> Result<(), NftError> {
        let t = json!({"family": "ip", "name": self.renderer.table});
        self.backend.apply(&self.renderer.table, &[json!({"add": {"table": t}}), json!({"delete": {"table": t}})])
    }
}

#[cfg(any(test, feature = "test-helpers"))]
pub use fake::FakeNft;

#[cfg(any(test, feature = "test-helpers"))]
mod fake;

#[cfg(test)]
#[path = "nft_tests.rs"]
mod tests;
