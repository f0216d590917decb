//! The engine (index, executor, whole-object reconciles, the pass driver) against the
//! in-process simulator on a loopback port.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use atlas_access_operator::api::conditions::{self, find, is_true};
use atlas_access_operator::api::{
    AtlasOrgUser, AtlasOrgUserSpec, AtlasTeamMembership, AtlasTeamMembershipSpec, MemberState, MembershipMode, OrgRole,
    OrgUserRef, TeamMember, TeamRef,
};
use atlas_access_operator::atlas::models::MembershipStatus;
use atlas_access_operator::atlas::{AtlasClient, ClientConfig, Credentials, OrgRateLimiter, RetryPolicy};
use atlas_access_operator::engine::OrgUserIndex;
use atlas_access_operator::engine::driver::{ObjectSet, run_pass};
use atlas_access_operator::engine::{Mode, events, execute, reconcile_org_user, reconcile_team_membership};
use atlas_access_operator::reconcile::{ActionOutcome, ErrorClass, OrgUserDirectory, OrgUserInput, plan_org_user};
use atlas_access_operator::sim::{FaultConfig, FaultSpec, SimConfig, SimHandle, SimState, Simulator};
use jiff::Timestamp;
use kube::api::ObjectMeta;
use secrecy::SecretString;

const PUBLIC: &str = "engine-test-pub";
const PRIVATE: &str = "engine-test-private";

fn start() -> (SimHandle, SimState) {
    let sim = Simulator::start(SimConfig::default().with_api_key(PUBLIC, PRIVATE).without_limits()).unwrap();
    let state = sim.state();
    (sim, state)
}

fn client(sim: &SimHandle, retry: RetryPolicy) -> AtlasClient {
    let credentials = Credentials::ApiKey { public_key: PUBLIC.into(), private_key: SecretString::from(PRIVATE) };
    let mut config = ClientConfig::new(sim.base_url(), credentials);
    config.insecure_http = true;
    config.retry = retry;
    config.limiter = OrgRateLimiter::disabled();
    // The simulator has no invitation limit.
    config.invitations = atlas_access_operator::atlas::InvitationQueue::disabled();
    AtlasClient::new(config).unwrap()
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: Some("default".into()), ..Default::default() }
}

fn org_user(name: &str, org_id: &str, username: &str, roles: &[OrgRole]) -> AtlasOrgUser {
    let spec = AtlasOrgUserSpec {
        org_id: org_id.into(),
        username: username.into(),
        org_roles: roles.to_vec(),
        project_roles: vec![],
        team_ids: vec![],
        credentials_secret_ref: None,
        deletion_policy: Default::default(),
        reinvite: Default::default(),
    };
    AtlasOrgUser { metadata: meta(name), spec, status: None }
}

fn team_membership(name: &str, org_id: &str, team: TeamRef, members: Vec<TeamMember>) -> AtlasTeamMembership {
    let spec = AtlasTeamMembershipSpec {
        org_id: org_id.into(),
        team,
        members,
        mode: MembershipMode::Additive,
        credentials_secret_ref: None,
        deletion_policy: Default::default(),
    };
    AtlasTeamMembership { metadata: meta(name), spec, status: None }
}

fn by_name(username: &str) -> TeamMember {
    TeamMember { username: Some(username.into()), org_user_ref: None }
}

fn by_ref(name: &str) -> TeamMember {
    TeamMember { username: None, org_user_ref: Some(OrgUserRef { name: name.into() }) }
}

#[tokio::test]
async fn concurrent_reconciles_of_one_org_share_one_listing() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    for i in 0..30 {
        state.add_user(&org, &format!("user{i}@example.com"), MembershipStatus::Active, &["ORG_MEMBER"]);
    }
    let client = client(&sim, RetryPolicy::default());
    let index = Arc::new(OrgUserIndex::new(Duration::from_secs(60)));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (client, index, org) = (client.clone(), index.clone(), org.clone());
            tokio::spawn(async move { index.directory(&client, &org).await.unwrap().len() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 30);
    }
    assert_eq!(index.listings(), 1);
    assert_eq!(state.counters().count("listOrgUsers", 200), 1, "one page of 30 users");
}

