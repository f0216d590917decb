//! `plan -f PATH...` and `apply -f PATH...`: the engine over manifests, without a cluster.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use secrecy::SecretString;
use serde_json::json;

use super::manifests::{Input, read_secret_file};
use super::simulate;
use crate::api::conditions::{self, find};
use crate::atlas::{ATLAS_BASE_URL, AtlasClient, ClientConfig, Credentials, InvitationQueue, QueueSnapshot};
use crate::engine::OrgUserIndex;
use crate::engine::driver::{ObjectId, ObjectSet, Outcome, display_name, run_pass};
use crate::engine::{EngineEvent, Mode};

fn secret(value: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(value.to_string()))
}

/// How to reach Atlas: base URL and credentials (shared by `plan`, `apply`, `audit`, `export`).
#[derive(clap::Args, Debug)]
pub struct AtlasArgs {
    /// Atlas base URL (Atlas for Government: https://cloud.mongodbgov.com).
    #[arg(long, env = "ATLAS_URL", default_value = ATLAS_BASE_URL)]
    pub atlas_url: String,
    /// Allow a plain http:// Atlas URL (a simulator started with `sim`). Never for Atlas.
    #[arg(long)]
    pub insecure_http: bool,
    /// API key: public key.
    #[arg(long, env = "ATLAS_PUBLIC_KEY")]
    pub public_key: Option<String>,
    /// API key: private key.
    #[arg(long, env = "ATLAS_PRIVATE_KEY", hide_env_values = true, value_parser = secret)]
    pub private_key: Option<SecretString>,
    /// Service account: client id.
    #[arg(long, env = "ATLAS_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Service account: client secret.
    #[arg(long, env = "ATLAS_CLIENT_SECRET", hide_env_values = true, value_parser = secret)]
    pub client_secret: Option<SecretString>,
    /// A Secret manifest holding publicApiKey/privateApiKey or clientId/clientSecret.
    #[arg(long, value_name = "FILE")]
    pub credentials_secret: Option<PathBuf>,
}

/// Where the objects come from and how to reach Atlas.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Manifest files or folders (the .yaml/.yml/.json files directly inside, in name order);
    /// multi-document YAML. Secrets among them may provide the credentials.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true, num_args = 1..)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub atlas: AtlasArgs,
    /// Run against the built-in Atlas simulator, started here and seeded from the manifests
    /// (their organizations, teams and a few existing users). Nothing leaves this machine.
    #[arg(long)]
    pub simulate: bool,
    /// Objects reconciled at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Invitations sent per minute, all organizations together (Atlas limits them per IP,
    /// about 10 a minute); 0: no pacing (a simulator without the limit).
    #[arg(long, default_value_t = 10)]
    pub invitations_per_minute: u32,
    /// Print every event, however many objects there are.
    #[arg(short, long)]
    pub verbose: bool,
    /// How long before an invitation's expiry the audit (in `plan` and `audit`) reports it as
    /// expiring soon.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub invitation_warning: Duration,
}

/// `apply` only.
#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Passes at most: each reconciles every object once; apply stops early when nothing is left to do.
    #[arg(long, default_value_t = 5)]
    pub max_passes: u32,
}

/// Objects above this many get a progress bar and only failures narrated (unless --verbose).
const NARRATE_UP_TO: usize = 40;

pub(super) struct Session {
    pub(super) input: Input,
    pub(super) client: AtlasClient,
    pub(super) index: OrgUserIndex,
    sim: Option<simulate::Simulated>,
    names: Vec<(ObjectId, String)>,
}

/// The credentials the flags, the environment or (for `plan`/`apply`) the manifests give, and
/// where they came from.
pub(super) fn credentials(args: &AtlasArgs, input: Option<&Input>) -> Result<(String, Credentials), String> {
    match (&args.public_key, &args.private_key, &args.client_id, &args.client_secret) {
        (Some(public_key), Some(private_key), None, None) => {
            return Ok((
                "--public-key/--private-key".into(),
                Credentials::ApiKey { public_key: public_key.clone(), private_key: private_key.clone() },
            ));
        }
        (None, None, Some(client_id), Some(client_secret)) => {
            return Ok((
                "--client-id/--client-secret".into(),
                Credentials::ServiceAccount { client_id: client_id.clone(), client_secret: client_secret.clone() },
            ));
        }
        (None, None, None, None) => {}
        _ => {
            return Err("give either --public-key and --private-key, or --client-id and --client-secret".into());
        }
    }
    if let Some(file) = &args.credentials_secret {
        return Ok((format!("--credentials-secret {}", file.display()), read_secret_file(file)?));
    }
    let referenced = match input {
        Some(input) => input.referenced_credentials()?,
        None => None,
    };
    referenced.ok_or_else(|| {
        "no Atlas credentials: pass --public-key/--private-key, --client-id/--client-secret (or ATLAS_* \
         variables), --credentials-secret FILE, include the Secret the objects name, or use --simulate"
            .to_string()
    })
}

