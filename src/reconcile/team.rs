//! AtlasTeamMembership: resolve members to org users, add the missing ones, remove the
//! ones this object may remove (Additive: only those it added; Exclusive: everyone unlisted).
//!
//! Ownership, write-ahead: `status.addedMembers` is the record of the users this object added
//! to the team `status.teamId`. [`team_intent`] is the record with the plan's additions in it,
//! which the caller persists before any `:addUser` is sent; an entry leaves the record only
//! after Atlas confirmed its removal, or a direct read of the user (not the team listing)
//! showed them outside the team ([`TeamInput::direct_reads`]).
//!
//! One writer per team: [`TeamWriter`]s are the other objects writing the same team. The
//! oldest `Exclusive` object owns the team; a younger one is held (`Conflict`) and wants
//! nothing. Nobody removes a user another writer of the team wants (an `AtlasOrgUser` naming
//! the team in `teamIds`, or an Additive AtlasTeamMembership listing them): Exclusive counts
//! them as listed.

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
    AddedMember, AtlasOrgUser, AtlasTeamMembership, AtlasTeamMembershipSpec, AtlasTeamMembershipStatus, DeletionPolicy,
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
    /// Recorded users the team listing did not show, read one by one: user id -> whether
    /// Atlas has them in the team. Only a `false` here lets an entry leave the record.
    pub direct_reads: &'a BTreeMap<String, bool>,
    /// The other objects that write teams of this organization (any team: the planner
    /// keeps those of this one).
    pub writers: &'a [TeamWriter],
    pub now: Timestamp,
}

/// What kind of writer another object is.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum WriterKind {
    /// An AtlasTeamMembership in Exclusive mode: it declares the whole team.
    Exclusive,
    /// An AtlasTeamMembership in Additive mode.
    Additive,
    /// An AtlasOrgUser naming the team in `spec.teamIds`.
    OrgUserTeamIds,
}

/// Another object that writes the members of a team.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TeamWriter {
    pub claim: Claim,
    pub kind: WriterKind,
    /// The team's id (pinned in its status, or from its spec), when known.
    pub team_id: Option<String>,
    /// The team's name from its spec, when it names the team and has not pinned an id yet.
    pub team_name: Option<String>,
    /// Usernames it wants in the team (`orgUserRef`s resolved; unresolved ones left out).
    pub usernames: Vec<String>,
}

impl TeamWriter {
    /// An AtlasTeamMembership as a writer; `org_user_refs` resolves its `orgUserRef`s (its namespace).
    pub fn of_team_membership(object: &AtlasTeamMembership, org_user_refs: &BTreeMap<String, String>) -> Self {
        let spec = &object.spec;
        let pinned = object.status.as_ref().and_then(|s| s.team_id.clone());
        Self {
            claim: Claim::of(&object.metadata),
            kind: match spec.mode {
                MembershipMode::Exclusive => WriterKind::Exclusive,
                MembershipMode::Additive => WriterKind::Additive,
            },
            team_name: if pinned.is_none() && spec.team.id.is_none() { spec.team.name.clone() } else { None },
            team_id: pinned.or_else(|| spec.team.id.clone()),
            // An object being deleted still owns (an older Exclusive one holds the younger
            // until it is gone) but wants nobody any more.
            usernames: spec
                .members
                .iter()
                .filter(|_| object.metadata.deletion_timestamp.is_none())
                .filter_map(|m| {
                    m.username
                        .clone()
                        .or_else(|| m.org_user_ref.as_ref().and_then(|r| org_user_refs.get(&r.name)).cloned())
                })
                .collect(),
        }
    }

    /// An AtlasOrgUser as a writer of each team in its `spec.teamIds`.
    pub fn of_org_user(object: &AtlasOrgUser) -> Vec<Self> {
        object
            .spec
            .team_ids
            .iter()
            .map(|id| Self {
                claim: Claim::of(&object.metadata),
                kind: WriterKind::OrgUserTeamIds,
                team_id: Some(id.clone()),
                team_name: None,
                usernames: vec![object.spec.username.clone()],
            })
            .collect()
    }

    /// Whether it writes `team`.
    pub fn writes(&self, team: &ObservedTeam) -> bool {
        match (&self.team_id, &self.team_name) {
            (Some(id), _) => *id == team.id,
            (None, Some(name)) => name.eq_ignore_ascii_case(&team.name),
            (None, None) => false,
        }
    }
}

