//! Team memberships you can trust, against a real API server (envtest, or any cluster via
//! KUBECONFIG) and the in-process Atlas simulator, with the operator as a child process under
//! the shipped RBAC: the team cannot be re-pointed; a user added right before a refused
//! status write stays recorded and is removed after a restart; two Exclusive objects on one
//! team; Exclusive against an AtlasOrgUser's teamIds; a swap at 250 members; a member listed
//! by username whose AtlasOrgUser comes later.

mod common;

use std::time::Duration;

use atlas_access_operator::api::{AtlasOrgUser, AtlasTeamMembership};
use atlas_access_operator::atlas::models::MembershipStatus;
use atlas_access_operator::sim::{FaultConfig, FaultSpec, SimConfig, SimHandle, SimState, Simulator};
use common::cluster::{self, TEST_MANAGER, TestNamespace, wait_for};
use common::operator::{Operator, RbacGrant, grant_shipped_rbac, operator_kubeconfig, unprivileged_user};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const ORG: &str = "5f1b2c3d4e5f60718293a4b5";
const TEAM: &str = "6b1b2c3d4e5f60718293a4b5";
const OTHER_TEAM: &str = "6b1b2c3d4e5f60718293a4b6";
const PUBLIC_KEY: &str = "e2e-public";
const PRIVATE_KEY: &str = "e2e-private-key";
const WAIT: Duration = Duration::from_secs(60);

/// One test's world: a namespace, the simulator with one org and two teams, credentials, the
/// shipped RBAC, and the operator (whose resync is long, so only triggers make it act fast).
struct World {
    admin: Client,
    ns: TestNamespace,
    grant: Option<RbacGrant>,
    sim: SimHandle,
    state: SimState,
    operator: Operator,
}

impl World {
    async fn new(prefix: &str) -> Self {
        let admin = cluster::admin_client().await;
        cluster::install_crds(&admin).await;
        let ns = TestNamespace::new(&admin, prefix).await;
        let grant = grant_shipped_rbac(&admin, &ns.name, &unprivileged_user(), false).await;
        let sim =
            Simulator::start(SimConfig::default().with_api_key(PUBLIC_KEY, PRIVATE_KEY).without_limits()).unwrap();
        let state = sim.state();
        state.add_org_with_id(ORG, "e2e");
        state.add_team_with_id(ORG, TEAM, "devs");
        state.add_team_with_id(ORG, OTHER_TEAM, "ops");
        state.add_user(ORG, "owner@example.com", MembershipStatus::Active, &["ORG_OWNER"]);
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "atlas-credentials", "namespace": ns.name,
                         "labels": {"atlas.mongodb.com/type": "credentials"}},
            "stringData": {"publicApiKey": PUBLIC_KEY, "privateApiKey": PRIVATE_KEY}
        });
        Api::<Secret>::namespaced(admin.clone(), &ns.name)
            .patch("atlas-credentials", &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&secret))
            .await
            .unwrap();
        let operator = start_operator(&ns.name, &sim);
        Self { admin, ns, grant: Some(grant), sim, state, operator }
    }

    fn teams(&self) -> Api<AtlasTeamMembership> {
        Api::namespaced(self.admin.clone(), &self.ns.name)
    }

    fn users(&self) -> Api<AtlasOrgUser> {
        Api::namespaced(self.admin.clone(), &self.ns.name)
    }

    async fn apply_team(&self, name: &str, spec: Value) -> Result<AtlasTeamMembership, kube::Error> {
        let mut spec = spec;
        spec["orgId"] = json!(ORG);
        spec["credentialsSecretRef"] = json!({"name": "atlas-credentials"});
        let object = json!({
            "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasTeamMembership",
            "metadata": {"name": name, "namespace": self.ns.name}, "spec": spec,
        });
        self.teams().patch(name, &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&object)).await
    }

    async fn apply_user(&self, name: &str, username: &str, team_ids: &[&str]) {
        let object = json!({
            "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasOrgUser",
            "metadata": {"name": name, "namespace": self.ns.name},
            "spec": {"orgId": ORG, "username": username, "orgRoles": ["ORG_MEMBER"], "teamIds": team_ids,
                     "credentialsSecretRef": {"name": "atlas-credentials"}},
        });
        self.users().patch(name, &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&object)).await.unwrap();
    }

    /// Wait until the AtlasTeamMembership satisfies `check`; on time-out, fail with its
    /// status and the operator's log.
    async fn wait_team(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&AtlasTeamMembership) -> bool,
    ) -> AtlasTeamMembership {
        let api = self.teams();
        let found = wait_for(timeout, || async { api.get(name).await.ok().filter(|t| check(t)) }).await;
        found.unwrap_or_else(|| {
            let now = futures::executor::block_on(api.get_opt(name)).ok().flatten();
            panic!(
                "{name}: timed out waiting for {what}; status: {:#?}\n--- operator log ---\n{}",
                now.map(|t| t.status),
                self.operator.logs()
            )
        })
    }

    async fn wait_atlas(&self, what: &str, check: impl Fn(&[String]) -> bool) {
        let found = wait_for(WAIT, || async { check(&self.member_names(TEAM)).then_some(()) }).await;
        if found.is_none() {
            panic!(
                "timed out waiting for Atlas: {what}; team: {:?}\n--- operator log ---\n{}",
                self.member_names(TEAM),
                self.operator.logs()
            );
        }
    }

    /// Usernames of a team's members in the simulator, sorted.
    fn member_names(&self, team: &str) -> Vec<String> {
        let ids = self.state.team_member_ids(ORG, team);
        let mut names: Vec<String> =
            self.state.org_users(ORG).into_iter().filter(|u| ids.contains(&u.id)).map(|u| u.username).collect();
        names.sort();
        names
    }

    async fn finish(mut self) {
        self.operator.kill();
        if let Some(grant) = self.grant.take() {
            grant.revoke().await;
        }
        self.ns.cleanup().await;
    }
}

