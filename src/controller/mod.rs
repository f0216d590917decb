//! The operator's Kubernetes side: kube-rs Controllers for both resources, finalizers,
//! server-side-applied status, events, credentials, leader election and probes. Thin glue
//! around the same engine (`crate::engine`) the one-shot CLI uses.

pub mod credentials;
pub mod leader;
mod object;
mod org_user;
pub mod rbac;
pub mod status;
mod team;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use rand::Rng;

use crate::api::{self, AtlasOrgUser, AtlasTeamMembership};
use crate::atlas::{AtlasError, AtlasMetrics, ClientConfig, Credentials, ErrorClass};
use crate::engine::OrgUserIndex;
use crate::metrics::ControllerMetrics;
use crate::reconcile::{ActionError, ActionOutcome};
use crate::telemetry::LogFormat;
use credentials::{AtlasClients, CREDENTIALS_LABEL, CREDENTIALS_LABEL_VALUE, CredentialsError};

/// Name of the controller in events and logs.
pub const CONTROLLER_NAME: &str = "atlas-access-operator";

/// Flags of `atlas-access-operator run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Credentials for objects without `spec.credentialsSecretRef`: a Secret as NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME", env = "ATLAS_DEFAULT_CREDENTIALS_SECRET")]
    pub default_credentials_secret: Option<String>,
    /// How often a converged object is checked against Atlas again (drift), with ±10% jitter.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// How long one listing of an organization's users serves every object of that organization.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub index_refresh_interval: Duration,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Watch only objects matching this label selector (e.g. `shard=a`).
    #[arg(long)]
    pub label_selector: Option<String>,
    /// Never remove anything from Atlas when an object is deleted, whatever its deletionPolicy.
    #[arg(long)]
    pub deletion_protection: bool,
    /// Run only while holding a coordination.k8s.io Lease (for more than one replica).
    #[arg(long)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "atlas-access-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_bind: SocketAddr,
    /// Atlas Admin API base URL (Atlas for Government: https://cloud.mongodbgov.com).
    #[arg(long, env = "ATLAS_URL", default_value = crate::atlas::ATLAS_BASE_URL)]
    pub atlas_url: String,
    /// Allow a plain-http Atlas URL (the built-in simulator only).
    #[arg(long)]
    pub atlas_insecure_http: bool,
    /// Objects reconciled at once, per kind.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
    /// Invitations sent per minute by this process, all organizations and credentials
    /// together (Atlas limits them per IP, about 10 a minute; replicas behind one NAT share
    /// that limit); 0: no pacing.
    #[arg(long, default_value_t = 10)]
    pub invitations_per_minute: u32,
    /// Time limit of one reconcile (a wedged Atlas holds a worker no longer).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub reconcile_timeout: Duration,
}

/// Everything reconciles share.
pub struct Context {
    pub kube: Client,
    pub recorder: Recorder,
    pub metrics: ControllerMetrics,
    pub clients: AtlasClients,
    pub index: OrgUserIndex,
    pub org_users: Store<AtlasOrgUser>,
    pub resync_interval: Duration,
    pub deletion_protection: bool,
    /// Time limit of one reconcile.
    pub reconcile_timeout: Duration,
    backoff: Mutex<HashMap<String, u32>>,
}

/// Why a reconcile failed; decides when it is tried again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Atlas(#[from] AtlasError),
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
    #[error("Atlas refused part of the plan: {message}")]
    Incomplete { message: String, retry_after: Option<Duration>, transient: bool },
    #[error("deletion blocked: {0}")]
    DeletionBlocked(String),
    #[error("the reconcile did not finish within {}s (a wedged Atlas or token endpoint)", .0.as_secs())]
    Timeout(Duration),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

/// When to try again after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Atlas said when (Retry-After).
    After(Duration),
    /// Something passing: per-object exponential backoff.
    Backoff,
    /// Retrying soon won't help: wait for a change, checking again at the resync interval.
    Slow,
}

