//! An in-memory MongoDB Atlas for tests, demos and benchmarks: the Admin API v2 operations this
//! operator uses (organizations, org users and invitations, teams and team members), held to
//! the official OpenAPI spec, with Atlas's authentication, versioning, rate limits and errors.
//!
//! Start it in-process with [`Simulator::start`] (binds `127.0.0.1:0`) or from the command line
//! with `atlas-access-operator sim`. Point a client at [`SimHandle::base_url`].
//!
//! # What it serves
//! - `POST /api/oauth/token`: service-account tokens (HTTP Basic `clientId:clientSecret`, form
//!   `grant_type=client_credentials`) → `{access_token, expires_in, token_type: "Bearer"}`;
//!   limited to [`SimConfig::token_requests_per_minute`] per client (429 `RATE_LIMITED`).
//! - `/api/atlas/v2/orgs/{orgId}...`: `getOrg`, `listOrgUsers`, `createOrgUser`, `getOrgUser`,
//!   `updateOrgUser`, `removeOrgUser`, `addOrgUserRole` (`:addRole`), `removeOrgUserRole`
//!   (`:removeRole`), `updateOrgUserRoles` (deprecated PUT), `listOrgTeams`, `createOrgTeam`,
//!   `getOrgTeam`, `getOrgTeamByName`, `listOrgTeamUsers`, `addOrgTeamUser` (`:addUser`),
//!   `removeOrgTeamUser` (`:removeUser`), `addOrgTeamUsers` and `removeOrgTeamUserFromTeam`
//!   (deprecated). Each answers only to the media types the spec gives it
//!   (`Accept: application/vnd.atlas.<date>+json`, 406 `INVALID_VERSION_DATE` otherwise; bodies
//!   need the same `Content-Type`, 415 `UNSUPPORTED_MEDIA_TYPE` otherwise). Versions with a
//!   sunset answer with `Deprecation` and `Sunset` headers.
//! - Authentication: HTTP Digest (realm `MMS Public API`, qop `auth`, MD5; a nonce may be
//!   reused with a new `nc`) for API keys, or `Authorization: Bearer <token>`.
//! - Rate limits: a token bucket per endpoint set and organization ([`RateLimitConfig`]), with
//!   `RateLimit-Limit` / `RateLimit-Remaining` on every API answer and 429
//!   `RATE_LIMITED_TOKEN_BUCKET` + `Retry-After`; invitations limited per client IP
//!   ([`SimConfig::invitations_per_minute`], 400 `INVITATIONS_RATE_LIMITED_IP`).
//! - Faults on demand ([`FaultConfig`]): 500s, 503s with `Retry-After`, dropped connections,
//!   latency; per operationId or global; seeded.
//!
//! # Control (`/__sim/`, JSON, no authentication)
//! | method and path | body → answer |
//! |---|---|
//! | `GET /__sim/orgs` | → `[{id, name, teams: [{id, name}]}]` |
//! | `POST /__sim/orgs` | `{name}` → `{id}` |
//! | `POST /__sim/orgs/{orgId}/teams` | `{name}` → `{id}` |
//! | `POST /__sim/orgs/{orgId}/users` | `{username, orgMembershipStatus?, orgRoles?}` → `{id}` |
//! | `GET /__sim/orgs/{orgId}/users` | → every `OrgUserResponse`, whatever the status |
//! | `GET /__sim/orgs/{orgId}/teams/{teamId}/members` | → `[userId]` |
//! | `POST /__sim/orgs/{orgId}/invitations/{accept,reject,expire}` | `{username}` → `{changed}` |
//! | `GET /__sim/clock`, `POST /__sim/clock/advance` | `{seconds}` → `{now}` |
//! | `GET`, `PUT`, `DELETE /__sim/faults` | [`FaultConfig`] |
//! | `GET`, `DELETE /__sim/counters` | [`Counters`] (DELETE resets counters and the log) |
//! | `GET /__sim/requests` | → `[`[`LoggedRequest`]`]` |
//!
//! The same control is available in-process through [`SimState`].

mod api;
mod auth;
pub mod cli;
mod clock;
mod control;
mod error;
mod faults;
mod limits;
mod observe;
pub mod seed;
mod server;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use parking_lot::Mutex;
use tokio::sync::watch;

