//! The namespace controller's decisions for one terminating namespace, as a pure function.
//!
//! Upstream (`pkg/controller/namespace/deletion`) deletes every namespaced object, reports what
//! is left in five status conditions, and removes the `kubernetes` finalizer from
//! `spec.finalizers` (through the `finalize` subresource) only once a listing of every kind comes
//! back empty. Objects with their own finalizers are waited for, never forced.

use std::collections::BTreeMap;

use crate::object::{Obj, ObjKey};

/// The finalizer in `Namespace.spec.finalizers` this controller owns.
pub const KUBERNETES: &str = "kubernetes";

/// One `status.conditions` entry of a Namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
}

/// The namespace as the planner sees it.
#[derive(Debug, Clone, Default)]
pub struct Namespace {
    pub name: String,
    pub deleting: bool,
    pub spec_finalizers: Vec<String>,
    pub conditions: Vec<Condition>,
}

/// The namespace's objects of one kind (or why they could not be listed).
#[derive(Debug, Clone)]
pub struct Content {
    /// `plural.group` as upstream's messages print it (`configmaps.`, `deployments.apps`).
    pub resource: String,
    pub listed: Result<Vec<Obj>, String>,
}

/// One API call of the namespace controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Delete one object (background propagation, uid precondition).
    Delete(ObjKey),
    /// Replace `status.conditions`.
    SetConditions(Vec<Condition>),
    /// Write `spec.finalizers` (without `kubernetes`) through `namespaces/{name}/finalize`.
    Finalize { keep: Vec<String> },
}

/// What the namespace needs now. `now` stamps conditions whose status changes.
pub fn plan(ns: &Namespace, content: &[Content], now: &str) -> Vec<Op> {
    if !ns.deleting || !ns.spec_finalizers.iter().any(|f| f == KUBERNETES) {
        return Vec::new();
    }
    let mut ops = Vec::new();
    let mut failures = Vec::new();
    let mut remaining: BTreeMap<&str, usize> = BTreeMap::new();
    let mut finalizers: BTreeMap<&str, usize> = BTreeMap::new();
    let mut empty = true;
    for c in content {
        match &c.listed {
            Err(e) => failures.push(format!("{}: {e}", c.resource)),
            Ok(objs) => {
                for o in objs {
                    empty = false;
                    if !o.deleting {
                        ops.push(Op::Delete(o.key.clone()));
                    }
                    // What a delete does not remove at once: objects held by finalizers.
                    if o.deleting || !o.finalizers.is_empty() {
                        *remaining.entry(&c.resource).or_default() += 1;
                        for f in &o.finalizers {
                            *finalizers.entry(f).or_default() += 1;
                        }
                    }
                }
            }
        }
    }
    let listing = |m: &BTreeMap<&str, usize>, sep: &str| {
        m.iter().map(|(k, n)| format!("{k}{sep}{n} resource instances")).collect::<Vec<_>>().join(", ")
    };
    let wanted = [
        cond(
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered",
        ),
        cond(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed",
        ),
        if failures.is_empty() {
            cond(
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization",
            )
        } else {
            cond("NamespaceDeletionContentFailure", true, "ContentDeletionFailed", &failures.join("; "))
        },
        if remaining.is_empty() {
            cond("NamespaceContentRemaining", false, "ContentRemoved", "All content successfully removed")
        } else {
            let msg = format!("Some resources are remaining: {}", listing(&remaining, " has "));
            cond("NamespaceContentRemaining", true, "SomeResourcesRemain", &msg)
        },
        if finalizers.is_empty() {
            cond(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished",
            )
        } else {
            let msg =
                format!("Some content in the namespace has finalizers remaining: {}", listing(&finalizers, " in "));
            cond("NamespaceFinalizersRemaining", true, "SomeFinalizersRemain", &msg)
        },
    ];
    let conditions = merge_conditions(&ns.conditions, wanted, now);
    if conditions != ns.conditions {
        ops.push(Op::SetConditions(conditions));
    }
    if empty && failures.is_empty() {
        ops.push(Op::Finalize { keep: ns.spec_finalizers.iter().filter(|f| *f != KUBERNETES).cloned().collect() });
    }
    ops
}

fn cond(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: String::new(),
    }
}

