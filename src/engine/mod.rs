//! The IO edge shared by the one-shot CLI and the controller: observe Atlas (through the
//! per-org [`OrgUserIndex`] and the team member listing), plan with [`crate::reconcile`],
//! have the caller persist the write-ahead record ([`PersistIntent`]), execute the plan
//! through the [`AtlasClient`], and build the status from what Atlas answered. Kubernetes is
//! not touched here: callers write the status, events and finalizers.

pub mod driver;
pub mod index;
pub mod intent;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::api::conditions::HasConditions;
use crate::api::{AtlasOrgUser, AtlasOrgUserStatus, AtlasTeamMembership, AtlasTeamMembershipStatus, TeamRef};
use crate::atlas::models::{MembershipStatus, OrgUser, Team, codes};
use crate::atlas::{AtlasClient, AtlasError};
use crate::reconcile::{
    Action, ActionError, ActionOutcome, Claim, ErrorClass, FailureMode, ObservedTeam, OrgUserDirectory, OrgUserInput,
    OrgUserPlan, Plan, TeamInput, TeamPlan, TeamWriter, org_user_status, plan_org_user, plan_team_membership,
    team_intent, team_membership_status,
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
    /// AtlasOrgUser names of the object's namespace -> their usernames (for `orgUserRef`).
    pub org_user_refs: BTreeMap<String, String>,
    /// Every other object writing teams of the object's organization.
    pub writers: Vec<TeamWriter>,
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
        // AtlasOrgUser name -> username, per namespace: one scan of the org users.
        let mut refs: std::collections::HashMap<Option<String>, BTreeMap<String, String>> = Default::default();
        for u in org_users.clone() {
            refs.entry(u.metadata.namespace.clone())
                .or_default()
                .insert(u.metadata.name.clone().unwrap_or_default(), u.spec.username.clone());
        }
        let no_refs = BTreeMap::new();
        let refs_in = |namespace: &Option<String>| refs.get(namespace).unwrap_or(&no_refs);
        let org_id = &object.spec.org_id;
        let me = Claim::of(&object.metadata);
        let mut writers: Vec<TeamWriter> = teams
            .into_iter()
            .filter(|t| t.spec.org_id == *org_id && Claim::of(&t.metadata) != me)
            .map(|t| TeamWriter::of_team_membership(t, refs_in(&t.metadata.namespace)))
            .collect();
        writers.extend(
            org_users
                .clone()
                .into_iter()
                .filter(|u| u.spec.org_id == *org_id && u.metadata.deletion_timestamp.is_none())
                .flat_map(TeamWriter::of_org_user),
        );
        Self { org_user_refs: refs_in(&object.metadata.namespace).clone(), writers }
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
    pub const MEMBER_ADDED: &str = "MemberAdded";
    pub const MEMBER_REMOVED: &str = "MemberRemoved";
    pub const USER_REMOVED: &str = "UserRemoved";
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
        Action::UpdateOrgUser { org_id, user_id, request, .. } => {
            done(client.update_org_user(org_id, user_id, request).await)
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
        | Action::UpdateOrgUser { org_id, .. }
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
    if let Some(known) = team_key(team).filter(|_| team.id.is_some()).and_then(|key| index.team(org_id, &key)) {
        match members_of(client, org_id, known.clone()).await? {
            Some(observed) => return Ok(Some(observed)),
            // Deleted, or (by name) replaced: look it up again.
            None => index.forget_team(org_id, &known),
        }
    }
    let Some(found) = lookup_team(client, org_id, team).await? else { return Ok(None) };
    index.remember_team(org_id, &found);
    members_of(client, org_id, found).await
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
            Action::UpdateOrgUser { .. } => {
                events.push(EngineEvent::normal(events::PROJECT_ROLES_CHANGED, action.to_string()))
            }
            Action::AddTeamUser { username, team_id, .. } => {
                events.push(EngineEvent::normal(events::TEAM_JOINED, format!("{username} joined team {team_id}")))
            }
            Action::RemoveOrgUser { .. } => events.push(EngineEvent::normal(events::USER_REMOVED, action.to_string())),
            Action::RemoveTeamUser { .. } => {
                events.push(EngineEvent::normal(events::MEMBER_REMOVED, action.to_string()))
            }
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

/// Observe, plan, (in [`Mode::Apply``]) execute, and build the status of one AtlasOrgUser.
/// `rivals` are the other live objects claiming the same (orgId, username). `Err` means no
/// plan could be made (the organization's users could not be listed).
pub async fn reconcile_org_user(
    client: &AtlasClient,
    index: &OrgUserIndex,
    object: &AtlasOrgUser,
    rivals: &[Claim],
    mode: Mode,
    now: Timestamp,
) -> Result<OrgUserReport, AtlasError> {
    let org_id = object.spec.org_id.as_str();
    let directory = index.shared_directory(client, org_id).await?;
    let input = OrgUserInput::from_object(object, &directory, rivals, now);
    let plan = plan_org_user(&input);
    // This user's record, kept up to date with what the calls return.
    let mut mine = OrgUserDirectory::new(input.observed.cloned());
    let outcomes = match mode {
        Mode::PlanOnly => Vec::new(),
        Mode::Apply => {
            execute_observed(client, &plan.plan, |action, outcome, existing| {
                index.apply(org_of(action), action, outcome);
                mine.apply(action, outcome);
                if let Some(user) = existing {
                    index.upsert(org_of(action), user);
                    mine.upsert(user.clone());
                }
            })
            .await
        }
    };
    let fresh = mine.get(&object.spec.username);
    let status = org_user_status(&input, &plan, &outcomes, fresh);
    let events = org_user_events(&input, &plan, &outcomes, fresh);
    Ok(OrgUserReport {
        finalizer_may_be_removed: mode == Mode::Apply && plan.plan.finalizer_may_be_removed(&outcomes),
        requeue_after: earliest_retry(&outcomes),
        plan,
        outcomes,
        status,
        events,
    })
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
    let (outcomes, fresh_directory) = if mode == Mode::Apply && !plan.plan.actions.is_empty() {
        if let Some(record) = team_intent(&input, &plan) {
            intent.persist_intent(&record).await?;
        }
        let mut fresh_directory = directory.as_ref().clone();
        let outcomes = execute_observed(client, &plan.plan, |action, outcome, _| {
            index.apply(org_of(action), action, outcome);
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
    let events = team_events(&plan, &outcomes, fresh_team.as_ref().or(team.as_ref()));
    Ok(TeamReport {
        finalizer_may_be_removed: mode == Mode::Apply && plan.plan.finalizer_may_be_removed(&outcomes),
        requeue_after: earliest_retry(&outcomes),
        plan,
        outcomes,
        status,
        events,
    })
}
