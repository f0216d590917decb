//! The engine (index, executor, whole-object reconciles, the pass driver) against the
//! in-process simulator on a loopback port.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use atlas_access_operator::api::conditions::{self, find, is_true};
use atlas_access_operator::api::{
    AtlasOrgUser, AtlasOrgUserSpec, AtlasOrgUserStatus, AtlasTeamMembership, AtlasTeamMembershipSpec, MemberState,
    MembershipMode, OrgRole, OrgUserRef, ProjectRole, ProjectRoleAssignment, TeamMember, TeamRef,
};
use atlas_access_operator::atlas::models::MembershipStatus;
use atlas_access_operator::atlas::{AtlasClient, ClientConfig, Credentials, OrgRateLimiter, RetryPolicy};
use atlas_access_operator::engine::OrgUserIndex;
use atlas_access_operator::engine::driver::{ObjectSet, run_pass};
use atlas_access_operator::engine::{
    InMemory, IntentError, Mode, PersistIntent, TeamSurroundings, events, execute, reconcile_org_user,
    reconcile_org_user_recorded, reconcile_team_membership,
};
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
        adopted_deletion_policy: Default::default(),
        unlisted_access: Default::default(),
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
    let around = TeamSurroundings {
        org_user_refs: std::sync::Arc::new(BTreeMap::from([("alice".to_string(), "alice@example.com".to_string())])),
        writers: vec![],
    };
    let report = reconcile_team_membership(&client, &index, &team, &around, Mode::Apply, now, &InMemory).await.unwrap();
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
    let report = reconcile_team_membership(&client, &index, &team, &around, Mode::Apply, now, &InMemory).await.unwrap();
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
    // The team was reconciled in steps as its members were invited, from one member listing
    // (made while its first member was invited, kept for the pass, updated from its writes).
    assert_eq!(state.counters().total("listOrgTeamUsers"), 1, "{:?}", state.counters());
    assert_eq!(state.counters().total("getOrgTeam"), 1);
    // A second pass observes afresh: one listing, one team member listing, no writes.
    state.reset_counters();
    let results = run_pass(&client, &index, &mut objects, Mode::Apply, 8, &|_, _| {}).await;
    assert!(results.iter().all(|(_, o)| o.is_settled()));
    assert_eq!(state.counters().total_requests(), 2, "{:?}", state.counters());
}

/// A team waiting for its members is looked up and listed while its first member is being
/// invited, not after: its first addition then follows that invitation by one round trip.
#[tokio::test]
async fn a_pass_lists_a_team_while_its_first_member_is_invited() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    let team_id = state.add_team(&org, "devs");
    // Invitations are slow; reads are not.
    state.set_faults(FaultConfig::for_operation("createOrgUser", FaultSpec::latency(Duration::from_millis(300))));
    let client = client(&sim, RetryPolicy::default());
    let index = OrgUserIndex::new(Duration::from_secs(600));
    let mut objects = ObjectSet {
        org_users: (0..3)
            .map(|i| org_user(&format!("u{i}"), &org, &format!("u{i}@example.com"), &[OrgRole::OrgMember]))
            .collect(),
        team_memberships: vec![team_membership(
            "devs",
            &org,
            TeamRef { id: Some(team_id.clone()), name: None },
            (0..3).map(|i| by_ref(&format!("u{i}"))).collect(),
        )],
    };
    let results = run_pass(&client, &index, &mut objects, Mode::Apply, 8, &|_, _| {}).await;
    assert!(results.iter().all(|(_, o)| o.is_settled()), "{results:#?}");
    assert_eq!(state.team_member_ids(&org, &team_id).len(), 3);
    let log = state.request_log();
    let answered = |op: &str| log.iter().position(|r| r.operation_id == op).unwrap_or_else(|| panic!("no {op}"));
    assert!(answered("listOrgTeamUsers") < answered("createOrgUser"), "{log:#?}");
    assert_eq!(state.counters().total("listOrgTeamUsers"), 1);
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
    let around = TeamSurroundings::default();
    let now = Timestamp::now();
    assert_send(&reconcile_org_user(&client, &index, &user, &[], Mode::Apply, now));
    assert_send(&reconcile_team_membership(&client, &index, &team, &around, Mode::Apply, now, &InMemory));
    assert_send(&index.directory(&client, org));
}

