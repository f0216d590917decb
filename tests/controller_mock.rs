//! The controller's reconcile, request by request, without a cluster: a kube client over a
//! mocked API server (every request is checked and answered by the test, in order; one more
//! request than expected fails the test) and the in-process Atlas simulator.
//!
//! Pinned: the finalizer comes first and alone (Atlas untouched); credentials are read before
//! Atlas is called; events go out before the status; the status is one server-side apply of
//! `{apiVersion, kind, status}` under the operator's field manager with force, and none when
//! nothing changed; the finalizer goes only after the clean-up in Atlas (Delete), or at once
//! with an `Orphaned` event (Orphan); missing credentials stall with a Warning and a slow
//! retry; conflicts and deletions among two claims of one user; refused events and status
//! writes; the AtlasTeamMembership kind through the same path.

mod common;

use std::sync::Arc;
use std::time::Duration;

use atlas_access_operator::api::{
    AtlasOrgUser, AtlasOrgUserStatus, AtlasTeamMembership, AtlasTeamMembershipStatus, FINALIZER, MemberState,
};
use atlas_access_operator::atlas::models::MembershipStatus;
use atlas_access_operator::atlas::{ClientConfig, Credentials};
use atlas_access_operator::controller::credentials::AtlasClients;
use atlas_access_operator::controller::{Context, Retry, reconcile_org_user, reconcile_team_membership};
use atlas_access_operator::engine::OrgUserIndex;
use atlas_access_operator::metrics::ControllerMetrics;
use atlas_access_operator::sim::{SimConfig, SimHandle, Simulator};
use common::kube_mock::{ApiServer, Call, mock_client, status_failure};
use http::Method;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
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
    context_with_default(sim, org_users, None)
}

/// The same, with `--default-credentials-secret` NAMESPACE/NAME.
fn context_with_default(
    sim: &SimHandle,
    org_users: Store<AtlasOrgUser>,
    default_secret: Option<(&str, &str)>,
) -> (Arc<Context>, ApiServer) {
    context_with(sim, org_users, default_secret, |clients| clients)
}

