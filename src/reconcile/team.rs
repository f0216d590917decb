//! AtlasTeamMembership: resolve members to org users, add the missing ones, remove the
//! ones this object may remove (Additive: only those it added; Exclusive: everyone unlisted).

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

use super::action::{Action, FailureMode};
use super::directory::{ObservedTeam, OrgUserDirectory, username_key};
use super::outcome::{ActionError, ActionOutcome, Settled, settle};
use super::{Claim, Hold, Plan, paused_condition, reasons};
use crate::api::conditions::{self, DesiredCondition};
use crate::api::{
    AddedMember, AtlasTeamMembership, AtlasTeamMembershipSpec, AtlasTeamMembershipStatus, DeletionPolicy,
    MAX_TEAM_MEMBERS, MemberState, MemberStatus, MembershipMode,
};
use crate::atlas::models::{MembershipStatus, codes};

/// Everything the team-membership planner looks at.
#[derive(Clone, Debug)]
pub struct TeamInput<'a> {
    /// This object (for messages).
    pub claim: Claim,
    pub generation: Option<i64>,
    pub spec: &'a AtlasTeamMembershipSpec,
    /// The status written last time: `addedMembers` is what Additive mode may remove.
    pub previous: Option<&'a AtlasTeamMembershipStatus>,
    pub paused: bool,
    pub deleting: bool,
    /// The team (by `spec.team.id` or `.name`) and its members; None when Atlas has no such team.
    pub team: Option<&'a ObservedTeam>,
    /// Every user of the org, all statuses.
    pub directory: &'a OrgUserDirectory,
    /// `spec.username` of each AtlasOrgUser in this object's namespace, by object name.
    pub org_user_refs: &'a BTreeMap<String, String>,
    pub now: Timestamp,
}

impl<'a> TeamInput<'a> {
    /// The input for a stored object.
    pub fn from_object(
        object: &'a AtlasTeamMembership,
        team: Option<&'a ObservedTeam>,
        directory: &'a OrgUserDirectory,
        org_user_refs: &'a BTreeMap<String, String>,
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
            team,
            directory,
            org_user_refs,
            now,
        }
    }

    fn added(&self) -> &'a [AddedMember] {
        self.previous.map(|s| s.added_members.as_slice()).unwrap_or_default()
    }
}

/// Where one listed member stands before any call.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(tag = "kind", content = "membershipStatus", rename_all = "camelCase")]
pub enum MemberDisposition {
    /// The orgUserRef names no AtlasOrgUser in the namespace.
    Unresolved,
    /// Absent from the org, or only an expired or rejected invitation (status given).
    NotInOrg(Option<MembershipStatus>),
    /// Pending or active, already in the team.
    InTeam(MembershipStatus),
    /// Pending or active, not in the team: the plan adds them.
    ToAdd(MembershipStatus),
}

/// One listed member, resolved.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlannedMember {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_user_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub disposition: MemberDisposition,
}

/// The plan for one AtlasTeamMembership.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TeamPlan {
    #[serde(flatten)]
    pub plan: Plan,
    /// Each listed member, in spec order.
    pub members: Vec<PlannedMember>,
}

fn resolve(input: &TeamInput) -> Vec<PlannedMember> {
    input
        .spec
        .members
        .iter()
        .map(|m| {
            let org_user_ref = m.org_user_ref.as_ref().map(|r| r.name.clone());
            let username = m
                .username
                .clone()
                .or_else(|| m.org_user_ref.as_ref().and_then(|r| input.org_user_refs.get(&r.name)).cloned());
            let Some(name) = &username else {
                return PlannedMember {
                    username,
                    org_user_ref,
                    user_id: None,
                    disposition: MemberDisposition::Unresolved,
                };
            };
            let user = input.directory.get(name);
            let disposition = match user {
                None => MemberDisposition::NotInOrg(None),
                Some(u) if !u.org_membership_status.is_in_org() => {
                    MemberDisposition::NotInOrg(Some(u.org_membership_status))
                }
                Some(u) if input.team.is_some_and(|t| t.contains(&u.id)) => {
                    MemberDisposition::InTeam(u.org_membership_status)
                }
                Some(u) => MemberDisposition::ToAdd(u.org_membership_status),
            };
            PlannedMember { username, org_user_ref, user_id: user.map(|u| u.id.clone()), disposition }
        })
        .collect()
}