#[tokio::test]
async fn an_expiring_invitation_is_flagged_once_when_the_clock_enters_the_window() {
    use atlas_access_operator::engine::flag_expiring_invitation;
    let (sim, state) = start();
    let org = state.add_org("acme");
    let client = client(&sim, RetryPolicy::default());
    let index = OrgUserIndex::new(Duration::ZERO);
    let window = Duration::from_secs(7 * 24 * 3600);
    let mut alice = org_user("alice", &org, "alice@example.com", &[OrgRole::OrgMember]);
    let reconcile = async |alice: &AtlasOrgUser| {
        let now = state.now();
        let mut report = reconcile_org_user(&client, &index, alice, &[], Mode::Apply, now).await.unwrap();
        flag_expiring_invitation(&mut report, alice.status.as_ref(), now, window);
        report
    };
    let warned = |report: &atlas_access_operator::engine::OrgUserReport| {
        report.events.iter().filter(|e| e.reason == events::INVITATION_EXPIRING_SOON && e.warning).count()
    };

    // Invited now: 30 days to go, outside the window.
    let report = reconcile(&alice).await;
    assert_eq!(report.status.membership_status.as_deref(), Some("PENDING"));
    assert!(find(&report.status.conditions, conditions::INVITATION_EXPIRING_SOON).is_none());
    assert_eq!(warned(&report), 0);
    alice.status = Some(report.status);

    // 22 days later: 8 days to go, still outside.
    state.advance_clock(Duration::from_secs(22 * 24 * 3600));
    let report = reconcile(&alice).await;
    assert_eq!(warned(&report), 0);
    alice.status = Some(report.status);

    // 2 more days: 6 days to go: one Warning event, and the condition.
    state.advance_clock(Duration::from_secs(2 * 24 * 3600));
    let report = reconcile(&alice).await;
    assert_eq!(warned(&report), 1, "{:?}", report.events);
    let condition = find(&report.status.conditions, conditions::INVITATION_EXPIRING_SOON).unwrap().clone();
    assert_eq!(condition.status, "True");
    assert!(condition.message.contains(alice.status.as_ref().unwrap().invitation_expires_at.as_deref().unwrap()));
    assert!(is_true(&report.status.conditions, conditions::READY), "an expiring invitation is not a failure");
    alice.status = Some(report.status);

    // The next reconcile: the condition stays (same transition time), no second warning.
    state.advance_clock(Duration::from_secs(3600));
    let report = reconcile(&alice).await;
    assert_eq!(warned(&report), 0, "warned once per invitation, not every reconcile");
    let again = find(&report.status.conditions, conditions::INVITATION_EXPIRING_SOON).unwrap();
    assert_eq!(again.last_transition_time, condition.last_transition_time);
    alice.status = Some(report.status);

    // Accepted: the condition goes away.
    assert!(state.accept_invitation(&org, "alice@example.com"));
    let report = reconcile(&alice).await;
    assert_eq!(report.status.membership_status.as_deref(), Some("ACTIVE"));
    assert!(find(&report.status.conditions, conditions::INVITATION_EXPIRING_SOON).is_none());
}

// ---- issue 14: access that can be taken away --------------------------------------------

const P1: &str = "6a1b2c3d4e5f60718293a4b1";
const P2: &str = "6a1b2c3d4e5f60718293a4b2";
const P3: &str = "6a1b2c3d4e5f60718293a4b3";
const P4: &str = "6a1b2c3d4e5f60718293a4b4";

fn with_access(mut object: AtlasOrgUser, projects: &[(&str, ProjectRole)], teams: &[&str]) -> AtlasOrgUser {
    object.spec.project_roles =
        projects.iter().map(|(p, r)| ProjectRoleAssignment { project_id: p.to_string(), roles: vec![*r] }).collect();
    object.spec.team_ids = teams.iter().map(|t| t.to_string()).collect();
    object
}

fn roles_in(state: &SimState, org: &str, username: &str) -> BTreeMap<String, Vec<String>> {
    let user = state.org_users(org).into_iter().find(|u| u.username == username).expect("in the org");
    user.roles.group_role_assignments.into_iter().map(|a| (a.group_id.unwrap(), a.group_roles)).collect()
}

