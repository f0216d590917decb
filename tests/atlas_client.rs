//! The Atlas client against the in-process simulator: both authentication methods, every
//! operation, every error class, pagination, rate limits, faults, safe retries of
//! invitations (the canary-secret test is in `atlas_secrets.rs`, alone in its binary so it
//! can own the global log subscriber).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use atlas_access_operator::atlas::models::{
    GroupRoleAssignment, MembershipStatus, OrgUserRequest, OrgUserRoles, OrgUserUpdateRequest, codes,
};
use atlas_access_operator::atlas::{
    AtlasClient, AtlasError, ClientConfig, Credentials, ErrorClass, ListOrgUsersQuery, Operation, OrgRateLimiter,
    RetryPolicy, TransportKind,
};
use atlas_access_operator::sim::{BucketSpec, FaultConfig, FaultSpec, RateLimitConfig, SimConfig};
use common::atlas::{api_key, client, config, fast_retry, service_account};
use common::sim::{self, Sim};
use futures::future::join_all;

fn invite(username: &str, roles: &[&str]) -> OrgUserRequest {
    OrgUserRequest {
        username: username.into(),
        roles: OrgUserRoles {
            org_roles: roles.iter().map(|r| r.to_string()).collect(),
            group_role_assignments: vec![],
        },
        team_ids: vec![],
    }
}

fn start() -> Sim {
    sim::start(sim::config())
}

// ---- authentication ---------------------------------------------------------------------------

#[tokio::test]
async fn api_key_answers_one_challenge_then_reuses_it() {
    let sim = start();
    let atlas = client(&sim, api_key());
    for _ in 0..5 {
        assert_eq!(atlas.get_org(&sim.org).await.unwrap().name, "test-org");
    }
    // Concurrent calls share the nonce too (each with its own nonce count).
    let calls = (0..10).map(|_| atlas.get_org(&sim.org));
    assert!(join_all(calls).await.iter().all(Result::is_ok));
    let counters = sim.state.counters();
    assert_eq!(counters.digest_challenges, 1);
    assert_eq!(counters.count("getOrg", 401), 1);
    assert_eq!(counters.count("getOrg", 200), 15);
}

/// A fresh client starting many calls at once fetches the challenge with one of them: the
/// others wait for its 401 instead of each drawing one (and being sent twice).
#[tokio::test]
async fn concurrent_first_calls_draw_one_challenge() {
    let sim = start();
    let atlas = client(&sim, api_key());
    let calls = (0..20).map(|_| atlas.get_org(&sim.org));
    assert!(join_all(calls).await.iter().all(Result::is_ok));
    let counters = sim.state.counters();
    assert_eq!(counters.digest_challenges, 1);
    assert_eq!(counters.count("getOrg", 401), 1);
    assert_eq!(counters.count("getOrg", 200), 20);
}

/// An Atlas that never answers the request fetching the challenge: the calls waiting for it
/// go on their own once it times out, so each fails after at most two timeouts, not one per
/// caller ahead of it.
#[tokio::test]
async fn a_wedged_challenge_fetch_holds_each_waiter_one_timeout_at_most() {
    let sim = start();
    sim.state.set_faults(FaultConfig::for_operation("getOrg", FaultSpec::latency(Duration::from_secs(10))));
    let atlas = AtlasClient::new(ClientConfig {
        timeout: Duration::from_millis(300),
        retry: RetryPolicy { max_attempts: 1, ..fast_retry() },
        max_concurrency: 8,
        ..config(&sim, api_key())
    })
    .unwrap();
    let started = Instant::now();
    let results = join_all((0..8).map(|_| atlas.get_org(&sim.org))).await;
    let elapsed = started.elapsed();
    for result in &results {
        assert!(matches!(result, Err(AtlasError::Transport { kind: TransportKind::Timeout, .. })), "{result:?}");
    }
    // The fetch's timeout, then each waiter's own: 0.6 s, where waiting in line would be 2.4 s.
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
}

