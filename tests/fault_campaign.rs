//! Fault campaign: `apply -f` (the real binary, as a child process) against the in-process
//! simulator injecting 500s, 429s with Retry-After, dropped connections and latency, killed
//! with SIGKILL several times mid-run and started again. Afterwards every object has
//! converged, no invitation was sent twice, every user a deleted object should have removed
//! is gone, and every printed status matches what the simulator holds.
//!
//! `short_fault_campaign` runs in the normal suite; `long_fault_campaign` (1,000 objects,
//! 100-500 ms latency) is `#[ignore]`d: `cargo test --release --test fault_campaign -- --ignored`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use atlas_access_operator::atlas::models::MembershipStatus;
use atlas_access_operator::sim::{BucketSpec, FaultConfig, FaultSpec, RateLimitConfig, SimConfig, SimState, Simulator};
use serde_json::Value;

const PUBLIC: &str = "campaign-public";
const PRIVATE: &str = "campaign-private";

struct Campaign {
    orgs: usize,
    users_per_org: usize,
    teams_per_org: usize,
    members_per_team: usize,
    latency_ms: (u64, u64),
    /// How long each killed run lives before SIGKILL, in the first phase (everything to
    /// create) and the second (role changes and deletions).
    kills: Vec<Duration>,
    second_phase_kills: Vec<Duration>,
    /// Time limit of the final, uninterrupted run.
    final_run_limit: Duration,
}

impl Campaign {
    fn objects(&self) -> usize {
        self.orgs * (self.users_per_org + self.teams_per_org)
    }

    fn username(o: usize, u: usize) -> String {
        format!("user{u}.org{o}@example.com")
    }

    /// Every tenth user is in the org before the run, with another role.
    fn pre_existing(u: usize) -> bool {
        u % 10 == 3
    }

    /// Users in no team, every other one: deleted in the second phase.
    fn deleted_later(&self, u: usize) -> bool {
        u >= self.teams_per_org * self.members_per_team && u.is_multiple_of(2)
    }
}

/// Org roles every AtlasOrgUser asks for in each phase.
fn roles(second_phase: bool) -> &'static [&'static str] {
    if second_phase { &["ORG_MEMBER", "ORG_READ_ONLY"] } else { &["ORG_MEMBER"] }
}

fn write_manifests(dir: &Path, campaign: &Campaign, orgs: &[(String, Vec<String>)], with_deletions: bool) {
    let org_roles = roles(with_deletions).join(", ");
    for (o, (org_id, teams)) in orgs.iter().enumerate() {
        let mut docs = Vec::new();
        for u in 0..campaign.users_per_org {
            let deleting = with_deletions && campaign.deleted_later(u);
            let deletion = if deleting { "\n  deletionTimestamp: \"2025-01-01T00:00:00Z\"" } else { "" };
            // A killed run loses its in-memory statuses, so a rerun finds its own invitations
            // with no record of having sent them (adoption unknown): the objects say
            // explicitly that deleting them removes their users.
            docs.push(format!(
                "apiVersion: atlas-access.dev/v1alpha1\nkind: AtlasOrgUser\nmetadata:\n  name: o{o}-u{u}\n  namespace: campaign{deletion}\nspec:\n  orgId: {org_id}\n  username: {}\n  orgRoles: [{org_roles}]\n  deletionPolicy: Delete\n  adoptedDeletionPolicy: Delete\n",
                Campaign::username(o, u)
            ));
        }
        for (t, team_id) in teams.iter().enumerate() {
            let members: Vec<String> = (t * campaign.members_per_team..(t + 1) * campaign.members_per_team)
                .map(|u| {
                    if u % 2 == 0 {
                        format!("    - username: {}", Campaign::username(o, u))
                    } else {
                        format!("    - orgUserRef: {{name: o{o}-u{u}}}")
                    }
                })
                .collect();
            docs.push(format!(
                "apiVersion: atlas-access.dev/v1alpha1\nkind: AtlasTeamMembership\nmetadata:\n  name: o{o}-team{t}\n  namespace: campaign\nspec:\n  orgId: {org_id}\n  team: {{id: {team_id}}}\n  mode: Exclusive\n  members:\n{}\n",
                members.join("\n")
            ));
        }
        std::fs::write(dir.join(format!("org{o}.yaml")), docs.join("---\n")).unwrap();
    }
}

