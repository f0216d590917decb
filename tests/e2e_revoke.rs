//! End to end (envtest or any cluster, the operator as a child process with only the shipped
//! RBAC, the in-process Atlas simulator): access that can be taken away (issue 14).
//!
//! - revoking one project and one team of an ACTIVE user: the user stays in the org, the other
//!   project and team are untouched, and a project role granted meanwhile directly through the
//!   Atlas API (in a project the object does not list) survives the operator's change;
//! - deleting an object that adopted an existing user leaves the user in Atlas, and such an
//!   object carries no finalizer;
//! - an `Orphan` object never gets a finalizer, so it deletes with the operator stopped.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use atlas_access_operator::api::AtlasOrgUser;
use atlas_access_operator::atlas::models::MembershipStatus;
use atlas_access_operator::atlas::{AtlasClient, ClientConfig, Credentials};
use atlas_access_operator::sim::{SimConfig, SimHandle, SimState, Simulator};
use common::cluster::{self, TEST_MANAGER, TestNamespace, wait_for};
use common::operator::{Operator, grant_shipped_rbac, operator_kubeconfig, unprivileged_user, wait_object};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use secrecy::SecretString;
use serde_json::{Value, json};

const ORG: &str = "5f1b2c3d4e5f60718293a4c1";
const T1: &str = "6b1b2c3d4e5f60718293a4c1";
const T2: &str = "6b1b2c3d4e5f60718293a4c2";
const P1: &str = "6a1b2c3d4e5f60718293a4c1";
const P2: &str = "6a1b2c3d4e5f60718293a4c2";
const P3: &str = "6a1b2c3d4e5f60718293a4c3";
const P4: &str = "6a1b2c3d4e5f60718293a4c4";
const PUBLIC_KEY: &str = "e2e-revoke-public";
const PRIVATE_KEY: &str = "e2e-revoke-private-key";
const WAIT: Duration = Duration::from_secs(60);

fn start_sim() -> SimHandle {
    let sim = Simulator::start(SimConfig::default().with_api_key(PUBLIC_KEY, PRIVATE_KEY).without_limits()).unwrap();
    let state = sim.state();
    state.add_org_with_id(ORG, "e2e-revoke");
    state.add_team_with_id(ORG, T1, "one");
    state.add_team_with_id(ORG, T2, "two");
    state.add_user(ORG, "owner@example.com", MembershipStatus::Active, &["ORG_OWNER"]);
    sim
}

/// A client of our own, as a person or Terraform would call Atlas, outside the operator.
fn atlas_client(sim: &SimHandle) -> AtlasClient {
    common::init_crypto();
    let credentials =
        Credentials::ApiKey { public_key: PUBLIC_KEY.into(), private_key: SecretString::from(PRIVATE_KEY) };
    let mut config = ClientConfig::new(sim.base_url(), credentials);
    config.insecure_http = true;
    AtlasClient::new(config).unwrap()
}

async fn apply_secret(client: &Client, ns: &str) {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "atlas-credentials", "namespace": ns,
                     "labels": {"atlas.mongodb.com/type": "credentials"}},
        "stringData": {"publicApiKey": PUBLIC_KEY, "privateApiKey": PRIVATE_KEY}
    });
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch("atlas-credentials", &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&secret))
        .await
        .unwrap();
}

fn org_user(ns: &str, name: &str, username: &str, spec: Value) -> AtlasOrgUser {
    let mut manifest = json!({
        "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasOrgUser",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"orgId": ORG, "username": username, "credentialsSecretRef": {"name": "atlas-credentials"}},
    });
    for (k, v) in spec.as_object().unwrap() {
        manifest["spec"][k] = v.clone();
    }
    serde_json::from_value(manifest).unwrap()
}

async fn apply(api: &Api<AtlasOrgUser>, obj: &AtlasOrgUser) {
    api.patch(&obj.name_any(), &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(obj)).await.unwrap();
}

