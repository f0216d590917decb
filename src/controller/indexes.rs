//! Lookups the reconciles and the mappers need, kept up to date from the watch events
//! instead of a scan of the whole store: who else claims an (orgId, username), which teams
//! name an AtlasOrgUser, which objects belong to an organization or use a Secret, which
//! team memberships write the same team. Each index follows the reflector's semantics (a
//! relist replaces the previous state at `InitDone`), so a relist leaves no stale entry.
//!
//! An index holds keys and object references only; the objects themselves are read from the
//! kind's store.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::feed::{Observer, bare_ref};
use crate::api::{AtlasOrgUser, AtlasOrganization, AtlasTeamMembership};
use crate::reconcile::username_key;

/// What an object is found by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// Every object of an organization (orgId).
    Org(String),
    /// (orgId, lower-cased username): an AtlasOrgUser's claim, or a team member by username.
    Username(String, String),
    /// (namespace, lower-cased username): the AtlasOrgUsers of a namespace that declare it.
    NamespaceUsername(String, String),
    /// (namespace, AtlasOrgUser name): a team member by `orgUserRef`.
    OrgUserRef(String, String),
    /// (orgId, team id): a team membership's team (pinned or spec id), or an AtlasOrgUser's `teamIds`.
    TeamId(String, String),
    /// (orgId, lower-cased team name).
    TeamName(String, String),
    /// AtlasOrgUsers of an organization with `teamIds` (writers of teams).
    TeamWriters(String),
    /// (namespace, name) of the object's own `credentialsSecretRef`.
    Secret(String, String),
}

/// The keys of an AtlasOrgUser.
pub fn org_user_keys(u: &AtlasOrgUser) -> Vec<Key> {
    let org = u.spec.org_id.clone();
    let ns = u.namespace().unwrap_or_default();
    let username = username_key(&u.spec.username);
    let mut keys = vec![
        Key::Org(org.clone()),
        Key::Username(org.clone(), username.clone()),
        Key::NamespaceUsername(ns.clone(), username),
    ];
    if !u.spec.team_ids.is_empty() {
        keys.push(Key::TeamWriters(org.clone()));
    }
    if let Some(r) = &u.spec.credentials_secret_ref {
        keys.push(Key::Secret(ns, r.name.clone()));
    }
    keys
}

/// The team an AtlasTeamMembership writes: (pinned or spec id, lower-cased spec name).
pub fn team_of(t: &AtlasTeamMembership) -> (Option<String>, Option<String>) {
    let id = t.status.as_ref().and_then(|s| s.team_id.clone()).or_else(|| t.spec.team.id.clone());
    (id, t.spec.team.name.as_deref().map(str::to_lowercase))
}

/// The keys of an AtlasTeamMembership.
pub fn team_keys(t: &AtlasTeamMembership) -> Vec<Key> {
    let org = t.spec.org_id.clone();
    let ns = t.namespace().unwrap_or_default();
    let mut keys = vec![Key::Org(org.clone())];
    let (id, name) = team_of(t);
    keys.extend(id.map(|id| Key::TeamId(org.clone(), id)));
    keys.extend(name.map(|name| Key::TeamName(org.clone(), name)));
    for m in &t.spec.members {
        if let Some(r) = &m.org_user_ref {
            keys.push(Key::OrgUserRef(ns.clone(), r.name.clone()));
        }
        if let Some(u) = &m.username {
            keys.push(Key::Username(org.clone(), username_key(u)));
        }
    }
    if let Some(r) = &t.spec.credentials_secret_ref {
        keys.push(Key::Secret(ns, r.name.clone()));
    }
    keys.sort_by_key(|k| format!("{k:?}"));
    keys.dedup();
    keys
}

/// The keys of an AtlasOrganization.
pub fn organization_keys(o: &AtlasOrganization) -> Vec<Key> {
    vec![Key::Org(o.spec.org_id.clone())]
}

/// One reference and one copy of each key per object, shared (`Arc`) between the two maps:
/// an object's reference used to be copied once per key, and its keys twice.
#[derive(Default)]
struct Inner<K: Resource<DynamicType = ()>> {
    by_key: HashMap<Arc<Key>, HashSet<Arc<ObjectRef<K>>>>,
    keys: HashMap<Arc<ObjectRef<K>>, Vec<Arc<Key>>>,
    /// A relist under way: the keys of what it listed so far.
    relist: Option<HashMap<ObjectRef<K>, Vec<Key>>>,
}