/// The same, with the Atlas clients adjusted as `run` does (e.g. their revalidation period).
fn context_with(
    sim: &SimHandle,
    org_users: Store<AtlasOrgUser>,
    default_secret: Option<(&str, &str)>,
    adjust: impl FnOnce(AtlasClients) -> AtlasClients,
) -> (Arc<Context>, ApiServer) {
    let (kube, api_server) = mock_client();
    let mut template = ClientConfig::new(
        sim.base_url(),
        Credentials::ApiKey { public_key: String::new(), private_key: secrecy::SecretString::from(String::new()) },
    );
    template.insecure_http = true;
    // The simulator has no invitation limit.
    template.invitations = atlas_access_operator::atlas::InvitationQueue::disabled();
    let ctx = Context::new(
        kube,
        adjust(AtlasClients::new(template, default_secret.map(|(ns, name)| (ns.to_string(), name.to_string())))),
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

fn deleting<K: Resource>(mut obj: K) -> K {
    obj.meta_mut().deletion_timestamp = Some(serde_json::from_value(json!("2026-01-06T10:00:00Z")).unwrap());
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

/// `/apis/GROUP/VERSION/namespaces/NS/PLURAL/NAME` of an object.
fn object_path<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "/apis/{}/namespaces/{}/{}/{}",
        K::api_version(&()),
        meta.namespace.as_deref().unwrap(),
        K::plural(&()),
        meta.name.as_deref().unwrap()
    )
}

/// An events.k8s.io Event about `obj`: checks who reports it and what it regards, answers
/// 201 with it, and returns (type, reason, note).
fn answer_event<K: Resource<DynamicType = ()>>(call: Call, obj: &K) -> (String, String, String) {
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
            &json!(K::api_version(&())),
            &json!(K::kind(&())),
            &json!(obj.meta().namespace),
            &json!(obj.meta().name),
            &json!(obj.meta().uid)
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
fn answer_status_apply<K, S>(call: Call, obj: &K) -> S
where
    K: Resource<DynamicType = ()> + Serialize,
    S: DeserializeOwned,
{
    call.expect(
        Method::PATCH,
        &format!("{}/status", object_path(obj)),
        &[("fieldManager", FIELD_MANAGER), ("force", "true")],
    );
    assert_eq!(call.content_type.as_deref(), Some("application/apply-patch+yaml"), "{call:?}");
    let mut keys: Vec<&str> = call.body.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["apiVersion", "kind", "status"], "{call:?}");
    assert_eq!(call.body["apiVersion"], K::api_version(&()).as_ref());
    assert_eq!(call.body["kind"], K::kind(&()).as_ref());
    assert_no_nulls(&call.body, "");
    let status = serde_json::from_value(call.body["status"].clone()).unwrap();
    let mut stored = serde_json::to_value(obj).unwrap();
    stored["status"] = call.body["status"].clone();
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
fn answer_finalizer_removal<K: Resource<DynamicType = ()> + Serialize>(call: Call, obj: &K) {
    call.expect(Method::PATCH, &object_path(obj), &[]);
    assert_eq!(call.content_type.as_deref(), Some("application/json-patch+json"), "{call:?}");
    assert_eq!(
        call.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    let mut stored = serde_json::to_value(obj).unwrap();
    stored["metadata"].as_object_mut().unwrap().remove("finalizers");
    call.respond(200, &stored);
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> (&'a str, &'a str, Option<i64>) {
    let c = conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_}: {conditions:?}"));
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
    let (type_, reason, note) = answer_event(api.next().await, &obj);
    assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "InvitationSent"));
    assert!(note.contains(USERNAME), "{note}");
    let status: AtlasOrgUserStatus = answer_status_apply(api.next().await, &obj);

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
    assert_eq!(condition(&status.conditions, "Ready"), ("True", "Synced", Some(1)));
    assert_eq!(condition(&status.conditions, "InvitationAccepted"), ("False", "InvitationPending", Some(1)));
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

/// A no-op reconcile makes no API-server request: the tenant's Secret is read once, the
/// client built from it serves the next reconciles within its revalidation period (`run` sets
/// it below the resync interval), and a converged object writes no status and no event.
#[tokio::test]
async fn a_no_op_reconcile_makes_no_api_server_request() {
    let sim = start_sim();
    let obj = finalized(alice("Delete"));
    let (ctx, mut api) = context_with(&sim, store_of(&[&obj]), None, |c| c.with_revalidation(RESYNC.mul_f64(0.8)));
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));
    answer_secret(api.next().await);
    answer_event(api.next().await, &obj);
    let status: AtlasOrgUserStatus = answer_status_apply(api.next().await, &obj);
    api.finish(run).await.expect("reconcile succeeds");

    let mut converged = obj.clone();
    converged.status = Some(status);
    for _ in 0..3 {
        let run = tokio::spawn(reconcile_org_user(Arc::new(converged.clone()), ctx.clone()));
        let action = api.finish(run).await.expect("a no-op reconcile succeeds");
        assert!(requeue_after(&action).is_some());
    }
    drop(ctx);
    api.assert_done().await;
}

