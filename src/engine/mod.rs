//! The IO edge shared by the one-shot CLI and the controller: observe Atlas (through the
//! per-org [`OrgUserIndex`] and the team member listing), plan with [`crate::reconcile`],
//! have the caller persist the write-ahead record ([`PersistIntent`]), execute the plan
//! through the [`AtlasClient`], and build the status from what Atlas answered. Kubernetes is
//! not touched here: callers write the status, events and finalizers.

pub mod driver;
pub mod index;
pub mod intent;
pub mod notices;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::api::conditions::HasConditions;
use crate::api::{AtlasOrgUser, AtlasOrgUserStatus, AtlasTeamMembership, AtlasTeamMembershipStatus, TeamRef};
use crate::atlas::models::{MembershipStatus, OrgUser, Team, codes};
use crate::atlas::{AtlasClient, AtlasError, ListOrgUsersQuery};
use crate::reconcile::export::OrgSnapshot;
use crate::reconcile::{
    Action, ActionError, ActionOutcome, Claim, ErrorClass, FailureMode, ObservedTeam, OrgUserDirectory, OrgUserInput,
    OrgUserPlan, Plan, TeamInput, TeamPlan, TeamWriter, contradicts_observation, org_user_status, plan_org_user,
    plan_team_membership, team_intent, team_membership_status,
};
pub use index::OrgUserIndex;
pub use intent::{InMemory, IntentError, PersistIntent};

/// Why a reconcile could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Atlas could not be read (no plan), or refused as a whole.
    #[error(transparent)]
    Atlas(#[from] AtlasError),
    /// The write-ahead record was not persisted: no call was sent.
    #[error(transparent)]
    Intent(#[from] IntentError),
}

/// What a team membership's reconcile needs to know about the other objects.
#[derive(Clone, Debug, Default)]
pub struct TeamSurroundings {
    /// AtlasOrgUser names of the object's namespace -> their usernames (for `orgUserRef`);
    /// shared by every object of the namespace.
    pub org_user_refs: Arc<BTreeMap<String, String>>,
    /// Every other object writing teams of the object's organization.
    pub writers: Vec<TeamWriter>,
}

/// AtlasOrgUser name -> username, per namespace: one scan of the org users.
fn refs_by_namespace<'a>(
    org_users: impl IntoIterator<Item = &'a AtlasOrgUser>,
) -> HashMap<Option<String>, Arc<BTreeMap<String, String>>> {
    let mut refs: HashMap<Option<String>, BTreeMap<String, String>> = HashMap::new();
    for u in org_users {
        refs.entry(u.metadata.namespace.clone())
            .or_default()
            .insert(u.metadata.name.clone().unwrap_or_default(), u.spec.username.clone());
    }
    refs.into_iter().map(|(namespace, refs)| (namespace, Arc::new(refs))).collect()
}

impl TeamSurroundings {
    /// From the objects a caller knows (the controller's stores, or the files of `apply -f`):
    /// `object`'s namespace resolves its `orgUserRef`s; every other AtlasTeamMembership and
    /// every AtlasOrgUser with `teamIds` of the same organization is a writer.
    pub fn of<'a>(
        object: &AtlasTeamMembership,
        teams: impl IntoIterator<Item = &'a AtlasTeamMembership>,
        org_users: impl IntoIterator<Item = &'a AtlasOrgUser> + Clone,
    ) -> Self {
        let refs = refs_by_namespace(org_users.clone());
        Self::with_refs(object, teams, org_users, &refs)
    }

    /// [`Self::of`] for every object of `teams`, in order, from one scan of the org users (a
    /// scan per team costs a pass of `apply` tens of milliseconds before its first call).
    pub fn of_each(teams: &[AtlasTeamMembership], org_users: &[AtlasOrgUser]) -> Vec<Self> {
        let refs = refs_by_namespace(org_users);
        let mut by_org: HashMap<&str, Vec<&AtlasOrgUser>> = HashMap::new();
        for u in org_users {
            by_org.entry(u.spec.org_id.as_str()).or_default().push(u);
        }
        teams
            .iter()
            .map(|t| {
                let same_org = by_org.get(t.spec.org_id.as_str()).map(Vec::as_slice).unwrap_or_default();
                Self::with_refs(t, teams, same_org.iter().copied(), &refs)
            })
            .collect()
    }

    fn with_refs<'a>(
        object: &AtlasTeamMembership,
        teams: impl IntoIterator<Item = &'a AtlasTeamMembership>,
        org_users: impl IntoIterator<Item = &'a AtlasOrgUser>,
        refs: &HashMap<Option<String>, Arc<BTreeMap<String, String>>>,
    ) -> Self {
        let no_refs = BTreeMap::new();
        let refs_in = |namespace: &Option<String>| refs.get(namespace).map_or(&no_refs, |r| r.as_ref());
        let org_id = &object.spec.org_id;
        let me = Claim::of(&object.metadata);
        let mut writers: Vec<TeamWriter> = teams
            .into_iter()
            .filter(|t| t.spec.org_id == *org_id && Claim::of(&t.metadata) != me)
            .map(|t| TeamWriter::of_team_membership(t, refs_in(&t.metadata.namespace)))
            .collect();
        writers.extend(
            org_users
                .into_iter()
                .filter(|u| u.spec.org_id == *org_id && u.metadata.deletion_timestamp.is_none())
                .flat_map(TeamWriter::of_org_user),
        );
        Self { org_user_refs: refs.get(&object.metadata.namespace).cloned().unwrap_or_default(), writers }
    }
}