/// Plan one AtlasTeamMembership.
pub fn plan_team_membership(input: &TeamInput) -> TeamPlan {
    let spec = input.spec;
    let members = resolve(input);
    let held = |hold, members| TeamPlan { plan: Plan::held(FailureMode::Independent, input.deleting, hold), members };
    if input.paused {
        return held(Hold::Paused, members);
    }
    let mut plan = Plan::new(FailureMode::Independent, input.deleting);
    let Some(team) = input.team else {
        if input.deleting {
            plan.notes.push("the team is not in Atlas: nothing to remove".into());
            return TeamPlan { plan, members };
        }
        let team = spec.team.id.clone().or_else(|| spec.team.name.clone()).unwrap_or_default();
        return held(Hold::TeamNotFound { team }, members);
    };
    let remove = |user_id: &str, username: &str| Action::RemoveTeamUser {
        org_id: spec.org_id.clone(),
        team_id: team.id.clone(),
        user_id: user_id.to_string(),
        username: username.to_string(),
    };

    if input.deleting {
        if spec.deletion_policy == Some(DeletionPolicy::Orphan) {
            plan.notes.push("deletionPolicy Orphan: the team is left alone".into());
            return TeamPlan { plan, members };
        }
        // Delete removes what the object manages: the users it added, and in Exclusive mode
        // (which declares the whole team) also the listed ones. Strangers stay.
        let mut managed: BTreeMap<&str, &str> =
            input.added().iter().map(|a| (a.user_id.as_str(), a.username.as_str())).collect();
        if spec.mode == MembershipMode::Exclusive {
            for m in &members {
                if let (Some(id), Some(name)) = (&m.user_id, &m.username) {
                    managed.insert(id, name);
                }
            }
        }
        plan.actions =
            managed.into_iter().filter(|(id, _)| team.contains(id)).map(|(id, name)| remove(id, name)).collect();
        return TeamPlan { plan, members };
    }
    if spec.members.len() > MAX_TEAM_MEMBERS {
        return held(Hold::TooManyMembers { listed: spec.members.len() }, members);
    }

    let listed_ids: BTreeSet<&str> = members.iter().filter_map(|m| m.user_id.as_deref()).collect();
    let listed_names: BTreeSet<String> =
        members.iter().filter_map(|m| m.username.as_deref()).map(username_key).collect();
    let listed = |id: &str, name: &str| listed_ids.contains(id) || listed_names.contains(&username_key(name));
    let candidates: Vec<(&str, &str)> = match spec.mode {
        MembershipMode::Exclusive => team.members().filter(|(id, name)| !listed(id, name)).collect(),
        MembershipMode::Additive => input
            .added()
            .iter()
            .filter(|a| team.contains(&a.user_id) && !listed(&a.user_id, &a.username))
            .map(|a| (a.user_id.as_str(), a.username.as_str()))
            .collect(),
    };
    let unresolved: Vec<&str> = members
        .iter()
        .filter(|m| m.disposition == MemberDisposition::Unresolved)
        .filter_map(|m| m.org_user_ref.as_deref())
        .collect();
    if !candidates.is_empty() && !unresolved.is_empty() {
        // An unresolved reference may be any of the removal candidates: remove nobody until
        // every listed member is known.
        plan.notes.push(format!(
            "removals of {} user(s) wait until every orgUserRef resolves (missing: {})",
            candidates.len(),
            unresolved.join(", ")
        ));
    } else {
        // Removals first: they make room under Atlas's limit of 250 users a team.
        plan.actions.extend(candidates.into_iter().map(|(id, name)| remove(id, name)));
    }
    let mut adding = BTreeSet::new();
    for m in &members {
        if let (MemberDisposition::ToAdd(_), Some(id), Some(name)) = (m.disposition, &m.user_id, &m.username)
            && adding.insert(id.as_str())
        {
            let username = input.directory.get(name).map(|u| u.username.clone()).unwrap_or_else(|| name.clone());
            plan.actions.push(Action::AddTeamUser {
                org_id: spec.org_id.clone(),
                team_id: team.id.clone(),
                user_id: id.clone(),
                username,
            });
        }
    }
    TeamPlan { plan, members }
}

/// The user ids whose AddTeamUser failed (or was not run), with the error if any.
fn add_results<'a>(plan: &'a TeamPlan, outcomes: &'a [ActionOutcome]) -> BTreeMap<&'a str, Option<&'a ActionError>> {
    plan.plan
        .actions
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match (a, settle(a, outcomes.get(i))) {
            (Action::AddTeamUser { user_id, .. }, Settled::Failed(e)) => Some((user_id.as_str(), Some(e))),
            (Action::AddTeamUser { user_id, .. }, Settled::NotRun) => Some((user_id.as_str(), None)),
            _ => None,
        })
        .collect()
}

