//! The pure core of the Deployment controller: one rollout step per sync.
//!
//! A Deployment owns ReplicaSets, one per distinct pod template; the "new" one carries the
//! current template (named `<deployment>-<hash>`, its pods labelled `pod-template-hash=<hash>`),
//! the others are "old". Each sync looks at the sets as they are and takes the next step of the
//! strategy (RollingUpdate within maxSurge/maxUnavailable, or Recreate), numbers revisions,
//! trims history and computes the status `kubectl rollout status` reads. Because the step is
//! recomputed from the stored sets every time, a restart resumes a rollout where it stood.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// An `IntOrString` of the rolling-update parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntOrPercent {
    Int(i32),
    Percent(i32),
}

impl IntOrPercent {
    /// `"25%"` or a number; anything else is refused by validation, read as 0 here.
    pub fn parse(v: &Value) -> IntOrPercent {
        match v {
            Value::Number(n) => IntOrPercent::Int(n.as_i64().and_then(|i| i32::try_from(i).ok()).unwrap_or(0)),
            Value::String(s) => match s.strip_suffix('%') {
                Some(p) => IntOrPercent::Percent(p.trim().parse().unwrap_or(0)),
                None => IntOrPercent::Int(s.trim().parse().unwrap_or(0)),
            },
            _ => IntOrPercent::Int(0),
        }
    }

    /// The value against `total`, a percentage rounded up or down as asked.
    pub fn scaled(&self, total: i32, round_up: bool) -> i32 {
        match *self {
            IntOrPercent::Int(i) => i,
            IntOrPercent::Percent(p) => {
                let x = i64::from(p) * i64::from(total);
                let v = if round_up { (x + 99).div_euclid(100) } else { x.div_euclid(100) };
                i32::try_from(v).unwrap_or(i32::MAX)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    Recreate,
    RollingUpdate { max_surge: IntOrPercent, max_unavailable: IntOrPercent },
}

/// Upstream's fenceposts: surge rounds up, unavailability down, and both zero means one may
/// be unavailable (otherwise nothing could move).
pub fn fenceposts(strategy: &Strategy, replicas: i32) -> (i32, i32) {
    match strategy {
        Strategy::Recreate => (0, 0),
        Strategy::RollingUpdate { max_surge, max_unavailable } => {
            let surge = max_surge.scaled(replicas, true).max(0);
            let unavailable = max_unavailable.scaled(replicas, false).max(0);
            if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable) }
        }
    }
}

/// One status condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_update: DateTime<Utc>,
    pub last_transition: DateTime<Utc>,
}

/// The deployment as the planner sees it.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub name: String,
    pub generation: i64,
    pub replicas: i32,
    pub paused: bool,
    pub strategy: Strategy,
    pub min_ready_seconds: i32,
    pub revision_history_limit: Option<i32>,
    pub progress_deadline_seconds: Option<i32>,
    /// The hash of the current template (with the collision count), see [`template_hash`].
    pub hash: String,
    pub conditions: Vec<Condition>,
    /// The counts of the status last written (to tell progress from standing still).
    pub last: Counts,
    /// Pods of old sets not yet gone (terminating ones included; Recreate waits for them).
    pub old_pods: i32,
    pub deleting: bool,
}

/// Pod counts of a deployment status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
}

/// One owned ReplicaSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rs {
    pub name: String,
    /// Its template equals the deployment's (ignoring the hash label).
    pub current: bool,
    pub replicas: i32,
    pub status_replicas: i32,
    pub ready: i32,
    pub available: i32,
    pub revision: Option<i64>,
    pub revision_history: Option<String>,
    pub created: Option<DateTime<Utc>>,
    pub deleting: bool,
}

/// The status to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub observed_generation: i64,
    pub replicas: i32,
    pub updated_replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    pub unavailable_replicas: i32,
    pub conditions: Vec<Condition>,
}

/// The new ReplicaSet to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRs {
    pub name: String,
    pub replicas: i32,
    pub revision: i64,
}

/// What one sync does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Option<NewRs>,
    /// `(set, replicas)`: new `spec.replicas` of existing sets.
    pub scale: Vec<(String, i32)>,
    /// `(set, revision, revision-history)`: an existing set becomes the new one again (undo).
    pub set_revision: Vec<(String, i64, Option<String>)>,
    /// Old, empty sets beyond `revisionHistoryLimit`.
    pub delete: Vec<String>,
    /// The deployment's `deployment.kubernetes.io/revision`.
    pub revision: i64,
    pub status: Status,
}