/// A reconcile triggered again before the watch delivered the operator's own status write
/// (the cache still holds the version that write replaced) waits for the watch: no Atlas
/// call, no API-server request, a short requeue. Planning from the older status would repeat
/// what the last reconcile did (an Atlas write, a warning event). Once the cache shows the
/// write, the object reconciles as usual.
#[tokio::test]
async fn a_reconcile_from_a_cache_behind_its_own_status_write_waits_for_the_watch() {
    let sim = start_sim();
    let mut obj = finalized(alice("Delete"));
    obj.metadata.resource_version = Some("1".into());
    let (ctx, mut api) = context_with(&sim, store_of(&[&obj]), None, |c| c.with_revalidation(RESYNC.mul_f64(0.8)));
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));
    answer_secret(api.next().await);
    answer_event(api.next().await, &obj);
    let mut written = obj.clone();
    written.metadata.resource_version = Some("2".into());
    let status: AtlasOrgUserStatus = answer_status_apply(api.next().await, &written);
    api.finish(run).await.expect("reconcile succeeds");
    let atlas_calls = sim.state().counters().total_requests();

    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));
    let action = api.finish(run).await.expect("waiting is not an error");
    assert_eq!(action, Action::requeue(Duration::from_millis(500)));
    assert_eq!(sim.state().counters().total_requests(), atlas_calls, "no Atlas call from a stale cache");

    written.status = Some(status);
    let run = tokio::spawn(reconcile_org_user(Arc::new(written.clone()), ctx.clone()));
    let action = api.finish(run).await.expect("a no-op reconcile succeeds");
    assert!(requeue_after(&action).is_some_and(|d| d > Duration::from_secs(60)), "{action:?}");
    drop(ctx);
    api.assert_done().await;
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
        // The operator invited alice: deleting the object removes her.
        adopted: Some(false),
        observed_generation: Some(1),
        ..Default::default()
    });
    let (ctx, mut api) = context(&sim, store_of(&[&obj]));
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));

    answer_secret(api.next().await);
    let (type_, reason, note) = answer_event(api.next().await, &obj);
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

    let (type_, reason, note) = answer_event(api.next().await, &obj);
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
    let status: AtlasOrgUserStatus = answer_status_apply(api.next().await, &obj);
    let (type_, reason, note) = answer_event(api.next().await, &obj);

    let err = api.finish(run).await.expect_err("reconcile fails");
    assert_eq!(err.retry(), Retry::Slow, "{err}");
    drop(ctx);
    api.assert_done().await;

    assert_eq!(condition(&status.conditions, "Ready"), ("False", "CredentialsMissing", Some(1)));
    assert_eq!(condition(&status.conditions, "Stalled"), ("True", "CredentialsMissing", Some(1)));
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
    // A Warning event the first time, naming the owner (`--field-selector type=Warning` finds it).
    let (type_, reason, note) = answer_event(api.next().await, &obj);
    assert_eq!((type_.as_str(), reason.as_str()), ("Warning", "Conflict"));
    assert!(note.contains(&format!("{NS}/alice-first")), "{note}");
    let status: AtlasOrgUserStatus = answer_status_apply(api.next().await, &obj);
    let action = api.finish(run).await.expect("a conflict is a settled state, not an error");
    assert!(requeue_after(&action).is_some());

    // The next resync finds the same Conflict: no second event, no status write.
    let mut again = obj.clone();
    again.status = Some(status.clone());
    let run = tokio::spawn(reconcile_org_user(Arc::new(again), ctx.clone()));
    answer_secret(api.next().await);
    api.finish(run).await.expect("still a settled state");
    drop(ctx);
    api.assert_done().await;

    assert_eq!(condition(&status.conditions, "Ready"), ("False", "Conflict", Some(1)));
    assert_eq!(condition(&status.conditions, "Stalled"), ("True", "Conflict", Some(1)));
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains(&format!("{NS}/alice-first")), "{}", ready.message);
    assert_eq!(status.user_id, None);
    assert_eq!(atlas_user_id(&sim), None, "nobody was invited");
    let log = sim.state().request_log();
    assert!(log.iter().all(|r| r.method == "GET"), "{log:?}");
}

/// A deletion that finds the credentials Secret already gone (a namespace being deleted removes
/// Secrets and objects together) finishes with the last good client: the pending invitation is
/// cancelled, then the finalizer goes.
#[tokio::test]
async fn deletion_after_the_secret_is_gone_cancels_the_invitation_with_the_last_good_credentials() {
    let sim = start_sim();
    let obj = finalized(alice("Delete"));
    let (ctx, mut api) = context(&sim, store_of(&[&obj]));
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));
    answer_secret(api.next().await);
    answer_event(api.next().await, &obj);
    let status: AtlasOrgUserStatus = answer_status_apply(api.next().await, &obj);
    api.finish(run).await.expect("the invitation is sent");
    assert!(atlas_user_id(&sim).is_some());

    let mut gone = deleting(obj);
    gone.status = Some(status);
    let run = tokio::spawn(reconcile_org_user(Arc::new(gone.clone()), ctx.clone()));
    let call = api.next().await;
    call.expect(Method::GET, SECRET_PATH, &[]);
    call.not_found("secrets", SECRET);
    let (type_, reason, note) = answer_event(api.next().await, &gone);
    assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "UserRemoved"));
    assert!(note.contains("cancel the invitation") && note.contains(USERNAME), "{note}");
    let call = api.next().await;
    assert_eq!(atlas_user_id(&sim), None, "the invitation is cancelled before the finalizer goes");
    answer_finalizer_removal(call, &gone);
    assert_eq!(api.finish(run).await.expect("clean-up succeeds"), Action::await_change());
    drop(ctx);
    api.assert_done().await;
}