#[tokio::test]
async fn bad_api_key_is_an_auth_error_without_retries() {
    let sim = start();
    let credentials = Credentials::ApiKey { public_key: sim::PUBLIC_KEY.into(), private_key: "wrong".into() };
    let atlas = client(&sim, credentials);
    let err = atlas.get_org(&sim.org).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth);
    assert_eq!(err.status(), Some(401));
    assert_eq!(err.error_code(), Some(codes::UNAUTHORIZED));
    // The challenge, then the refused answer: no loop, no retry.
    assert_eq!(sim.state.counters().count("getOrg", 401), 2);
    assert_eq!(atlas.metrics().retry_count("getOrg"), 0);
    assert_eq!(atlas.metrics().call_count("getOrg", "auth"), 1);
}

#[tokio::test]
async fn service_account_concurrent_calls_fetch_one_token() {
    let sim = start();
    let atlas = client(&sim, service_account());
    let query = ListOrgUsersQuery::default();
    let calls = (0..25).map(|_| atlas.list_org_users(&sim.org, &query));
    for users in join_all(calls).await {
        assert_eq!(users.unwrap().len(), 1);
    }
    assert_eq!(sim.state.counters().tokens_issued, 1);
    assert_eq!(atlas.metrics().token_fetch_count("success"), 1);
    assert_eq!(sim.state.counters().count("listOrgUsers", 401), 0);
    let log = sim.state.request_log();
    assert!(
        log.iter()
            .filter(|r| r.operation_id == "listOrgUsers")
            .all(|r| r.principal.as_deref() == Some(&format!("serviceAccount:{}", sim::CLIENT_ID)[..]))
    );
}

#[tokio::test]
async fn service_account_token_is_refreshed_before_it_expires() {
    let sim = sim::start(SimConfig { token_ttl: Duration::from_secs(2), ..sim::config() });
    let atlas = client(&sim, service_account());
    atlas.get_org(&sim.org).await.unwrap();
    atlas.get_org(&sim.org).await.unwrap();
    assert_eq!(sim.state.counters().tokens_issued, 1);
    // A 2 s token is used for half its life, then replaced before Atlas would refuse it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    atlas.get_org(&sim.org).await.unwrap();
    assert_eq!(sim.state.counters().tokens_issued, 2);
    assert_eq!(sim.state.counters().count("getOrg", 401), 0);
}

#[tokio::test]
async fn refused_token_is_dropped_and_fetched_again_once() {
    let sim = start();
    let atlas = client(&sim, service_account());
    atlas.get_org(&sim.org).await.unwrap();
    // Atlas's clock says the token has expired although the client thinks it is fresh.
    sim.state.advance_clock(Duration::from_secs(7200));
    atlas.get_org(&sim.org).await.unwrap();
    let counters = sim.state.counters();
    assert_eq!(counters.tokens_issued, 2);
    assert_eq!(counters.count("getOrg", 401), 1);
    assert_eq!(counters.count("getOrg", 200), 2);
}

