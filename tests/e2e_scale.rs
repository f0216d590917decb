//! The controller's own cost, against a real API server (envtest) and the simulator, with the
//! operator as a child process under the shipped RBAC: after convergence nothing re-triggers
//! (a status write does not trigger its own object); a member's status change re-plans its
//! teams from the member listings the engine keeps (no `listOrgTeamUsers`); a warm restart of
//! converged objects writes no status and lists each organization and team once.

mod common;

use std::time::Duration;

use atlas_access_operator::api::{AtlasOrgUser, AtlasOrganization, AtlasTeamMembership};
use atlas_access_operator::atlas::models::MembershipStatus;
use atlas_access_operator::sim::{SimConfig, SimHandle, Simulator};
use common::cluster::{self, TEST_MANAGER, TestNamespace, wait_for};
use common::operator::{Operator, grant_shipped_rbac, operator_kubeconfig, unprivileged_user};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// An organization id no other suite uses: this suite declares an AtlasOrganization for it.
const ORG: &str = "5f1b2c3d4e5f60718293a5ca";
const TEAM_BY_REF: &str = "6b1b2c3d4e5f60718293a4b5";
const PUBLIC_KEY: &str = "scale-public";
const PRIVATE_KEY: &str = "scale-private-key";
/// AtlasOrgUsers created (`E2E_SCALE_USERS` to measure with more).
/// How long a step may take: longer with more objects.
fn wait_limit() -> Duration {
    Duration::from_secs(90 + users_count() as u64 / 5)
}

fn users_count() -> usize {
    std::env::var("E2E_SCALE_USERS").ok().and_then(|v| v.parse().ok()).unwrap_or(30)
}

fn start_sim() -> SimHandle {
    let sim = Simulator::start(SimConfig::default().with_api_key(PUBLIC_KEY, PRIVATE_KEY).without_limits()).unwrap();
    let state = sim.state();
    state.add_org_with_id(ORG, "scale");
    state.add_team_with_id(ORG, TEAM_BY_REF, "by-ref");
    state.add_team(ORG, "by-name");
    state.add_user(ORG, "owner@example.com", MembershipStatus::Active, &["ORG_OWNER"]);
    sim
}

async fn apply<K>(api: &Api<K>, name: &str, body: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(body).unwrap();
    api.patch(name, &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&obj)).await.unwrap();
}

fn user(ns: &str, i: usize) -> Value {
    json!({
        "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasOrgUser",
        "metadata": {"name": format!("u{i}"), "namespace": ns},
        "spec": {"orgId": ORG, "username": format!("u{i}@example.com"), "orgRoles": ["ORG_MEMBER"],
                 "credentialsSecretRef": {"name": "atlas-credentials"}},
    })
}

fn team(ns: &str, name: &str, team: Value, members: Value) -> Value {
    json!({
        "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasTeamMembership",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"orgId": ORG, "team": team, "mode": "Additive", "members": members,
                 "credentialsSecretRef": {"name": "atlas-credentials"}},
    })
}

/// The value of one series of the operator's /metrics (0 when absent).
async fn metric(operator: &Operator, series: &str) -> f64 {
    let (_, text) = operator.get("/metrics").await.expect("metrics");
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok())).unwrap_or(0.0)
}

async fn status_writes(operator: &Operator) -> f64 {
    let mut total = 0.0;
    for kind in ["AtlasOrgUser", "AtlasTeamMembership", "AtlasOrganization"] {
        total += metric(operator, &format!("atlas_access_status_writes_total{{kind=\"{kind}\"}}")).await;
    }
    total
}

async fn successes(operator: &Operator, kind: &str) -> f64 {
    metric(operator, &format!("atlas_access_reconciles_total{{kind=\"{kind}\",outcome=\"success\"}}")).await
}

/// Every object's status as JSON, by kind/name.
async fn statuses(
    users: &Api<AtlasOrgUser>,
    teams: &Api<AtlasTeamMembership>,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for u in users.list(&Default::default()).await.unwrap().items {
        out.insert(
            format!("AtlasOrgUser/{}", u.metadata.name.clone().unwrap()),
            serde_json::to_string(&u.status).unwrap(),
        );
    }
    for t in teams.list(&Default::default()).await.unwrap().items {
        out.insert(
            format!("AtlasTeamMembership/{}", t.metadata.name.clone().unwrap()),
            serde_json::to_string(&t.status).unwrap(),
        );
    }
    out
}