/// The other kind through the same machinery: a member named by `orgUserRef` (resolved through
/// the AtlasOrgUser store) is added with its event before the status apply; deleting the
/// object removes the member it added, then the finalizer.
#[tokio::test]
async fn a_team_membership_adds_its_member_and_removes_it_on_deletion() {
    const TEAM_ID: &str = "6b1b2c3d4e5f60718293a4b5";
    let sim = start_sim();
    sim.state().add_team_with_id(ORG, TEAM_ID, "observability");
    let bob_id = sim.state().add_user(ORG, "bob@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    sim.state().reset_counters();
    let mut bob = finalized(alice("Delete"));
    bob.metadata.name = Some("bob".into());
    bob.metadata.uid = Some("0b5a3c1e-0000-4000-8000-000000000b0b".into());
    bob.spec.username = "bob@example.com".into();
    let team: AtlasTeamMembership = serde_json::from_value(json!({
        "apiVersion": "atlas-access.dev/v1alpha1",
        "kind": "AtlasTeamMembership",
        "metadata": {
            "name": "observability", "namespace": NS, "uid": "0b5a3c1e-0000-4000-8000-0000000007ea",
            "generation": 3, "resourceVersion": "2001", "creationTimestamp": "2026-01-05T10:00:00Z",
            "finalizers": [FINALIZER],
        },
        "spec": {
            "orgId": ORG, "team": {"id": TEAM_ID}, "members": [{"orgUserRef": {"name": "bob"}}],
            "credentialsSecretRef": {"name": SECRET}, "deletionPolicy": "Delete",
        },
    }))
    .unwrap();
    let (ctx, mut api) = context(&sim, store_of(&[&bob]));
    let run = tokio::spawn(reconcile_team_membership(Arc::new(team.clone()), ctx.clone()));

    answer_secret(api.next().await);
    // Write-ahead: the record naming bob (and the pinned team) is written before :addUser.
    let call = api.next().await;
    assert!(sim.state().team_member_ids(ORG, TEAM_ID).is_empty(), "no call before the record is written");
    let intent: AtlasTeamMembershipStatus = answer_status_apply(call, &team);
    assert_eq!(intent.team_id.as_deref(), Some(TEAM_ID));
    assert_eq!(intent.added_members.iter().map(|a| a.user_id.as_str()).collect::<Vec<_>>(), vec![bob_id.as_str()]);
    let (type_, reason, note) = answer_event(api.next().await, &team);
    assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "MemberAdded"));
    assert!(note.contains("bob@example.com") && note.contains("observability"), "{note}");
    let status: AtlasTeamMembershipStatus = answer_status_apply(api.next().await, &team);
    let action = api.finish(run).await.expect("reconcile succeeds");
    assert!(requeue_after(&action).is_some());

    assert_eq!(status.team_id.as_deref(), Some(TEAM_ID));
    assert_eq!(status.team_name.as_deref(), Some("observability"));
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(condition(&status.conditions, "Ready"), ("True", "Synced", Some(3)));
    assert_eq!(status.members.len(), 1, "{status:?}");
    assert_eq!(status.members[0].org_user_ref.as_deref(), Some("bob"));
    assert_eq!(status.members[0].user_id.as_deref(), Some(bob_id.as_str()));
    assert_eq!(status.members[0].state, MemberState::Member);
    assert_eq!(sim.state().team_member_ids(ORG, TEAM_ID), std::slice::from_ref(&bob_id));

    let mut gone = deleting(team);
    gone.status = Some(status);
    let run = tokio::spawn(reconcile_team_membership(Arc::new(gone.clone()), ctx.clone()));
    answer_secret(api.next().await);
    let (type_, reason, note) = answer_event(api.next().await, &gone);
    assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "MemberRemoved"));
    assert!(note.contains("bob@example.com"), "{note}");
    let call = api.next().await;
    assert!(sim.state().team_member_ids(ORG, TEAM_ID).is_empty(), "the member leaves before the finalizer goes");
    answer_finalizer_removal(call, &gone);
    assert_eq!(api.finish(run).await.expect("clean-up succeeds"), Action::await_change());
    drop(ctx);
    api.assert_done().await;
    assert!(atlas_user_id(&sim).is_none());
    assert!(sim.state().org_users(ORG).iter().any(|u| u.id == bob_id), "bob stays in the organization");
}

