//! `export` and `audit`, as a user runs them against an organization that already exists
//! (the simulator, seeded with people in every state, project roles and two teams).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use atlas_access_operator::cli::seed_demo;
use common::sim::{PRIVATE_KEY, PUBLIC_KEY};
use serde_json::Value;

/// Runs the binary with `args` against the simulator at `sim_url` (API key from the environment).
async fn run(sim_url: &str, args: &[&str]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_atlas-access-operator"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ATLAS_URL", sim_url)
        .env("ATLAS_PUBLIC_KEY", PUBLIC_KEY)
        .env("ATLAS_PRIVATE_KEY", PRIVATE_KEY)
        .env_remove("ATLAS_CLIENT_ID")
        .env_remove("ATLAS_CLIENT_SECRET")
        .args(args)
        .arg("--insecure-http");
    let output = command.output().await.unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn writes(log: &[atlas_access_operator::sim::LoggedRequest]) -> Vec<String> {
    log.iter().filter(|r| r.method != "GET").map(|r| format!("{} {} -> {}", r.method, r.path, r.status)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_apply_adopts_everything_and_changes_nothing() {
    let sim = common::sim::start(common::sim::config());
    let org = seed_demo(&sim.state);
    let url = sim.handle.base_url();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let out_arg = out.to_str().unwrap();

    let (ok, _, stderr) = run(&url, &["export", "--org-id", &org, "--namespace", "team-a", "--out-dir", out_arg]).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("4 AtlasOrgUser(s), 2 AtlasTeamMembership(s)"), "{stderr}");
    assert!(stderr.contains("dave@example.com: INVITATION_EXPIRED is not in the organization"), "{stderr}");
    let mut files: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(
        files,
        [
            "atlasorguser-alice-at-example.com.yaml",
            "atlasorguser-bob.smith-at-example.com.yaml",
            "atlasorguser-carol-at-example.com.yaml",
            "atlasorguser-owner-at-example.com.yaml",
            "atlasteammembership-team-platform-admins.yaml",
            "atlasteammembership-team-readers.yaml",
        ],
        "users sort before the teams that refer to them"
    );
    let bob = &yaml_docs(&std::fs::read_to_string(out.join("atlasorguser-bob.smith-at-example.com.yaml")).unwrap())[0];
    assert_eq!(bob["metadata"]["namespace"], "team-a");
    assert_eq!(bob["spec"]["username"], "Bob.Smith@example.com");
    assert_eq!(bob["spec"]["orgRoles"], serde_json::json!(["ORG_GROUP_CREATOR", "ORG_MEMBER"]));
    assert_eq!(bob["spec"]["projectRoles"][0]["roles"], serde_json::json!(["GROUP_OWNER"]));
    assert_eq!(bob["spec"]["deletionPolicy"], "Orphan", "exported users predate their objects");

    // Applying the export against the same organization: every object adopts, no write.
    let before = sim.state.request_log().len();
    let (ok, stdout, stderr) = run(&url, &["apply", "-f", out_arg]).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("6 object(s): 6 done, 0 waiting, 0 failed"), "{stderr}");
    let log = sim.state.request_log();
    assert_eq!(writes(&log[before..]), Vec::<String>::new(), "applying an export changes nothing in Atlas");

    let atlas: BTreeMap<String, _> =
        sim.state.org_users(&org).into_iter().map(|u| (u.username.to_lowercase(), u)).collect();
    let statuses = yaml_docs(&stdout);
    assert_eq!(statuses.len(), 6);
    for doc in &statuses {
        let ready = doc["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "True", "{doc}");
        if doc["kind"] == "AtlasOrgUser" {
            let name = doc["metadata"]["name"].as_str().unwrap();
            let user =
                atlas.values().find(|u| name.starts_with(&u.username.to_lowercase().replace('@', "-at-"))).unwrap();
            assert_eq!(doc["status"]["userId"], user.id.as_str(), "{doc}");
            assert_eq!(doc["status"]["membershipStatus"], user.org_membership_status.as_str());
            let mut roles = user.roles.org_roles.clone();
            roles.sort();
            let mut reported: Vec<String> = serde_json::from_value(doc["status"]["orgRoles"].clone()).unwrap();
            reported.sort();
            assert_eq!(reported, roles, "{doc}");
            assert_eq!(doc["status"]["adopted"], true, "{doc}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_stdout_is_one_stream_kubectl_accepts_in_order() {
    let sim = common::sim::start(common::sim::config());
    let org = seed_demo(&sim.state);
    let (ok, stdout, stderr) = run(&sim.handle.base_url(), &["export", "--org-id", &org]).await;
    assert!(ok, "{stderr}");
    let docs = yaml_docs(&stdout);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["AtlasOrgUser", "AtlasOrgUser", "AtlasOrgUser", "AtlasOrgUser", "AtlasTeamMembership", "AtlasTeamMembership"]
    );
    let readers = docs.iter().find(|d| d["metadata"]["name"] == "team-readers").unwrap();
    assert_eq!(
        readers["spec"]["members"],
        serde_json::json!([{"orgUserRef": {"name": "alice-at-example.com"}}, {"orgUserRef": {"name": "carol-at-example.com"}}]),
        "members by orgUserRef to the exported users"
    );
    assert!(readers["metadata"].get("namespace").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_refuses_bad_input_naming_the_flag() {
    let sim = common::sim::start(common::sim::config());
    let url = sim.handle.base_url();
    let (ok, _, stderr) = run(&url, &["export", "--org-id", "not-an-id"]).await;
    assert!(!ok);
    assert!(stderr.contains("--org-id \"not-an-id\" must match"), "{stderr}");
    let (ok, _, stderr) = run(&url, &["export", "--org-id", &sim.org, "--namespace", "Team_A"]).await;
    assert!(!ok);
    assert!(stderr.contains("--namespace \"Team_A\" is not a valid namespace name"), "{stderr}");
    assert!(writes(&sim.state.request_log()).is_empty());
}

fn write_manifests(dir: &Path, org: &str, usernames: &[&str]) {
    let mut text = String::new();
    for (i, username) in usernames.iter().enumerate() {
        text.push_str(&format!(
            "---\napiVersion: atlas-access.dev/v1alpha1\nkind: AtlasOrgUser\nmetadata: {{name: u{i}, namespace: team-a}}\nspec:\n  orgId: {org}\n  username: {username}\n  orgRoles: [ORG_MEMBER]\n"
        ));
    }
    std::fs::write(dir.join("users.yaml"), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_counts_managed_unmanaged_absent_pending_and_expiring() {
    let sim = common::sim::start(common::sim::config());
    let org = seed_demo(&sim.state);
    let url = sim.handle.base_url();
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path(), &org, &["alice@example.com", "CAROL@example.com", "zed@example.com"]);
    let path = dir.path().to_str().unwrap();

    // carol's invitation was sent now: 30 days left, outside a 7-day window, inside 31 days.
    let (ok, stdout, stderr) = run(&url, &["audit", "-f", path]).await;
    assert!(ok, "{stderr}");
    for expected in [
        &format!("organization {org}: 4 users, 2 managed") as &str,
        "unmanaged (in Atlas, no AtlasOrgUser): 2  Bob.Smith@example.com, owner@example.com",
        "declared, not in the organization: 1  zed@example.com",
        "pending invitations: 1  carol@example.com",
        "invitations expiring soon: 0",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    let (ok, stdout, stderr) = run(&url, &["audit", "-f", path, "--invitation-warning", "31d"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("invitations expiring soon: 1"), "{stdout}");
    assert!(stdout.contains("carol@example.com expires "), "{stdout}");
    assert!(stdout.contains("(managed: re-invited on expiry)"), "{stdout}");
    assert!(writes(&sim.state.request_log()).is_empty(), "an audit changes nothing");
}
