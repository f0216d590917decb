//! The verdicts GitOps tools reach on real statuses: the operator runs against envtest (or the
//! cluster `KUBECONFIG` names) and the in-process simulator, objects are driven into each state,
//! and their JSON, as the API server returns it, goes through `tests/tools/health` — Argo CD's
//! Lua health check (`deploy/argocd/health.lua`) under gopher-lua, the interpreter Argo CD
//! embeds, and kstatus (`sigs.k8s.io/cli-utils` `status.Compute`, what Flux `wait: true` and kpt
//! use). On the way: the JSON log (top-level `message`, the audit line of an invitation), Warning
//! events for a Conflict and a member nobody declares (once each), a drift correction, and the
//! metrics at start-up (every counter at 0).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use atlas_access_operator::api::{AtlasOrgUser, AtlasTeamMembership};
use atlas_access_operator::atlas::models::MembershipStatus;
use atlas_access_operator::atlas::{AtlasClient, ClientConfig, Credentials};
use atlas_access_operator::sim::{SimConfig, SimHandle, Simulator};
use common::cluster::{self, TEST_MANAGER, TestNamespace, wait_for};
use common::operator::{Operator, grant_shipped_rbac, operator_kubeconfig, unprivileged_user};
use common::tools::go_tool;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};

const ORG: &str = "5f1b2c3d4e5f60718293a4b5";
const TEAM_ID: &str = "6b1b2c3d4e5f60718293a4b6";
const OPS_TEAM_ID: &str = "6b1b2c3d4e5f60718293a4b7";
const PUBLIC_KEY: &str = "health-public";
const PRIVATE_KEY: &str = "health-private-key";
const WAIT: Duration = Duration::from_secs(60);

fn start_sim() -> SimHandle {
    let sim = Simulator::start(SimConfig::default().with_api_key(PUBLIC_KEY, PRIVATE_KEY).without_limits()).unwrap();
    let state = sim.state();
    state.add_org_with_id(ORG, "health");
    state.add_team_with_id(ORG, TEAM_ID, "platform");
    state.add_team_with_id(ORG, OPS_TEAM_ID, "ops");
    state.add_user(ORG, "owner@example.com", MembershipStatus::Active, &["ORG_OWNER"]);
    state.add_user(ORG, "bob@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    state.add_user(ORG, "frank@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    sim
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

struct Objects {
    users: Api<DynamicObject>,
    teams: Api<DynamicObject>,
    ns: String,
}

impl Objects {
    fn new(client: &Client, ns: &str) -> Self {
        Self {
            users: Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<AtlasOrgUser>(&())),
            teams: Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<AtlasTeamMembership>(&())),
            ns: ns.to_string(),
        }
    }

    fn api(&self, kind: &str) -> &Api<DynamicObject> {
        if kind == "AtlasOrgUser" { &self.users } else { &self.teams }
    }

    async fn apply(&self, kind: &str, name: &str, annotations: Value, spec: Value) {
        let obj = json!({
            "apiVersion": "atlas-access.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": self.ns, "annotations": annotations},
            "spec": spec,
        });
        let obj: DynamicObject = serde_json::from_value(obj).unwrap();
        self.api(kind).patch(name, &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&obj)).await.unwrap();
    }

    async fn user(&self, name: &str, username: &str, extra: Value) {
        let mut spec = json!({"orgId": ORG, "username": username, "orgRoles": ["ORG_MEMBER"]});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        self.apply("AtlasOrgUser", name, json!({}), spec).await;
    }

    async fn json(&self, kind: &str, name: &str) -> Value {
        serde_json::to_value(self.api(kind).get(name).await.unwrap()).unwrap()
    }

    /// Wait until the object's Ready condition has `reason` for its current generation.
    async fn wait_reason(&self, kind: &str, name: &str, reason: &str, operator: &Operator) -> Value {
        let found = wait_for(WAIT, || async {
            let obj = serde_json::to_value(self.api(kind).get(name).await.ok()?).ok()?;
            let observed = obj["status"]["observedGeneration"] == obj["metadata"]["generation"];
            let ready = obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
            (observed && ready["reason"] == reason).then_some(obj)
        })
        .await;
        found.unwrap_or_else(|| {
            let now = futures::executor::block_on(self.api(kind).get(name)).ok();
            panic!(
                "{kind} {name}: no Ready reason {reason}; now: {:#}\n--- operator log ---\n{}",
                serde_json::to_value(now).unwrap()["status"],
                operator.logs()
            )
        })
    }
}

