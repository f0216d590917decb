//! Pacing at Atlas's real limits, the client against the simulator: the invitation queue
//! across organizations (order, rate, no herd after a refusal), `Retry-After` to the second,
//! per-credential backoff after a refusal, and a token endpoint that never answers.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atlas_access_operator::atlas::models::{OrgUserRequest, OrgUserRoles};
use atlas_access_operator::atlas::{
    AtlasClient, AtlasError, ClientConfig, Credentials, ErrorClass, InvitationQueue, OrgRateLimiter, RetryPolicy,
    TransportKind,
};
use atlas_access_operator::sim::{BucketSpec, FaultConfig, FaultSpec, RateLimitConfig, SimConfig};
use common::atlas::{api_key, config, fast_retry, service_account};
use common::sim::{self, Sim};
use secrecy::SecretString;

fn invite(username: &str) -> OrgUserRequest {
    OrgUserRequest {
        username: username.into(),
        roles: OrgUserRoles { org_roles: vec!["ORG_MEMBER".into()], group_role_assignments: vec![] },
        team_ids: vec![],
    }
}

/// 4 invitations per 2 s per IP (a burst of 4, then one every 500 ms), as Atlas's 10 a minute
/// scaled down.
fn invitation_sim() -> Sim {
    sim::start(SimConfig {
        invitations_per_minute: Some(4),
        invitation_period: Duration::from_secs(2),
        ..sim::config()
    })
}

fn queued_client(sim: &Sim, queue: InvitationQueue) -> AtlasClient {
    AtlasClient::new(ClientConfig {
        invitations: queue,
        invitation_max_wait: Duration::from_secs(60),
        ..config(sim, api_key())
    })
    .unwrap()
}

/// Invite `users` (org, username) concurrently, arriving in order; returns when each
/// invitation completed, in completion order.
async fn invite_all(client: &AtlasClient, users: Vec<(String, String)>) -> Vec<(String, Duration)> {
    let started = Instant::now();
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (org, username) in users {
        let (client, done) = (client.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = client.create_org_user(&org, &invite(&username)).await.unwrap();
            assert!(outcome.created, "{username}");
            done.lock().unwrap().push((username, started.elapsed()));
        }));
        // Arrive in a defined order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(done).unwrap().into_inner().unwrap()
}

#[tokio::test]
async fn invitation_queue_across_two_orgs_keeps_order_and_rate() {
    let sim = invitation_sim();
    let other_org = sim.state.add_org("second-org");
    let client = queued_client(&sim, InvitationQueue::new(4, Duration::from_secs(2)));
    let users: Vec<(String, String)> = (0..10)
        .map(|i| {
            let org = if i % 2 == 0 { sim.org.clone() } else { other_org.clone() };
            (org, format!("user{i}@example.com"))
        })
        .collect();
    let done = invite_all(&client, users.clone()).await;

    // First come, first served across both organizations.
    let order: Vec<&str> = done.iter().map(|(u, _)| u.as_str()).collect();
    let expected: Vec<&str> = users.iter().map(|(_, u)| u.as_str()).collect();
    assert_eq!(order, expected);
    // A burst of 4, then one every 500 ms (and 2% of it): the 10th after about 3 s.
    for (i, (_, at)) in done.iter().enumerate().skip(4) {
        let due = Duration::from_millis(510) * (i as u32 - 3);
        assert!(*at >= due - Duration::from_millis(60), "invitation {i} at {at:?}, due {due:?}");
        assert!(*at <= due + Duration::from_millis(400), "invitation {i} at {at:?}, due {due:?}");
    }
    // Never refused: the queue knew the limit.
    assert_eq!(sim.state.counters().invitations_rate_limited, 0);
    assert_eq!(client.invitations().snapshot().queued, 0);
}

