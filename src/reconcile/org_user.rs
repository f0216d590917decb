//! AtlasOrgUser: invite, adopt, re-invite, converge roles and teams, delete.

use std::collections::BTreeSet;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

use super::action::{Action, FailureMode, RemovalPurpose};
use super::directory::OrgUserDirectory;
use super::outcome::{ActionOutcome, Settled, first_failure, settle};
use super::{Claim, Hold, Plan, paused_condition, reasons};
use crate::api::conditions::{self, DesiredCondition};
use crate::api::{
    AtlasOrgUser, AtlasOrgUserSpec, AtlasOrgUserStatus, DeletionPolicy, ObservedProjectRoles, OrgRole, ReinvitePolicy,
};
use crate::atlas::models::{
    GroupRoleAssignment, MembershipStatus, OrgUser, OrgUserRequest, OrgUserRoles, OrgUserUpdateRequest,
};

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

/// Plan one AtlasOrgUser.
pub fn plan_org_user(input: &OrgUserInput) -> OrgUserPlan {
    let spec = input.spec;
    let previous_adopted = input.previous.and_then(|s| s.adopted);
    let held = |hold| OrgUserPlan {
        plan: Plan::held(FailureMode::Sequential, input.deleting, hold),
        adopted: previous_adopted,
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
            return OrgUserPlan { plan, adopted: previous_adopted };
        }
        return held(Hold::Conflict { owner: owner.seen_from(&input.claim) });
    }
    if input.paused {
        return held(Hold::Paused);
    }
    if input.deleting {
        return OrgUserPlan { plan: plan_deletion(input), adopted: previous_adopted };
    }
    if spec.org_roles.is_empty() {
        return held(Hold::InvalidSpec { message: "orgRoles is empty: a user needs at least one org role".into() });
    }

    let mut plan = Plan::new(FailureMode::Sequential, false);
    let Some(user) = input.observed else {
        plan.actions.push(invite(spec, None));
        return OrgUserPlan { plan, adopted: Some(previous_adopted.unwrap_or(false)) };
    };
    // A PENDING invitation past its expiry is an expired one that Atlas has not flipped yet.
    let lapsed = lapsed_pending(user, input.now);
    let effective = if lapsed { MembershipStatus::InvitationExpired } else { user.org_membership_status };
    match effective {
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
            OrgUserPlan { plan, adopted: Some(previous_adopted.unwrap_or(false)) }
        }
        MembershipStatus::InvitationRejected => {
            if spec.reinvite != ReinvitePolicy::OnExpiryOrRejection {
                return held(Hold::InvitationRejected { username: spec.username.clone() });
            }
            plan.actions.push(invite(spec, Some(MembershipStatus::InvitationRejected)));
            OrgUserPlan { plan, adopted: Some(previous_adopted.unwrap_or(false)) }
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
            converge(spec, user, &mut plan.actions);
            OrgUserPlan { plan, adopted: Some(adopted) }
        }
    }
}