fn start_operator(ns: &str, sim: &SimHandle) -> Operator {
    Operator::start(
        &operator_kubeconfig(),
        &[
            format!("--namespace={ns}"),
            format!("--atlas-url={}", sim.base_url()),
            "--atlas-insecure-http".into(),
            // Long: a test that needs the operator to act again must get there by a trigger.
            "--resync-interval=10m".into(),
            "--index-refresh-interval=10m".into(),
        ],
        &[("POD_NAME", "e2e-teams")],
    )
}

fn condition<'a>(
    t: &'a AtlasTeamMembership,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    t.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

fn is(t: &AtlasTeamMembership, type_: &str, status: &str) -> bool {
    condition(t, type_).is_some_and(|c| c.status == status)
        && t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation
}

fn ready(t: &AtlasTeamMembership) -> bool {
    is(t, "Ready", "True")
}

fn recorded(t: &AtlasTeamMembership) -> Vec<String> {
    t.status.as_ref().map(|s| s.added_members.iter().map(|a| a.username.clone()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_team_is_pinned_and_a_change_is_refused() {
    let world = World::new("teams-pin").await;
    world.state.add_user(ORG, "alice@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    world
        .apply_team("devs", json!({"team": {"name": "devs"}, "members": [{"username": "alice@example.com"}]}))
        .await
        .unwrap();
    let devs = world.wait_team("devs", WAIT, "Ready", ready).await;
    assert_eq!(devs.status.as_ref().unwrap().team_id.as_deref(), Some(TEAM), "resolved once, kept");
    // Re-pointing the object at "ops" is refused by admission, with what to do instead.
    let err = world
        .apply_team("devs", json!({"team": {"name": "ops"}, "members": [{"username": "alice@example.com"}]}))
        .await
        .expect_err("spec.team is immutable");
    let message = err.to_string();
    assert!(message.contains("team is immutable") && message.contains("create a new object"), "{message}");
    assert_eq!(world.member_names(TEAM), vec!["alice@example.com"]);
    assert!(world.member_names(OTHER_TEAM).is_empty());
    world.finish().await;
}

/// A ValidatingAdmissionPolicy that refuses every status write of the namespace's
/// AtlasTeamMemberships that changes `memberCount`: the write-ahead record (which keeps the
/// previous count) passes, the status after `:addUser` does not.
async fn refuse_status_after_calls(admin: &Client, ns: &str) -> (Api<DynamicObject>, Api<DynamicObject>, String) {
    let gvk = |kind: &str| GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    let policies: Api<DynamicObject> =
        Api::all_with(admin.clone(), &ApiResource::from_gvk(&gvk("ValidatingAdmissionPolicy")));
    let bindings: Api<DynamicObject> =
        Api::all_with(admin.clone(), &ApiResource::from_gvk(&gvk("ValidatingAdmissionPolicyBinding")));
    let name = format!("refuse-team-status-{ns}");
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["atlas-access.dev"], "apiVersions": ["v1alpha1"],
                "operations": ["UPDATE"], "resources": ["atlasteammemberships/status"]}]},
            "validations": [{
                "expression": "(has(object.status) && has(object.status.memberCount) ? object.status.memberCount : -1) == (has(oldObject.status) && has(oldObject.status.memberCount) ? oldObject.status.memberCount : -1)",
                "message": "test: status writes after Atlas calls are refused"}],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name, "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
        },
    });
    let params = PatchParams::apply(TEST_MANAGER).force();
    policies.patch(&name, &params, &Patch::Apply(&policy)).await.expect("apply the policy");
    bindings.patch(&name, &params, &Patch::Apply(&binding)).await.expect("apply the binding");
    (policies, bindings, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_whose_status_write_fails_stays_recorded_and_is_removed_after_a_restart() {
    let mut world = World::new("teams-wal").await;
    world.state.add_user(ORG, "bob@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    world.apply_team("devs", json!({"team": {"id": TEAM}, "members": []})).await.unwrap();
    world.wait_team("devs", WAIT, "Ready with no members", ready).await;

    let (policies, bindings, name) = refuse_status_after_calls(&world.admin, &world.ns.name).await;
    // Let the policy take effect (probed with a dry run): a status write changing memberCount is refused.
    let probe = wait_for(Duration::from_secs(20), || async {
        let patch = json!({"apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasTeamMembership",
                           "status": {"memberCount": 7}});
        let answer = world
            .teams()
            .patch_status("devs", &PatchParams::apply("policy-probe").force().dry_run(), &Patch::Apply(&patch))
            .await;
        match answer {
            Err(e) if e.to_string().contains("test: status writes after Atlas calls are refused") => Some(()),
            Err(e) => panic!("the probe failed otherwise: {e}"),
            Ok(_) => None,
        }
    })
    .await;
    assert!(probe.is_some(), "the ValidatingAdmissionPolicy never refused a status write");

    world
        .apply_team("devs", json!({"team": {"id": TEAM}, "members": [{"username": "bob@example.com"}]}))
        .await
        .unwrap();
    world.wait_atlas("bob added", |m| m == ["bob@example.com"]).await;
    // The status after the call was refused, but the record written ahead names bob.
    let devs = world.wait_team("devs", WAIT, "bob recorded", |t| recorded(t) == ["bob@example.com"]).await;
    assert_ne!(devs.status.as_ref().unwrap().member_count, Some(1), "the status after the call was refused");
    assert!(world.operator.logs().contains("test: status writes after Atlas calls are refused"));

    // The operator dies; bob is taken out of the spec; a new operator removes him.
    world.operator.kill();
    bindings.delete(&name, &DeleteParams::default()).await.unwrap();
    policies.delete(&name, &DeleteParams::default()).await.unwrap();
    world.apply_team("devs", json!({"team": {"id": TEAM}, "members": []})).await.unwrap();
    world.operator = start_operator(&world.ns.name, &world.sim);
    world.wait_atlas("bob removed after the restart", |m| m.is_empty()).await;
    world.wait_team("devs", WAIT, "Ready, nothing recorded", |t| ready(t) && recorded(t).is_empty()).await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_exclusive_objects_on_one_team_the_oldest_owns() {
    let world = World::new("teams-excl").await;
    world.state.add_user(ORG, "alice@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    world.state.add_user(ORG, "bob@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    world
        .apply_team(
            "first",
            json!({"team": {"id": TEAM}, "mode": "Exclusive", "members": [{"username": "alice@example.com"}]}),
        )
        .await
        .unwrap();
    world.wait_team("first", WAIT, "Ready", ready).await;
    // creationTimestamp has second resolution: make "second" clearly younger.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    world.state.reset_counters();
    world
        .apply_team(
            "second",
            json!({"team": {"name": "devs"}, "mode": "Exclusive", "members": [{"username": "bob@example.com"}]}),
        )
        .await
        .unwrap();
    let second = world.wait_team("second", WAIT, "Stalled by the conflict", |t| is(t, "Stalled", "True")).await;
    let c = condition(&second, "Ready").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Conflict"));
    assert!(c.message.contains("/first"), "{}", c.message);
    assert_eq!(condition(&second, "Stalled").unwrap().reason, "Conflict");
    // Nobody fights: a few seconds later the team is still first's, and no team write was made.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(world.member_names(TEAM), vec!["alice@example.com"]);
    let counters = world.state.counters();
    assert_eq!(counters.total("addOrgTeamUser") + counters.total("removeOrgTeamUser"), 0, "{counters:?}");
    assert!(world.wait_team("first", WAIT, "still Ready", ready).await.status.is_some());

    // The owner goes (Delete removes the users it declared); the other takes over at once.
    world.teams().delete("first", &DeleteParams::default()).await.unwrap();
    world.wait_atlas("second took over", |m| m == ["bob@example.com"]).await;
    world.wait_team("second", Duration::from_secs(20), "Ready", ready).await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_counts_an_org_users_team_ids_as_listed() {
    let world = World::new("teams-ids").await;
    world.state.add_user(ORG, "alice@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    let stranger = world.state.add_user(ORG, "stranger@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    world.state.add_team_member(ORG, TEAM, &stranger);
    world.state.add_user(ORG, "carol@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    world.apply_user("carol", "carol@example.com", &[TEAM]).await;
    world
        .apply_team(
            "devs",
            json!({"team": {"id": TEAM}, "mode": "Exclusive", "members": [{"username": "alice@example.com"}]}),
        )
        .await
        .unwrap();
    world.wait_atlas("alice and carol in, the stranger out", |m| m == ["alice@example.com", "carol@example.com"]).await;
    // carol joins through her AtlasOrgUser's teamIds, which re-triggers the team: Ready, both counted.
    let both = |t: &AtlasTeamMembership| ready(t) && t.status.as_ref().and_then(|s| s.member_count) == Some(2);
    let devs = world.wait_team("devs", WAIT, "Ready with both members", both).await;
    assert_eq!(devs.status.as_ref().unwrap().member_count, Some(2));
    // No flapping: carol is never removed, whatever passes follow.
    world.state.reset_counters();
    world
        .teams()
        .patch("devs", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})))
        .await
        .unwrap();
    world
        .users()
        .patch("carol", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(world.member_names(TEAM), vec!["alice@example.com", "carol@example.com"]);
    let counters = world.state.counters();
    assert_eq!(counters.total("addOrgTeamUser") + counters.total("removeOrgTeamUser"), 0, "{counters:?}");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_at_250_members_is_ready_without_stalling() {
    let world = World::new("teams-cap").await;
    let usernames: Vec<String> = (0..251).map(|i| format!("m{i:03}@example.com")).collect();
    for (i, username) in usernames.iter().enumerate() {
        let id = world.state.add_user(ORG, username, MembershipStatus::Active, &["ORG_MEMBER"]);
        if i < 250 {
            world.state.add_team_member(ORG, TEAM, &id);
        }
    }
    // m000 out, m250 in; :removeUser is slow, so an addition started alongside would find the team full.
    world
        .state
        .set_faults(FaultConfig::for_operation("removeOrgTeamUser", FaultSpec::latency(Duration::from_millis(500))));
    let members: Vec<Value> = usernames[1..].iter().map(|u| json!({"username": u})).collect();
    world.apply_team("full", json!({"team": {"id": TEAM}, "mode": "Exclusive", "members": members})).await.unwrap();
    let full = world.wait_team("full", WAIT, "Ready or Stalled", |t| ready(t) || is(t, "Stalled", "True")).await;
    assert!(ready(&full), "{:#?}", full.status);
    let names = world.member_names(TEAM);
    assert_eq!(names.len(), 250);
    assert!(!names.contains(&usernames[0]) && names.contains(&usernames[250]));
    assert_eq!(world.state.counters().count("addOrgTeamUser", 400), 0, "no addition was refused");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_username_listed_member_whose_org_user_comes_later_is_added_at_once() {
    let world = World::new("teams-trig").await;
    world
        .apply_team("devs", json!({"team": {"id": TEAM}, "members": [{"username": "Dave@Example.com"}]}))
        .await
        .unwrap();
    world
        .wait_team("devs", WAIT, "MembersNotInOrg", |t| {
            condition(t, "Ready").is_some_and(|c| c.status == "False" && c.reason == "MembersNotInOrg")
        })
        .await;
    // The AtlasOrgUser comes after; the resync is 10 minutes, so only the trigger can do it.
    world.apply_user("dave", "dave@example.com", &[]).await;
    let started = std::time::Instant::now();
    world.wait_team("devs", Duration::from_secs(20), "Ready after dave's invitation", ready).await;
    eprintln!("team Ready {:?} after the AtlasOrgUser was created", started.elapsed());
    assert_eq!(world.member_names(TEAM), vec!["dave@example.com"]);
    world.finish().await;
}