#[derive(Deserialize, Debug)]
struct Verdict {
    status: String,
    message: String,
}

#[derive(Deserialize, Debug)]
struct Verdicts {
    name: String,
    argo: Verdict,
    kstatus: Verdict,
}

/// Argo CD's and kstatus's verdicts on each object, by name.
fn verdicts(objects: &[Value]) -> BTreeMap<String, Verdicts> {
    let health = go_tool("health");
    let mut child = Command::new(&health)
        .args(["-lua", "deploy/argocd/health.lua"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&serde_json::to_vec(objects).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "health: {}", String::from_utf8_lossy(&out.stderr));
    let list: Vec<Verdicts> = serde_json::from_slice(&out.stdout).unwrap();
    list.into_iter().map(|v| (v.name.clone(), v)).collect()
}

fn json_lines(log: &str) -> Vec<Value> {
    log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_cd_and_kstatus_verdicts_on_real_statuses() {
    let admin = cluster::admin_client().await;
    cluster::install_crds(&admin).await;
    let ns = TestNamespace::new(&admin, "health").await;
    let grant = grant_shipped_rbac(&admin, &ns.name, &unprivileged_user(), false).await;
    let sim = start_sim();
    let state = sim.state();
    apply_secret(&admin, &ns.name).await;
    let objects = Objects::new(&admin, &ns.name);
    let secret = json!({"credentialsSecretRef": {"name": "atlas-credentials"}});
    let with_secret = |extra: Value| {
        let mut v = secret.clone();
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    };

    // Not observed yet: created before the operator runs.
    objects.user("unobserved", "unobserved@example.com", with_secret(json!({}))).await;
    let unobserved = objects.json("AtlasOrgUser", "unobserved").await;

    let mut operator = Operator::start(
        &operator_kubeconfig(),
        &[
            format!("--namespace={}", ns.name),
            format!("--atlas-url={}", sim.base_url()),
            "--atlas-insecure-http".into(),
            "--resync-interval=2s".into(),
            "--index-refresh-interval=1s".into(),
            "--log-format=json".into(),
        ],
        &[],
    );
    let probe = wait_for(WAIT, || async { operator.get("/readyz").await.filter(|(s, _)| *s == 200) }).await;
    assert!(probe.is_some(), "operator never became ready:\n{}", operator.logs());

    // converged: adopted, in sync. pending: a fresh invitation (Ready: people are not waited for).
    objects.user("bob", "bob@example.com", with_secret(json!({}))).await;
    objects.user("alice", "alice@example.com", with_secret(json!({}))).await;
    // missing Secret.
    objects.user("no-secret", "carol@example.com", json!({"credentialsSecretRef": {"name": "does-not-exist"}})).await;
    // The only org owner, deleted later: Atlas refuses.
    objects
        .user(
            "owner",
            "owner@example.com",
            with_secret(json!({"orgRoles": ["ORG_OWNER"], "adoptedDeletionPolicy": "Delete"})),
        )
        .await;
    // paused, in sync and with a change waiting.
    objects
        .apply(
            "AtlasOrgUser",
            "frank",
            json!({"atlas-access.dev/paused": "true"}),
            json!({"orgId": ORG, "username": "frank@example.com", "orgRoles": ["ORG_MEMBER"],
                   "credentialsSecretRef": {"name": "atlas-credentials"}}),
        )
        .await;
    objects
        .apply(
            "AtlasOrgUser",
            "dave",
            json!({"atlas-access.dev/paused": "true"}),
            json!({"orgId": ORG, "username": "dave@example.com", "orgRoles": ["ORG_MEMBER"],
                   "credentialsSecretRef": {"name": "atlas-credentials"}}),
        )
        .await;
    let bob = objects.wait_reason("AtlasOrgUser", "bob", "Synced", &operator).await;
    // Conflict: a younger object for bob's user.
    objects.user("bob-again", "bob@example.com", with_secret(json!({}))).await;
    // A member nobody declares (a typo) and a member waiting for its (paused) AtlasOrgUser.
    objects
        .apply(
            "AtlasTeamMembership",
            "typo",
            json!({}),
            json!({"orgId": ORG, "team": {"id": TEAM_ID}, "members": [{"username": "nobdy@example.com"}],
                   "credentialsSecretRef": {"name": "atlas-credentials"}}),
        )
        .await;
    objects
        .apply(
            "AtlasTeamMembership",
            "waiting",
            json!({}),
            json!({"orgId": ORG, "team": {"id": TEAM_ID}, "members": [{"orgUserRef": {"name": "dave"}}],
                   "credentialsSecretRef": {"name": "atlas-credentials"}}),
        )
        .await;
    // Exclusive team: drift (a stranger added in Atlas by hand) is corrected.
    objects
        .apply(
            "AtlasTeamMembership",
            "ops",
            json!({}),
            json!({"orgId": ORG, "team": {"id": OPS_TEAM_ID}, "mode": "Exclusive",
                   "members": [{"username": "bob@example.com"}],
                   "credentialsSecretRef": {"name": "atlas-credentials"}}),
        )
        .await;

    let alice = objects.wait_reason("AtlasOrgUser", "alice", "Synced", &operator).await;
    assert_eq!(alice["status"]["membershipStatus"], "PENDING");
    let no_secret = objects.wait_reason("AtlasOrgUser", "no-secret", "CredentialsMissing", &operator).await;
    let conflict = objects.wait_reason("AtlasOrgUser", "bob-again", "Conflict", &operator).await;
    let frank = objects.wait_reason("AtlasOrgUser", "frank", "Paused", &operator).await;
    let dave = objects.wait_reason("AtlasOrgUser", "dave", "Paused", &operator).await;
    let typo = objects.wait_reason("AtlasTeamMembership", "typo", "MembersNotInOrg", &operator).await;
    let waiting = objects.wait_reason("AtlasTeamMembership", "waiting", "MembersNotInOrg", &operator).await;
    objects.wait_reason("AtlasTeamMembership", "ops", "Synced", &operator).await;
    objects.wait_reason("AtlasOrgUser", "owner", "Synced", &operator).await;

    // Deletion refused: Atlas keeps its last owner, the finalizer stays.
    objects.users.delete("owner", &Default::default()).await.unwrap();
    let refused = wait_for(WAIT, || async {
        let obj = serde_json::to_value(objects.users.get("owner").await.ok()?).ok()?;
        let ready = obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
        (obj["metadata"]["deletionTimestamp"].is_string() && ready["reason"] == "AtlasError").then_some(obj)
    })
    .await
    .unwrap_or_else(|| panic!("the owner's deletion was not refused:\n{}", operator.logs()));

    // Drift: someone adds frank to the Exclusive team in Atlas; the operator removes him.
    let frank_id = state.org_users(ORG).into_iter().find(|u| u.username == "frank@example.com").map(|u| u.id).unwrap();
    assert!(state.add_team_member(ORG, OPS_TEAM_ID, &frank_id));
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns.name);
    let drift = wait_for(WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("DriftCorrected"))
    })
    .await
    .unwrap_or_else(|| panic!("no DriftCorrected event:\n{}", operator.logs()));
    let note = drift.note.unwrap_or_default();
    assert!(note.contains("frank@example.com was in the team, the spec does not list them: removed"), "{note}");
    assert!(!state.team_member_ids(ORG, OPS_TEAM_ID).contains(&frank_id));

    let expected: &[(&str, &Value, &str, &str, &str)] = &[
        // (name, object, kstatus, Argo CD, a fragment of Argo CD's message)
        ("unobserved", &unobserved, "InProgress", "Progressing", "Waiting for the operator"),
        ("bob", &bob, "Current", "Healthy", "Atlas matches the spec"),
        ("alice", &alice, "Current", "Healthy", "the invitation awaits acceptance"),
        ("no-secret", &no_secret, "Failed", "Degraded", "CredentialsMissing"),
        ("bob-again", &conflict, "Failed", "Degraded", "Conflict"),
        ("typo", &typo, "Failed", "Degraded", "no AtlasOrgUser in namespace"),
        ("waiting", &waiting, "InProgress", "Progressing", "dave@example.com"),
        ("frank", &frank, "Current", "Suspended", "Paused"),
        ("dave", &dave, "Failed", "Suspended", "change(s) waiting"),
        ("owner", &refused, "Terminating", "Degraded", "CANNOT_REMOVE_LAST_ORG_OWNER"),
    ];
    let all: Vec<Value> = expected.iter().map(|(_, o, ..)| (*o).clone()).collect();
    let got = verdicts(&all);
    let mut wrong = Vec::new();
    for (name, _, kstatus, argo, fragment) in expected {
        let v = &got[*name];
        if v.kstatus.status != *kstatus || v.argo.status != *argo || !v.argo.message.contains(fragment) {
            wrong.push(format!(
                "{name}: kstatus {} ({}), Argo CD {} ({}); expected {kstatus}, {argo} with {fragment:?}",
                v.kstatus.status, v.kstatus.message, v.argo.status, v.argo.message
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Failed verdicts carry the reason's message, so `flux` and `kpt` say why.
    assert!(got["typo"].kstatus.message.contains("nobdy@example.com"), "{:?}", got["typo"]);
    assert!(got["dave"].kstatus.message.contains("paused"), "{:?}", got["dave"]);

    // Warning events, once each: Conflict and MembersNotInOrg.
    tokio::time::sleep(Duration::from_secs(5)).await; // a few resyncs
    let list = events.list(&ListParams::default()).await.unwrap().items;
    let warnings = |reason: &str, name: &str| {
        list.iter()
            .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum::<i32>()
    };
    assert_eq!(warnings("Conflict", "bob-again"), 1, "one Conflict warning, not one per resync");
    assert_eq!(warnings("MembersNotInOrg", "typo"), 1, "one MembersNotInOrg warning");

    // The JSON log: flat lines, the invitation's audit line with who asked.
    let logs = operator.logs();
    let lines = json_lines(&logs);
    assert!(!lines.is_empty() && lines.len() * 10 >= logs.lines().count() * 9, "not JSON lines:\n{logs}");
    assert!(lines.iter().all(|l| l["message"].is_string() && l.get("fields").is_none()), "{logs}");
    let invitation = lines
        .iter()
        .find(|l| l["audit"] == true && l["operation"] == "createOrgUser" && l["username"] == "alice@example.com")
        .unwrap_or_else(|| panic!("no audit line for alice's invitation:\n{logs}"));
    assert_eq!(invitation["level"], "INFO");
    assert_eq!(invitation["org_id"], ORG);
    assert_eq!(invitation["kind"], "AtlasOrgUser");
    assert_eq!(invitation["object"], format!("{}/alice", ns.name));
    assert_eq!(invitation["outcome"], "success");
    assert!(invitation["user_id"].as_str().is_some_and(|id| !id.is_empty()), "{invitation}");
    assert!(
        invitation["message"].as_str().unwrap().starts_with("Atlas write: invite alice@example.com"),
        "{invitation}"
    );
    let removal = lines
        .iter()
        .find(|l| l["audit"] == true && l["operation"] == "removeOrgTeamUser")
        .unwrap_or_else(|| panic!("no audit line for the drift correction:\n{logs}"));
    assert_eq!(removal["team_id"], OPS_TEAM_ID);
    assert_eq!(removal["object"], format!("{}/ops", ns.name));
    let refusal = lines
        .iter()
        .find(|l| l["audit"] == true && l["operation"] == "removeOrgUser" && l["outcome"] == "failed")
        .unwrap_or_else(|| panic!("no audit line for the refused removal:\n{logs}"));
    assert!(refusal["error"].as_str().unwrap().contains("CANNOT_REMOVE_LAST_ORG_OWNER"), "{refusal}");
    // Lines logged inside a reconcile carry the object and its kind (from the reconcile span).
    let answered = lines
        .iter()
        .find(|l| l["message"] == "Atlas answered" && l["operation"] == "getOrgTeam")
        .unwrap_or_else(|| panic!("no debug line of a team lookup:\n{logs}"));
    assert_eq!(answered["kind"], "AtlasTeamMembership", "{answered}");
    assert!(answered["object"].as_str().unwrap().starts_with(&format!("{}/", ns.name)), "{answered}");
    assert!(!logs.contains(PRIVATE_KEY), "a credential reached the log");

    // Drift on a user: someone gives bob an extra org role in Atlas; the operator takes it back
    // and says what Atlas had and what the spec wants.
    let by_hand = AtlasClient::new(ClientConfig {
        insecure_http: true,
        ..ClientConfig::new(
            sim.base_url(),
            Credentials::ApiKey { public_key: PUBLIC_KEY.into(), private_key: PRIVATE_KEY.into() },
        )
    })
    .unwrap();
    let bob_id = bob["status"]["userId"].as_str().unwrap().to_string();
    by_hand.add_org_role(ORG, &bob_id, "ORG_BILLING_ADMIN").await.unwrap();
    let role_drift = wait_for(WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("DriftCorrected")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bob")
        })
    })
    .await
    .unwrap_or_else(|| panic!("no DriftCorrected event for bob:\n{}", operator.logs()));
    assert_eq!(
        role_drift.note.as_deref(),
        Some(
            "bob@example.com was changed in Atlas outside the operator; corrected: org roles: Atlas had \
             ORG_BILLING_ADMIN, ORG_MEMBER, the spec wants ORG_MEMBER"
        )
    );
    let roles = state.org_users(ORG).into_iter().find(|u| u.username == "bob@example.com").unwrap().roles.org_roles;
    assert_eq!(roles, ["ORG_MEMBER"]);

    // Metrics: the drift corrections are counted.
    let (_, metrics) = operator.get("/metrics").await.unwrap();
    assert!(metrics.contains(r#"atlas_access_drift_corrections_total{kind="AtlasTeamMembership"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"atlas_access_drift_corrections_total{kind="AtlasOrgUser"} 1"#), "{metrics}");

    // Let the refused deletion go (last resort, as the README says), then clean up.
    let unfinalize = json!({"metadata": {"finalizers": null}});
    objects.users.patch("owner", &PatchParams::default(), &Patch::Merge(&unfinalize)).await.unwrap();
    assert!(operator.is_running(), "operator exited:\n{}", operator.logs());
    operator.kill();
    grant.revoke().await;
    ns.cleanup().await;
}

/// Every counter the operator exposes exists at 0 at start-up (alerts see 0, not "no data"),
/// under the one `atlas_access_` prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_at_start_up() {
    let admin = cluster::admin_client().await;
    cluster::install_crds(&admin).await;
    let ns = TestNamespace::new(&admin, "metrics").await;
    let grant = grant_shipped_rbac(&admin, &ns.name, &unprivileged_user(), false).await;
    let operator = Operator::start(
        &operator_kubeconfig(),
        &[format!("--namespace={}", ns.name), "--atlas-url=http://127.0.0.1:9".into(), "--atlas-insecure-http".into()],
        &[],
    );
    let probe = wait_for(WAIT, || async { operator.get("/readyz").await.filter(|(s, _)| *s == 200) }).await;
    assert!(probe.is_some(), "operator never became ready:\n{}", operator.logs());
    let (code, text) = operator.get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    let samples: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {l}")))
        .collect();
    for (series, _) in &samples {
        assert!(series.starts_with("atlas_access_"), "{series} lacks the atlas_access_ prefix");
    }
    let counters: Vec<&(&str, &str)> = samples.iter().filter(|(s, _)| s.contains("_total")).collect();
    let nonzero: Vec<String> = counters.iter().filter(|(_, v)| *v != "0").map(|(s, v)| format!("{s} {v}")).collect();
    assert!(nonzero.is_empty(), "counters not at 0 at start-up: {nonzero:?}");
    for needle in [
        r#"atlas_access_reconciles_total{kind="AtlasOrgUser",outcome="success"} 0"#,
        r#"atlas_access_reconciles_total{kind="AtlasTeamMembership",outcome="permanent_error"} 0"#,
        r#"atlas_access_api_calls_total{operation="createOrgUser",outcome="success"} 0"#,
        r#"atlas_access_api_retries_total{operation="listOrgUsers",outcome="transient"} 0"#,
        r#"atlas_access_api_rate_limited_total{operation="addOrgTeamUser"} 0"#,
        r#"atlas_access_api_throttled_total{operation="createOrgUser"} 0"#,
        r#"atlas_access_api_token_fetches_total{outcome="success"} 0"#,
        r#"atlas_access_drift_corrections_total{kind="AtlasOrgUser"} 0"#,
        r#"atlas_access_status_writes_total{kind="AtlasTeamMembership"} 0"#,
        "atlas_access_leader 1",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    let build = format!(r#"atlas_access_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&build), "{text}");
    assert!(counters.len() > 150, "{} counters", counters.len());
    drop(operator);
    grant.revoke().await;
    ns.cleanup().await;
}