#[tokio::test]
async fn bad_service_account_secret_is_an_auth_error() {
    let sim = start();
    let credentials =
        Credentials::ServiceAccount { client_id: sim::CLIENT_ID.into(), client_secret: "not-the-secret".into() };
    let atlas = client(&sim, credentials);
    let err = atlas.get_org(&sim.org).await.unwrap_err();
    assert!(matches!(err, AtlasError::Token { status: 401, .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Auth);
    assert_eq!(err.operation(), Some("oauthToken"));
    assert_eq!(sim.state.counters().total("getOrg"), 0, "no API call without a token");
    assert_eq!(atlas.metrics().token_fetch_count("failure"), 1);
}

// ---- operations -------------------------------------------------------------------------------

#[tokio::test]
async fn every_operation() {
    let sim = start();
    let atlas = client(&sim, api_key());
    let org = &sim.org;
    let project_a = "6a1b2c3d4e5f60718293a4b5";
    let project_b = "6a1b2c3d4e5f60718293a4b6";

    // getOrg
    let organization = atlas.get_org(org).await.unwrap();
    assert_eq!((organization.id.as_str(), organization.name.as_str()), (org.as_str(), "test-org"));

    // createOrgUser, and again: the existing user, not a failure or a second invitation.
    let created = atlas.create_org_user(org, &invite("alice@example.com", &["ORG_MEMBER"])).await.unwrap();
    assert!(created.created);
    let alice = created.user;
    assert_eq!(alice.org_membership_status, MembershipStatus::Pending);
    assert_eq!(alice.roles.org_roles, ["ORG_MEMBER"]);
    assert!(alice.invitation_expires_at.is_some());
    let again = atlas.create_org_user(org, &invite("alice@example.com", &["ORG_MEMBER"])).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.user.id, alice.id);
    assert_eq!(sim.state.org_users(org).iter().filter(|u| u.username == "alice@example.com").count(), 1);

    // listOrgUsers with its filters, and the username lookup.
    let everyone = atlas.list_org_users(org, &ListOrgUsersQuery::default()).await.unwrap();
    assert_eq!(everyone.len(), 2);
    let active = ListOrgUsersQuery { username: None, statuses: vec![MembershipStatus::Active] };
    assert_eq!(atlas.list_org_users(org, &active).await.unwrap()[0].username, "owner@example.com");
    let by_name = ListOrgUsersQuery { username: Some("ALICE@example.com".into()), statuses: vec![] };
    assert_eq!(atlas.list_org_users(org, &by_name).await.unwrap()[0].id, alice.id);
    assert_eq!(atlas.find_org_user_by_username(org, "alice@example.com").await.unwrap().unwrap().id, alice.id);
    assert_eq!(atlas.find_org_user_by_username(org, "nobody@example.com").await.unwrap(), None);

    // getOrgUser
    assert_eq!(atlas.get_org_user(org, &alice.id).await.unwrap().username, "alice@example.com");

    // addOrgUserRole / removeOrgUserRole (add first: a user keeps at least one role).
    let user = atlas.add_org_role(org, &alice.id, "ORG_READ_ONLY").await.unwrap();
    assert_eq!(user.roles.org_roles, ["ORG_MEMBER", "ORG_READ_ONLY"]);
    let user = atlas.remove_org_role(org, &alice.id, "ORG_MEMBER").await.unwrap();
    assert_eq!(user.roles.org_roles, ["ORG_READ_ONLY"]);

    // updateOrgUser, and project roles through it.
    let update = OrgUserUpdateRequest {
        roles: Some(OrgUserRoles {
            org_roles: vec!["ORG_MEMBER".into()],
            group_role_assignments: vec![GroupRoleAssignment {
                group_id: Some(project_a.into()),
                group_roles: vec!["GROUP_READ_ONLY".into()],
            }],
        }),
        team_ids: None,
    };
    let user = atlas.update_org_user(org, &alice.id, &update).await.unwrap();
    assert_eq!(user.roles.org_roles, ["ORG_MEMBER"]);
    let projects_update = |assignments: &[(&str, &str)]| OrgUserUpdateRequest {
        roles: Some(OrgUserRoles {
            org_roles: vec!["ORG_MEMBER".into()],
            group_role_assignments: assignments
                .iter()
                .map(|(project, role)| GroupRoleAssignment {
                    group_id: Some(project.to_string()),
                    group_roles: vec![role.to_string()],
                })
                .collect(),
        }),
        team_ids: None,
    };
    let both = projects_update(&[(project_a, "GROUP_READ_ONLY"), (project_b, "GROUP_DATA_ACCESS_READ_ONLY")]);
    let user = atlas.update_org_user(org, &alice.id, &both).await.unwrap();
    let projects: BTreeMap<_, _> = user
        .roles
        .group_role_assignments
        .iter()
        .map(|a| (a.group_id.clone().unwrap(), a.group_roles.clone()))
        .collect();
    assert_eq!(projects.len(), 2);
    assert_eq!(projects[project_b], ["GROUP_DATA_ACCESS_READ_ONLY"]);
    let only_b = projects_update(&[(project_b, "GROUP_DATA_ACCESS_READ_ONLY")]);
    let user = atlas.update_org_user(org, &alice.id, &only_b).await.unwrap();
    assert_eq!(user.roles.group_role_assignments.len(), 1, "the roles object replaces the projects");
    assert_eq!(user.roles.group_role_assignments[0].group_id.as_deref(), Some(project_b));
    assert_eq!(user.roles.org_roles, ["ORG_MEMBER"]);

    // Project users: addGroupUserRole / removeGroupUserRole (one role each, add first) and
    // removeGroupUser (the user leaves the project, not the org).
    let roles = atlas.add_group_role(org, project_b, &alice.id, "GROUP_OWNER").await.unwrap();
    assert_eq!(roles, ["GROUP_DATA_ACCESS_READ_ONLY", "GROUP_OWNER"]);
    let roles = atlas.remove_group_role(org, project_b, &alice.id, "GROUP_DATA_ACCESS_READ_ONLY").await.unwrap();
    assert_eq!(roles, ["GROUP_OWNER"]);
    let roles = atlas.add_group_role(org, project_a, &alice.id, "GROUP_READ_ONLY").await.unwrap();
    assert_eq!(roles, ["GROUP_READ_ONLY"], "a project the user was not in");
    atlas.remove_group_user(org, project_a, &alice.id).await.unwrap();
    let user = atlas.get_org_user(org, &alice.id).await.unwrap();
    assert_eq!(user.org_membership_status, MembershipStatus::Pending, "still in the org");
    let projects: Vec<_> = user.roles.group_role_assignments.iter().filter_map(|a| a.group_id.as_deref()).collect();
    assert_eq!(projects, [project_b]);

    // Teams: getOrgTeam, getOrgTeamByName (a name that needs encoding), listOrgTeams.
    let team = sim.state.add_team(org, "platform admins/ops");
    let other = sim.state.add_team(org, "readers");
    assert_eq!(atlas.get_team(org, &team).await.unwrap().name, "platform admins/ops");
    assert_eq!(atlas.get_team_by_name(org, "platform admins/ops").await.unwrap().id, team);
    let teams: HashSet<String> = atlas.list_teams(org).await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(teams, HashSet::from([team.clone(), other.clone()]));

    // addOrgTeamUser, listOrgTeamUsers, removeOrgTeamUser.
    let user = atlas.add_team_user(org, &team, &alice.id).await.unwrap();
    assert_eq!(user.team_ids, std::slice::from_ref(&team));
    assert_eq!(sim.state.team_member_ids(org, &team), std::slice::from_ref(&alice.id));
    let members = atlas.list_team_users(org, &team).await.unwrap();
    assert_eq!(members.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), [alice.id.as_str()]);
    assert!(atlas.list_team_users(org, &other).await.unwrap().is_empty());
    let user = atlas.remove_team_user(org, &team, &alice.id).await.unwrap();
    assert!(user.team_ids.is_empty());
    assert!(sim.state.team_member_ids(org, &team).is_empty());

    // removeOrgUser
    atlas.remove_org_user(org, &alice.id).await.unwrap();
    assert_eq!(sim.state.org_users(org).len(), 1);

    // Every operation was served, in the version the client asked for, and nothing else.
    let log = sim.state.request_log();
    for op in Operation::ALL {
        let served: Vec<_> =
            log.iter().filter(|r| r.operation_id == op.operation_id() && (200..300).contains(&r.status)).collect();
        assert!(!served.is_empty(), "{op:?} never succeeded");
        for request in served {
            let media = format!("application/vnd.atlas.{}+json", request.version.as_deref().unwrap());
            assert_eq!(media, op.media_type(), "{op:?}");
        }
    }
    // Besides the first digest challenge and the 409 of the repeated invitation, no refusals.
    let refused: Vec<_> = log.iter().filter(|r| r.status >= 300).map(|r| (r.operation_id.as_str(), r.status)).collect();
    assert_eq!(refused, [("getOrg", 401), ("createOrgUser", 409)]);
}