#[tokio::test]
async fn snapshot_is_listed_again_after_the_interval_or_invalidation() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    state.add_user(&org, "first@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    let client = client(&sim, RetryPolicy::default());
    let index = OrgUserIndex::new(Duration::from_millis(300));
    assert_eq!(index.directory(&client, &org).await.unwrap().len(), 1);
    // Someone adds a user behind the index's back: not seen within the interval ...
    state.add_user(&org, "second@example.com", MembershipStatus::Pending, &["ORG_MEMBER"]);
    assert_eq!(index.directory(&client, &org).await.unwrap().len(), 1);
    assert_eq!(index.listings(), 1);
    // ... seen after it.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(index.directory(&client, &org).await.unwrap().len(), 2);
    assert_eq!(index.listings(), 2);
    state.add_user(&org, "third@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    index.invalidate(&org);
    assert_eq!(index.directory(&client, &org).await.unwrap().len(), 3);
    assert_eq!(index.listings(), 3);
    // Expired and rejected invitations are listed too (all four statuses).
    state.expire_invitation(&org, "second@example.com");
    index.invalidate(&org);
    let dir = index.directory(&client, &org).await.unwrap();
    assert_eq!(dir.get("second@example.com").unwrap().org_membership_status, MembershipStatus::InvitationExpired);
}

#[tokio::test]
async fn writes_update_the_index_without_listing_again() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    let client = client(&sim, RetryPolicy::default());
    let index = OrgUserIndex::new(Duration::from_secs(60));
    let alice = org_user("alice", &org, "alice@example.com", &[OrgRole::OrgMember]);
    let now = Timestamp::now();
    let report = reconcile_org_user(&client, &index, &alice, &[], Mode::Apply, now).await.unwrap();
    assert_eq!(report.events[0].reason, events::INVITATION_SENT, "{:?}", report.events);
    assert_eq!(report.status.membership_status.as_deref(), Some("PENDING"));
    let dir = index.directory(&client, &org).await.unwrap();
    let user = dir.get("alice@example.com").expect("the invitation is in the index");
    assert_eq!(Some(&user.id), report.status.user_id.as_ref());
    // A role change is visible at once, too.
    let owner = org_user("alice", &org, "alice@example.com", &[OrgRole::OrgOwner]);
    let report = reconcile_org_user(&client, &index, &owner, &[], Mode::Apply, now).await.unwrap();
    assert_eq!(report.status.org_roles, vec!["ORG_OWNER".to_string()]);
    let dir = index.directory(&client, &org).await.unwrap();
    assert_eq!(dir.get("alice@example.com").unwrap().roles.org_roles, vec!["ORG_OWNER".to_string()]);
    assert_eq!(index.listings(), 1);
    assert_eq!(state.counters().count("listOrgUsers", 200), 1);
    // Nothing more to do, and the status says so.
    let report = reconcile_org_user(&client, &index, &owner, &[], Mode::Apply, now).await.unwrap();
    assert!(report.plan.plan.actions.is_empty());
    assert!(is_true(&report.status.conditions, conditions::READY));
}

#[tokio::test]
async fn plan_only_changes_nothing() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    let client = client(&sim, RetryPolicy::default());
    let index = OrgUserIndex::new(Duration::from_secs(60));
    let alice = org_user("alice", &org, "alice@example.com", &[OrgRole::OrgMember]);
    let report = reconcile_org_user(&client, &index, &alice, &[], Mode::PlanOnly, Timestamp::now()).await.unwrap();
    assert_eq!(report.plan.plan.actions.len(), 1);
    assert!(report.outcomes.is_empty());
    assert!(state.org_users(&org).is_empty());
    assert_eq!(state.counters().total("createOrgUser"), 0);
}

