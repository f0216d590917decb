//! One watch per kind, shared by every controller that reads the kind.
//!
//! A [`Feed`] drives one `watcher` stream, strips what no reconcile reads (`managedFields`,
//! the kubectl `last-applied-configuration` annotation) before an object is stored, applies
//! each event to the kind's reflector store and to its [`Observer`]s (the indexes), and only
//! then hands the object to its subscribers: the controller of the kind (its own trigger) and
//! the controllers that map it onto their objects. Each subscriber may filter on a
//! [`Fingerprint`] of the fields it cares about, so a status write does not trigger its own
//! object again, and a team hears of a member's change only when a field team planning reads
//! changed.
//!
//! Unlike kube's shared streams, deletions reach the subscribers (a mapper needs the deleted
//! object to know whom it concerned), and a relist reports the objects that vanished while
//! the watch was down as deleted. During a relist nothing is dispatched until the listing is
//! complete (`InitDone`): then every object whose fingerprint changed is, so a subscriber
//! never sees a half-listed store.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

/// The kubectl annotation holding a copy of the whole applied object.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drop what no reconcile reads before the object is cached: `managedFields` (about half of a
/// converged object) and kubectl's copy of the applied object. Finalizer handling patches by
/// name and index, status is server-side applied under its own field manager: neither reads
/// these fields from the cached object.
pub fn strip<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// A reference by namespace and name only: `ObjectRef::from_obj` also carries the object's
/// uid and resourceVersion, which equality ignores but memory does not (indexes and
/// fingerprints keep one or more per object).
pub fn bare_ref<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectRef<K> {
    let mut r = ObjectRef::new(obj.meta().name.as_deref().unwrap_or_default());
    r.namespace = obj.meta().namespace.clone();
    r
}

/// What a subscriber cares about in an object, as a hash: an update whose fingerprint equals
/// the last one dispatched to that subscriber is not dispatched. `None`: always dispatched.
pub type Fingerprint<K> = fn(&K) -> Option<u64>;

/// Hash any value (for fingerprints).
pub fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The fingerprint of a primary object: what its own controller must react to. Generation
/// (spec and deletion marking), labels, annotations, finalizers and the deletion timestamp;
/// not the status, which the controller writes itself, nor `resourceVersion`.
pub fn own_changes<K: Resource>(obj: &K) -> Option<u64> {
    let meta = obj.meta();
    Some(hash_of(&(
        meta.generation,
        &meta.labels,
        &meta.annotations,
        &meta.finalizers,
        meta.deletion_timestamp.as_ref().map(|t| t.0.as_second()),
    )))
}

/// Something kept up to date from the watch events, with the reflector's semantics: a relist
/// (`Init`, `InitApply`…, `InitDone`) replaces the previous state as a whole.
pub trait Observer<K>: Send + Sync {
    fn apply(&self, event: &watcher::Event<K>);
}

struct Subscriber<K: Resource> {
    fingerprint: Option<Fingerprint<K>>,
    /// Whether deleted objects are dispatched (mappers want them; a controller's own trigger
    /// does not: the object is gone from the store).
    deletions: bool,
    /// The fingerprint last dispatched, by [`ref_hash`] of the object: 16 bytes an object
    /// instead of a copy of its reference. Two objects' hashes colliding and their
    /// fingerprints matching too (about 2^-64 x n^2 / 2^65 for n objects) would skip one
    /// trigger, which the next resync makes good.
    last: HashMap<u64, u64>,
    tx: mpsc::UnboundedSender<Arc<K>>,
}

/// An object's namespace and name as a hash (the key of the fingerprint maps).
fn ref_hash<K: Resource>(obj: &K) -> u64 {
    hash_of(&(obj.meta().namespace.as_deref(), obj.meta().name.as_deref()))
}

impl<K> Subscriber<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    fn applied(&mut self, obj: &Arc<K>) {
        if let Some(fingerprint) = self.fingerprint {
            let key = ref_hash(obj.as_ref());
            match fingerprint(obj) {
                Some(value) => {
                    if self.last.insert(key, value) == Some(value) {
                        return;
                    }
                }
                None => {
                    self.last.remove(&key);
                }
            }
        }
        let _ = self.tx.send(obj.clone());
    }

    fn deleted(&mut self, obj: &Arc<K>) {
        self.last.remove(&ref_hash(obj.as_ref()));
        if self.deletions {
            let _ = self.tx.send(obj.clone());
        }
    }
}