/// A private link to (or copy of) the binary under test: a build tree shared with other
/// checkouts may replace the original while the campaign runs. Removed with the directory.
fn private_binary(dir: &Path) -> std::path::PathBuf {
    let original = Path::new(env!("CARGO_BIN_EXE_atlas-access-operator"));
    let path = dir.join("atlas-access-operator");
    if std::fs::hard_link(original, &path).is_err() {
        std::fs::copy(original, &path).unwrap();
    }
    path
}

fn apply_command(binary: &Path, dir: &Path, base_url: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary);
    command
        .args(["apply", "-f"])
        .arg(dir)
        .args(["--atlas-url", base_url, "--insecure-http", "--public-key", PUBLIC, "--private-key", PRIVATE])
        .args(["--max-passes", "30", "--concurrency", "32", "--invitations-per-minute", "0"])
        .env_remove("ATLAS_URL")
        .kill_on_drop(true);
    command
}

/// Start `apply` and SIGKILL it after each delay; then run it to the end and return its statuses.
async fn apply_with_kills(
    binary: &Path,
    dir: &Path,
    base_url: &str,
    kills: &[Duration],
    limit: Duration,
) -> (Vec<Value>, usize) {
    let mut killed = 0;
    for delay in kills {
        let mut child = apply_command(binary, dir, base_url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("apply starts");
        tokio::select! {
            // The earlier runs left too little to do: no more kills.
            _ = child.wait() => break,
            _ = tokio::time::sleep(*delay) => {}
        }
        child.kill().await.expect("SIGKILL");
        killed += 1;
    }
    eprintln!("{killed} run(s) killed mid-run");
    let started = Instant::now();
    let child = apply_command(binary, dir, base_url).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let output =
        tokio::time::timeout(limit, child.wait_with_output()).await.expect("the final run finishes in time").unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "final apply failed ({:?}):\n{stderr}", started.elapsed());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let docs = serde_yaml::Deserializer::from_str(&stdout)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    (docs, killed)
}

fn condition<'a>(doc: &'a Value, type_: &str) -> Option<&'a Value> {
    doc.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == type_)
}