/// Revocation end to end: what the object granted and no longer lists is taken away, the rest
/// stays, and a project role someone else grants meanwhile survives the object's own change.
#[tokio::test]
async fn granted_projects_and_teams_are_taken_away_and_concurrent_grants_survive() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    let (t1, t2) = (state.add_team(&org, "one"), state.add_team(&org, "two"));
    let client = client(&sim, RetryPolicy::default());
    let index = OrgUserIndex::new(Duration::from_secs(60));
    let now = Timestamp::now();
    let alice = org_user("alice", &org, "alice@example.com", &[OrgRole::OrgMember]);
    let mut alice = with_access(alice, &[(P1, ProjectRole::GroupOwner), (P2, ProjectRole::GroupReadOnly)], &[&t1, &t2]);
    let report = reconcile_org_user(&client, &index, &alice, &[], Mode::Apply, now).await.unwrap();
    assert_eq!(report.status.granted.projects.len(), 2);
    assert_eq!(report.status.granted.team_ids.len(), 2);
    alice.status = Some(report.status);
    assert!(state.accept_invitation(&org, "alice@example.com"));

    // Someone else gives alice a role in P4 (not this object's) directly through the Atlas
    // API, after the listing the next plan is made from.
    let alice_id = state.org_users(&org)[0].id.clone();
    client.add_group_role(&org, P4, &alice_id, "GROUP_DATA_ACCESS_READ_ONLY").await.unwrap();
    // The spec drops P1 and team one, and adds P3.
    let mut next =
        with_access(alice.clone(), &[(P2, ProjectRole::GroupReadOnly), (P3, ProjectRole::GroupReadOnly)], &[&t2]);
    next.status = alice.status.clone();
    let report = reconcile_org_user(&client, &index, &next, &[], Mode::Apply, now).await.unwrap();
    let shown: Vec<String> = report.plan.plan.actions.iter().map(|a| a.to_string()).collect();
    assert_eq!(shown.len(), 3, "{shown:?}");
    assert!(shown[0].starts_with("add project role GROUP_READ_ONLY") && shown[0].contains(P3), "{shown:?}");
    assert!(shown[1].contains(&format!("from project {P1}")), "{shown:?}");
    assert!(shown[2].contains(&format!("from team {t1}")), "{shown:?}");
    assert!(report.outcomes.iter().all(|o| matches!(o, ActionOutcome::Done(_))), "{:?}", report.outcomes);

    let projects = roles_in(&state, &org, "alice@example.com");
    assert!(!projects.contains_key(P1), "P1 taken away: {projects:?}");
    assert_eq!(projects[P2], ["GROUP_READ_ONLY"]);
    assert_eq!(projects[P4], ["GROUP_DATA_ACCESS_READ_ONLY"], "the concurrent grant survives");
    assert_eq!(projects[P3], ["GROUP_READ_ONLY"]);
    assert!(state.team_member_ids(&org, &t1).is_empty());
    assert_eq!(state.team_member_ids(&org, &t2).len(), 1);
    let user = state.org_users(&org).into_iter().find(|u| u.username == "alice@example.com").unwrap();
    assert_eq!(user.org_membership_status, MembershipStatus::Active, "alice stays in the org");
    let granted: Vec<&str> = report.status.granted.projects.iter().map(|p| p.project_id.as_str()).collect();
    assert_eq!(granted, [P2, P3]);
    assert_eq!(report.status.granted.team_ids, [t2]);
    assert_eq!(state.counters().total("updateOrgUser"), 0, "no whole-roles PATCH");
}

/// The ownership record is written before the grant it covers; when that write fails,
/// nothing is sent to Atlas.
#[tokio::test]
async fn the_ownership_record_is_written_before_the_grant_or_nothing_is_sent() {
    struct Failing;
    impl PersistIntent<AtlasOrgUserStatus> for Failing {
        async fn persist_intent(&self, _: &AtlasOrgUserStatus) -> Result<(), IntentError> {
            Err(IntentError("the API server refused the status apply".into()))
        }
    }
    struct Checking(SimState, String, std::sync::Mutex<Vec<AtlasOrgUserStatus>>);
    impl PersistIntent<AtlasOrgUserStatus> for Checking {
        async fn persist_intent(&self, intent: &AtlasOrgUserStatus) -> Result<(), IntentError> {
            assert!(self.0.org_users(&self.1).is_empty(), "recorded before the invitation went out");
            self.2.lock().unwrap().push(intent.clone());
            Ok(())
        }
    }
    let (sim, state) = start();
    let org = state.add_org("acme");
    let client = client(&sim, RetryPolicy::default());
    let index = OrgUserIndex::new(Duration::from_secs(60));
    let alice = with_access(
        org_user("alice", &org, "alice@example.com", &[OrgRole::OrgMember]),
        &[(P1, ProjectRole::GroupOwner)],
        &[],
    );
    let now = Timestamp::now();
    let report = reconcile_org_user_recorded(&client, &index, &alice, &[], Mode::Apply, now, &Failing).await.unwrap();
    assert!(report.unrecorded.is_some());
    assert!(report.outcomes.iter().all(|o| *o == ActionOutcome::Skipped));
    assert_eq!(state.counters().total("createOrgUser"), 0, "nothing sent");
    assert!(report.events.iter().any(|e| e.warning && e.reason == events::OWNERSHIP_NOT_RECORDED));

    let checking = Checking(state.clone(), org.clone(), Default::default());
    let report = reconcile_org_user_recorded(&client, &index, &alice, &[], Mode::Apply, now, &checking).await.unwrap();
    assert!(report.unrecorded.is_none());
    let recorded = checking.2.lock().unwrap().clone();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].granted.projects[0].project_id, P1);
    assert_eq!(state.counters().total("createOrgUser"), 1);
}

