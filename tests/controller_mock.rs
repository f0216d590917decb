//! The controller's reconcile, request by request, without a cluster: a kube client over a
//! mocked API server (every request is checked and answered by the test, in order) and the
//! in-process Atlas simulator. Pins the Kubernetes side of one reconcile: the finalizer comes
//! first and alone, credentials are read before Atlas is called, events go out before the
//! status, the status is one server-side apply under the operator's field manager (and none
//! when nothing changed), and the finalizer goes only after the clean-up in Atlas.

mod common;

use std::sync::Arc;
use std::time::Duration;

use atlas_access_operator::api::{AtlasOrgUser, AtlasOrgUserStatus, FINALIZER};
use atlas_access_operator::atlas::models::MembershipStatus;
use atlas_access_operator::atlas::{ClientConfig, Credentials, OrgUserIndex};
use atlas_access_operator::controller::credentials::AtlasClients;
use atlas_access_operator::controller::{Context, Retry, reconcile_org_user};
use atlas_access_operator::metrics::ControllerMetrics;
use atlas_access_operator::sim::{SimConfig, SimHandle, Simulator};
use common::kube_mock::{ApiServer, Call, mock_client};
use http::Method;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

const ORG: &str = "5f1b2c3d4e5f60718293a4b5";
const NS: &str = "team-a";
const SECRET: &str = "atlas-credentials";
const PUBLIC_KEY: &str = "mock-public";
const PRIVATE_KEY: &str = "mock-private-key";
const USERNAME: &str = "alice@example.com";
const FIELD_MANAGER: &str = "atlas-access-operator";
const RESYNC: Duration = Duration::from_secs(300);

const OBJECT_PATH: &str = "/apis/atlas-access.dev/v1alpha1/namespaces/team-a/atlasorgusers/alice";
const STATUS_PATH: &str = "/apis/atlas-access.dev/v1alpha1/namespaces/team-a/atlasorgusers/alice/status";
const SECRET_PATH: &str = "/api/v1/namespaces/team-a/secrets/atlas-credentials";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events";

fn start_sim() -> SimHandle {
    common::init_crypto();
    let sim = Simulator::start(SimConfig::default().with_api_key(PUBLIC_KEY, PRIVATE_KEY).without_limits()).unwrap();
    let state = sim.state();
    state.add_org_with_id(ORG, "mock");
    state.add_user(ORG, "owner@example.com", MembershipStatus::Active, &["ORG_OWNER"]);
    state.reset_counters();
    sim
}

/// A store holding `objects`, as the controller's reflector would after its listing.
fn store_of(objects: &[&AtlasOrgUser]) -> Store<AtlasOrgUser> {
    let (store, mut writer) = reflector::store();
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::Apply((*object).clone()));
    }
    store
}

/// A context as `run` builds it, over the mocked kube client and the simulator.
fn context(sim: &SimHandle, org_users: Store<AtlasOrgUser>) -> (Arc<Context>, ApiServer) {
    let (kube, api_server) = mock_client();
    let mut template = ClientConfig::new(
        sim.base_url(),
        Credentials::ApiKey { public_key: String::new(), private_key: secrecy::SecretString::from(String::new()) },
    );
    template.insecure_http = true;
    let ctx = Context::new(
        kube,
        AtlasClients::new(template, None),
        OrgUserIndex::new(Duration::from_secs(60)),
        org_users,
        ControllerMetrics::register(&mut Registry::default()),
        RESYNC,
        false,
    );
    (Arc::new(ctx), api_server)
}

/// AtlasOrgUser `alice` as the API server stores it: generation 1, no finalizer yet.
fn alice(deletion_policy: &str) -> AtlasOrgUser {
    serde_json::from_value(json!({
        "apiVersion": "atlas-access.dev/v1alpha1",
        "kind": "AtlasOrgUser",
        "metadata": {
            "name": "alice", "namespace": NS, "uid": "0b5a3c1e-0000-4000-8000-00000000a11c",
            "generation": 1, "resourceVersion": "1001", "creationTimestamp": "2026-01-05T10:00:00Z",
        },
        "spec": {
            "orgId": ORG, "username": USERNAME, "orgRoles": ["ORG_MEMBER"],
            "credentialsSecretRef": {"name": SECRET}, "deletionPolicy": deletion_policy,
        },
    }))
    .unwrap()
}

fn finalized(mut obj: AtlasOrgUser) -> AtlasOrgUser {
    obj.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    obj
}

fn deleting(mut obj: AtlasOrgUser) -> AtlasOrgUser {
    obj.metadata.deletion_timestamp = Some(serde_json::from_value(json!("2026-01-06T10:00:00Z")).unwrap());
    obj
}

