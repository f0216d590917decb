//! `atlas-access-operator sim` standalone: it prints where it listens and how to reach it,
//! serves the seeded data with the printed credentials, and loads a YAML seed file.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sim::{Api, V2023, V2025, org_path, users_path};

/// Runs the binary with `args`, reads its banner up to the end line, and stops it.
fn banner(args: &[&str]) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_atlas-access-operator"))
        .arg("sim")
        .args(["--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let started = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.contains("Ctrl-C stops");
        lines.push(line);
        if done || started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    (child, lines)
}

fn value_after<'a>(lines: &'a [String], marker: &str) -> &'a str {
    let line = lines.iter().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("{marker} in {lines:#?}"));
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    rest.split_whitespace().next().unwrap()
}

#[tokio::test]
async fn sim_subcommand_prints_how_to_use_it_and_serves_the_demo_org() {
    let (mut child, lines) = banner(&[]);
    let base = value_after(&lines, "listening on ").to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let org = value_after(&lines, "orgId ").to_string();
    let public = value_after(&lines, "publicApiKey=").to_string();
    let private = value_after(&lines, "privateApiKey=").to_string();
    assert!(value_after(&lines, "clientId=").len() > 3);
    assert!(lines.iter().any(|l| l.contains("curl --digest")), "{lines:#?}");

    let api = Api::new(&base, &public, &private);
    let answer = api.get(&org_path(&org), V2023).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["name"], "demo-org");
    let users = api.get(&users_path(&org), V2025).await;
    assert_eq!(users.body["results"][0]["username"], "owner@example.com");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn sim_subcommand_loads_a_seed_file() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "apiKeys: [{{publicKey: seedpub, privateKey: seedpriv}}]\n\
         orgs:\n\
         - name: acme\n\
         \x20 teams: [admins]\n\
         \x20 users:\n\
         \x20   - {{username: a@acme.example.com, orgRoles: [ORG_OWNER], teams: [admins]}}\n\
         \x20   - {{username: b@acme.example.com, orgMembershipStatus: PENDING}}"
    )
    .unwrap();
    let (mut child, lines) = banner(&["--config", file.path().to_str().unwrap(), "--seed-org", "extra"]);
    let base = value_after(&lines, "listening on ").to_string();
    let org = value_after(&lines, "orgId ").to_string();
    let team = value_after(&lines, "teamId ").to_string();
    assert!(lines.iter().any(|l| l.contains("\"extra\"")), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("demo-public-key")), "no demo key when keys are given");

    let api = Api::new(&base, "seedpub", "seedpriv");
    let users = api.get(&users_path(&org), V2025).await;
    assert_eq!(users.body["totalCount"], 2);
    assert_eq!(users.body["results"][0]["teamIds"], serde_json::json!([team]));
    assert_eq!(users.body["results"][1]["orgMembershipStatus"], "PENDING");
    child.kill().unwrap();
    child.wait().unwrap();

    let mut bad = Command::new(env!("CARGO_BIN_EXE_atlas-access-operator"))
        .args(["sim", "--port", "0", "--config", "/nonexistent/sim.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(!bad.wait().unwrap().success(), "a missing seed file is an error");
}