/// One watch of a kind, its store, its observers and its subscribers. Build it, subscribe,
/// then drive [`Feed::run`].
pub struct Feed<K: Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    store: Store<K>,
    observers: Vec<Arc<dyn Observer<K>>>,
    subscribers: Vec<Subscriber<K>>,
    ready: watch::Sender<bool>,
}

impl<K> Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub fn new() -> Self {
        let writer = Writer::default();
        let store = writer.as_reader();
        Self { writer, store, observers: Vec::new(), subscribers: Vec::new(), ready: watch::channel(false).0 }
    }

    /// The kind's store (every controller reads this one).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Becomes true after the first complete listing (store and observers filled).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Keep `observer` up to date from the events, before any subscriber hears of them.
    pub fn observe(&mut self, observer: Arc<dyn Observer<K>>) {
        self.observers.push(observer);
    }

    /// A stream of the objects that changed, as far as `fingerprint` can tell (every update
    /// without one); with `deletions`, deleted objects too.
    pub fn subscribe(
        &mut self,
        fingerprint: Option<Fingerprint<K>>,
        deletions: bool,
    ) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.push(Subscriber { fingerprint, deletions, last: HashMap::new(), tx });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|o| (o, rx)) })
    }

    /// Apply one watch event: store, observers, then subscribers.
    pub fn handle(&mut self, event: watcher::Event<K>, relisting: &mut Option<Vec<Arc<K>>>) {
        if matches!(event, watcher::Event::Init) {
            // What the store held before: what vanished meanwhile is reported as deleted.
            *relisting = Some(self.store.state());
        }
        self.writer.apply_watcher_event(&event);
        for observer in &self.observers {
            observer.apply(&event);
        }
        match &event {
            watcher::Event::Apply(obj) => {
                let stored = self.store.get(&ObjectRef::from_obj(obj)).unwrap_or_else(|| Arc::new(obj.clone()));
                for s in &mut self.subscribers {
                    s.applied(&stored);
                }
            }
            watcher::Event::Delete(obj) => {
                let gone = Arc::new(obj.clone());
                for s in &mut self.subscribers {
                    s.deleted(&gone);
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
            watcher::Event::InitDone => {
                let before = relisting.take().unwrap_or_default();
                for obj in before {
                    if self.store.get(&ObjectRef::from_obj(obj.as_ref())).is_none() {
                        for s in &mut self.subscribers {
                            s.deleted(&obj);
                        }
                    }
                }
                for obj in self.store.state() {
                    for s in &mut self.subscribers {
                        s.applied(&obj);
                    }
                }
                self.ready.send_replace(true);
            }
        }
    }

    /// Watch `api` until the process ends (errors are retried with kube's default backoff).
    pub async fn run(mut self, api: Api<K>, config: watcher::Config) {
        let stream = watcher(api, config).default_backoff().modify(strip::<K>);
        let mut stream = std::pin::pin!(stream);
        let mut relisting = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => self.handle(event, &mut relisting),
                Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying"),
            }
        }
    }
}

impl<K> Default for Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

/// Wait until every receiver says ready (a closed channel counts as never).
pub async fn all_ready(mut receivers: Vec<watch::Receiver<bool>>) {
    for rx in &mut receivers {
        let _ = rx.wait_for(|ready| *ready).await;
    }
}

