//! The CRDs: `crds/` matches the code, the schemas are structural and documented, and
//! the admission-equivalent validator accepts the examples and refuses bad manifests,
//! naming the field.

use std::path::Path;

use atlas_access_operator::api::{self, AtlasOrgUser, AtlasTeamMembership, validation::ManifestValidator};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde_json::{Value, json};

mod common;
use common::manifests::{bad_manifests, valid_team, valid_user, with};

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect()
}

fn example_docs() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir("examples").unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        for doc in yaml_docs(&path) {
            out.push((path.display().to_string(), doc));
        }
    }
    out
}

#[test]
fn crds_folder_matches_the_code() {
    for crd in api::crds() {
        let path = Path::new("crds").join(api::crd_file_name(&crd));
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(on_disk, api::crd_yaml(&crd), "{} is stale: run `cargo run -- crds --out-dir crds`", path.display());
        let parsed: CustomResourceDefinition = serde_yaml::from_str(&on_disk).unwrap();
        assert_eq!(parsed, crd);
    }
}

#[test]
fn crd_names_columns_and_categories() {
    let crds = api::crds();
    let org_user = &crds[0];
    assert_eq!(org_user.metadata.name.as_deref(), Some("atlasorgusers.atlas-access.dev"));
    assert_eq!(org_user.spec.scope, "Namespaced");
    assert_eq!(org_user.spec.names.short_names.as_deref(), Some(&["aou".to_string()][..]));
    assert_eq!(org_user.spec.names.categories.as_deref(), Some(&["atlas".to_string()][..]));
    let cols: Vec<&str> = org_user.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cols, ["Username", "Org", "Status", "Ready", "Reason", "Invitation Expires", "Age", "Message"]);
    // Message only in `kubectl get -o wide`.
    let columns = org_user.spec.versions[0].additional_printer_columns.as_ref().unwrap();
    let wide: Vec<&str> = columns.iter().filter(|c| c.priority == Some(1)).map(|c| c.name.as_str()).collect();
    assert_eq!(wide, ["Message"]);
    assert!(org_user.spec.versions[0].subresources.as_ref().unwrap().status.is_some());

    let team = &crds[1];
    assert_eq!(team.metadata.name.as_deref(), Some("atlasteammemberships.atlas-access.dev"));
    assert_eq!(team.spec.names.short_names.as_deref(), Some(&["atm".to_string()][..]));
    let cols: Vec<&str> =
        team.spec.versions[0].additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(cols, ["Team", "Listed", "In Team", "Ready", "Reason", "Age", "Message"]);
}

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap()
}

/// Structural schema rules the API server enforces: every node has a type, no
/// `uniqueItems: true`, no `additionalProperties` next to `properties`, no `$ref`; and every
/// field is documented (it becomes `kubectl explain` text).
fn assert_structural(schema: &Value, path: &str) {
    let obj = schema.as_object().unwrap_or_else(|| panic!("{path}: schema is not an object"));
    assert!(obj.contains_key("type"), "{path}: no type");
    assert!(!obj.contains_key("$ref"), "{path}: $ref");
    assert_ne!(obj.get("uniqueItems"), Some(&Value::Bool(true)), "{path}: uniqueItems is not allowed");
    assert!(
        !(obj.contains_key("properties") && obj.contains_key("additionalProperties")),
        "{path}: properties and additionalProperties together"
    );
    for key in ["oneOf", "anyOf", "allOf"] {
        assert!(!obj.contains_key(key), "{path}: {key} in a generated schema");
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let sub_path = format!("{path}.{name}");
            assert!(sub.get("description").is_some(), "{sub_path}: no description");
            assert_structural(sub, &sub_path);
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
}

#[test]
fn schemas_are_structural_and_documented() {
    for crd in api::crds() {
        let schema = schema_of(&crd);
        assert_structural(&schema, &crd.spec.names.kind);
    }
}

fn rules_at(schema: &Value, pointer: &str) -> Vec<(String, String)> {
    schema
        .pointer(pointer)
        .and_then(|n| n.get("x-kubernetes-validations"))
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no CEL rules at {pointer}"))
        .iter()
        .map(|r| (r["rule"].as_str().unwrap().to_string(), r["message"].as_str().unwrap_or_default().to_string()))
        .collect()
}

#[test]
fn cel_rules_are_present_with_their_expressions() {
    let crds = api::crds();
    let user = schema_of(&crds[0]);
    assert_eq!(
        rules_at(&user, "/properties/spec/properties/orgId"),
        [("self == oldSelf".to_string(), "orgId is immutable".to_string())]
    );
    assert_eq!(
        rules_at(&user, "/properties/spec/properties/username"),
        [("self == oldSelf".to_string(), "username is immutable".to_string())]
    );
    assert_eq!(user.pointer("/properties/spec/properties/orgRoles/x-kubernetes-list-type"), Some(&json!("set")));
    assert_eq!(user.pointer("/properties/spec/properties/orgRoles/minItems"), Some(&json!(1)));
    // No default: an absent deletionPolicy falls back to the AtlasOrganization's defaultDeletionPolicy.
    assert_eq!(user.pointer("/properties/spec/properties/deletionPolicy/default"), None);
    assert_eq!(
        user.pointer("/properties/spec/properties/deletionPolicy/enum"),
        Some(&json!(["Delete", "Orphan", null]))
    );
    assert_eq!(user.pointer("/properties/spec/properties/reinvite/default"), Some(&json!("OnExpiry")));
    assert_eq!(
        user.pointer("/properties/status/properties/conditions/x-kubernetes-list-map-keys"),
        Some(&json!(["type"]))
    );

    let team = schema_of(&crds[1]);
    assert_eq!(
        rules_at(&team, "/properties/spec/properties/team"),
        [
            ("has(self.id) != has(self.name)".to_string(), "set exactly one of team.id or team.name".to_string()),
            (
                "self == oldSelf".to_string(),
                "team is immutable: an AtlasTeamMembership manages the one team it was created for; create a new \
                 object for another team (deleting this one removes the members it added under deletionPolicy Delete)"
                    .to_string()
            )
        ]
    );
    assert_eq!(
        rules_at(&team, "/properties/spec/properties/members/items"),
        [(
            "has(self.username) != has(self.orgUserRef)".to_string(),
            "set exactly one of username or orgUserRef".to_string()
        )]
    );
    let member_rules = rules_at(&team, "/properties/spec/properties/members");
    assert_eq!(member_rules.len(), 2);
    assert!(member_rules[0].0.contains("exists_one"));
    assert_eq!(team.pointer("/properties/spec/properties/members/maxItems"), Some(&json!(250)));
    assert_eq!(team.pointer("/properties/spec/properties/mode/default"), Some(&json!("Additive")));

    let org = schema_of(&crds[2]);
    assert_eq!(
        rules_at(&org, "/properties/spec/properties/orgId"),
        [("self == oldSelf".to_string(), "orgId is immutable".to_string())]
    );
    assert_eq!(
        rules_at(&org, "/properties/spec/properties/allowedTeams/items"),
        [("has(self.id) != has(self.name)".to_string(), "give exactly one of id and name".to_string())]
    );
    assert_eq!(org.pointer("/properties/spec/properties/allowedOrgRoles/x-kubernetes-list-type"), Some(&json!("set")));
    assert_eq!(org.pointer("/properties/spec/required"), Some(&json!(["credentialsSecretRef", "orgId"])));
}

#[test]
fn atlas_organization_is_cluster_scoped_with_its_names_and_columns() {
    let crd = api::crds().into_iter().find(|c| c.spec.names.kind == "AtlasOrganization").unwrap();
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.group, "atlas-access.dev");
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["aorg".to_string()][..]));
    assert_eq!(crd.spec.names.categories.as_deref(), Some(&["atlas".to_string()][..]));
    let columns: Vec<String> =
        crd.spec.versions[0].additional_printer_columns.iter().flatten().map(|c| c.name.clone()).collect();
    assert_eq!(columns, ["Org", "Name", "Users", "Unmanaged", "Managed", "Ready", "Age"]);
    let status = &crd.spec.versions[0].subresources.as_ref().unwrap().status;
    assert!(status.is_some(), "status is a subresource");
}

