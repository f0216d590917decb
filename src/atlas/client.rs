//! The Atlas Admin API client: configuration, the request pipeline (limiter, concurrency
//! bound, authentication, error mapping, retries, metrics) and the typed operations.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use secrecy::SecretString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{debug, warn};
use url::Url;

use super::auth::{DigestAuth, TokenCache};
use super::credential::CredentialHealth;
use super::dependency::Dependency;
use super::endpoint::{Operation, is_atlas_id};
use super::error::{AtlasError, ErrorClass, TransportKind, api_error, header_u32};
use super::invitations::InvitationQueue;
use super::limiter::{OrgPermit, OrgRateLimiter, RateLimitSnapshot};
use super::metrics::AtlasMetrics;
use super::models::{
    AddOrRemoveGroupRole, AddOrRemoveOrgRole, GroupUser, MAX_ITEMS_PER_PAGE, MembershipStatus, OrgUser, OrgUserRequest,
    OrgUserUpdateRequest, Organization, Page, Team, UserIdBody,
};
use super::retry::RetryPolicy;
use super::slots::FairSlots;

/// Atlas (commercial).
pub const ATLAS_BASE_URL: &str = "https://cloud.mongodb.com";
/// Atlas for Government.
pub const ATLAS_GOV_BASE_URL: &str = "https://cloud.mongodbgov.com";

/// How the client proves who it is. `Debug` never shows the secret halves.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// A programmatic API key (HTTP Digest).
    ApiKey { public_key: String, private_key: SecretString },
    /// A service account (OAuth 2.0 client credentials, `Bearer` tokens).
    ServiceAccount { client_id: String, client_secret: SecretString },
}

/// Who a client is, for caches that must never serve one credential's Atlas data to another:
/// a keyed hash of the base URL and the complete credential (both halves), under a key drawn at
/// random once per process. Two Secrets with the same public key and different private keys
/// are different identities. Reveals nothing about the credential (and nothing across
/// restarts); never a log or status field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialIdentity(u64);

impl Credentials {
    /// This credential's identity against `base_url`.
    pub fn identity(&self, base_url: &str) -> CredentialIdentity {
        use secrecy::ExposeSecret;
        use std::hash::{BuildHasher, Hash, Hasher};
        static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
        let mut hasher = KEY.get_or_init(std::collections::hash_map::RandomState::new).build_hasher();
        base_url.hash(&mut hasher);
        match self {
            Credentials::ApiKey { public_key, private_key } => {
                ("api-key", public_key, private_key.expose_secret()).hash(&mut hasher)
            }
            Credentials::ServiceAccount { client_id, client_secret } => {
                ("service-account", client_id, client_secret.expose_secret()).hash(&mut hasher)
            }
        }
        CredentialIdentity(hasher.finish())
    }
}

/// Everything [`AtlasClient::new`] needs.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `https://cloud.mongodb.com`, `https://cloud.mongodbgov.com`, or a simulator.
    pub base_url: String,
    pub credentials: Credentials,
    /// Allow a plain `http://` base URL (the simulator). Never set against Atlas.
    pub insecure_http: bool,
    pub retry: RetryPolicy,
    /// HTTP requests of this client in flight at once; when all are taken, freed slots go to
    /// the organizations and endpoint sets waiting in turn (see `slots.rs`).
    pub max_concurrency: usize,
    /// Time limit of one HTTP exchange (one attempt), connection included.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Time limit of one service account token request (the token lock is held no longer).
    pub token_timeout: Duration,
    /// The invitation queue (`createOrgUser`): one per process, shared by every client.
    pub invitations: InvitationQueue,
    /// An invitation whose turn is further away returns [`AtlasError::InvitationQueued`]
    /// instead of waiting (and keeps its place).
    pub invitation_max_wait: Duration,
    /// After Atlas refuses these credentials, calls fail fast this long; then one probes.
    pub auth_backoff: Duration,
    /// How errors name these credentials (the controller: `Secret NAMESPACE/NAME`); by
    /// default the public key or client id (never a secret half).
    pub credential_name: Option<String>,
    /// Fetch a new service account token this long before the current one expires
    /// (at most half the token's lifetime).
    pub token_refresh_margin: Duration,
    /// `itemsPerPage` of the list operations that read every page (1..=500).
    pub page_size: u32,
    /// Per-organization pacing; share one between clients to pace them together.
    pub limiter: OrgRateLimiter,
    /// Share one between clients and register it once.
    pub metrics: AtlasMetrics,
    pub user_agent: String,
}