#[tokio::test]
async fn a_refused_invitation_pauses_the_queue_without_a_herd() {
    let sim = invitation_sim();
    let other_org = sim.state.add_org("second-org");
    // Another replica behind the same NAT (its own queue) used the IP's whole burst.
    let replica = queued_client(&sim, InvitationQueue::new(4, Duration::from_secs(2)));
    for i in 0..4 {
        replica.create_org_user(&sim.org, &invite(&format!("replica{i}@example.com"))).await.unwrap();
    }
    // This process believes it has a full burst: its first invitation is refused, goes back
    // to the head, and the queue pauses an interval instead of letting the others try.
    let client = queued_client(&sim, InvitationQueue::new(4, Duration::from_secs(2)));
    let users: Vec<(String, String)> = (0..8)
        .map(|i| {
            let org = if i % 2 == 0 { other_org.clone() } else { sim.org.clone() };
            (org, format!("user{i}@example.com"))
        })
        .collect();
    let done = invite_all(&client, users.clone()).await;
    let order: Vec<&str> = done.iter().map(|(u, _)| u.as_str()).collect();
    let expected: Vec<&str> = users.iter().map(|(_, u)| u.as_str()).collect();
    assert_eq!(order, expected, "the refused invitation went first when the queue resumed");

    let refused = sim.state.counters().invitations_rate_limited;
    let snapshot = client.invitations().snapshot();
    assert_eq!(snapshot.refused, refused);
    // One invitation in flight at a time: a refusal hits one, and the pause that follows
    // lets Atlas refill. The old client retried every waiting invitation together.
    assert!((1..=3).contains(&refused), "{refused} refusals for 8 invitations");
    // (Each client's first request meets the digest challenge: a 401.)
    let creates: Vec<_> = sim
        .state
        .request_log()
        .into_iter()
        .filter(|r| r.operation_id == "createOrgUser" && r.status != 401)
        .skip(4)
        .collect();
    assert_eq!(creates.len() as u64, 8 + refused);
    assert_eq!(client.metrics().invitations_refused.get(), refused);
}

#[tokio::test]
async fn an_invitation_far_back_in_the_queue_reports_its_place() {
    let sim = invitation_sim();
    let queue = InvitationQueue::new(1, Duration::from_secs(30));
    let client = AtlasClient::new(ClientConfig {
        invitations: queue.clone(),
        invitation_max_wait: Duration::from_secs(5),
        ..config(&sim, api_key())
    })
    .unwrap();
    client.create_org_user(&sim.org, &invite("first@example.com")).await.unwrap();
    let err = client.create_org_user(&sim.org, &invite("second@example.com")).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited);
    assert!(matches!(err, AtlasError::InvitationQueued { position: 0, .. }), "{err:?}");
    assert!(err.to_string().starts_with("invitation queued: number 1 in line, to be sent in about 30s"), "{err}");
    // The caller comes back when the turn is near: 30.6 s minus half of what it may wait.
    let back = err.retry_after().unwrap();
    assert!(back >= Duration::from_secs(27) && back <= Duration::from_secs(29), "{back:?}");
    // Nothing was sent, and the place is kept.
    assert_eq!(sim.state.counters().count("createOrgUser", 201), 1);
    assert_eq!(sim.state.counters().invitations_rate_limited, 0);
    let key = format!("{}/second@example.com", sim.org);
    assert_eq!(queue.place(&key).unwrap().position, 0);
}

/// A client that paces on Atlas's headers the way the operator does (per-minute window).
fn paced_client(sim: &Sim) -> AtlasClient {
    AtlasClient::new(ClientConfig { limiter: OrgRateLimiter::new(Duration::from_secs(60)), ..config(sim, api_key()) })
        .unwrap()
}

#[tokio::test]
async fn after_a_429_the_next_request_goes_at_retry_after() {
    // The `orgs` set: 20 a minute, so an empty bucket answers `Retry-After: 3`.
    let limits = RateLimitConfig::uniform(BucketSpec::per_minute(20));
    let sim = sim::start(SimConfig { rate_limits: limits, ..sim::config() });
    let client = paced_client(&sim);
    client.get_org(&sim.org).await.unwrap();
    // Another replica empties the bucket: this client's count is stale by 19.
    let replica = common::atlas::client(&sim, api_key());
    for _ in 0..19 {
        replica.get_org(&sim.org).await.unwrap();
    }
    let started = Instant::now();
    client.get_org(&sim.org).await.unwrap();
    let took = started.elapsed();
    assert_eq!(sim.state.counters().count("getOrg", 429), 1);
    // At Retry-After (3 s) within 10%, not after the reserve refilled too (3 more tokens, 9 s).
    assert!(took >= Duration::from_millis(2700) && took <= Duration::from_millis(3300), "{took:?}");
    // The local count came from the answers, not from a drained bucket.
    let snapshot = client.rate_limit(&sim.org, atlas_access_operator::atlas::Operation::GetOrg).unwrap();
    assert_eq!(snapshot.limit, 20);
}