pub use auth::{REALM, digest_response};
pub use faults::{FaultConfig, FaultSpec};
pub use limits::{BucketSpec, RateLimitConfig};
pub use observe::{Counters, LoggedRequest};
pub use store::ORG_ROLES;

use self::error::codes;
use crate::atlas::models::{MembershipStatus, OrgUser};
use error::ApiFailure;
use limits::Limiter;
use observe::Observations;
use store::Store;

/// How the simulator behaves. `Default` has Atlas's limits and no credentials: add at least
/// one API key or service account.
#[derive(Clone)]
pub struct SimConfig {
    /// API keys as (public key, private key), for HTTP Digest.
    pub api_keys: Vec<(String, String)>,
    /// Service accounts as (client id, client secret).
    pub service_accounts: Vec<(String, String)>,
    /// Lifetime of service-account tokens, on the simulator clock (Atlas: 1 hour).
    pub token_ttl: Duration,
    /// Token-bucket limits of the Admin API endpoint sets, per organization.
    pub rate_limits: RateLimitConfig,
    /// Invitations (`createOrgUser`) allowed per client IP and `invitation_period` (a burst
    /// of as many); `None`: unlimited.
    pub invitations_per_minute: Option<u32>,
    /// The period `invitations_per_minute` refills over: Atlas's minute, shortened for
    /// benchmarks the way their bucket specs are.
    pub invitation_period: Duration,
    /// Token requests allowed per service account and minute; `None`: unlimited.
    pub token_requests_per_minute: Option<u32>,
    /// Seed of the generated ids.
    pub seed: u64,
    /// Latency added to every request.
    pub latency: Duration,
    /// Where the simulator clock starts (default: now).
    pub clock_start: Option<Timestamp>,
    /// Users a team may hold (Atlas: 250).
    pub max_team_members: usize,
    /// `inviterUsername` of invitations made through the API.
    pub inviter_username: String,
    /// Requests kept in the request log (oldest dropped first).
    pub request_log_capacity: usize,
    /// Faults in force from the start.
    pub faults: FaultConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            service_accounts: Vec::new(),
            token_ttl: Duration::from_secs(3600),
            rate_limits: RateLimitConfig::default(),
            invitations_per_minute: Some(10),
            invitation_period: Duration::from_secs(60),
            token_requests_per_minute: Some(50),
            seed: 0,
            latency: Duration::ZERO,
            clock_start: None,
            max_team_members: 250,
            inviter_username: "atlas-admin@example.com".to_string(),
            request_log_capacity: 10_000,
            faults: FaultConfig::default(),
        }
    }
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let public: Vec<&str> = self.api_keys.iter().map(|(p, _)| p.as_str()).collect();
        let clients: Vec<&str> = self.service_accounts.iter().map(|(c, _)| c.as_str()).collect();
        f.debug_struct("SimConfig")
            .field("api_keys", &public)
            .field("service_accounts", &clients)
            .field("token_ttl", &self.token_ttl)
            .field("rate_limits", &self.rate_limits)
            .field("invitations_per_minute", &self.invitations_per_minute)
            .field("invitation_period", &self.invitation_period)
            .field("token_requests_per_minute", &self.token_requests_per_minute)
            .field("seed", &self.seed)
            .field("latency", &self.latency)
            .field("clock_start", &self.clock_start)
            .field("max_team_members", &self.max_team_members)
            .finish_non_exhaustive()
    }
}

impl SimConfig {
    pub fn with_api_key(mut self, public_key: &str, private_key: &str) -> Self {
        self.api_keys.push((public_key.to_string(), private_key.to_string()));
        self
    }

    pub fn with_service_account(mut self, client_id: &str, client_secret: &str) -> Self {
        self.service_accounts.push((client_id.to_string(), client_secret.to_string()));
        self
    }

    /// No rate limits of any kind (API buckets, invitations, token endpoint).
    pub fn without_limits(mut self) -> Self {
        self.rate_limits = RateLimitConfig::disabled();
        self.invitations_per_minute = None;
        self.token_requests_per_minute = None;
        self
    }
}

/// The state every request shares.
pub(crate) struct Shared {
    config: SimConfig,
    clock: clock::SimClock,
    store: Mutex<Store>,
    auth: Mutex<auth::Auth>,
    limiter: Mutex<Limiter>,
    faults: Mutex<faults::FaultInjector>,
    observe: Mutex<Observations>,
    local_addr: SocketAddr,
}

