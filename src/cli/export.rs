//! `export --org-id ID`: an organization that already exists, as manifests that adopt it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use secrecy::SecretString;

use super::apply::{AtlasArgs, credentials};
use crate::api::validation::is_dns_label;
use crate::api::{ATLAS_ID_PATTERN, AtlasOrgUser, AtlasTeamMembership};
use crate::atlas::endpoint::is_atlas_id;
use crate::atlas::models::MembershipStatus;
use crate::atlas::{AtlasClient, ClientConfig, Credentials};
use crate::reconcile::export::{ExportOptions, Exported, export_org};
use crate::sim::{SimConfig, SimHandle, SimState, Simulator};

/// `export`'s flags.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The Atlas organization to export (24 hexadecimal digits).
    #[arg(long, value_name = "ID", required_unless_present = "simulate")]
    pub org_id: Option<String>,
    #[command(flatten)]
    pub atlas: AtlasArgs,
    /// `metadata.namespace` of every object (default: none, so `kubectl apply -n` decides).
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// `credentialsSecretRef.name` of every object (default: the operator's credentials).
    #[arg(long, value_name = "NAME")]
    pub credentials_secret_ref: Option<String>,
    /// Write one file per object into this folder (created if missing) instead of stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Export a demo organization of the built-in Atlas simulator (started here).
    #[arg(long)]
    pub simulate: bool,
}

/// The demo organization `export --simulate` reads: people in every state, project roles,
/// two teams.
pub fn seed_demo(state: &SimState) -> String {
    let org = state.add_org("demo-org");
    let owner = state.add_user(&org, "owner@example.com", MembershipStatus::Active, &["ORG_OWNER"]);
    let alice = state.add_user(&org, "alice@example.com", MembershipStatus::Active, &["ORG_MEMBER"]);
    let bob =
        state.add_user(&org, "Bob.Smith@example.com", MembershipStatus::Active, &["ORG_GROUP_CREATOR", "ORG_MEMBER"]);
    let carol = state.add_user(&org, "carol@example.com", MembershipStatus::Pending, &["ORG_READ_ONLY"]);
    state.add_user(&org, "dave@example.com", MembershipStatus::InvitationExpired, &["ORG_MEMBER"]);
    let project = "6a1b2c3d4e5f60718293a4b5";
    state.set_project_roles(&org, &alice, project, &["GROUP_READ_ONLY"]);
    state.set_project_roles(&org, &bob, project, &["GROUP_OWNER"]);
    let admins = state.add_team(&org, "platform-admins");
    let readers = state.add_team(&org, "readers");
    for (team, user) in [(&admins, &owner), (&admins, &bob), (&readers, &alice), (&readers, &carol)] {
        state.add_team_member(&org, team, user);
    }
    org
}

fn start_simulated() -> std::io::Result<(SimHandle, Credentials, String)> {
    let private_key = format!("export-{:016x}", rand::random::<u64>());
    let handle = Simulator::start(SimConfig::default().with_api_key("export-demo", &private_key))?;
    let org = seed_demo(&handle.state());
    let credentials =
        Credentials::ApiKey { public_key: "export-demo".to_string(), private_key: SecretString::from(private_key) };
    Ok((handle, credentials, org))
}

fn yaml<T: serde::Serialize>(object: &T) -> String {
    serde_yaml::to_string(object).expect("a manifest serializes to YAML")
}

/// The manifests as documents: users first (teams refer to them), then teams.
fn documents(exported: &Exported) -> Vec<(String, String)> {
    let users = exported.org_users.iter().map(|o: &AtlasOrgUser| {
        (format!("atlasorguser-{}.yaml", o.metadata.name.as_deref().unwrap_or_default()), yaml(o))
    });
    let teams = exported.team_memberships.iter().map(|o: &AtlasTeamMembership| {
        (format!("atlasteammembership-{}.yaml", o.metadata.name.as_deref().unwrap_or_default()), yaml(o))
    });
    users.chain(teams).collect()
}

fn write_folder(dir: &Path, header: &str, docs: &[(String, String)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (file, body) in docs {
        std::fs::write(dir.join(file), format!("{header}{body}"))?;
    }
    Ok(())
}

/// `export`: read the organization, print (or write) the manifests. Exit 2 on bad input.
pub async fn export(args: ExportArgs) -> ExitCode {
    if let Some(ns) = &args.namespace
        && !is_dns_label(ns)
    {
        eprintln!("error: --namespace {ns:?} is not a valid namespace name (a DNS-1123 label)");
        return ExitCode::from(2);
    }
    let simulated = if args.simulate {
        match start_simulated() {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: cannot start the simulator: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let (base_url, insecure, creds, org_id) = match &simulated {
        Some((handle, creds, org)) => {
            eprintln!("Simulated Atlas at {} (in this process) with a demo organization {org}", handle.base_url());
            (handle.base_url(), true, creds.clone(), org.clone())
        }
        None => {
            let org_id = args.org_id.clone().unwrap_or_default();
            if !is_atlas_id(&org_id) {
                eprintln!("error: --org-id {org_id:?} must match {ATLAS_ID_PATTERN}");
                return ExitCode::from(2);
            }
            let (source, creds) = match credentials(&args.atlas, None) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            eprintln!("Atlas at {}, credentials from {source}", args.atlas.atlas_url);
            (args.atlas.atlas_url.clone(), args.atlas.insecure_http, creds, org_id)
        }
    };
    let mut config = ClientConfig::new(base_url, creds);
    config.insecure_http = insecure;
    let client = match AtlasClient::new(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let snapshot = match crate::engine::read_org(&client, &org_id).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot read organization {org_id}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options =
        ExportOptions { namespace: args.namespace.clone(), credentials_secret: args.credentials_secret_ref.clone() };
    let exported = export_org(&snapshot, &options);
    for line in &exported.skipped {
        eprintln!("note: {line}");
    }
    let header = format!(
        "# Exported from Atlas organization {org_id} by `atlas-access-operator export`: applying it adopts\n\
         # what is there and changes nothing in Atlas (deletionPolicy Orphan: deleting never removes anyone).\n"
    );
    let docs = documents(&exported);
    match &args.out_dir {
        Some(dir) => {
            if let Err(e) = write_folder(dir, &header, &docs) {
                eprintln!("error: cannot write into {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            eprintln!("wrote {} file(s) into {}", docs.len(), dir.display());
        }
        None => {
            print!("{header}");
            for (_, body) in &docs {
                print!("---\n{body}");
            }
        }
    }
    eprintln!(
        "{} AtlasOrgUser(s), {} AtlasTeamMembership(s) from organization {org_id}",
        exported.org_users.len(),
        exported.team_memberships.len()
    );
    ExitCode::SUCCESS
}
