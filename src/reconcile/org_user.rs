//! AtlasOrgUser: invite, adopt, re-invite, converge roles and teams, take away what the
//! object granted once it leaves the spec, delete.
//!
//! Ownership is written ahead: the plan's [`OrgUserPlan::granted`] is what the object holds
//! once its grants are sent (every project and team it is about to give the user); the
//! executor persists it before the first call (the engine's `IntentRecorder`) and
//! sends nothing when that write fails, so a restart never forgets a grant it made.

use std::collections::BTreeSet;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

use super::action::{Action, FailureMode, RemovalPurpose};
use super::directory::OrgUserDirectory;
use super::outcome::{ActionOutcome, ErrorClass, Settled, first_failure, settle};
use super::{Claim, Hold, Plan, paused_condition, reasons};
use crate::api::conditions::{self, DesiredCondition};
use crate::api::{
    AdoptedDeletionPolicy, AtlasOrgUser, AtlasOrgUserSpec, AtlasOrgUserStatus, DeletionEffect, DeletionPolicy,
    GrantedAccess, ObservedProjectRoles, OrgRole, ProjectRole, ReinvitePolicy, UnlistedAccess,
};
use crate::atlas::models::{GroupRoleAssignment, MembershipStatus, OrgUser, OrgUserRequest, OrgUserRoles};

/// Everything the org-user planner looks at.
#[derive(Clone, Debug)]
pub struct OrgUserInput<'a> {
    /// This object.
    pub claim: Claim,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    pub spec: &'a AtlasOrgUserSpec,
    /// The status written last time (adoption and condition times carry over).
    pub previous: Option<&'a AtlasOrgUserStatus>,
    /// The pause annotation is set.
    pub paused: bool,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// What Atlas reports for `spec.username` in `spec.orgId` (any membership status).
    pub observed: Option<&'a OrgUser>,
    /// Other live objects claiming the same (orgId, username).
    pub rivals: &'a [Claim],
    pub now: Timestamp,
    /// `observed` comes from a listing made for this very reconcile (after a write met an
    /// answer contradicting the cached one), not from the shared, possibly older, listing.
    /// Only then does a 404 make the object `Stalled`.
    pub observed_fresh: bool,
}

impl<'a> OrgUserInput<'a> {
    /// The input for a stored object, looking its user up in the org's directory.
    pub fn from_object(
        object: &'a AtlasOrgUser,
        directory: &'a OrgUserDirectory,
        rivals: &'a [Claim],
        now: Timestamp,
    ) -> Self {
        let meta = &object.metadata;
        Self {
            claim: Claim::of(meta),
            generation: meta.generation,
            spec: &object.spec,
            previous: object.status.as_ref(),
            paused: crate::api::is_paused(meta),
            deleting: meta.deletion_timestamp.is_some(),
            observed: directory.get(&object.spec.username),
            rivals,
            now,
            observed_fresh: false,
        }
    }

    fn with_observed(&self, observed: Option<&'a OrgUser>) -> Self {
        Self { observed, ..self.clone() }
    }
}

/// The plan for one AtlasOrgUser.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrgUserPlan {
    #[serde(flatten)]
    pub plan: Plan,
    /// `status.adopted` as this plan decides it (None: not decided yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted: Option<bool>,
    /// What the object holds once this plan's grants are sent: the previous record plus every
    /// project and team the plan gives the user. Written before the first call.
    pub granted: GrantedAccess,
    /// `granted` differs from the record in the status: the executor must persist it before
    /// any call (and make none if that fails).
    pub record_first: bool,
    /// What deleting the object would do in Atlas now.
    pub on_deletion: DeletionEffect,
    /// `status.reinvitations` once this plan's invitation (if any) is sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reinvitations: Option<u32>,
}

impl OrgUserPlan {
    /// What deleting the object would do, in a sentence (the `plan` output).
    pub fn on_deletion_text(&self) -> &'static str {
        match self.on_deletion {
            DeletionEffect::RemoveUser => "RemoveUser (deletionPolicy Delete: this object invited the user)",
            DeletionEffect::CancelInvitation => {
                "CancelInvitation (deletionPolicy Delete: the pending invitation is cancelled)"
            }
            DeletionEffect::LeaveInAtlas => {
                "LeaveInAtlas (Orphan, an adopted user kept by adoptedDeletionPolicy Orphan, or nobody to remove)"
            }
        }
    }
}