/// The name of the new ReplicaSet.
pub fn rs_name(deployment: &str, hash: &str) -> String {
    format!("{deployment}-{hash}")
}

/// A stable hash of a pod template: FNV-1a (32 bit) over its canonical JSON (keys sorted,
/// empty values dropped) and the collision count, written with upstream's alphabet of
/// consonants and digits (so it never spells a word and is a valid label value).
pub fn template_hash(template: &Value, collision_count: Option<i32>) -> String {
    let mut canon = String::new();
    canonical(&normalize(template), &mut canon);
    if let Some(c) = collision_count {
        canon.push_str(&c.to_string());
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in canon.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string().bytes().map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()])).collect()
}

/// Drops nulls, empty maps and empty lists, so that two spellings of one template compare equal.
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), normalize(v))).filter(|(_, v)| !is_empty(v)).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, &Value> = m.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A template with the hash label removed (what the new set's template is compared by).
pub fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(HASH_LABEL);
    }
    normalize(&t)
}

/// One ReplicaSet of the namespace as ownership sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// The uid of its controller owner, if any.
    pub controller_uid: Option<String>,
    /// Its labels match the deployment's selector.
    pub matches: bool,
    pub deleting: bool,
}

/// Which sets the deployment `uid` adopts (matching orphans, e.g. left by
/// `kubectl delete --cascade=orphan` and a re-create) and releases (owned ones that no longer
/// match the selector). A deployment being deleted adopts nothing.
pub fn ownership(uid: &str, deleting: bool, sets: &[Candidate]) -> (Vec<String>, Vec<String>) {
    let mut adopt = Vec::new();
    let mut release = Vec::new();
    for c in sets.iter().filter(|c| !c.deleting) {
        match c.controller_uid.as_deref() {
            None if c.matches && !deleting => adopt.push(c.name.clone()),
            Some(u) if u == uid && !c.matches => release.push(c.name.clone()),
            _ => {}
        }
    }
    (adopt, release)
}