impl Shared {
    /// The anti-abuse limit on invitations, per client IP: 400 `INVITATIONS_RATE_LIMITED_IP`.
    fn take_invitation(&self, peer: SocketAddr) -> Result<(), ApiFailure> {
        let Some(per_minute) = self.config.invitations_per_minute else { return Ok(()) };
        let ip = peer.ip().to_string();
        let spec = BucketSpec { capacity: per_minute, refill: per_minute, per: self.config.invitation_period };
        let taken = self.limiter.lock().take(spec, "invitations", &ip);
        if taken.retry_after.is_none() {
            return Ok(());
        }
        self.observe.lock().counters.invitations_rate_limited += 1;
        Err(ApiFailure::new(
            axum::http::StatusCode::BAD_REQUEST,
            codes::INVITATIONS_RATE_LIMITED_IP,
            format!("Too many invitations from {ip}. Please try again later."),
        ))
    }
}

/// An organization and its teams, as (id, name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgSummary {
    pub id: String,
    pub name: String,
    pub teams: Vec<(String, String)>,
}

/// A handle on a running simulator's state: seed data, move the clock, act as invitees,
/// inject faults, read counters. Cheap to clone.
#[derive(Clone)]
pub struct SimState {
    shared: Arc<Shared>,
}

impl SimState {
    fn new(config: SimConfig, local_addr: SocketAddr) -> Self {
        let shared = Shared {
            clock: clock::SimClock::new(config.clock_start),
            store: Mutex::new(Store::new(config.seed, config.max_team_members, config.inviter_username.clone())),
            auth: Mutex::new(auth::Auth::new(&config.api_keys, &config.service_accounts)),
            limiter: Mutex::new(Limiter::default()),
            faults: Mutex::new(faults::FaultInjector::new(config.faults.clone())),
            observe: Mutex::new(Observations::new(config.request_log_capacity)),
            local_addr,
            config,
        };
        Self { shared: Arc::new(shared) }
    }

    /// Creates an organization; returns its id.
    pub fn add_org(&self, name: &str) -> String {
        self.shared.store.lock().add_org(name)
    }

    /// Creates a team. Panics if the organization does not exist or the name is taken.
    pub fn add_team(&self, org_id: &str, name: &str) -> String {
        match self.shared.store.lock().add_team(org_id, name, &[]) {
            Ok(team) => team.id,
            Err(e) => panic!("add_team({org_id}, {name}): {}", e.detail),
        }
    }

    /// Renames a team, as a person would in the Atlas UI. False if there is no such team.
    pub fn rename_team(&self, org_id: &str, team_id: &str, name: &str) -> bool {
        self.shared.store.lock().rename_team(org_id, team_id, name)
    }

    /// Puts a user into an organization as it stands (an ACTIVE member, a PENDING invitation
    /// sent now, ...), replacing any user with that username. Panics if the organization
    /// does not exist.
    pub fn add_user(&self, org_id: &str, username: &str, status: MembershipStatus, org_roles: &[&str]) -> String {
        let now = self.shared.clock.now();
        match self.shared.store.lock().seed_user(org_id, username, status, org_roles, now) {
            Ok(id) => id,
            Err(e) => panic!("add_user({org_id}, {username}): {}", e.detail),
        }
    }

    /// Adds an existing org user to a team, bypassing the API. False if either is unknown or
    /// the user is not pending or active.
    pub fn add_team_member(&self, org_id: &str, team_id: &str, user_id: &str) -> bool {
        let now = self.shared.clock.now();
        self.shared.store.lock().team_add_user(org_id, team_id, user_id, now).is_ok()
    }

    /// The invitee accepts the open invitation. False if there is none.
    pub fn accept_invitation(&self, org_id: &str, username: &str) -> bool {
        let now = self.shared.clock.now();
        self.shared.store.lock().accept_invitation(org_id, username, now)
    }

    /// The invitee rejects the open invitation. False if there is none.
    pub fn reject_invitation(&self, org_id: &str, username: &str) -> bool {
        let now = self.shared.clock.now();
        self.shared.store.lock().reject_invitation(org_id, username, now)
    }