#[tokio::test]
async fn after_a_503_with_retry_after_the_next_request_goes_at_retry_after() {
    let sim = sim::start(sim::config());
    let client = paced_client(&sim);
    client.get_org(&sim.org).await.unwrap();
    sim.state.set_faults(FaultConfig::for_operation("getOrg", FaultSpec::unavailable(1, 2)));
    let started = Instant::now();
    client.get_org(&sim.org).await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1800) && took <= Duration::from_millis(2200), "{took:?}");
}

fn bad_key_client(sim: &Sim, backoff: Duration) -> AtlasClient {
    let credentials =
        Credentials::ApiKey { public_key: common::sim::PUBLIC_KEY.into(), private_key: SecretString::from("wrong") };
    AtlasClient::new(ClientConfig {
        auth_backoff: backoff,
        max_concurrency: 4,
        credential_name: Some("Secret team-a/atlas-key".into()),
        ..config(sim, credentials)
    })
    .unwrap()
}

#[tokio::test]
async fn one_bad_key_costs_a_bounded_number_of_calls_per_interval() {
    let sim = sim::start(sim::config());
    let bad = bad_key_client(&sim, Duration::from_secs(1));
    let objects = 50;
    let calls = || {
        futures::future::join_all((0..objects).map(|_| {
            let bad = bad.clone();
            let org = sim.org.clone();
            async move { bad.list_org_users(&org, &Default::default()).await }
        }))
    };
    let results = calls().await;
    let first_wave = sim.state.counters().total("listOrgUsers");
    // At most the client's concurrency got through before the first refusal was known
    // (each: the digest challenge, then the refused answer); the rest failed fast.
    assert!(first_wave <= 8, "{first_wave} requests for {objects} objects");
    let fast: Vec<_> = results.iter().filter(|r| matches!(r, Err(AtlasError::CredentialBackoff { .. }))).collect();
    assert!(fast.len() >= objects - 4, "{} of {objects} failed fast", fast.len());
    let err = fast[0].as_ref().unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth);
    assert!(err.to_string().starts_with("Secret team-a/atlas-key refused by Atlas"), "{err}");
    assert!(err.to_string().contains("UNAUTHORIZED"), "{err}");
    assert!(bad.credentials_refused());

    // Within the interval: nothing reaches Atlas.
    calls().await;
    assert_eq!(sim.state.counters().total("listOrgUsers"), first_wave);
    // After it: one probe, whatever the number of objects.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let results = calls().await;
    let probes = sim.state.counters().total("listOrgUsers") - first_wave;
    assert!((1..=2).contains(&probes), "{probes} requests in the second interval");
    assert!(results.iter().all(|r| r.is_err()));

    // A changed Secret is a new client: it works at once.
    let good = common::atlas::client(&sim, api_key());
    assert!(good.list_org_users(&sim.org, &Default::default()).await.is_ok());
}

#[tokio::test]
async fn a_token_endpoint_that_never_answers_times_out_and_holds_no_one_else() {
    let sim = sim::start(sim::config());
    // The token endpoint accepts the connection and never answers.
    sim.state.set_faults(FaultConfig::for_operation("oauthToken", FaultSpec::latency(Duration::from_secs(3600))));
    let wedged = AtlasClient::new(ClientConfig {
        token_timeout: Duration::from_millis(500),
        retry: RetryPolicy::none(),
        ..config(&sim, service_account())
    })
    .unwrap();
    let healthy = AtlasClient::new(ClientConfig { retry: fast_retry(), ..config(&sim, api_key()) }).unwrap();

    let started = Instant::now();
    let wedged_calls = futures::future::join_all((0..8).map(|_| {
        let (wedged, org) = (wedged.clone(), sim.org.clone());
        async move {
            let result = wedged.get_org(&org).await;
            (result, started.elapsed())
        }
    }));
    let healthy_calls = async {
        let mut finished = Vec::new();
        for _ in 0..20 {
            healthy.get_org(&sim.org).await.unwrap();
            finished.push(started.elapsed());
        }
        finished
    };
    let (wedged_results, healthy_finished) = futures::join!(wedged_calls, healthy_calls);
    // The other credential's calls went on while the token request hung.
    let last_healthy = *healthy_finished.last().unwrap();
    assert!(last_healthy < Duration::from_millis(500), "healthy calls done at {last_healthy:?}");
    for (result, at) in &wedged_results {
        let err = result.as_ref().unwrap_err();
        assert!(
            matches!(err, AtlasError::Transport { operation: "oauthToken", kind: TransportKind::Timeout, .. }),
            "{err:?}"
        );
        // Callers behind the hung fetch got its error, not a fetch of their own each.
        assert!(*at < Duration::from_millis(1500), "{at:?}");
    }
    assert!(wedged.metrics().timeout_count("oauthToken") >= 1);
    assert!(wedged.metrics().timeout_count("oauthToken") <= 2);
}