/// Every printed status against the simulator's state.
fn check_statuses(
    docs: &[Value],
    state: &SimState,
    campaign: &Campaign,
    orgs: &[(String, Vec<String>)],
    deleted: bool,
) {
    assert_eq!(docs.len(), campaign.objects());
    let mut checked_users = 0;
    for doc in docs {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let (o, rest) = name[1..].split_once('-').unwrap();
        let o: usize = o.parse().unwrap();
        let org_id = &orgs[o].0;
        let in_atlas = state.org_users(org_id);
        match doc["kind"].as_str().unwrap() {
            "AtlasOrgUser" => {
                let u: usize = rest[1..].parse().unwrap();
                let username = Campaign::username(o, u);
                let atlas_user = in_atlas.iter().find(|x| x.username == username);
                if deleted && campaign.deleted_later(u) {
                    assert!(atlas_user.is_none(), "{username} should have been removed: {atlas_user:?}");
                    continue;
                }
                let atlas_user = atlas_user.unwrap_or_else(|| panic!("{username} is not in Atlas"));
                let status = &doc["status"];
                assert_eq!(status["userId"], atlas_user.id.as_str(), "{name}");
                assert_eq!(status["membershipStatus"], atlas_user.org_membership_status.as_str(), "{name}");
                let status_roles: Vec<&str> =
                    status["orgRoles"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
                let mut atlas_roles = atlas_user.roles.org_roles.clone();
                atlas_roles.sort();
                assert_eq!(status_roles, atlas_roles, "{name}");
                assert_eq!(status_roles, roles(deleted), "{name}: converged");
                assert_eq!(condition(doc, "Ready").unwrap()["status"], "True", "{name}: {doc}");
                checked_users += 1;
            }
            _ => {
                let t: usize = rest["team".len()..].parse().unwrap();
                let team_id = &orgs[o].1[t];
                let members = state.team_member_ids(org_id, team_id);
                let status = &doc["status"];
                assert_eq!(status["teamId"], team_id.as_str());
                assert_eq!(status["memberCount"], members.len(), "{name}");
                assert_eq!(members.len(), campaign.members_per_team, "{name}");
                for m in status["members"].as_array().unwrap() {
                    assert!(members.iter().any(|id| m["userId"] == id.as_str()), "{name}: {m} not in the team");
                }
                assert_eq!(condition(doc, "Ready").unwrap()["status"], "True", "{name}: {doc}");
            }
        }
    }
    assert!(checked_users > 0);
}

async fn run_campaign(campaign: Campaign) {
    let faults = FaultConfig {
        seed: 7,
        global: FaultSpec {
            error_rate: 0.10,
            rate_limited_rate: 0.05,
            drop_rate: 0.01,
            retry_after_secs: 1,
            latency_ms: campaign.latency_ms.0,
            latency_max_ms: campaign.latency_ms.1,
            ..FaultSpec::default()
        },
        ..FaultConfig::default()
    };
    let config = SimConfig {
        rate_limits: RateLimitConfig::uniform(BucketSpec { capacity: 200, refill: 200, per: Duration::from_secs(1) }),
        invitations_per_minute: None,
        request_log_capacity: 100,
        faults,
        ..SimConfig::default()
    }
    .with_api_key(PUBLIC, PRIVATE);
    let sim = Simulator::start(config).unwrap();
    let state = sim.state();
    let orgs: Vec<(String, Vec<String>)> = (0..campaign.orgs)
        .map(|o| {
            let org = state.add_org(&format!("campaign-{o}"));
            let teams = (0..campaign.teams_per_org).map(|t| state.add_team(&org, &format!("team-{t}"))).collect();
            (org, teams)
        })
        .collect();
    let mut pre_existing = 0;
    for (o, (org, _)) in orgs.iter().enumerate() {
        for u in (0..campaign.users_per_org).filter(|u| Campaign::pre_existing(*u)) {
            state.add_user(org, &Campaign::username(o, u), MembershipStatus::Active, &["ORG_READ_ONLY"]);
            pre_existing += 1;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let binary = private_binary(bin_dir.path());

    // Phase 1: create everything.
    write_manifests(dir.path(), &campaign, &orgs, false);
    let (docs, first_kills) =
        apply_with_kills(&binary, dir.path(), &sim.base_url(), &campaign.kills, campaign.final_run_limit).await;
    check_statuses(&docs, &state, &campaign, &orgs, false);
    let invited = campaign.orgs * campaign.users_per_org - pre_existing;
    let counters = state.counters();
    assert_eq!(counters.count("createOrgUser", 201), invited as u64, "every invitation sent exactly once");
    assert!(counters.faults_injected > 0 && counters.connections_dropped > 0, "{counters:?}");

    // Phase 2: some objects are being deleted.
    write_manifests(dir.path(), &campaign, &orgs, true);
    let (docs, second_kills) =
        apply_with_kills(&binary, dir.path(), &sim.base_url(), &campaign.second_phase_kills, campaign.final_run_limit)
            .await;
    check_statuses(&docs, &state, &campaign, &orgs, true);
    assert!(first_kills >= 1 && first_kills + second_kills >= 2, "killed {first_kills} + {second_kills} runs mid-run");
    let counters = state.counters();
    assert_eq!(counters.count("createOrgUser", 201), invited as u64, "no invitation sent again");
    let mut per_username: BTreeMap<String, usize> = BTreeMap::new();
    for (org, _) in &orgs {
        for user in state.org_users(org) {
            *per_username.entry(user.username).or_default() += 1;
        }
    }
    assert!(per_username.values().all(|n| *n == 1), "one record per username");
    eprintln!(
        "campaign: {} objects, {} requests, {} faults injected, {} connections dropped, {} 429s",
        campaign.objects(),
        counters.total_requests(),
        counters.faults_injected,
        counters.connections_dropped,
        counters.rate_limited
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_fault_campaign() {
    run_campaign(Campaign {
        orgs: 4,
        users_per_org: 27,
        teams_per_org: 3,
        members_per_team: 6,
        latency_ms: (10, 60),
        kills: vec![Duration::from_millis(500), Duration::from_millis(800), Duration::from_millis(600)],
        second_phase_kills: vec![Duration::from_millis(250), Duration::from_millis(350)],
        final_run_limit: Duration::from_secs(120),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 1,000 objects with 100-500 ms latency; run with --ignored"]
async fn long_fault_campaign() {
    run_campaign(Campaign {
        orgs: 10,
        users_per_org: 90,
        teams_per_org: 10,
        members_per_team: 8,
        latency_ms: (100, 500),
        kills: vec![Duration::from_secs(3), Duration::from_secs(5), Duration::from_secs(4), Duration::from_secs(6)],
        second_phase_kills: vec![Duration::from_secs(2), Duration::from_secs(3)],
        final_run_limit: Duration::from_secs(900),
    })
    .await;
}
