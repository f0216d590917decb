//! Manifests shared by the schema tests (client-side validation) and the admission tests
//! (the real API server): one valid object of each kind and a table of bad ones.

use serde::Deserialize;
use serde_json::{Value, json};

/// The AtlasOrgUser and AtlasTeamMembership documents of `examples/`, in file order.
pub fn example_objects() -> Vec<Value> {
    let mut paths: Vec<_> = std::fs::read_dir("examples").unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if v["apiVersion"] == "atlas-access.dev/v1alpha1" {
                out.push(v);
            }
        }
    }
    out
}

pub fn valid_user() -> Value {
    json!({
        "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasOrgUser",
        "metadata": {"name": "alice", "namespace": "default"},
        "spec": {"orgId": "5f1b2c3d4e5f60718293a4b5", "username": "alice@example.com", "orgRoles": ["ORG_MEMBER"]}
    })
}

pub fn valid_team() -> Value {
    json!({
        "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasTeamMembership",
        "metadata": {"name": "admins", "namespace": "default"},
        "spec": {"orgId": "5f1b2c3d4e5f60718293a4b5", "team": {"name": "admins"},
                 "members": [{"username": "alice@example.com"}, {"orgUserRef": {"name": "bob"}}]}
    })
}

pub fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = base.pointer_mut(parent).unwrap();
    if value.is_null() {
        target.as_object_mut().unwrap().remove(key);
    } else {
        target[key] = value;
    }
    base
}

/// Each bad manifest, the field the error must name, and a word the message must contain.
pub fn bad_manifests() -> Vec<(&'static str, Value, &'static str)> {
    let members = |n: usize| -> Value {
        Value::Array((0..n).map(|i| json!({"username": format!("user{i}@example.com")})).collect())
    };
    vec![
        ("orgId too short", with(valid_user(), "/spec/orgId", json!("5f1b2c")), "spec.orgId"),
        ("orgId uppercase hex", with(valid_user(), "/spec/orgId", json!("5F1B2C3D4E5F60718293A4B5")), "spec.orgId"),
        ("orgId missing", with(valid_user(), "/spec/orgId", Value::Null), "spec"),
        ("username not an email", with(valid_user(), "/spec/username", json!("alice")), "spec.username"),
        ("username with spaces", with(valid_user(), "/spec/username", json!("a b@example.com")), "spec.username"),
        ("unknown org role", with(valid_user(), "/spec/orgRoles", json!(["ORG_ADMIN"])), "spec.orgRoles[0]"),
        ("empty org roles", with(valid_user(), "/spec/orgRoles", json!([])), "spec.orgRoles"),
        (
            "duplicate org roles",
            with(valid_user(), "/spec/orgRoles", json!(["ORG_MEMBER", "ORG_MEMBER"])),
            "spec.orgRoles",
        ),
        ("unknown deletionPolicy", with(valid_user(), "/spec/deletionPolicy", json!("Keep")), "spec.deletionPolicy"),
        ("unknown reinvite", with(valid_user(), "/spec/reinvite", json!("Always")), "spec.reinvite"),
        (
            "unknown project role",
            with(
                valid_user(),
                "/spec/projectRoles",
                json!([{"projectId": "6a1b2c3d4e5f60718293a4b5", "roles": ["GROUP_ADMIN"]}]),
            ),
            "spec.projectRoles[0].roles[0]",
        ),
        (
            "bad projectId",
            with(valid_user(), "/spec/projectRoles", json!([{"projectId": "nope", "roles": ["GROUP_READ_ONLY"]}])),
            "spec.projectRoles[0].projectId",
        ),
        (
            "same project twice",
            with(
                valid_user(),
                "/spec/projectRoles",
                json!([{"projectId": "6a1b2c3d4e5f60718293a4b5", "roles": ["GROUP_READ_ONLY"]},
                       {"projectId": "6a1b2c3d4e5f60718293a4b5", "roles": ["GROUP_OWNER"]}]),
            ),
            "spec.projectRoles[1]",
        ),
        ("bad team id in teamIds", with(valid_user(), "/spec/teamIds", json!(["xyz"])), "spec.teamIds[0]"),
        ("unknown spec field", with(valid_user(), "/spec/orgRole", json!("ORG_MEMBER")), "spec"),
        ("missing name", with(valid_user(), "/metadata/name", Value::Null), "metadata.name"),
        ("251 members", with(valid_team(), "/spec/members", members(251)), "spec.members"),
        (
            "team with id and name",
            with(valid_team(), "/spec/team", json!({"id": "6b1b2c3d4e5f60718293a4b5", "name": "x"})),
            "spec.team",
        ),
        ("team with neither", with(valid_team(), "/spec/team", json!({})), "spec.team"),
        ("bad team id", with(valid_team(), "/spec/team", json!({"id": "team-1"})), "spec.team.id"),
        (
            "member with username and orgUserRef",
            with(valid_team(), "/spec/members", json!([{"username": "a@example.com", "orgUserRef": {"name": "a"}}])),
            "spec.members[0]",
        ),
        ("member with neither", with(valid_team(), "/spec/members", json!([{}])), "spec.members[0]"),
        (
            "duplicate member username",
            with(valid_team(), "/spec/members", json!([{"username": "a@example.com"}, {"username": "a@example.com"}])),
            "spec.members",
        ),
        (
            "duplicate orgUserRef",
            with(valid_team(), "/spec/members", json!([{"orgUserRef": {"name": "a"}}, {"orgUserRef": {"name": "a"}}])),
            "spec.members",
        ),
        ("unknown mode", with(valid_team(), "/spec/mode", json!("Strict")), "spec.mode"),
        (
            "member username not an email",
            with(valid_team(), "/spec/members", json!([{"username": "carol"}])),
            "spec.members[0].username",
        ),
        ("wrong kind", with(valid_user(), "/kind", json!("AtlasUser")), "kind"),
    ]
}