impl ClientConfig {
    /// Defaults for everything but where and who.
    pub fn new(base_url: impl Into<String>, credentials: Credentials) -> Self {
        Self {
            base_url: base_url.into(),
            credentials,
            insecure_http: false,
            retry: RetryPolicy::default(),
            max_concurrency: 16,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            token_timeout: Duration::from_secs(15),
            invitations: InvitationQueue::default(),
            invitation_max_wait: Duration::from_secs(60),
            auth_backoff: Duration::from_secs(30),
            credential_name: None,
            token_refresh_margin: Duration::from_secs(600),
            page_size: MAX_ITEMS_PER_PAGE,
            limiter: OrgRateLimiter::default(),
            metrics: AtlasMetrics::default(),
            user_agent: concat!("atlas-access-operator/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Filters of [`AtlasClient::list_org_users`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOrgUsersQuery {
    /// Only this username (Atlas matches it exactly).
    pub username: Option<String>,
    /// Only these membership statuses; empty means Atlas's default (PENDING and ACTIVE).
    pub statuses: Vec<MembershipStatus>,
}

impl ListOrgUsersQuery {
    /// Every user, whatever their status.
    pub fn all_statuses() -> Self {
        Self { username: None, statuses: MembershipStatus::ALL.to_vec() }
    }
}

/// The result of [`AtlasClient::create_org_user`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateOutcome {
    pub user: OrgUser,
    /// `false` when Atlas answered 409 and the user already in the organization was
    /// returned instead. A 409 met by a retry, after an attempt whose outcome was unknown
    /// (timeout, broken connection, 5xx), counts as created when the user found is PENDING:
    /// that earlier attempt is what invited them.
    pub created: bool,
}

enum Auth {
    Digest(DigestAuth),
    Token(Box<TokenCache>),
}

/// What authenticated one request.
enum AuthUsed {
    Nothing,
    Nonce(String),
    Token(u64),
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    auth: Auth,
    identity: CredentialIdentity,
    retry: RetryPolicy,
    timeout: Duration,
    page_size: u32,
    concurrency: FairSlots,
    limiter: OrgRateLimiter,
    invitations: InvitationQueue,
    invitation_max_wait: Duration,
    health: CredentialHealth,
    metrics: AtlasMetrics,
    deprecations_logged: Mutex<HashSet<Operation>>,
}

/// The Atlas Admin API client. Cheap to clone; clones share the connection pool, the
/// token cache, the digest challenge, the limiter and the metrics.
#[derive(Clone)]
pub struct AtlasClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AtlasClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.inner.auth {
            Auth::Digest(_) => "api-key",
            Auth::Token(_) => "service-account",
        };
        f.debug_struct("AtlasClient").field("base_url", &self.inner.base.as_str()).field("auth", &auth).finish()
    }
}

/// One request, ready to send (again).
struct Request {
    op: Operation,
    org_id: String,
    /// The limiter's key: organization and operation group.
    pace_key: String,
    /// An invitation's ticket in the invitation queue: organization and username.
    queue_key: Option<String>,
    url: Url,
    body: Option<Vec<u8>>,
}

/// A success answer.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// A failed call, and whether an earlier attempt of it may have been applied.
struct Failure {
    error: AtlasError,
    after_uncertain_attempt: bool,
}

fn decode<T: DeserializeOwned>(op: Operation, answer: &Answer) -> Result<T, AtlasError> {
    serde_json::from_slice(&answer.body).map_err(|e| AtlasError::Decode {
        operation: op.operation_id(),
        status: answer.status,
        message: e.to_string(),
    })
}

