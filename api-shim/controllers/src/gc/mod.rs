//! The garbage collector: deletes dependents whose owners are gone, and carries out foreground
//! and orphan deletions, from `metadata.ownerReferences` and the `foregroundDeletion` / `orphan`
//! finalizers the API server sets on delete.
//!
//! Shape: one watcher + reflector store per discovered kind (see [`crate::kinds`]); any change
//! in any store wakes one loop that indexes all objects by uid, runs the pure [`plan::plan`] for
//! every owner uid somebody references or that carries a GC finalizer, and executes the
//! operations. The loop is level-triggered: it also runs on a periodic resync, and a failed
//! operation is retried with exponential backoff until the state no longer asks for it. Nothing
//! is remembered across restarts but the objects themselves, so a cascade interrupted by a crash
//! of the server or of the controller resumes from what is stored.
//!
//! Upstream keeps an incremental dependency graph instead of re-indexing; re-indexing costs
//! O(objects) per wake-up (debounced), which is cheap at keelson's scale and impossible to get
//! out of sync.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Error;
use crate::kinds::Kinds;
use crate::object::{Obj, ObjKey, OwnerRef};
use plan::{Dependent, Op, OwnerState};

/// Tunables of the garbage collector.
#[derive(Debug, Clone)]
pub struct GcOpts {
    /// Every object is re-examined at least this often.
    pub resync: Duration,
    /// Events closer together than this are handled in one pass.
    pub debounce: Duration,
    /// An operation that succeeded is not repeated for this long (the watch should show its
    /// effect first; upstream's "expectations").
    pub expect: Duration,
}

impl Default for GcOpts {
    fn default() -> Self {
        GcOpts { resync: Duration::from_secs(30), debounce: Duration::from_millis(100), expect: Duration::from_secs(5) }
    }
}

/// All objects by uid, with the reverse owner index.
#[derive(Default)]
struct Index {
    by_uid: HashMap<String, Obj>,
    dependents: BTreeMap<String, Vec<String>>,
}

impl Index {
    fn build(stores: &[(usize, Store<DynamicObject>)]) -> Index {
        let mut ix = Index::default();
        for (kind, store) in stores {
            for o in store.state() {
                if let Some(obj) = Obj::from_meta(*kind, &o.metadata) {
                    for r in &obj.owners {
                        ix.dependents.entry(r.uid.clone()).or_default().push(obj.key.uid.clone());
                    }
                    ix.by_uid.insert(obj.key.uid.clone(), obj);
                }
            }
        }
        ix
    }

    /// Every operation the current state asks for, without duplicates.
    fn plan(&self) -> BTreeSet<Op> {
        let mut owners: BTreeSet<&str> = self.dependents.keys().map(String::as_str).collect();
        owners.extend(
            self.by_uid
                .values()
                .filter(|o| OwnerState::of(Some(o)) == OwnerState::WaitingForDependents || is_orphaning(o))
                .map(|o| o.key.uid.as_str()),
        );
        let mut ops = BTreeSet::new();
        for uid in owners {
            let owned: Vec<Dependent<'_>> = self
                .dependents
                .get(uid)
                .into_iter()
                .flatten()
                .filter_map(|d| self.by_uid.get(d))
                .map(|d| Dependent {
                    obj: d,
                    owner_states: d.owners.iter().map(|r| OwnerState::of(self.by_uid.get(&r.uid))).collect(),
                    has_dependents: self.dependents.contains_key(&d.key.uid),
                })
                .collect();
            ops.extend(plan::plan(uid, self.by_uid.get(uid), &owned));
        }
        ops
    }
}

fn is_orphaning(o: &Obj) -> bool {
    o.deleting && o.has_finalizer(crate::object::ORPHAN)
}

/// Per-operation memory of the loop: recent successes (not repeated until they expire) and
/// failures (retried with exponential backoff).
#[derive(Default)]
struct Pacing {
    done: HashMap<Op, Instant>,
    failed: HashMap<Op, (u32, Instant)>,
}

impl Pacing {
    fn ready(&self, op: &Op, now: Instant) -> bool {
        self.done.get(op).is_none_or(|t| *t <= now) && self.failed.get(op).is_none_or(|(_, t)| *t <= now)
    }

    fn next_wake(&self) -> Option<Instant> {
        self.done.values().chain(self.failed.values().map(|(_, t)| t)).min().copied()
    }

    fn forget_stale(&mut self, wanted: &BTreeSet<Op>, now: Instant) {
        self.done.retain(|op, t| *t > now && wanted.contains(op));
        self.failed.retain(|op, _| wanted.contains(op));
    }
}

