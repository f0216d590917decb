//! The per-organization user index: one paginated listing of an organization's users (every
//! membership status) shared by every object of that organization, refreshed when older than
//! a configurable interval and updated in place from the answers of the writes the engine
//! makes. Steady state then costs one listing per organization and interval, not one lookup
//! per object.
//!
//! Snapshots are kept per (organization, credential identity): a credential is only ever
//! served a listing it made itself, successfully, within the refresh interval (or one updated
//! from its own writes' answers). A junk or foreign key never reads another key's listing;
//! it lists for itself and meets Atlas's refusal. A write made with one credential marks the
//! other credentials' snapshots of that organization stale, so they list again instead of
//! planning from what they no longer know.
//!
//! The index also remembers which team a `TeamRef` names (id and name), so a team membership
//! costs one member listing per reconcile instead of a lookup plus a listing. Team names
//! change rarely; a stale name is corrected when the member listing answers 404 or the team
//! entry ages past its own interval.
//!
//! With a member listing interval (the controller sets it below its resync interval), the
//! index also keeps each team's member listing, per credential: a listing the engine made
//! itself, updated from its own writes' answers (adds, removals, a user removed from the
//! organization), is as good as a new one until the next drift check, like the organization
//! listing. A team re-triggered by one member's change then plans from it instead of listing
//! the members again. A write by another credential to the organization makes the others'
//! member listings stale, as for the user snapshots; a listing that contradicts (404) is
//! dropped with the team.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::atlas::models::{OrgUser, Team};
use crate::atlas::{AtlasClient, AtlasError, CredentialIdentity, ListOrgUsersQuery};
use crate::reconcile::{Action, ActionOutcome, ObservedTeam, OrgUserDirectory};

/// How long a remembered team (id and name) is trusted by default.
pub const DEFAULT_TEAM_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);

/// One organization's snapshot and the state of its refresh.
#[derive(Default)]
struct OrgEntry {
    /// Held by the one caller that lists; others wait on it, then read the new snapshot.
    refresh: tokio::sync::Mutex<()>,
    state: Mutex<OrgState>,
}

#[derive(Default)]
struct OrgState {
    snapshot: Option<Arc<OrgUserDirectory>>,
    listed_at: Option<Instant>,
    /// Writes applied while a listing was under way: the listing may predate them, so they
    /// are applied again on top of it.
    writes_during_listing: Option<Vec<(Action, ActionOutcome)>>,
}

struct TeamEntry {
    team: Team,
    seen_at: Instant,
}

/// A team's member listing, as made by one credential and updated from its writes.
struct MembersEntry {
    members: ObservedTeam,
    listed_at: Instant,
}

/// Shared by every reconcile of every organization; cheap to share behind an `Arc`.
pub struct OrgUserIndex {
    refresh_interval: Duration,
    team_refresh_interval: Duration,
    orgs: Mutex<HashMap<(String, CredentialIdentity), Arc<OrgEntry>>>,
    /// (org id, credential, "id:<id>" | "name:<lowercase name>") -> team.
    teams: Mutex<HashMap<TeamKey, TeamEntry>>,
    listings: AtomicU64,
    member_listing_interval: Duration,
    /// (org id, credential, team id) -> the team's members.
    members: Mutex<HashMap<(String, CredentialIdentity, String), MembersEntry>>,
    /// One-shot passes under way ([`OrgUserIndex::begin_pass`]) and when the first of them
    /// began: member listings made since then serve until they end.
    passes: Mutex<(usize, Option<Instant>)>,
}

impl std::fmt::Debug for OrgUserIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgUserIndex")
            .field("refresh_interval", &self.refresh_interval)
            .field("listings", &self.listings())
            .finish_non_exhaustive()
    }
}

type TeamKey = (String, CredentialIdentity, String);

fn team_keys(org_id: &str, who: CredentialIdentity, team: &Team) -> [TeamKey; 2] {
    [
        (org_id.to_string(), who, format!("id:{}", team.id)),
        (org_id.to_string(), who, format!("name:{}", team.name.to_lowercase())),
    ]
}