fn names(objects: &ObjectSet) -> Vec<(ObjectId, String)> {
    let users = objects
        .org_users
        .iter()
        .enumerate()
        .map(|(i, o)| (ObjectId::OrgUser(i), format!("AtlasOrgUser {}", display_name(&o.metadata))));
    let teams = objects
        .team_memberships
        .iter()
        .enumerate()
        .map(|(i, o)| (ObjectId::TeamMembership(i), format!("AtlasTeamMembership {}", display_name(&o.metadata))));
    users.chain(teams).collect()
}

impl Session {
    fn name(&self, id: ObjectId) -> &str {
        self.names.iter().find(|(i, _)| *i == id).map(|(_, n)| n.as_str()).unwrap_or_default()
    }

    /// Read and validate the input, pick credentials, start the simulator if asked.
    pub(super) fn open(args: &RunArgs) -> Result<Self, ExitCode> {
        let input = Input::read(&args.paths);
        for note in &input.notes {
            eprintln!("note: {note}");
        }
        if !input.errors.is_empty() {
            for e in &input.errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s) in the input: nothing was sent to Atlas", input.errors.len());
            return Err(ExitCode::from(2));
        }
        if input.objects.is_empty() {
            eprintln!("error: no AtlasOrgUser or AtlasTeamMembership in {:?}", args.paths);
            return Err(ExitCode::from(2));
        }
        let (base_url, insecure, credentials, sim) = if args.simulate {
            let sim = simulate::start(&input.objects).map_err(|e| {
                eprintln!("error: cannot start the simulator: {e}");
                ExitCode::FAILURE
            })?;
            eprintln!("Simulated Atlas at {} (in this process), seeded from the manifests:", sim.handle.base_url());
            for line in &sim.seeded {
                eprintln!("  {line}");
            }
            (sim.handle.base_url(), true, sim.credentials.clone(), Some(sim))
        } else {
            let (source, credentials) = credentials(&args.atlas, Some(&input)).map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::from(2)
            })?;
            eprintln!("Atlas at {}, credentials from {source}", args.atlas.atlas_url);
            (args.atlas.atlas_url.clone(), args.atlas.insecure_http, credentials, None)
        };
        let mut config = ClientConfig::new(base_url, credentials);
        config.insecure_http = insecure;
        config.max_concurrency = args.concurrency.max(1);
        config.invitations = match args.invitations_per_minute {
            0 => InvitationQueue::disabled(),
            n => InvitationQueue::per_minute(n),
        };
        // A one-shot run waits in line: its progress line shows the queue.
        config.invitation_max_wait = Duration::from_secs(24 * 3600);
        let client = AtlasClient::new(config).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(2)
        })?;
        let names = names(&input.objects);
        // Each pass lists every organization once (the driver invalidates at its start).
        Ok(Self { input, client, index: OrgUserIndex::new(Duration::from_secs(3600)), sim, names })
    }

    fn progress(&self, args: &RunArgs, label: String) -> ProgressBar {
        let total = self.input.objects.len() as u64;
        let bar = if std::io::stderr().is_terminal() && self.input.objects.len() > NARRATE_UP_TO {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        let _ = args;
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} objects, {elapsed}{msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label);
        bar
    }

    fn narrate(&self, args: &RunArgs) -> bool {
        args.verbose || self.input.objects.len() <= NARRATE_UP_TO
    }
}

fn events_of(outcome: &Outcome) -> &[EngineEvent] {
    match outcome {
        Outcome::OrgUser(Ok(r)) => &r.events,
        Outcome::TeamMembership(Ok(r)) => &r.events,
        _ => &[],
    }
}

fn error_of(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::OrgUser(Err(e)) => Some(e.to_string()),
        Outcome::TeamMembership(Err(e)) => Some(e.to_string()),
        _ => None,
    }
}