/// Deleting one of two objects that declare the same user never removes that user: the
/// younger one never managed it, and the older one hands it over to the younger. Either way
/// only the finalizer goes, without an event.
#[tokio::test]
async fn deleting_one_of_two_claims_leaves_the_user_to_the_other() {
    let sim = start_sim();
    let user_id = sim.state().add_user(ORG, USERNAME, MembershipStatus::Active, &["ORG_MEMBER"]);
    let mut older = finalized(alice("Delete"));
    older.metadata.name = Some("alice-first".into());
    older.metadata.uid = Some("0b5a3c1e-0000-4000-8000-0000000f1257".into());
    older.metadata.creation_timestamp = Some(serde_json::from_value(json!("2026-01-01T10:00:00Z")).unwrap());
    let younger = finalized(alice("Delete"));
    for (deleted, other) in [(&younger, &older), (&older, &younger)] {
        sim.state().reset_counters();
        let gone = deleting(deleted.clone());
        let (ctx, mut api) = context(&sim, store_of(&[&gone, other]));
        let run = tokio::spawn(reconcile_org_user(Arc::new(gone.clone()), ctx.clone()));
        answer_secret(api.next().await);
        answer_finalizer_removal(api.next().await, &gone);
        assert_eq!(api.finish(run).await.expect("clean-up succeeds"), Action::await_change());
        drop(ctx);
        api.assert_done().await;
        assert_eq!(atlas_user_id(&sim), Some(user_id.clone()), "deleting {}", gone.metadata.name.as_deref().unwrap());
        let log = sim.state().request_log();
        assert!(log.iter().all(|r| r.method == "GET"), "{log:?}");
    }
}

/// Events are best effort: a refused event (say, RBAC without events) does not stop the status
/// apply; a refused status apply is an error retried with backoff, and the retry does not invite
/// again.
#[tokio::test]
async fn a_refused_event_is_not_fatal_and_a_refused_status_apply_backs_off() {
    let sim = start_sim();
    let obj = finalized(alice("Delete"));
    let (ctx, mut api) = context(&sim, store_of(&[&obj]));
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));

    answer_secret(api.next().await);
    let call = api.next().await;
    call.expect(Method::POST, EVENTS_PATH, &[]);
    call.respond(403, &status_failure(403, "Forbidden", "events.events.k8s.io is forbidden"));
    let call = api.next().await;
    call.expect(Method::PATCH, &format!("{OBJECT_PATH}/status"), &[("fieldManager", FIELD_MANAGER), ("force", "true")]);
    call.respond(409, &status_failure(409, "Conflict", "the object has been modified"));

    let err = api.finish(run).await.expect_err("the status was not written");
    assert_eq!(err.retry(), Retry::Backoff, "{err}");

    // The retry finds the invitation in Atlas: no second one, and the status is written. (It
    // cannot tell its own invitation from one that was there before, so it may report an
    // adoption; what matters here is that nobody is invited twice.)
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));
    answer_secret(api.next().await);
    let status: AtlasOrgUserStatus = loop {
        let call = api.next().await;
        if call.method == Method::PATCH {
            break answer_status_apply(call, &obj);
        }
        let (_, reason, _) = answer_event(call, &obj);
        assert_ne!(reason, "InvitationSent");
    };
    api.finish(run).await.expect("the retry succeeds");
    drop(ctx);
    api.assert_done().await;
    assert_eq!(status.membership_status.as_deref(), Some("PENDING"));
    assert_eq!(status.user_id, atlas_user_id(&sim));
    assert_eq!(sim.state().counters().total("createOrgUser"), 1);
}