fn join_path(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// The request-target the digest `uri` must repeat.
fn request_target(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

fn statuses_query(statuses: &[MembershipStatus]) -> impl Iterator<Item = (&'static str, String)> + '_ {
    statuses.iter().map(|s| ("orgMembershipStatuses", s.as_str().to_string()))
}

/// Stop following pages after this many: a server that never sends a short page.
const MAX_PAGES: u32 = 1000;

impl AtlasClient {
    /// Build a client. Checks the base URL (https, or http only with `insecure_http`).
    pub fn new(config: ClientConfig) -> Result<Self, AtlasError> {
        let base = parse_base_url(&config.base_url, config.insecure_http)?;
        if !(1..=MAX_ITEMS_PER_PAGE).contains(&config.page_size) {
            return Err(AtlasError::Config(format!("page_size {} is not in 1..=500", config.page_size)));
        }
        if config.max_concurrency == 0 {
            return Err(AtlasError::Config("max_concurrency must be at least 1".into()));
        }
        // reqwest is built without a default crypto provider; installing one twice is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .https_only(!config.insecure_http)
            // Atlas does not redirect API calls; following one could carry credentials elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            // Every exchange has a deadline, the token request included.
            .timeout(config.timeout)
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(|e| AtlasError::Config(format!("cannot build the HTTP client: {e}")))?;
        let identity = config.credentials.identity(base.as_str());
        let label = config.credential_name.clone().unwrap_or_else(|| match &config.credentials {
            Credentials::ApiKey { public_key, .. } => format!("API key {public_key}"),
            Credentials::ServiceAccount { client_id, .. } => format!("service account {client_id}"),
        });
        let auth = match config.credentials {
            Credentials::ApiKey { public_key, private_key } => Auth::Digest(DigestAuth::new(public_key, private_key)),
            Credentials::ServiceAccount { client_id, client_secret } => Auth::Token(Box::new(TokenCache::new(
                client_id,
                client_secret,
                join_path(&base, &["api", "oauth", "token"]),
                config.token_refresh_margin,
                config.token_timeout,
            ))),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                auth,
                identity,
                retry: config.retry,
                timeout: config.timeout,
                page_size: config.page_size,
                concurrency: FairSlots::new(config.max_concurrency),
                limiter: config.limiter,
                invitations: config.invitations,
                invitation_max_wait: config.invitation_max_wait,
                health: CredentialHealth::new(label, config.auth_backoff),
                metrics: config.metrics,
                deprecations_logged: Mutex::new(HashSet::new()),
            }),
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// Who this client calls Atlas as (see [`CredentialIdentity`]).
    pub fn credential_identity(&self) -> CredentialIdentity {
        self.inner.identity
    }

    pub fn metrics(&self) -> &AtlasMetrics {
        &self.inner.metrics
    }

    /// The invitation queue this client sends through.
    pub fn invitations(&self) -> &InvitationQueue {
        &self.inner.invitations
    }

    /// Atlas refused these credentials and calls fail fast until the next probe.
    pub fn credentials_refused(&self) -> bool {
        self.inner.health.is_refused()
    }

    /// What Atlas last reported in `RateLimit-Limit` / `RateLimit-Remaining` for the
    /// operations of `operation`'s group in `org_id`.
    pub fn rate_limit(&self, org_id: &str, operation: Operation) -> Option<RateLimitSnapshot> {
        self.inner.limiter.snapshot(&pace_key(org_id, operation))
    }

    // ---- organizations -------------------------------------------------------------------

    /// `getOrg`.
    pub async fn get_org(&self, org_id: &str) -> Result<Organization, AtlasError> {
        let req = self.request(Operation::GetOrg, org_id, &[], vec![], None::<&()>)?;
        self.fetch(req).await
    }

    // ---- organization users --------------------------------------------------------------

    /// `listOrgUsers`, every page.
    pub async fn list_org_users(&self, org_id: &str, query: &ListOrgUsersQuery) -> Result<Vec<OrgUser>, AtlasError> {
        let mut all = Vec::new();
        let page_size = self.inner.page_size;
        for page_num in 1..=MAX_PAGES {
            let page = self.list_org_users_page(org_id, query, page_num, page_size).await?;
            let short = page.results.len() < page_size as usize;
            all.extend(page.results);
            // `totalCount` is an estimate: only a short page ends the list.
            if short {
                return Ok(all);
            }
        }
        Err(too_many_pages(Operation::ListOrgUsers))
    }

    /// `listOrgUsers`, one page.
    pub async fn list_org_users_page(
        &self,
        org_id: &str,
        query: &ListOrgUsersQuery,
        page_num: u32,
        items_per_page: u32,
    ) -> Result<Page<OrgUser>, AtlasError> {
        let op = Operation::ListOrgUsers;
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(username) = &query.username {
            pairs.push(("username", username.clone()));
        }
        pairs.extend(statuses_query(&query.statuses));
        pairs.extend(page_query(op, page_num, items_per_page)?);
        let req = self.request(op, org_id, &[], pairs, None::<&()>)?;
        self.fetch(req).await
    }

    /// The user with this username (compared case-insensitively), whatever their status.
    pub async fn find_org_user_by_username(&self, org_id: &str, username: &str) -> Result<Option<OrgUser>, AtlasError> {
        let query =
            ListOrgUsersQuery { username: Some(username.to_string()), statuses: MembershipStatus::ALL.to_vec() };
        let users = self.list_org_users(org_id, &query).await?;
        Ok(users.into_iter().find(|u| u.username.eq_ignore_ascii_case(username)))
    }

    /// `getOrgUser`, asking for every membership status so an expired or rejected
    /// invitation shows as such instead of as "not found".
    pub async fn get_org_user(&self, org_id: &str, user_id: &str) -> Result<OrgUser, AtlasError> {
        let req = self.request(
            Operation::GetOrgUser,
            org_id,
            &[("userId", user_id)],
            statuses_query(&MembershipStatus::ALL).collect(),
            None::<&()>,
        )?;
        self.fetch(req).await
    }

    /// `createOrgUser`: invite a user. A 409 (a PENDING or ACTIVE user with that username
    /// exists, possibly invited by an earlier attempt of this very call) resolves to that
    /// user, so a retried invitation never fails and never duplicates.
    pub async fn create_org_user(&self, org_id: &str, user: &OrgUserRequest) -> Result<CreateOutcome, AtlasError> {
        let op = Operation::CreateOrgUser;
        let mut req = self.request(op, org_id, &[], vec![], Some(user))?;
        // Atlas compares usernames case-insensitively.
        req.queue_key = Some(format!("{org_id}/{}", user.username.to_lowercase()));
        match self.execute(req).await {
            Ok(answer) => Ok(CreateOutcome { user: decode(op, &answer)?, created: true }),
            Err(failure) if failure.error.class() == ErrorClass::Conflict => {
                let Some(existing) = self.find_org_user_by_username(org_id, &user.username).await? else {
                    return Err(failure.error);
                };
                let created =
                    failure.after_uncertain_attempt && existing.org_membership_status == MembershipStatus::Pending;
                debug!(operation = op.operation_id(), created, "invitation met an existing user");
                Ok(CreateOutcome { user: existing, created })
            }
            Err(failure) => Err(failure.error),
        }
    }

    /// `updateOrgUser` (PATCH: fields left out are not changed).
    pub async fn update_org_user(
        &self,
        org_id: &str,
        user_id: &str,
        update: &OrgUserUpdateRequest,
    ) -> Result<OrgUser, AtlasError> {
        let req = self.request(Operation::UpdateOrgUser, org_id, &[("userId", user_id)], vec![], Some(update))?;
        self.fetch(req).await
    }

    /// `removeOrgUser`: remove a user or cancel their invitation. A 404 met by a retry after
    /// an attempt whose outcome was unknown means that attempt did it.
    pub async fn remove_org_user(&self, org_id: &str, user_id: &str) -> Result<(), AtlasError> {
        let req = self.request(Operation::RemoveOrgUser, org_id, &[("userId", user_id)], vec![], None::<&()>)?;
        match self.execute(req).await {
            Ok(_) => Ok(()),
            Err(f) if f.after_uncertain_attempt && f.error.class() == ErrorClass::NotFound => Ok(()),
            Err(f) => Err(f.error),
        }
    }

    /// `addOrgUserRole`. A refusal after which the user does hold the role (already
    /// there, or added by an earlier attempt of this call) is a success.
    pub async fn add_org_role(&self, org_id: &str, user_id: &str, role: &str) -> Result<OrgUser, AtlasError> {
        let body = AddOrRemoveOrgRole { org_role: role.to_string() };
        let req = self.request(Operation::AddOrgUserRole, org_id, &[("userId", user_id)], vec![], Some(&body))?;
        let result = self.execute(req).await;
        self.settle(Operation::AddOrgUserRole, org_id, user_id, result, |u| u.roles.org_roles.iter().any(|r| r == role))
            .await
    }

    /// `removeOrgUserRole`. A refusal after an earlier attempt of this call may have removed
    /// the role is a success if the user no longer holds it.
    pub async fn remove_org_role(&self, org_id: &str, user_id: &str, role: &str) -> Result<OrgUser, AtlasError> {
        let body = AddOrRemoveOrgRole { org_role: role.to_string() };
        let req = self.request(Operation::RemoveOrgUserRole, org_id, &[("userId", user_id)], vec![], Some(&body))?;
        let result = self.execute(req).await;
        self.settle(Operation::RemoveOrgUserRole, org_id, user_id, result, |u| {
            !u.roles.org_roles.iter().any(|r| r == role)
        })
        .await
    }

    // ---- project users ----------------------------------------------------------------------

    /// `addGroupUserRole` (`POST /groups/{groupId}/users/{userId}:addRole`): one project
    /// role, atomically; roles others granted in the project stay. `org_id` is the user's
    /// organization (pacing; the path has none). A refusal after which the user holds the
    /// role (already there, or added by an earlier attempt) is a success, checked with
    /// getOrgUser. Returns the user's roles in the project.
    pub async fn add_group_role(
        &self,
        org_id: &str,
        group_id: &str,
        user_id: &str,
        role: &str,
    ) -> Result<Vec<String>, AtlasError> {
        let op = Operation::AddGroupUserRole;
        let body = AddOrRemoveGroupRole { group_role: role.to_string() };
        let req = self.request(op, org_id, &[("groupId", group_id), ("userId", user_id)], vec![], Some(&body))?;
        let result = self.execute(req).await;
        self.settle_group(op, org_id, group_id, user_id, result, |roles| roles.iter().any(|r| r == role)).await
    }

    /// `removeGroupUserRole` (`:removeRole`): one project role. Atlas keeps at least one
    /// role per project user: add before you remove, or remove the user from the project.
    pub async fn remove_group_role(
        &self,
        org_id: &str,
        group_id: &str,
        user_id: &str,
        role: &str,
    ) -> Result<Vec<String>, AtlasError> {
        let op = Operation::RemoveGroupUserRole;
        let body = AddOrRemoveGroupRole { group_role: role.to_string() };
        let req = self.request(op, org_id, &[("groupId", group_id), ("userId", user_id)], vec![], Some(&body))?;
        let result = self.execute(req).await;
        self.settle_group(op, org_id, group_id, user_id, result, |roles| !roles.iter().any(|r| r == role)).await
    }

    /// `removeGroupUser` (`DELETE /groups/{groupId}/users/{userId}`): take every project
    /// role of the user in that project (pending or active users; the user stays in the
    /// organization). A 404 met by a retry after an attempt whose outcome was unknown means
    /// that attempt did it.
    pub async fn remove_group_user(&self, org_id: &str, group_id: &str, user_id: &str) -> Result<(), AtlasError> {
        let op = Operation::RemoveGroupUser;
        let req = self.request(op, org_id, &[("groupId", group_id), ("userId", user_id)], vec![], None::<&()>)?;
        match self.execute(req).await {
            Ok(_) => Ok(()),
            Err(f) if f.after_uncertain_attempt && f.error.class() == ErrorClass::NotFound => Ok(()),
            Err(f) => Err(f.error),
        }
    }

    /// [`AtlasClient::settle`] for a project-role call: the answer is a `GroupUserResponse`;
    /// a conflict, or a refusal after an uncertain attempt, is checked against the user's
    /// roles in the project as getOrgUser reports them.
    async fn settle_group(
        &self,
        op: Operation,
        org_id: &str,
        group_id: &str,
        user_id: &str,
        result: Result<Answer, Failure>,
        done: impl Fn(&[String]) -> bool,
    ) -> Result<Vec<String>, AtlasError> {
        let failure = match result {
            Ok(answer) => return decode::<GroupUser>(op, &answer).map(|u| u.roles),
            Err(f) => f,
        };
        let class = failure.error.class();
        let check = class == ErrorClass::Conflict
            || (failure.after_uncertain_attempt && matches!(class, ErrorClass::Permanent | ErrorClass::Conflict));
        if check {
            let user = self.get_org_user(org_id, user_id).await?;
            let roles: Vec<String> = user
                .roles
                .group_role_assignments
                .iter()
                .filter(|a| a.group_id.as_deref() == Some(group_id))
                .flat_map(|a| a.group_roles.iter().cloned())
                .collect();
            if done(&roles) {
                debug!(operation = op.operation_id(), "refused, but already in the wanted state");
                return Ok(roles);
            }
        }
        Err(failure.error)
    }

    // ---- teams ----------------------------------------------------------------------------

    /// `getOrgTeam`.
    pub async fn get_team(&self, org_id: &str, team_id: &str) -> Result<Team, AtlasError> {
        let req = self.request(Operation::GetOrgTeam, org_id, &[("teamId", team_id)], vec![], None::<&()>)?;
        self.fetch(req).await
    }

    /// `getOrgTeamByName`.
    pub async fn get_team_by_name(&self, org_id: &str, team_name: &str) -> Result<Team, AtlasError> {
        let req = self.request(Operation::GetOrgTeamByName, org_id, &[("teamName", team_name)], vec![], None::<&()>)?;
        self.fetch(req).await
    }

    /// `listOrgTeams`, every page.
    pub async fn list_teams(&self, org_id: &str) -> Result<Vec<Team>, AtlasError> {
        let op = Operation::ListOrgTeams;
        let page_size = self.inner.page_size;
        let mut all = Vec::new();
        for page_num in 1..=MAX_PAGES {
            let req = self.request(op, org_id, &[], page_query(op, page_num, page_size)?, None::<&()>)?;
            let page: Page<Team> = self.fetch(req).await?;
            let short = page.results.len() < page_size as usize;
            all.extend(page.results);
            if short {
                return Ok(all);
            }
        }
        Err(too_many_pages(op))
    }

    /// `listOrgTeamUsers`, every page.
    pub async fn list_team_users(&self, org_id: &str, team_id: &str) -> Result<Vec<OrgUser>, AtlasError> {
        let page_size = self.inner.page_size;
        let mut all = Vec::new();
        for page_num in 1..=MAX_PAGES {
            let page = self.list_team_users_page(org_id, team_id, page_num, page_size).await?;
            let short = page.results.len() < page_size as usize;
            all.extend(page.results);
            if short {
                return Ok(all);
            }
        }
        Err(too_many_pages(Operation::ListOrgTeamUsers))
    }

    /// `listOrgTeamUsers`, one page.
    pub async fn list_team_users_page(
        &self,
        org_id: &str,
        team_id: &str,
        page_num: u32,
        items_per_page: u32,
    ) -> Result<Page<OrgUser>, AtlasError> {
        let op = Operation::ListOrgTeamUsers;
        let query = page_query(op, page_num, items_per_page)?;
        let req = self.request(op, org_id, &[("teamId", team_id)], query, None::<&()>)?;
        self.fetch(req).await
    }

    /// `addOrgTeamUser` (`:addUser`). A refusal after which the user is in the team
    /// (already there, or added by an earlier attempt of this call) is a success.
    pub async fn add_team_user(&self, org_id: &str, team_id: &str, user_id: &str) -> Result<OrgUser, AtlasError> {
        if !is_atlas_id(user_id) {
            return Err(invalid(Operation::AddOrgTeamUser, "userId", user_id));
        }
        let body = UserIdBody { id: user_id.to_string() };
        let req = self.request(Operation::AddOrgTeamUser, org_id, &[("teamId", team_id)], vec![], Some(&body))?;
        let result = self.execute(req).await;
        self.settle(Operation::AddOrgTeamUser, org_id, user_id, result, |u| u.team_ids.iter().any(|t| t == team_id))
            .await
    }

    /// `removeOrgTeamUser` (`:removeUser`). A refusal after an earlier attempt of this call
    /// may have removed the user is a success if the user is no longer in the team.
    pub async fn remove_team_user(&self, org_id: &str, team_id: &str, user_id: &str) -> Result<OrgUser, AtlasError> {
        if !is_atlas_id(user_id) {
            return Err(invalid(Operation::RemoveOrgTeamUser, "userId", user_id));
        }
        let body = UserIdBody { id: user_id.to_string() };
        let req = self.request(Operation::RemoveOrgTeamUser, org_id, &[("teamId", team_id)], vec![], Some(&body))?;
        let result = self.execute(req).await;
        self.settle(Operation::RemoveOrgTeamUser, org_id, user_id, result, |u| !u.team_ids.iter().any(|t| t == team_id))
            .await
    }

    // ---- the pipeline ---------------------------------------------------------------------

    /// The result of an operation on one user that is done once `done(user)` holds: a
    /// conflict, or a refusal after an attempt whose outcome was unknown, is checked against
    /// the user as Atlas now has them.
    async fn settle(
        &self,
        op: Operation,
        org_id: &str,
        user_id: &str,
        result: Result<Answer, Failure>,
        done: impl Fn(&OrgUser) -> bool,
    ) -> Result<OrgUser, AtlasError> {
        let failure = match result {
            Ok(answer) => return decode(op, &answer),
            Err(f) => f,
        };
        // The spec names no errorCode for "already so" (a role already held, a removal of a
        // non-member): any refusal (409, other 4xx) is settled by reading the user again, so
        // the outcome rests on Atlas's state, not on a code.
        let class = failure.error.class();
        if matches!(class, ErrorClass::Permanent | ErrorClass::Conflict) {
            let user = self.get_org_user(org_id, user_id).await?;
            if done(&user) {
                debug!(operation = op.operation_id(), "refused, but already in the wanted state");
                return Ok(user);
            }
        }
        Err(failure.error)
    }

    fn request(
        &self,
        op: Operation,
        org_id: &str,
        params: &[(&str, &str)],
        query: Vec<(&str, String)>,
        body: Option<&impl Serialize>,
    ) -> Result<Request, AtlasError> {
        if !is_atlas_id(org_id) {
            return Err(invalid(op, "orgId", org_id));
        }
        for (name, value) in params {
            if matches!(*name, "userId" | "teamId" | "groupId") && !is_atlas_id(value) {
                return Err(invalid(op, name, value));
            }
        }
        let mut all_params = vec![("orgId", org_id)];
        all_params.extend_from_slice(params);
        let url = op.url(&self.inner.base, &all_params, &query)?;
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| AtlasError::InvalidArgument { operation: op.operation_id(), message: e.to_string() })?;
        Ok(Request { op, org_id: org_id.to_string(), pace_key: pace_key(org_id, op), queue_key: None, url, body })
    }

    async fn fetch<T: DeserializeOwned>(&self, req: Request) -> Result<T, AtlasError> {
        let op = req.op;
        let answer = self.execute(req).await.map_err(|f| f.error)?;
        decode(op, &answer)
    }

    /// Send a request, retrying what the policy allows.
    async fn execute(&self, req: Request) -> Result<Answer, Failure> {
        let op_id = req.op.operation_id();
        let metrics = &self.inner.metrics;
        let started = Instant::now();
        let mut backoff = self.inner.retry.backoff();
        let mut after_uncertain_attempt = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.attempt(&req).await {
                Ok(answer) => {
                    metrics.call(op_id, "success");
                    return Ok(answer);
                }
                Err(error) => error,
            };
            let class = error.class();
            if matches!(error, AtlasError::InvitationQueued { .. } | AtlasError::CredentialBackoff { .. }) {
                metrics.call(op_id, class.as_str());
                return Err(Failure { error, after_uncertain_attempt });
            }
            if class == ErrorClass::RateLimited {
                metrics.rate_limited(op_id);
            }
            let wait = self.inner.retry.next_wait(
                class,
                error.retry_after(),
                error.error_code(),
                attempt,
                started.elapsed(),
                &mut backoff,
            );
            let Some(wait) = wait else {
                metrics.call(op_id, class.as_str());
                debug!(operation = op_id, attempt, error = %error, "Atlas call failed");
                return Err(Failure { error, after_uncertain_attempt });
            };
            after_uncertain_attempt |= error.may_have_been_applied();
            metrics.retry(op_id, class.as_str());
            debug!(operation = op_id, attempt, wait_ms = wait.as_millis() as u64, error = %error, "retrying Atlas call");
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt: an invitation's turn in the invitation queue, then [`Self::send`].
    async fn attempt(&self, req: &Request) -> Result<Answer, AtlasError> {
        let inner = &*self.inner;
        // An invitation waits for its turn in the process's queue first: authenticated
        // already (a wedged token endpoint never holds the queue), not yet paced per org.
        let mut turn = None;
        if let Some(key) = &req.queue_key {
            inner.health.admit(&req.org_id)?;
            if let Auth::Token(tokens) = &inner.auth {
                tokens.authorize(&inner.http, &inner.metrics).await?;
            }
            turn = Some(inner.invitations.turn(key, inner.invitation_max_wait).await?);
        }
        let result = self.send(req).await;
        if let Some(turn) = turn {
            match &result {
                Err(e) if e.error_code() == Some(super::models::codes::INVITATIONS_RATE_LIMITED_IP) => {
                    inner.metrics.invitations_refused.inc();
                    turn.refused(e.retry_after())
                }
                _ => turn.sent(),
            }
            inner.metrics.invitations_queued.set(inner.invitations.snapshot().queued as i64);
        }
        result
    }

    /// Pace per organization, take a concurrency permit, then (unless these credentials are
    /// backed off) exchange.
    async fn send(&self, req: &Request) -> Result<Answer, AtlasError> {
        let inner = &*self.inner;
        let (org_permit, waited) = inner.limiter.acquire(&req.pace_key).await;
        if !waited.is_zero() {
            inner.metrics.throttled(req.op.operation_id());
        }
        let _slot = inner.concurrency.acquire(&req.pace_key).await;
        // Checked once a permit is held: calls that queued behind a refusal fail fast.
        let _probe = inner.health.admit(&req.org_id)?;
        let result = self.exchange(req, &org_permit).await;
        let dependencies = &inner.metrics.dependencies;
        match &result {
            Ok(_) => {
                dependencies.answered(Dependency::Atlas);
                inner.health.record(&req.org_id, Ok(()))
            }
            Err(e) => {
                match e {
                    AtlasError::Transport { operation, .. } if *operation != super::error::TOKEN_OPERATION => {
                        dependencies.unanswered(Dependency::Atlas, e.to_string())
                    }
                    AtlasError::Api { .. } | AtlasError::Decode { .. } | AtlasError::Authentication { .. } => {
                        dependencies.answered(Dependency::Atlas)
                    }
                    // The token endpoint's (counted where the token is fetched), or no exchange.
                    _ => {}
                }
                inner.health.record(&req.org_id, Err(e));
                // (The token cache counts its own timeouts, once per fetch.)
                if let AtlasError::Transport { kind: TransportKind::Timeout, operation, .. } = e
                    && *operation != super::error::TOKEN_OPERATION
                {
                    inner.metrics.timeout(operation);
                }
            }
        }
        result
    }

    /// Authenticate (answering a fresh challenge or replacing a refused token once), send,
    /// map the answer.
    async fn exchange(&self, req: &Request, pace: &OrgPermit) -> Result<Answer, AtlasError> {
        let inner = &*self.inner;
        let op_id = req.op.operation_id();
        let method = req.op.method();
        let target = request_target(&req.url);
        let mut reauthenticated = false;
        loop {
            // Held while this request fetches the digest challenge (see `DigestAuth`).
            let mut _challenging = None;
            let (authorization, used) = match &inner.auth {
                Auth::Digest(digest) => match digest.authorize_or_challenge(method.as_str(), &target).await {
                    Ok((header, nonce)) => (Some(header), AuthUsed::Nonce(nonce)),
                    Err(fetch) => {
                        _challenging = fetch;
                        (None, AuthUsed::Nothing)
                    }
                },
                Auth::Token(tokens) => {
                    let (header, generation) = tokens.authorize(&inner.http, &inner.metrics).await?;
                    (Some(header), AuthUsed::Token(generation))
                }
            };
            let media = HeaderValue::from_static(req.op.media_type());
            let mut builder = inner
                .http
                .request(method.clone(), req.url.clone())
                .header(ACCEPT, media.clone())
                .timeout(inner.timeout);
            if let Some(body) = &req.body {
                builder = builder.header(CONTENT_TYPE, media).body(body.clone());
            }
            if let Some(authorization) = authorization {
                builder = builder.header(AUTHORIZATION, authorization);
            }
            let sent = Instant::now();
            let exchange = async {
                let response = builder.send().await?;
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body.to_vec()))
            };
            let result = exchange.await;
            inner.metrics.request_duration(op_id, sent.elapsed().as_secs_f64());
            let (status, headers, body) = result.map_err(|e| AtlasError::from_reqwest(op_id, e))?;
            inner.limiter.observe(
                pace,
                header_u32(&headers, "ratelimit-limit"),
                header_u32(&headers, "ratelimit-remaining"),
            );
            debug!(operation = op_id, path = req.url.path(), status, "Atlas answered");
            if status == 401 {
                let again = match (&inner.auth, &used) {
                    (Auth::Digest(digest), AuthUsed::Nonce(nonce)) => {
                        digest.on_unauthorized(op_id, &headers, Some(nonce))?
                    }
                    (Auth::Digest(digest), _) => digest.on_unauthorized(op_id, &headers, None)?,
                    (Auth::Token(tokens), AuthUsed::Token(generation)) => {
                        tokens.invalidate(*generation).await;
                        true
                    }
                    (Auth::Token(_), _) => false,
                };
                if again && !reauthenticated {
                    reauthenticated = true;
                    continue;
                }
            }
            self.note_deprecation(req.op, &headers);
            if (200..300).contains(&status) {
                return Ok(Answer { status, body });
            }
            let error = api_error(op_id, status, &headers, &body);
            if let (429 | 503, Some(after)) = (status, error.retry_after()) {
                let synced = header_u32(&headers, "ratelimit-remaining").is_some();
                inner.limiter.hold(&req.pace_key, after, synced);
            }
            return Err(error);
        }
    }

    /// Log `Deprecation` / `Sunset` the first time an operation's answer carries them;
    /// whether this call logged.
    fn note_deprecation(&self, op: Operation, headers: &HeaderMap) -> bool {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (deprecation, sunset) = (text("deprecation"), text("sunset"));
        if deprecation.is_none() && sunset.is_none() {
            return false;
        }
        let first = self.inner.deprecations_logged.lock().expect("deprecation log lock").insert(op);
        if first {
            warn!(
                operation = op.operation_id(),
                media_type = op.media_type(),
                deprecation = deprecation.as_deref().unwrap_or(""),
                sunset = sunset.as_deref().unwrap_or(""),
                "Atlas marks this endpoint version as deprecated"
            );
        }
        first
    }
}

fn pace_key(org_id: &str, op: Operation) -> String {
    format!("{org_id}/{}", op.rate_limit_group())
}

fn page_query(op: Operation, page_num: u32, items_per_page: u32) -> Result<Vec<(&'static str, String)>, AtlasError> {
    if page_num == 0 || !(1..=MAX_ITEMS_PER_PAGE).contains(&items_per_page) {
        return Err(AtlasError::InvalidArgument {
            operation: op.operation_id(),
            message: format!("pageNum {page_num} (from 1) / itemsPerPage {items_per_page} (1..=500)"),
        });
    }
    Ok(vec![("itemsPerPage", items_per_page.to_string()), ("pageNum", page_num.to_string())])
}

fn too_many_pages(op: Operation) -> AtlasError {
    AtlasError::Decode {
        operation: op.operation_id(),
        status: 200,
        message: format!("no short page after {MAX_PAGES} pages"),
    }
}

fn invalid(op: Operation, name: &str, value: &str) -> AtlasError {
    let shown: String = value.chars().take(40).collect();
    AtlasError::InvalidArgument {
        operation: op.operation_id(),
        message: format!("{name} {shown:?} is not a 24-hex-digit id"),
    }
}

fn parse_base_url(text: &str, insecure_http: bool) -> Result<Url, AtlasError> {
    let url = Url::parse(text).map_err(|e| AtlasError::Config(format!("base URL {text:?}: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if insecure_http => {}
        "http" => {
            return Err(AtlasError::Config(format!(
                "base URL {text:?} is plain http; only the simulator may be reached without TLS (insecure_http)"
            )));
        }
        other => return Err(AtlasError::Config(format!("base URL scheme {other:?} is not https"))),
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(AtlasError::Config(format!("base URL {text:?} has no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Never echo it: it would hold a credential.
        return Err(AtlasError::Config("the base URL must not contain credentials".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(AtlasError::Config(format!("base URL {text:?} must not have a query or fragment")));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Credentials {
        Credentials::ApiKey { public_key: "pub".into(), private_key: SecretString::from("canary-private-key") }
    }

    #[test]
    fn base_urls() {
        assert!(AtlasClient::new(ClientConfig::new(ATLAS_BASE_URL, key())).is_ok());
        assert!(AtlasClient::new(ClientConfig::new(ATLAS_GOV_BASE_URL, key())).is_ok());
        let plain = ClientConfig::new("http://127.0.0.1:9", key());
        let err = AtlasClient::new(plain.clone()).unwrap_err();
        assert!(err.to_string().contains("insecure_http"), "{err}");
        assert!(AtlasClient::new(ClientConfig { insecure_http: true, ..plain }).is_ok());
        for bad in ["ftp://cloud.mongodb.com", "https://u:p@cloud.mongodb.com", "https://x/?a=b", "cloud.mongodb.com"] {
            let err = AtlasClient::new(ClientConfig::new(bad, key())).unwrap_err();
            assert_eq!(err.class(), ErrorClass::Permanent, "{bad}");
            assert!(!err.to_string().contains("u:p"));
        }
    }

    #[test]
    fn token_url_follows_the_base() {
        let base = parse_base_url("https://cloud.mongodbgov.com", false).unwrap();
        assert_eq!(
            join_path(&base, &["api", "oauth", "token"]).as_str(),
            "https://cloud.mongodbgov.com/api/oauth/token"
        );
        let base = parse_base_url("http://127.0.0.1:8080/sim/", true).unwrap();
        assert_eq!(join_path(&base, &["api", "oauth", "token"]).as_str(), "http://127.0.0.1:8080/sim/api/oauth/token");
    }

    #[test]
    fn debug_shows_no_secret() {
        let config = ClientConfig::new(ATLAS_BASE_URL, key());
        assert!(!format!("{config:?}").contains("canary"));
        let client = AtlasClient::new(config).unwrap();
        assert!(!format!("{client:?}").contains("canary"));
        let sa = Credentials::ServiceAccount { client_id: "id".into(), client_secret: SecretString::from("canary-s") };
        assert!(!format!("{sa:?}").contains("canary"));
    }

    #[test]
    fn error_bodies() {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("3"));
        let err = api_error(
            "listOrgUsers",
            429,
            &headers,
            br#"{"error":429,"errorCode":"RATE_LIMITED_TOKEN_BUCKET","detail":"Too many","reason":"Too Many Requests","extra":1}"#,
        );
        assert_eq!(err.class(), ErrorClass::RateLimited);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(err.error_code(), Some("RATE_LIMITED_TOKEN_BUCKET"));
        assert_eq!(err.detail(), Some("Too many"));
        let err = api_error("getOrg", 502, &HeaderMap::new(), b"<html>\n<body>Bad Gateway</body></html>");
        assert_eq!(err.class(), ErrorClass::Transient);
        assert_eq!(err.to_string(), "Atlas getOrg answered HTTP 502: <html><body>Bad Gateway</body></html>");
    }

    #[test]
    fn deprecation_is_logged_once_per_operation() {
        let client = AtlasClient::new(ClientConfig::new(ATLAS_BASE_URL, key())).unwrap();
        let mut headers = HeaderMap::new();
        assert!(!client.note_deprecation(Operation::ListOrgUsers, &headers));
        headers.insert("deprecation", HeaderValue::from_static("Thu, 19 Feb 2025 00:00:00 GMT"));
        headers.insert("sunset", HeaderValue::from_static("Thu, 01 Jul 2027 00:00:00 GMT"));
        assert!(client.note_deprecation(Operation::ListOrgUsers, &headers));
        assert!(!client.note_deprecation(Operation::ListOrgUsers, &headers));
        assert!(!client.clone().note_deprecation(Operation::ListOrgUsers, &headers), "clones share the record");
        assert!(client.note_deprecation(Operation::ListOrgTeamUsers, &headers));
    }

    #[test]
    fn page_arguments() {
        assert!(page_query(Operation::ListOrgUsers, 0, 10).is_err());
        assert!(page_query(Operation::ListOrgUsers, 1, 0).is_err());
        assert!(page_query(Operation::ListOrgUsers, 1, 501).is_err());
        assert_eq!(
            page_query(Operation::ListOrgUsers, 3, 500).unwrap(),
            vec![("itemsPerPage", "500".to_string()), ("pageNum", "3".to_string())]
        );
    }

    #[tokio::test]
    async fn malformed_ids_are_refused_before_sending() {
        let client = AtlasClient::new(ClientConfig::new(ATLAS_BASE_URL, key())).unwrap();
        let err = client.get_org_user("5f1b2c3d4e5f60718293a4b5", "../teams").await.unwrap_err();
        assert!(matches!(err, AtlasError::InvalidArgument { .. }), "{err:?}");
        assert_eq!(err.class(), ErrorClass::Permanent);
        let err = client.get_org("not-an-id").await.unwrap_err();
        assert!(matches!(err, AtlasError::InvalidArgument { .. }), "{err:?}");
    }
}