fn says_not_in_org(error: &ActionError) -> bool {
    error.error_code.as_deref() == Some(codes::USER_NOT_IN_ORG)
}

/// The status after executing `plan`: the added set updated from what was actually done,
/// each member's state from the fresh observation (the directory and team after
/// [`OrgUserDirectory::apply`] / [`ObservedTeam::apply`] of every outcome) and the failures,
/// and conditions merged with the previous ones.
pub fn team_membership_status(
    input: &TeamInput,
    plan: &TeamPlan,
    outcomes: &[ActionOutcome],
    fresh_directory: &OrgUserDirectory,
    fresh_team: Option<&ObservedTeam>,
) -> AtlasTeamMembershipStatus {
    let mut added: BTreeMap<String, String> =
        input.added().iter().map(|a| (a.user_id.clone(), a.username.clone())).collect();
    for (i, action) in plan.plan.actions.iter().enumerate() {
        match (action, settle(action, outcomes.get(i))) {
            (Action::AddTeamUser { user_id, username, .. }, Settled::Done) => {
                added.insert(user_id.clone(), username.clone());
            }
            (Action::RemoveTeamUser { user_id, .. }, Settled::Done) => {
                added.remove(user_id);
            }
            _ => {}
        }
    }
    if let Some(team) = fresh_team {
        // Someone else removed them: nothing left for this object to remove.
        added.retain(|id, _| team.contains(id));
    }
    let mut status = AtlasTeamMembershipStatus {
        team_id: fresh_team.map(|t| t.id.clone()),
        team_name: fresh_team.map(|t| t.name.clone()),
        member_count: fresh_team.map(|t| i32::try_from(t.len()).unwrap_or(i32::MAX)),
        added_members: added.into_iter().map(|(user_id, username)| AddedMember { user_id, username }).collect(),
        observed_generation: input.generation,
        ..Default::default()
    };

    let now_status = AtlasTeamMembershipStatus { added_members: status.added_members.clone(), ..Default::default() };
    let fresh_input =
        TeamInput { previous: Some(&now_status), team: fresh_team, directory: fresh_directory, ..input.clone() };
    let remaining = plan_team_membership(&fresh_input);
    let add_failures = add_results(plan, outcomes);
    status.members = remaining
        .members
        .iter()
        .map(|m| {
            let (state, message) =
                member_state(input.spec, m, m.user_id.as_deref().and_then(|id| add_failures.get(id)));
            MemberStatus {
                username: m.username.clone(),
                org_user_ref: m.org_user_ref.clone(),
                user_id: m.user_id.clone(),
                state,
                message,
            }
        })
        .collect();

    let mut desired = Vec::new();
    let not_ready = |desired: &mut Vec<DesiredCondition>, stalled: bool, reason: &str, message: String| {
        desired.push(DesiredCondition::new(conditions::READY, false, reason, message.clone()));
        let kind = if stalled { conditions::STALLED } else { conditions::RECONCILING };
        desired.push(DesiredCondition::new(kind, true, reason, message));
    };
    let failure = plan.plan.actions.iter().enumerate().find_map(|(i, a)| match settle(a, outcomes.get(i)) {
        Settled::Failed(e) if !(matches!(a, Action::AddTeamUser { .. }) && says_not_in_org(e)) => Some((a, e)),
        _ => None,
    });
    let count = |state: MemberState| status.members.iter().filter(|m| m.state == state).count();
    let names = |state: MemberState| {
        status
            .members
            .iter()
            .filter(|m| m.state == state)
            .map(|m| m.username.clone().or_else(|| m.org_user_ref.clone()).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some((action, error)) = failure {
        let failed = plan
            .plan
            .actions
            .iter()
            .enumerate()
            .filter(|(i, a)| matches!(settle(a, outcomes.get(*i)), Settled::Failed(_)))
            .count();
        let message = format!("{failed} call(s) failed; first: {action}: {error}");
        not_ready(&mut desired, !error.waiting_may_fix(), error.reason(), message);
    } else if let Some(hold) = &plan.plan.hold {
        if *hold == Hold::Paused {
            paused_condition(&mut desired, input.deleting, || {
                let would = plan_team_membership(&TeamInput { paused: false, ..fresh_input.clone() });
                let members_differ =
                    would.members.iter().any(|m| !matches!(m.disposition, MemberDisposition::InTeam(_)));
                (would.plan, members_differ)
            });
        } else {
            not_ready(&mut desired, true, hold.reason(), hold.to_string());
        }
    } else if plan.plan.deleting {
        let message = match plan.plan.actions.first() {
            Some(action) => format!("deleting: {} call(s), first: {action}", plan.plan.actions.len()),
            None => format!("deleting: {}", plan.plan.notes.join("; ")),
        };
        not_ready(&mut desired, false, reasons::DELETING, message);
    } else if let Some(next) = remaining.plan.actions.first() {
        let message = format!("{} change(s) to go, next: {next}", remaining.plan.actions.len());
        not_ready(&mut desired, false, reasons::PROGRESSING, message);
    } else if let Some(hold) = &remaining.plan.hold {
        not_ready(&mut desired, true, hold.reason(), hold.to_string());
    } else if count(MemberState::NotInOrg) > 0 {
        let undeclared = super::undeclared_not_in_org(&status.members, input.org_user_refs);
        let mut message = format!(
            "{} of {} member(s) not pending or active in org {}: {}; the others are in the team",
            count(MemberState::NotInOrg),
            status.members.len(),
            input.spec.org_id,
            names(MemberState::NotInOrg)
        );
        if !undeclared.is_empty() {
            message.push_str(&format!(
                "; no AtlasOrgUser in namespace {} declares {}: fix the username or create one",
                input.claim.namespace,
                undeclared.join(", ")
            ));
        }
        // Waiting for an AtlasOrgUser's invitation is progress; a user nobody declares is not.
        not_ready(&mut desired, !undeclared.is_empty(), reasons::MEMBERS_NOT_IN_ORG, message);
    } else if remaining.members.iter().any(|m| m.disposition == MemberDisposition::Unresolved) {
        let unresolved: Vec<&str> = remaining
            .members
            .iter()
            .filter(|m| m.disposition == MemberDisposition::Unresolved)
            .filter_map(|m| m.org_user_ref.as_deref())
            .collect();
        let mut message =
            format!("AtlasOrgUser not found in namespace {}: {}", input.claim.namespace, unresolved.join(", "));
        if !remaining.plan.notes.is_empty() {
            message.push_str(&format!("; {}", remaining.plan.notes.join("; ")));
        }
        not_ready(&mut desired, false, reasons::ORG_USER_REF_NOT_FOUND, message);
    } else {
        let pending = count(MemberState::Pending);
        let message = if pending == 0 {
            format!("all {} member(s) are in the team", status.members.len())
        } else {
            format!(
                "all {} member(s) are in the team; {pending} have not accepted their invitation yet",
                status.members.len()
            )
        };
        desired.push(DesiredCondition::new(conditions::READY, true, reasons::SYNCED, message));
    }
    let previous = input.previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    status.conditions = conditions::merge(previous, &desired, input.generation, Time(input.now));
    let in_team = remaining.members.iter().filter(|m| matches!(m.disposition, MemberDisposition::InTeam(_))).count();
    status.listed_in_team = Some(crate::api::listed_in_team(in_team, remaining.members.len()));
    status
}

fn member_state(
    spec: &AtlasTeamMembershipSpec,
    member: &PlannedMember,
    add_result: Option<&Option<&ActionError>>,
) -> (MemberState, Option<String>) {
    match member.disposition {
        MemberDisposition::Unresolved => (
            MemberState::Pending,
            Some(format!(
                "waiting for AtlasOrgUser {} in this namespace",
                member.org_user_ref.as_deref().unwrap_or_default()
            )),
        ),
        MemberDisposition::NotInOrg(status) => (
            MemberState::NotInOrg,
            Some(match status {
                None => format!("not a user of org {}", spec.org_id),
                Some(MembershipStatus::InvitationRejected) => "the invitation to the org was rejected".to_string(),
                Some(_) => "the invitation to the org expired".to_string(),
            }),
        ),
        MemberDisposition::InTeam(MembershipStatus::Active) => (MemberState::Member, None),
        MemberDisposition::InTeam(_) => {
            (MemberState::Pending, Some("in the team; the org invitation is not accepted yet".to_string()))
        }
        MemberDisposition::ToAdd(_) => match add_result {
            Some(Some(e)) if says_not_in_org(e) => (MemberState::NotInOrg, Some(e.to_string())),
            Some(Some(e)) => (MemberState::Failed, Some(e.to_string())),
            Some(None) => (MemberState::Pending, Some("not in the team yet: not attempted in this pass".to_string())),
            None => (MemberState::Pending, Some("not in the team yet".to_string())),
        },
    }
}
