//! The operator's Kubernetes side: kube-rs Controllers for both resources, finalizers,
//! server-side-applied status, events, credentials, leader election and probes. Thin glue
//! around the same engine (`crate::engine`) the one-shot CLI uses.

pub mod audit;
pub mod credentials;
pub mod events;
pub mod feed;
pub mod indexes;
pub mod leader;
mod object;
mod org_user;
pub mod organization;
mod own_writes;
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
use kube::runtime::events::{Event, EventType, Reporter};
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
use feed::{Feed, all_ready, gated, own_changes};
use indexes::{Index, Indexes, Key};

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
    /// How long one listing of an organization's users serves every object of that
    /// organization, at least: the listing is made again once it is older than this or than
    /// --resync-interval, whichever is longer, so at idle each organization is listed once per
    /// resync period (or per this interval, if longer), never twice.
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

impl RunArgs {
    /// How long one organization listing serves: the longer of the index refresh interval and
    /// the resync interval (a drift check never lists an organization twice a period).
    pub fn listing_interval(&self) -> Duration {
        self.index_refresh_interval.max(self.resync_interval)
    }

    /// How long a team's member listing (made by the engine, updated from its own writes)
    /// serves: below the shortest jittered resync (0.9x), so every drift check lists.
    pub fn member_listing_interval(&self) -> Duration {
        self.resync_interval.mul_f64(0.8)
    }

    /// How long a client built from a Secret that is not watched serves before the Secret is
    /// read again: below the shortest jittered resync (0.9x), so each drift check reads it.
    pub fn secret_revalidation(&self) -> Duration {
        self.resync_interval.mul_f64(0.8)
    }
}

/// A namespace's labels and when they were read.
type ReadLabels = (BTreeMap<String, String>, Instant);