/// `stream`, held back until `gate` completes (what arrives meanwhile is buffered).
pub fn gated<S>(
    gate: impl std::future::Future<Output = ()> + Send + 'static,
    stream: S,
) -> impl Stream<Item = S::Item> + Send + 'static
where
    S: Stream + Send + 'static,
{
    let mut held = Some(stream);
    futures::stream::once(gate).flat_map(move |()| held.take().expect("the gate opens once"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AtlasOrgUser;
    use serde_json::json;

    fn user(name: &str, generation: i64, rv: &str, user_id: Option<&str>) -> AtlasOrgUser {
        serde_json::from_value(json!({
            "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasOrgUser",
            "metadata": {
                "name": name, "namespace": "team-a", "generation": generation, "resourceVersion": rv,
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1"}],
                "annotations": {LAST_APPLIED: "{\"big\": true}", "keep": "me"},
            },
            "spec": {"orgId": "o1", "username": format!("{name}@example.com"), "orgRoles": ["ORG_MEMBER"]},
            "status": user_id.map(|id| json!({"userId": id})),
        }))
        .unwrap()
    }

    #[test]
    fn stripping_keeps_everything_a_reconcile_reads() {
        let mut u = user("alice", 1, "1", Some("u1"));
        strip(&mut u);
        assert!(u.metadata.managed_fields.is_none());
        assert_eq!(u.metadata.annotations.as_ref().unwrap().len(), 1);
        assert_eq!(u.metadata.annotations.as_ref().unwrap()["keep"], "me");
        assert_eq!(u.status.as_ref().unwrap().user_id.as_deref(), Some("u1"));
        assert_eq!(u.metadata.generation, Some(1));
    }

    fn drain<T>(rx: &mut (impl Stream<Item = T> + Unpin)) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(Some(item)) = futures::FutureExt::now_or_never(rx.next()) {
            out.push(item);
        }
        out
    }

    #[test]
    fn a_status_write_does_not_trigger_its_own_object_but_a_spec_change_does() {
        let mut feed = Feed::<AtlasOrgUser>::new();
        let mut own = Box::pin(feed.subscribe(Some(own_changes::<AtlasOrgUser>), false));
        let mut everything = Box::pin(feed.subscribe(None, true));
        let mut relisting = None;
        feed.handle(watcher::Event::Init, &mut relisting);
        feed.handle(watcher::Event::InitApply(user("alice", 1, "1", None)), &mut relisting);
        assert!(drain(&mut own).is_empty(), "nothing before the listing is complete");
        feed.handle(watcher::Event::InitDone, &mut relisting);
        assert_eq!(drain(&mut own).len(), 1);
        assert_eq!(drain(&mut everything).len(), 1);
        // The controller's own status write: new resourceVersion, same generation.
        feed.handle(watcher::Event::Apply(user("alice", 1, "2", Some("u1"))), &mut relisting);
        assert!(drain(&mut own).is_empty(), "a status write must not re-trigger its object");
        assert_eq!(drain(&mut everything).len(), 1);
        // A spec change bumps the generation.
        feed.handle(watcher::Event::Apply(user("alice", 2, "3", Some("u1"))), &mut relisting);
        assert_eq!(drain(&mut own).len(), 1);
        assert_eq!(drain(&mut everything).len(), 1);
        assert_eq!(feed.store().state().len(), 1);
        // A deletion reaches the mapper, not the object's own controller.
        feed.handle(watcher::Event::Delete(user("alice", 2, "4", Some("u1"))), &mut relisting);
        assert!(drain(&mut own).is_empty());
        assert_eq!(drain(&mut everything).len(), 1);
    }

    #[test]
    fn a_relist_dispatches_only_changes_and_reports_what_vanished() {
        let mut feed = Feed::<AtlasOrgUser>::new();
        let mut own = Box::pin(feed.subscribe(Some(own_changes::<AtlasOrgUser>), false));
        let mut mapper = Box::pin(feed.subscribe(Some(own_changes::<AtlasOrgUser>), true));
        let mut relisting = None;
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(user("alice", 1, "1", None)),
            watcher::Event::InitApply(user("bob", 1, "2", None)),
            watcher::Event::InitDone,
        ] {
            feed.handle(event, &mut relisting);
        }
        assert_eq!(drain(&mut own).len(), 2);
        assert_eq!(drain(&mut mapper).len(), 2);
        assert!(*feed.ready().borrow());
        // The watch broke; bob was deleted meanwhile, alice's spec changed.
        for event in
            [watcher::Event::Init, watcher::Event::InitApply(user("alice", 2, "5", None)), watcher::Event::InitDone]
        {
            feed.handle(event, &mut relisting);
        }
        let own_seen: Vec<String> = drain(&mut own).iter().map(|u| u.metadata.name.clone().unwrap()).collect();
        assert_eq!(own_seen, ["alice"]);
        let mut mapped: Vec<String> = drain(&mut mapper).iter().map(|u| u.metadata.name.clone().unwrap()).collect();
        mapped.sort();
        assert_eq!(mapped, ["alice", "bob"]);
        assert_eq!(feed.store().state().len(), 1);
    }
}