/// Case 6: a write answered 404 because the user was removed in Atlas after the org was
/// listed: the listing is dropped, the org listed again, and the object planned anew from
/// that read (here: invited again) instead of `Stalled`.
#[tokio::test]
async fn a_404_against_the_cached_listing_reobserves_instead_of_stalling() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    state.add_user(&org, "owner@example.com", MembershipStatus::Active, &["ORG_OWNER"]);
    let alice_id = state.add_user(&org, "alice@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    let client = client(&sim, RetryPolicy::none());
    let index = OrgUserIndex::new(Duration::from_secs(600));
    let now = Timestamp::now();
    let alice = org_user("alice", &org, "alice@example.com", &[OrgRole::OrgMember]);
    reconcile_org_user(&client, &index, &alice, &[], Mode::Apply, now).await.unwrap();
    assert_eq!(index.listings(), 1);
    // Removed in Atlas by someone else; the index still lists alice.
    client.remove_org_user(&org, &alice_id).await.unwrap();
    let more = org_user("alice", &org, "alice@example.com", &[OrgRole::OrgMember, OrgRole::OrgReadOnly]);
    let report = reconcile_org_user(&client, &index, &more, &[], Mode::Apply, now).await.unwrap();
    assert_eq!(index.listings(), 2, "listed again after the 404");
    assert!(report.events.iter().any(|e| e.reason == events::REOBSERVED), "{:?}", report.events);
    assert!(matches!(report.plan.plan.actions[..], [atlas_access_operator::reconcile::Action::CreateOrgUser { .. }]));
    assert!(!is_true(&report.status.conditions, conditions::STALLED), "{:?}", report.status.conditions);
    assert_eq!(report.status.membership_status.as_deref(), Some("PENDING"));
}

/// At Atlas's limit of 250 users a team, a swap (one out, one in) succeeds in one pass: the
/// removal has finished before the addition starts, even when `:removeUser` is slow.
#[tokio::test]
async fn a_swap_at_250_members_removes_before_it_adds() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    let team_id = state.add_team(&org, "full");
    let usernames: Vec<String> = (0..251).map(|i| format!("m{i:03}@example.com")).collect();
    for (i, username) in usernames.iter().enumerate() {
        let id = state.add_user(&org, username, MembershipStatus::Active, &["ORG_MEMBER"]);
        if i < 250 {
            assert!(state.add_team_member(&org, &team_id, &id));
        }
    }
    // m000 out, m250 in.
    let mut team = team_membership(
        "full",
        &org,
        TeamRef { id: Some(team_id.clone()), name: None },
        usernames[1..].iter().map(|u| by_name(u)).collect(),
    );
    team.spec.mode = MembershipMode::Exclusive;
    state.set_faults(FaultConfig::for_operation("removeOrgTeamUser", FaultSpec::latency(Duration::from_millis(300))));
    let client = client(&sim, RetryPolicy::default());
    let index = OrgUserIndex::new(Duration::from_secs(60));
    let around = TeamSurroundings::default();
    let report = reconcile_team_membership(&client, &index, &team, &around, Mode::Apply, Timestamp::now(), &InMemory)
        .await
        .unwrap();
    assert_eq!(report.plan.plan.actions.len(), 2, "{}", report.plan.plan);
    assert!(report.outcomes.iter().all(|o| matches!(o, ActionOutcome::Done(_))), "{:?}", report.outcomes);
    assert!(is_true(&report.status.conditions, conditions::READY), "{:?}", report.status.conditions);
    let members = state.team_member_ids(&org, &team_id);
    assert_eq!(members.len(), 250);
}