/// The first wait after a rejected invitation before it is sent again (generation unchanged).
pub const REINVITE_BACKOFF_BASE: std::time::Duration = std::time::Duration::from_secs(3600);
/// The longest wait between re-invitations after rejections.
pub const REINVITE_BACKOFF_CAP: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// How long after the rejected invitation was sent the next one may go, when `sent` rejected
/// invitations were already re-sent for this generation: 1 h, 4 h, 16 h, 64 h, then 7 days.
pub fn reinvite_backoff(sent: u32) -> std::time::Duration {
    let factor = 4u64.saturating_pow(sent.min(8));
    REINVITE_BACKOFF_BASE.saturating_mul(factor.min(u32::MAX as u64) as u32).min(REINVITE_BACKOFF_CAP)
}

/// Spec org roles as Atlas names them, in spec order, without duplicates.
fn desired_org_roles(spec: &AtlasOrgUserSpec) -> Vec<String> {
    let mut seen = BTreeSet::new();
    spec.org_roles.iter().filter(|r| seen.insert(**r)).map(|r| r.as_str().to_string()).collect()
}

fn desired_team_ids(spec: &AtlasOrgUserSpec) -> Vec<String> {
    let mut seen = BTreeSet::new();
    spec.team_ids.iter().filter(|t| seen.insert(t.as_str())).cloned().collect()
}

/// Spec project roles as Atlas's assignments, in spec order.
fn desired_assignments(spec: &AtlasOrgUserSpec) -> Vec<GroupRoleAssignment> {
    spec.project_roles
        .iter()
        .map(|p| {
            let mut seen = BTreeSet::new();
            GroupRoleAssignment {
                group_id: Some(p.project_id.clone()),
                group_roles: p.roles.iter().filter(|r| seen.insert(**r)).map(|r| r.as_str().to_string()).collect(),
            }
        })
        .collect()
}

fn observed_project_roles<'u>(user: &'u OrgUser, project_id: &str) -> BTreeSet<&'u str> {
    user.roles
        .group_role_assignments
        .iter()
        .filter(|a| a.group_id.as_deref() == Some(project_id))
        .flat_map(|a| a.group_roles.iter().map(String::as_str))
        .collect()
}

/// Projects in which Atlas reports the user with at least one role.
fn observed_projects(user: &OrgUser) -> BTreeSet<&str> {
    user.roles
        .group_role_assignments
        .iter()
        .filter(|a| !a.group_roles.is_empty())
        .filter_map(|a| a.group_id.as_deref())
        .collect()
}

/// Role values Atlas reports that this operator does not know (a role Atlas added later):
/// never removed, reported instead.
fn unknown_roles(user: &OrgUser) -> Vec<String> {
    let mut unknown: Vec<String> =
        user.roles.org_roles.iter().filter(|r| r.parse::<OrgRole>().is_err()).cloned().collect();
    for a in &user.roles.group_role_assignments {
        for role in a.group_roles.iter().filter(|r| r.parse::<ProjectRole>().is_err()) {
            unknown.push(format!("{role} (project {})", a.group_id.as_deref().unwrap_or("?")));
        }
    }
    unknown
}

fn parse_time(s: Option<&str>) -> Option<Timestamp> {
    s.and_then(|s| s.parse().ok())
}

/// A PENDING invitation whose expiry has passed: Atlas may not have flipped it yet.
fn lapsed_pending(user: &OrgUser, now: Timestamp) -> bool {
    user.org_membership_status == MembershipStatus::Pending
        && parse_time(user.invitation_expires_at.as_deref()).is_some_and(|at| at <= now)
}

fn invite(spec: &AtlasOrgUserSpec, reissues: Option<MembershipStatus>) -> Action {
    Action::CreateOrgUser {
        org_id: spec.org_id.clone(),
        request: OrgUserRequest {
            username: spec.username.clone(),
            roles: OrgUserRoles {
                org_roles: desired_org_roles(spec),
                group_role_assignments: desired_assignments(spec),
            },
            team_ids: desired_team_ids(spec),
        },
        reissues,
    }
}