#[tokio::test]
async fn error_classes() {
    let sim = sim::start(SimConfig {
        rate_limits: RateLimitConfig::uniform(BucketSpec { capacity: 1, refill: 1, per: Duration::from_secs(30) }),
        ..sim::config()
    });
    let retry_none =
        |sim: &Sim| AtlasClient::new(ClientConfig { retry: RetryPolicy::none(), ..config(sim, api_key()) });
    let atlas = retry_none(&sim).unwrap();
    let org = &sim.org;
    let bob = sim.state.add_user(org, "bob@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);

    // NotFound: Atlas's code and detail reach the message users read.
    let err = atlas.get_org_user(org, "6a1b2c3d4e5f60718293a4b5").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);
    assert_eq!(err.error_code(), Some(codes::RESOURCE_NOT_FOUND));
    assert!(err.to_string().starts_with("Atlas getOrgUser answered HTTP 404 RESOURCE_NOT_FOUND: "), "{err}");
    assert!(err.to_string().contains(err.detail().unwrap()));
    sim.state.reset_rate_limits();
    let err = atlas.get_team_by_name(org, "no such team").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);

    // Permanent: the last role of a user.
    sim.state.reset_rate_limits();
    let err = atlas.remove_org_role(org, &bob, "ORG_MEMBER").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(err.error_code(), Some(codes::CANNOT_REMOVE_LAST_ORG_ROLE));
    // A team removal of a non-member: the spec names no code for the refusal, so the client
    // reads the user again and the goal (not in the team) holds.
    sim.state.reset_rate_limits();
    let team = sim.state.add_team(org, "t");
    let user = atlas.remove_team_user(org, &team, &bob).await.unwrap();
    assert!(!user.team_ids.contains(&team));
    let log = sim.state.request_log();
    let refused = log.iter().rposition(|r| r.operation_id == "removeOrgTeamUser" && r.status == 400).unwrap();
    assert!(log[refused..].iter().any(|r| r.operation_id == "getOrgUser" && r.status == 200), "settled by a read");

    // RateLimited: the second call in the same 30 s gets 429 + Retry-After.
    sim.state.reset_rate_limits();
    atlas.get_org(org).await.unwrap();
    let err = atlas.get_org(org).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited, "{err:?}");
    let Some(after) = err.retry_after() else { panic!("{err:?}") };
    assert!(after >= Duration::from_secs(1) && after <= Duration::from_secs(30), "{after:?}");
    assert_eq!(err.error_code(), Some(codes::RATE_LIMITED_TOKEN_BUCKET));
    assert_eq!(atlas.metrics().rate_limited_count("getOrg"), 1);

    // Transient: server errors past the retry budget.
    sim.state.reset_rate_limits();
    sim.state.set_faults(FaultConfig::for_operation("getOrgTeam", FaultSpec::errors(10)));
    let err = atlas.get_team(org, &team).await.unwrap_err();
    assert_eq!(
        (err.class(), err.status(), err.error_code()),
        (ErrorClass::Transient, Some(500), Some("UNEXPECTED_ERROR"))
    );
    // Transient: a dropped connection.
    sim.state.reset_rate_limits();
    sim.state.set_faults(FaultConfig::for_operation("getOrgTeam", FaultSpec::drops(1)));
    let err = atlas.get_team(org, &team).await.unwrap_err();
    assert!(matches!(err, AtlasError::Transport { kind: TransportKind::Interrupted, .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Transient);
    // RateLimited: 503 with Retry-After.
    sim.state.reset_rate_limits();
    sim.state.set_faults(FaultConfig::for_operation("getOrgTeam", FaultSpec::unavailable(1, 4)));
    let err = atlas.get_team(org, &team).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(4)));
    sim.state.clear_faults();

    // Conflict: an invitation of someone already in the org is answered 409, which the
    // client resolves to that user.
    sim.state.reset_rate_limits();
    let outcome = atlas.create_org_user(org, &invite("bob@example.com", &["ORG_MEMBER"])).await.unwrap();
    assert_eq!((outcome.user.id.as_str(), outcome.created), (bob.as_str(), false));
    assert_eq!(atlas.metrics().call_count("createOrgUser", "conflict"), 1);
    assert_eq!(sim.state.counters().count("createOrgUser", 409), 1);

    // Auth: wrong key.
    let bad = Credentials::ApiKey { public_key: "unknown".into(), private_key: "x".into() };
    let err = AtlasClient::new(ClientConfig { retry: RetryPolicy::none(), ..config(&sim, bad) })
        .unwrap()
        .get_org(org)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth);

    // Transient: nothing listening.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let nowhere =
        ClientConfig { base_url: format!("http://{closed}"), retry: RetryPolicy::none(), ..config(&sim, api_key()) };
    let err = AtlasClient::new(nowhere).unwrap().get_org(org).await.unwrap_err();
    assert!(matches!(err, AtlasError::Transport { kind: TransportKind::Connect, .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Transient);
    assert!(!err.may_have_been_applied());
}

// ---- pagination -------------------------------------------------------------------------------

#[tokio::test]
async fn lists_follow_pages_until_a_short_one() {
    let sim = start();
    let atlas = AtlasClient::new(ClientConfig { page_size: 3, ..config(&sim, api_key()) }).unwrap();
    let org = &sim.org;
    let team = sim.state.add_team(org, "big");
    // 1 owner + 7 = 8 users: pages of 3, 3, 2.
    for i in 0..7 {
        let id = sim.state.add_user(org, &format!("user{i}@example.com"), MembershipStatus::Active, &["ORG_MEMBER"]);
        if i < 6 {
            assert!(sim.state.add_team_member(org, &team, &id));
        }
    }
    let users = atlas.list_org_users(org, &ListOrgUsersQuery::default()).await.unwrap();
    let ids: HashSet<_> = users.iter().map(|u| u.id.clone()).collect();
    assert_eq!((users.len(), ids.len()), (8, 8));
    let pages = |op: &str| -> Vec<String> {
        sim.state
            .request_log()
            .into_iter()
            .filter(|r| r.operation_id == op && r.status == 200)
            .map(|r| r.path.split("pageNum=").nth(1).unwrap().to_string())
            .collect()
    };
    assert_eq!(pages("listOrgUsers"), ["1", "2", "3"]);

    // 6 members, an exact multiple of 3: the empty 3rd page ends the list.
    let members = atlas.list_team_users(org, &team).await.unwrap();
    assert_eq!(members.len(), 6);
    assert_eq!(pages("listOrgTeamUsers"), ["1", "2", "3"]);

    for name in ["a", "b", "c", "d"] {
        sim.state.add_team(org, name);
    }
    assert_eq!(atlas.list_teams(org).await.unwrap().len(), 5);
    assert_eq!(pages("listOrgTeams"), ["1", "2"]);

    // One page on request.
    let page = atlas.list_org_users_page(org, &ListOrgUsersQuery::default(), 3, 3).await.unwrap();
    assert_eq!(page.results.len(), 2);
}

// ---- rate limits ------------------------------------------------------------------------------

#[tokio::test]
async fn rate_limited_call_waits_retry_after() {
    let sim = sim::start(SimConfig {
        rate_limits: RateLimitConfig::uniform(BucketSpec { capacity: 2, refill: 1, per: Duration::from_secs(2) }),
        ..sim::config()
    });
    let atlas = client(&sim, api_key());
    atlas.get_org(&sim.org).await.unwrap();
    atlas.get_org(&sim.org).await.unwrap();
    let started = Instant::now();
    atlas.get_org(&sim.org).await.unwrap();
    let waited = started.elapsed();
    let counters = sim.state.counters();
    assert_eq!(counters.count("getOrg", 429), 1);
    // The 429 said Retry-After: 2.
    assert!(waited >= Duration::from_secs(2), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(4), "waited {waited:?}");
    assert_eq!(atlas.metrics().rate_limited_count("getOrg"), 1);
    assert_eq!(atlas.metrics().retry_count("getOrg"), 1);
    eprintln!("429 with Retry-After 2 s: call took {waited:?}");
}

#[tokio::test]
async fn limiter_slows_a_burst_before_atlas_answers_429() {
    // 10 requests, refilled 10 a second, per endpoint set and organization.
    let limits = RateLimitConfig::uniform(BucketSpec { capacity: 10, refill: 10, per: Duration::from_secs(1) });
    let sim = sim::start(SimConfig { rate_limits: limits, ..sim::config() });
    let paced = AtlasClient::new(ClientConfig {
        retry: RetryPolicy::none(),
        limiter: OrgRateLimiter::new(Duration::from_secs(1)),
        ..config(&sim, api_key())
    })
    .unwrap();
    let started = Instant::now();
    for _ in 0..30 {
        paced.get_org(&sim.org).await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(sim.state.counters().count("getOrg", 429), 0);
    // Only the calls the limiter held back count as throttled: not the burst that went at once.
    let throttled = paced.metrics().throttled_count("getOrg");
    assert!((15..30).contains(&throttled), "throttled {throttled} of 30");
    // 30 calls at 10 a second after a burst of ~9: about 2 s.
    assert!(elapsed >= Duration::from_millis(1800), "{elapsed:?}");
    let snapshot = paced.rate_limit(&sim.org, Operation::GetOrg).unwrap();
    assert_eq!(snapshot.limit, 10);
    eprintln!("30 paced calls under a 10/s limit: {elapsed:?}, 0 x 429");

    // The same burst without the limiter runs into 429s.
    sim.state.reset_rate_limits();
    let unpaced = AtlasClient::new(ClientConfig { retry: RetryPolicy::none(), ..config(&sim, api_key()) }).unwrap();
    let mut refused = 0;
    for _ in 0..30 {
        if let Err(e) = unpaced.get_org(&sim.org).await {
            assert!(e.class() == ErrorClass::RateLimited, "{e:?}");
            refused += 1;
        }
    }
    assert!(refused > 0);
    assert_eq!(unpaced.metrics().throttled_count("getOrg"), 0, "a disabled limiter delays nothing");
}

#[tokio::test]
async fn limiter_without_limits_to_keep_throttles_nothing() {
    // Atlas without rate limits (no RateLimit headers): the limiter is on but never waits.
    let sim = sim::start(sim::config().without_limits());
    let paced = AtlasClient::new(ClientConfig {
        limiter: OrgRateLimiter::new(Duration::from_secs(1)),
        ..config(&sim, api_key())
    })
    .unwrap();
    for _ in 0..50 {
        paced.get_org(&sim.org).await.unwrap();
    }
    assert_eq!(paced.metrics().call_count("getOrg", "success"), 50);
    assert_eq!(paced.metrics().throttled_count("getOrg"), 0);
}

// ---- faults -----------------------------------------------------------------------------------

#[tokio::test]
async fn server_error_burst_is_recovered() {
    let sim = start();
    let atlas = client(&sim, api_key());
    sim.state.set_faults(FaultConfig::for_operation("listOrgUsers", FaultSpec::errors(4)));
    let users = atlas.list_org_users(&sim.org, &ListOrgUsersQuery::default()).await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(sim.state.counters().count("listOrgUsers", 500), 4);
    assert_eq!(atlas.metrics().retry_count("listOrgUsers"), 4);
    assert_eq!(atlas.metrics().call_count("listOrgUsers", "success"), 1);
}

#[tokio::test]
async fn unavailable_with_retry_after_is_waited_out() {
    let sim = start();
    let atlas = client(&sim, api_key());
    sim.state.set_faults(FaultConfig::for_operation("getOrg", FaultSpec::unavailable(1, 1)));
    let started = Instant::now();
    atlas.get_org(&sim.org).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(sim.state.counters().count("getOrg", 503), 1);
}

#[tokio::test]
async fn dropped_connections_are_recovered() {
    let sim = start();
    let atlas = client(&sim, api_key());
    sim.state.set_faults(FaultConfig::for_operation("getOrgUser", FaultSpec::drops(2)));
    let user = atlas.get_org_user(&sim.org, &sim.owner).await.unwrap();
    assert_eq!(user.username, "owner@example.com");
    assert_eq!(sim.state.counters().connections_dropped, 2);
    assert_eq!(atlas.metrics().retry_count("getOrgUser"), 2);
}

#[tokio::test]
async fn invitation_anti_abuse_400_is_retried() {
    // 60 invitations a minute per IP: a burst of 60, then one a second; the client's queue
    // knows the same limit.
    let sim = sim::start(SimConfig { invitations_per_minute: Some(60), ..sim::config() });
    let queue = atlas_access_operator::atlas::InvitationQueue::per_minute(60);
    let atlas = AtlasClient::new(ClientConfig { invitations: queue, ..config(&sim, api_key()) }).unwrap();
    // The queue's burst is full from its creation: the 61st invitation cannot leave before
    // one refill interval after it, however long the burst itself took (a loaded machine
    // only makes that longer).
    let queue_created = Instant::now();
    for i in 0..60 {
        atlas.create_org_user(&sim.org, &invite(&format!("burst{i}@example.com"), &["ORG_MEMBER"])).await.unwrap();
    }
    let outcome = atlas.create_org_user(&sim.org, &invite("late@example.com", &["ORG_MEMBER"])).await.unwrap();
    assert!(outcome.created);
    // It waited its turn in the queue (a second after the burst began); at exactly Atlas's
    // rate the queue may still be a few milliseconds early once, and is then refused and
    // paused once.
    assert!(sim.state.counters().invitations_rate_limited <= 1);
    assert!(queue_created.elapsed() >= Duration::from_millis(950), "{:?}", queue_created.elapsed());
    assert_eq!(sim.state.org_users(&sim.org).len(), 62);

    // Without retries the caller sees the class that tells it to wait.
    let once = AtlasClient::new(ClientConfig { retry: RetryPolicy::none(), ..config(&sim, api_key()) }).unwrap();
    let err = once.create_org_user(&sim.org, &invite("later@example.com", &["ORG_MEMBER"])).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited);
    assert_eq!(err.retry_after(), None);
    assert_eq!((err.status(), err.error_code()), (Some(400), Some(codes::INVITATIONS_RATE_LIMITED_IP)));
}

#[tokio::test]
async fn invitation_retried_after_a_timeout_does_not_duplicate_the_user() {
    let sim = start();
    let atlas = AtlasClient::new(ClientConfig {
        timeout: Duration::from_millis(300),
        retry: RetryPolicy { min_delay: Duration::from_millis(600), jitter: false, ..fast_retry() },
        ..config(&sim, api_key())
    })
    .unwrap();
    // Warm the digest challenge so the only slow request is the invitation.
    atlas.get_org(&sim.org).await.unwrap();
    sim.state.set_faults(FaultConfig::for_operation("createOrgUser", FaultSpec::latency(Duration::from_secs(1))));
    // Atlas applies the invitation, but its answer is lost: the client times out at 300 ms.
    let state = sim.state.clone();
    let org = sim.org.clone();
    let applied = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        state.add_user(&org, "carol@example.com", MembershipStatus::Pending, &["ORG_MEMBER"]);
        state.clear_faults();
    });
    let outcome = atlas.create_org_user(&sim.org, &invite("carol@example.com", &["ORG_MEMBER"])).await.unwrap();
    applied.await.unwrap();
    // The retry met 409 and resolved to the user the first attempt invited.
    assert!(outcome.created, "the timed-out attempt invited carol");
    assert_eq!(outcome.user.username, "carol@example.com");
    assert_eq!(outcome.user.org_membership_status, MembershipStatus::Pending);
    let carols = sim.state.org_users(&sim.org).into_iter().filter(|u| u.username == "carol@example.com").count();
    assert_eq!(carols, 1);
    assert!(sim.state.counters().count("createOrgUser", 409) >= 1);
    assert_eq!(atlas.metrics().retry_count("createOrgUser"), 1);
}