impl<'a> TeamInput<'a> {
    /// The input for a stored object.
    #[allow(clippy::too_many_arguments)]
    pub fn from_object(
        object: &'a AtlasTeamMembership,
        team: Option<&'a ObservedTeam>,
        directory: &'a OrgUserDirectory,
        org_user_refs: &'a BTreeMap<String, String>,
        direct_reads: &'a BTreeMap<String, bool>,
        writers: &'a [TeamWriter],
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
            direct_reads,
            writers,
            now,
        }
    }

    /// The record of users this object added: those of the pinned team only (a record of
    /// another team says nothing about this one).
    fn added(&self) -> &'a [AddedMember] {
        let Some(previous) = self.previous else { return &[] };
        match (&previous.team_id, self.team) {
            (Some(pinned), Some(team)) if *pinned != team.id => &[],
            _ => previous.added_members.as_slice(),
        }
    }

    /// Whether Atlas has the user in the team: the listing, or for a recorded user it missed,
    /// a direct read.
    fn in_team(&self, team: &ObservedTeam, user_id: &str) -> bool {
        team.contains(user_id) || self.direct_reads.get(user_id) == Some(&true)
    }

    /// The other writers of `team` (never this object).
    fn writers_of<'t>(&'t self, team: &'t ObservedTeam) -> impl Iterator<Item = &'a TeamWriter> + 't {
        self.writers.iter().filter(move |w| w.claim != self.claim && w.writes(team))
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
                Some(u) if input.team.is_some_and(|t| input.in_team(t, &u.id)) => {
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
    let pinned = input.previous.and_then(|s| s.team_id.as_deref());
    let Some(team) = input.team else {
        if input.deleting {
            plan.notes.push("the team is not in Atlas: nothing to remove".into());
            return TeamPlan { plan, members };
        }
        // A pinned team that is gone is not looked up by name again: a new team of that name
        // is another team.
        let team = match pinned {
            Some(id) => {
                format!("{id} (status.teamId: this object manages only it; for another team create a new object)")
            }
            None => spec.team.id.clone().or_else(|| spec.team.name.clone()).unwrap_or_default(),
        };
        return held(Hold::TeamNotFound { team }, members);
    };
    // The object stays on the team it first resolved: a spec naming another one (admission
    // refuses the change; `plan -f` may not) is held, never re-pointed.
    if !input.deleting {
        let changed_to = match (pinned, spec.team.id.as_deref()) {
            (Some(p), _) if p != team.id => Some((p.to_string(), team.id.clone())),
            (_, Some(named)) if named != team.id => Some((team.id.clone(), named.to_string())),
            _ => None,
        };
        if let Some((pinned, named)) = changed_to {
            return held(Hold::TeamChanged { pinned, named }, members);
        }
    }
    let others: Vec<&TeamWriter> = input.writers_of(team).collect();
    let older_exclusive: Vec<Claim> =
        others.iter().filter(|w| w.kind == WriterKind::Exclusive).map(|w| w.claim.clone()).collect();
    let owner = input.claim.owner(&older_exclusive);
    let conflicted = spec.mode == MembershipMode::Exclusive && *owner != input.claim;
    if conflicted && !input.deleting {
        return held(Hold::TeamConflict { owner: owner.to_string() }, members);
    }
    // Exclusive declares the whole team, unless an older Exclusive object owns it.
    let exclusive = spec.mode == MembershipMode::Exclusive && !conflicted;
    // Users other writers want stay. A younger Exclusive object is held, so it wants nothing.
    let wanted_elsewhere: BTreeMap<String, &TeamWriter> = others
        .iter()
        .filter(|w| w.kind != WriterKind::Exclusive)
        .flat_map(|w| w.usernames.iter().map(move |u| (username_key(u), *w)))
        .collect();
    let mut kept = Vec::new();
    let mut removable = |name: &str| match wanted_elsewhere.get(&username_key(name)) {
        Some(w) => {
            kept.push(format!("{name} (wanted by {})", w.claim));
            false
        }
        None => true,
    };
    let remove = |user_id: &str, username: &str| Action::RemoveTeamUser {
        org_id: spec.org_id.clone(),
        team_id: team.id.clone(),
        user_id: user_id.to_string(),
        username: username.to_string(),
    };
    let recorded_in_team: Vec<(&str, &str)> = input
        .added()
        .iter()
        .filter(|a| input.in_team(team, &a.user_id))
        .map(|a| (a.user_id.as_str(), a.username.as_str()))
        .collect();

    if input.deleting {
        if spec.deletion_policy == Some(DeletionPolicy::Orphan) {
            plan.notes.push("deletionPolicy Orphan: the team is left alone".into());
            return TeamPlan { plan, members };
        }
        // Delete removes what the object manages: the users it added, and in Exclusive mode
        // (which declares the whole team) also the listed ones. Strangers stay, and so do
        // users another writer of the team wants.
        let mut managed: BTreeMap<&str, &str> = recorded_in_team.iter().copied().collect();
        if exclusive {
            for m in &members {
                if let (Some(id), Some(name)) = (&m.user_id, &m.username)
                    && team.contains(id)
                {
                    managed.insert(id, name);
                }
            }
        }
        plan.actions =
            managed.into_iter().filter(|(_, name)| removable(name)).map(|(id, name)| remove(id, name)).collect();
        if !kept.is_empty() {
            plan.notes.push(format!("left in the team, other objects want them: {}", kept.join(", ")));
        }
        return TeamPlan { plan, members };
    }
    if spec.members.len() > MAX_TEAM_MEMBERS {
        return held(Hold::TooManyMembers { listed: spec.members.len() }, members);
    }

    let listed_ids: BTreeSet<&str> = members.iter().filter_map(|m| m.user_id.as_deref()).collect();
    let listed_names: BTreeSet<String> =
        members.iter().filter_map(|m| m.username.as_deref()).map(username_key).collect();
    let listed = |id: &str, name: &str| listed_ids.contains(id) || listed_names.contains(&username_key(name));
    let mut candidates: BTreeMap<&str, &str> = recorded_in_team.iter().copied().collect();
    if exclusive {
        candidates.extend(team.members());
    }
    let candidates: Vec<(&str, &str)> =
        candidates.into_iter().filter(|(id, name)| !listed(id, name) && removable(name)).collect();
    if !kept.is_empty() {
        plan.notes.push(format!("not removed, other objects of this team want them: {}", kept.join(", ")));
    }
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
        // Removals first: the executor finishes them before any addition starts, which makes
        // room under Atlas's limit of 250 users a team.
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

/// The write-ahead record: what to persist before any call of `plan` is sent. It is the
/// previous status with the team pinned (`teamId`) and every user the plan adds already in
/// `addedMembers`, so a crash or a failed status write after `:addUser` still leaves the
/// user owned. None when the plan makes no call or the record already says all of it.
pub fn team_intent(input: &TeamInput, plan: &TeamPlan) -> Option<AtlasTeamMembershipStatus> {
    let team = input.team?;
    if plan.plan.actions.is_empty() {
        return None;
    }
    let mut status = input.previous.cloned().unwrap_or_default();
    let mut changed = status.team_id.as_deref() != Some(team.id.as_str());
    status.team_id = Some(team.id.clone());
    status.team_name.get_or_insert_with(|| team.name.clone());
    let mut record: BTreeMap<String, String> =
        input.added().iter().map(|a| (a.user_id.clone(), a.username.clone())).collect();
    for action in &plan.plan.actions {
        if let Action::AddTeamUser { user_id, username, .. } = action
            && !record.contains_key(user_id)
        {
            record.insert(user_id.clone(), username.clone());
            changed = true;
        }
    }
    status.added_members = record.into_iter().map(|(user_id, username)| AddedMember { user_id, username }).collect();
    changed.then_some(status)
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
    // The record: what was there, less users a direct read showed outside the team, plus the
    // plan's additions (persisted ahead of the calls, so they stay until shown absent), less
    // confirmed removals. A listing that misses someone never drops them.
    let mut added: BTreeMap<String, String> = input
        .added()
        .iter()
        .filter(|a| input.direct_reads.get(&a.user_id) != Some(&false))
        .map(|a| (a.user_id.clone(), a.username.clone()))
        .collect();
    let executed = !outcomes.is_empty();
    for (i, action) in plan.plan.actions.iter().enumerate() {
        match (action, settle(action, outcomes.get(i))) {
            (Action::AddTeamUser { user_id, username, .. }, _) if executed => {
                added.insert(user_id.clone(), username.clone());
            }
            (Action::RemoveTeamUser { user_id, .. }, Settled::Done) => {
                added.remove(user_id);
            }
            _ => {}
        }
    }
    let pinned = input.previous.and_then(|s| s.team_id.clone());
    let mut status = AtlasTeamMembershipStatus {
        team_id: fresh_team.map(|t| t.id.clone()).or(pinned),
        team_name: fresh_team.map(|t| t.name.clone()).or_else(|| input.previous.and_then(|s| s.team_name.clone())),
        member_count: fresh_team.map(|t| i32::try_from(t.len()).unwrap_or(i32::MAX)),
        added_members: added.into_iter().map(|(user_id, username)| AddedMember { user_id, username }).collect(),
        observed_generation: input.generation,
        ..Default::default()
    };

    let now_status = AtlasTeamMembershipStatus {
        team_id: status.team_id.clone(),
        added_members: status.added_members.clone(),
        ..Default::default()
    };
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
    // An addition refused while removals of the same plan are not done (the team may be
    // full until they are) is retried, not stalled: the next pass removes first.
    let removals_pending = plan
        .plan
        .actions
        .iter()
        .enumerate()
        .any(|(i, a)| matches!(a, Action::RemoveTeamUser { .. }) && settle(a, outcomes.get(i)) != Settled::Done);
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
        let mut message = format!("{failed} call(s) failed; first: {action}: {error}");
        let retried = matches!(action, Action::AddTeamUser { .. }) && removals_pending;
        if retried {
            message.push_str("; retried once the removals of this plan are done");
        }
        not_ready(&mut desired, !error.waiting_may_fix() && !retried, error.reason(), message);
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
