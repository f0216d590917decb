//! `cargo bench --bench convergence`: the engine against the in-process simulator with
//! latency and per-organization rate limits.
//!
//! Workload: 10 organizations, each with 200 AtlasOrgUser (ORG_MEMBER) and 5 teams of 40
//! listed members (AtlasTeamMembership, half by username, half by orgUserRef): 2,000
//! AtlasOrgUser and 50 AtlasTeamMembership. The simulator answers after `LATENCY` and meters
//! every endpoint set of every organization with a token bucket of `CAPACITY` requests
//! refilled at `REFILL_PER_SEC`.
//!
//! Reported:
//! 1. steady-state Atlas calls per drift cycle (every object reconciled once, nothing to
//!    change) over the lower bound: per organization ceil(users / 500) listing pages, plus one
//!    member page per team (each under 500 members);
//! 2. cold convergence time (empty organizations to every object Ready) over the minimum the
//!    rate limits allow: for each (organization, endpoint set), the requests that cannot be
//!    avoided beyond the bucket's burst, divided by its refill rate, after the earliest its
//!    first request can go (the answers it depends on, one latency each: see `run`), the
//!    largest of those; the same over the buckets alone (as if every bucket could start at
//!    once, the floor of earlier rounds); and the share of answers that were 429;
//! 3. peak RSS of the process (VmHWM);
//! 4. with the per-IP invitation limit on (Atlas's 10 a minute with a burst of 10, scaled like
//!    the buckets: 4 a second, a burst of 4) and the client's invitation queue at the same
//!    rate: 100 new users over 2 organizations (and a team of 40 in each), the invitations
//!    Atlas refused per invitation beyond the burst, and cold convergence over the floor that
//!    includes the invitation rate.

use std::time::{Duration, Instant};

use atlas_access_operator::api::{
    AtlasOrgUser, AtlasOrgUserSpec, AtlasTeamMembership, AtlasTeamMembershipSpec, MembershipMode, OrgRole, OrgUserRef,
    TeamMember, TeamRef,
};
use atlas_access_operator::atlas::{AtlasClient, ClientConfig, Credentials, InvitationQueue, OrgRateLimiter};
use atlas_access_operator::engine::Mode;
use atlas_access_operator::engine::OrgUserIndex;
use atlas_access_operator::engine::driver::{ObjectSet, run_pass};
use atlas_access_operator::sim::{BucketSpec, RateLimitConfig, SimConfig, Simulator};
use kube::api::ObjectMeta;
use secrecy::SecretString;

const ORGS: usize = 10;
const USERS_PER_ORG: usize = 200;
const TEAMS_PER_ORG: usize = 5;
const MEMBERS_PER_TEAM: usize = 40;
const LATENCY: Duration = Duration::from_millis(20);
const CAPACITY: u32 = 40;
const REFILL_PER_SEC: u32 = 40;
const DRIFT_CYCLES: usize = 3;
const CONCURRENCY: usize = 128;
/// Atlas: 10 invitations a minute per IP (burst 10) against 100 requests a minute per
/// endpoint set (burst 100); the buckets above run 24x faster with 0.4x the burst.
const INVITATION_BURST: u32 = 4;
const INVITATIONS_PER_SEC: u32 = 4;
const INVITE_ORGS: usize = 2;
const INVITE_USERS_PER_ORG: usize = 50;

fn meta(name: String) -> ObjectMeta {
    ObjectMeta { name: Some(name), namespace: Some("bench".into()), ..Default::default() }
}