/// Whether a reconcile writes to Atlas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Carry out the plan.
    Apply,
    /// Only observe and plan (`plan -f`): nothing in Atlas changes.
    PlanOnly,
}

/// Something worth a Kubernetes event (or a line of CLI output).
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct EngineEvent {
    pub warning: bool,
    /// CamelCase, like `InvitationSent`.
    pub reason: String,
    /// One sentence, with Atlas's own message for failures. Never a credential.
    pub note: String,
}

impl EngineEvent {
    fn normal(reason: &str, note: String) -> Self {
        Self { warning: false, reason: reason.to_string(), note }
    }

    fn warning(reason: &str, note: String) -> Self {
        Self { warning: true, reason: reason.to_string(), note }
    }
}

/// Event reasons the engine emits (failures use [`crate::reconcile::failure_reason`]).
pub mod events {
    pub const INVITATION_SENT: &str = "InvitationSent";
    pub const INVITATION_REISSUED: &str = "InvitationReissued";
    pub const USER_ADOPTED: &str = "UserAdopted";
    pub const ORG_ROLES_CHANGED: &str = "OrgRolesChanged";
    pub const PROJECT_ROLES_CHANGED: &str = "ProjectRolesChanged";
    pub const TEAM_JOINED: &str = "TeamJoined";
    pub const TEAM_LEFT: &str = "TeamLeft";
    pub const PROJECT_LEFT: &str = "ProjectLeft";
    pub const OWNERSHIP_NOT_RECORDED: &str = "OwnershipNotRecorded";
    pub const REOBSERVED: &str = "Reobserved";
    pub const MEMBER_ADDED: &str = "MemberAdded";
    pub const MEMBER_REMOVED: &str = "MemberRemoved";
    pub const USER_REMOVED: &str = "UserRemoved";
    pub const INVITATION_EXPIRING_SOON: &str = crate::api::conditions::INVITATION_EXPIRING_SOON;
    /// Atlas had been changed outside the operator; the operator changed it back.
    pub const DRIFT_CORRECTED: &str = "DriftCorrected";
}

/// What one reconcile of an object did and found.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Report<P, S> {
    pub plan: P,
    /// One per planned action (empty in [`Mode::PlanOnly`]).
    pub outcomes: Vec<ActionOutcome>,
    /// The status to write, from what Atlas reports after the calls.
    pub status: S,
    /// For an object being deleted: its Atlas clean-up is complete.
    pub finalizer_may_be_removed: bool,
    /// The earliest `Retry-After` among rate-limited calls.
    pub requeue_after: Option<Duration>,
    pub events: Vec<EngineEvent>,
    /// The ownership record could not be written before the grants (why): nothing was sent.
    pub unrecorded: Option<String>,
}

/// What one reconcile of an AtlasOrgUser did and found.
pub type OrgUserReport = Report<OrgUserPlan, AtlasOrgUserStatus>;
/// What one reconcile of an AtlasTeamMembership did and found.
pub type TeamReport = Report<TeamPlan, AtlasTeamMembershipStatus>;

impl<P, S: HasConditions> Report<P, S> {
    /// Another pass would not change anything: Atlas matches the spec, the object waits on
    /// something only a change can end (Stalled), or its deletion is complete.
    pub fn is_settled(&self) -> bool {
        use crate::api::conditions::{READY, STALLED, is_true};
        let conditions = self.status.conditions();
        !self.has_failures()
            && (self.finalizer_may_be_removed || is_true(conditions, READY) || is_true(conditions, STALLED))
    }

