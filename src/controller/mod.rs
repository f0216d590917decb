//! The operator's Kubernetes side: kube-rs Controllers for both resources, finalizers,
//! server-side-applied status, events, credentials, leader election and probes. Thin glue
//! around the same engine (`crate::engine`) the one-shot CLI uses.

pub mod audit;
pub mod credentials;
pub mod leader;
mod object;
mod org_user;
pub mod organization;
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

use crate::api::{self, AtlasOrgUser, AtlasOrganization, AtlasTeamMembership};
use crate::atlas::{AtlasError, AtlasMetrics, ClientConfig, Credentials, ErrorClass};
use crate::engine::OrgUserIndex;
use crate::metrics::ControllerMetrics;
use crate::reconcile::{ActionError, ActionOutcome};
use crate::telemetry::LogFormat;
use credentials::{AtlasClients, CREDENTIALS_LABEL, CREDENTIALS_LABEL_VALUE, CredentialsError};

/// How often, at most, the audit gauges are recomputed from the index (more often when the
/// index is refreshed more often).
const AUDIT_PUBLISH_INTERVAL: Duration = Duration::from_secs(15);

/// Name of the controller in events and logs.
pub const CONTROLLER_NAME: &str = "atlas-access-operator";

/// Flags of `atlas-access-operator run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Single-tenant installs only: credentials for objects with neither a
    /// `spec.credentialsSecretRef` nor an AtlasOrganization for their orgId, a Secret as
    /// NAMESPACE/NAME. It serves EVERY namespace: anyone who may create an AtlasOrgUser anywhere
    /// the operator watches acts with this key. Multi-tenant installs leave it unset and give
    /// each organization an AtlasOrganization instead.
    #[arg(long, value_name = "NAMESPACE/NAME", env = "ATLAS_DEFAULT_CREDENTIALS_SECRET")]
    pub default_credentials_secret: Option<String>,
    /// The operator's own namespace: AtlasOrganization credentials Secrets live there, and only
    /// there are labelled credentials Secrets watched (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub operator_namespace: Option<String>,
    /// The ClusterRole a tenant namespace binds (RoleBinding) to let the operator read its own
    /// credentials Secret; named in the condition of an object whose Secret it may not read.
    #[arg(long, default_value = credentials::DEFAULT_TENANT_SECRETS_CLUSTER_ROLE)]
    pub tenant_secrets_cluster_role: String,
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
    /// How long before its expiry a pending invitation gets the InvitationExpiringSoon
    /// condition and one Warning event.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub invitation_warning: Duration,
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
    /// Every AtlasOrganization (cluster-scoped): which namespaces may manage which org.
    pub organizations: Store<AtlasOrganization>,
    /// The other writers of a team come from here (and from `org_users`).
    pub teams: Store<AtlasTeamMembership>,
    pub resync_interval: Duration,
    pub deletion_protection: bool,
    /// How long before its expiry a pending invitation is flagged (`InvitationExpiringSoon`).
    pub invitation_warning: Duration,
    /// Time limit of one reconcile.
    pub reconcile_timeout: Duration,
    backoff: Mutex<HashMap<String, u32>>,
}

/// Why a reconcile failed; decides when it is tried again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {}", describe_kube_error(.0))]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Atlas(#[from] AtlasError),
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
    #[error("Atlas refused part of the plan: {message}")]
    Incomplete { message: String, retry_after: Option<Duration>, transient: bool },
    #[error("deletion blocked: {0}")]
    DeletionBlocked(String),
    #[error("not allowed: {0}")]
    NotAllowed(String),
    #[error("the reconcile did not finish within {}s (a wedged Atlas or token endpoint)", .0.as_secs())]
    Timeout(Duration),
    /// The write-ahead record was not written: nothing was sent to Atlas.
    #[error("{0}")]
    Intent(#[from] crate::engine::IntentError),
    #[error("{}", describe_finalizer_error(.0))]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

/// A Kubernetes API error as a sentence: `HTTP 422 Invalid: message` rather than kube's
/// `Debug` dump of the whole `Status`.
pub fn describe_kube_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let mut text = format!("HTTP {}", status.code);
            if !status.reason.is_empty() {
                text.push_str(&format!(" {}", status.reason));
            }
            if !status.message.is_empty() {
                text.push_str(&format!(": {}", status.message));
            }
            text
        }
        other => other.to_string(),
    }
}

