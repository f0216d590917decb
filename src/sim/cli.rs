//! `atlas-access-operator sim`: serve the simulator standalone and say how to use it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::seed::{SeedFile, SeedOrg, SeedUser};
use super::{SimConfig, Simulator};
use crate::atlas::models::{MEDIA_2023_01_01, MEDIA_2025_02_19, MembershipStatus};

const DEMO_PUBLIC_KEY: &str = "demo-public-key";
const DEMO_PRIVATE_KEY: &str = "demo-private-key";
const DEMO_CLIENT_ID: &str = "mdb_sa_id_demo";
const DEMO_CLIENT_SECRET: &str = "mdb_sa_sk_demo";

/// An `ID:SECRET` pair from the command line; the secret never shows in Debug output.
#[derive(Clone)]
pub struct Credential {
    pub id: String,
    pub secret: SecretString,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("id", &self.id).finish_non_exhaustive()
    }
}

fn parse_credential(s: &str) -> Result<Credential, String> {
    match s.split_once(':') {
        Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {
            Ok(Credential { id: id.to_string(), secret: SecretString::from(secret.to_string()) })
        }
        _ => Err("expected ID:SECRET".to_string()),
    }
}

/// Serve an in-memory Atlas Admin API (for tests, demos and benchmarks).
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// API key for HTTP Digest, as PUBLIC:PRIVATE (repeatable). Default: a demo key.
    #[arg(long = "api-key", value_name = "PUBLIC:PRIVATE", value_parser = parse_credential)]
    pub api_keys: Vec<Credential>,
    /// Service account, as CLIENT_ID:CLIENT_SECRET (repeatable). Default: a demo account.
    #[arg(long = "service-account", value_name = "ID:SECRET", value_parser = parse_credential)]
    pub service_accounts: Vec<Credential>,
    /// Create an organization with this name (repeatable).
    #[arg(long = "seed-org", value_name = "NAME")]
    pub seed_orgs: Vec<String>,
    /// YAML seed file: apiKeys, serviceAccounts, orgs with teams and users.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Lifetime of service-account tokens, in seconds of the simulator clock.
    #[arg(long, default_value_t = 3600)]
    pub token_ttl_secs: u64,
    /// Start the simulator clock here instead of now (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub clock_start: Option<jiff::Timestamp>,
    /// Seed of the generated ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Switch off every rate limit (API buckets, invitations, token endpoint).
    #[arg(long)]
    pub no_rate_limits: bool,
}

/// Runs the simulator until Ctrl-C (or SIGTERM).
pub async fn run(args: SimArgs) -> ExitCode {
    let seed = match &args.config {
        Some(path) => match SeedFile::load(path) {
            Ok(seed) => seed,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => SeedFile::default(),
    };
    let mut config = SimConfig {
        token_ttl: Duration::from_secs(args.token_ttl_secs),
        clock_start: args.clock_start,
        seed: args.seed,
        ..SimConfig::default()
    };
    if args.no_rate_limits {
        config = config.without_limits();
    }
    for key in &args.api_keys {
        config = config.with_api_key(&key.id, key.secret.expose_secret());
    }
    for key in &seed.api_keys {
        config = config.with_api_key(&key.public_key, &key.private_key);
    }
    for account in &args.service_accounts {
        config = config.with_service_account(&account.id, account.secret.expose_secret());
    }
    for account in &seed.service_accounts {
        config = config.with_service_account(&account.client_id, &account.client_secret);
    }
    let demo_credentials = config.api_keys.is_empty() && config.service_accounts.is_empty();
    if demo_credentials {
        config = config.with_api_key(DEMO_PUBLIC_KEY, DEMO_PRIVATE_KEY);
        config = config.with_service_account(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET);
    }
    let mut orgs = seed.orgs.clone();
    orgs.extend(args.seed_orgs.iter().map(|name| SeedOrg { name: name.clone(), teams: vec![], users: vec![] }));
    if orgs.is_empty() {
        orgs.push(demo_org());
    }
    let printed_keys = config.api_keys.clone();
    let printed_accounts = config.service_accounts.clone();

    let handle = match Simulator::start_on(SocketAddr::new(args.bind, args.port), config) {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("error: cannot listen on {}:{}: {e}", args.bind, args.port);
            return ExitCode::FAILURE;
        }
    };
    let seeded = match (SeedFile { orgs, ..SeedFile::default() }).apply(&handle.state()) {
        Ok(seeded) => seeded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };

    let base = handle.base_url();
    println!("Atlas simulator listening on {base}");
    println!("  Admin API base URL: {base}  (paths under /api/atlas/v2, token endpoint {base}/api/oauth/token)");
    println!("  Control API (no auth): {base}/__sim/  (orgs, invitations, clock, faults, counters, requests)");
    println!();
    for org in &seeded {
        println!("Organization {:?}: orgId {}", org.name, org.id);
        for (id, name) in &org.teams {
            println!("  team {name:?}: teamId {id}");
        }
        for (id, username) in &org.users {
            println!("  user {username}: userId {id}");
        }
    }
    println!();
    // The simulator's own credentials are printed on purpose: they exist only to reach it.
    for (public, private) in &printed_keys {
        println!("API key (HTTP Digest): publicApiKey={public} privateApiKey={private}");
    }
    for (id, secret) in &printed_accounts {
        println!("Service account: clientId={id} clientSecret={secret}");
    }
    println!();
    if let Some(org) = seeded.first() {
        if let Some((public, private)) = printed_keys.first() {
            println!("Try:");
            println!(
                "  curl --digest -u '{public}:{private}' -H 'Accept: {MEDIA_2025_02_19}' {base}/api/atlas/v2/orgs/{}/users",
                org.id
            );
            println!(
                "  curl --digest -u '{public}:{private}' -H 'Accept: {MEDIA_2023_01_01}' {base}/api/atlas/v2/orgs/{}/teams",
                org.id
            );
        }
        if let Some((id, secret)) = printed_accounts.first() {
            println!(
                "  curl -u '{id}:{secret}' -H 'Accept: application/json' -d grant_type=client_credentials {base}/api/oauth/token"
            );
        }
        println!(
            "  curl -X POST -H 'Content-Type: application/json' -d '{{\"username\":\"someone@example.com\"}}' {base}/__sim/orgs/{}/invitations/accept",
            org.id
        );
        println!("  curl {base}/__sim/counters");
    }
    println!();
    println!(
        "Point an Atlas client at {base} (plain http: enable the client's insecure/simulator mode). Ctrl-C stops."
    );

    wait_for_stop().await;
    handle.shutdown();
    ExitCode::SUCCESS
}

fn demo_org() -> SeedOrg {
    SeedOrg {
        name: "demo-org".to_string(),
        teams: vec!["platform-admins".to_string()],
        users: vec![SeedUser {
            username: "owner@example.com".to_string(),
            org_membership_status: MembershipStatus::Active,
            org_roles: vec!["ORG_OWNER".to_string()],
            teams: vec!["platform-admins".to_string()],
        }],
    }
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