    /// Some call of this reconcile failed.
    pub fn has_failures(&self) -> bool {
        self.outcomes.iter().any(|o| o.error().is_some())
    }
}

/// The executor's view of a client error: Atlas's own `errorCode` and `detail` are kept.
pub fn action_error(error: &AtlasError) -> ActionError {
    ActionError {
        class: error.class(),
        http_status: match error {
            AtlasError::Api { status, .. } | AtlasError::Token { status, .. } => Some(*status),
            _ => None,
        },
        error_code: error.error_code().filter(|c| !c.is_empty()).map(str::to_string),
        detail: error.detail().map(str::to_string).unwrap_or_else(|| error.to_string()),
        retry_after_secs: error.retry_after().map(|d| d.as_secs().max(1)),
    }
}

/// One action's result, plus a user Atlas reported without the action succeeding (an
/// invitation that met a user already in the organization).
struct Executed {
    outcome: ActionOutcome,
    existing: Option<OrgUser>,
}

async fn run_action(client: &AtlasClient, action: &Action) -> Executed {
    let done = |user: Result<OrgUser, AtlasError>| match user {
        Ok(user) => ActionOutcome::user(user),
        Err(e) => ActionOutcome::Failed(action_error(&e)),
    };
    let outcome = match action {
        Action::CreateOrgUser { org_id, request, .. } => match client.create_org_user(org_id, request).await {
            Ok(created) if created.created => ActionOutcome::user(created.user),
            Ok(existing) => {
                // Someone else's user (not this call's earlier attempt): adopt on the next pass.
                let error = ActionError::atlas(
                    ErrorClass::Conflict,
                    409,
                    codes::USER_ALREADY_IN_ORG,
                    format!(
                        "{} is already {} in the organization",
                        existing.user.username,
                        existing.user.org_membership_status.as_str()
                    ),
                );
                return Executed { outcome: ActionOutcome::Failed(error), existing: Some(existing.user) };
            }
            Err(e) => ActionOutcome::Failed(action_error(&e)),
        },
        Action::RemoveOrgUser { org_id, user_id, .. } => match client.remove_org_user(org_id, user_id).await {
            Ok(()) => ActionOutcome::Done(None),
            Err(e) => ActionOutcome::Failed(action_error(&e)),
        },
        Action::AddOrgRole { org_id, user_id, role, .. } => done(client.add_org_role(org_id, user_id, role).await),
        Action::RemoveOrgRole { org_id, user_id, role, .. } => {
            done(client.remove_org_role(org_id, user_id, role).await)
        }
        Action::AddProjectRole { org_id, project_id, user_id, role, .. } => {
            match client.add_group_role(org_id, project_id, user_id, role).await {
                Ok(_) => ActionOutcome::Done(None),
                Err(e) => ActionOutcome::Failed(action_error(&e)),
            }
        }
        Action::RemoveProjectRole { org_id, project_id, user_id, role, .. } => {
            match client.remove_group_role(org_id, project_id, user_id, role).await {
                Ok(_) => ActionOutcome::Done(None),
                Err(e) => ActionOutcome::Failed(action_error(&e)),
            }
        }
        Action::RemoveProjectUser { org_id, project_id, user_id, .. } => {
            match client.remove_group_user(org_id, project_id, user_id).await {
                Ok(()) => ActionOutcome::Done(None),
                Err(e) => ActionOutcome::Failed(action_error(&e)),
            }
        }
        Action::AddTeamUser { org_id, team_id, user_id, .. } => {
            done(client.add_team_user(org_id, team_id, user_id).await)
        }
        Action::RemoveTeamUser { org_id, team_id, user_id, .. } => {
            done(client.remove_team_user(org_id, team_id, user_id).await)
        }
    };
    Executed { outcome, existing: None }
}

fn org_of(action: &Action) -> &str {
    match action {
        Action::CreateOrgUser { org_id, .. }
        | Action::RemoveOrgUser { org_id, .. }
        | Action::AddOrgRole { org_id, .. }
        | Action::RemoveOrgRole { org_id, .. }
        | Action::AddProjectRole { org_id, .. }
        | Action::RemoveProjectRole { org_id, .. }
        | Action::RemoveProjectUser { org_id, .. }
        | Action::AddTeamUser { org_id, .. }
        | Action::RemoveTeamUser { org_id, .. } => org_id,
    }
}

/// Calls of an independent plan (team members) in flight at once.
const INDEPENDENT_CALLS_IN_FLIGHT: usize = 8;