/// A clean-up whose own Secret is gone and was never read by this operator process falls back
/// to the default credentials: own Secret 404, default Secret GET, removal, event, finalizer.
#[tokio::test]
async fn deletion_after_the_secret_is_gone_falls_back_to_the_default_credentials() {
    let sim = start_sim();
    let user_id = sim.state().add_user(ORG, USERNAME, MembershipStatus::Active, &["ORG_MEMBER"]);
    sim.state().reset_counters();
    let mut obj = deleting(finalized(alice("Delete")));
    // The operator invited alice: deleting the object removes her.
    obj.status = Some(AtlasOrgUserStatus { adopted: Some(false), ..Default::default() });
    let (ctx, mut api) = context_with_default(&sim, store_of(&[&obj]), Some(("operator", "atlas-default")));
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));

    let call = api.next().await;
    call.expect(Method::GET, SECRET_PATH, &[]);
    call.not_found("secrets", SECRET);
    let call = api.next().await;
    call.expect(Method::GET, "/api/v1/namespaces/operator/secrets/atlas-default", &[]);
    let mut default_secret = credentials_secret();
    default_secret.metadata.namespace = Some("operator".into());
    default_secret.metadata.name = Some("atlas-default".into());
    call.respond(200, &default_secret);
    let (type_, reason, note) = answer_event(api.next().await, &obj);
    assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "UserRemoved"));
    assert!(note.contains(&user_id), "{note}");
    let call = api.next().await;
    assert_eq!(atlas_user_id(&sim), None, "the user leaves before the finalizer goes");
    answer_finalizer_removal(call, &obj);
    assert_eq!(api.finish(run).await.expect("clean-up succeeds"), Action::await_change());
    drop(ctx);
    api.assert_done().await;
}

/// Write-ahead ownership: an invitation that grants a team applies the status carrying the
/// ownership record (`status.granted`) before anything is sent to Atlas; when that apply is
/// refused, nothing is sent and the reconcile backs off.
#[tokio::test]
async fn the_ownership_record_is_applied_before_the_grant_and_a_refusal_sends_nothing() {
    const TEAM: &str = "6b1b2c3d4e5f60718293a4c9";
    let sim = start_sim();
    sim.state().add_team_with_id(ORG, TEAM, "observability");
    let mut obj = finalized(alice("Delete"));
    obj.spec.team_ids = vec![TEAM.into()];
    let (ctx, mut api) = context(&sim, store_of(&[&obj]));

    // Refused: no invitation.
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));
    answer_secret(api.next().await);
    let call = api.next().await;
    call.expect(Method::PATCH, &format!("{OBJECT_PATH}/status"), &[("fieldManager", FIELD_MANAGER), ("force", "true")]);
    assert_eq!(call.body["status"]["granted"]["teamIds"], json!([TEAM]), "{call:?}");
    call.respond(409, &status_failure(409, "Conflict", "the object has been modified"));
    let (type_, reason, _) = answer_event(api.next().await, &obj);
    assert_eq!((type_.as_str(), reason.as_str()), ("Warning", "OwnershipNotRecorded"));
    let err = api.finish(run).await.expect_err("nothing was granted");
    assert_eq!(err.retry(), Retry::Backoff, "{err}");
    assert_eq!(sim.state().counters().total("createOrgUser"), 0, "nothing sent to Atlas");

    // Accepted: the record first, then the invitation, its event and the final status.
    let run = tokio::spawn(reconcile_org_user(Arc::new(obj.clone()), ctx.clone()));
    answer_secret(api.next().await);
    let call = api.next().await;
    assert!(atlas_user_id(&sim).is_none(), "the record goes before the invitation");
    let intent: AtlasOrgUserStatus = answer_status_apply(call, &obj);
    assert_eq!(intent.granted.team_ids, [TEAM]);
    let (_, reason, _) = answer_event(api.next().await, &obj);
    assert_eq!(reason, "InvitationSent");
    let status: AtlasOrgUserStatus = answer_status_apply(api.next().await, &obj);
    api.finish(run).await.expect("reconcile succeeds");
    drop(ctx);
    api.assert_done().await;
    assert_eq!(status.granted.team_ids, [TEAM]);
    assert_eq!(sim.state().team_member_ids(ORG, TEAM).len(), 1);
}