/// A PENDING invitation sent after this object was created is this object's own, seen again
/// because the status that recorded it was lost (a failed write, a restart): not an adoption.
fn own_invitation(input: &OrgUserInput, user: &OrgUser) -> bool {
    let invited = user.invitation_created_at.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
    user.org_membership_status == MembershipStatus::Pending
        && matches!((input.claim.created, invited), (Some(created), Some(invited)) if invited >= created)
}

fn previous_granted(input: &OrgUserInput) -> GrantedAccess {
    input.previous.map(|s| s.granted.clone()).unwrap_or_default()
}

/// The record once an invitation carrying every listed project and team is sent.
fn granted_by_invitation(input: &OrgUserInput) -> GrantedAccess {
    let mut granted = previous_granted(input);
    for a in desired_assignments(input.spec) {
        let project_id = a.group_id.clone().unwrap_or_default();
        record_project(&mut granted, &project_id, &a.group_roles);
    }
    for team_id in desired_team_ids(input.spec) {
        record_team(&mut granted, &team_id);
    }
    granted
}

fn record_project(granted: &mut GrantedAccess, project_id: &str, roles: &[String]) {
    let mut roles = roles.to_vec();
    roles.sort();
    match granted.projects.iter_mut().find(|p| p.project_id == project_id) {
        Some(p) => p.roles = roles,
        None => granted.projects.push(ObservedProjectRoles { project_id: project_id.to_string(), roles }),
    }
    granted.projects.sort_by(|a, b| a.project_id.cmp(&b.project_id));
}

fn record_team(granted: &mut GrantedAccess, team_id: &str) {
    if !granted.has_team(team_id) {
        granted.team_ids.push(team_id.to_string());
        granted.team_ids.sort();
    }
}

/// Whether `record` holds a project (or project role) or team that `previous` does not: only
/// then must it be written before the calls (taking away needs no record first).
fn adds_to(record: &GrantedAccess, previous: &GrantedAccess) -> bool {
    let project_added = record.projects.iter().any(|p| {
        previous
            .projects
            .iter()
            .find(|q| q.project_id == p.project_id)
            .is_none_or(|q| p.roles.iter().any(|r| !q.roles.contains(r)))
    });
    project_added || record.team_ids.iter().any(|t| !previous.has_team(t))
}

/// What deleting the object does, given the adoption decision and what Atlas reports.
fn deletion_effect(spec: &AtlasOrgUserSpec, adopted: Option<bool>, user: Option<&OrgUser>) -> DeletionEffect {
    let keeps_adopted = adopted != Some(false) && spec.adopted_deletion_policy == AdoptedDeletionPolicy::Orphan;
    match user {
        _ if spec.deletion_policy == Some(DeletionPolicy::Orphan) => DeletionEffect::LeaveInAtlas,
        Some(u) if u.org_membership_status.is_in_org() && keeps_adopted => DeletionEffect::LeaveInAtlas,
        Some(u) if u.org_membership_status == MembershipStatus::Active => DeletionEffect::RemoveUser,
        Some(u) if u.org_membership_status == MembershipStatus::Pending => DeletionEffect::CancelInvitation,
        _ => DeletionEffect::LeaveInAtlas,
    }
}