/// The credentials Secret as the API server returns it (`data`, base64 on the wire).
fn credentials_secret() -> Secret {
    let mut secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NS, "resourceVersion": "500",
                     "labels": {"atlas.mongodb.com/type": "credentials"}},
        "type": "Opaque",
    }))
    .unwrap();
    secret.data = Some(
        [("publicApiKey", PUBLIC_KEY), ("privateApiKey", PRIVATE_KEY)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    secret
}

/// The credentials GET, answered with the Secret.
fn answer_secret(call: Call) {
    call.expect(Method::GET, SECRET_PATH, &[]);
    call.respond(200, &credentials_secret());
}

/// An events.k8s.io Event about `alice`: checks who reports it and what it regards, answers
/// 201 with it, and returns (type, reason, note).
fn answer_event(call: Call) -> (String, String, String) {
    call.expect(Method::POST, EVENTS_PATH, &[]);
    let event = &call.body;
    assert_eq!(event["apiVersion"], "events.k8s.io/v1", "{call:?}");
    assert_eq!(event["kind"], "Event", "{call:?}");
    assert_eq!(event["reportingController"], FIELD_MANAGER, "{call:?}");
    assert_eq!(event["action"], event["reason"], "{call:?}");
    let regarding = &event["regarding"];
    assert_eq!(
        (&regarding["apiVersion"], &regarding["kind"], &regarding["namespace"], &regarding["name"], &regarding["uid"]),
        (
            &json!("atlas-access.dev/v1alpha1"),
            &json!("AtlasOrgUser"),
            &json!(NS),
            &json!("alice"),
            &json!("0b5a3c1e-0000-4000-8000-00000000a11c")
        ),
        "{call:?}"
    );
    let summary = (
        event["type"].as_str().unwrap().to_string(),
        event["reason"].as_str().unwrap().to_string(),
        event["note"].as_str().unwrap().to_string(),
    );
    call.echo(201);
    summary
}

/// The status apply: `/status`, the operator's field manager with force, an apply patch whose
/// body is exactly apiVersion, kind and status. Answers with `obj` carrying that status and
/// returns the status.
fn answer_status_apply(call: Call, obj: &AtlasOrgUser) -> AtlasOrgUserStatus {
    call.expect(Method::PATCH, STATUS_PATH, &[("fieldManager", FIELD_MANAGER), ("force", "true")]);
    assert_eq!(call.content_type.as_deref(), Some("application/apply-patch+yaml"), "{call:?}");
    let mut keys: Vec<&str> = call.body.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["apiVersion", "kind", "status"], "{call:?}");
    assert_eq!(call.body["apiVersion"], "atlas-access.dev/v1alpha1");
    assert_eq!(call.body["kind"], "AtlasOrgUser");
    assert_no_nulls(&call.body, "");
    let status: AtlasOrgUserStatus = serde_json::from_value(call.body["status"].clone()).unwrap();
    let mut stored = obj.clone();
    stored.status = Some(status.clone());
    call.respond(200, &stored);
    status
}

/// An apply body never carries `null`: for server-side apply it would mean "remove the field".
fn assert_no_nulls(value: &Value, at: &str) {
    match value {
        Value::Null => panic!("null at {at} in an apply body"),
        Value::Object(map) => map.iter().for_each(|(k, v)| assert_no_nulls(v, &format!("{at}/{k}"))),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| assert_no_nulls(v, &format!("{at}/{i}"))),
        _ => {}
    }
}

/// The finalizer's removal: a JSON patch that tests it is still at index 0 before removing it.
fn answer_finalizer_removal(call: Call, obj: &AtlasOrgUser) {
    call.expect(Method::PATCH, OBJECT_PATH, &[]);
    assert_eq!(call.content_type.as_deref(), Some("application/json-patch+json"), "{call:?}");
    assert_eq!(
        call.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    let mut stored = obj.clone();
    stored.metadata.finalizers = None;
    call.respond(200, &stored);
}

fn condition<'a>(status: &'a AtlasOrgUserStatus, type_: &str) -> (&'a str, &'a str, Option<i64>) {
    let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_}: {status:?}"));
    (c.status.as_str(), c.reason.as_str(), c.observed_generation)
}

/// The delay of a requeue, from its Debug form (Action keeps it private).
fn requeue_after(action: &Action) -> Option<Duration> {
    let text = format!("{action:?}");
    let secs = text.split_once("Some(")?.1.split_once("s)")?.0;
    Some(Duration::from_secs_f64(secs.parse().ok()?))
}

