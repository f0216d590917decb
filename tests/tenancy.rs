//! Tenancy without a cluster: the AtlasOrganization rules the controller enforces (table-driven;
//! the same cases run against the real admission policy in `tests/envtest_tenancy.rs`), and the
//! per-(organization, credential) index: no Atlas data across credentials.

use std::collections::BTreeMap;
use std::time::Duration;

use atlas_access_operator::api::{AtlasOrgUserSpec, AtlasOrganizationSpec, AtlasTeamMembershipSpec, DeletionPolicy};
use atlas_access_operator::atlas::models::MembershipStatus;
use atlas_access_operator::atlas::{AtlasClient, ClientConfig, Credentials, OrgRateLimiter};
use atlas_access_operator::engine::OrgUserIndex;
use atlas_access_operator::reconcile::tenancy::{Request, effective_deletion_policy, namespace_allowed, refusals};
use atlas_access_operator::sim::{SimConfig, Simulator};
use secrecy::SecretString;
use serde_json::json;

const ORG: &str = "5f1b2c3d4e5f60718293a4b5";
const PROJECT: &str = "6a1b2c3d4e5f60718293a4b5";
const OTHER_PROJECT: &str = "6a1b2c3d4e5f60718293a4b6";
const TEAM: &str = "6b1b2c3d4e5f60718293a4b5";

fn org(extra: serde_json::Value) -> AtlasOrganizationSpec {
    let mut spec = json!({"orgId": ORG, "credentialsSecretRef": {"name": "acme"}});
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(spec).unwrap()
}

fn user(extra: serde_json::Value) -> AtlasOrgUserSpec {
    let mut spec = json!({"orgId": ORG, "username": "a@example.com", "orgRoles": ["ORG_MEMBER"]});
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(spec).unwrap()
}