/// Plan one AtlasOrgUser.
pub fn plan_org_user(input: &OrgUserInput) -> OrgUserPlan {
    let spec = input.spec;
    let previous_adopted = input.previous.and_then(|s| s.adopted);
    let previous_reinvitations = input.previous.and_then(|s| s.reinvitations);
    let finish = |plan: Plan, adopted: Option<bool>, granted: GrantedAccess, reinvitations: Option<u32>| {
        let record_first = !plan.actions.is_empty() && adds_to(&granted, &previous_granted(input));
        OrgUserPlan {
            on_deletion: deletion_effect(spec, adopted, input.observed),
            plan,
            adopted,
            granted,
            record_first,
            reinvitations,
        }
    };
    let held = |hold| {
        finish(
            Plan::held(FailureMode::Sequential, input.deleting, hold),
            previous_adopted,
            previous_granted(input),
            previous_reinvitations,
        )
    };
    let owner = input.claim.owner(input.rivals);
    if *owner != input.claim {
        if input.deleting {
            // The owner still manages the user: nothing to clean up.
            let mut plan = Plan::new(FailureMode::Sequential, true);
            plan.notes.push(format!(
                "{} manages this Atlas user; deleting this object leaves it alone",
                owner.seen_from(&input.claim)
            ));
            return finish(plan, previous_adopted, previous_granted(input), previous_reinvitations);
        }
        return held(Hold::Conflict { owner: owner.seen_from(&input.claim) });
    }
    if input.paused {
        return held(Hold::Paused);
    }
    if input.deleting {
        let adopted = previous_adopted.or_else(|| input.observed.map(|u| !own_invitation(input, u)));
        return finish(plan_deletion(input, adopted), adopted, previous_granted(input), previous_reinvitations);
    }
    if spec.org_roles.is_empty() {
        return held(Hold::InvalidSpec { message: "orgRoles is empty: a user needs at least one org role".into() });
    }

    let mut plan = Plan::new(FailureMode::Sequential, false);
    let Some(user) = input.observed else {
        plan.actions.push(invite(spec, None));
        return finish(plan, Some(previous_adopted.unwrap_or(false)), granted_by_invitation(input), None);
    };
    // A PENDING invitation past its expiry is an expired one that Atlas has not flipped yet.
    let lapsed = lapsed_pending(user, input.now);
    let effective = if lapsed { MembershipStatus::InvitationExpired } else { user.org_membership_status };
    match effective {
        MembershipStatus::Unknown => held(Hold::UnknownMembershipStatus { username: user.username.clone() }),
        MembershipStatus::InvitationExpired => {
            if spec.reinvite == ReinvitePolicy::Never {
                return held(Hold::InvitationExpired {
                    username: spec.username.clone(),
                    expired_at: user.invitation_expires_at.clone(),
                });
            }
            if lapsed {
                // createOrgUser answers 409 while Atlas lists a PENDING user: cancel it first.
                plan.actions.push(Action::RemoveOrgUser {
                    org_id: spec.org_id.clone(),
                    user_id: user.id.clone(),
                    username: user.username.clone(),
                    membership_status: user.org_membership_status,
                    purpose: RemovalPurpose::CancelExpiredInvitation,
                });
            }
            plan.actions.push(invite(spec, Some(MembershipStatus::InvitationExpired)));
            finish(plan, Some(previous_adopted.unwrap_or(false)), granted_by_invitation(input), previous_reinvitations)
        }
        MembershipStatus::InvitationRejected => {
            if spec.reinvite != ReinvitePolicy::OnExpiryOrRejection {
                return held(Hold::InvitationRejected { username: spec.username.clone() });
            }
            // After a rejection: at once when the spec changed since the rejected invitation,
            // otherwise after a capped backoff from when that invitation was sent.
            let invited_generation = input.previous.and_then(|s| s.invited_generation);
            let spec_changed = matches!((invited_generation, input.generation), (Some(sent), Some(now)) if sent != now);
            let sent = previous_reinvitations.unwrap_or(0);
            let reinvitations = if spec_changed { 0 } else { sent + 1 };
            if !spec_changed && let Some(invited) = parse_time(user.invitation_created_at.as_deref()) {
                let wait = reinvite_backoff(sent);
                let due = invited
                    .checked_add(jiff::SignedDuration::try_from(wait).unwrap_or(jiff::SignedDuration::MAX))
                    .unwrap_or(Timestamp::MAX);
                if input.now < due {
                    return held(Hold::ReinviteBackoff {
                        username: spec.username.clone(),
                        at: due.to_string(),
                        reinvitations: sent,
                    });
                }
            }
            plan.actions.push(invite(spec, Some(MembershipStatus::InvitationRejected)));
            finish(plan, Some(previous_adopted.unwrap_or(false)), granted_by_invitation(input), Some(reinvitations))
        }
        MembershipStatus::Pending | MembershipStatus::Active => {
            let adopted = previous_adopted.unwrap_or_else(|| !own_invitation(input, user));
            if adopted && previous_adopted.is_none() {
                plan.notes.push(format!(
                    "{} is already {} in org {}: adopted, not invited",
                    user.username,
                    user.org_membership_status.as_str(),
                    spec.org_id
                ));
            }
            let unknown = unknown_roles(user);
            if !unknown.is_empty() {
                plan.notes.push(format!(
                    "Atlas reports roles this operator does not know, left as they are: {}",
                    unknown.join(", ")
                ));
            }
            let mut granted = previous_granted(input);
            converge(input, user, &mut plan, &mut granted);
            let reinvitations =
                if user.org_membership_status == MembershipStatus::Active { None } else { previous_reinvitations };
            finish(plan, Some(adopted), granted, reinvitations)
        }
    }
}

