//! The garbage collector's decisions for one owner uid, as a pure function.
//!
//! Upstream's garbage collector (kube-controller-manager `pkg/controller/garbagecollector`)
//! classifies every owner reference of a dependent as *solid* (the owner exists and is not
//! waiting for its dependents), *waiting for dependents* (the owner is being deleted in the
//! foreground) or *dangling* (no object with that uid). The rules it applies, reproduced here:
//!
//! - a dependent with a solid owner stays, but loses its dangling and waiting references;
//! - a dependent without solid owners is deleted (in the foreground when a waiting owner needs
//!   its own dependents gone first, else with the policy its finalizers ask for);
//! - an owner with the `orphan` finalizer has its references removed from every dependent, then
//!   loses the finalizer;
//! - an owner with the `foregroundDeletion` finalizer gets its dependents deleted and loses the
//!   finalizer once no dependent with `blockOwnerDeletion` remains.
//!
//! Every dangling reference is re-checked against the server (not the cache) before an
//! operation acts on it: a cache that has not yet seen a new owner must not make its dependents
//! vanish ([`Op::verify_absent`]).

use crate::object::{FOREGROUND, ORPHAN, Obj, ObjKey, OwnerRef, Propagation};

/// How a dependent's owner looks in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// No object with that uid.
    Absent,
    /// Exists and does not wait for its dependents.
    Solid,
    /// Being deleted with the `foregroundDeletion` finalizer.
    WaitingForDependents,
}

impl OwnerState {
    pub fn of(owner: Option<&Obj>) -> OwnerState {
        match owner {
            None => OwnerState::Absent,
            Some(o) if o.deleting && o.has_finalizer(FOREGROUND) => OwnerState::WaitingForDependents,
            Some(_) => OwnerState::Solid,
        }
    }
}

/// A dependent of the owner being planned, with the state of each of its owners.
#[derive(Debug, Clone)]
pub struct Dependent<'a> {
    pub obj: &'a Obj,
    /// One state per entry of `obj.owners`, in the same order.
    pub owner_states: Vec<OwnerState>,
    /// Whether other objects name this dependent as their owner.
    pub has_dependents: bool,
}

/// One API call the garbage collector makes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Delete `target` (with a uid precondition).
    Delete { target: ObjKey, propagation: Propagation, verify_absent: Vec<OwnerRef> },
    /// Remove the references to `uids` from `target.metadata.ownerReferences`.
    RemoveOwnerRefs { target: ObjKey, uids: Vec<String>, verify_absent: Vec<OwnerRef> },
    /// Remove `finalizer` from `target.metadata.finalizers`.
    RemoveFinalizer { target: ObjKey, finalizer: &'static str },
}

impl Op {
    pub fn target(&self) -> &ObjKey {
        match self {
            Op::Delete { target, .. } | Op::RemoveOwnerRefs { target, .. } | Op::RemoveFinalizer { target, .. } => {
                target
            }
        }
    }

    /// Owner references the cache believes dangling; the executor confirms each with the server
    /// and skips the operation if any of them exists after all.
    pub fn verify_absent(&self) -> &[OwnerRef] {
        match self {
            Op::Delete { verify_absent, .. } | Op::RemoveOwnerRefs { verify_absent, .. } => verify_absent,
            Op::RemoveFinalizer { .. } => &[],
        }
    }
}