fn team(team: serde_json::Value) -> AtlasTeamMembershipSpec {
    serde_json::from_value(json!({"orgId": ORG, "team": team, "members": []})).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// (AtlasOrganization fields, namespace, its labels, allowed).
type NamespaceCase<'a> = (serde_json::Value, &'a str, &'a [(&'a str, &'a str)], bool);

#[test]
fn namespaces_are_allowed_by_name_or_by_selector() {
    let cases: &[NamespaceCase<'_>] = &[
        (json!({}), "team-a", &[], false),
        (json!({"namespaces": ["team-a"]}), "team-a", &[], true),
        (json!({"namespaces": ["team-a"]}), "team-b", &[], false),
        (json!({"namespaceSelector": {"matchLabels": {"atlas": "acme"}}}), "x", &[("atlas", "acme")], true),
        (json!({"namespaceSelector": {"matchLabels": {"atlas": "acme"}}}), "x", &[("atlas", "other")], false),
        (json!({"namespaceSelector": {"matchLabels": {"atlas": "acme"}}}), "x", &[], false),
        (
            json!({"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}}),
            "x",
            &[("tier", "b")],
            true,
        ),
        (
            json!({"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}}),
            "x",
            &[("tier", "a")],
            false,
        ),
        (
            json!({"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}}),
            "x",
            &[],
            true,
        ),
        (json!({"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}), "x", &[], false),
        (
            json!({"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}}),
            "x",
            &[],
            true,
        ),
        // An empty selector matches every namespace, as in Kubernetes.
        (json!({"namespaceSelector": {}}), "anything", &[], true),
        // Name or selector: either suffices.
        (json!({"namespaces": ["team-a"], "namespaceSelector": {"matchLabels": {"a": "b"}}}), "team-a", &[], true),
    ];
    for (extra, namespace, pairs, expected) in cases {
        assert_eq!(namespace_allowed(&org(extra.clone()), namespace, &labels(pairs)), *expected, "{extra} {namespace}");
    }
}

#[test]
fn requests_above_the_ceiling_are_refused_naming_field_and_organization() {
    let ceiling = org(json!({
        "namespaces": ["team-a"],
        "allowedOrgRoles": ["ORG_MEMBER", "ORG_READ_ONLY"],
        "allowedProjects": [{"projectId": PROJECT, "roles": ["GROUP_READ_ONLY"]}],
        "allowedTeams": [{"id": TEAM}, {"name": "Platform"}],
    }));
    let cases: &[(Request<'_>, &[&str])] = &[
        (Request::OrgUser(&user(json!({}))), &[]),
        (
            Request::OrgUser(&user(json!({"orgRoles": ["ORG_OWNER", "ORG_MEMBER"]}))),
            &["spec.orgRoles: ORG_OWNER above"],
        ),
        (
            Request::OrgUser(&user(json!({"projectRoles": [{"projectId": PROJECT, "roles": ["GROUP_OWNER"]}]}))),
            &["spec.projectRoles: GROUP_OWNER in project"],
        ),
        (
            Request::OrgUser(&user(
                json!({"projectRoles": [{"projectId": OTHER_PROJECT, "roles": ["GROUP_READ_ONLY"]}]}),
            )),
            &["spec.projectRoles: project 6a1b2c3d4e5f60718293a4b6 is not allowed"],
        ),
        (Request::OrgUser(&user(json!({"projectRoles": [{"projectId": PROJECT, "roles": ["GROUP_READ_ONLY"]}]}))), &[]),
        (Request::OrgUser(&user(json!({"teamIds": [TEAM]}))), &[]),
        (
            Request::OrgUser(&user(json!({"teamIds": ["6b1b2c3d4e5f60718293a4b9"]}))),
            &["spec.teamIds: team(s) 6b1b2c3d4e5f60718293a4b9 not allowed"],
        ),
        (Request::TeamMembership(&team(json!({"id": TEAM}))), &[]),
        (Request::TeamMembership(&team(json!({"name": "platform"}))), &[]),
        (Request::TeamMembership(&team(json!({"name": "billing"}))), &["spec.team: team billing is not allowed"]),
    ];
    for (request, expected) in cases {
        let got = refusals("acme", &ceiling, "team-a", &BTreeMap::new(), *request);
        assert_eq!(got.len(), expected.len(), "{request:?}: {got:?}");
        for (message, want) in got.iter().zip(expected.iter()) {
            assert!(message.contains(want), "{message} should contain {want}");
            assert!(message.contains("AtlasOrganization acme"), "{message} names the organization");
        }
    }
    // A namespace the organization does not allow: one refusal, whatever else is asked.
    let got = refusals("acme", &ceiling, "team-b", &BTreeMap::new(), Request::OrgUser(&user(json!({}))));
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("namespace team-b may not manage Atlas organization 5f1b2c3d4e5f60718293a4b5"),
        "{got:?}"
    );
    // No ceilings: anything, in an allowed namespace.
    let open = org(json!({"namespaces": ["team-a"]}));
    let owner = user(json!({"orgRoles": ["ORG_OWNER"], "teamIds": [TEAM],
        "projectRoles": [{"projectId": PROJECT, "roles": ["GROUP_OWNER"]}]}));
    assert!(refusals("acme", &open, "team-a", &BTreeMap::new(), Request::OrgUser(&owner)).is_empty());
    // Empty lists allow nothing of their kind.
    let none = org(json!({"namespaces": ["team-a"], "allowedProjects": [], "allowedTeams": []}));
    let with_project = user(json!({"projectRoles": [{"projectId": PROJECT, "roles": ["GROUP_READ_ONLY"]}]}));
    assert_eq!(refusals("acme", &none, "team-a", &BTreeMap::new(), Request::OrgUser(&with_project)).len(), 1);
    assert_eq!(
        refusals("acme", &none, "team-a", &BTreeMap::new(), Request::TeamMembership(&team(json!({"id": TEAM})))).len(),
        1
    );
}

#[test]
fn deletion_policy_comes_from_the_object_then_the_organization_then_delete() {
    let orphaning = org(json!({"defaultDeletionPolicy": "Orphan"}));
    let silent = user(json!({}));
    let explicit = user(json!({"deletionPolicy": "Delete"}));
    assert_eq!(effective_deletion_policy(Request::OrgUser(&silent), Some(&orphaning)), DeletionPolicy::Orphan);
    assert_eq!(effective_deletion_policy(Request::OrgUser(&explicit), Some(&orphaning)), DeletionPolicy::Delete);
    assert_eq!(effective_deletion_policy(Request::OrgUser(&silent), None), DeletionPolicy::Delete);
    assert_eq!(effective_deletion_policy(Request::OrgUser(&silent), Some(&org(json!({})))), DeletionPolicy::Delete);
}

fn client(base: &str, public: &str, private: &str) -> AtlasClient {
    let credentials = Credentials::ApiKey { public_key: public.into(), private_key: SecretString::from(private) };
    let mut config = ClientConfig::new(base, credentials);
    config.insecure_http = true;
    config.limiter = OrgRateLimiter::disabled();
    config.retry.max_attempts = 1;
    AtlasClient::new(config).unwrap()
}

#[test]
fn credential_identity_covers_both_halves_of_the_key() {
    let a = Credentials::ApiKey { public_key: "pub".into(), private_key: SecretString::from("one") };
    let b = Credentials::ApiKey { public_key: "pub".into(), private_key: SecretString::from("two") };
    let sa = Credentials::ServiceAccount { client_id: "pub".into(), client_secret: SecretString::from("one") };
    let url = "https://cloud.mongodb.com/";
    assert_eq!(a.identity(url), a.clone().identity(url));
    assert_ne!(a.identity(url), b.identity(url));
    assert_ne!(a.identity(url), sa.identity(url));
    assert_ne!(a.identity(url), a.identity("https://cloud.mongodbgov.com/"));
    // The identity's Debug shows a number, never key material.
    assert!(!format!("{:?}", b.identity(url)).contains("two"));
}

#[tokio::test]
async fn a_listing_is_served_only_to_the_credential_that_made_it() {
    let sim = Simulator::start(SimConfig::default().with_api_key("owner-pub", "owner-priv").without_limits()).unwrap();
    let state = sim.state();
    let org = state.add_org("acme");
    state.add_user(&org, "victim@example.com", MembershipStatus::Active, &["ORG_OWNER"]);
    let index = OrgUserIndex::new(Duration::from_secs(3600));
    let owner = client(&sim.base_url(), "owner-pub", "owner-priv");
    // The same public key with a wrong private key: a different credential.
    let junk = client(&sim.base_url(), "owner-pub", "guessed");
    let listed = index.directory(&owner, &org).await.unwrap();
    assert!(listed.get("victim@example.com").is_some());
    assert_eq!(index.listings(), 1);
    // The junk key is not served the owner's fresh snapshot: it lists for itself and is refused.
    let refused = index.directory(&junk, &org).await.unwrap_err();
    assert_eq!(refused.class(), atlas_access_operator::atlas::ErrorClass::Auth, "{refused}");
    assert_eq!(index.listings(), 2);
    // And a failed listing is served to no one: again a call, again refused.
    assert!(index.directory(&junk, &org).await.is_err());
    assert_eq!(index.listings(), 3);
    // The owner still reads its own snapshot without a call.
    assert!(index.directory(&owner, &org).await.unwrap().get("victim@example.com").is_some());
    assert_eq!(index.listings(), 3);
}