/// Run the plan's actions, one outcome per action in plan order; after a failure the plan's
/// [`Plan::continue_after`] decides whether to go on, and the actions not yet started are
/// `Skipped`. A sequential plan runs one call at a time; the calls of an independent plan
/// (one team member each) overlap, a few at a time, phase by phase ([`Action::phase`]):
/// every removal has finished before the first addition starts. `seen` gets each action with
/// its outcome as it completes, and any user Atlas reported on the way.
async fn execute_observed(
    client: &AtlasClient,
    plan: &Plan,
    mut seen: impl FnMut(&Action, &ActionOutcome, Option<&OrgUser>),
) -> Vec<ActionOutcome> {
    use futures::StreamExt;
    let in_flight = match plan.failure_mode {
        FailureMode::Sequential => 1,
        FailureMode::Independent => INDEPENDENT_CALLS_IN_FLIGHT,
    };
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let mut outcomes = Vec::with_capacity(plan.actions.len());
    let mut start = 0;
    while start < plan.actions.len() {
        // One phase: the run of actions with the same phase (a sequential plan runs one at a
        // time anyway).
        let phase = plan.actions[start].phase();
        let end =
            plan.actions[start..].iter().position(|a| a.phase() != phase).map_or(plan.actions.len(), |n| start + n);
        // Indices rather than `&Action` items: a closure over references would make the future
        // lose `Send` (a higher-ranked lifetime the compiler cannot prove).
        let mut runs = futures::stream::iter(start..end)
            .map(|i| {
                let (stopped, action) = (&stopped, &plan.actions[i]);
                async move {
                    if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                        return (action, None);
                    }
                    let executed = run_action(client, action).await;
                    if let Some(error) = executed.outcome.error()
                        && !plan.continue_after(error)
                    {
                        stopped.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    (action, Some(executed))
                }
            })
            .buffered(in_flight);
        while let Some((action, executed)) = runs.next().await {
            match executed {
                Some(executed) => {
                    seen(action, &executed.outcome, executed.existing.as_ref());
                    outcomes.push(executed.outcome);
                }
                None => outcomes.push(ActionOutcome::Skipped),
            }
        }
        start = end;
    }
    outcomes
}

/// Carry out a plan through the client: one outcome per action, in order.
pub async fn execute(client: &AtlasClient, plan: &Plan) -> Vec<ActionOutcome> {
    execute_observed(client, plan, |_, _, _| {}).await
}

fn is_not_found(error: &AtlasError) -> bool {
    error.class() == ErrorClass::NotFound
}