#[test]
fn examples_deserialize_into_the_rust_types_and_validate() {
    let validator = ManifestValidator::new();
    let mut users = 0;
    let mut teams = 0;
    for (file, doc) in example_docs() {
        match doc["kind"].as_str().unwrap() {
            "AtlasOrgUser" => {
                let _: AtlasOrgUser = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
                users += 1;
            }
            "AtlasTeamMembership" => {
                let _: AtlasTeamMembership =
                    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
                teams += 1;
            }
            "Secret" => {
                let _: k8s_openapi::api::core::v1::Secret = serde_json::from_value(doc.clone()).unwrap();
                continue;
            }
            other => panic!("{file}: unexpected kind {other}"),
        }
        validator.validate(&doc).unwrap_or_else(|e| panic!("{file}: {e:?}"));
    }
    assert!(users >= 1 && teams >= 2, "examples cover both kinds");
}

#[test]
fn valid_manifests_pass() {
    let v = ManifestValidator::new();
    v.validate(&valid_user()).unwrap();
    v.validate(&valid_team()).unwrap();
    let full = with(
        valid_team(),
        "/spec/members",
        Value::Array((0..250).map(|i| json!({"username": format!("u{i}@example.com")})).collect()),
    );
    v.validate(&full).unwrap();
}

#[test]
fn bad_manifests_fail_naming_the_field() {
    let v = ManifestValidator::new();
    let cases = bad_manifests();
    assert!(cases.len() >= 15);
    for (name, manifest, field) in cases {
        let errors = v.validate(&manifest).err().unwrap_or_else(|| panic!("{name}: accepted"));
        assert!(errors.iter().any(|e| e.field == field), "{name}: expected an error on {field}, got {errors:?}");
    }
}

#[test]
fn immutable_fields_are_refused_on_update() {
    let v = ManifestValidator::new();
    let old = valid_user();
    let changed_org = with(valid_user(), "/spec/orgId", json!("aaaaaaaaaaaaaaaaaaaaaaaa"));
    let errors = v.validate_update(&changed_org, Some(&old)).unwrap_err();
    assert!(errors.iter().any(|e| e.message.contains("orgId is immutable")), "{errors:?}");
    let changed_user = with(valid_user(), "/spec/username", json!("mallory@example.com"));
    let errors = v.validate_update(&changed_user, Some(&old)).unwrap_err();
    assert!(errors.iter().any(|e| e.message.contains("username is immutable")), "{errors:?}");
    // Changing roles is fine.
    let roles = with(valid_user(), "/spec/orgRoles", json!(["ORG_OWNER"]));
    v.validate_update(&roles, Some(&old)).unwrap();
}