/// A pass under way (see [`OrgUserIndex::begin_pass`]); dropping it ends the pass.
#[must_use]
pub struct PassGuard<'a> {
    index: &'a OrgUserIndex,
}

impl Drop for PassGuard<'_> {
    fn drop(&mut self) {
        let index = self.index;
        // The last pass out drops what only passes were keeping.
        let last = {
            let mut passes = index.passes.lock().expect("index lock");
            passes.0 -= 1;
            if passes.0 == 0 {
                passes.1 = None;
            }
            passes.0 == 0
        };
        if last && index.member_listing_interval.is_zero() {
            index.members.lock().expect("index lock").clear();
        }
    }
}

impl OrgUserIndex {
    /// An index that lists an organization again once its snapshot is older than `refresh_interval`.
    pub fn new(refresh_interval: Duration) -> Self {
        Self {
            refresh_interval,
            team_refresh_interval: DEFAULT_TEAM_REFRESH_INTERVAL,
            orgs: Mutex::new(HashMap::new()),
            teams: Mutex::new(HashMap::new()),
            listings: AtomicU64::new(0),
            member_listing_interval: Duration::ZERO,
            members: Mutex::new(HashMap::new()),
            passes: Mutex::new((0, None)),
        }
    }

    /// A one-shot pass over `org_ids` begins: their snapshots and member listings are
    /// forgotten (the pass is the drift check: it observes afresh), and until the returned
    /// guard drops, a member listing made during the pass serves the rest of it, updated from
    /// its own writes like the organization snapshot. A team reconciled in steps, or looked up
    /// before its first member is invited, then lists its members once per pass.
    pub fn begin_pass<'a>(&'a self, org_ids: impl IntoIterator<Item = String>) -> PassGuard<'a> {
        for org in org_ids {
            self.invalidate(&org);
        }
        let mut passes = self.passes.lock().expect("index lock");
        passes.0 += 1;
        passes.1.get_or_insert_with(Instant::now);
        PassGuard { index: self }
    }

    /// When the passes under way began.
    fn pass_began(&self) -> Option<Instant> {
        self.passes.lock().expect("index lock").1
    }

    fn in_pass(&self) -> bool {
        self.pass_began().is_some()
    }

    /// How long a team's member listing serves (default zero: every reconcile lists).
    pub fn with_member_listing_interval(mut self, interval: Duration) -> Self {
        self.member_listing_interval = interval;
        self
    }

    /// The members of team `team_id` as `client`'s credential last listed them (and updated
    /// them from its writes), while younger than the member listing interval or if made
    /// during the pass under way.
    pub(crate) fn team_members(&self, client: &AtlasClient, org_id: &str, team_id: &str) -> Option<ObservedTeam> {
        let pass_began = self.pass_began();
        let members = self.members.lock().expect("index lock");
        let entry = members.get(&(org_id.to_string(), client.credential_identity(), team_id.to_string()))?;
        let made_in_pass = pass_began.is_some_and(|began| entry.listed_at >= began);
        (made_in_pass || entry.listed_at.elapsed() < self.member_listing_interval).then(|| entry.members.clone())
    }

    /// Keep a member listing `client` just made (a no-op without a member listing interval,
    /// outside a pass).
    pub(crate) fn remember_members(&self, client: &AtlasClient, org_id: &str, listed_at: Instant, team: &ObservedTeam) {
        if self.member_listing_interval.is_zero() && !self.in_pass() {
            return;
        }
        self.members.lock().expect("index lock").insert(
            (org_id.to_string(), client.credential_identity(), team.id.clone()),
            MembersEntry { members: team.clone(), listed_at },
        );
    }

    /// Drop a team's member listing (every credential's).
    pub(crate) fn forget_members(&self, org_id: &str, team_id: &str) {
        self.members.lock().expect("index lock").retain(|(org, _, team), _| !(org == org_id && team == team_id));
    }

    /// Update the member listings of an organization after `who`'s executed action; other
    /// credentials' listings of the organization become stale when it changed something.
    fn apply_to_members(&self, org_id: &str, who: CredentialIdentity, action: &Action, outcome: &ActionOutcome) {
        let mut members = self.members.lock().expect("index lock");
        if matches!(outcome, ActionOutcome::Done(_)) {
            members.retain(|(org, id, _), _| !(org == org_id && *id != who));
        }
        // A refused team write may mean the listing no longer matches Atlas: list it again.
        if let (
            ActionOutcome::Failed(_),
            Action::AddTeamUser { team_id, .. } | Action::RemoveTeamUser { team_id, .. },
        ) = (outcome, action)
        {
            members.retain(|(org, _, team), _| !(org == org_id && team == team_id));
        }
        for ((org, id, _), entry) in members.iter_mut() {
            if org != org_id || *id != who {
                continue;
            }
            match action {
                Action::RemoveOrgUser { user_id, .. } if matches!(outcome, ActionOutcome::Done(_)) => {
                    entry.members.remove_member(user_id)
                }
                _ => entry.members.apply(action, outcome),
            }
        }
    }

    /// How long a remembered team is trusted (default one hour).
    pub fn with_team_refresh_interval(mut self, interval: Duration) -> Self {
        self.team_refresh_interval = interval;
        self
    }

    pub fn refresh_interval(&self) -> Duration {
        self.refresh_interval
    }

    /// Full listings of an organization made so far (each may span several pages).
    pub fn listings(&self) -> u64 {
        self.listings.load(Ordering::Relaxed)
    }

    fn entry(&self, org_id: &str, who: CredentialIdentity) -> Arc<OrgEntry> {
        self.orgs.lock().expect("index lock").entry((org_id.to_string(), who)).or_default().clone()
    }

    /// Every other credential's entry for the organization.
    fn others(&self, org_id: &str, who: CredentialIdentity) -> Vec<Arc<OrgEntry>> {
        let orgs = self.orgs.lock().expect("index lock");
        orgs.iter().filter(|((org, id), _)| org == org_id && *id != who).map(|(_, e)| e.clone()).collect()
    }

    fn fresh(&self, state: &OrgState) -> Option<Arc<OrgUserDirectory>> {
        let at = state.listed_at?;
        (at.elapsed() < self.refresh_interval).then(|| state.snapshot.clone()).flatten()
    }

    /// A snapshot of every user of the organization as `client`'s credential sees it, listed
    /// again (all pages, all four membership statuses) when older than the refresh interval.
    /// One listing at a time per (organization, credential): concurrent callers with the same
    /// credential wait for it and share its result; a failed listing is served to no one.
    pub async fn directory(&self, client: &AtlasClient, org_id: &str) -> Result<OrgUserDirectory, AtlasError> {
        Ok(self.shared_directory(client, org_id).await?.as_ref().clone())
    }

    /// Like [`OrgUserIndex::directory`], without copying the snapshot.
    pub async fn shared_directory(
        &self,
        client: &AtlasClient,
        org_id: &str,
    ) -> Result<Arc<OrgUserDirectory>, AtlasError> {
        let entry = self.entry(org_id, client.credential_identity());
        if let Some(snapshot) = self.fresh(&entry.state.lock().expect("index lock")) {
            return Ok(snapshot);
        }
        let _listing = entry.refresh.lock().await;
        // Whoever held the lock before may have just listed.
        if let Some(snapshot) = self.fresh(&entry.state.lock().expect("index lock")) {
            return Ok(snapshot);
        }
        entry.state.lock().expect("index lock").writes_during_listing = Some(Vec::new());
        let started = Instant::now();
        let listed = client.list_org_users(org_id, &ListOrgUsersQuery::all_statuses()).await;
        self.listings.fetch_add(1, Ordering::Relaxed);
        let mut state = entry.state.lock().expect("index lock");
        let writes = state.writes_during_listing.take().unwrap_or_default();
        let users = listed?;
        let mut directory = OrgUserDirectory::new(users);
        for (action, outcome) in &writes {
            directory.apply(action, outcome);
        }
        let snapshot = Arc::new(directory);
        state.snapshot = Some(snapshot.clone());
        // Age from when the listing began: writes by others after that are not in it.
        state.listed_at = Some(started);
        Ok(snapshot)
    }

    /// Update `client`'s snapshot of the organization after one action it executed (the user
    /// Atlas returned, or a removal); other credentials' snapshots of it become stale.
    pub fn apply(&self, client: &AtlasClient, org_id: &str, action: &Action, outcome: &ActionOutcome) {
        let who = client.credential_identity();
        self.apply_to_members(org_id, who, action, outcome);
        if matches!(outcome, ActionOutcome::Done(_)) {
            for other in self.others(org_id, who) {
                other.state.lock().expect("index lock").listed_at = None;
            }
        }
        let entry = self.entry(org_id, who);
        let mut state = entry.state.lock().expect("index lock");
        if let Some(writes) = state.writes_during_listing.as_mut() {
            writes.push((action.clone(), outcome.clone()));
        }
        if let Some(snapshot) = state.snapshot.as_mut() {
            Arc::make_mut(snapshot).apply(action, outcome);
        }
    }

    /// Record a user as Atlas just reported it to `client` (an invitation that met an existing user).
    pub fn upsert(&self, client: &AtlasClient, org_id: &str, user: &OrgUser) {
        let entry = self.entry(org_id, client.credential_identity());
        let mut state = entry.state.lock().expect("index lock");
        if let Some(snapshot) = state.snapshot.as_mut() {
            Arc::make_mut(snapshot).upsert(user.clone());
        }
    }

    /// The organization's most recent snapshot among the credentials that listed it, however
    /// old, without listing: for the operator's own audit metrics, which must cost no call of
    /// their own (never for an object's status: that reads only its own credential's listing).
    pub fn cached(&self, org_id: &str) -> Option<Arc<OrgUserDirectory>> {
        let entries: Vec<Arc<OrgEntry>> = {
            let orgs = self.orgs.lock().expect("index lock");
            orgs.iter().filter(|((org, _), _)| org == org_id).map(|(_, e)| e.clone()).collect()
        };
        entries
            .iter()
            .filter_map(|e| {
                let state = e.state.lock().expect("index lock");
                Some((state.listed_at?, state.snapshot.clone()?))
            })
            .max_by_key(|(at, _)| *at)
            .map(|(_, snapshot)| snapshot)
    }

    /// Forget every credential's snapshot of the organization: the next
    /// [`OrgUserIndex::directory`] lists again.
    pub fn invalidate(&self, org_id: &str) {
        let entries: Vec<Arc<OrgEntry>> = {
            let orgs = self.orgs.lock().expect("index lock");
            orgs.iter().filter(|((org, _), _)| org == org_id).map(|(_, e)| e.clone()).collect()
        };
        for entry in entries {
            let mut state = entry.state.lock().expect("index lock");
            state.listed_at = None;
            state.snapshot = None;
        }
        self.members.lock().expect("index lock").retain(|(org, _, _), _| org != org_id);
    }

    /// The team remembered for `key` (`id:<id>` or `name:<lowercase name>`), if still trusted.
    pub(crate) fn team(&self, client: &AtlasClient, org_id: &str, key: &str) -> Option<Team> {
        let teams = self.teams.lock().expect("index lock");
        let entry = teams.get(&(org_id.to_string(), client.credential_identity(), key.to_string()))?;
        (entry.seen_at.elapsed() < self.team_refresh_interval).then(|| entry.team.clone())
    }

    pub(crate) fn remember_team(&self, client: &AtlasClient, org_id: &str, team: &Team) {
        let mut teams = self.teams.lock().expect("index lock");
        let seen_at = Instant::now();
        for key in team_keys(org_id, client.credential_identity(), team) {
            teams.insert(key, TeamEntry { team: team.clone(), seen_at });
        }
    }

    pub(crate) fn forget_team(&self, client: &AtlasClient, org_id: &str, team: &Team) {
        let mut teams = self.teams.lock().expect("index lock");
        for key in team_keys(org_id, client.credential_identity(), team) {
            teams.remove(&key);
        }
    }
}