async fn lookup_team(client: &AtlasClient, org_id: &str, team: &TeamRef) -> Result<Option<Team>, AtlasError> {
    let found = match (&team.id, &team.name) {
        (Some(id), _) => client.get_team(org_id, id).await,
        (None, Some(name)) => client.get_team_by_name(org_id, name).await,
        (None, None) => return Ok(None),
    };
    match found {
        Ok(team) => Ok(Some(team)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn members_of(client: &AtlasClient, org_id: &str, team: Team) -> Result<Option<ObservedTeam>, AtlasError> {
    match client.list_team_users(org_id, &team.id).await {
        Ok(users) => Ok(Some(ObservedTeam::new(team, users))),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// [`members_of`], served from the index's member listing while it is fresh, and kept there.
async fn members_indexed(
    client: &AtlasClient,
    index: &OrgUserIndex,
    org_id: &str,
    team: Team,
) -> Result<Option<ObservedTeam>, AtlasError> {
    if let Some(known) = index.team_members(client, org_id, &team.id) {
        return Ok(Some(known));
    }
    let started = tokio::time::Instant::now();
    let id = team.id.clone();
    let observed = members_of(client, org_id, team).await?;
    match &observed {
        Some(observed) => index.remember_members(client, org_id, started, observed),
        None => index.forget_members(org_id, &id),
    }
    Ok(observed)
}

/// The team a `TeamRef` names and every member (all pages); None when Atlas has no such team.
pub async fn observe_team(
    client: &AtlasClient,
    org_id: &str,
    team: &TeamRef,
) -> Result<Option<ObservedTeam>, AtlasError> {
    match lookup_team(client, org_id, team).await? {
        Some(found) => members_of(client, org_id, found).await,
        None => Ok(None),
    }
}

/// Everything `export` needs of one organization: every user (all statuses), every team and
/// its members. One listing of users, one of teams, one member listing per team.
pub async fn read_org(client: &AtlasClient, org_id: &str) -> Result<OrgSnapshot, AtlasError> {
    let users = client.list_org_users(org_id, &ListOrgUsersQuery::all_statuses()).await?;
    let mut teams = Vec::new();
    for team in client.list_teams(org_id).await? {
        let members = client.list_team_users(org_id, &team.id).await?;
        teams.push((team, members));
    }
    Ok(OrgSnapshot { org_id: org_id.to_string(), users, teams })
}

fn team_key(team: &TeamRef) -> Option<String> {
    match (&team.id, &team.name) {
        (Some(id), _) => Some(format!("id:{id}")),
        (None, Some(name)) => Some(format!("name:{}", name.to_lowercase())),
        (None, None) => None,
    }
}

/// [`observe_team`], with the team's id and name remembered by the index: one member
/// listing per call while the team is known. A name is always looked up afresh (it is
/// resolved once, then the object is pinned to the id), so a renamed team is never taken
/// for the old name.
pub async fn observe_team_indexed(
    client: &AtlasClient,
    index: &OrgUserIndex,
    org_id: &str,
    team: &TeamRef,
) -> Result<Option<ObservedTeam>, AtlasError> {
    if let Some(known) = team_key(team).filter(|_| team.id.is_some()).and_then(|key| index.team(client, org_id, &key)) {
        match members_indexed(client, index, org_id, known.clone()).await? {
            Some(observed) => return Ok(Some(observed)),
            // Deleted, or (by name) replaced: look it up again.
            None => index.forget_team(client, org_id, &known),
        }
    }
    let Some(found) = lookup_team(client, org_id, team).await? else { return Ok(None) };
    index.remember_team(client, org_id, &found);
    members_indexed(client, index, org_id, found).await
}

fn earliest_retry(outcomes: &[ActionOutcome]) -> Option<Duration> {
    outcomes
        .iter()
        .filter_map(ActionOutcome::error)
        .filter(|e| e.class == ErrorClass::RateLimited)
        .map(|e| Duration::from_secs(e.retry_after_secs.unwrap_or(1)))
        .min()
}

fn failure_events(plan: &Plan, outcomes: &[ActionOutcome], events: &mut Vec<EngineEvent>) {
    for (action, outcome) in plan.actions.iter().zip(outcomes) {
        if let Some(error) = outcome.error() {
            events.push(EngineEvent::warning(error.reason(), format!("{action}: {error}")));
        }
    }
}

fn roles_text(user: Option<&OrgUser>) -> String {
    user.map(|u| {
        let mut roles = u.roles.org_roles.clone();
        roles.sort();
        roles.join(", ")
    })
    .unwrap_or_default()
}

fn org_user_events(
    input: &OrgUserInput,
    plan: &OrgUserPlan,
    outcomes: &[ActionOutcome],
    fresh: Option<&OrgUser>,
) -> Vec<EngineEvent> {
    let mut events = Vec::new();
    if plan.adopted == Some(true)
        && !input.deleting
        && input.previous.and_then(|s| s.adopted).is_none()
        && let Some(user) = input.observed
    {
        events.push(EngineEvent::normal(
            events::USER_ADOPTED,
            format!(
                "{} was already {} in org {}: adopted, not invited",
                user.username,
                user.org_membership_status.as_str(),
                input.spec.org_id
            ),
        ));
    }
    let mut roles_changed = false;
    for (action, outcome) in plan.plan.actions.iter().zip(outcomes) {
        let ActionOutcome::Done(returned) = outcome else { continue };
        let returned = returned.as_deref();
        match action {
            Action::CreateOrgUser { request, reissues, .. } => {
                let expires = returned
                    .and_then(|u| u.invitation_expires_at.as_deref())
                    .map(|at| format!(", expires {at}"))
                    .unwrap_or_default();
                let (reason, verb) = match reissues {
                    None => (events::INVITATION_SENT, "invited"),
                    Some(_) => (events::INVITATION_REISSUED, "invited again"),
                };
                let status = returned.map_or(MembershipStatus::Pending, |u| u.org_membership_status).as_str();
                let mut roles = request.roles.org_roles.join(", ");
                for assignment in &request.roles.group_role_assignments {
                    let project = assignment.group_id.as_deref().unwrap_or("?");
                    roles.push_str(&format!(", project {project}: {}", assignment.group_roles.join(", ")));
                }
                events.push(EngineEvent::normal(
                    reason,
                    format!("{verb} {} to org {} as {roles} ({status}{expires})", request.username, input.spec.org_id),
                ));
            }
            Action::AddOrgRole { .. } | Action::RemoveOrgRole { .. } => roles_changed = true,
            Action::AddProjectRole { .. } | Action::RemoveProjectRole { .. } => {
                events.push(EngineEvent::normal(events::PROJECT_ROLES_CHANGED, action.to_string()))
            }
            Action::RemoveProjectUser { .. } => {
                events.push(EngineEvent::normal(events::PROJECT_LEFT, action.to_string()))
            }
            Action::AddTeamUser { username, team_id, .. } => {
                events.push(EngineEvent::normal(events::TEAM_JOINED, format!("{username} joined team {team_id}")))
            }
            Action::RemoveOrgUser { .. } => events.push(EngineEvent::normal(events::USER_REMOVED, action.to_string())),
            Action::RemoveTeamUser { .. } => events.push(EngineEvent::normal(events::TEAM_LEFT, action.to_string())),
        }
    }
    if roles_changed {
        events.push(EngineEvent::normal(
            events::ORG_ROLES_CHANGED,
            format!("{} now has org roles {}", input.spec.username, roles_text(fresh)),
        ));
    }
    failure_events(&plan.plan, outcomes, &mut events);
    events
}

/// Mark a pending invitation that lapses within `window`: the `InvitationExpiringSoon`
/// condition on the status, and a Warning event the first time for that invitation.
pub fn flag_expiring_invitation(
    report: &mut OrgUserReport,
    previous: Option<&AtlasOrgUserStatus>,
    now: Timestamp,
    window: Duration,
) {
    let Some((condition, news)) =
        crate::reconcile::audit::invitation_expiry_condition(&report.status, previous, now, window)
    else {
        return;
    };
    if news {
        report.events.push(EngineEvent::warning(events::INVITATION_EXPIRING_SOON, condition.message.clone()));
    }
    report.status.conditions.push(condition);
}

/// Observe, plan, (in [`Mode::Apply`]) execute, and build the status of one AtlasOrgUser,
/// with the ownership record held in memory only ([`InMemory`]: the one-shot CLI, whose
/// statuses live for the run). See [`reconcile_org_user_recorded`].
pub async fn reconcile_org_user(
    client: &AtlasClient,
    index: &OrgUserIndex,
    object: &AtlasOrgUser,
    rivals: &[Claim],
    mode: Mode,
    now: Timestamp,
) -> Result<OrgUserReport, AtlasError> {
    reconcile_org_user_recorded(client, index, object, rivals, mode, now, &InMemory).await
}

/// One round: plan from `input`, persist the ownership record first when the plan grants
/// something new (nothing is sent if that fails), execute.
struct Round {
    plan: OrgUserPlan,
    outcomes: Vec<ActionOutcome>,
    mine: OrgUserDirectory,
    unrecorded: Option<String>,
}

async fn org_user_round(
    client: &AtlasClient,
    index: &OrgUserIndex,
    input: &OrgUserInput<'_>,
    mode: Mode,
    recorder: &impl PersistIntent<AtlasOrgUserStatus>,
) -> Round {
    let plan = plan_org_user(input);
    // This user's record, kept up to date with what the calls return.
    let mut mine = OrgUserDirectory::new(input.observed.cloned());
    if mode == Mode::PlanOnly || plan.plan.actions.is_empty() {
        return Round { plan, outcomes: Vec::new(), mine, unrecorded: None };
    }
    if plan.record_first {
        let intent =
            AtlasOrgUserStatus { granted: plan.granted.clone(), ..input.previous.cloned().unwrap_or_default() };
        if let Err(why) = recorder.persist_intent(&intent).await.map_err(|e| e.0) {
            let outcomes = plan.plan.actions.iter().map(|_| ActionOutcome::Skipped).collect();
            return Round { plan, outcomes, mine, unrecorded: Some(why) };
        }
    }
    let asked_by = input.claim.to_string();
    let outcomes = execute_observed(client, &plan.plan, |action, outcome, existing| {
        notices::audit("AtlasOrgUser", &asked_by, action, outcome);
        index.apply(client, org_of(action), action, outcome);
        mine.apply(action, outcome);
        if let Some(user) = existing {
            index.upsert(client, org_of(action), user);
            mine.upsert(user.clone());
        }
    })
    .await;
    Round { plan, outcomes, mine, unrecorded: None }
}

/// Observe, plan, (in [`Mode::Apply`]) execute, and build the status of one AtlasOrgUser.
/// `rivals` are the other live objects claiming the same (orgId, username). Before the
/// first call of a plan that grants a project or team not yet recorded, `recorder` persists
/// the new ownership record (`status.granted`); if it fails nothing is sent and the report's
/// `unrecorded` says why. An answer contradicting the cached listing (a 404) invalidates the
/// organization's listing, and the object is planned and executed once more from a fresh
/// read, so a condition says `Stalled` only about what a fresh read confirms. `Err` means no
/// plan could be made (the organization's users could not be listed).
pub async fn reconcile_org_user_recorded(
    client: &AtlasClient,
    index: &OrgUserIndex,
    object: &AtlasOrgUser,
    rivals: &[Claim],
    mode: Mode,
    now: Timestamp,
    recorder: &impl PersistIntent<AtlasOrgUserStatus>,
) -> Result<OrgUserReport, AtlasError> {
    let org_id = object.spec.org_id.as_str();
    let directory = index.shared_directory(client, org_id).await?;
    let first_input = OrgUserInput::from_object(object, &directory, rivals, now);
    let first = org_user_round(client, index, &first_input, mode, recorder).await;
    if !contradicts_observation(&first.outcomes) {
        return Ok(org_user_report(&first_input, first, mode, Vec::new()));
    }
    index.invalidate(org_id);
    let fresh_directory = index.shared_directory(client, org_id).await?;
    // What the first round did is part of what happened; its record carries over.
    let mut events = org_user_events(&first_input, &first.plan, &first.outcomes, first.mine.get(&object.spec.username));
    events.push(EngineEvent::normal(
        events::REOBSERVED,
        format!("an answer contradicted the cached listing of org {org_id}: listed it again and planned anew"),
    ));
    let first_status =
        org_user_status(&first_input, &first.plan, &first.outcomes, first.mine.get(&object.spec.username));
    let carried = AtlasOrgUserStatus {
        granted: first_status.granted,
        adopted: first_status.adopted,
        ..object.status.clone().unwrap_or_default()
    };
    let input = OrgUserInput {
        previous: Some(&carried),
        observed: fresh_directory.get(&object.spec.username),
        observed_fresh: true,
        ..first_input.clone()
    };
    let second = org_user_round(client, index, &input, mode, recorder).await;
    Ok(org_user_report(&input, second, mode, events))
}

fn org_user_report(input: &OrgUserInput, round: Round, mode: Mode, mut events: Vec<EngineEvent>) -> OrgUserReport {
    let Round { plan, outcomes, mine, unrecorded } = round;
    let fresh = mine.get(&input.spec.username);
    let status = org_user_status(input, &plan, &outcomes, fresh);
    events.extend(org_user_events(input, &plan, &outcomes, fresh));
    if let Some(previous) = input.previous
        && !plan.plan.deleting
        && notices::was_in_sync(&previous.conditions, previous.observed_generation, input.generation)
    {
        let drift = notices::org_user_drift(input.spec, input.observed, &plan.plan.actions, &outcomes);
        notices::fold_drift(&mut events, drift);
    }
    let previous_conditions = input.previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    events.extend(notices::condition_warning(previous_conditions, &status.conditions));
    if let Some(why) = &unrecorded {
        events.push(EngineEvent::warning(
            events::OWNERSHIP_NOT_RECORDED,
            format!("nothing was sent to Atlas: the ownership record could not be written first: {why}"),
        ));
    }
    OrgUserReport {
        finalizer_may_be_removed: mode == Mode::Apply
            && unrecorded.is_none()
            && plan.plan.finalizer_may_be_removed(&outcomes),
        requeue_after: earliest_retry(&outcomes),
        plan,
        outcomes,
        status,
        events,
        unrecorded,
    }
}

fn team_events(plan: &TeamPlan, outcomes: &[ActionOutcome], team: Option<&ObservedTeam>) -> Vec<EngineEvent> {
    let team_name = team.map(|t| t.name.as_str()).unwrap_or_default();
    let mut events = Vec::new();
    for (action, outcome) in plan.plan.actions.iter().zip(outcomes) {
        if !matches!(outcome, ActionOutcome::Done(_)) {
            continue;
        }
        match action {
            Action::AddTeamUser { username, user_id, .. } => events.push(EngineEvent::normal(
                events::MEMBER_ADDED,
                format!("team {team_name}: added {username} ({user_id})"),
            )),
            Action::RemoveTeamUser { username, user_id, .. } => events.push(EngineEvent::normal(
                events::MEMBER_REMOVED,
                format!("team {team_name}: removed {username} ({user_id})"),
            )),
            _ => {}
        }
    }
    failure_events(&plan.plan, outcomes, &mut events);
    events
}

/// The team an AtlasTeamMembership manages: the one pinned in `status.teamId` once
/// resolved, else what `spec.team` names.
pub async fn observe_pinned_team(
    client: &AtlasClient,
    index: &OrgUserIndex,
    object: &AtlasTeamMembership,
) -> Result<Option<ObservedTeam>, AtlasError> {
    let org_id = object.spec.org_id.as_str();
    match object.status.as_ref().and_then(|s| s.team_id.clone()) {
        Some(id) => observe_team_indexed(client, index, org_id, &TeamRef { id: Some(id), name: None }).await,
        None => observe_team_indexed(client, index, org_id, &object.spec.team).await,
    }
}

/// Direct reads of the recorded users the team listing did not show: user id -> whether
/// Atlas has them in the team (a user gone from the organization is not).
pub async fn read_recorded_members(
    client: &AtlasClient,
    object: &AtlasTeamMembership,
    team: &ObservedTeam,
) -> Result<BTreeMap<String, bool>, AtlasError> {
    let Some(status) = object.status.as_ref() else { return Ok(BTreeMap::new()) };
    if status.team_id.as_deref().is_some_and(|pinned| pinned != team.id) {
        return Ok(BTreeMap::new());
    }
    let mut reads = BTreeMap::new();
    for entry in status.added_members.iter().filter(|a| !team.contains(&a.user_id)) {
        let in_team = match client.get_org_user(&object.spec.org_id, &entry.user_id).await {
            Ok(user) => user.team_ids.contains(&team.id),
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(e),
        };
        reads.insert(entry.user_id.clone(), in_team);
    }
    Ok(reads)
}

/// Observe, plan, (in [`Mode::Apply`]) persist the write-ahead record through `intent`,
/// execute, and build the status of one AtlasTeamMembership. `Err` means no plan could be
/// made (users or team could not be read) or the record could not be persisted (nothing
/// was sent).
pub async fn reconcile_team_membership(
    client: &AtlasClient,
    index: &OrgUserIndex,
    object: &AtlasTeamMembership,
    around: &TeamSurroundings,
    mode: Mode,
    now: Timestamp,
    intent: &impl PersistIntent<AtlasTeamMembershipStatus>,
) -> Result<TeamReport, EngineError> {
    let org_id = object.spec.org_id.as_str();
    let directory = index.shared_directory(client, org_id).await?;
    let team = observe_pinned_team(client, index, object).await?;
    let direct_reads = match &team {
        Some(team) => read_recorded_members(client, object, team).await?,
        None => BTreeMap::new(),
    };
    let input = TeamInput::from_object(
        object,
        team.as_ref(),
        &directory,
        &around.org_user_refs,
        &direct_reads,
        &around.writers,
        now,
    );
    let plan = plan_team_membership(&input);
    let mut fresh_team = team.clone();
    let asked_by = driver::display_name(&object.metadata);
    let (outcomes, fresh_directory) = if mode == Mode::Apply && !plan.plan.actions.is_empty() {
        if let Some(record) = team_intent(&input, &plan) {
            intent.persist_intent(&record).await?;
        }
        let mut fresh_directory = directory.as_ref().clone();
        let outcomes = execute_observed(client, &plan.plan, |action, outcome, _| {
            notices::audit("AtlasTeamMembership", &asked_by, action, outcome);
            index.apply(client, org_of(action), action, outcome);
            fresh_directory.apply(action, outcome);
            if let Some(team) = fresh_team.as_mut() {
                team.apply(action, outcome);
            }
        })
        .await;
        (outcomes, std::borrow::Cow::Owned(fresh_directory))
    } else {
        (Vec::new(), std::borrow::Cow::Borrowed(directory.as_ref()))
    };
    let status = team_membership_status(&input, &plan, &outcomes, &fresh_directory, fresh_team.as_ref());
    let mut events = team_events(&plan, &outcomes, fresh_team.as_ref().or(team.as_ref()));
    if let Some(previous) = input.previous
        && !plan.plan.deleting
        && notices::was_in_sync(&previous.conditions, previous.observed_generation, input.generation)
    {
        let name = fresh_team.as_ref().or(team.as_ref()).map(|t| t.name.clone()).unwrap_or_default();
        notices::fold_drift(&mut events, notices::team_drift(&name, &plan.plan.actions, &outcomes));
    }
    let previous_conditions = input.previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    events.extend(notices::condition_warning(previous_conditions, &status.conditions));
    Ok(TeamReport {
        finalizer_may_be_removed: mode == Mode::Apply && plan.plan.finalizer_may_be_removed(&outcomes),
        requeue_after: earliest_retry(&outcomes),
        plan,
        outcomes,
        status,
        events,
        unrecorded: None,
    })
}