impl Error {
    pub fn retry(&self) -> Retry {
        match self {
            Error::Kube(_) => Retry::Backoff,
            Error::Atlas(e) => match (e.class(), e.retry_after()) {
                (ErrorClass::RateLimited, Some(d)) => Retry::After(d),
                (ErrorClass::RateLimited | ErrorClass::Transient, _) => Retry::Backoff,
                _ => Retry::Slow,
            },
            Error::Credentials(e) if e.is_transient() => Retry::Backoff,
            Error::Credentials(_) => Retry::Slow,
            Error::Incomplete { retry_after: Some(d), .. } => Retry::After(*d),
            Error::Incomplete { transient: true, .. } => Retry::Backoff,
            Error::Incomplete { .. } => Retry::Slow,
            Error::DeletionBlocked(_) | Error::Timeout(_) => Retry::Backoff,
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.retry()
                }
                _ => Retry::Backoff,
            },
        }
    }

    /// Metric label of the outcome.
    pub fn metric_label(&self) -> &'static str {
        match self.retry() {
            Retry::After(_) => "rate_limited",
            Retry::Backoff => "transient_error",
            Retry::Slow => "permanent_error",
        }
    }
}

/// Atlas's own words for every failed action, joined.
pub fn failure_message(outcomes: &[ActionOutcome]) -> Option<String> {
    let messages: Vec<String> = outcomes.iter().filter_map(|o| o.error()).map(|e| e.to_string()).collect();
    (!messages.is_empty()).then(|| messages.join("; "))
}

/// A plan that was carried out only in part is an error for the retry policy: rate-limited
/// -> the announced delay, transient -> backoff, a refusal -> wait for a change.
pub fn incomplete(outcomes: &[ActionOutcome]) -> Option<Error> {
    let errors: Vec<&ActionError> = outcomes.iter().filter_map(|o| o.error()).collect();
    if errors.is_empty() {
        return None;
    }
    let retry_after = errors.iter().filter_map(|e| e.retry_after_secs).min().map(Duration::from_secs);
    let transient = errors.iter().any(|e| e.waiting_may_fix());
    Some(Error::Incomplete { message: failure_message(outcomes).unwrap_or_default(), retry_after, transient })
}

fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// `base` ± 10%.
pub fn jittered(base: Duration) -> Duration {
    let factor = rand::rng().random_range(0.9..1.1);
    base.mul_f64(factor)
}

/// Per-object exponential backoff: 2 s, 4 s, … capped at 5 minutes, with jitter.
pub fn backoff_delay(attempt: u32) -> Duration {
    let secs = 2u64.saturating_pow(attempt.min(16)).min(300);
    jittered(Duration::from_secs(secs))
}

impl Context {
    /// A context for embedding the reconcilers elsewhere (tests drive them with a mocked
    /// kube client; `run` builds its own).
    pub fn new(
        kube: Client,
        clients: AtlasClients,
        index: OrgUserIndex,
        org_users: Store<AtlasOrgUser>,
        metrics: ControllerMetrics,
        resync_interval: Duration,
        deletion_protection: bool,
    ) -> Self {
        let recorder = Recorder::new(kube.clone(), Reporter { controller: CONTROLLER_NAME.into(), instance: None });
        Self {
            kube,
            recorder,
            metrics,
            clients,
            index,
            org_users,
            resync_interval,
            deletion_protection,
            reconcile_timeout: Duration::from_secs(300),
            backoff: Mutex::default(),
        }
    }

    fn next_backoff(&self, key: &str) -> Duration {
        let mut map = self.backoff.lock().expect("backoff lock");
        let attempt = map.entry(key.to_string()).or_insert(0);
        *attempt += 1;
        backoff_delay(*attempt)
    }

    fn reset_backoff(&self, key: &str) {
        self.backoff.lock().expect("backoff lock").remove(key);
    }

    /// The drift check after a success.
    pub fn resync(&self) -> Action {
        Action::requeue(jittered(self.resync_interval))
    }