fn atlas_user_id(sim: &SimHandle) -> Option<String> {
    sim.state().org_users(ORG).into_iter().find(|u| u.username == USERNAME).map(|u| u.id)
}

/// Scenario 1: the finalizer is added, alone, before anything else; Atlas is not called.
#[tokio::test]
async fn a_new_object_gets_the_finalizer_first_and_nothing_else() {
    let sim = start_sim();
    let obj = alice("Delete");
    let (ctx, mut api) = context(&sim, store_of(&[&obj]));
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));

    let call = api.next().await;
    call.expect(Method::PATCH, OBJECT_PATH, &[]);
    assert_eq!(call.content_type.as_deref(), Some("application/json-patch+json"), "{call:?}");
    assert_eq!(
        call.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    );
    call.respond(200, &finalized(obj));

    let action = api.finish(run).await.expect("reconcile succeeds");
    assert_eq!(action, Action::await_change(), "the patch itself triggers the next reconcile");
    drop(ctx);
    api.assert_done().await;
    assert_eq!(sim.state().counters().total_requests(), 0);
    assert!(sim.state().request_log().is_empty());
}

/// Scenarios 2 and 3: credentials, the invitation, its event, then the status apply; a second
/// reconcile of the object carrying that status writes nothing.
#[tokio::test]
async fn an_invitation_publishes_its_event_then_applies_the_status_and_a_converged_object_writes_nothing() {
    let sim = start_sim();
    let obj = finalized(alice("Delete"));
    let (ctx, mut api) = context(&sim, store_of(&[&obj]));
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));

    answer_secret(api.next().await);
    let (type_, reason, note) = answer_event(api.next().await);
    assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "InvitationSent"));
    assert!(note.contains(USERNAME), "{note}");
    let status = answer_status_apply(api.next().await, &obj);

    let action = api.finish(run).await.expect("reconcile succeeds");
    let delay = requeue_after(&action).expect("a drift check is scheduled");
    assert!(delay >= RESYNC.mul_f64(0.9) && delay <= RESYNC.mul_f64(1.1), "{delay:?}");
    drop(ctx);
    api.assert_done().await;

    let user_id = atlas_user_id(&sim).expect("alice is invited");
    assert_eq!(status.user_id.as_deref(), Some(user_id.as_str()));
    assert_eq!(status.membership_status.as_deref(), Some("PENDING"));
    assert_eq!(status.org_roles, ["ORG_MEMBER"]);
    assert!(status.invitation_expires_at.is_some());
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.adopted, Some(false));
    assert_eq!(condition(&status, "Ready"), ("True", "Synced", Some(1)));
    assert_eq!(condition(&status, "InvitationAccepted"), ("False", "InvitationPending", Some(1)));
    let counters = sim.state().counters();
    assert_eq!(counters.total("createOrgUser"), 1, "{counters:?}");

    // Scenario 3: the same object, now carrying that status, in a fresh controller (nothing
    // cached): Atlas is read, nothing is sent to it, and Kubernetes sees only the Secret GET.
    sim.state().reset_counters();
    let mut converged = obj.clone();
    converged.status = Some(status);
    let (ctx, mut api) = context(&sim, store_of(&[&converged]));
    let run = tokio::spawn(reconcile_org_user(Arc::new(converged), ctx.clone()));
    answer_secret(api.next().await);
    let action = api.finish(run).await.expect("reconcile succeeds");
    assert!(requeue_after(&action).is_some());
    drop(ctx);
    api.assert_done().await;
    let log = sim.state().request_log();
    assert!(!log.is_empty(), "the second pass observes Atlas");
    assert!(log.iter().all(|r| r.method == "GET"), "{log:?}");
}

/// Scenario 4, Delete: the user leaves the organization, then the finalizer goes.
#[tokio::test]
async fn deletion_with_policy_delete_removes_the_user_then_the_finalizer() {
    let sim = start_sim();
    let user_id = sim.state().add_user(ORG, USERNAME, MembershipStatus::Active, &["ORG_MEMBER"]);
    sim.state().reset_counters();
    let mut obj = deleting(finalized(alice("Delete")));
    obj.status = Some(AtlasOrgUserStatus {
        user_id: Some(user_id.clone()),
        membership_status: Some("ACTIVE".into()),
        observed_generation: Some(1),
        ..Default::default()
    });
    let (ctx, mut api) = context(&sim, store_of(&[&obj]));
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));

    answer_secret(api.next().await);
    let (type_, reason, note) = answer_event(api.next().await);
    assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "UserRemoved"));
    assert!(note.contains(USERNAME), "{note}");
    let call = api.next().await;
    assert_eq!(atlas_user_id(&sim), None, "the finalizer is removed only after the user left Atlas");
    answer_finalizer_removal(call, &obj);

    let action = api.finish(run).await.expect("reconcile succeeds");
    assert_eq!(action, Action::await_change());
    drop(ctx);
    api.assert_done().await;
    assert_eq!(sim.state().counters().count("removeOrgUser", 204), 1, "{:?}", sim.state().counters());
}

