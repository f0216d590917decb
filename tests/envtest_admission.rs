//! The CRDs judged by a real API server (envtest or any cluster via KUBECONFIG): they
//! become Established, every example is admitted, every bad manifest is refused at
//! admission with a message naming the field, and immutable fields stay immutable.

mod common;

use common::cluster::{self, TEST_MANAGER, TestNamespace};
use common::manifests::{bad_manifests, example_objects, valid_team, valid_user, with};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, ValidationDirective};
use kube::{Api, Client};
use serde_json::{Value, json};

fn api_for(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("atlas-access.dev", "v1alpha1", kind);
    let plural = if kind == "AtlasOrgUser" { "atlasorgusers" } else { "atlasteammemberships" };
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, plural))
}

async fn apply(client: &Client, ns: &str, mut manifest: Value, dry_run: bool) -> Result<DynamicObject, kube::Error> {
    manifest["metadata"]["namespace"] = json!(ns);
    let kind = manifest["kind"].as_str().unwrap().to_string();
    let name = manifest["metadata"]["name"].as_str().unwrap_or("unnamed").to_string();
    let mut params = PatchParams::apply(TEST_MANAGER).validation(ValidationDirective::Strict);
    if dry_run {
        params = params.dry_run();
    }
    api_for(client, ns, &kind).patch(&name, &params, &Patch::Apply(&manifest)).await
}

/// What `kubectl create` / a first `kubectl apply` sends: a POST with strict field validation.
async fn create(client: &Client, ns: &str, mut manifest: Value) -> Result<DynamicObject, kube::Error> {
    manifest["metadata"]["namespace"] = json!(ns);
    let plural = if manifest["kind"] == "AtlasOrgUser" { "atlasorgusers" } else { "atlasteammemberships" };
    let request = http::Request::post(format!(
        "/apis/atlas-access.dev/v1alpha1/namespaces/{ns}/{plural}?fieldValidation=Strict&fieldManager={TEST_MANAGER}"
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(serde_json::to_vec(&manifest).unwrap())
    .unwrap();
    client.request::<DynamicObject>(request).await
}

#[tokio::test]
async fn crds_establish_and_examples_are_admitted() {
    let client = cluster::admin_client().await;
    cluster::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "admission-examples").await;
    let examples = example_objects();
    assert!(examples.len() >= 4);
    for example in examples {
        let name = example["metadata"]["name"].clone();
        apply(&client, &ns.name, example.clone(), true).await.unwrap_or_else(|e| panic!("dry-run {name}: {e}"));
        let created = apply(&client, &ns.name, example.clone(), false).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        // Defaults are written by the API server.
        if example["kind"] == "AtlasTeamMembership" {
            assert!(created.data["spec"]["mode"].is_string(), "{name}: mode defaulted");
            // Not defaulted: an absent deletionPolicy falls back to the AtlasOrganization's default.
            assert_eq!(
                created.data["spec"]["deletionPolicy"].is_null(),
                example["spec"]["deletionPolicy"].is_null(),
                "{name}: deletionPolicy as written"
            );
        } else {
            assert!(created.data["spec"]["reinvite"].is_string(), "{name}: reinvite defaulted");
        }
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn bad_manifests_are_refused_at_admission_naming_the_field() {
    let client = cluster::admin_client().await;
    cluster::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "admission-bad").await;
    let mut checked = 0;
    for (case, manifest, field) in bad_manifests() {
        // Name and kind problems are refused before schema validation, by other means.
        if matches!(field, "kind" | "metadata.name") {
            continue;
        }
        let err = match create(&client, &ns.name, manifest).await {
            Ok(_) => panic!("{case}: admitted"),
            Err(kube::Error::Api(status)) => status,
            Err(e) => panic!("{case}: unexpected error {e}"),
        };
        // 422 Invalid for schema and CEL failures; 400 for strict decoding (an unknown field).
        assert!(matches!(err.code, 400 | 422), "{case}: {err:?}");
        assert!(err.message.contains(field), "{case}: message does not name {field}: {}", err.message);
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} bad manifests checked");
    ns.cleanup().await;
}

#[tokio::test]
async fn immutable_fields_cannot_change() {
    let client = cluster::admin_client().await;
    cluster::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "admission-immutable").await;
    apply(&client, &ns.name, valid_user(), false).await.unwrap();
    for (pointer, value, message) in [
        ("/spec/orgId", json!("aaaaaaaaaaaaaaaaaaaaaaaa"), "orgId is immutable"),
        ("/spec/username", json!("mallory@example.com"), "username is immutable"),
    ] {
        let err = apply(&client, &ns.name, with(valid_user(), pointer, value), false).await.unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
    // Roles may change.
    apply(&client, &ns.name, with(valid_user(), "/spec/orgRoles", json!(["ORG_OWNER"])), false).await.unwrap();
    apply(&client, &ns.name, valid_team(), false).await.unwrap();
    let err = apply(&client, &ns.name, with(valid_team(), "/spec/orgId", json!("bbbbbbbbbbbbbbbbbbbbbbbb")), false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("orgId is immutable"), "{err}");
    ns.cleanup().await;
}

/// What `export` writes for an existing organization is admitted as is by the real API
/// server (`kubectl create`: strict field validation), users before the teams naming them.
#[tokio::test]
async fn exported_manifests_are_admitted() {
    use atlas_access_operator::reconcile::export::{ExportOptions, export_org};
    let sim = common::sim::start(common::sim::config());
    let org = atlas_access_operator::cli::seed_demo(&sim.state);
    let atlas = common::atlas::client(&sim, common::atlas::api_key());
    let snapshot = atlas_access_operator::engine::read_org(&atlas, &org).await.unwrap();
    let exported = export_org(&snapshot, &ExportOptions::default());
    assert!(exported.org_users.len() >= 4 && exported.team_memberships.len() >= 2);

    let client = cluster::admin_client().await;
    cluster::install_crds(&client).await;
    let ns = TestNamespace::new(&client, "admission-export").await;
    let manifests = exported
        .org_users
        .iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .chain(exported.team_memberships.iter().map(|o| serde_json::to_value(o).unwrap()));
    for manifest in manifests {
        let name = manifest["metadata"]["name"].clone();
        let created = create(&client, &ns.name, manifest.clone()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(created.data["spec"], manifest["spec"], "{name}: admitted unchanged");
    }
    ns.cleanup().await;
}
