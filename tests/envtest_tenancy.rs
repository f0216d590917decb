//! Tenancy against a real kube-apiserver (envtest, or any cluster via KUBECONFIG) and the
//! in-process Atlas simulator, with the operator as a child process holding only the RBAC that
//! `deploy/manifests/` ships:
//!
//! - with the admission policy absent, the controller refuses an object in a namespace its
//!   AtlasOrganization does not allow, and one above the role ceiling (NotAllowed, Stalled, no
//!   Atlas call), and serves the allowed one with the organization's credentials;
//! - a tenant with junk credentials for the organization never sees its data and is not Ready;
//! - a tenant's own Secret works only once its namespace grants the operator read access;
//! - SubjectAccessReviews: the operator's account cannot list Secrets cluster-wide;
//! - then the ValidatingAdmissionPolicy of `deploy/manifests/` refuses the same objects at apply
//!   time, naming the policy, and admits the allowed ones.
//!
//! One test, in that order: the admission policy is cluster-wide, so the controller part must
//! run before it is installed.

mod common;

use std::time::Duration;

use atlas_access_operator::api::{AtlasOrgUser, AtlasOrganization, AtlasTeamMembership};
use atlas_access_operator::atlas::models::MembershipStatus;
use atlas_access_operator::sim::{SimConfig, Simulator};
use common::cluster::{self, TEST_MANAGER, TestNamespace, wait_for};
use common::operator::{Operator, grant_shipped_rbac, operator_kubeconfig, unprivileged_user, wait_object};
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const ORG_KEY: (&str, &str) = ("acme-org-public", "acme-org-private");
const TENANT_KEY: (&str, &str) = ("team-own-public", "team-own-private");
const POLICY: &str = "atlas-access-operator-tenancy";

fn condition<'a>(conditions: &'a [Condition], t: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == t)
}

fn ready_reason(u: &AtlasOrgUser) -> Option<(String, String, String)> {
    let status = u.status.as_ref()?;
    let c = condition(&status.conditions, "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn org_user(name: &str, org: &str, username: &str, roles: &[&str], label: &str, extra: Value) -> AtlasOrgUser {
    let mut spec = json!({"orgId": org, "username": username, "orgRoles": roles});
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasOrgUser",
        "metadata": {"name": name, "labels": {"tenancy-test": label}},
        "spec": spec,
    }))
    .unwrap()
}

async fn apply_user(admin: &Client, ns: &str, user: &AtlasOrgUser) {
    Api::<AtlasOrgUser>::namespaced(admin.clone(), ns)
        .patch(user.metadata.name.as_deref().unwrap(), &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(user))
        .await
        .unwrap_or_else(|e| panic!("applying {:?} in {ns}: {e}", user.metadata.name));
}

async fn apply_secret(admin: &Client, ns: &str, name: &str, (public, private): (&str, &str)) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "labels": {"atlas.mongodb.com/type": "credentials"}},
        "stringData": {"publicApiKey": public, "privateApiKey": private},
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), ns)
        .patch(name, &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&secret))
        .await
        .unwrap();
}

/// `kubectl auth can-i VERB secrets [-n NS]` as `user`.
async fn can_i(admin: &Client, user: &str, verb: &str, namespace: Option<&str>) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some("secrets".into()),
                namespace: namespace.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(admin.clone()).create(&PostParams::default(), &review).await.unwrap();
    answer.status.unwrap().allowed
}

fn policy_documents() -> Vec<Value> {
    let text = std::fs::read_to_string("deploy/manifests/06-admission-policy.yaml").unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect()
}

async fn remove_policy(admin: &Client) {
    let _ = Api::<ValidatingAdmissionPolicyBinding>::all(admin.clone()).delete(POLICY, &DeleteParams::default()).await;
    let _ = Api::<ValidatingAdmissionPolicy>::all(admin.clone()).delete(POLICY, &DeleteParams::default()).await;
}