/// Runs the garbage collector until the client's watches end (they retry forever).
pub async fn run(client: Client, kinds: Arc<Kinds>, opts: GcOpts) -> Result<(), Error> {
    let wake = Arc::new(Notify::new());
    let mut stores = Vec::new();
    for i in kinds.for_gc() {
        let Some(kind) = kinds.get(i) else { continue };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.ar);
        let writer = reflector::store::Writer::new(kind.ar.clone());
        stores.push((i, writer.as_reader()));
        let wake = wake.clone();
        let plural = kind.ar.plural.clone();
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    tracing::debug!(error = %e, resource = plural, "garbage collector watch");
                }
                wake.notify_one();
            }
        });
    }
    for (_, s) in &stores {
        s.wait_until_ready().await.map_err(|_| Error::StoreClosed)?;
    }
    tracing::info!(kinds = stores.len(), "garbage collector synced");
    let mut pacing = Pacing::default();
    let mut resync_at = Instant::now();
    loop {
        let now = Instant::now();
        if now >= resync_at {
            pacing.done.clear();
            resync_at = now + opts.resync;
        }
        let wanted = Index::build(&stores).plan();
        pacing.forget_stale(&wanted, now);
        let due: Vec<&Op> = wanted.iter().filter(|op| pacing.ready(op, now)).collect();
        for op in due {
            match execute(&client, &kinds, op).await {
                Ok(()) => {
                    pacing.failed.remove(op);
                    pacing.done.insert(op.clone(), Instant::now() + opts.expect);
                }
                Err(e) => {
                    let n = pacing.failed.get(op).map_or(0, |(n, _)| *n).saturating_add(1);
                    let delay = Duration::from_millis(250).saturating_mul(1 << n.min(8)).min(Duration::from_secs(60));
                    tracing::warn!(error = %e, target = op.target().name, retry_in = ?delay, "garbage collection");
                    pacing.failed.insert(op.clone(), (n, Instant::now() + delay));
                }
            }
        }
        let until = pacing.next_wake().map_or(resync_at, |t| t.min(resync_at));
        tokio::select! {
            _ = wake.notified() => tokio::time::sleep(opts.debounce).await,
            _ = tokio::time::sleep_until(until) => {}
        }
    }
}

fn api_for(client: &Client, kinds: &Kinds, key: &ObjKey) -> Result<Api<DynamicObject>, Error> {
    let kind = kinds.get(key.kind).ok_or(Error::UnknownKind(key.kind.to_string()))?;
    Ok(match (&key.namespace, kind.namespaced) {
        (Some(ns), true) => Api::namespaced_with(client.clone(), ns, &kind.ar),
        _ => Api::all_with(client.clone(), &kind.ar),
    })
}

/// Whether the owner `r` (referenced from an object in `ns`) is really absent: asks the server.
async fn absent(client: &Client, kinds: &Kinds, ns: Option<&str>, r: &OwnerRef) -> Result<bool, Error> {
    let i = kinds.resolve(&r.api_version, &r.kind).ok_or_else(|| Error::UnknownKind(r.kind.clone()))?;
    let namespaced = kinds.get(i).is_some_and(|k| k.namespaced);
    let key = ObjKey {
        kind: i,
        namespace: if namespaced { ns.map(str::to_string) } else { None },
        name: r.name.clone(),
        uid: r.uid.clone(),
    };
    if namespaced && key.namespace.is_none() {
        // A cluster-scoped dependent cannot have a namespaced owner: the reference dangles.
        return Ok(true);
    }
    match api_for(client, kinds, &key)?.get_opt(&r.name).await? {
        Some(o) => Ok(o.uid().as_deref() != Some(r.uid.as_str())),
        None => Ok(true),
    }
}

async fn execute(client: &Client, kinds: &Kinds, op: &Op) -> Result<(), Error> {
    let target = op.target();
    for r in op.verify_absent() {
        if !absent(client, kinds, target.namespace.as_deref(), r).await? {
            tracing::debug!(target = target.name, owner = r.name, "owner exists after all; the cache lags");
            return Ok(());
        }
    }
    let api = api_for(client, kinds, target)?;
    let res = match op {
        Op::Delete { propagation, .. } => {
            tracing::info!(kind = kind_name(kinds, target), ns = ?target.namespace, name = target.name, ?propagation, "garbage collector deleting");
            let dp = DeleteParams {
                propagation_policy: Some(propagation.to_kube()),
                preconditions: Some(Preconditions { uid: Some(target.uid.clone()), resource_version: None }),
                ..Default::default()
            };
            api.delete(&target.name, &dp).await.map(drop)
        }
        Op::RemoveOwnerRefs { uids, .. } => {
            // A merge patch guarded by the resourceVersion it was computed from: a concurrent
            // change makes it fail (409) and a later pass recomputes it.
            let cur = api.get(&target.name).await?;
            if cur.uid().as_deref() != Some(target.uid.as_str()) {
                return Ok(());
            }
            let refs: Vec<_> = cur.owner_references().iter().filter(|r| !uids.contains(&r.uid)).cloned().collect();
            // An empty list is removed (null in a merge patch), as upstream leaves no `[]` behind.
            let refs = if refs.is_empty() { serde_json::Value::Null } else { json!(refs) };
            let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": cur.resource_version()}});
            api.patch(&target.name, &PatchParams::default(), &Patch::Merge(patch)).await.map(drop)
        }
        Op::RemoveFinalizer { finalizer, .. } => {
            let cur = api.get(&target.name).await?;
            if cur.uid().as_deref() != Some(target.uid.as_str()) {
                return Ok(());
            }
            let keep: Vec<&String> = cur.finalizers().iter().filter(|f| f != finalizer).collect();
            let patch = json!({"metadata": {"finalizers": keep, "resourceVersion": cur.resource_version()}});
            api.patch(&target.name, &PatchParams::default(), &Patch::Merge(patch)).await.map(drop)
        }
    };
    match res {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn kind_name<'a>(kinds: &'a Kinds, key: &ObjKey) -> &'a str {
    kinds.get(key.kind).map_or("?", |k| k.ar.kind.as_str())
}