/// Org users interleaved across organizations (so every organization's bucket works at
/// once), each organization's users in team order (so a team's members are invited together).
fn workload(orgs: &[(String, Vec<String>)], users_per_org: usize, teams_per_org: usize) -> ObjectSet {
    let mut objects = ObjectSet::default();
    for u in 0..users_per_org {
        for (o, (org_id, _)) in orgs.iter().enumerate() {
            objects.org_users.push(AtlasOrgUser {
                metadata: meta(format!("o{o}-u{u}")),
                spec: AtlasOrgUserSpec {
                    org_id: org_id.clone(),
                    username: format!("user{u}.org{o}@example.com"),
                    org_roles: vec![OrgRole::OrgMember],
                    project_roles: vec![],
                    team_ids: vec![],
                    credentials_secret_ref: None,
                    deletion_policy: Default::default(),
                    adopted_deletion_policy: Default::default(),
                    unlisted_access: Default::default(),
                    reinvite: Default::default(),
                },
                status: None,
            });
        }
    }
    for t in 0..teams_per_org {
        for (o, (org_id, teams)) in orgs.iter().enumerate() {
            let members = (t * MEMBERS_PER_TEAM..(t + 1) * MEMBERS_PER_TEAM)
                .map(|u| {
                    if u % 2 == 0 {
                        TeamMember { username: Some(format!("user{u}.org{o}@example.com")), org_user_ref: None }
                    } else {
                        TeamMember { username: None, org_user_ref: Some(OrgUserRef { name: format!("o{o}-u{u}") }) }
                    }
                })
                .collect();
            let team = if t % 2 == 0 {
                TeamRef { id: Some(teams[t].clone()), name: None }
            } else {
                TeamRef { id: None, name: Some(format!("team-{t}")) }
            };
            objects.team_memberships.push(AtlasTeamMembership {
                metadata: meta(format!("o{o}-team{t}")),
                spec: AtlasTeamMembershipSpec {
                    org_id: org_id.clone(),
                    team,
                    members,
                    mode: MembershipMode::Additive,
                    credentials_secret_ref: None,
                    deletion_policy: Default::default(),
                },
                status: None,
            });
        }
    }
    objects
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The least time the buckets allow for `requests` under one (organization, endpoint set).
fn bucket_floor(requests: usize) -> f64 {
    requests.saturating_sub(CAPACITY as usize) as f64 / f64::from(REFILL_PER_SEC)
}

thread_local! {
    static CONVERGE_STARTED: std::cell::Cell<Option<jiff::Timestamp>> = const { std::cell::Cell::new(None) };
}

/// Passes until every object is settled (at most 5): the seconds it took and the passes.
async fn converge(client: &AtlasClient, index: &OrgUserIndex, objects: &mut ObjectSet) -> (f64, u32) {
    let started = Instant::now();
    CONVERGE_STARTED.with(|t| t.set(Some(jiff::Timestamp::now())));
    let mut passes = 0;
    loop {
        passes += 1;
        let results = run_pass(client, index, objects, Mode::Apply, CONCURRENCY, &|_, _| {}).await;
        let unsettled = results.iter().filter(|(_, o)| !o.is_settled()).count();
        if unsettled == 0 || passes == 5 {
            assert_eq!(unsettled, 0, "not converged after {passes} passes");
            return (started.elapsed().as_secs_f64(), passes);
        }
    }
}

async fn run() {
    let bucket = BucketSpec { capacity: CAPACITY, refill: REFILL_PER_SEC, per: Duration::from_secs(1) };
    let timeline = std::env::var_os("CONVERGENCE_TIMELINE");
    let config = SimConfig {
        rate_limits: RateLimitConfig::uniform(bucket),
        invitations_per_minute: None,
        latency: LATENCY,
        request_log_capacity: if timeline.is_some() { 20_000 } else { 100 },
        ..SimConfig::default()
    }
    .with_api_key("bench-public", "bench-private");
    let sim = Simulator::start(config).expect("simulator starts");
    let state = sim.state();
    let orgs: Vec<(String, Vec<String>)> = (0..ORGS)
        .map(|o| {
            let org = state.add_org(&format!("bench-org-{o}"));
            let teams = (0..TEAMS_PER_ORG).map(|t| state.add_team(&org, &format!("team-{t}"))).collect();
            (org, teams)
        })
        .collect();
    let mut objects = workload(&orgs, USERS_PER_ORG, TEAMS_PER_ORG);

    let credentials =
        Credentials::ApiKey { public_key: "bench-public".into(), private_key: SecretString::from("bench-private") };
    let mut client_config = ClientConfig::new(sim.base_url(), credentials);
    client_config.insecure_http = true;
    client_config.max_concurrency = 64;
    // The simulator's buckets refill per second (Atlas's per minute): pace on the same window.
    client_config.limiter = OrgRateLimiter::new(Duration::from_secs(1));
    // The invitation limit is off in this simulator.
    client_config.invitations = InvitationQueue::disabled();
    let client = AtlasClient::new(client_config).expect("client");
    let index = OrgUserIndex::new(Duration::from_secs(3600));

    // Cold: from empty organizations until every object is settled.
    let (cold, passes) = converge(&client, &index, &mut objects).await;
    let counters = state.counters();
    let cold_requests = counters.total_requests();
    let cold_429 = counters.rate_limited;
    if let Some(path) = &timeline {
        write_timeline(path, &state.request_log(), cold);
    }
    // The calls no engine can avoid, per organization: one listing, the invitations, a lookup
    // and a member listing per team, one :addUser per member.
    let per_set = [
        ("org-users-read", 1),
        ("org-users-write", USERS_PER_ORG),
        ("teams-read", 2 * TEAMS_PER_ORG),
        ("teams-write", TEAMS_PER_ORG * MEMBERS_PER_TEAM),
    ];
    // The buckets' floor alone (the first figure in the table): as if every bucket could
    // start draining at once.
    let buckets_only = per_set.iter().map(|(_, n)| bucket_floor(*n)).fold(0.0, f64::max);
    // A bucket is full until its first request, and its refill is lost meanwhile; no request
    // can go before the answers it needs, each at least LATENCY away (the simulator answers,
    // and takes the token, LATENCY after a request arrives): the digest challenge (API keys),
    // then the listing (every write is planned from it), then an invitation, whose answer
    // carries the user id an addition to a team needs. So org-users-write's first token goes
    // at 3 x LATENCY at the earliest, teams-write's at 4 x LATENCY.
    let first_token = |set: &str| {
        let round_trips = match set {
            "org-users-read" => 2,
            "org-users-write" | "teams-read" => 3,
            _ => 4,
        };
        round_trips as f64 * LATENCY.as_secs_f64()
    };
    let floor = per_set.iter().map(|(set, n)| first_token(set) + bucket_floor(*n)).fold(0.0, f64::max);

    // Steady state: drift cycles with nothing to change.
    let mut per_cycle = Vec::new();
    for _ in 0..DRIFT_CYCLES {
        state.reset_counters();
        let results = run_pass(&client, &index, &mut objects, Mode::Apply, CONCURRENCY, &|_, _| {}).await;
        assert!(results.iter().all(|(_, o)| o.is_settled()), "drift cycle found changes");
        per_cycle.push(state.counters().total_requests());
    }
    let worst_cycle = *per_cycle.iter().max().expect("cycles ran");
    let pages = |n: usize| n.div_ceil(500).max(1);
    let lower_bound = ORGS * pages(USERS_PER_ORG) + ORGS * TEAMS_PER_ORG * pages(MEMBERS_PER_TEAM);
    let rss = peak_rss_kib().map_or("n/a".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));

    println!();
    println!(
        "Workload: {} AtlasOrgUser over {ORGS} orgs, {} AtlasTeamMembership of {MEMBERS_PER_TEAM}; \
         simulator latency {} ms, buckets of {CAPACITY} refilled {REFILL_PER_SEC}/s per org and endpoint set",
        ORGS * USERS_PER_ORG,
        ORGS * TEAMS_PER_ORG,
        LATENCY.as_millis()
    );
    println!("| metric | measured | bound | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| steady-state calls per drift cycle (worst of {DRIFT_CYCLES}: {per_cycle:?}) | {worst_cycle} | {lower_bound} | {:.3} | <= 1.05 |",
        worst_cycle as f64 / lower_bound as f64
    );
    println!("| cold convergence ({passes} pass(es)) | {cold:.2} s | {floor:.2} s | {:.3} | <= 1.03 |", cold / floor);
    println!(
        "| cold convergence over the buckets alone (no answer waited for) | {cold:.2} s | {buckets_only:.2} s | {:.3} | |",
        cold / buckets_only
    );
    println!(
        "| 429 answers during cold convergence | {cold_429} of {cold_requests} | | {:.3}% | <= 0.1% |",
        100.0 * cold_429 as f64 / cold_requests as f64
    );
    println!("| peak RSS (VmHWM) | {rss} | | | |");
    sim.shutdown();
    invitations().await;
}