/// `current` with the wanted conditions replacing those of the same type; a condition keeps its
/// transition time while its status stays the same.
fn merge_conditions(current: &[Condition], wanted: impl IntoIterator<Item = Condition>, now: &str) -> Vec<Condition> {
    let mut out: Vec<Condition> = current.to_vec();
    for mut w in wanted {
        match out.iter_mut().find(|c| c.type_ == w.type_) {
            Some(c) => {
                w.last_transition_time =
                    if c.status == w.status { c.last_transition_time.clone() } else { now.to_string() };
                *c = w;
            }
            None => {
                w.last_transition_time = now.to_string();
                out.push(w);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::object::test_helpers::{deleting, obj};

    fn terminating() -> Namespace {
        Namespace { name: "ns".into(), deleting: true, spec_finalizers: vec![KUBERNETES.into()], conditions: vec![] }
    }

    fn content(resource: &str, objs: Vec<Obj>) -> Content {
        Content { resource: resource.into(), listed: Ok(objs) }
    }

    fn summary(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                Op::Delete(k) => format!("delete {}", k.name),
                Op::Finalize { keep } => format!("finalize keep={keep:?}"),
                Op::SetConditions(cs) => {
                    let t: Vec<String> = cs
                        .iter()
                        .filter(|c| c.status == "True")
                        .map(|c| format!("{}: {}", c.type_, c.message))
                        .collect();
                    format!("conditions {t:?}")
                }
            })
            .collect()
    }

    #[test]
    fn table() {
        let mut live = terminating();
        live.deleting = false;
        let mut other_finalizer = terminating();
        other_finalizer.spec_finalizers = vec!["example.com/x".into()];
        let mut two = terminating();
        two.spec_finalizers = vec![KUBERNETES.into(), "example.com/x".into()];
        let held = Obj { finalizers: vec!["example.com/hold".into()], ..obj("held") };
        let cases: Vec<(&str, Namespace, Vec<Content>, Vec<&str>)> = vec![
            ("not terminating", live, vec![content("configmaps.", vec![obj("a")])], vec![]),
            ("someone else's finalizer", other_finalizer, vec![], vec![]),
            (
                "empty: finalize, keep other finalizers",
                two,
                vec![content("configmaps.", vec![])],
                vec!["conditions []", "finalize keep=[\"example.com/x\"]"],
            ),
            (
                "content: delete it all, do not finalize",
                terminating(),
                vec![content("configmaps.", vec![obj("a"), obj("b")]), content("deployments.apps", vec![obj("d")])],
                vec!["delete a", "delete b", "delete d", "conditions []"],
            ),
            (
                "held content: delete, report the remaining and their finalizers",
                terminating(),
                vec![content("configmaps.", vec![held.clone(), deleting(obj("gone"), &["example.com/hold"])])],
                vec![
                    "delete held",
                    "conditions [\"NamespaceContentRemaining: Some resources are remaining: configmaps. has 2 resource instances\", \"NamespaceFinalizersRemaining: Some content in the namespace has finalizers remaining: example.com/hold in 2 resource instances\"]",
                ],
            ),
            (
                "a listing failed: never finalize",
                terminating(),
                vec![Content { resource: "secrets.".into(), listed: Err("forbidden".into()) }],
                vec!["conditions [\"NamespaceDeletionContentFailure: secrets.: forbidden\"]"],
            ),
        ];
        for (name, ns, content, want) in cases {
            assert_eq!(summary(&plan(&ns, &content, "T1")), want, "{name}");
        }
    }

    #[test]
    fn unchanged_conditions_are_not_rewritten_and_keep_their_time() {
        let ns = terminating();
        let held = Obj { finalizers: vec!["f".into()], ..obj("held") };
        let c = vec![content("configmaps.", vec![deleting(held, &["f"])])];
        let ops = plan(&ns, &c, "T1");
        let Some(Op::SetConditions(conds)) = ops.last() else { panic!("{ops:?}") };
        let again = Namespace { conditions: conds.clone(), ..terminating() };
        assert_eq!(plan(&again, &c, "T2"), vec![]);
        // Once the object is gone, the remaining-condition flips and gets the new time.
        let ops = plan(&again, &[content("configmaps.", vec![])], "T3");
        let Some(Op::SetConditions(conds)) = ops.first() else { panic!("{ops:?}") };
        let t = |ty: &str| conds.iter().find(|c| c.type_ == ty).unwrap().last_transition_time.clone();
        assert_eq!(t("NamespaceContentRemaining"), "T3");
        assert_eq!(t("NamespaceDeletionDiscoveryFailure"), "T1");
        assert!(matches!(ops.last(), Some(Op::Finalize { .. })));
    }
}