/// Roles and teams of a user who is in the org, all atomic calls:
/// 1. org roles one at a time (additions before removals, ORG_OWNER removed last, so the user
///    never has zero roles and an org keeps an owner as long as possible);
/// 2. per listed project, `:addRole` then `:removeRole` (the user keeps a role there);
/// 3. projects this object granted that left the spec (all unlisted ones with
///    `unlistedAccess: Remove`) lose the user (`removeGroupUser`);
/// 4. `:addUser` per missing team, then `:removeUser` for teams taken away the same way.
///
/// Role values this operator does not know are never removed. `granted` gets every project
/// and team the plan gives the user, and loses those that are gone already.
fn converge(input: &OrgUserInput, user: &OrgUser, plan: &mut Plan, granted: &mut GrantedAccess) {
    let spec = input.spec;
    let actions = &mut plan.actions;
    let ids = |role: &str| (spec.org_id.clone(), user.id.clone(), user.username.clone(), role.to_string());
    let desired = desired_org_roles(spec);
    let observed = &user.roles.org_roles;
    for role in desired.iter().filter(|r| !observed.contains(r)) {
        let (org_id, user_id, username, role) = ids(role);
        actions.push(Action::AddOrgRole { org_id, user_id, username, role });
    }
    let mut removals: Vec<&String> =
        observed.iter().filter(|r| !desired.contains(r) && r.parse::<OrgRole>().is_ok()).collect();
    removals.sort_by_key(|r| r.as_str() == OrgRole::OrgOwner.as_str());
    for role in removals {
        let (org_id, user_id, username, role) = ids(role);
        actions.push(Action::RemoveOrgRole { org_id, user_id, username, role });
    }

    let project_call = |project_id: &str, role: &str| {
        (spec.org_id.clone(), project_id.to_string(), user.id.clone(), user.username.clone(), role.to_string())
    };
    let wanted = desired_assignments(spec);
    let listed: BTreeSet<&str> = wanted.iter().filter_map(|a| a.group_id.as_deref()).collect();
    for a in &wanted {
        let project = a.group_id.as_deref().unwrap_or_default();
        let have = observed_project_roles(user, project);
        let want: BTreeSet<&str> = a.group_roles.iter().map(String::as_str).collect();
        // A project the user is not in yet is one this object gives them.
        if have.is_empty() || granted.has_project(project) {
            record_project(granted, project, &a.group_roles);
        }
        for role in want.iter().filter(|r| !have.contains(*r)) {
            let (org_id, project_id, user_id, username, role) = project_call(project, role);
            actions.push(Action::AddProjectRole { org_id, project_id, user_id, username, role });
        }
        for role in have.iter().filter(|r| !want.contains(*r) && r.parse::<ProjectRole>().is_ok()) {
            let (org_id, project_id, user_id, username, role) = project_call(project, role);
            actions.push(Action::RemoveProjectRole { org_id, project_id, user_id, username, role });
        }
    }
    let in_projects = observed_projects(user);
    let mut revoked_projects: Vec<String> =
        granted.projects.iter().map(|p| p.project_id.clone()).filter(|p| !listed.contains(p.as_str())).collect();
    if spec.unlisted_access == UnlistedAccess::Remove {
        revoked_projects.extend(in_projects.iter().filter(|p| !listed.contains(**p)).map(|p| p.to_string()));
    }
    revoked_projects.sort();
    revoked_projects.dedup();
    for project_id in revoked_projects {
        if in_projects.contains(project_id.as_str()) {
            actions.push(Action::RemoveProjectUser {
                org_id: spec.org_id.clone(),
                project_id,
                user_id: user.id.clone(),
                username: user.username.clone(),
            });
        } else {
            // Already gone (someone else took it away): nothing left to take.
            granted.projects.retain(|p| p.project_id != project_id);
        }
    }

    // `:addUser` per team rather than PATCH teamIds: a PATCH sends the whole list, so one
    // computed from a stale read could put the user back into a team an Exclusive
    // AtlasTeamMembership (or a person) just removed them from; `:addUser` touches one team.
    let teams = desired_team_ids(spec);
    for team_id in teams.iter().filter(|t| !user.team_ids.contains(t)) {
        record_team(granted, team_id);
        actions.push(Action::AddTeamUser {
            org_id: spec.org_id.clone(),
            team_id: team_id.clone(),
            user_id: user.id.clone(),
            username: user.username.clone(),
        });
    }
    let mut revoked_teams: Vec<String> = granted.team_ids.iter().filter(|t| !teams.contains(t)).cloned().collect();
    if spec.unlisted_access == UnlistedAccess::Remove {
        revoked_teams.extend(user.team_ids.iter().filter(|t| !teams.contains(t)).cloned());
    }
    revoked_teams.sort();
    revoked_teams.dedup();
    for team_id in revoked_teams {
        if user.team_ids.contains(&team_id) {
            actions.push(Action::RemoveTeamUser {
                org_id: spec.org_id.clone(),
                team_id,
                user_id: user.id.clone(),
                username: user.username.clone(),
            });
        } else {
            granted.team_ids.retain(|t| *t != team_id);
        }
    }
}