/// Cold convergence with the invitation limit on (see the module comment, 4.).
async fn invitations() {
    let bucket = BucketSpec { capacity: CAPACITY, refill: REFILL_PER_SEC, per: Duration::from_secs(1) };
    let config = SimConfig {
        rate_limits: RateLimitConfig::uniform(bucket),
        invitations_per_minute: Some(INVITATION_BURST),
        invitation_period: invitation_period(),
        latency: LATENCY,
        request_log_capacity: 100,
        ..SimConfig::default()
    }
    .with_api_key("bench-public", "bench-private");
    let sim = Simulator::start(config).expect("simulator starts");
    let state = sim.state();
    let orgs: Vec<(String, Vec<String>)> = (0..INVITE_ORGS)
        .map(|o| {
            let org = state.add_org(&format!("bench-org-{o}"));
            (org.clone(), vec![state.add_team(&org, "team-0")])
        })
        .collect();
    let mut objects = workload(&orgs, INVITE_USERS_PER_ORG, 1);
    let credentials =
        Credentials::ApiKey { public_key: "bench-public".into(), private_key: SecretString::from("bench-private") };
    let mut client_config = ClientConfig::new(sim.base_url(), credentials);
    client_config.insecure_http = true;
    client_config.max_concurrency = 64;
    client_config.limiter = OrgRateLimiter::new(Duration::from_secs(1));
    client_config.invitations = InvitationQueue::new(INVITATION_BURST, invitation_period());
    client_config.invitation_max_wait = Duration::from_secs(3600);
    let client = AtlasClient::new(client_config).expect("client");
    let index = OrgUserIndex::new(Duration::from_secs(3600));

    let (cold, passes) = converge(&client, &index, &mut objects).await;
    let counters = state.counters();
    let invitations = INVITE_ORGS * INVITE_USERS_PER_ORG;
    let extra = invitations.saturating_sub(INVITATION_BURST as usize);
    let refused = counters.invitations_rate_limited;
    let invitation_floor = extra as f64 / f64::from(INVITATIONS_PER_SEC);
    let floor = invitation_floor.max(bucket_floor(MEMBERS_PER_TEAM)).max(bucket_floor(INVITE_USERS_PER_ORG));
    println!();
    println!(
        "Invitation limit on: {invitations} new users over {INVITE_ORGS} orgs (a team of {MEMBERS_PER_TEAM} in each), \
         {INVITATIONS_PER_SEC} invitations/s per IP with a burst of {INVITATION_BURST}, the queue at the same rate"
    );
    println!("| metric | measured | bound | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| invitations refused (INVITATIONS_RATE_LIMITED_IP) per invitation beyond the burst | {refused} for {extra} | | {:.3} | <= 0.05 |",
        refused as f64 / extra as f64
    );
    println!(
        "| cold convergence with the invitation limit ({passes} pass(es)) | {cold:.2} s | {floor:.2} s | {:.3} | <= 1.05 |",
        cold / floor
    );
    println!(
        "| 429 answers | {} of {} | | {:.2}% | |",
        counters.rate_limited,
        counters.total_requests(),
        100.0 * counters.rate_limited as f64 / counters.total_requests() as f64
    );
    sim.shutdown();
}

