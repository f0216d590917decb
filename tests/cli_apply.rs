//! The `plan` / `apply` subcommands, as a user runs them.

use std::process::Command;

use serde_json::Value;

fn operator() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_atlas-access-operator"));
    command.current_dir(env!("CARGO_MANIFEST_DIR")).env_remove("ATLAS_URL");
    command
}

#[test]
fn the_readme_demo_converges_and_tells_the_story() {
    let output = operator().args(["apply", "-f", "examples/", "--simulate"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for expected in [
        "InvitationSent       invited alice@example.com",
        "(PENDING, expires",
        "UserAdopted          bob@example.com was already ACTIVE",
        "bob@example.com now has org roles ORG_OWNER",
        "team platform-admins: added carol@example.com",
        "alice@example.com accepts the invitation",
        "4 object(s): 4 done, 0 waiting, 0 failed",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    let stdout = String::from_utf8(output.stdout).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&stdout)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    assert_eq!(docs.len(), 4);
    for doc in &docs {
        let ready = doc["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "True", "{doc}");
    }
    let alice = docs.iter().find(|d| d["metadata"]["name"] == "alice").unwrap();
    assert_eq!(alice["status"]["membershipStatus"], "ACTIVE");
    assert_eq!(alice["status"]["adopted"], false);
    let bob = docs.iter().find(|d| d["metadata"]["name"] == "bob").unwrap();
    assert_eq!(bob["status"]["adopted"], true);
}

#[test]
fn plan_changes_nothing_and_lists_the_calls() {
    let output = operator().args(["plan", "-f", "examples/org-user.yaml", "--simulate"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("1. invite alice@example.com to org 5f1b2c3d4e5f60718293a4b5 with ORG_MEMBER"), "{stdout}");
    assert!(stdout.contains("1. add org role ORG_OWNER to bob@example.com"), "{stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing was changed"));
}

#[test]
fn invalid_manifests_name_file_kind_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: atlas-access.dev/v1alpha1\nkind: AtlasOrgUser\nmetadata: {name: eve, namespace: team-a}\nspec:\n  orgId: 5f1b2c3d4e5f60718293a4b5\n  username: eve@example.com\n  orgRoles: [ORG_KING]\n",
    )
    .unwrap();
    let output = operator().args(["apply", "-f"]).arg(dir.path()).arg("--simulate").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = dir.path().join("bad.yaml");
    let expected = format!("error: {}: AtlasOrgUser team-a/eve: spec.orgRoles[0]: ", file.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("nothing was sent to Atlas"));
}

#[test]
fn without_credentials_apply_says_where_they_may_come_from() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/org-user.yaml"),
        dir.path().join("org-user.yaml"),
    )
    .unwrap();
    let output = operator()
        .args(["apply", "-f"])
        .arg(dir.path())
        .env_remove("ATLAS_PUBLIC_KEY")
        .env_remove("ATLAS_PRIVATE_KEY")
        .env_remove("ATLAS_CLIENT_ID")
        .env_remove("ATLAS_CLIENT_SECRET")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no Atlas credentials"));
}