fn plan_deletion(input: &OrgUserInput, adopted: Option<bool>) -> Plan {
    let spec = input.spec;
    let mut plan = Plan::new(FailureMode::Sequential, true);
    if spec.deletion_policy == Some(DeletionPolicy::Orphan) {
        plan.notes.push("deletionPolicy Orphan: Atlas is left alone".into());
        return plan;
    }
    if let Some(heir) = input.rivals.iter().min_by_key(|c| c.order_key()) {
        plan.notes.push(format!("{heir} also declares this user and takes it over; Atlas is left alone"));
        return plan;
    }
    match input.observed {
        Some(user) if user.org_membership_status == MembershipStatus::Unknown => {
            plan.hold = Some(Hold::UnknownMembershipStatus { username: user.username.clone() });
        }
        Some(user)
            if user.org_membership_status.is_in_org()
                && adopted != Some(false)
                && spec.adopted_deletion_policy == AdoptedDeletionPolicy::Orphan =>
        {
            plan.notes.push(format!(
                "{} was in org {} before this object (adopted): left in Atlas; set adoptedDeletionPolicy: Delete to remove them",
                user.username, spec.org_id
            ));
        }
        Some(user) if user.org_membership_status.is_in_org() => plan.actions.push(Action::RemoveOrgUser {
            org_id: spec.org_id.clone(),
            user_id: user.id.clone(),
            username: user.username.clone(),
            membership_status: user.org_membership_status,
            purpose: RemovalPurpose::Deletion,
        }),
        _ => plan.notes.push(format!("{} is not in org {}: nothing to remove", spec.username, spec.org_id)),
    }
    plan
}

/// The record after executing `plan`: what the plan recorded, less what was taken away, and
/// less the new grants none of whose calls went through (the user never got them).
fn final_granted(input: &OrgUserInput, plan: &OrgUserPlan, outcomes: &[ActionOutcome]) -> GrantedAccess {
    let previous = previous_granted(input);
    let mut granted = plan.granted.clone();
    let done = |i: usize, a: &Action| settle(a, outcomes.get(i)) == Settled::Done;
    let actions = &plan.plan.actions;
    for (i, action) in actions.iter().enumerate() {
        match action {
            Action::RemoveProjectUser { project_id, .. } if done(i, action) => {
                granted.projects.retain(|p| p.project_id != *project_id)
            }
            Action::RemoveTeamUser { team_id, .. } if done(i, action) => granted.team_ids.retain(|t| t != team_id),
            _ => {}
        }
    }
    let project_sent = |project: &str| {
        actions.iter().enumerate().any(|(i, a)| {
            done(i, a)
                && match a {
                    Action::AddProjectRole { project_id, .. } => project_id == project,
                    Action::CreateOrgUser { request, .. } => {
                        request.roles.group_role_assignments.iter().any(|g| g.group_id.as_deref() == Some(project))
                    }
                    _ => false,
                }
        })
    };
    let team_sent = |team: &str| {
        actions.iter().enumerate().any(|(i, a)| {
            done(i, a)
                && match a {
                    Action::AddTeamUser { team_id, .. } => team_id == team,
                    Action::CreateOrgUser { request, .. } => request.team_ids.iter().any(|t| t == team),
                    _ => false,
                }
        })
    };
    granted.projects.retain(|p| previous.has_project(&p.project_id) || project_sent(&p.project_id));
    granted.team_ids.retain(|t| previous.has_team(t) || team_sent(t));
    granted
}