impl<K: Resource<DynamicType = ()>> Inner<K> {
    fn remove(&mut self, obj: &ObjectRef<K>) {
        for key in self.keys.remove(obj).unwrap_or_default() {
            if let Some(set) = self.by_key.get_mut(key.as_ref()) {
                set.remove(obj);
                if set.is_empty() {
                    self.by_key.remove(key.as_ref());
                }
            }
        }
    }

    fn insert(&mut self, obj: ObjectRef<K>, keys: Vec<Key>) {
        self.remove(&obj);
        let obj = Arc::new(obj);
        let mut shared = Vec::with_capacity(keys.len());
        for key in keys {
            let key = match self.by_key.get_key_value(&key) {
                Some((existing, _)) => existing.clone(),
                None => Arc::new(key),
            };
            self.by_key.entry(key.clone()).or_default().insert(obj.clone());
            shared.push(key);
        }
        self.keys.insert(obj, shared);
    }
}

/// Object references by [`Key`], for one kind.
pub struct Index<K: Resource<DynamicType = ()>> {
    keys_of: fn(&K) -> Vec<Key>,
    inner: RwLock<Inner<K>>,
}

impl<K> Index<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    pub fn new(keys_of: fn(&K) -> Vec<Key>) -> Self {
        Self { keys_of, inner: RwLock::new(Inner { by_key: HashMap::new(), keys: HashMap::new(), relist: None }) }
    }

    /// An index of what `store` holds now (for embedding the reconcilers with a store filled
    /// by hand, as the request-level tests do; `run` keeps its indexes up to date from the
    /// watch instead).
    pub fn of_store(keys_of: fn(&K) -> Vec<Key>, store: &Store<K>) -> Self {
        let index = Self::new(keys_of);
        index.apply(&watcher::Event::Init);
        for obj in store.state() {
            index.apply(&watcher::Event::InitApply(obj.as_ref().clone()));
        }
        index.apply(&watcher::Event::InitDone);
        index
    }

    /// The references found by `key`, sorted by namespace and name.
    pub fn refs(&self, key: &Key) -> Vec<ObjectRef<K>> {
        let inner = self.inner.read().expect("index lock");
        let mut refs: Vec<ObjectRef<K>> =
            inner.by_key.get(key).map(|s| s.iter().map(|r| r.as_ref().clone()).collect()).unwrap_or_default();
        refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        refs
    }

    /// The objects found by `key` that `store` holds, sorted by namespace and name.
    pub fn objects(&self, key: &Key, store: &Store<K>) -> Vec<Arc<K>> {
        self.refs(key).iter().filter_map(|r| store.get(r)).collect()
    }

    /// The objects found by any of `keys`, each once.
    pub fn objects_any(&self, keys: &[Key], store: &Store<K>) -> Vec<Arc<K>> {
        let mut refs: Vec<ObjectRef<K>> = keys.iter().flat_map(|k| self.refs(k)).collect();
        refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        refs.dedup();
        refs.iter().filter_map(|r| store.get(r)).collect()
    }

    /// How many objects the index knows.
    pub fn len(&self) -> usize {
        self.inner.read().expect("index lock").keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K> Observer<K> for Index<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    fn apply(&self, event: &watcher::Event<K>) {
        let mut inner = self.inner.write().expect("index lock");
        match event {
            watcher::Event::Apply(obj) => inner.insert(bare_ref(obj), (self.keys_of)(obj)),
            watcher::Event::Delete(obj) => inner.remove(&bare_ref(obj)),
            watcher::Event::Init => inner.relist = Some(HashMap::new()),
            watcher::Event::InitApply(obj) => {
                let keys = (self.keys_of)(obj);
                inner.relist.get_or_insert_with(HashMap::new).insert(bare_ref(obj), keys);
            }
            watcher::Event::InitDone => {
                let listed = inner.relist.take().unwrap_or_default();
                let mut fresh = Inner { by_key: HashMap::new(), keys: HashMap::new(), relist: None };
                for (obj, keys) in listed {
                    fresh.insert(obj, keys);
                }
                *inner = fresh;
            }
        }
    }
}

/// Every index of the controller, one per kind.
pub struct Indexes {
    pub org_users: Arc<Index<AtlasOrgUser>>,
    pub teams: Arc<Index<AtlasTeamMembership>>,
    pub organizations: Arc<Index<AtlasOrganization>>,
}

