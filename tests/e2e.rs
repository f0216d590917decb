//! End to end against a real API server (envtest in CI, or any cluster via KUBECONFIG) and
//! the in-process Atlas simulator: the operator runs as a child process with only the RBAC
//! that `deploy/` ships.
//!
//! Flow: credentials Secret and the examples applied; invitation sent (PENDING, Ready);
//! invitation accepted in the simulator (ACTIVE); roles changed; a reconcile with nothing
//! to do writes nothing; Secret rotation to bad keys and back; a paused object; deletion
//! through the finalizer removes the user from Atlas and the object from the cluster.

mod common;

use std::time::Duration;

use atlas_access_operator::api::{AtlasOrgUser, AtlasTeamMembership};
use atlas_access_operator::atlas::models::MembershipStatus;
use atlas_access_operator::sim::{SimConfig, SimHandle, Simulator};
use common::cluster::{self, TEST_MANAGER, TestNamespace, wait_for};
use common::manifests::example_objects;
use common::operator::{Operator, grant_shipped_rbac, operator_kubeconfig, unprivileged_user, wait_object};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const ORG: &str = "5f1b2c3d4e5f60718293a4b5";
const TEAM_ID: &str = "6b1b2c3d4e5f60718293a4b5";
const PUBLIC_KEY: &str = "e2e-public";
const PRIVATE_KEY: &str = "e2e-private-key";
const WAIT: Duration = Duration::from_secs(60);

fn start_sim() -> SimHandle {
    let sim = Simulator::start(SimConfig::default().with_api_key(PUBLIC_KEY, PRIVATE_KEY).without_limits()).unwrap();
    let state = sim.state();
    state.add_org_with_id(ORG, "e2e");
    state.add_team_with_id(ORG, TEAM_ID, "observability");
    state.add_team(ORG, "platform-admins");
    state.add_user(ORG, "owner@example.com", MembershipStatus::Active, &["ORG_OWNER"]);
    sim
}

fn examples(ns: &str) -> Vec<Value> {
    example_objects()
        .into_iter()
        .map(|mut v| {
            v["metadata"]["namespace"] = json!(ns);
            v
        })
        .collect()
}

async fn apply_secret(client: &Client, ns: &str, private_key: &str) {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "atlas-credentials", "namespace": ns,
                     "labels": {"atlas.mongodb.com/type": "credentials"}},
        "stringData": {"publicApiKey": PUBLIC_KEY, "privateApiKey": private_key}
    });
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch("atlas-credentials", &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&secret))
        .await
        .unwrap();
}

async fn apply_dynamic(client: &Client, ns: &str, manifest: &Value) {
    let name = manifest["metadata"]["name"].as_str().unwrap();
    let params = PatchParams::apply(TEST_MANAGER).force();
    match manifest["kind"].as_str().unwrap() {
        "AtlasOrgUser" => {
            let obj: AtlasOrgUser = serde_json::from_value(manifest.clone()).unwrap();
            Api::<AtlasOrgUser>::namespaced(client.clone(), ns)
                .patch(name, &params, &Patch::Apply(&obj))
                .await
                .unwrap();
        }
        "AtlasTeamMembership" => {
            let obj: AtlasTeamMembership = serde_json::from_value(manifest.clone()).unwrap();
            Api::<AtlasTeamMembership>::namespaced(client.clone(), ns)
                .patch(name, &params, &Patch::Apply(&obj))
                .await
                .unwrap();
        }
        other => panic!("unexpected kind {other}"),
    }
}

fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == t)
}