/// The status after executing `plan`: what Atlas reports now (`fresh`: the directory's
/// record after [`OrgUserDirectory::apply`] of every outcome), the adoption decision, what
/// the object granted, and conditions merged with the previous ones.
pub fn org_user_status(
    input: &OrgUserInput,
    plan: &OrgUserPlan,
    outcomes: &[ActionOutcome],
    fresh: Option<&OrgUser>,
) -> AtlasOrgUserStatus {
    let spec = input.spec;
    let already_in_org =
        plan.plan.actions.iter().enumerate().any(|(i, a)| settle(a, outcomes.get(i)) == Settled::AlreadyInOrg);
    let invited = plan
        .plan
        .actions
        .iter()
        .enumerate()
        .any(|(i, a)| matches!(a, Action::CreateOrgUser { .. }) && settle(a, outcomes.get(i)) == Settled::Done);
    let previous = input.previous;
    let adopted = if already_in_org { previous.and_then(|s| s.adopted) } else { plan.adopted };
    let mut status = AtlasOrgUserStatus {
        // A 409 on the invitation means the user was there first: leave adoption undecided.
        adopted,
        granted: final_granted(input, plan, outcomes),
        on_deletion: Some(deletion_effect(spec, adopted, fresh)),
        reinvitations: if invited { plan.reinvitations } else { previous.and_then(|s| s.reinvitations) },
        invited_generation: if invited { input.generation } else { previous.and_then(|s| s.invited_generation) },
        observed_generation: input.generation,
        ..Default::default()
    };
    if fresh.is_some_and(|u| u.org_membership_status == MembershipStatus::Active) {
        status.reinvitations = None;
    }
    if let Some(user) = fresh {
        status.user_id = Some(user.id.clone());
        status.membership_status = Some(user.org_membership_status.as_str().to_string());
        status.invitation_created_at = user.invitation_created_at.clone();
        status.invitation_expires_at = user.invitation_expires_at.clone();
        status.inviter_username = user.inviter_username.clone();
        status.org_roles = user.roles.org_roles.clone();
        status.org_roles.sort();
        status.project_roles = spec
            .project_roles
            .iter()
            .map(|p| ObservedProjectRoles {
                project_id: p.project_id.clone(),
                roles: observed_project_roles(user, &p.project_id).into_iter().map(String::from).collect(),
            })
            .collect();
        status.team_ids = user.team_ids.clone();
        status.team_ids.sort();
    }

    let mut desired = Vec::new();
    let ready_and_kstatus = |desired: &mut Vec<DesiredCondition>, ready: bool, reason: &str, message: String| {
        desired.push(DesiredCondition::new(conditions::READY, ready, reason, message.clone()));
        if !ready {
            desired.push(DesiredCondition::new(conditions::RECONCILING, true, reason, message));
        }
    };
    let stalled = |desired: &mut Vec<DesiredCondition>, reason: &str, message: String| {
        desired.push(DesiredCondition::new(conditions::READY, false, reason, message.clone()));
        desired.push(DesiredCondition::new(conditions::STALLED, true, reason, message));
    };

    let conflict = matches!(plan.plan.hold, Some(Hold::Conflict { .. }));
    if let Some((action, error)) = first_failure(&plan.plan.actions, outcomes) {
        let message = format!("{action}: {error}");
        if error.class == ErrorClass::NotFound && !input.observed_fresh {
            // The answer contradicts the (possibly old) listing: the executor lists again
            // and plans from a fresh read before anything may call this Stalled.
            ready_and_kstatus(&mut desired, false, error.reason(), format!("{message}; re-reading the organization"));
        } else if error.waiting_may_fix() {
            ready_and_kstatus(&mut desired, false, error.reason(), message);
        } else {
            stalled(&mut desired, error.reason(), message);
        }
    } else if let Some(hold) = &plan.plan.hold {
        match hold {
            Hold::Paused => paused_condition(&mut desired, input.deleting, || {
                let unpaused = OrgUserInput { paused: false, ..input.with_observed(fresh) };
                (plan_org_user(&unpaused).plan, false)
            }),
            hold if !hold.is_stalled() => ready_and_kstatus(&mut desired, false, hold.reason(), hold.to_string()),
            _ => stalled(&mut desired, hold.reason(), hold.to_string()),
        }
    } else if already_in_org {
        ready_and_kstatus(
            &mut desired,
            false,
            reasons::ALREADY_IN_ORG,
            format!("{} is already in org {}; adopting it on the next pass", spec.username, spec.org_id),
        );
    } else if plan.plan.deleting {
        let message = match plan.plan.actions.first() {
            Some(action) => format!("deleting: {action}"),
            None => format!("deleting: {}", plan.plan.notes.join("; ")),
        };
        ready_and_kstatus(&mut desired, false, reasons::DELETING, message);
    } else {
        let remaining = plan_org_user(&input.with_observed(fresh));
        match (&remaining.plan.hold, remaining.plan.actions.first()) {
            (Some(hold), _) if !hold.is_stalled() => {
                ready_and_kstatus(&mut desired, false, hold.reason(), hold.to_string())
            }
            (Some(hold), _) => stalled(&mut desired, hold.reason(), hold.to_string()),
            (None, Some(next)) => ready_and_kstatus(
                &mut desired,
                false,
                reasons::PROGRESSING,
                format!("{} change(s) to go, next: {next}", remaining.plan.actions.len()),
            ),
            (None, None) => {
                let mut message = match fresh.map(|u| u.org_membership_status) {
                    Some(MembershipStatus::Pending) => "Atlas matches the spec; the invitation awaits acceptance",
                    _ => "Atlas matches the spec",
                }
                .to_string();
                let unknown = fresh.map(unknown_roles).unwrap_or_default();
                if !unknown.is_empty() {
                    message.push_str(&format!(
                        "; Atlas reports roles this operator does not know, left as they are: {}",
                        unknown.join(", ")
                    ));
                }
                ready_and_kstatus(&mut desired, true, reasons::SYNCED, message);
            }
        }
    }
    if !conflict {
        desired.push(invitation_accepted(spec, fresh));
    }
    let previous = input.previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    status.conditions = conditions::merge(previous, &desired, input.generation, Time(input.now));
    status
}