    /// Publish an event about an object; failures are logged, never fatal.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, warning: bool, reason: &str, note: &str) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_string(),
            note: Some(truncate(note, 1000)),
            action: reason.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing an event failed");
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = object_key(obj.as_ref());
    let delay = match err.retry() {
        Retry::After(d) => d,
        Retry::Backoff => ctx.next_backoff(&key),
        Retry::Slow => jittered(ctx.resync_interval),
    };
    tracing::warn!(object = %key, error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Run one reconcile with timing, metrics and backoff bookkeeping.
async fn instrumented<K, F>(obj: Arc<K>, ctx: Arc<Context>, f: F) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: std::future::Future<Output = Result<Action, Error>>,
{
    let started = Instant::now();
    let kind = K::kind(&()).to_string();
    let result =
        tokio::time::timeout(ctx.reconcile_timeout, f).await.unwrap_or(Err(Error::Timeout(ctx.reconcile_timeout)));
    let outcome = match &result {
        Ok(_) => {
            ctx.reset_backoff(&object_key(obj.as_ref()));
            "success"
        }
        Err(e) => e.metric_label(),
    };
    ctx.metrics.observe_reconcile(&kind, outcome, started.elapsed());
    result
}

/// One reconcile of an AtlasOrgUser, as the Controller runs it.
pub async fn reconcile_org_user(obj: Arc<AtlasOrgUser>, ctx: Arc<Context>) -> Result<Action, Error> {
    object::reconcile(obj, ctx).await
}

/// One reconcile of an AtlasTeamMembership, as the Controller runs it.
pub async fn reconcile_team_membership(obj: Arc<AtlasTeamMembership>, ctx: Arc<Context>) -> Result<Action, Error> {
    object::reconcile(obj, ctx).await
}

/// Secrets labelled as Atlas credentials: which objects use the one that changed.
fn objects_using_secret<K>(
    store: &Store<K>,
    clients: &AtlasClients,
    secret: &PartialObjectMeta<Secret>,
    secret_ref: impl Fn(&K) -> Option<String>,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let is_default = clients.is_default(&ns, &name);
    store
        .state()
        .iter()
        .filter(|o| match secret_ref(o) {
            Some(r) => o.namespace().as_deref() == Some(ns.as_str()) && r == name,
            None => is_default,
        })
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// The usernames of AtlasOrgUsers by name, in one namespace (for `orgUserRef`).
pub fn org_user_refs(store: &Store<AtlasOrgUser>, namespace: &str) -> BTreeMap<String, String> {
    store
        .state()
        .iter()
        .filter(|u| u.namespace().as_deref() == Some(namespace))
        .map(|u| (u.name_any(), u.spec.username.clone()))
        .collect()
}

fn watcher_config(args: &RunArgs) -> watcher::Config {
    let mut config = watcher::Config::default();
    if let Some(selector) = &args.label_selector {
        config = config.labels(selector);
    }
    config
}

fn namespaced_or_all<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Fail early and clearly when the CRDs are not installed.
pub async fn check_crds(client: &Client) -> Result<(), String> {
    let wanted = ["atlasorgusers", "atlasteammemberships"];
    let version = format!("{}/{}", api::GROUP, api::VERSION);
    match client.list_api_group_resources(&version).await {
        Ok(list) => {
            let missing: Vec<&str> =
                wanted.iter().copied().filter(|w| !list.resources.iter().any(|r| r.name == *w)).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("CRDs missing ({}): install them with `kubectl apply -f crds/`", missing.join(", ")))
            }
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            Err(format!("the API group {version} is not served: install the CRDs with `kubectl apply -f crds/`"))
        }
        Err(e) => Err(format!("cannot reach the Kubernetes API to look for the CRDs: {e}")),
    }
}

fn parse_secret_name(value: &str) -> Result<(String, String), String> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("--default-credentials-secret must be NAMESPACE/NAME, got {value:?}")),
    }
}