#[tokio::test]
async fn team_removal_applied_by_a_lost_attempt_counts_as_done() {
    let sim = start();
    let atlas = AtlasClient::new(ClientConfig {
        timeout: Duration::from_millis(300),
        retry: RetryPolicy { min_delay: Duration::from_millis(600), jitter: false, ..fast_retry() },
        ..config(&sim, api_key())
    })
    .unwrap();
    let team = sim.state.add_team(&sim.org, "t");
    assert!(sim.state.add_team_member(&sim.org, &team, &sim.owner));
    atlas.get_org(&sim.org).await.unwrap();
    sim.state.set_faults(FaultConfig::for_operation("removeOrgTeamUser", FaultSpec::latency(Duration::from_secs(1))));
    let removal = atlas.remove_team_user(&sim.org, &team, &sim.owner);
    // Atlas applies the removal but the answer is lost (the client times out at 300 ms).
    let applied = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        sim.state.clear_faults();
        let media = sim::media(sim::V2025);
        let path = format!("/api/atlas/v2/orgs/{}/teams/{team}:removeUser", sim.org);
        let body = serde_json::to_vec(&serde_json::json!({"id": sim.owner})).unwrap();
        let headers = [("Accept", media.as_str()), ("Content-Type", media.as_str())];
        assert_eq!(sim.api.send(reqwest::Method::POST, &path, &headers, Some(body)).await.status, 200);
    };
    let (result, ()) = tokio::join!(removal, applied);
    // The retry met 400 USER_NOT_IN_TEAM; the user is out of the team, which was the point.
    let user = result.unwrap();
    assert!(!user.team_ids.contains(&team));
    assert!(sim.state.team_member_ids(&sim.org, &team).is_empty());
    let refused = sim
        .state
        .request_log()
        .into_iter()
        .filter(|r| r.operation_id == "removeOrgTeamUser")
        .any(|r| r.status == 400 && r.error_code.as_deref() == Some(codes::USER_NOT_IN_TEAM));
    assert!(refused, "the retry was refused and settled by reading the user");
}