fn invitation_accepted(spec: &AtlasOrgUserSpec, user: Option<&OrgUser>) -> DesiredCondition {
    let (status, reason, message) = match user {
        None => (false, reasons::NOT_INVITED, format!("{} has no invitation to org {}", spec.username, spec.org_id)),
        Some(u) => match u.org_membership_status {
            MembershipStatus::Active => (true, reasons::ACCEPTED, format!("{} is an active member", u.username)),
            MembershipStatus::Pending => (
                false,
                reasons::INVITATION_PENDING,
                match &u.invitation_expires_at {
                    Some(at) => format!("invitation sent to {}, expires {at}", u.username),
                    None => format!("invitation sent to {}", u.username),
                },
            ),
            MembershipStatus::InvitationExpired => {
                (false, reasons::INVITATION_EXPIRED, format!("the invitation of {} expired", u.username))
            }
            MembershipStatus::InvitationRejected => {
                (false, reasons::INVITATION_REJECTED, format!("{} rejected the invitation", u.username))
            }
            MembershipStatus::Unknown => (
                false,
                reasons::UNKNOWN_MEMBERSHIP_STATUS,
                format!("Atlas reports a membership status for {} this operator does not know", u.username),
            ),
        },
    };
    DesiredCondition::new(conditions::INVITATION_ACCEPTED, status, reason, message)
}