fn set_condition(conds: &mut Vec<Condition>, mut c: Condition) {
    if let Some(cur) = conds.iter().find(|x| x.type_ == c.type_) {
        if cur.status == c.status && cur.reason == c.reason && cur.message == c.message {
            return;
        }
        if cur.status == c.status {
            c.last_transition = cur.last_transition;
        }
    }
    conds.retain(|x| x.type_ != c.type_);
    conds.push(c);
    conds.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// One rollout step for `d` over its ReplicaSets `rss` at `now`.
pub fn plan(d: &Deployment, rss: &[Rs], now: DateTime<Utc>) -> Plan {
    let mut out = Plan::default();
    let live: Vec<&Rs> = rss.iter().filter(|r| !r.deleting).collect();
    let new = live.iter().copied().find(|r| r.current);
    let old: Vec<&Rs> = live.iter().copied().filter(|r| !r.current).collect();
    let max_old_revision = old.iter().filter_map(|r| r.revision).max().unwrap_or(0);

    // Revisions: the new set is always the newest revision (an undo renumbers an old template).
    let new_revision = match new.and_then(|r| r.revision) {
        Some(rev) if rev > max_old_revision => rev,
        _ => max_old_revision + 1,
    };
    out.revision = new_revision;
    if let Some(n) = new
        && n.revision != Some(new_revision)
    {
        let history = match (n.revision, &n.revision_history) {
            (Some(r), Some(h)) if !h.is_empty() => Some(format!("{h},{r}")),
            (Some(r), _) => Some(r.to_string()),
            (None, h) => h.clone(),
        };
        out.set_revision.push((n.name.clone(), new_revision, history));
    }

    let (surge, unavailable) = fenceposts(&d.strategy, d.replicas);
    let spec_total: i32 = live.iter().map(|r| r.replicas).sum();
    let old_spec: i32 = old.iter().map(|r| r.replicas).sum();
    let old_running: i32 = old.iter().map(|r| r.status_replicas).sum();
    let mut created_name = None;

    if d.deleting {
        // The garbage collector takes the sets; only the status is kept current.
    } else if d.paused {
        // Paused: no new set, only replica-count changes go to the newest active set.
        let target = new.or_else(|| live.iter().copied().filter(|r| r.replicas > 0).max_by_key(|r| r.revision));
        if let Some(t) = target {
            let want = (t.replicas + d.replicas - spec_total).max(0);
            if want != t.replicas {
                out.scale.push((t.name.clone(), want));
            }
        }
    } else {
        match &d.strategy {
            Strategy::Recreate => {
                for r in old.iter().filter(|r| r.replicas > 0) {
                    out.scale.push((r.name.clone(), 0));
                }
                if old_spec == 0 && old_running == 0 && d.old_pods == 0 {
                    match new {
                        None => {
                            out.create = Some(NewRs {
                                name: rs_name(&d.name, &d.hash),
                                replicas: d.replicas,
                                revision: new_revision,
                            });
                        }
                        Some(n) if n.replicas != d.replicas => out.scale.push((n.name.clone(), d.replicas)),
                        Some(_) => {}
                    }
                } else if new.is_none() {
                    // Upstream creates the new set empty while the old pods drain.
                    out.create = Some(NewRs { name: rs_name(&d.name, &d.hash), replicas: 0, revision: new_revision });
                } else if let Some(n) = new.filter(|n| n.replicas != 0) {
                    out.scale.push((n.name.clone(), 0));
                }
            }
            Strategy::RollingUpdate { .. } => {
                let new_replicas = new.map_or(0, |n| n.replicas);
                // Scale the new set up within maxSurge (or down to the desired count).
                let want_new = if new_replicas > d.replicas {
                    d.replicas
                } else {
                    let max_total = d.replicas + surge;
                    let room = (max_total - spec_total).max(0);
                    new_replicas + room.min(d.replicas - new_replicas)
                };
                match new {
                    None => {
                        out.create =
                            Some(NewRs { name: rs_name(&d.name, &d.hash), replicas: want_new, revision: new_revision });
                        created_name = Some(rs_name(&d.name, &d.hash));
                    }
                    Some(n) if want_new != n.replicas => out.scale.push((n.name.clone(), want_new)),
                    Some(_) => {}
                }
                // Scale old sets down while at least replicas - maxUnavailable stay available.
                if old_spec > 0 && want_new == new_replicas {
                    let min_available = d.replicas - unavailable;
                    let new_unavailable = new.map_or(0, |n| (n.replicas - n.available).max(0));
                    let mut budget = spec_total - min_available - new_unavailable;
                    let mut old_sorted = old.clone();
                    old_sorted.sort_by_key(|r| (r.created, r.name.clone()));
                    let mut target: BTreeMap<String, i32> = BTreeMap::new();
                    // First the old pods that are not available anyway.
                    for r in &old_sorted {
                        if budget <= 0 {
                            break;
                        }
                        let unhealthy = (r.replicas - r.available).max(0).min(budget);
                        if unhealthy > 0 {
                            target.insert(r.name.clone(), r.replicas - unhealthy);
                            budget -= unhealthy;
                        }
                    }
                    // Then available ones, oldest set first, keeping min_available.
                    let available_total: i32 = live.iter().map(|r| r.available).sum();
                    let mut down = (available_total - min_available).max(0).min(budget.max(0));
                    for r in &old_sorted {
                        if down <= 0 {
                            break;
                        }
                        let cur = target.get(&r.name).copied().unwrap_or(r.replicas);
                        let n = cur.min(down);
                        if n > 0 {
                            target.insert(r.name.clone(), cur - n);
                            down -= n;
                        }
                    }
                    for (name, replicas) in target {
                        out.scale.push((name, replicas));
                    }
                }
            }
        }
    }

    // History: old sets that are empty, oldest revision first, beyond the limit.
    let rolled_out = new.is_some() && old_spec == 0 && old_running == 0;
    if let Some(limit) = d.revision_history_limit
        && (rolled_out || d.paused)
    {
        let mut empty: Vec<&Rs> = old.iter().copied().filter(|r| r.replicas == 0 && r.status_replicas == 0).collect();
        empty.sort_by_key(|r| (r.revision.unwrap_or(0), r.name.clone()));
        let excess = empty.len().saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        out.delete = empty.iter().take(excess).map(|r| r.name.clone()).collect();
    }

    // Status, from the sets as they are now.
    let replicas: i32 = live.iter().map(|r| r.status_replicas).sum();
    let updated = new.map_or(0, |n| n.status_replicas);
    let ready: i32 = live.iter().map(|r| r.ready).sum();
    let available: i32 = live.iter().map(|r| r.available).sum();
    let mut conds = d.conditions.clone();
    let cond = |type_: &str, status: &str, reason: &str, message: String| Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_update: now,
        last_transition: now,
    };
    if available >= d.replicas - unavailable {
        set_condition(
            &mut conds,
            cond("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.".into()),
        );
    } else {
        set_condition(
            &mut conds,
            cond(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            ),
        );
    }
    let prev = d.conditions.iter().find(|c| c.type_ == "Progressing");
    let new_name = new.map(|n| n.name.clone()).or(created_name.clone()).unwrap_or_default();
    if d.progress_deadline_seconds.is_some() {
        let complete = updated == d.replicas && replicas == d.replicas && available == d.replicas && new.is_some();
        if d.paused {
            set_condition(
                &mut conds,
                cond("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into()),
            );
        } else if prev.is_some_and(|p| p.reason == "DeploymentPaused") {
            set_condition(
                &mut conds,
                cond("Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed".into()),
            );
        } else if complete {
            set_condition(
                &mut conds,
                cond(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                ),
            );
        } else if created_name.is_some() || out.create.is_some() {
            let mut c =
                cond("Progressing", "True", "NewReplicaSetCreated", format!("Created new replica set \"{new_name}\""));
            if let Some(p) = prev.filter(|p| p.status == "True") {
                c.last_transition = p.last_transition;
            }
            conds.retain(|x| x.type_ != "Progressing");
            conds.push(c);
        } else if progressed(d.last, Counts { replicas, updated, ready, available }) {
            let mut c =
                cond("Progressing", "True", "ReplicaSetUpdated", format!("ReplicaSet \"{new_name}\" is progressing."));
            if let Some(p) = prev.filter(|p| p.status == "True") {
                c.last_transition = p.last_transition;
            }
            conds.retain(|x| x.type_ != "Progressing");
            conds.push(c);
        } else if let (Some(p), Some(deadline)) = (prev, d.progress_deadline_seconds)
            && p.reason != "NewReplicaSetAvailable"
            && p.last_update + chrono::Duration::seconds(i64::from(deadline)) <= now
        {
            set_condition(
                &mut conds,
                cond(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                ),
            );
        }
        conds.sort_by(|a, b| a.type_.cmp(&b.type_));
    }
    out.status = Status {
        observed_generation: d.generation,
        replicas,
        updated_replicas: updated,
        ready_replicas: ready,
        available_replicas: available,
        unavailable_replicas: (d.replicas - available).max(0),
        conditions: conds,
    };
    out
}

/// Whether the rollout moved since the status last written (upstream's rule: more updated,
/// ready or available pods, or fewer old ones).
fn progressed(last: Counts, now: Counts) -> bool {
    now.updated > last.updated
        || now.ready > last.ready
        || now.available > last.available
        || now.replicas - now.updated < last.replicas - last.updated
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn rolling(surge: Value, unavailable: Value) -> Strategy {
        Strategy::RollingUpdate {
            max_surge: IntOrPercent::parse(&surge),
            max_unavailable: IntOrPercent::parse(&unavailable),
        }
    }

    fn dep(replicas: i32) -> Deployment {
        Deployment {
            name: "web".into(),
            generation: 2,
            replicas,
            paused: false,
            strategy: rolling(json!(1), json!(1)),
            min_ready_seconds: 0,
            revision_history_limit: Some(10),
            progress_deadline_seconds: Some(600),
            hash: "new".into(),
            conditions: Vec::new(),
            last: Counts::default(),
            old_pods: 0,
            deleting: false,
        }
    }

    fn rs(name: &str, current: bool, replicas: i32, available: i32, revision: i64) -> Rs {
        Rs {
            name: name.into(),
            current,
            replicas,
            status_replicas: replicas,
            ready: available,
            available,
            revision: Some(revision),
            revision_history: None,
            created: Some(t(revision)),
            deleting: false,
        }
    }

    #[test]
    fn adopts_matching_orphan_sets_and_releases_strays() {
        let c = |name: &str, owner: Option<&str>, matches: bool| Candidate {
            name: name.into(),
            controller_uid: owner.map(str::to_string),
            matches,
            deleting: false,
        };
        let sets = [
            c("orphan", None, true),
            c("unrelated", None, false),
            c("mine", Some("d"), true),
            c("relabelled", Some("d"), false),
            c("theirs", Some("x"), true),
        ];
        assert_eq!(ownership("d", false, &sets), (vec!["orphan".to_string()], vec!["relabelled".to_string()]));
        assert_eq!(ownership("d", true, &sets).0, Vec::<String>::new());
    }

    #[test]
    fn fenceposts_round_as_upstream() {
        let f = |s: Value, u: Value, n| fenceposts(&rolling(s, u), n);
        assert_eq!(f(json!("25%"), json!("25%"), 10), (3, 2));
        assert_eq!(f(json!("25%"), json!("25%"), 1), (1, 0));
        assert_eq!(f(json!(0), json!(0), 5), (0, 1), "both zero: one may be unavailable");
        assert_eq!(f(json!("0%"), json!("10%"), 5), (0, 1), "10% of 5 rounds down to 0");
        assert_eq!(f(json!(2), json!("50%"), 3), (2, 1));
        assert_eq!(fenceposts(&Strategy::Recreate, 4), (0, 0));
    }

    #[test]
    fn the_template_hash_is_stable_and_label_safe() {
        let a =
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}});
        let b = json!({"spec": {"containers": [{"image": "i:1", "name": "c"}]}, "metadata": {"labels": {"app": "web"}, "annotations": {}}});
        assert_eq!(template_hash(&a, None), template_hash(&b, None));
        assert_ne!(template_hash(&a, None), template_hash(&a, Some(1)));
        let c =
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i:2"}]}});
        assert_ne!(template_hash(&a, None), template_hash(&c, None));
        let h = template_hash(&a, None);
        assert!(!h.is_empty() && h.len() <= 10 && h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let mut labelled = a.clone();
        labelled["metadata"]["labels"][HASH_LABEL] = json!(h);
        assert_eq!(without_hash(&labelled), normalize(&a));
    }

    #[test]
    fn a_first_rollout_creates_revision_one_at_full_size() {
        let p = plan(&dep(3), &[], t(0));
        assert_eq!(p.create, Some(NewRs { name: "web-new".into(), replicas: 3, revision: 1 }));
        assert_eq!(p.revision, 1);
        let prog = p.status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
        assert_eq!(prog.reason, "NewReplicaSetCreated");
        let avail = p.status.conditions.iter().find(|c| c.type_ == "Available").unwrap();
        assert_eq!(avail.status, "False");
    }

    #[test]
    fn a_rolling_update_surges_first_then_scales_old_down_within_max_unavailable() {
        // 4 replicas, maxSurge 1, maxUnavailable 1: the new set starts at 1 (4+1-4).
        let old = rs("web-old", false, 4, 4, 1);
        let p = plan(&dep(4), std::slice::from_ref(&old), t(0));
        assert_eq!(p.create, Some(NewRs { name: "web-new".into(), replicas: 1, revision: 2 }));
        assert!(p.scale.is_empty(), "no scale-down in the step that scaled up");
        // New set at 1 not yet available: old may go down by 1 (total 5, min available 3).
        let new = rs("web-new", true, 1, 0, 2);
        let p = plan(&dep(4), &[old.clone(), new], t(1));
        assert_eq!(p.scale, vec![("web-old".to_string(), 3)]);
        // Old at 3 (3 available), new at 1 available: room for one more new pod.
        let old3 = rs("web-old", false, 3, 3, 1);
        let p = plan(&dep(4), &[old3.clone(), rs("web-new", true, 1, 1, 2)], t(2));
        assert_eq!(p.scale, vec![("web-new".to_string(), 2)]);
        // Never more than replicas + surge and never fewer available than replicas - unavailable.
        let p = plan(&dep(4), &[old3, rs("web-new", true, 2, 0, 2)], t(3));
        assert!(p.scale.is_empty(), "5 pods, 3 available = the floor: {:?}", p.scale);
    }

    #[test]
    fn unavailable_old_pods_go_first() {
        let old = rs("web-old", false, 4, 2, 1);
        let p = plan(&dep(4), &[old, rs("web-new", true, 1, 1, 2)], t(0));
        // total 5, min available 3, new unavailable 0: budget 2, both from the unhealthy ones.
        assert_eq!(p.scale, vec![("web-old".to_string(), 2)]);
    }

    #[test]
    fn a_finished_rollout_is_complete_and_trims_history() {
        let mut d = dep(2);
        d.revision_history_limit = Some(1);
        let sets = [rs("web-a", false, 0, 0, 1), rs("web-b", false, 0, 0, 2), rs("web-new", true, 2, 2, 3)];
        let p = plan(&d, &sets, t(0));
        assert!(p.scale.is_empty() && p.create.is_none());
        assert_eq!(p.delete, vec!["web-a"]);
        assert_eq!(p.status.updated_replicas, 2);
        assert_eq!(p.status.available_replicas, 2);
        let prog = p.status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
        assert_eq!((prog.status.as_str(), prog.reason.as_str()), ("True", "NewReplicaSetAvailable"));
        let avail = p.status.conditions.iter().find(|c| c.type_ == "Available").unwrap();
        assert_eq!((avail.status.as_str(), avail.reason.as_str()), ("True", "MinimumReplicasAvailable"));
    }

    #[test]
    fn undo_renumbers_the_old_template_as_the_newest_revision() {
        let sets = [rs("web-a", true, 0, 0, 1), rs("web-b", false, 2, 2, 2)];
        let p = plan(&dep(2), &sets, t(0));
        assert_eq!(p.revision, 3);
        assert_eq!(p.set_revision, vec![("web-a".to_string(), 3, Some("1".to_string()))]);
        assert_eq!(p.scale, vec![("web-a".to_string(), 1)]);
    }

    #[test]
    fn recreate_scales_old_to_zero_and_waits_for_its_pods() {
        let mut d = dep(3);
        d.strategy = Strategy::Recreate;
        let p = plan(&d, &[rs("web-old", false, 3, 3, 1)], t(0));
        assert_eq!(p.scale, vec![("web-old".to_string(), 0)]);
        assert_eq!(p.create, Some(NewRs { name: "web-new".into(), replicas: 0, revision: 2 }));
        let mut draining = rs("web-old", false, 0, 0, 1);
        draining.status_replicas = 2;
        let p = plan(&d, &[draining, rs("web-new", true, 0, 0, 2)], t(1));
        assert!(p.scale.is_empty() && p.create.is_none());
        // The old set reports no pods, but one is still terminating: wait for it too.
        d.old_pods = 1;
        let p = plan(&d, &[rs("web-old", false, 0, 0, 1), rs("web-new", true, 0, 0, 2)], t(2));
        assert!(p.scale.is_empty());
        d.old_pods = 0;
        let p = plan(&d, &[rs("web-old", false, 0, 0, 1), rs("web-new", true, 0, 0, 2)], t(3));
        assert_eq!(p.scale, vec![("web-new".to_string(), 3)]);
    }

    #[test]
    fn paused_creates_no_new_set_but_follows_the_replica_count() {
        let mut d = dep(5);
        d.paused = true;
        let p = plan(&d, &[rs("web-old", false, 3, 3, 1)], t(0));
        assert!(p.create.is_none());
        assert_eq!(p.scale, vec![("web-old".to_string(), 5)]);
        let prog = p.status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
        assert_eq!((prog.status.as_str(), prog.reason.as_str()), ("Unknown", "DeploymentPaused"));
        d.paused = false;
        d.conditions = p.status.conditions;
        let p = plan(&d, &[rs("web-old", false, 5, 5, 1)], t(1));
        assert!(p.create.is_some());
        let prog = p.status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
        assert_eq!(prog.reason, "DeploymentResumed");
    }

    #[test]
    fn no_progress_past_the_deadline_is_reported() {
        let mut d = dep(2);
        d.progress_deadline_seconds = Some(30);
        let sets = [rs("web-old", false, 1, 1, 1), rs("web-new", true, 2, 0, 2)];
        d.last = Counts { replicas: 3, updated: 2, ready: 1, available: 1 };
        d.conditions = vec![Condition {
            type_: "Progressing".into(),
            status: "True".into(),
            reason: "ReplicaSetUpdated".into(),
            message: String::new(),
            last_update: t(0),
            last_transition: t(0),
        }];
        let p = plan(&d, &sets, t(10));
        let prog = p.status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
        assert_eq!(prog.status, "True", "within the deadline");
        let p = plan(&d, &sets, t(31));
        let prog = p.status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
        assert_eq!((prog.status.as_str(), prog.reason.as_str()), ("False", "ProgressDeadlineExceeded"));
        assert_eq!(prog.message, "ReplicaSet \"web-new\" has timed out progressing.");
        // Progress (one more available pod) renews the clock.
        let sets = [rs("web-old", false, 1, 1, 1), rs("web-new", true, 2, 1, 2)];
        let p = plan(&d, &sets, t(31));
        let prog = p.status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
        assert_eq!((prog.reason.as_str(), prog.last_update), ("ReplicaSetUpdated", t(31)));
    }
}