fn describe_finalizer_error(error: &kube::runtime::finalizer::Error<Error>) -> String {
    use kube::runtime::finalizer::Error as F;
    match error {
        F::ApplyFailed(e) | F::CleanupFailed(e) => e.to_string(),
        F::AddFinalizer(e) => format!(
            "adding the finalizer {}: {} (retried: the object changed since it was read)",
            api::FINALIZER,
            describe_kube_error(e)
        ),
        F::RemoveFinalizer(e) => format!("removing the finalizer {}: {}", api::FINALIZER, describe_kube_error(e)),
        other => other.to_string(),
    }
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
            Error::DeletionBlocked(_) | Error::Intent(_) | Error::Timeout(_) => Retry::Backoff,
            Error::NotAllowed(_) => Retry::Slow,
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
            organizations: kube::runtime::reflector::store::Writer::default().as_reader(),
            teams: kube::runtime::reflector::store::Writer::default().as_reader(),
            resync_interval,
            deletion_protection,
            invitation_warning: crate::reconcile::audit::DEFAULT_INVITATION_WARNING,
            reconcile_timeout: Duration::from_secs(300),
            backoff: Mutex::default(),
        }
    }

    /// How long before its expiry a pending invitation is flagged (default 7 days).
    pub fn with_invitation_warning(mut self, window: Duration) -> Self {
        self.invitation_warning = window;
        self
    }

    /// The AtlasOrganizations the reconciles consult (default: none).
    pub fn with_organizations(mut self, organizations: Store<AtlasOrganization>) -> Self {
        self.organizations = organizations;
        self
    }

    /// The AtlasTeamMembership store, where the other writers of a team are found (without
    /// it, [`Context::new`] knows none).
    pub fn with_teams(mut self, teams: Store<AtlasTeamMembership>) -> Self {
        self.teams = teams;
        self
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
            tracing::warn!(error = %describe_kube_error(&e), reason, "publishing an event failed");
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
    let object = format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    );
    tracing::warn!(
        object = %object,
        kind = K::kind(&()).as_ref(),
        retry_in_secs = delay.as_secs(),
        "reconcile failed: {err}; retrying in {}s",
        delay.as_secs()
    );
    Action::requeue(delay)
}

/// Run one reconcile with timing, metrics and backoff bookkeeping.
async fn instrumented<K, F>(obj: Arc<K>, ctx: Arc<Context>, f: F) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: std::future::Future<Output = Result<Action, Error>>,
{
    use tracing::Instrument;
    let started = Instant::now();
    let kind = K::kind(&()).to_string();
    let object = format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    );
    // Every line logged during the reconcile carries the object and its kind.
    let span = tracing::info_span!("reconcile", object = %object, kind = %kind);
    let in_flight = ctx.metrics.in_flight.get_or_create(&crate::metrics::KindLabels { kind: kind.clone() }).clone();
    in_flight.inc();
    let timeout = ctx.reconcile_timeout;
    let result = tokio::time::timeout(timeout, f.instrument(span)).await.unwrap_or(Err(Error::Timeout(timeout)));
    in_flight.dec();
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