fn ready_line(outcome: &Outcome) -> String {
    let conditions = match outcome {
        Outcome::OrgUser(Ok(r)) => &r.status.conditions,
        Outcome::TeamMembership(Ok(r)) => &r.status.conditions,
        _ => return String::new(),
    };
    match find(conditions, conditions::READY) {
        Some(c) => format!("Ready={} {}: {}", c.status, c.reason, c.message),
        None => String::new(),
    }
}

/// `plan`: what would be done, object by object; nothing changes in Atlas.
pub async fn plan(args: RunArgs) -> ExitCode {
    let mut session = match Session::open(&args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let bar = session.progress(&args, "planning".into());
    let mut objects = std::mem::take(&mut session.input.objects);
    let results =
        run_pass(&session.client, &session.index, &mut objects, Mode::PlanOnly, args.concurrency, &|_, _| bar.inc(1))
            .await;
    bar.finish_and_clear();
    session.input.objects = objects;
    let mut failed = 0;
    let mut changes = 0;
    for (id, outcome) in &results {
        println!("{} ({})", session.name(*id), session.input.file_of(*id).display());
        let text = match outcome {
            Outcome::OrgUser(Ok(r)) => {
                changes += r.plan.plan.actions.len();
                format!("{}on deletion: {}\n", r.plan.plan, r.plan.on_deletion_text())
            }
            Outcome::TeamMembership(Ok(r)) => {
                changes += r.plan.plan.actions.len();
                r.plan.plan.to_string()
            }
            _ => {
                failed += 1;
                format!("cannot plan: {}\n", error_of(outcome).unwrap_or_default())
            }
        };
        for line in text.lines() {
            println!("  {line}");
        }
    }
    super::audit::print_audits(&session, args.invitation_warning).await;
    eprintln!("{} object(s), {changes} Atlas call(s) planned; nothing was changed", results.len());
    if failed > 0 {
        eprintln!("{failed} object(s) could not be planned");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The invitation queue, for the progress line (empty before the first invitation).
pub fn queue_line(queue: &QueueSnapshot) -> String {
    if queue.queued == 0 && queue.sent == 0 && queue.refused == 0 {
        return String::new();
    }
    let mut line = format!(", invitations: {} sent, {} queued", queue.sent, queue.queued);
    if queue.queued > 0 {
        line.push_str(&format!(", next in {}s", queue.next_in.as_secs()));
    }
    if queue.refused > 0 {
        line.push_str(&format!(", {} refused by Atlas", queue.refused));
    }
    line.push_str(&format!(" ({} per {}s)", queue.rate, queue.per.as_secs()));
    line
}

/// One pass with narration; returns the outcomes.
async fn narrated_pass(session: &mut Session, args: &RunArgs, label: &str) -> Vec<(ObjectId, Outcome)> {
    let bar = session.progress(args, label.to_string());
    let narrate = session.narrate(args);
    let mut objects = std::mem::take(&mut session.input.objects);
    let this = &*session;
    let on_done = |id: ObjectId, outcome: &Outcome| {
        bar.inc(1);
        let events = events_of(outcome);
        let error = error_of(outcome);
        let shown: Vec<&EngineEvent> = events.iter().filter(|e| narrate || e.warning).collect();
        if shown.is_empty() && error.is_none() {
            return;
        }
        bar.suspend(|| {
            eprintln!("  {}", this.name(id));
            for e in shown {
                let mark = if e.warning { "!" } else { "+" };
                eprintln!("    {mark} {:<20} {}", e.reason, e.note);
            }
            if let Some(error) = &error {
                eprintln!("    ! {:<20} {error}", "AtlasError");
            }
        });
    };
    let pass = run_pass(&this.client, &this.index, &mut objects, Mode::Apply, args.concurrency, &on_done);
    let ticker = async {
        loop {
            bar.set_message(queue_line(&this.client.invitations().snapshot()));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let results = tokio::select! {
        results = pass => results,
        never = ticker => never,
    };
    bar.finish_and_clear();
    session.input.objects = objects;
    results
}

/// One line per object: where it stands after a pass.
fn print_standing(session: &Session) {
    let ready = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        find(conditions, conditions::READY)
            .map_or("Ready=?".to_string(), |c| format!("Ready={} ({})", c.status, c.reason))
    };
    let objects = &session.input.objects;
    let width = session.names.iter().map(|(_, n)| n.len()).max().unwrap_or(0);
    for o in &objects.org_users {
        let Some(s) = &o.status else { continue };
        eprintln!(
            "  {:<width$}  {:<18} {:<16} {}",
            format!("AtlasOrgUser {}", display_name(&o.metadata)),
            s.membership_status.as_deref().unwrap_or("-"),
            s.org_roles.join(","),
            ready(&s.conditions)
        );
    }
    for o in &objects.team_memberships {
        let Some(s) = &o.status else { continue };
        eprintln!(
            "  {:<width$}  {:<18} {:<16} {}",
            format!("AtlasTeamMembership {}", display_name(&o.metadata)),
            s.team_name.as_deref().unwrap_or("-"),
            format!("{} member(s)", s.member_count.unwrap_or(0)),
            ready(&s.conditions)
        );
    }
}

fn summary(results: &[(ObjectId, Outcome)]) -> (usize, usize, usize) {
    let settled = results.iter().filter(|(_, o)| o.is_settled()).count();
    let failed = results.iter().filter(|(_, o)| o.is_failed()).count();
    (settled, results.len() - settled, failed)
}

fn print_statuses(session: &Session) {
    let objects = &session.input.objects;
    let docs = objects.org_users.iter().map(|o| ("AtlasOrgUser", &o.metadata, serde_json::to_value(&o.status))).chain(
        objects.team_memberships.iter().map(|o| ("AtlasTeamMembership", &o.metadata, serde_json::to_value(&o.status))),
    );
    for (kind, meta, status) in docs {
        let doc = json!({
            "apiVersion": format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
            "kind": kind,
            "metadata": {"name": meta.name, "namespace": meta.namespace},
            "status": status.unwrap_or_default(),
        });
        let yaml = serde_yaml::to_string(&doc).expect("a status serializes");
        println!("---\n{yaml}");
    }
}

/// `apply`: reconcile every object, pass after pass, until nothing is left to do.
pub async fn apply(args: ApplyArgs) -> ExitCode {
    let run = &args.run;
    let mut session = match Session::open(run) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let total = session.input.objects.len();
    let mut last = Vec::new();
    let mut passes = 0;
    for pass in 1..=args.max_passes.max(1) {
        passes = pass;
        eprintln!("\nPass {pass}: reconciling {total} object(s)");
        let results = narrated_pass(&mut session, run, &format!("pass {pass}")).await;
        let (settled, to_go, failed) = summary(&results);
        if session.narrate(run) {
            print_standing(&session);
        }
        eprintln!("Pass {pass}: {settled} done, {to_go} to go ({failed} with errors)");
        let retry_after = results
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::OrgUser(Ok(r)) => r.requeue_after,
                Outcome::TeamMembership(Ok(r)) => r.requeue_after,
                _ => None,
            })
            .min();
        let done = to_go == 0;
        last = results;
        if done {
            break;
        }
        if let Some(wait) = retry_after {
            let wait = wait.min(Duration::from_secs(30));
            eprintln!("Atlas asked to slow down: waiting {}s", wait.as_secs());
            tokio::time::sleep(wait).await;
        }
    }
    if let Some(sim) = &session.sim {
        let state = sim.handle.state();
        let pending: Vec<(String, String)> = session
            .input
            .objects
            .org_users
            .iter()
            .filter(|o| o.status.as_ref().and_then(|s| s.membership_status.as_deref()) == Some("PENDING"))
            .map(|o| (o.spec.org_id.clone(), o.spec.username.clone()))
            .collect();
        if let Some((org_id, username)) = pending.first() {
            state.accept_invitation(org_id, username);
            eprintln!("\nMeanwhile, in the simulated Atlas: {username} accepts the invitation.");
            eprintln!("\nPass {}: reconciling {total} object(s)", passes + 1);
            last = narrated_pass(&mut session, run, "again").await;
            print_standing(&session);
        }
    }
    eprintln!("\nStatuses, as the controller would write them:");
    print_statuses(&session);
    let (settled, to_go, failed) = summary(&last);
    eprintln!();
    for (id, outcome) in last.iter().filter(|(_, o)| !o.is_settled() || o.is_failed()) {
        let why = error_of(outcome).unwrap_or_else(|| ready_line(outcome));
        eprintln!("{} ({}): {why}", session.name(*id), session.input.file_of(*id).display());
    }
    eprintln!("{total} object(s): {settled} done, {} waiting, {failed} failed", to_go - failed.min(to_go));
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