fn ready(u: &AtlasOrgUser) -> bool {
    u.status.as_ref().is_some_and(|s| {
        s.observed_generation == u.metadata.generation
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn projects_of(state: &SimState, username: &str) -> BTreeMap<String, Vec<String>> {
    let user = state.org_users(ORG).into_iter().find(|u| u.username == username).expect("in the org");
    user.roles.group_role_assignments.into_iter().map(|a| (a.group_id.unwrap(), a.group_roles)).collect()
}

fn in_org(state: &SimState, username: &str) -> Option<MembershipStatus> {
    state.org_users(ORG).into_iter().find(|u| u.username == username).map(|u| u.org_membership_status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_that_can_be_taken_away() {
    let admin = cluster::admin_client().await;
    cluster::install_crds(&admin).await;
    let ns = TestNamespace::new(&admin, "e2e-revoke").await;
    let grant = grant_shipped_rbac(&admin, &ns.name, &unprivileged_user(), false).await;
    let sim = start_sim();
    let state = sim.state();
    let bob_id = state.add_user(ORG, "bob@example.com", MembershipStatus::Active, &["ORG_OWNER"]);
    apply_secret(&admin, &ns.name).await;
    let mut operator = Operator::start(
        &operator_kubeconfig(),
        &[
            format!("--namespace={}", ns.name),
            format!("--atlas-url={}", sim.base_url()),
            "--atlas-insecure-http".into(),
            "--resync-interval=2s".into(),
            "--index-refresh-interval=1s".into(),
        ],
        &[("POD_NAME", "e2e-revoke-operator")],
    );
    let probe = wait_for(WAIT, || async { operator.get("/readyz").await.filter(|(s, _)| *s == 200) }).await;
    assert!(probe.is_some(), "operator never became ready:\n{}", operator.logs());
    let users: Api<AtlasOrgUser> = Api::namespaced(admin.clone(), &ns.name);

    // alice: invited with two projects and two teams, then ACTIVE.
    let alice = org_user(
        &ns.name,
        "alice",
        "alice@example.com",
        json!({
            "orgRoles": ["ORG_MEMBER"],
            "projectRoles": [{"projectId": P1, "roles": ["GROUP_OWNER"]}, {"projectId": P2, "roles": ["GROUP_READ_ONLY"]}],
            "teamIds": [T1, T2],
        }),
    );
    apply(&users, &alice).await;
    let invited = wait_object(&users, "alice", &operator, "invited and Ready", ready).await;
    let granted = &invited.status.as_ref().unwrap().granted;
    assert_eq!(granted.projects.len(), 2, "{granted:?}");
    assert_eq!(granted.team_ids, [T1, T2]);
    assert!(state.accept_invitation(ORG, "alice@example.com"));
    wait_object(&users, "alice", &operator, "ACTIVE", |u| {
        ready(u) && u.status.as_ref().and_then(|s| s.membership_status.as_deref()) == Some("ACTIVE")
    })
    .await;

    // Someone grants alice a role in P4 directly through the Atlas API.
    let alice_id = state.org_users(ORG).into_iter().find(|u| u.username == "alice@example.com").unwrap().id;
    atlas_client(&sim).add_group_role(ORG, P4, &alice_id, "GROUP_DATA_ACCESS_READ_ONLY").await.unwrap();

    // Revoke P1 and T1, add P3.
    let revoked = org_user(
        &ns.name,
        "alice",
        "alice@example.com",
        json!({
            "orgRoles": ["ORG_MEMBER"],
            "projectRoles": [{"projectId": P2, "roles": ["GROUP_READ_ONLY"]}, {"projectId": P3, "roles": ["GROUP_READ_ONLY"]}],
            "teamIds": [T2],
        }),
    );
    apply(&users, &revoked).await;
    let after = wait_object(&users, "alice", &operator, "P1 and T1 taken away", |u| {
        ready(u)
            && u.status.as_ref().is_some_and(|s| {
                s.granted.team_ids == [T2] && s.granted.projects.iter().map(|p| p.project_id.as_str()).eq([P2, P3])
            })
    })
    .await;
    let projects = projects_of(&state, "alice@example.com");
    assert!(!projects.contains_key(P1), "P1 still granted: {projects:?}");
    assert_eq!(projects[P2], ["GROUP_READ_ONLY"], "the other project untouched");
    assert_eq!(projects[P3], ["GROUP_READ_ONLY"]);
    assert_eq!(projects[P4], ["GROUP_DATA_ACCESS_READ_ONLY"], "the concurrent grant survives");
    assert!(state.team_member_ids(ORG, T1).is_empty(), "left team one");
    assert_eq!(state.team_member_ids(ORG, T2), std::slice::from_ref(&alice_id), "team two untouched");
    assert_eq!(in_org(&state, "alice@example.com"), Some(MembershipStatus::Active), "alice stays in the org");
    assert_eq!(after.status.as_ref().unwrap().on_deletion.map(|e| e.as_str()), Some("RemoveUser"));

    // bob was an ORG_OWNER before any object: adopted, left in Atlas on deletion, no finalizer.
    let bob = org_user(&ns.name, "bob", "bob@example.com", json!({"orgRoles": ["ORG_OWNER"]}));
    apply(&users, &bob).await;
    let adopted = wait_object(&users, "bob", &operator, "adopted, without a finalizer", |u| {
        ready(u) && u.status.as_ref().and_then(|s| s.adopted) == Some(true) && u.finalizers().is_empty()
    })
    .await;
    assert_eq!(adopted.status.as_ref().unwrap().on_deletion.map(|e| e.as_str()), Some("LeaveInAtlas"));
    users.delete("bob", &Default::default()).await.unwrap();
    let gone = wait_for(WAIT, || async { users.get_opt("bob").await.ok().flatten().is_none().then_some(()) }).await;
    assert!(gone.is_some(), "bob's object not deleted:\n{}", operator.logs());
    assert_eq!(in_org(&state, "bob@example.com"), Some(MembershipStatus::Active), "bob stays in Atlas");
    assert!(state.org_users(ORG).iter().any(|u| u.id == bob_id));

    // An invited user goes as before under Delete: the finalizer removes alice from the org.
    users.delete("alice", &Default::default()).await.unwrap();
    let gone = wait_for(WAIT, || async { users.get_opt("alice").await.ok().flatten().is_none().then_some(()) }).await;
    assert!(gone.is_some(), "alice's object not deleted:\n{}", operator.logs());
    assert_eq!(in_org(&state, "alice@example.com"), None, "an invited user is removed under Delete");

    // Orphan: never a finalizer, so it deletes with the operator stopped.
    let carol = org_user(
        &ns.name,
        "carol",
        "carol@example.com",
        json!({"orgRoles": ["ORG_MEMBER"], "deletionPolicy": "Orphan"}),
    );
    apply(&users, &carol).await;
    let reconciled = wait_object(&users, "carol", &operator, "invited", ready).await;
    assert!(reconciled.finalizers().is_empty(), "an Orphan object got a finalizer");
    assert!(operator.is_running(), "operator exited:\n{}", operator.logs());
    operator.kill();
    users.delete("carol", &Default::default()).await.unwrap();
    let gone = wait_for(Duration::from_secs(10), || async {
        users.get_opt("carol").await.ok().flatten().is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "an Orphan object waited on the stopped controller");
    assert!(in_org(&state, "carol@example.com").is_some(), "Orphan leaves Atlas alone");

    grant.revoke().await;
    ns.cleanup().await;
}
