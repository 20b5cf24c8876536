//! The resource kinds the controllers act on, found through the API server's discovery.
//!
//! Discovery (rather than a fixed list) keeps the controllers independent of what one server
//! happens to serve: every resource that can be listed, watched and deleted takes part in
//! garbage collection and namespace cleanup, as upstream's controllers do. The set is read once
//! when the controllers start (keelson serves no CustomResourceDefinitions yet, so it cannot change
//! while a server runs).

use kube::Client;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};

/// One served kind.
#[derive(Debug, Clone)]
pub struct Kind {
    pub ar: ApiResource,
    pub namespaced: bool,
}

/// The served kinds; an object's [`crate::object::ObjKey::kind`] indexes [`Kinds::list`].
#[derive(Debug, Clone, Default)]
pub struct Kinds {
    pub list: Vec<Kind>,
}

/// Resources the garbage collector leaves alone: events are never owners and are many
/// (upstream's GC ignores them too).
fn gc_ignored(ar: &ApiResource) -> bool {
    ar.plural == "events" && (ar.group.is_empty() || ar.group == "events.k8s.io")
}

impl Kinds {
    /// Discovers every resource (preferred version of each group) that supports list, watch and
    /// delete.
    pub async fn discover(client: &Client) -> Result<Kinds, kube::Error> {
        let discovery = Discovery::new(client.clone()).run().await?;
        let mut list = Vec::new();
        for group in discovery.groups() {
            for (ar, caps) in group.recommended_resources() {
                if usable(&caps) {
                    list.push(Kind { ar, namespaced: caps.scope == Scope::Namespaced });
                }
            }
        }
        list.sort_by(|a, b| (&a.ar.group, &a.ar.plural).cmp(&(&b.ar.group, &b.ar.plural)));
        Ok(Kinds { list })
    }

    pub fn get(&self, i: usize) -> Option<&Kind> {
        self.list.get(i)
    }

    /// The kind an ownerReference names (`apiVersion` + `kind`), matched on group and kind so a
    /// reference written with another version of the group still resolves.
    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<usize> {
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        self.list.iter().position(|k| k.ar.group == group && k.ar.kind == kind)
    }

    /// Indices of the kinds the garbage collector watches.
    pub fn for_gc(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.list.len()).filter(|i| !gc_ignored(&self.list[*i].ar))
    }

    /// Indices of the namespaced kinds (namespace cleanup deletes all of them).
    pub fn namespaced(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.list.len()).filter(|i| self.list[*i].namespaced)
    }
}

fn usable(caps: &ApiCapabilities) -> bool {
    [verbs::LIST, verbs::WATCH, verbs::DELETE].iter().all(|v| caps.supports_operation(v))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kind(group: &str, version: &str, kind: &str, plural: &str) -> Kind {
        let api_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        Kind {
            ar: ApiResource {
                group: group.into(),
                version: version.into(),
                api_version,
                kind: kind.into(),
                plural: plural.into(),
            },
            namespaced: true,
        }
    }

    #[test]
    fn owner_references_resolve_by_group_and_kind() {
        let k = Kinds {
            list: vec![
                kind("", "v1", "ConfigMap", "configmaps"),
                kind("apps", "v1", "Deployment", "deployments"),
                kind("", "v1", "Event", "events"),
            ],
        };
        assert_eq!(k.resolve("v1", "ConfigMap"), Some(0));
        assert_eq!(k.resolve("apps/v1beta2", "Deployment"), Some(1));
        assert_eq!(k.resolve("extensions/v1beta1", "Deployment"), None);
        assert_eq!(k.resolve("v1", "Secret"), None);
        assert_eq!(k.for_gc().collect::<Vec<_>>(), vec![0, 1]);
    }
}