/// `CONVERGENCE_TIMELINE=FILE`: the cold phase's requests as tab-separated lines (seconds
/// from the first request's arrival, organization, endpoint set, operation, status), to see
/// when each bucket sat idle while work remained.
fn write_timeline(path: &std::ffi::OsStr, log: &[atlas_access_operator::sim::LoggedRequest], cold: f64) {
    use std::fmt::Write;
    let Some(started) = CONVERGE_STARTED.with(|t| t.get()) else { return };
    let start = started.as_microsecond() as f64 / 1e6;
    let mut out = format!("# cold convergence {cold:.3} s\n");
    for r in log {
        let org = r.path.split('/').nth(5).unwrap_or("-");
        let at = r.at.as_microsecond() as f64 / 1e6 - start;
        let _ = writeln!(out, "{at:.4}\t{org}\t{}\t{}\t{}", r.method, r.operation_id, r.status);
    }
    std::fs::write(path, out).expect("timeline written");
}

/// The period the burst of invitations refills over.
fn invitation_period() -> Duration {
    Duration::from_secs_f64(f64::from(INVITATION_BURST) / f64::from(INVITATIONS_PER_SEC))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and a benchmark on a loaded CI machine measures nothing: only say how to run it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("convergence benchmark: run it with `cargo bench --bench convergence`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run());
}