/// What to do about owner `owner_uid` (`owner`: the object with that uid in the cache, if any)
/// and the objects that reference it.
pub fn plan(owner_uid: &str, owner: Option<&Obj>, owned: &[Dependent<'_>]) -> Vec<Op> {
    let mut ops = Vec::new();
    match owner {
        None => ops.extend(owned.iter().filter(|d| !d.obj.deleting).filter_map(dependent_op)),
        Some(o) if o.deleting && o.has_finalizer(ORPHAN) => {
            for d in owned {
                ops.push(Op::RemoveOwnerRefs {
                    target: d.obj.key.clone(),
                    uids: vec![owner_uid.to_string()],
                    verify_absent: Vec::new(),
                });
            }
            ops.push(Op::RemoveFinalizer { target: o.key.clone(), finalizer: ORPHAN });
        }
        Some(o) if o.deleting && o.has_finalizer(FOREGROUND) => {
            ops.extend(owned.iter().filter(|d| !d.obj.deleting).filter_map(dependent_op));
            let blocked = owned.iter().any(|d| d.obj.owner(owner_uid).is_some_and(|r| r.block));
            if !blocked {
                ops.push(Op::RemoveFinalizer { target: o.key.clone(), finalizer: FOREGROUND });
            }
        }
        Some(_) => {}
    }
    ops
}

/// The operation for a dependent that has at least one absent or waiting owner.
fn dependent_op(d: &Dependent<'_>) -> Option<Op> {
    let refs = || d.obj.owners.iter().zip(d.owner_states.iter().copied());
    let of = |s: OwnerState| refs().filter(move |(_, st)| *st == s).map(|(r, _)| r.clone());
    let dangling: Vec<OwnerRef> = of(OwnerState::Absent).collect();
    let waiting: Vec<OwnerRef> = of(OwnerState::WaitingForDependents).collect();
    if refs().any(|(_, s)| s == OwnerState::Solid) {
        if dangling.is_empty() && waiting.is_empty() {
            return None;
        }
        let uids = dangling.iter().chain(&waiting).map(|r| r.uid.clone()).collect();
        return Some(Op::RemoveOwnerRefs { target: d.obj.key.clone(), uids, verify_absent: dangling });
    }
    let propagation =
        if !waiting.is_empty() && d.has_dependents { Propagation::Foreground } else { Propagation::for_object(d.obj) };
    Some(Op::Delete { target: d.obj.key.clone(), propagation, verify_absent: dangling })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::object::test_helpers::{deleting, obj, owned_by};

    fn dep<'a>(o: &'a Obj, states: &[OwnerState], has_dependents: bool) -> Dependent<'a> {
        Dependent { obj: o, owner_states: states.to_vec(), has_dependents }
    }

    fn kinds(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                Op::Delete { target, propagation, verify_absent } => {
                    format!("delete {} {propagation:?} verify={}", target.name, verify_absent.len())
                }
                Op::RemoveOwnerRefs { target, uids, verify_absent } => {
                    format!("unref {} {} verify={}", target.name, uids.join(","), verify_absent.len())
                }
                Op::RemoveFinalizer { target, finalizer } => format!("unfinalize {} {finalizer}", target.name),
            })
            .collect()
    }

    #[test]
    fn table() {
        use OwnerState::*;
        let owner = obj("owner");
        let other = obj("other");
        let a = owned_by(obj("a"), "owner", false);
        let b = owned_by(obj("b"), "owner", true);
        let both = owned_by(owned_by(obj("both"), "owner", false), "other", false);
        let gone_a = deleting(a.clone(), &["keep"]);
        let fg = deleting(owner.clone(), &[FOREGROUND]);
        let orphan = deleting(owner.clone(), &[ORPHAN]);
        let other_fin = deleting(owner.clone(), &["example.com/hold"]);
        let asks_orphan = owned_by(deleting(obj("c"), &[]), "owner", false);
        let c_orphan = Obj { deleting: false, finalizers: vec![ORPHAN.into()], ..asks_orphan };
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, Option<&Obj>, Vec<Dependent<'_>>, Vec<&str>)> = vec![
            ("live owner: nothing", Some(&owner), vec![dep(&a, &[Solid], false)], vec![]),
            (
                "absent owner: background delete of every dependent, verified",
                None,
                vec![dep(&a, &[Absent], false), dep(&b, &[Absent], false)],
                vec!["delete a Background verify=1", "delete b Background verify=1"],
            ),
            ("absent owner, dependent already deleting: wait", None, vec![dep(&gone_a, &[Absent], false)], vec![]),
            (
                "absent owner, dependent asks for orphan through its finalizer",
                None,
                vec![dep(&c_orphan, &[Absent], false)],
                vec!["delete c Orphan verify=1"],
            ),
            (
                "absent owner, another solid owner: only the reference goes",
                None,
                vec![dep(&both, &[Absent, Solid], false)],
                vec!["unref both owner verify=1"],
            ),
            (
                "absent owner, other owner absent too: delete, both verified",
                None,
                vec![dep(&both, &[Absent, Absent], false)],
                vec!["delete both Background verify=2"],
            ),
            (
                "absent owner, other owner waiting and dependent has dependents: foreground",
                None,
                vec![dep(&both, &[Absent, WaitingForDependents], true)],
                vec!["delete both Foreground verify=1"],
            ),
            (
                "foreground owner: delete dependents, keep the finalizer while a blocking one remains",
                Some(&fg),
                vec![dep(&a, &[WaitingForDependents], false), dep(&b, &[WaitingForDependents], false)],
                vec!["delete a Background verify=0", "delete b Background verify=0"],
            ),
            (
                "foreground owner, dependent with its own dependents: foreground cascade",
                Some(&fg),
                vec![dep(&b, &[WaitingForDependents], true)],
                vec!["delete b Foreground verify=0"],
            ),
            (
                "foreground owner, only non-blocking dependents left: finalizer goes now",
                Some(&fg),
                vec![dep(&gone_a, &[WaitingForDependents], false)],
                vec!["unfinalize owner foregroundDeletion"],
            ),
            (
                "foreground owner, no dependents: finalizer goes",
                Some(&fg),
                vec![],
                vec!["unfinalize owner foregroundDeletion"],
            ),
            (
                "foreground owner, dependent kept by a solid owner: unref, and the finalizer waits",
                Some(&fg),
                vec![dep(&both, &[WaitingForDependents, Solid], false), dep(&b, &[WaitingForDependents], false)],
                vec!["unref both owner verify=0", "delete b Background verify=0"],
            ),
            (
                "orphan owner: strip references, then the finalizer",
                Some(&orphan),
                vec![dep(&a, &[Solid], false), dep(&gone_a, &[Solid], false)],
                vec!["unref a owner verify=0", "unref a owner verify=0", "unfinalize owner orphan"],
            ),
            (
                "owner deleting with someone else's finalizer: dependents stay",
                Some(&other_fin),
                vec![dep(&a, &[Solid], false)],
                vec![],
            ),
            ("owner of nothing", Some(&other), vec![], vec![]),
        ];
        for (name, owner, owned, want) in cases {
            assert_eq!(kinds(&plan("owner", owner, &owned)), want, "{name}");
        }
    }

    #[test]
    fn owner_state_follows_the_foreground_finalizer() {
        assert_eq!(OwnerState::of(None), OwnerState::Absent);
        assert_eq!(OwnerState::of(Some(&obj("x"))), OwnerState::Solid);
        assert_eq!(OwnerState::of(Some(&deleting(obj("x"), &[ORPHAN]))), OwnerState::Solid);
        assert_eq!(OwnerState::of(Some(&deleting(obj("x"), &[FOREGROUND]))), OwnerState::WaitingForDependents);
    }

    #[test]
    fn verification_lists_exactly_the_dangling_references() {
        let both = owned_by(owned_by(obj("both"), "gone", false), "alive", false);
        let ops = plan("gone", None, &[dep(&both, &[OwnerState::Absent, OwnerState::Solid], false)]);
        let names: Vec<&str> = ops[0].verify_absent().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["gone"]);
        assert_eq!(ops[0].target().name, "both");
    }
}