#[tokio::test]
async fn partial_failure_reports_exactly_what_was_done() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    state.add_user(&org, "owner@example.com", MembershipStatus::Active, &["ORG_OWNER"]);
    state.add_user(&org, "bob@example.com", MembershipStatus::Active, &["ORG_MEMBER", "ORG_READ_ONLY"]);
    let client = client(&sim, RetryPolicy::none());
    let index = OrgUserIndex::new(Duration::from_secs(60));
    // Add ORG_GROUP_CREATOR, then remove ORG_MEMBER and ORG_READ_ONLY: the removals fail.
    let bob = org_user("bob", &org, "bob@example.com", &[OrgRole::OrgGroupCreator]);
    state.set_faults(FaultConfig::for_operation("removeOrgUserRole", FaultSpec::errors(1)));
    let report = reconcile_org_user(&client, &index, &bob, &[], Mode::Apply, Timestamp::now()).await.unwrap();
    assert_eq!(report.plan.plan.actions.len(), 3);
    assert!(matches!(report.outcomes[0], ActionOutcome::Done(Some(_))));
    let error = report.outcomes[1].error().expect("the first removal failed");
    assert_eq!(error.class, ErrorClass::Transient);
    assert_eq!(error.http_status, Some(500));
    assert_eq!(error.error_code.as_deref(), Some("UNEXPECTED_ERROR"));
    assert_eq!(report.outcomes[2], ActionOutcome::Skipped, "sequential plans stop at the first failure");
    // The status shows the roles Atlas has now: the addition happened, the removals did not.
    let mut roles = report.status.org_roles.clone();
    roles.sort();
    assert_eq!(roles, vec!["ORG_GROUP_CREATOR", "ORG_MEMBER", "ORG_READ_ONLY"]);
    let ready = find(&report.status.conditions, conditions::READY).unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "AtlasUnavailable");
    assert!(ready.message.contains("remove org role ORG_MEMBER"), "{}", ready.message);
    assert!(report.events.iter().any(|e| e.warning && e.note.contains("UNEXPECTED_ERROR")), "{:?}", report.events);
    // The next reconcile finishes the job from the index, without listing again.
    let report = reconcile_org_user(&client, &index, &bob, &[], Mode::Apply, Timestamp::now()).await.unwrap();
    assert_eq!(report.plan.plan.actions.len(), 2);
    assert!(report.outcomes.iter().all(|o| matches!(o, ActionOutcome::Done(_))));
    assert_eq!(report.status.org_roles, vec!["ORG_GROUP_CREATOR".to_string()]);
    assert_eq!(index.listings(), 1);
}

#[tokio::test]
async fn execute_maps_rate_limits_and_skips_the_rest() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    let client = client(&sim, RetryPolicy::none());
    let index = OrgUserIndex::new(Duration::from_secs(60));
    let directory = OrgUserDirectory::new(index.directory(&client, &org).await.unwrap().iter().cloned());
    let alice = org_user("alice", &org, "alice@example.com", &[OrgRole::OrgMember]);
    let input = OrgUserInput::from_object(&alice, &directory, &[], Timestamp::now());
    let plan = plan_org_user(&input);
    state.set_faults(FaultConfig::for_operation("createOrgUser", FaultSpec::unavailable(1, 7)));
    let outcomes = execute(&client, &plan.plan).await;
    let error = outcomes[0].error().unwrap();
    assert_eq!(error.class, ErrorClass::RateLimited);
    assert_eq!(error.retry_after_secs, Some(7));
    assert!(state.org_users(&org).is_empty());
    // The whole-object step turns it into a requeue.
    state.set_faults(FaultConfig::for_operation("createOrgUser", FaultSpec::unavailable(1, 7)));
    let report = reconcile_org_user(&client, &index, &alice, &[], Mode::Apply, Timestamp::now()).await.unwrap();
    assert_eq!(report.requeue_after, Some(Duration::from_secs(7)));
    assert!(report.events.iter().any(|e| e.warning && e.reason == "RateLimited"));
}