    /// The open invitation expires now. False if there is none.
    pub fn expire_invitation(&self, org_id: &str, username: &str) -> bool {
        let now = self.shared.clock.now();
        self.shared.store.lock().expire_invitation(org_id, username, now)
    }

    /// Moves the simulator clock forward (invitations expire 30 days after they are sent).
    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
    }

    pub fn now(&self) -> Timestamp {
        self.shared.clock.now()
    }

    /// Every user of the organization, whatever the status, in list order. Empty if the
    /// organization does not exist.
    pub fn org_users(&self, org_id: &str) -> Vec<OrgUser> {
        let now = self.shared.clock.now();
        let store = self.shared.store.lock();
        store.org(org_id).map(|org| org.users().map(|u| u.view(now)).collect()).unwrap_or_default()
    }

    /// The team's member ids, in the order they joined. Empty if the team does not exist.
    pub fn team_member_ids(&self, org_id: &str, team_id: &str) -> Vec<String> {
        self.shared.store.lock().team(org_id, team_id).map(|t| t.members.clone()).unwrap_or_default()
    }

    /// Every organization with its teams.
    pub fn orgs(&self) -> Vec<OrgSummary> {
        let store = self.shared.store.lock();
        store
            .orgs()
            .map(|o| OrgSummary {
                id: o.id.clone(),
                name: o.name.clone(),
                teams: o.teams.iter().map(|t| (t.id.clone(), t.name.clone())).collect(),
            })
            .collect()
    }

    /// Replaces the faults in force (and restarts their seeded sequence).
    pub fn set_faults(&self, faults: FaultConfig) {
        *self.shared.faults.lock() = faults::FaultInjector::new(faults);
    }

    pub fn clear_faults(&self) {
        self.set_faults(FaultConfig::default());
    }

    pub fn faults(&self) -> FaultConfig {
        self.shared.faults.lock().config().clone()
    }

    /// Refills every rate-limit bucket.
    pub fn reset_rate_limits(&self) {
        self.shared.limiter.lock().clear();
    }

    pub fn counters(&self) -> Counters {
        self.shared.observe.lock().counters.clone()
    }

    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.shared.observe.lock().log()
    }

    /// Zeroes the counters and empties the request log.
    pub fn reset_counters(&self) {
        self.shared.observe.lock().reset();
    }
}

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Serves a new simulator on `127.0.0.1`, on a free port. Call inside a tokio runtime.
    pub fn start(config: SimConfig) -> std::io::Result<SimHandle> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config)
    }

    /// Serves a new simulator on `addr`. Call inside a tokio runtime.
    pub fn start_on(addr: SocketAddr, config: SimConfig) -> std::io::Result<SimHandle> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let state = SimState::new(config, addr);
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(server::serve(listener, server::router(state.clone()), stopped));
        Ok(SimHandle { addr, state, stop })
    }
}

/// A running simulator; dropping it stops the server.
pub struct SimHandle {
    addr: SocketAddr,
    state: SimState,
    stop: watch::Sender<bool>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`: the base URL for an Atlas client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> SimState {
        self.state.clone()
    }

    /// Stops accepting connections and closes the open ones.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Seeding with ids chosen by the caller (the `--simulate` demo serves the ids of its manifests).
impl SimState {
    /// Creates an organization with this id. Panics if the id is taken.
    pub fn add_org_with_id(&self, org_id: &str, name: &str) {
        if let Err(e) = self.shared.store.lock().add_org_with_id(org_id, name) {
            panic!("add_org_with_id({org_id}, {name}): {}", e.detail);
        }
    }

    /// Sets a user's roles in one project, bypassing the API (none: not in the project).
    /// Panics if the organization or user does not exist.
    pub fn set_project_roles(&self, org_id: &str, user_id: &str, project_id: &str, roles: &[&str]) {
        if let Err(e) = self.shared.store.lock().seed_project_roles(org_id, user_id, project_id, roles) {
            panic!("set_project_roles({org_id}, {user_id}, {project_id}): {}", e.detail);
        }
    }

    /// Creates a team with this id. Panics if the organization does not exist, or the id or
    /// name is taken.
    pub fn add_team_with_id(&self, org_id: &str, team_id: &str, name: &str) {
        if let Err(e) = self.shared.store.lock().add_team_with_id(org_id, team_id, name) {
            panic!("add_team_with_id({org_id}, {team_id}, {name}): {}", e.detail);
        }
    }
}