/// Wait until the AtlasOrgUser satisfies `check`; on time-out, fail with its status and the operator's log.
fn ready(u: &AtlasOrgUser) -> bool {
    u.status.as_ref().and_then(|s| condition(&s.conditions, "Ready")).is_some_and(|c| c.status == "True")
        && u.status.as_ref().and_then(|s| s.observed_generation) == u.metadata.generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_end_to_end() {
    let admin = cluster::admin_client().await;
    cluster::install_crds(&admin).await;
    let ns = TestNamespace::new(&admin, "e2e").await;
    let grant = grant_shipped_rbac(&admin, &ns.name, &unprivileged_user(), false).await;
    let sim = start_sim();
    let state = sim.state();
    apply_secret(&admin, &ns.name, PRIVATE_KEY).await;

    let mut operator = Operator::start(
        &operator_kubeconfig(),
        &[
            format!("--namespace={}", ns.name),
            format!("--atlas-url={}", sim.base_url()),
            format!("--operator-namespace={}", ns.name),
            format!("--tenant-secrets-cluster-role={}", grant.tenant_role),
            "--atlas-insecure-http".into(),
            // The simulator has no invitation limit.
            "--invitations-per-minute=0".into(),
            "--resync-interval=2s".into(),
            "--index-refresh-interval=1s".into(),
        ],
        &[("POD_NAME", "e2e-operator")],
    );
    // Ready once the CRDs are found and the caches synced.
    let probe = wait_for(WAIT, || async { operator.get("/readyz").await.filter(|(s, _)| *s == 200) }).await;
    assert!(probe.is_some(), "operator never became ready:\n{}", operator.logs());
    assert_eq!(operator.get("/healthz").await.map(|r| r.0), Some(200));

    for manifest in examples(&ns.name) {
        apply_dynamic(&admin, &ns.name, &manifest).await;
    }
    let users: Api<AtlasOrgUser> = Api::namespaced(admin.clone(), &ns.name);
    let teams: Api<AtlasTeamMembership> = Api::namespaced(admin.clone(), &ns.name);

    // Invitation sent: PENDING, with its expiry, and Ready (people are not waited for).
    let alice = wait_object(&users, "alice", &operator, "a PENDING invitation and Ready", |u| {
        ready(u) && u.status.as_ref().and_then(|s| s.membership_status.as_deref()) == Some("PENDING")
    })
    .await;
    let status = alice.status.clone().unwrap();
    assert!(status.user_id.is_some());
    assert!(status.invitation_expires_at.is_some());
    assert_eq!(status.org_roles, ["ORG_MEMBER"]);
    assert_eq!(condition(&status.conditions, "InvitationAccepted").map(|c| c.status.as_str()), Some("False"));
    assert!(alice.finalizers().iter().any(|f| f == "atlas-access.dev/cleanup"));
    let in_atlas = state.org_users(ORG);
    let alice_atlas = in_atlas.iter().find(|u| u.username == "alice@example.com").expect("alice invited");
    assert_eq!(alice_atlas.org_membership_status, MembershipStatus::Pending);
    assert_eq!(alice_atlas.roles.group_role_assignments[0].group_roles, ["GROUP_READ_ONLY"]);
    assert_eq!(in_atlas.iter().filter(|u| u.username == "alice@example.com").count(), 1, "one invitation");

    // The team memberships converge too (by id, via orgUserRef; by name with usernames).
    let observability = wait_for(WAIT, || async {
        teams.get("observability-team").await.ok().filter(|t| {
            // Both members resolved to users (one may be invited a moment after the team's first pass).
            t.status.as_ref().is_some_and(|s| {
                s.members.len() == 2
                    && s.team_id.as_deref() == Some(TEAM_ID)
                    && s.members.iter().all(|m| m.user_id.is_some())
            })
        })
    })
    .await
    .unwrap_or_else(|| panic!("team status never showed both members:\n{}", operator.logs()));
    assert!(observability.status.unwrap().members.iter().all(|m| m.user_id.is_some()));
    assert_eq!(state.team_member_ids(ORG, TEAM_ID).len(), 2);

    // Accepted in Atlas: ACTIVE and InvitationAccepted.
    assert!(state.accept_invitation(ORG, "alice@example.com"));
    wait_object(&users, "alice", &operator, "ACTIVE", |u| {
        u.status.as_ref().is_some_and(|s| {
            s.membership_status.as_deref() == Some("ACTIVE")
                && condition(&s.conditions, "InvitationAccepted").is_some_and(|c| c.status == "True")
        })
    })
    .await;

    // Roles changed: additions before removals, Atlas ends with exactly the spec.
    let mut spec_change = examples(&ns.name).into_iter().find(|m| m["metadata"]["name"] == "alice").unwrap();
    spec_change["spec"]["orgRoles"] = json!(["ORG_READ_ONLY", "ORG_BILLING_READ_ONLY"]);
    apply_dynamic(&admin, &ns.name, &spec_change).await;
    let alice = wait_object(&users, "alice", &operator, "the new roles", |u| {
        ready(u)
            && u.status.as_ref().is_some_and(|s| {
                let mut roles = s.org_roles.clone();
                roles.sort();
                roles == ["ORG_BILLING_READ_ONLY", "ORG_READ_ONLY"]
            })
    })
    .await;
    let mut atlas_roles =
        state.org_users(ORG).into_iter().find(|u| u.username == "alice@example.com").unwrap().roles.org_roles;
    atlas_roles.sort();
    assert_eq!(atlas_roles, ["ORG_BILLING_READ_ONLY", "ORG_READ_ONLY"]);

    // Nothing to do: drift checks every 2 s, yet no status write (resourceVersion stays).
    let rv = alice.resource_version();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(users.get("alice").await.unwrap().resource_version(), rv, "a no-op reconcile wrote status");

    // Secret rotation: bad keys are noticed at once (labelled Secret), good keys heal it.
    apply_secret(&admin, &ns.name, "wrong-private-key").await;
    // Any Atlas call now fails with 401; the next reconcile says so.
    wait_object(&users, "alice", &operator, "AtlasUnauthorized after rotation", |u| {
        u.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.status == "False" && c.reason == "AtlasUnauthorized")
    })
    .await;
    apply_secret(&admin, &ns.name, PRIVATE_KEY).await;
    wait_object(&users, "alice", &operator, "Ready again after rotating back", ready).await;

    // Paused: spec changes wait, status says so.
    let mut paused = spec_change.clone();
    paused["metadata"]["annotations"] = json!({"atlas-access.dev/paused": "true"});
    paused["spec"]["orgRoles"] = json!(["ORG_OWNER"]);
    apply_dynamic(&admin, &ns.name, &paused).await;
    wait_object(&users, "alice", &operator, "a Paused condition", |u| {
        u.status.as_ref().and_then(|s| condition(&s.conditions, "Ready")).is_some_and(|c| c.reason == "Paused")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let roles = state.org_users(ORG).into_iter().find(|u| u.username == "alice@example.com").unwrap().roles.org_roles;
    assert!(!roles.contains(&"ORG_OWNER".to_string()), "a paused object changed Atlas: {roles:?}");
    apply_dynamic(&admin, &ns.name, &spec_change).await; // unpaused, roles as before

    // Events were published (events.k8s.io) for the invitation.
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns.name);
    let reasons: Vec<String> =
        events.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|e| e.reason).collect();
    assert!(reasons.iter().any(|r| r == "InvitationSent"), "events: {reasons:?}");

    // Metrics are served with the documented names and labels.
    let (code, metrics) = operator.get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    for needle in [
        r#"atlas_access_reconciles_total{kind="AtlasOrgUser",outcome="success"}"#,
        "atlas_access_reconcile_duration_seconds_bucket",
        r#"atlas_access_objects{kind="AtlasOrgUser",ready="True"}"#,
        "atlas_access_status_writes_total",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }
    assert!(
        metrics.contains("atlas_access_api_calls_total{operation=\"createOrgUser\""),
        "Atlas client metrics missing:\n{metrics}"
    );
    // The audit of the organization, from the listings the reconciles made: one series per
    // organization and figure, values as Atlas and the declared objects say.
    let in_org: Vec<String> = state
        .org_users(ORG)
        .into_iter()
        .filter(|u| u.org_membership_status.is_in_org())
        .map(|u| u.username.to_lowercase())
        .collect();
    let declared = ["alice@example.com", "bob@example.com"];
    let unmanaged = in_org.iter().filter(|u| !declared.contains(&u.as_str())).count();
    let gauge = |name: &str, value: usize| format!("atlas_access_org_{name}{{org_id=\"{ORG}\"}} {value}");
    let wanted = [gauge("users", in_org.len()), gauge("unmanaged_users", unmanaged), gauge("declared_absent_users", 0)];
    let mut scraped = String::new();
    for _ in 0..40 {
        scraped = operator.get("/metrics").await.unwrap().1;
        if wanted.iter().all(|w| scraped.contains(w.as_str())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for w in &wanted {
        assert!(scraped.contains(w.as_str()), "metrics lack {w}:\n{scraped}");
    }
    for name in ["pending_invitations", "invitations_expiring"] {
        assert!(scraped.contains(&format!("atlas_access_org_{name}{{org_id=\"{ORG}\"}}")), "no {name} gauge");
    }

    // Deletion: the finalizer removes alice from the org; bob (Orphan) stays in Atlas.
    let teams_api = teams.clone();
    for t in ["observability-team", "platform-admins"] {
        teams_api.delete(t, &Default::default()).await.unwrap();
    }
    users.delete("alice", &Default::default()).await.unwrap();
    users.delete("bob", &Default::default()).await.unwrap();
    let gone = wait_for(WAIT, || async {
        let left = users.list(&ListParams::default()).await.ok()?.items.len()
            + teams.list(&ListParams::default()).await.ok()?.items.len();
        (left == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "objects not deleted:\n{}", operator.logs());
    let atlas_users: Vec<String> = state.org_users(ORG).into_iter().map(|u| u.username).collect();
    assert!(!atlas_users.contains(&"alice@example.com".to_string()), "alice still in Atlas: {atlas_users:?}");
    assert!(atlas_users.contains(&"bob@example.com".to_string()), "Orphan removed bob: {atlas_users:?}");
    assert!(state.team_member_ids(ORG, TEAM_ID).iter().all(|id| !id.is_empty()));

    assert!(operator.is_running(), "operator exited:\n{}", operator.logs());
    operator.kill();
    grant.revoke().await;
    ns.cleanup().await;
}
