//! Plain views of the object metadata the controllers reason about.
//!
//! The `plan` functions take these instead of `DynamicObject` so that they stay pure and their
//! tests build inputs in one line; the reconcilers convert at the edge ([`Obj::from_meta`]).

use kube::api::ObjectMeta;

/// The `foregroundDeletion` finalizer: the owner waits for its blocking dependents.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The `orphan` finalizer: the owner's dependents lose their reference to it before it goes.
pub const ORPHAN: &str = "orphan";

/// Identifies one stored object: its kind (an index into [`crate::kinds::Kinds`]), place and uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjKey {
    pub kind: usize,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

/// One `metadata.ownerReferences` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    /// `blockOwnerDeletion`: a foreground deletion of the owner waits for this dependent.
    pub block: bool,
}

/// The metadata of one object, as the planners see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obj {
    pub key: ObjKey,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    pub finalizers: Vec<String>,
    pub owners: Vec<OwnerRef>,
}

impl Obj {
    /// The view of `meta` for an object of kind index `kind`; `None` without a name or uid.
    pub fn from_meta(kind: usize, meta: &ObjectMeta) -> Option<Obj> {
        let owners = meta
            .owner_references
            .iter()
            .flatten()
            .map(|r| OwnerRef {
                api_version: r.api_version.clone(),
                kind: r.kind.clone(),
                name: r.name.clone(),
                uid: r.uid.clone(),
                block: r.block_owner_deletion == Some(true),
            })
            .collect();
        Some(Obj {
            key: ObjKey { kind, namespace: meta.namespace.clone(), name: meta.name.clone()?, uid: meta.uid.clone()? },
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
            owners,
        })
    }

    pub fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }

    /// The reference to owner `uid`, if this object has one.
    pub fn owner(&self, uid: &str) -> Option<&OwnerRef> {
        self.owners.iter().find(|r| r.uid == uid)
    }
}

/// A deletion propagation policy, as sent in `DeleteOptions.propagationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    /// The policy an object asks for through its own finalizers (upstream's GC does the same
    /// when it deletes a dependent): `orphan` → Orphan, `foregroundDeletion` → Foreground.
    pub fn for_object(obj: &Obj) -> Propagation {
        if obj.has_finalizer(ORPHAN) {
            Propagation::Orphan
        } else if obj.has_finalizer(FOREGROUND) {
            Propagation::Foreground
        } else {
            Propagation::Background
        }
    }

    pub fn to_kube(self) -> kube::api::PropagationPolicy {
        match self {
            Propagation::Background => kube::api::PropagationPolicy::Background,
            Propagation::Foreground => kube::api::PropagationPolicy::Foreground,
            Propagation::Orphan => kube::api::PropagationPolicy::Orphan,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_helpers {
    use super::*;

    /// An object of kind 0 in namespace `ns` named and uid'd `name`.
    pub fn obj(name: &str) -> Obj {
        Obj {
            key: ObjKey { kind: 0, namespace: Some("ns".into()), name: name.into(), uid: name.into() },
            deleting: false,
            finalizers: Vec::new(),
            owners: Vec::new(),
        }
    }

    pub fn owned_by(mut o: Obj, owner: &str, block: bool) -> Obj {
        o.owners.push(OwnerRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: owner.into(),
            uid: owner.into(),
            block,
        });
        o
    }

    pub fn deleting(mut o: Obj, finalizers: &[&str]) -> Obj {
        o.deleting = true;
        o.finalizers = finalizers.iter().map(|f| f.to_string()).collect();
        o
    }
}