/// Everything reconciles share.
pub struct Context {
    pub kube: Client,
    pub recorder: events::EventRecorder,
    pub metrics: ControllerMetrics,
    pub clients: AtlasClients,
    pub index: OrgUserIndex,
    pub org_users: Store<AtlasOrgUser>,
    /// Every AtlasOrganization (cluster-scoped): which namespaces may manage which org.
    pub organizations: Store<AtlasOrganization>,
    /// The other writers of a team come from here (and from `org_users`).
    pub teams: Store<AtlasTeamMembership>,
    /// Lookups into the three stores, kept up to date from the same watch events.
    pub indexes: Indexes,
    pub resync_interval: Duration,
    pub deletion_protection: bool,
    /// How long before its expiry a pending invitation is flagged (`InvitationExpiringSoon`).
    pub invitation_warning: Duration,
    /// Time limit of one reconcile.
    pub reconcile_timeout: Duration,
    backoff: Mutex<HashMap<String, u32>>,
    /// Status writes the cache has not shown yet.
    own_writes: own_writes::OwnWrites,
    /// Namespace labels read for an AtlasOrganization's namespaceSelector, and when.
    namespace_labels: Mutex<HashMap<String, ReadLabels>>,
    /// How long read namespace labels are trusted (zero: read on every reconcile).
    namespace_labels_ttl: Duration,
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
        let recorder =
            events::EventRecorder::new(kube.clone(), Reporter { controller: CONTROLLER_NAME.into(), instance: None });
        Self {
            kube,
            recorder,
            metrics,
            clients,
            index,
            indexes: Indexes {
                org_users: Arc::new(Index::of_store(indexes::org_user_keys, &org_users)),
                ..Indexes::default()
            },
            org_users,
            organizations: kube::runtime::reflector::store::Writer::default().as_reader(),
            teams: kube::runtime::reflector::store::Writer::default().as_reader(),
            resync_interval,
            deletion_protection,
            invitation_warning: crate::reconcile::audit::DEFAULT_INVITATION_WARNING,
            reconcile_timeout: Duration::from_secs(300),
            backoff: Mutex::default(),
            own_writes: Default::default(),
            namespace_labels: Mutex::default(),
            namespace_labels_ttl: Duration::ZERO,
        }
    }

    /// How long before its expiry a pending invitation is flagged (default 7 days).
    pub fn with_invitation_warning(mut self, window: Duration) -> Self {
        self.invitation_warning = window;
        self
    }

    /// The AtlasOrganizations the reconciles consult (default: none).
    pub fn with_organizations(mut self, organizations: Store<AtlasOrganization>) -> Self {
        self.indexes.organizations = Arc::new(Index::of_store(indexes::organization_keys, &organizations));
        self.organizations = organizations;
        self
    }

    /// The AtlasTeamMembership store, where the other writers of a team are found (without
    /// it, [`Context::new`] knows none).
    pub fn with_teams(mut self, teams: Store<AtlasTeamMembership>) -> Self {
        self.indexes.teams = Arc::new(Index::of_store(indexes::team_keys, &teams));
        self.teams = teams;
        self
    }

    fn next_backoff(&self, key: &str) -> Duration {
        let mut map = self.backoff.lock().expect("backoff lock");
        let attempt = map.entry(key.to_string()).or_insert(0);
        *attempt += 1;
        backoff_delay(*attempt)
    }

    /// The labels of `namespace` (for a namespaceSelector), read from the API server at most
    /// once per the labels' trust period.
    pub async fn namespace_labels(&self, namespace: &str) -> Result<BTreeMap<String, String>, kube::Error> {
        if let Some((labels, at)) = self.namespace_labels.lock().expect("labels lock").get(namespace)
            && at.elapsed() < self.namespace_labels_ttl
        {
            return Ok(labels.clone());
        }
        let read = Api::<k8s_openapi::api::core::v1::Namespace>::all(self.kube.clone()).get(namespace).await?;
        let labels = read.metadata.labels.unwrap_or_default();
        self.namespace_labels
            .lock()
            .expect("labels lock")
            .insert(namespace.to_string(), (labels.clone(), Instant::now()));
        Ok(labels)
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
/// Candidates come from the indexes (own reference; the organizations naming the Secret);
/// only a change of the default Secret looks at every object.
fn objects_using_secret<K>(
    index: &Index<K>,
    store: &Store<K>,
    ctx: &Context,
    secret: &PartialObjectMeta<Secret>,
    secret_ref: impl Fn(&K) -> Option<String>,
    org_id: impl Fn(&K) -> String,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let candidates: Vec<Arc<K>> = if ctx.clients.is_default(&ns, &name) {
        store.state()
    } else {
        let mut keys = vec![Key::Secret(ns.clone(), name.clone())];
        if ctx.clients.operator_namespace() == Some(ns.as_str()) {
            keys.extend(
                ctx.organizations
                    .state()
                    .iter()
                    .filter(|o| o.spec.credentials_secret_ref.name == name)
                    .map(|o| Key::Org(o.spec.org_id.clone())),
            );
        }
        index.objects_any(&keys, store)
    };
    candidates
        .iter()
        .filter(|o| {
            let organization = organizations_of_org(ctx, &org_id(o)).into_iter().next();
            let (object_ns, own) = (o.namespace().unwrap_or_default(), secret_ref(o));
            let from = credentials::CredentialsRef {
                namespace: &object_ns,
                own: own.as_deref(),
                organization: organization.as_ref().map(|a| {
                    (a.metadata.name.as_deref().unwrap_or_default(), a.spec.credentials_secret_ref.name.as_str())
                }),
            };
            ctx.clients.secret_for(from).is_some_and(|(n, s)| n == ns && s == name)
        })
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// The AtlasOrganizations naming `org_id`, by name.
fn organizations_of_org(ctx: &Context, org_id: &str) -> Vec<Arc<AtlasOrganization>> {
    ctx.indexes.organizations.objects(&Key::Org(org_id.to_string()), &ctx.organizations)
}

/// The team memberships an AtlasOrgUser's change concerns: those listing it by `orgUserRef`
/// (same namespace) or by username (same organization, any case), and those of a team its
/// `teamIds` name.
pub fn teams_affected_by_org_user(
    index: &Index<AtlasTeamMembership>,
    user: &AtlasOrgUser,
) -> Vec<ObjectRef<AtlasTeamMembership>> {
    let org = user.spec.org_id.clone();
    let mut keys = vec![
        Key::OrgUserRef(user.namespace().unwrap_or_default(), user.name_any()),
        Key::Username(org.clone(), crate::reconcile::username_key(&user.spec.username)),
    ];
    keys.extend(user.spec.team_ids.iter().map(|id| Key::TeamId(org.clone(), id.clone())));
    let mut refs: Vec<ObjectRef<AtlasTeamMembership>> = keys.iter().flat_map(|k| index.refs(k)).collect();
    refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    refs.dedup();
    refs
}

/// The other team memberships of the same organization and team as `team` (by pinned or
/// spec id, or by name), so a conflict ends as soon as its cause changes.
fn co_writers(index: &Index<AtlasTeamMembership>, team: &AtlasTeamMembership) -> Vec<ObjectRef<AtlasTeamMembership>> {
    let (id, name) = indexes::team_of(team);
    let org = team.spec.org_id.clone();
    let keys: Vec<Key> = id
        .map(|id| Key::TeamId(org.clone(), id))
        .into_iter()
        .chain(name.map(|name| Key::TeamName(org.clone(), name)))
        .collect();
    let me = ObjectRef::from_obj(team);
    let mut refs: Vec<ObjectRef<AtlasTeamMembership>> =
        keys.iter().flat_map(|k| index.refs(k)).filter(|r| *r != me).collect();
    refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    refs.dedup();
    refs
}

/// What a team's planning reads of an AtlasOrgUser: its spec (username, orgId, teamIds), its
/// deletion, and what Atlas reported of it (user id, membership status, teams). Its
/// conditions and other status fields do not re-trigger the teams that list it.
fn team_relevant(user: &AtlasOrgUser) -> Option<u64> {
    let status = user.status.as_ref();
    Some(feed::hash_of(&(
        user.metadata.generation,
        user.metadata.deletion_timestamp.as_ref().map(|t| t.0.as_second()),
        status.and_then(|s| s.user_id.as_deref()),
        status.and_then(|s| s.membership_status.as_deref()),
        status.map(|s| &s.team_ids),
    )))
}

/// What an AtlasOrgUser's status reads of a team that lists it: who is in it (the team's
/// adds and removals change the user's `teamIds` in Atlas).
fn team_members_relevant(team: &AtlasTeamMembership) -> Option<u64> {
    let status = team.status.as_ref()?;
    let members: Vec<(Option<&str>, String)> =
        status.members.iter().map(|m| (m.user_id.as_deref(), format!("{:?}", m.state))).collect();
    Some(feed::hash_of(&(status.team_id.as_deref(), members)))
}

/// The AtlasOrgUsers a team membership names (by `orgUserRef`, or by username in its
/// organization): their status shows the teams Atlas has them in.
fn members_of_team(ctx: &Context, team: &AtlasTeamMembership) -> Vec<ObjectRef<AtlasOrgUser>> {
    let ns = team.namespace().unwrap_or_default();
    let mut refs: Vec<ObjectRef<AtlasOrgUser>> = Vec::new();
    for m in &team.spec.members {
        if let Some(r) = &m.org_user_ref {
            refs.push(ObjectRef::new(&r.name).within(&ns));
        }
        if let Some(username) = &m.username {
            let key = Key::Username(team.spec.org_id.clone(), crate::reconcile::username_key(username));
            refs.extend(ctx.indexes.org_users.refs(&key));
        }
    }
    refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    refs.dedup();
    refs
}

/// What another writer of the same team is judged by: its spec, its deletion, its pinned team.
fn co_writer_relevant(team: &AtlasTeamMembership) -> Option<u64> {
    Some(feed::hash_of(&(
        team.metadata.generation,
        team.metadata.deletion_timestamp.as_ref().map(|t| t.0.as_second()),
        team.status.as_ref().and_then(|s| s.team_id.as_deref()),
    )))
}

/// What the objects of an organization read of their AtlasOrganization: its spec (and labels,
/// annotations, deletion); not its status, which its own controller writes.
fn organization_relevant(org: &AtlasOrganization) -> Option<u64> {
    own_changes(org)
}

/// A credentials Secret (metadata only): any new version may carry new keys.
fn secret_version(secret: &PartialObjectMeta<Secret>) -> Option<u64> {
    secret.metadata.resource_version.as_ref().map(feed::hash_of)
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
        .with_tenancy(args.operator_namespace.clone(), &args.tenant_secrets_cluster_role)
        .with_revalidation(args.secret_revalidation());

    let wc = watcher_config(&args);
    let ns = args.namespace.as_deref();
    // One watch per kind, one store per kind, shared by every controller and mapper.
    let indexes = Indexes::default();
    let mut user_feed = Feed::<AtlasOrgUser>::new();
    let mut team_feed = Feed::<AtlasTeamMembership>::new();
    let mut org_feed = Feed::<AtlasOrganization>::new();
    user_feed.observe(indexes.org_users.clone());
    team_feed.observe(indexes.teams.clone());
    org_feed.observe(indexes.organizations.clone());
    // Labelled Secrets are watched (metadata only) in the operator's namespace only (least
    // privilege: a Role there); a tenant's own Secret is validated as `credentials.rs` says.
    let operator_ns = args.operator_namespace.clone();
    let mut secret_feed = operator_ns.as_ref().map(|_| Feed::<PartialObjectMeta<Secret>>::new());
    let org_users = user_feed.store();
    let teams = team_feed.store();
    let organizations = org_feed.store();
    // No reconcile of any kind starts before every store it reads has its first listing. The
    // Secrets' watch is not waited for: until it has listed, credentials are read as if
    // unwatched (`credentials.rs`), so a Secret watch the RBAC refuses delays nothing.
    let synced = vec![user_feed.ready(), team_feed.ready(), org_feed.ready()];
    let gate = || all_ready(synced.clone());

    let clients = match &secret_feed {
        Some(f) => clients.with_watched_secrets(f.store(), f.ready()),
        None => clients,
    };
    let ctx = Arc::new(Context {
        kube: kube.clone(),
        recorder: events::EventRecorder::new(
            kube.clone(),
            Reporter { controller: CONTROLLER_NAME.into(), instance: std::env::var("POD_NAME").ok() },
        ),
        metrics,
        clients,
        index: OrgUserIndex::new(args.listing_interval()).with_member_listing_interval(args.member_listing_interval()),
        org_users: org_users.clone(),
        organizations: organizations.clone(),
        teams: teams.clone(),
        indexes,
        resync_interval: args.resync_interval,
        deletion_protection: args.deletion_protection,
        invitation_warning: args.invitation_warning,
        reconcile_timeout: args.reconcile_timeout,
        backoff: Mutex::default(),
        own_writes: Default::default(),
        namespace_labels: Mutex::default(),
        // Like an unwatched Secret: read again before every drift check.
        namespace_labels_ttl: args.secret_revalidation(),
    });

    let config = ControllerConfig::default().concurrency(args.concurrency);

    // AtlasOrgUser: its own changes (not its status), its AtlasOrganization, its Secret.
    let (ctx_a, ctx_a2) = (ctx.clone(), ctx.clone());
    let mut org_user_ctrl = Controller::for_shared_stream(
        gated(gate(), user_feed.subscribe(Some(own_changes::<AtlasOrgUser>), false)),
        org_users.clone(),
    )
    .with_config(config.clone())
    // An AtlasOrganization's change (namespaces, ceilings, credentials) re-judges its objects.
    .watches_shared_stream(
        gated(gate(), org_feed.subscribe(Some(organization_relevant), true)),
        move |org: Arc<AtlasOrganization>| ctx_a2.indexes.org_users.refs(&Key::Org(org.spec.org_id.clone())),
    );
    // A team's adds and removals change its members' teamIds in Atlas: their status shows it
    // now, not at their next drift check (nor as a write on the next start).
    let ctx_a3 = ctx.clone();
    org_user_ctrl = org_user_ctrl.watches_shared_stream(
        gated(gate(), team_feed.subscribe(Some(team_members_relevant), false)),
        move |team: Arc<AtlasTeamMembership>| members_of_team(&ctx_a3, &team),
    );
    if let Some(f) = secret_feed.as_mut() {
        org_user_ctrl = org_user_ctrl.watches_shared_stream(
            gated(gate(), f.subscribe(Some(secret_version), true)),
            move |s: Arc<PartialObjectMeta<Secret>>| {
                objects_using_secret(
                    &ctx_a.indexes.org_users,
                    &ctx_a.org_users,
                    &ctx_a,
                    &s,
                    |o: &AtlasOrgUser| o.spec.credentials_secret_ref.as_ref().map(|r| r.name.clone()),
                    |o: &AtlasOrgUser| o.spec.org_id.clone(),
                )
            },
        );
    }
    let org_user_run = org_user_ctrl
        .graceful_shutdown_on(wait(shutdown.clone()))
        .run(reconcile_org_user, error_policy, ctx.clone())
        .for_each(log_run_error);

    // AtlasTeamMembership: its own changes, its AtlasOrganization, what its planning reads of
    // the AtlasOrgUsers it names, its co-writers, its Secret.
    let (ctx_b, ctx_c, ctx_d, ctx_e) = (ctx.clone(), ctx.clone(), ctx.clone(), ctx.clone());
    let mut team_ctrl = Controller::for_shared_stream(
        gated(gate(), team_feed.subscribe(Some(own_changes::<AtlasTeamMembership>), false)),
        teams.clone(),
    )
    .with_config(config.clone())
    .watches_shared_stream(
        gated(gate(), org_feed.subscribe(Some(organization_relevant), true)),
        move |org: Arc<AtlasOrganization>| ctx_d.indexes.teams.refs(&Key::Org(org.spec.org_id.clone())),
    )
    // An AtlasOrgUser (its invitation, its user id, its teamIds) feeds the teams that list
    // it, by orgUserRef or by username, and the teams its teamIds name.
    .watches_shared_stream(
        gated(gate(), user_feed.subscribe(Some(team_relevant), true)),
        move |user: Arc<AtlasOrgUser>| teams_affected_by_org_user(&ctx_c.indexes.teams, &user),
    )
    // A team membership's change (created, deleted, mode) decides who else may write its team.
    .watches_shared_stream(
        gated(gate(), team_feed.subscribe(Some(co_writer_relevant), true)),
        move |team: Arc<AtlasTeamMembership>| co_writers(&ctx_e.indexes.teams, &team),
    );
    if let Some(f) = secret_feed.as_mut() {
        team_ctrl = team_ctrl.watches_shared_stream(
            gated(gate(), f.subscribe(Some(secret_version), true)),
            move |s: Arc<PartialObjectMeta<Secret>>| {
                objects_using_secret(
                    &ctx_b.indexes.teams,
                    &ctx_b.teams,
                    &ctx_b,
                    &s,
                    |o: &AtlasTeamMembership| o.spec.credentials_secret_ref.as_ref().map(|r| r.name.clone()),
                    |o: &AtlasTeamMembership| o.spec.org_id.clone(),
                )
            },
        );
    }
    let team_run = team_ctrl
        .graceful_shutdown_on(wait(shutdown.clone()))
        .run(reconcile_team_membership, error_policy, ctx.clone())
        .for_each(log_run_error);

    let organizations_c = organizations.clone();
    let mut organization_ctrl = Controller::for_shared_stream(
        gated(gate(), org_feed.subscribe(Some(own_changes::<AtlasOrganization>), false)),
        organizations.clone(),
    )
    .with_config(config);
    if let Some(f) = secret_feed.as_mut() {
        organization_ctrl = organization_ctrl.watches_shared_stream(
            gated(gate(), f.subscribe(Some(secret_version), true)),
            move |s: Arc<PartialObjectMeta<Secret>>| {
                organizations_c
                    .state()
                    .iter()
                    .filter(|o| o.spec.credentials_secret_ref.name == s.name_any())
                    .map(|o| ObjectRef::from_obj(o.as_ref()))
                    .collect::<Vec<_>>()
            },
        );
    }
    let organization_run = organization_ctrl
        .graceful_shutdown_on(wait(shutdown.clone()))
        .run(organization::reconcile, error_policy, ctx.clone())
        .for_each(log_run_error);
    let all_runs = futures::future::join3(org_user_run, team_run, organization_run);

    // The watches, each driven on its own (every subscriber is registered by now).
    tokio::spawn(user_feed.run(namespaced_or_all::<AtlasOrgUser>(&kube, ns), wc.clone()));
    tokio::spawn(team_feed.run(namespaced_or_all::<AtlasTeamMembership>(&kube, ns), wc));
    tokio::spawn(org_feed.run(Api::<AtlasOrganization>::all(kube.clone()), watcher::Config::default()));
    if let (Some(f), Some(ns)) = (secret_feed, operator_ns.as_deref()) {
        let secret_wc = watcher::Config::default().labels(&format!("{CREDENTIALS_LABEL}={CREDENTIALS_LABEL_VALUE}"));
        tokio::spawn(f.run(Api::<PartialObjectMeta<Secret>>::namespaced(kube.clone(), ns), secret_wc));
    }

    let readiness = {
        let (ready, ctx) = (ready.clone(), ctx.clone());
        let synced = gate();
        async move {
            synced.await;
            ready.store(true, Ordering::Relaxed);
            tracing::info!("caches synced; ready");
            check_atlas_reachable(&ctx).await;
        }
    };
    tokio::spawn(readiness);
    // kube's event cache is pruned only when an event is published: drop it once idle.
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(events::PRUNE_EVERY);
            loop {
                tick.tick().await;
                if ctx.recorder.prune_idle(Instant::now()) {
                    tracing::debug!("event recorder cache dropped: every entry had expired");
                }
            }
        });
    }
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