/// Roles and teams of a user who is in the org: org roles one at a time (additions before
/// removals, ORG_OWNER removed last, so the user never has zero roles and an org keeps an
/// owner as long as possible), then one PATCH for project roles, then one `:addUser` per
/// missing team.
fn converge(spec: &AtlasOrgUserSpec, user: &OrgUser, actions: &mut Vec<Action>) {
    let ids = |role: &str| (spec.org_id.clone(), user.id.clone(), user.username.clone(), role.to_string());
    let desired = desired_org_roles(spec);
    let observed = &user.roles.org_roles;
    for role in desired.iter().filter(|r| !observed.contains(r)) {
        let (org_id, user_id, username, role) = ids(role);
        actions.push(Action::AddOrgRole { org_id, user_id, username, role });
    }
    let mut removals: Vec<&String> = observed.iter().filter(|r| !desired.contains(r)).collect();
    removals.sort_by_key(|r| r.as_str() == OrgRole::OrgOwner.as_str());
    for role in removals {
        let (org_id, user_id, username, role) = ids(role);
        actions.push(Action::RemoveOrgRole { org_id, user_id, username, role });
    }

    let wanted = desired_assignments(spec);
    let changed_projects: Vec<String> = wanted
        .iter()
        .filter(|a| {
            let project = a.group_id.as_deref().unwrap_or_default();
            observed_project_roles(user, project) != a.group_roles.iter().map(String::as_str).collect()
        })
        .filter_map(|a| a.group_id.clone())
        .collect();
    if !changed_projects.is_empty() {
        // PATCH replaces the whole roles object and OrgUserRolesRequest requires orgRoles: send
        // the org roles the user holds once the calls above are done, and keep every project
        // the spec does not name exactly as Atlas reports it.
        let listed: BTreeSet<&str> = wanted.iter().filter_map(|a| a.group_id.as_deref()).collect();
        let mut assignments: Vec<GroupRoleAssignment> = user
            .roles
            .group_role_assignments
            .iter()
            .filter(|a| !a.group_id.as_deref().is_some_and(|g| listed.contains(g)))
            .cloned()
            .collect();
        assignments.extend(wanted);
        actions.push(Action::UpdateOrgUser {
            org_id: spec.org_id.clone(),
            user_id: user.id.clone(),
            username: user.username.clone(),
            request: OrgUserUpdateRequest {
                roles: Some(OrgUserRoles { org_roles: desired, group_role_assignments: assignments }),
                team_ids: None,
            },
            changed_projects,
        });
    }

    // `:addUser` per team rather than PATCH teamIds: a PATCH sends the whole list, so one
    // computed from a stale read could put the user back into a team an Exclusive
    // AtlasTeamMembership (or a person) just removed them from; `:addUser` touches one team.
    for team_id in desired_team_ids(spec).into_iter().filter(|t| !user.team_ids.contains(t)) {
        actions.push(Action::AddTeamUser {
            org_id: spec.org_id.clone(),
            team_id,
            user_id: user.id.clone(),
            username: user.username.clone(),
        });
    }
}

fn plan_deletion(input: &OrgUserInput) -> Plan {
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

/// The status after executing `plan`: what Atlas reports now (`fresh`: the directory's
/// record after [`OrgUserDirectory::apply`] of every outcome), the adoption decision, and
/// conditions merged with the previous ones.
pub fn org_user_status(
    input: &OrgUserInput,
    plan: &OrgUserPlan,
    outcomes: &[ActionOutcome],
    fresh: Option<&OrgUser>,
) -> AtlasOrgUserStatus {
    let spec = input.spec;
    let already_in_org =
        plan.plan.actions.iter().enumerate().any(|(i, a)| settle(a, outcomes.get(i)) == Settled::AlreadyInOrg);
    let mut status = AtlasOrgUserStatus {
        // A 409 on the invitation means the user was there first: leave adoption undecided.
        adopted: if already_in_org { input.previous.and_then(|s| s.adopted) } else { plan.adopted },
        observed_generation: input.generation,
        ..Default::default()
    };
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
        if error.waiting_may_fix() {
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
            (Some(hold), _) => stalled(&mut desired, hold.reason(), hold.to_string()),
            (None, Some(next)) => ready_and_kstatus(
                &mut desired,
                false,
                reasons::PROGRESSING,
                format!("{} change(s) to go, next: {next}", remaining.plan.actions.len()),
            ),
            (None, None) => {
                let message = match fresh.map(|u| u.org_membership_status) {
                    Some(MembershipStatus::Pending) => "Atlas matches the spec; the invitation awaits acceptance",
                    _ => "Atlas matches the spec",
                };
                ready_and_kstatus(&mut desired, true, reasons::SYNCED, message.to_string());
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
        },
    };
    DesiredCondition::new(conditions::INVITATION_ACCEPTED, status, reason, message)
}