/// Waits until (org user reconciles, team reconciles, status writes) stop moving.
async fn settle(operator: &Operator) -> (f64, f64, f64) {
    let mut last = (-1.0, -1.0, -1.0);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = (
            successes(operator, "AtlasOrgUser").await,
            successes(operator, "AtlasTeamMembership").await,
            status_writes(operator).await,
        );
        if now == last {
            return now;
        }
        last = now;
    }
}

/// CPU seconds (user + system) the process used so far.
fn cpu_secs(operator: &Operator) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", operator.pid()?)).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_kib(operator: &Operator) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", operator.pid()?)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

fn converged_user(u: &AtlasOrgUser) -> bool {
    u.status.as_ref().is_some_and(|s| {
        s.observed_generation == u.metadata.generation
            && s.user_id.is_some()
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn converged_team(t: &AtlasTeamMembership, members: usize) -> bool {
    t.status.as_ref().is_some_and(|s| {
        s.observed_generation == t.metadata.generation
            && s.members.len() == members
            && s.members.iter().all(|m| m.user_id.is_some())
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

async fn wait_converged(
    users: &Api<AtlasOrgUser>,
    teams: &Api<AtlasTeamMembership>,
    operator: &Operator,
    by_ref: usize,
) {
    let done = wait_for(wait_limit(), || async {
        let all_users = users.list(&Default::default()).await.ok()?;
        let all_teams = teams.list(&Default::default()).await.ok()?;
        let users_done = all_users.items.iter().filter(|u| converged_user(u)).count() == all_users.items.len();
        let teams_done = all_teams.items.iter().all(|t| {
            let want = if t.metadata.name.as_deref() == Some("by-ref") { by_ref } else { 10 };
            converged_team(t, want)
        });
        (users_done && teams_done).then_some(())
    })
    .await;
    assert!(done.is_some(), "never converged\n--- operator log ---\n{}", operator.logs());
}

fn start_operator(ns: &str, sim: &SimHandle, tenant_role: &str) -> Operator {
    Operator::start(
        &operator_kubeconfig(),
        &[
            format!("--namespace={ns}"),
            format!("--atlas-url={}", sim.base_url()),
            format!("--operator-namespace={ns}"),
            format!("--tenant-secrets-cluster-role={tenant_role}"),
            "--atlas-insecure-http".into(),
            "--invitations-per-minute=0".into(),
            // No drift check during the test: every reconcile it sees was triggered.
            "--resync-interval=10m".into(),
        ],
        &[("POD_NAME", "e2e-scale-operator")],
    )
}

async fn wait_ready(operator: &Operator) {
    let probe = wait_for(wait_limit(), || async { operator.get("/readyz").await.filter(|(s, _)| *s == 200) }).await;
    assert!(probe.is_some(), "operator never became ready:\n{}", operator.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converged_objects_cost_nothing_and_a_warm_restart_writes_no_status() {
    let admin: Client = cluster::admin_client().await;
    cluster::install_crds(&admin).await;
    let ns = TestNamespace::new(&admin, "scale").await;
    let grant = grant_shipped_rbac(&admin, &ns.name, &unprivileged_user(), false).await;
    // An AtlasOrganization of this suite's organization left by an interrupted run would refuse
    // this run's namespace.
    let organizations: Api<AtlasOrganization> = Api::all(admin.clone());
    for leftover in organizations.list(&Default::default()).await.unwrap().items.iter().filter(|o| o.spec.org_id == ORG)
    {
        organizations.delete(leftover.metadata.name.as_deref().unwrap(), &Default::default()).await.unwrap();
    }
    let sim = start_sim();
    let state = sim.state();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "atlas-credentials", "namespace": ns.name,
                     "labels": {"atlas.mongodb.com/type": "credentials"}},
        "stringData": {"publicApiKey": PUBLIC_KEY, "privateApiKey": PRIVATE_KEY},
    });
    apply::<Secret>(&Api::namespaced(admin.clone(), &ns.name), "atlas-credentials", secret).await;

    let mut operator = start_operator(&ns.name, &sim, &grant.tenant_role);
    wait_ready(&operator).await;
    let users: Api<AtlasOrgUser> = Api::namespaced(admin.clone(), &ns.name);
    let teams: Api<AtlasTeamMembership> = Api::namespaced(admin.clone(), &ns.name);
    for i in 0..users_count() {
        apply(&users, &format!("u{i}"), user(&ns.name, i)).await;
    }
    // By id with orgUserRefs (and one, "late", that does not exist yet), by name with usernames.
    let mut by_ref: Vec<Value> = (0..10).map(|i| json!({"orgUserRef": {"name": format!("u{i}")}})).collect();
    by_ref.push(json!({"orgUserRef": {"name": "late"}}));
    apply(&teams, "by-ref", team(&ns.name, "by-ref", json!({"id": TEAM_BY_REF}), json!(by_ref))).await;
    let by_name: Vec<Value> = (10..20).map(|i| json!({"username": format!("u{i}@example.com")})).collect();
    apply(&teams, "by-name", team(&ns.name, "by-name", json!({"name": "by-name"}), json!(by_name))).await;
    // "late" is not declared yet: by-ref has 11 members, one without a user id.
    let ten = wait_for(wait_limit(), || async {
        let t = teams.get("by-ref").await.ok()?;
        let s = t.status.as_ref()?;
        (s.members.iter().filter(|m| m.user_id.is_some()).count() == 10).then_some(())
    })
    .await;
    assert!(ten.is_some(), "by-ref never had its 10 members\n{}", operator.logs());
    let done = wait_for(wait_limit(), || async {
        let all = users.list(&Default::default()).await.ok()?;
        (all.items.len() == users_count() && all.items.iter().all(converged_user)).then_some(())
    })
    .await;
    assert!(done.is_some(), "users never converged\n{}", operator.logs());
    assert!(
        converged_team(&teams.get("by-name").await.unwrap(), 10) || {
            wait_for(wait_limit(), || async { teams.get("by-name").await.ok().filter(|t| converged_team(t, 10)) })
                .await
                .is_some()
        }
    );
    let cold_rss = rss_kib(&operator);
    eprintln!(
        "cold convergence of {} AtlasOrgUsers and 2 teams: VmRSS {:?} KiB, status writes {}, Atlas calls {:?}",
        users_count(),
        cold_rss,
        status_writes(&operator).await,
        state.counters()
    );

    // Idle: nothing re-triggers (a status write does not trigger its own object), nothing is written.
    let idle = settle(&operator).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = (
        successes(&operator, "AtlasOrgUser").await,
        successes(&operator, "AtlasTeamMembership").await,
        status_writes(&operator).await,
    );
    assert_eq!(later, idle, "(org user reconciles, team reconciles, status writes) moved at idle");

    // A member's change: "late" appears and is invited; by-ref adds it from the member listing
    // it keeps (updated from its own writes), without listing its members again.
    state.reset_counters();
    apply(
        &users,
        "late",
        json!({
            "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasOrgUser",
            "metadata": {"name": "late", "namespace": ns.name},
            "spec": {"orgId": ORG, "username": "late@example.com", "orgRoles": ["ORG_MEMBER"],
                     "credentialsSecretRef": {"name": "atlas-credentials"}},
        }),
    )
    .await;
    wait_converged(&users, &teams, &operator, 11).await;
    let counters = state.counters();
    assert_eq!(counters.total("listOrgTeamUsers"), 0, "{counters:?}");
    assert_eq!(counters.total("addOrgTeamUser"), 1, "{counters:?}");
    assert_eq!(state.team_member_ids(ORG, TEAM_BY_REF).len(), 11);
    settle(&operator).await;

    // Warm restart: every object converged; the new process writes no status.
    // The organization's own object: declared once every user is
    // (its counts are recomputed at its own drift check, not on each user's change), its
    // status (counts, audit) must be as stable as the others'. Its creation re-judges its objects.
    let org_name = format!("scale-{}", ns.name);
    let organization = json!({
        "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasOrganization",
        "metadata": {"name": org_name},
        "spec": {"orgId": ORG, "credentialsSecretRef": {"name": "atlas-credentials"}, "namespaces": [ns.name]},
    });
    apply(&organizations, &org_name, organization).await;

    let organization_ready = wait_for(wait_limit(), || async {
        let o = organizations.get(&org_name).await.ok()?;
        let s = o.status.as_ref()?;
        (s.managed == Some(users_count() as u32 + 1)
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        .then_some(())
    })
    .await;
    assert!(organization_ready.is_some(), "the AtlasOrganization never counted every user\n{}", operator.logs());
    settle(&operator).await;
    let before = statuses(&users, &teams).await;
    let organization_before = serde_json::to_string(&organizations.get(&org_name).await.unwrap().status).unwrap();
    operator.kill();
    state.reset_counters();
    let operator = start_operator(&ns.name, &sim, &grant.tenant_role);
    wait_ready(&operator).await;
    let all_reconciled = wait_for(wait_limit(), || async {
        let u = successes(&operator, "AtlasOrgUser").await;
        let t = successes(&operator, "AtlasTeamMembership").await;
        let o = successes(&operator, "AtlasOrganization").await;
        (u >= (users_count() + 1) as f64 && t >= 2.0 && o >= 1.0).then_some(())
    })
    .await;
    assert!(all_reconciled.is_some(), "not every object was reconciled after the restart\n{}", operator.logs());
    let settled = settle(&operator).await;
    // The no-op reconciles of the restart: wall time per reconcile from the histogram, and
    // the process's CPU time (start-up, listings and watches included) per reconcile.
    let seconds = metric(&operator, "atlas_access_reconcile_duration_seconds_sum{kind=\"AtlasOrgUser\"}").await;
    let count = metric(&operator, "atlas_access_reconcile_duration_seconds_count{kind=\"AtlasOrgUser\"}").await;
    eprintln!(
        "warm restart: {count} AtlasOrgUser reconciles, {:.3} ms wall each; process CPU {:?} s in all",
        1000.0 * seconds / count.max(1.0),
        cpu_secs(&operator)
    );
    let cpu_before = cpu_secs(&operator);
    tokio::time::sleep(Duration::from_secs(10)).await;
    eprintln!("idle: process CPU {:?} s over 10 s", cpu_secs(&operator).zip(cpu_before).map(|(a, b)| a - b));
    let after = statuses(&users, &teams).await;
    let changed: Vec<String> = after
        .iter()
        .filter(|(name, status)| before.get(*name) != Some(*status))
        .map(|(name, status)| {
            format!("{name}:\n  before {}\n  after  {status}", before.get(name).cloned().unwrap_or_default())
        })
        .collect();
    assert!(changed.is_empty(), "statuses changed on a warm restart:\n{}", changed.join("\n"));
    let organization_after = serde_json::to_string(&organizations.get(&org_name).await.unwrap().status).unwrap();
    assert_eq!(organization_after, organization_before, "the AtlasOrganization's status changed on a warm restart");
    assert_eq!(settled.2, 0.0, "status writes on a warm restart\n{}", operator.logs());
    let counters = state.counters();
    // One listing of the organization: its pages (500 users a page; the users, late, the owner).
    let pages = (users_count() as u64 + 2).div_ceil(500);
    assert_eq!(counters.count("listOrgUsers", 200), pages, "one listing of the organization: {counters:?}");
    assert_eq!(counters.count("listOrgTeamUsers", 200), 2, "one member listing per team: {counters:?}");
    eprintln!(
        "operator VmRSS: {:?} KiB after a cold convergence, {:?} KiB after a warm start ({} objects); \
         reconciles after the restart: {} AtlasOrgUser, {} AtlasTeamMembership; Atlas calls: {:?}",
        cold_rss,
        rss_kib(&operator),
        users_count() + 3,
        settled.0,
        settled.1,
        counters
    );
    organizations.delete(&org_name, &Default::default()).await.unwrap();
}