impl Default for Indexes {
    fn default() -> Self {
        Self {
            org_users: Arc::new(Index::new(org_user_keys)),
            teams: Arc::new(Index::new(team_keys)),
            organizations: Arc::new(Index::new(organization_keys)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use serde_json::json;

    fn user(name: &str, org: &str, username: &str, team_ids: &[&str]) -> AtlasOrgUser {
        serde_json::from_value(json!({
            "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasOrgUser",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"orgId": org, "username": username, "orgRoles": ["ORG_MEMBER"], "teamIds": team_ids},
        }))
        .unwrap()
    }

    fn team(name: &str, team: serde_json::Value, members: serde_json::Value) -> AtlasTeamMembership {
        serde_json::from_value(json!({
            "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasTeamMembership",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"orgId": "o1", "team": team, "members": members},
        }))
        .unwrap()
    }

    fn names<K: Resource<DynamicType = ()>>(refs: Vec<ObjectRef<K>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};

    #[test]
    fn org_user_index_follows_the_events_like_the_store() {
        let alice = user("alice", "o1", "Alice@Example.com", &[]);
        let alice_moved = user("alice", "o2", "alice@example.com", &["t1"]);
        let bob = user("bob", "o1", "bob@example.com", &[]);
        let claim = |org: &str, u: &str| Key::Username(org.into(), u.into());
        // (events, key, expected names)
        type Case = (Vec<watcher::Event<AtlasOrgUser>>, Key, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (vec![Apply(alice.clone())], claim("o1", "alice@example.com"), vec!["alice"]),
            (vec![Apply(alice.clone()), Apply(alice_moved.clone())], claim("o1", "alice@example.com"), vec![]),
            (vec![Apply(alice.clone()), Apply(alice_moved.clone())], claim("o2", "alice@example.com"), vec!["alice"]),
            (vec![Apply(alice_moved.clone())], Key::TeamWriters("o2".into()), vec!["alice"]),
            (vec![Apply(alice.clone()), Apply(bob.clone())], Key::Org("o1".into()), vec!["alice", "bob"]),
            (vec![Apply(alice.clone()), Delete(alice.clone())], Key::Org("o1".into()), vec![]),
            // A relist replaces everything at InitDone; until then the old state answers.
            (vec![Apply(alice.clone()), Init, InitApply(bob.clone())], Key::Org("o1".into()), vec!["alice"]),
            (vec![Apply(alice.clone()), Init, InitApply(bob.clone()), InitDone], Key::Org("o1".into()), vec!["bob"]),
            (
                vec![Apply(alice.clone()), Init, InitApply(alice_moved.clone()), InitDone],
                claim("o1", "alice@example.com"),
                vec![],
            ),
            (
                vec![Init, InitApply(alice.clone()), InitApply(bob.clone()), InitDone],
                Key::NamespaceUsername("team-a".into(), "bob@example.com".into()),
                vec!["bob"],
            ),
        ];
        for (i, (events, key, expected)) in cases.into_iter().enumerate() {
            let index = Index::new(org_user_keys);
            for e in &events {
                index.apply(e);
            }
            assert_eq!(names(index.refs(&key)), expected, "case {i}: {key:?}");
        }
    }

    #[test]
    fn team_index_finds_members_teams_and_co_writers() {
        let by_ref = team("by-ref", json!({"id": "t1"}), json!([{"orgUserRef": {"name": "alice"}}]));
        let by_name = team("by-name", json!({"name": "Platform"}), json!([{"username": "Bob@Example.com"}]));
        let index = Index::new(team_keys);
        for e in [Init, InitApply(by_ref.clone()), InitApply(by_name.clone()), InitDone] {
            index.apply(&e);
        }
        let cases: Vec<(Key, Vec<&str>)> = vec![
            (Key::OrgUserRef("team-a".into(), "alice".into()), vec!["by-ref"]),
            (Key::OrgUserRef("team-b".into(), "alice".into()), vec![]),
            (Key::Username("o1".into(), "bob@example.com".into()), vec!["by-name"]),
            (Key::TeamId("o1".into(), "t1".into()), vec!["by-ref"]),
            (Key::TeamName("o1".into(), "platform".into()), vec!["by-name"]),
            (Key::Org("o1".into()), vec!["by-name", "by-ref"]),
        ];
        for (key, expected) in cases {
            assert_eq!(names(index.refs(&key)), expected, "{key:?}");
        }
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn an_index_of_a_store_answers_with_its_objects() {
        let mut writer: Writer<AtlasOrgUser> = Writer::default();
        writer.apply_watcher_event(&Apply(user("alice", "o1", "alice@example.com", &[])));
        let store = writer.as_reader();
        let index = Index::of_store(org_user_keys, &store);
        let found = index.objects(&Key::Username("o1".into(), "alice@example.com".into()), &store);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].spec.username, "alice@example.com");
    }
}