/// The team is resolved once by name and pinned by id: renamed, it is still the one managed;
/// a new team taking the old name is never touched.
#[tokio::test]
async fn a_renamed_team_keeps_being_managed_and_a_new_team_of_the_old_name_is_left_alone() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    let team_id = state.add_team(&org, "devs");
    state.add_user(&org, "alice@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    state.add_user(&org, "bob@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    let client = client(&sim, RetryPolicy::default());
    let index = OrgUserIndex::new(Duration::from_secs(60));
    let around = TeamSurroundings::default();
    let now = Timestamp::now();
    let mut team = team_membership(
        "devs",
        &org,
        TeamRef { id: None, name: Some("devs".into()) },
        vec![by_name("alice@example.com")],
    );
    let report = reconcile_team_membership(&client, &index, &team, &around, Mode::Apply, now, &InMemory).await.unwrap();
    assert_eq!(report.status.team_id.as_deref(), Some(team_id.as_str()));
    team.status = Some(report.status);

    assert!(state.rename_team(&org, &team_id, "developers"));
    let impostor = state.add_team(&org, "devs");
    team.spec.members.push(by_name("bob@example.com"));
    let report = reconcile_team_membership(&client, &index, &team, &around, Mode::Apply, now, &InMemory).await.unwrap();
    assert_eq!(report.status.team_id.as_deref(), Some(team_id.as_str()));
    assert_eq!(state.team_member_ids(&org, &team_id).len(), 2, "bob joined the pinned team");
    assert!(state.team_member_ids(&org, &impostor).is_empty(), "the new team of the old name is left alone");
}

/// A team re-triggered by one member's change (here: its `orgUserRef` now resolves, and the
/// user was just invited) plans from the member listing the engine made itself and kept up to
/// date from its own writes: no second `listOrgTeamUsers` until the listing is due.
#[tokio::test]
async fn a_member_change_re_plans_the_team_from_its_remembered_listing() {
    let (sim, state) = start();
    let org = state.add_org("acme");
    let team_id = state.add_team(&org, "platform-admins");
    state.add_user(&org, "carol@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    let client = client(&sim, RetryPolicy::default());
    let index = OrgUserIndex::new(Duration::from_secs(600)).with_member_listing_interval(Duration::from_secs(240));
    let team = team_membership(
        "admins",
        &org,
        TeamRef { id: Some(team_id.clone()), name: None },
        vec![by_name("carol@example.com"), by_ref("dave")],
    );
    let now = Timestamp::now();
    let nobody = TeamSurroundings::default();
    let report = reconcile_team_membership(&client, &index, &team, &nobody, Mode::Apply, now, &InMemory).await.unwrap();
    assert_eq!(state.team_member_ids(&org, &team_id).len(), 1, "carol");
    assert_eq!(state.counters().total("listOrgTeamUsers"), 1);
    let team = AtlasTeamMembership { status: Some(report.status.clone()), ..team };

    // dave's AtlasOrgUser appears and is invited: its status change re-triggers the team.
    let dave = org_user("dave", &org, "dave@example.com", &[OrgRole::OrgMember]);
    reconcile_org_user(&client, &index, &dave, &[], Mode::Apply, now).await.unwrap();
    state.reset_counters();
    let around = TeamSurroundings {
        org_user_refs: std::sync::Arc::new(BTreeMap::from([("dave".to_string(), "dave@example.com".to_string())])),
        writers: vec![],
    };
    let report = reconcile_team_membership(&client, &index, &team, &around, Mode::Apply, now, &InMemory).await.unwrap();
    let counters = state.counters();
    assert_eq!(counters.total("listOrgTeamUsers"), 0, "{counters:?}");
    assert_eq!(counters.total("addOrgTeamUser"), 1, "{counters:?}");
    assert_eq!(state.team_member_ids(&org, &team_id).len(), 2, "carol and dave");

    // Once more: the remembered listing holds dave (from the add's answer): nothing to do.
    state.reset_counters();
    let team = AtlasTeamMembership { status: Some(report.status.clone()), ..team };
    let report = reconcile_team_membership(&client, &index, &team, &around, Mode::Apply, now, &InMemory).await.unwrap();
    assert!(report.plan.plan.actions.is_empty(), "{:?}", report.plan.plan.actions);
    assert_eq!(state.counters().total_requests(), 0, "{:?}", state.counters());
    assert_eq!(report.status.member_count, Some(2));
}