/// A write-ahead record the API server refuses: nothing is sent to Atlas, and the reconcile
/// is retried with backoff.
#[tokio::test]
async fn a_refused_write_ahead_record_sends_nothing() {
    const TEAM_ID: &str = "6b1b2c3d4e5f60718293a4b5";
    let sim = start_sim();
    sim.state().add_team_with_id(ORG, TEAM_ID, "observability");
    sim.state().add_user(ORG, "bob@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    let team: AtlasTeamMembership = serde_json::from_value(json!({
        "apiVersion": "atlas-access.dev/v1alpha1",
        "kind": "AtlasTeamMembership",
        "metadata": {
            "name": "observability", "namespace": NS, "uid": "0b5a3c1e-0000-4000-8000-0000000007eb",
            "generation": 1, "resourceVersion": "2001", "creationTimestamp": "2026-01-05T10:00:00Z",
            "finalizers": [FINALIZER],
        },
        "spec": {
            "orgId": ORG, "team": {"id": TEAM_ID}, "members": [{"username": "bob@example.com"}],
            "credentialsSecretRef": {"name": SECRET},
        },
    }))
    .unwrap();
    let (ctx, mut api) = context(&sim, store_of(&[]));
    let run = tokio::spawn(reconcile_team_membership(Arc::new(team.clone()), ctx.clone()));
    answer_secret(api.next().await);
    let call = api.next().await;
    call.expect(
        Method::PATCH,
        &format!("{}/status", object_path(&team)),
        &[("fieldManager", FIELD_MANAGER), ("force", "true")],
    );
    call.respond(500, &status_failure(500, "InternalError", "etcdserver: request timed out"));
    let error = api.finish(run).await.expect_err("the reconcile fails");
    assert_eq!(error.retry(), Retry::Backoff, "{error}");
    assert!(error.to_string().contains("nothing was sent to Atlas"), "{error}");
    drop(ctx);
    api.assert_done().await;
    assert!(sim.state().team_member_ids(ORG, TEAM_ID).is_empty());
    assert_eq!(sim.state().counters().total("addOrgTeamUser"), 0);
}

/// An AtlasOrgUser's change reaches the team memberships that list it by `orgUserRef` (same
/// namespace) or by username (same org, any case), and those of a team its `teamIds` name;
/// not those of another organization.
#[test]
fn an_org_user_change_triggers_the_teams_that_list_it_by_username_too() {
    use atlas_access_operator::controller::indexes::{Index, team_keys};
    use atlas_access_operator::controller::teams_affected_by_org_user;
    let team = |name: &str, org: &str, members: Value, status: Value| -> AtlasTeamMembership {
        serde_json::from_value(json!({
            "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasTeamMembership",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"orgId": org, "team": {"name": "devs"}, "members": members},
            "status": status,
        }))
        .unwrap()
    };
    const OTHER_ORG: &str = "5f1b2c3d4e5f60718293a4ff";
    let teams = [
        team("by-username", ORG, json!([{"username": "Alice@Example.COM"}]), json!({})),
        team("by-ref", ORG, json!([{"orgUserRef": {"name": "alice"}}]), json!({})),
        team("other-org", OTHER_ORG, json!([{"username": "alice@example.com"}]), json!({})),
        team("by-team-id", ORG, json!([]), json!({"teamId": "6b1b2c3d4e5f60718293a4b5"})),
        team("unrelated", ORG, json!([{"username": "bob@example.com"}]), json!({})),
    ];
    let (store, mut writer) = reflector::store();
    for t in &teams {
        writer.apply_watcher_event(&watcher::Event::Apply(t.clone()));
    }
    let mut user = alice("Delete");
    user.spec.team_ids = vec!["6b1b2c3d4e5f60718293a4b5".into()];
    let index = Index::of_store(team_keys, &store);
    let mut names: Vec<String> = teams_affected_by_org_user(&index, &user).into_iter().map(|r| r.name).collect();
    names.sort();
    assert_eq!(names, ["by-ref", "by-team-id", "by-username"]);
}