async fn dry_run_create<K>(api: &Api<K>, obj: &K) -> Result<(), String>
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let params = PostParams { dry_run: true, ..Default::default() };
    api.create(&params, obj).await.map(|_| ()).map_err(|e| match e {
        kube::Error::Api(status) => status.message,
        other => other.to_string(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_controller_then_admission() {
    let admin = cluster::admin_client().await;
    cluster::install_crds(&admin).await;
    remove_policy(&admin).await;
    let operator_ns = TestNamespace::new(&admin, "tenancy-op").await;
    let team_a = TestNamespace::new(&admin, "tenancy-a").await;
    let team_b = TestNamespace::new(&admin, "tenancy-b").await;
    let outside = TestNamespace::new(&admin, "tenancy-out").await;
    let label = operator_ns.name.clone();
    // team-b is allowed by a label, team-a by name.
    let ns_api: Api<Namespace> = Api::all(admin.clone());
    ns_api
        .patch(
            &team_b.name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": team_b.name, "labels": {"atlas-tenant": label}}})),
        )
        .await
        .unwrap();
    let user = unprivileged_user();
    let grant = grant_shipped_rbac(&admin, &operator_ns.name, &user, false).await;

    let sim = Simulator::start(
        SimConfig::default()
            .with_api_key(ORG_KEY.0, ORG_KEY.1)
            .with_api_key(TENANT_KEY.0, TENANT_KEY.1)
            .without_limits(),
    )
    .unwrap();
    let state = sim.state();
    let org = state.add_org("acme");
    state.add_user(&org, "victim@example.com", MembershipStatus::Active, &["ORG_OWNER"]);
    apply_secret(&admin, &operator_ns.name, "acme-credentials", ORG_KEY).await;

    let org_name = format!("acme-{label}");
    let organization: AtlasOrganization = serde_json::from_value(json!({
        "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasOrganization",
        "metadata": {"name": org_name},
        "spec": {
            "orgId": org,
            "credentialsSecretRef": {"name": "acme-credentials"},
            "namespaces": [team_a.name],
            "namespaceSelector": {"matchLabels": {"atlas-tenant": label}},
            "allowedOrgRoles": ["ORG_MEMBER", "ORG_READ_ONLY"],
            "allowedTeams": [{"name": "Platform"}],
        },
    }))
    .unwrap();
    let organizations: Api<AtlasOrganization> = Api::all(admin.clone());
    organizations
        .patch(&org_name, &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&organization))
        .await
        .unwrap();

    let mut operator = Operator::start(
        &operator_kubeconfig(),
        &[
            format!("--operator-namespace={}", operator_ns.name),
            format!("--tenant-secrets-cluster-role={}", grant.tenant_role),
            format!("--label-selector=tenancy-test={label}"),
            format!("--atlas-url={}", sim.base_url()),
            "--atlas-insecure-http".into(),
            "--resync-interval=2s".into(),
            "--index-refresh-interval=1s".into(),
        ],
        &[("POD_NAME", "tenancy-operator")],
    );
    let probe = wait_for(WAIT, || async { operator.get("/readyz").await.filter(|(s, _)| *s == 200) }).await;
    assert!(probe.is_some(), "operator never became ready:\n{}", operator.logs());

    // The AtlasOrganization: its credentials verified with getOrg, the name and counts.
    let verified = wait_for(WAIT, || async {
        organizations.get(&org_name).await.ok().filter(|o| {
            o.status.as_ref().is_some_and(|s| condition(&s.conditions, "Ready").is_some_and(|c| c.status == "True"))
        })
    })
    .await
    .unwrap_or_else(|| panic!("AtlasOrganization never Ready:\n{}", operator.logs()));
    let status = verified.status.unwrap();
    assert_eq!(status.org_name.as_deref(), Some("acme"));
    assert_eq!(status.users, Some(1));
    assert_eq!(status.pending, Some(0));
    // The audit: the org's only user (its owner) is declared by no AtlasOrgUser yet.
    assert_eq!(status.unmanaged, Some(1));
    assert_eq!(status.unmanaged_users.len(), 1, "{status:?}");
    assert_eq!((status.declared_absent, status.invitations_expiring), (Some(0), Some(0)));

    // --- The controller, with the admission policy absent.
    let outsider = org_user("outsider", &org, "outsider@example.com", &["ORG_MEMBER"], &label, json!({}));
    apply_user(&admin, &outside.name, &outsider).await;
    let greedy = org_user("greedy", &org, "greedy@example.com", &["ORG_OWNER"], &label, json!({}));
    apply_user(&admin, &team_a.name, &greedy).await;
    let alice = org_user("alice", &org, "alice@example.com", &["ORG_MEMBER"], &label, json!({}));
    apply_user(&admin, &team_a.name, &alice).await;

    let not_allowed = |u: &AtlasOrgUser| {
        ready_reason(u).is_some_and(|(s, r, _)| s == "False" && r == "NotAllowed")
            && u.status
                .as_ref()
                .is_some_and(|s| condition(&s.conditions, "Stalled").is_some_and(|c| c.status == "True"))
    };
    let outside_api: Api<AtlasOrgUser> = Api::namespaced(admin.clone(), &outside.name);
    let refused = wait_object(&outside_api, "outsider", &operator, "NotAllowed", not_allowed).await;
    let (_, _, message) = ready_reason(&refused).unwrap();
    assert!(
        message.contains(&format!("namespace {} may not manage Atlas organization {org}", outside.name)),
        "{message}"
    );
    let team_a_api: Api<AtlasOrgUser> = Api::namespaced(admin.clone(), &team_a.name);
    let refused = wait_object(&team_a_api, "greedy", &operator, "NotAllowed", not_allowed).await;
    let (_, _, message) = ready_reason(&refused).unwrap();
    assert!(message.contains("spec.orgRoles: ORG_OWNER above the ceiling"), "{message}");
    // The allowed one is served with the organization's credentials.
    wait_object(&team_a_api, "alice", &operator, "Ready", |u| ready_reason(u).is_some_and(|(s, _, _)| s == "True"))
        .await;
    let in_atlas: Vec<String> = state.org_users(&org).into_iter().map(|u| u.username).collect();
    assert!(in_atlas.contains(&"alice@example.com".to_string()));
    assert!(!in_atlas.iter().any(|u| u == "outsider@example.com" || u == "greedy@example.com"), "{in_atlas:?}");
    // No Atlas call for the refused objects: every createOrgUser was alice's.
    let creates: Vec<String> = state
        .request_log()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/users") && r.status == 201)
        .map(|r| r.principal.unwrap_or_default())
        .collect();
    assert_eq!(creates, [format!("apiKey:{}", ORG_KEY.0)], "only alice was invited, with the org's key");

    // --- Junk credentials for the organization (the org's public key, a guessed private key):
    // the tenant never sees the organization's data and is not Ready.
    grant.grant_tenant(&team_b.name).await;
    apply_secret(&admin, &team_b.name, "junk", (ORG_KEY.0, "guessed")).await;
    let snoop = org_user(
        "snoop",
        &org,
        "victim@example.com",
        &["ORG_MEMBER"],
        &label,
        json!({"credentialsSecretRef": {"name": "junk"}, "deletionPolicy": "Orphan"}),
    );
    apply_user(&admin, &team_b.name, &snoop).await;
    let team_b_api: Api<AtlasOrgUser> = Api::namespaced(admin.clone(), &team_b.name);
    let snooped = wait_object(&team_b_api, "snoop", &operator, "AtlasUnauthorized", |u| {
        ready_reason(u).is_some_and(|(s, r, _)| s == "False" && r == "AtlasUnauthorized")
    })
    .await;
    // Several resyncs later the status still carries nothing Atlas knows.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let snooped = team_b_api.get("snoop").await.unwrap_or(snooped);
    let status = snooped.status.clone().unwrap();
    assert_eq!(ready_reason(&snooped).unwrap().1, "AtlasUnauthorized");
    assert!(status.user_id.is_none() && status.membership_status.is_none(), "{status:#?}");
    assert!(status.org_roles.is_empty() && status.team_ids.is_empty() && status.inviter_username.is_none());
    let victim_id = state.org_users(&org).into_iter().find(|u| u.username == "victim@example.com").unwrap().id;
    let text = serde_json::to_string(&status).unwrap();
    assert!(!text.contains(&victim_id) && !text.contains("ORG_OWNER"), "{text}");

    // --- A tenant's own Secret works only once its namespace grants the operator read access.
    apply_secret(&admin, &team_a.name, "own", TENANT_KEY).await;
    let bob = org_user(
        "bob",
        &org,
        "bob@example.com",
        &["ORG_READ_ONLY"],
        &label,
        json!({"credentialsSecretRef": {"name": "own"}}),
    );
    apply_user(&admin, &team_a.name, &bob).await;
    let denied = wait_object(&team_a_api, "bob", &operator, "CredentialsAccessNotGranted", |u| {
        ready_reason(u).is_some_and(|(s, r, _)| s == "False" && r == "CredentialsAccessNotGranted")
    })
    .await;
    let (_, _, message) = ready_reason(&denied).unwrap();
    assert!(
        message.contains(&format!("a RoleBinding in {} to the ClusterRole {}", team_a.name, grant.tenant_role)),
        "the condition names the missing grant: {message}"
    );
    assert!(!state.org_users(&org).iter().any(|u| u.username == "bob@example.com"));
    grant.grant_tenant(&team_a.name).await;
    wait_object(&team_a_api, "bob", &operator, "Ready with its own key", |u| {
        ready_reason(u).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let bob_invite = state
        .request_log()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/users") && r.status == 201)
        .map(|r| r.principal.unwrap_or_default())
        .collect::<Vec<_>>();
    assert_eq!(
        bob_invite,
        [format!("apiKey:{}", ORG_KEY.0), format!("apiKey:{}", TENANT_KEY.0)],
        "bob was invited with the tenant's own key"
    );

    // --- `kubectl auth can-i` as the operator's account.
    assert!(!can_i(&admin, &user, "list", None).await, "list secrets --all-namespaces");
    assert!(!can_i(&admin, &user, "get", None).await, "get secrets --all-namespaces");
    assert!(!can_i(&admin, &user, "watch", None).await, "watch secrets --all-namespaces");
    assert!(can_i(&admin, &user, "list", Some(&operator_ns.name)).await, "list in its own namespace");
    assert!(!can_i(&admin, &user, "get", Some(&outside.name)).await, "get in a namespace that granted nothing");
    assert!(can_i(&admin, &user, "get", Some(&team_a.name)).await, "get where the tenant granted it");
    assert!(!can_i(&admin, &user, "list", Some(&team_a.name)).await, "only get, even there");

    // --- The admission policy: installed, it refuses the same at apply time, naming itself.
    let params = PatchParams::apply(TEST_MANAGER).force();
    for doc in policy_documents() {
        match doc["kind"].as_str().unwrap() {
            "ValidatingAdmissionPolicy" => {
                let policy: ValidatingAdmissionPolicy = serde_json::from_value(doc).unwrap();
                Api::<ValidatingAdmissionPolicy>::all(admin.clone())
                    .patch(POLICY, &params, &Patch::Apply(&policy))
                    .await
                    .unwrap();
            }
            "ValidatingAdmissionPolicyBinding" => {
                let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(doc).unwrap();
                Api::<ValidatingAdmissionPolicyBinding>::all(admin.clone())
                    .patch(POLICY, &params, &Patch::Apply(&binding))
                    .await
                    .unwrap();
            }
            other => panic!("unexpected {other}"),
        }
    }
    let newcomer = org_user("newcomer", &org, "newcomer@example.com", &["ORG_MEMBER"], &label, json!({}));
    // The policy takes effect once the API server has compiled it and seen its parameters.
    let refusal = wait_for(WAIT, || async { dry_run_create(&outside_api, &newcomer).await.err() })
        .await
        .expect("the admission policy never refused a namespace the organization does not allow");
    assert!(refusal.contains(&format!("ValidatingAdmissionPolicy '{POLICY}'")), "names the policy: {refusal}");
    eprintln!("admission refusal as the API server words it: {refusal}");
    assert!(
        refusal.contains(&format!("namespace {} may not manage Atlas organization {org}", outside.name)),
        "{refusal}"
    );
    let owner = org_user("owner", &org, "owner@example.com", &["ORG_OWNER", "ORG_MEMBER"], &label, json!({}));
    let refusal = dry_run_create(&team_a_api, &owner).await.expect_err("ORG_OWNER is above the ceiling");
    assert!(refusal.contains(&format!("ValidatingAdmissionPolicy '{POLICY}'")), "{refusal}");
    assert!(refusal.contains("spec.orgRoles: ORG_OWNER above the ceiling"), "{refusal}");
    // Admitted: within the ceiling, in a namespace allowed by name, and one allowed by label.
    dry_run_create(&team_a_api, &newcomer).await.expect("allowed by name");
    dry_run_create(&team_b_api, &newcomer).await.expect("allowed by label");
    // Objects of an organization without an AtlasOrganization are not judged by the policy.
    let elsewhere =
        org_user("elsewhere", "0123456789abcdef01234567", "x@example.com", &["ORG_OWNER"], &label, json!({}));
    dry_run_create(&outside_api, &elsewhere).await.expect("another organization");
    // Teams: by name, case-insensitively.
    let teams: Api<AtlasTeamMembership> = Api::namespaced(admin.clone(), &team_a.name);
    let membership = |team: &str| -> AtlasTeamMembership {
        serde_json::from_value(json!({
            "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasTeamMembership",
            "metadata": {"name": "devs", "labels": {"tenancy-test": label}},
            "spec": {"orgId": org, "team": {"name": team}, "members": []},
        }))
        .unwrap()
    };
    let refusal = dry_run_create(&teams, &membership("billing")).await.expect_err("team not allowed");
    assert!(refusal.contains("spec.team: team billing is not allowed"), "{refusal}");
    dry_run_create(&teams, &membership("platform")).await.expect("allowed team");
    // An object already stored and refused is still deleted: its finalizer goes (no spec
    // change, so the policy lets the update through) and Atlas is left alone.
    outside_api.delete("outsider", &DeleteParams::default()).await.unwrap();
    let gone = wait_for(WAIT, || async { outside_api.get_opt("outsider").await.ok().filter(Option::is_none) }).await;
    assert!(gone.is_some(), "the refused object was never released:\n{}", operator.logs());

    operator.kill();
    remove_policy(&admin).await;
    // Let the objects go without Atlas (the operator is stopped): drop the finalizers.
    for api in [&team_a_api, &team_b_api] {
        for name in ["alice", "greedy", "bob", "snoop"] {
            let _ = api
                .patch(name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
                .await;
        }
    }
    let _ = organizations.delete(&org_name, &DeleteParams::default()).await;
    grant.revoke().await;
    for ns in [operator_ns, team_a, team_b, outside] {
        ns.cleanup().await;
    }
}