/// Scenario 4, Orphan: no credentials, no Atlas call; an `Orphaned` event, then the finalizer goes.
#[tokio::test]
async fn deletion_with_policy_orphan_leaves_atlas_alone() {
    let sim = start_sim();
    let user_id = sim.state().add_user(ORG, USERNAME, MembershipStatus::Active, &["ORG_MEMBER"]);
    sim.state().reset_counters();
    let obj = deleting(finalized(alice("Orphan")));
    let (ctx, mut api) = context(&sim, store_of(&[&obj]));
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));

    let (type_, reason, note) = answer_event(api.next().await);
    assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Orphaned"));
    assert!(note.contains(USERNAME) && note.contains("deletionPolicy is Orphan"), "{note}");
    answer_finalizer_removal(api.next().await, &obj);

    let action = api.finish(run).await.expect("reconcile succeeds");
    assert_eq!(action, Action::await_change());
    drop(ctx);
    api.assert_done().await;
    assert_eq!(sim.state().counters().total_requests(), 0);
    assert_eq!(atlas_user_id(&sim), Some(user_id));
}

/// Scenario 5: the credentials Secret is missing: Ready=False/Stalled in the status, a Warning
/// event, and an error that waits for a change rather than retrying fast.
#[tokio::test]
async fn missing_credentials_stall_with_a_warning_and_a_slow_retry() {
    let sim = start_sim();
    let obj = finalized(alice("Delete"));
    let (ctx, mut api) = context(&sim, store_of(&[&obj]));
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));

    let call = api.next().await;
    call.expect(Method::GET, SECRET_PATH, &[]);
    call.not_found("secrets", SECRET);
    let status = answer_status_apply(api.next().await, &obj);
    let (type_, reason, note) = answer_event(api.next().await);

    let err = api.finish(run).await.expect_err("reconcile fails");
    assert_eq!(err.retry(), Retry::Slow, "{err}");
    drop(ctx);
    api.assert_done().await;

    assert_eq!(condition(&status, "Ready"), ("False", "CredentialsMissing", Some(1)));
    assert_eq!(condition(&status, "Stalled"), ("True", "CredentialsMissing", Some(1)));
    assert!(status.conditions.iter().all(|c| c.type_ != "Reconciling"), "{status:?}");
    assert_eq!(status.user_id, None);
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!((type_.as_str(), reason.as_str()), ("Warning", "CredentialsMissing"));
    assert!(note.contains(&format!("{NS}/{SECRET}")), "{note}");
    assert!(!note.contains(PRIVATE_KEY));
    assert_eq!(sim.state().counters().total_requests(), 0);
}

/// Two objects claim the same user: the younger one, found through the controller's store,
/// does not touch Atlas and says in its status (no event) which object owns the user.
#[tokio::test]
async fn a_younger_object_claiming_the_same_user_leaves_atlas_alone() {
    let sim = start_sim();
    let mut owner = finalized(alice("Delete"));
    owner.metadata.name = Some("alice-first".into());
    owner.metadata.uid = Some("0b5a3c1e-0000-4000-8000-0000000f1257".into());
    owner.metadata.creation_timestamp = Some(serde_json::from_value(json!("2026-01-01T10:00:00Z")).unwrap());
    let obj = finalized(alice("Delete"));
    let (ctx, mut api) = context(&sim, store_of(&[&owner, &obj]));
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));

    answer_secret(api.next().await);
    let status = answer_status_apply(api.next().await, &obj);
    let action = api.finish(run).await.expect("a conflict is a settled state, not an error");
    assert!(requeue_after(&action).is_some());
    drop(ctx);
    api.assert_done().await;

    assert_eq!(condition(&status, "Ready"), ("False", "Conflict", Some(1)));
    assert_eq!(condition(&status, "Stalled"), ("True", "Conflict", Some(1)));
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains(&format!("{NS}/alice-first")), "{}", ready.message);
    assert_eq!(status.user_id, None);
    assert_eq!(atlas_user_id(&sim), None, "nobody was invited");
    let log = sim.state().request_log();
    assert!(log.iter().all(|r| r.method == "GET"), "{log:?}");
}