/// `atlas-access-operator run`: until SIGTERM / Ctrl-C (exit 0) or a fatal error.
pub async fn run(args: RunArgs) -> Result<(), String> {
    crate::telemetry::init(args.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let default_secret = args.default_credentials_secret.as_deref().map(parse_secret_name).transpose()?;
    let kube = Client::try_default().await.map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;

    let mut registry = Registry::default();
    let metrics = ControllerMetrics::register(&mut registry);
    let atlas_metrics = AtlasMetrics::default();
    atlas_metrics.register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let http_state = crate::http::HttpState { registry: Arc::new(registry), ready: ready.clone() };
    let http_shutdown = shutdown.clone();
    let (bound, http_task) =
        crate::http::serve(args.http_bind, http_state, async move { http_shutdown.notified().await })
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.http_bind))?;
    tracing::info!(%bound, "serving /healthz, /readyz and /metrics");

    check_crds(&kube).await?;

    let leadership = if args.leader_election {
        // A follower is healthy and ready: it is waiting, not failing (rolling updates need that).
        ready.store(true, Ordering::Relaxed);
        let namespace = args
            .lease_namespace
            .clone()
            .ok_or("--leader-election needs --lease-namespace or the POD_NAMESPACE environment variable")?;
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
        let acquired = tokio::select! {
            l = leader::acquire(kube.clone(), &namespace, &args.lease_name, &identity) => l.map_err(|e| e.to_string())?,
            _ = shutdown_signal() => { shutdown.notify_waiters(); return Ok(()); }
        };
        Some(acquired)
    } else {
        None
    };

    let mut template = ClientConfig::new(
        args.atlas_url.clone(),
        Credentials::ApiKey { public_key: String::new(), private_key: secrecy::SecretString::from(String::new()) },
    );
    template.insecure_http = args.atlas_insecure_http;
    template.metrics = atlas_metrics;
    // One queue for the process: every client built from the template shares it.
    template.invitations = match args.invitations_per_minute {
        0 => crate::atlas::InvitationQueue::disabled(),
        n => crate::atlas::InvitationQueue::per_minute(n),
    };
    // A turn further away is written to the status (position, ETA) and requeued instead.
    template.invitation_max_wait = (args.reconcile_timeout / 3).min(Duration::from_secs(60));
    let clients = AtlasClients::new(template, default_secret);

    let wc = watcher_config(&args);
    let ns = args.namespace.as_deref();
    let org_user_ctrl = Controller::new(namespaced_or_all::<AtlasOrgUser>(&kube, ns), wc.clone());
    let team_ctrl = Controller::new(namespaced_or_all::<AtlasTeamMembership>(&kube, ns), wc.clone());
    let org_users = org_user_ctrl.store();
    let teams = team_ctrl.store();

    let ctx = Arc::new(Context {
        kube: kube.clone(),
        recorder: Recorder::new(
            kube.clone(),
            Reporter { controller: CONTROLLER_NAME.into(), instance: std::env::var("POD_NAME").ok() },
        ),
        metrics,
        clients,
        index: OrgUserIndex::new(args.index_refresh_interval),
        org_users: org_users.clone(),
        resync_interval: args.resync_interval,
        deletion_protection: args.deletion_protection,
        reconcile_timeout: args.reconcile_timeout,
        backoff: Mutex::default(),
    });

    let secret_wc = watcher::Config::default().labels(&format!("{CREDENTIALS_LABEL}={CREDENTIALS_LABEL_VALUE}"));
    let secrets = || namespaced_or_all::<PartialObjectMeta<Secret>>(&kube, ns);
    let config = ControllerConfig::default().concurrency(args.concurrency);

    let (ctx_a, store_a) = (ctx.clone(), org_users.clone());
    let org_user_run = org_user_ctrl
        .with_config(config.clone())
        .watches(secrets(), secret_wc.clone(), move |s| {
            objects_using_secret(&store_a, &ctx_a.clients, &s, |o: &AtlasOrgUser| {
                o.spec.credentials_secret_ref.as_ref().map(|r| r.name.clone())
            })
        })
        .graceful_shutdown_on(wait(shutdown.clone()))
        .run(reconcile_org_user, error_policy, ctx.clone())
        .for_each(log_run_error);

    let (ctx_b, teams_b) = (ctx.clone(), teams.clone());
    let teams_c = teams.clone();
    let team_run = team_ctrl
        .with_config(config)
        .watches(secrets(), secret_wc, move |s| {
            objects_using_secret(&teams_b, &ctx_b.clients, &s, |o: &AtlasTeamMembership| {
                o.spec.credentials_secret_ref.as_ref().map(|r| r.name.clone())
            })
        })
        // An AtlasOrgUser's status (its user id, its invitation) feeds the teams that reference it.
        .watches(namespaced_or_all::<AtlasOrgUser>(&kube, ns), wc, move |user: AtlasOrgUser| {
            let ns = user.namespace();
            let name = user.name_any();
            teams_c
                .state()
                .iter()
                .filter(|t| {
                    t.namespace() == ns
                        && t.spec.members.iter().any(|m| m.org_user_ref.as_ref().is_some_and(|r| r.name == name))
                })
                .map(|t| ObjectRef::from_obj(t.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(wait(shutdown.clone()))
        .run(reconcile_team_membership, error_policy, ctx.clone())
        .for_each(log_run_error);

    let readiness = {
        let (org_users, teams, ready) = (org_users.clone(), teams.clone(), ready.clone());
        let ctx = ctx.clone();
        async move {
            if store_ready(&org_users).await && store_ready(&teams).await {
                ready.store(true, Ordering::Relaxed);
                tracing::info!("caches synced; ready");
                check_atlas_reachable(&ctx).await;
            }
        }
    };
    tokio::spawn(readiness);

    let signal = {
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            shutdown.notify_waiters();
        }
    };
    tokio::spawn(signal);

    let mut lost_leadership = false;
    match leadership {
        Some(mut leadership) => {
            tokio::select! {
                _ = futures::future::join(org_user_run, team_run) => {}
                _ = leadership.lost() => {
                    lost_leadership = true;
                    tracing::error!("lost leadership; stopping so that only the new leader writes");
                }
            }
            leadership.release().await;
        }
        None => {
            futures::future::join(org_user_run, team_run).await;
        }
    }
    shutdown.notify_waiters();
    let _ = http_task.await;
    if lost_leadership { Err("lost leadership".into()) } else { Ok(()) }
}

/// Wait until a reflector store has its first listing. kube's readiness signal wakes only
/// the most recent waiter (the Controller's own runner also waits on it), so poll it
/// again every half second instead of relying on a wake-up.
async fn store_ready<K>(store: &Store<K>) -> bool
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    loop {
        if let Ok(result) = tokio::time::timeout(Duration::from_millis(500), store.wait_until_ready()).await {
            return result.is_ok();
        }
    }
}

/// Watch and queue errors of a Controller's stream (reconcile errors are logged by `error_policy`).
fn log_run_error<K, E: std::fmt::Display>(result: Result<K, E>) -> futures::future::Ready<()> {
    if let Err(e) = result {
        tracing::debug!(error = %e, "controller stream");
    }
    futures::future::ready(())
}

async fn wait(notify: Arc<tokio::sync::Notify>) {
    notify.notified().await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "operator".into())
}

/// Startup check: the default credentials can read each organization the objects name.
/// A warning, never fatal: objects with their own Secret may not need them.
async fn check_atlas_reachable(ctx: &Context) {
    if ctx.clients.secret_for("", None).is_none() {
        return;
    }
    let client = match ctx.clients.client_for(&ctx.kube, "", None, false).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "default Atlas credentials are not usable");
            return;
        }
    };
    let mut orgs: Vec<String> = ctx
        .org_users
        .state()
        .iter()
        .filter(|u| u.spec.credentials_secret_ref.is_none())
        .map(|u| u.spec.org_id.clone())
        .collect();
    orgs.sort();
    orgs.dedup();
    for org in orgs {
        match client.get_org(&org).await {
            Ok(o) => tracing::info!(org = %org, name = %o.name, "Atlas reachable with the default credentials"),
            Err(e) => tracing::warn!(org = %org, error = %e, "Atlas not reachable with the default credentials"),
        }
    }
}