#[tokio::test]
async fn team_membership_adds_members_and_reads_the_team_once() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    let team_id = state.add_team(&org, "platform-admins");
    state.add_user(&org, "carol@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    let client = client(&sim, RetryPolicy::default());
    let index = OrgUserIndex::new(Duration::from_secs(60));
    let alice = org_user("alice", &org, "alice@example.com", &[OrgRole::OrgMember]);
    let team = team_membership(
        "admins",
        &org,
        TeamRef { id: None, name: Some("platform-admins".into()) },
        vec![by_ref("alice"), by_name("carol@example.com"), by_name("nobody@example.com")],
    );
    let now = Timestamp::now();
    reconcile_org_user(&client, &index, &alice, &[], Mode::Apply, now).await.unwrap();
    let refs = BTreeMap::from([("alice".to_string(), "alice@example.com".to_string())]);
    let report = reconcile_team_membership(&client, &index, &team, &refs, Mode::Apply, now).await.unwrap();
    assert_eq!(report.events.iter().filter(|e| e.reason == events::MEMBER_ADDED).count(), 2, "{:?}", report.events);
    let status = &report.status;
    assert_eq!(status.team_id.as_deref(), Some(team_id.as_str()));
    assert_eq!(status.member_count, Some(2));
    let states: Vec<MemberState> = status.members.iter().map(|m| m.state).collect();
    assert_eq!(states, vec![MemberState::Pending, MemberState::Member, MemberState::NotInOrg]);
    assert_eq!(state.team_member_ids(&org, &team_id).len(), 2);
    // Again: the team is remembered, so one member listing and no lookup.
    state.reset_counters();
    let team = AtlasTeamMembership { status: Some(report.status.clone()), ..team };
    let report = reconcile_team_membership(&client, &index, &team, &refs, Mode::Apply, now).await.unwrap();
    assert!(report.plan.plan.actions.is_empty());
    let counters = state.counters();
    assert_eq!(counters.total("listOrgTeamUsers"), 1);
    assert_eq!(counters.total("getOrgTeamByName") + counters.total("getOrgTeam"), 0);
    assert_eq!(counters.total_requests(), 1);
}

#[tokio::test]
async fn a_pass_converges_a_set_with_dependencies() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    let team_id = state.add_team(&org, "devs");
    state.add_user(&org, "dora@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    let client = client(&sim, RetryPolicy::default());
    let index = OrgUserIndex::new(Duration::from_secs(600));
    let mut objects = ObjectSet {
        org_users: (0..20)
            .map(|i| org_user(&format!("u{i}"), &org, &format!("u{i}@example.com"), &[OrgRole::OrgMember]))
            .chain([org_user("dora", &org, "dora@example.com", &[OrgRole::OrgReadOnly])])
            .collect(),
        team_memberships: vec![team_membership(
            "devs",
            &org,
            TeamRef { id: Some(team_id.clone()), name: None },
            (0..20).map(|i| by_ref(&format!("u{i}"))).chain([by_name("dora@example.com")]).collect(),
        )],
    };
    let results = run_pass(&client, &index, &mut objects, Mode::Apply, 8, &|_, _| {}).await;
    assert_eq!(results.len(), 22);
    assert!(results.iter().all(|(_, o)| o.is_settled()), "{results:#?}");
    assert_eq!(state.team_member_ids(&org, &team_id).len(), 21);
    assert_eq!(state.counters().count("createOrgUser", 201), 20);
    assert_eq!(objects.org_users[20].status.as_ref().unwrap().adopted, Some(true));
    // A second pass: one listing, one team member listing, no writes.
    state.reset_counters();
    let results = run_pass(&client, &index, &mut objects, Mode::Apply, 8, &|_, _| {}).await;
    assert!(results.iter().all(|(_, o)| o.is_settled()));
    assert_eq!(state.counters().total_requests(), 2, "{:?}", state.counters());
}

fn assert_send<T: Send>(_: &T) {}

/// The controller runs these on a multi-threaded runtime: their futures must be `Send`.
#[test]
fn engine_futures_are_send() {
    let credentials = Credentials::ApiKey { public_key: "p".into(), private_key: SecretString::from("s") };
    let client = AtlasClient::new(ClientConfig::new("https://cloud.mongodb.com", credentials)).unwrap();
    let index = OrgUserIndex::new(Duration::from_secs(60));
    let org = "5f1b2c3d4e5f60718293a4b5";
    let user = org_user("alice", org, "alice@example.com", &[OrgRole::OrgMember]);
    let team = team_membership("t", org, TeamRef { id: None, name: Some("t".into()) }, vec![]);
    let refs = BTreeMap::new();
    let now = Timestamp::now();
    assert_send(&reconcile_org_user(&client, &index, &user, &[], Mode::Apply, now));
    assert_send(&reconcile_team_membership(&client, &index, &team, &refs, Mode::Apply, now));
    assert_send(&index.directory(&client, org));
}