/// Secrets labelled as Atlas credentials (in the operator's namespace): which objects use the
/// one that changed, by their own reference, their AtlasOrganization's, or as the default.
fn objects_using_secret<K>(
    store: &Store<K>,
    organizations: &Store<AtlasOrganization>,
    clients: &AtlasClients,
    secret: &PartialObjectMeta<Secret>,
    secret_ref: impl Fn(&K) -> Option<String>,
    org_id: impl Fn(&K) -> String,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let orgs = organizations.state();
    store
        .state()
        .iter()
        .filter(|o| {
            let organization = orgs.iter().filter(|a| a.spec.org_id == org_id(o)).min_by_key(|a| a.name_any());
            let (object_ns, own) = (o.namespace().unwrap_or_default(), secret_ref(o));
            let from = credentials::CredentialsRef {
                namespace: &object_ns,
                own: own.as_deref(),
                organization: organization.map(|a| {
                    (a.metadata.name.as_deref().unwrap_or_default(), a.spec.credentials_secret_ref.name.as_str())
                }),
            };
            clients.secret_for(from).is_some_and(|(n, s)| n == ns && s == name)
        })
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// The team memberships an AtlasOrgUser's change concerns: those listing it by `orgUserRef`
/// (same namespace) or by username (same organization, any case), and those of a team its
/// `teamIds` name.
pub fn teams_affected_by_org_user(
    teams: &Store<AtlasTeamMembership>,
    user: &AtlasOrgUser,
) -> Vec<ObjectRef<AtlasTeamMembership>> {
    let (ns, name) = (user.namespace(), user.name_any());
    let username = crate::reconcile::username_key(&user.spec.username);
    teams
        .state()
        .iter()
        .filter(|t| {
            let by_ref = t.namespace() == ns
                && t.spec.members.iter().any(|m| m.org_user_ref.as_ref().is_some_and(|r| r.name == name));
            let same_org = t.spec.org_id == user.spec.org_id;
            let by_username = same_org
                && t.spec
                    .members
                    .iter()
                    .any(|m| m.username.as_deref().is_some_and(|u| crate::reconcile::username_key(u) == username));
            let by_team_id = same_org
                && t.status
                    .as_ref()
                    .and_then(|s| s.team_id.as_ref())
                    .or(t.spec.team.id.as_ref())
                    .is_some_and(|id| user.spec.team_ids.contains(id));
            by_ref || by_username || by_team_id
        })
        .map(|t| ObjectRef::from_obj(t.as_ref()))
        .collect()
}

/// The other team memberships of the same organization and team as `team` (by pinned or
/// spec id, or by name), so a conflict ends as soon as its cause changes.
fn co_writers(teams: &Store<AtlasTeamMembership>, team: &AtlasTeamMembership) -> Vec<ObjectRef<AtlasTeamMembership>> {
    let key = |t: &AtlasTeamMembership| {
        let id = t.status.as_ref().and_then(|s| s.team_id.clone()).or_else(|| t.spec.team.id.clone());
        (id, t.spec.team.name.as_deref().map(str::to_lowercase))
    };
    let (id, name) = key(team);
    teams
        .state()
        .iter()
        .filter(|t| t.uid() != team.uid() && t.spec.org_id == team.spec.org_id)
        .filter(|t| {
            let (other_id, other_name) = key(t);
            (id.is_some() && other_id == id) || (name.is_some() && other_name == name)
        })
        .map(|t| ObjectRef::from_obj(t.as_ref()))
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
    let wanted = ["atlasorgusers", "atlasteammemberships", "atlasorganizations"];
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
    let audit_metrics = audit::AuditMetrics::register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let http_state = crate::http::HttpState {
        registry: Arc::new(registry),
        ready: ready.clone(),
        dependencies: atlas_metrics.dependencies.clone(),
    };
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
        metrics.set_leader(true);
        Some(acquired)
    } else {
        metrics.set_leader(true);
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
    let clients = AtlasClients::new(template, default_secret)
        .with_tenancy(args.operator_namespace.clone(), &args.tenant_secrets_cluster_role);

    let wc = watcher_config(&args);
    let ns = args.namespace.as_deref();
    let org_user_ctrl = Controller::new(namespaced_or_all::<AtlasOrgUser>(&kube, ns), wc.clone());
    let team_ctrl = Controller::new(namespaced_or_all::<AtlasTeamMembership>(&kube, ns), wc.clone());
    let organization_ctrl = Controller::new(Api::<AtlasOrganization>::all(kube.clone()), watcher::Config::default());
    let org_users = org_user_ctrl.store();
    let teams = team_ctrl.store();
    let organizations = organization_ctrl.store();

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
        organizations: organizations.clone(),
        teams: teams.clone(),
        resync_interval: args.resync_interval,
        deletion_protection: args.deletion_protection,
        invitation_warning: args.invitation_warning,
        reconcile_timeout: args.reconcile_timeout,
        backoff: Mutex::default(),
    });

    let secret_wc = watcher::Config::default().labels(&format!("{CREDENTIALS_LABEL}={CREDENTIALS_LABEL_VALUE}"));
    // Labelled Secrets are watched in the operator's namespace only (least privilege: a Role
    // there); a tenant's own Secret is read again on each reconcile.
    let operator_ns = args.operator_namespace.clone();
    let secrets = || operator_ns.as_deref().map(|ns| Api::<PartialObjectMeta<Secret>>::namespaced(kube.clone(), ns));
    let config = ControllerConfig::default().concurrency(args.concurrency);
    let organizations_api = || Api::<AtlasOrganization>::all(kube.clone());

    let (ctx_a, store_a) = (ctx.clone(), org_users.clone());
    let store_a2 = org_users.clone();
    let mut org_user_ctrl = org_user_ctrl
        .with_config(config.clone())
        // An AtlasOrganization's change (namespaces, ceilings, credentials) re-judges its objects.
        .watches(organizations_api(), watcher::Config::default(), move |org: AtlasOrganization| {
            store_a2
                .state()
                .iter()
                .filter(|o| o.spec.org_id == org.spec.org_id)
                .map(|o| ObjectRef::from_obj(o.as_ref()))
                .collect::<Vec<_>>()
        });
    if let Some(api) = secrets() {
        org_user_ctrl = org_user_ctrl.watches(api, secret_wc.clone(), move |s| {
            objects_using_secret(
                &store_a,
                &ctx_a.organizations,
                &ctx_a.clients,
                &s,
                |o: &AtlasOrgUser| o.spec.credentials_secret_ref.as_ref().map(|r| r.name.clone()),
                |o: &AtlasOrgUser| o.spec.org_id.clone(),
            )
        });
    }
    let org_user_run = org_user_ctrl
        .graceful_shutdown_on(wait(shutdown.clone()))
        .run(reconcile_org_user, error_policy, ctx.clone())
        .for_each(log_run_error);

    let (ctx_b, teams_b) = (ctx.clone(), teams.clone());
    let (teams_c, teams_d) = (teams.clone(), teams.clone());
    let teams_e = teams.clone();
    let mut team_ctrl = team_ctrl
        .with_config(config.clone())
        .watches(organizations_api(), watcher::Config::default(), move |org: AtlasOrganization| {
            teams_d
                .state()
                .iter()
                .filter(|t| t.spec.org_id == org.spec.org_id)
                .map(|t| ObjectRef::from_obj(t.as_ref()))
                .collect::<Vec<_>>()
        })
        // An AtlasOrgUser (its invitation, its user id, its teamIds) feeds the teams that list
        // it, by orgUserRef or by username, and the teams its teamIds name.
        .watches(namespaced_or_all::<AtlasOrgUser>(&kube, ns), wc.clone(), move |user: AtlasOrgUser| {
            teams_affected_by_org_user(&teams_c, &user)
        })
        // A team membership's change (created, deleted, mode) decides who else may write its team.
        .watches(namespaced_or_all::<AtlasTeamMembership>(&kube, ns), wc, move |team: AtlasTeamMembership| {
            co_writers(&teams_e, &team)
        });
    if let Some(api) = secrets() {
        team_ctrl = team_ctrl.watches(api, secret_wc.clone(), move |s| {
            objects_using_secret(
                &teams_b,
                &ctx_b.organizations,
                &ctx_b.clients,
                &s,
                |o: &AtlasTeamMembership| o.spec.credentials_secret_ref.as_ref().map(|r| r.name.clone()),
                |o: &AtlasTeamMembership| o.spec.org_id.clone(),
            )
        });
    }
    let team_run = team_ctrl
        .graceful_shutdown_on(wait(shutdown.clone()))
        .run(reconcile_team_membership, error_policy, ctx.clone())
        .for_each(log_run_error);

    let organizations_c = organizations.clone();
    let mut organization_ctrl = organization_ctrl.with_config(config);
    if let Some(api) = secrets() {
        organization_ctrl = organization_ctrl.watches(api, secret_wc, move |s| {
            organizations_c
                .state()
                .iter()
                .filter(|o| o.spec.credentials_secret_ref.name == s.name_any())
                .map(|o| ObjectRef::from_obj(o.as_ref()))
                .collect::<Vec<_>>()
        });
    }
    let organization_run = organization_ctrl
        .graceful_shutdown_on(wait(shutdown.clone()))
        .run(organization::reconcile, error_policy, ctx.clone())
        .for_each(log_run_error);
    let all_runs = futures::future::join3(org_user_run, team_run, organization_run);

    let readiness = {
        let (org_users, teams, ready) = (org_users.clone(), teams.clone(), ready.clone());
        let ctx = ctx.clone();
        async move {
            if store_ready(&org_users).await && store_ready(&teams).await && store_ready(&ctx.organizations).await {
                ready.store(true, Ordering::Relaxed);
                tracing::info!("caches synced; ready");
                check_atlas_reachable(&ctx).await;
            }
        }
    };
    tokio::spawn(readiness);
    // Audit gauges from the listings the reconciles made: no Atlas call of their own.
    let audit_every = args.index_refresh_interval.clamp(Duration::from_secs(1), AUDIT_PUBLISH_INTERVAL);
    tokio::spawn(audit::publish_forever(audit_metrics, ctx.clone(), teams.clone(), audit_every));

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
                _ = all_runs => {}
                _ = leadership.lost() => {
                    lost_leadership = true;
                    ctx.metrics.set_leader(false);
                    tracing::error!("lost leadership; stopping so that only the new leader writes");
                }
            }
            leadership.release().await;
        }
        None => {
            all_runs.await;
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
    let from = credentials::CredentialsRef::default();
    if ctx.clients.secret_for(from).is_none() {
        return;
    }
    let client = match ctx.clients.client_for(&ctx.kube, from, false).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_errors_are_sentences_not_debug_dumps() {
        let status = kube::core::Status {
            code: 422,
            reason: "Invalid".into(),
            message: "AtlasOrgUser.atlas-access.dev \"alice\" is invalid: metadata.finalizers: Forbidden".into(),
            ..Default::default()
        };
        let add = kube::runtime::finalizer::Error::<Error>::AddFinalizer(kube::Error::Api(Box::new(status)));
        let text = Error::Finalizer(Box::new(add)).to_string();
        assert_eq!(
            text,
            "adding the finalizer atlas-access.dev/cleanup: HTTP 422 Invalid: AtlasOrgUser.atlas-access.dev \
             \"alice\" is invalid: metadata.finalizers: Forbidden (retried: the object changed since it was read)"
        );
        assert!(!text.contains("Status {"), "{text}");
    }
}