/// A wedged token endpoint shows: `atlas_access_dependency_up{dependency="token_endpoint"}`
/// drops to 0 and `/readyz` names it, while its status stays 200 (an outage of Atlas is no
/// reason to take the operator out of its Service, see `src/http.rs`); Atlas, answering the
/// other credential, stays up; one answer clears it.
#[tokio::test]
async fn a_wedged_token_endpoint_shows_in_readyz_and_the_metrics() {
    use atlas_access_operator::atlas::AtlasMetrics;
    use atlas_access_operator::atlas::dependency::{Condition, Dependency, WEDGED_AFTER};

    let sim = sim::start(sim::config());
    let metrics = AtlasMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let state = atlas_access_operator::http::HttpState {
        registry: Arc::new(registry),
        ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        dependencies: metrics.dependencies.clone(),
    };
    let (addr, server) =
        atlas_access_operator::http::serve("127.0.0.1:0".parse().unwrap(), state, std::future::pending())
            .await
            .unwrap();
    let get = |path: &'static str| async move {
        let answer = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    };
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 200);
    assert!(body.contains("atlas: not called yet") && body.contains("token_endpoint: not called yet"), "{body}");

    // One client per credential, one set of metrics, as in the controller.
    let wedged = AtlasClient::new(ClientConfig {
        token_timeout: Duration::from_millis(200),
        retry: RetryPolicy::none(),
        metrics: metrics.clone(),
        ..config(&sim, service_account())
    })
    .unwrap();
    let healthy = AtlasClient::new(ClientConfig { metrics: metrics.clone(), ..config(&sim, api_key()) }).unwrap();
    healthy.get_org(&sim.org).await.unwrap();
    sim.state.set_faults(FaultConfig::for_operation("oauthToken", FaultSpec::latency(Duration::from_secs(3600))));
    for _ in 0..WEDGED_AFTER {
        let err = wedged.get_org(&sim.org).await.unwrap_err();
        assert!(matches!(err, AtlasError::Transport { operation: "oauthToken", .. }), "{err:?}");
    }
    healthy.get_org(&sim.org).await.unwrap();

    assert_eq!(metrics.dependencies.report(Dependency::TokenEndpoint).condition, Condition::Wedged);
    assert_eq!(metrics.dependencies.report(Dependency::Atlas).condition, Condition::Answering);
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(
        body.contains(&format!("token_endpoint: wedged: {WEDGED_AFTER} exchanges without an answer since start-up")),
        "{body}"
    );
    assert!(body.contains("atlas: answering (the last answer 0s ago)"), "{body}");
    assert!(!body.contains("secret"), "{body}");
    let (_, text) = get("/metrics").await;
    assert!(text.contains(r#"atlas_access_dependency_up{dependency="token_endpoint"} 0"#), "{text}");
    assert!(text.contains(r#"atlas_access_dependency_up{dependency="atlas"} 1"#), "{text}");
    assert!(
        text.contains(&format!(
            r#"atlas_access_dependency_unanswered_exchanges{{dependency="token_endpoint"}} {WEDGED_AFTER}"#
        )),
        "{text}"
    );

    // The endpoint answers again: the next token request clears it.
    sim.state.set_faults(FaultConfig::default());
    wedged.get_org(&sim.org).await.unwrap();
    let (_, body) = get("/readyz").await;
    assert!(body.contains("token_endpoint: answering"), "{body}");
    let (_, text) = get("/metrics").await;
    assert!(text.contains(r#"atlas_access_dependency_up{dependency="token_endpoint"} 1"#), "{text}");
    server.abort();
}
