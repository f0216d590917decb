//! Pure planning: from a spec and what Atlas reports to the ordered Atlas calls that make
//! Atlas match, and from those calls' outcomes to the status to write. No IO here: no
//! Kubernetes, no HTTP, no clock (`now` is always a parameter).
//!
//! The flow an executor follows:
//! 1. observe: build an [`OrgUserDirectory`] (every user of the org, all statuses) and, for a
//!    team, an [`ObservedTeam`];
//! 2. plan: [`plan_org_user`] / [`plan_team_membership`];
//! 3. for a team, persist [`team_intent`] (the write-ahead record of the users about to be
//!    added; the engine's `PersistIntent` hook) before any call; if that fails, send nothing;
//! 4. execute `plan.actions` in order through the client, recording one [`ActionOutcome`] per
//!    action, stopping when [`Plan::continue_after`] says so (the rest are `Skipped`), and
//!    feeding each outcome to [`OrgUserDirectory::apply`] / [`ObservedTeam::apply`];
//! 5. status: [`org_user_status`] / [`team_membership_status`] from the plan, the outcomes and
//!    the updated observation; conditions keep `lastTransitionTime` unless they flip.

mod action;
pub mod audit;
mod directory;
pub mod export;
mod org_user;
mod outcome;
mod team;
pub mod tenancy;

use std::fmt;

use jiff::Timestamp;

use crate::api::conditions::{self as conditions_api};
use serde::Serialize;

pub use action::{Action, FailureMode, RemovalPurpose};
pub use directory::{ObservedTeam, OrgUserDirectory, username_key};
pub use org_user::{
    OrgUserInput, OrgUserPlan, REINVITE_BACKOFF_BASE, REINVITE_BACKOFF_CAP, org_user_status, plan_org_user,
    reinvite_backoff,
};
pub use outcome::{
    ActionError, ActionOutcome, ErrorClass, continue_after, contradicts_observation, failure_reason, waiting_may_fix,
};
pub use team::{
    MemberDisposition, PlannedMember, TeamInput, TeamPlan, TeamWriter, WriterKind, plan_team_membership, team_intent,
    team_membership_status,
};

use outcome::{Settled, settle};

/// Condition reasons the planners write (besides [`failure_reason`]).
pub mod reasons {
    pub const SYNCED: &str = "Synced";
    pub const PROGRESSING: &str = "Progressing";
    pub const PAUSED: &str = "Paused";
    pub const CONFLICT: &str = "Conflict";
    pub const INVITATION_EXPIRED: &str = "InvitationExpired";
    pub const INVITATION_REJECTED: &str = "InvitationRejected";
    pub const INVITATION_PENDING: &str = "InvitationPending";
    pub const ACCEPTED: &str = "Accepted";
    pub const NOT_INVITED: &str = "NotInvited";
    pub const ALREADY_IN_ORG: &str = "AlreadyInOrg";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const DELETING: &str = "Deleting";
    pub const TOO_MANY_MEMBERS: &str = "TooManyMembers";
    pub const TEAM_NOT_FOUND: &str = "TeamNotFound";
    pub const MEMBERS_NOT_IN_ORG: &str = "MembersNotInOrg";
    pub const ORG_USER_REF_NOT_FOUND: &str = "OrgUserRefNotFound";
    pub const UNKNOWN_MEMBERSHIP_STATUS: &str = "UnknownMembershipStatus";
    pub const TEAM_CHANGED: &str = "TeamChanged";
}

/// One Kubernetes object claiming something in Atlas: who it is and when it was created.
/// The oldest claim owns; `namespace/name` breaks ties.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp`; None (an object not yet stored, as in `plan -f`) sorts last.
    pub created: Option<Timestamp>,
}

impl Claim {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, created: Option<Timestamp>) -> Self {
        Self { namespace: namespace.into(), name: name.into(), created }
    }

    /// The claim of a stored (or, without `creationTimestamp`, a not yet stored) object.
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
            meta.creation_timestamp.as_ref().map(|t| t.0),
        )
    }

    fn order_key(&self) -> (bool, Option<Timestamp>, &str, &str) {
        (self.created.is_none(), self.created, &self.namespace, &self.name)
    }

    /// How this claim is named to `viewer`: `namespace/name` in the viewer's own namespace,
    /// else without naming it (a tenant never learns another namespace's objects).
    pub fn seen_from(&self, viewer: &Claim) -> String {
        if self.namespace == viewer.namespace { self.to_string() } else { "an object in another namespace".to_string() }
    }

    /// The claim that owns among `self` and `others`.
    pub fn owner<'a>(&'a self, others: &'a [Claim]) -> &'a Claim {
        others.iter().fold(self, |best, c| if c.order_key() < best.order_key() { c } else { best })
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a plan does nothing (more) although Atlas may differ from the spec.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Hold {
    /// The `atlas-access.dev/paused` annotation stops all writes.
    Paused,
    /// An older object claims the same Atlas user.
    Conflict { owner: String },
    /// The invitation expired and `reinvite: Never`.
    InvitationExpired { username: String, expired_at: Option<String> },
    /// The invitation was rejected and `reinvite` is not `OnExpiryOrRejection`.
    InvitationRejected { username: String },
    /// The spec cannot be carried out as written (admission normally prevents this).
    InvalidSpec { message: String },
    /// More members listed than a team can hold.
    TooManyMembers { listed: usize },
    /// The team named in the spec is not in the organization.
    TeamNotFound { team: String },
    /// The person rejected the invitation; the next one goes out at `at` (capped backoff
    /// after `reinvitations` re-sent for this generation) or at once on a spec change.
    ReinviteBackoff { username: String, at: String, reinvitations: u32 },
    /// Atlas reports an `orgMembershipStatus` this operator does not know: no call is made.
    UnknownMembershipStatus { username: String },
    /// The spec names another team than the one the object is pinned to (`status.teamId`).
    TeamChanged { pinned: String, named: String },
    /// An older Exclusive AtlasTeamMembership owns the team.
    TeamConflict { owner: String },
}

impl Hold {
    pub fn reason(&self) -> &'static str {
        match self {
            Hold::Paused => reasons::PAUSED,
            Hold::Conflict { .. } => reasons::CONFLICT,
            Hold::InvitationExpired { .. } => reasons::INVITATION_EXPIRED,
            Hold::InvitationRejected { .. } => reasons::INVITATION_REJECTED,
            Hold::InvalidSpec { .. } => reasons::INVALID_SPEC,
            Hold::TooManyMembers { .. } => reasons::TOO_MANY_MEMBERS,
            Hold::TeamNotFound { .. } => reasons::TEAM_NOT_FOUND,
            Hold::ReinviteBackoff { .. } => reasons::INVITATION_REJECTED,
            Hold::UnknownMembershipStatus { .. } => reasons::UNKNOWN_MEMBERSHIP_STATUS,
            Hold::TeamChanged { .. } => reasons::TEAM_CHANGED,
            Hold::TeamConflict { .. } => reasons::CONFLICT,
        }
    }

    /// Whether only a change (of spec, annotation or Atlas) ends it: kstatus `Stalled`.
    /// A pause is deliberate: it is stalled only while changes wait ([`paused_conditions`]); a
    /// re-invitation backoff ends by itself.
    pub fn is_stalled(&self) -> bool {
        !matches!(self, Hold::Paused | Hold::ReinviteBackoff { .. })
    }
}

/// The conditions of a paused object. In sync: `Ready=True`, reason `Paused` (kstatus
/// Current). With changes waiting: `Ready=False` and `Stalled=True`, reason `Paused`, so that
/// kstatus says Failed with the waiting changes in its message instead of InProgress until a
/// timeout: nothing will progress until someone removes the annotation.
pub(crate) fn paused_conditions(
    desired: &mut Vec<crate::api::conditions::DesiredCondition>,
    drift: bool,
    message: String,
) {
    use crate::api::conditions::{DesiredCondition, READY, STALLED};
    desired.push(DesiredCondition::new(READY, !drift, reasons::PAUSED, message.clone()));
    if drift {
        desired.push(DesiredCondition::new(STALLED, true, reasons::PAUSED, message));
    }
}

/// The `NotInOrg` members whose username no AtlasOrgUser of the namespace declares (a typo,
/// or a person nobody invites): nothing the operator does will bring them into the org.
/// `org_user_refs` maps the namespace's AtlasOrgUser names to their usernames.
pub(crate) fn undeclared_not_in_org(
    members: &[crate::api::MemberStatus],
    org_user_refs: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let declared: std::collections::BTreeSet<String> = org_user_refs.values().map(|u| username_key(u)).collect();
    members
        .iter()
        .filter(|m| m.state == crate::api::MemberState::NotInOrg && m.org_user_ref.is_none())
        .filter_map(|m| m.username.as_deref())
        .filter(|u| !declared.contains(&username_key(u)))
        .map(str::to_string)
        .collect()
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::Paused => {
                write!(f, "paused by the annotation {}=\"true\": no writes to Atlas", crate::api::PAUSED_ANNOTATION)
            }
            Hold::Conflict { owner } => {
                write!(f, "{owner} (older) already manages this Atlas user; this object does nothing")
            }
            Hold::InvitationExpired { username, expired_at } => {
                write!(f, "the invitation of {username} expired")?;
                if let Some(at) = expired_at {
                    write!(f, " at {at}")?;
                }
                f.write_str(" and reinvite is Never: set reinvite to OnExpiry to send a new one")
            }
            Hold::InvitationRejected { username } => {
                write!(f, "{username} rejected the invitation; set reinvite to OnExpiryOrRejection to send a new one")
            }
            Hold::InvalidSpec { message } => f.write_str(message),
            Hold::TooManyMembers { listed } => write!(
                f,
                "{listed} members listed; an Atlas team holds at most {}: nothing was changed",
                crate::api::MAX_TEAM_MEMBERS
            ),
            Hold::TeamNotFound { team } => write!(f, "team {team} not found in the organization"),
            Hold::ReinviteBackoff { username, at, reinvitations } => write!(
                f,
                "{username} rejected the invitation; it is sent again at {at} ({reinvitations} re-sent since the spec last changed; a spec change sends it at once)"
            ),
            Hold::UnknownMembershipStatus { username } => write!(
                f,
                "Atlas reports a membership status for {username} this operator does not know: nothing is changed until the operator is upgraded"
            ),
            Hold::TeamChanged { pinned, named } => write!(
                f,
                "spec.team now names team {named}, but this object manages team {pinned} (status.teamId) and never \
                 moves: nothing was changed; to manage another team create a new AtlasTeamMembership (deleting this \
                 one removes the members it added)"
            ),
            Hold::TeamConflict { owner } => write!(
                f,
                "{owner} (older, Exclusive) already declares the members of this team; this Exclusive object makes no \
                 call: make it Additive, or delete one of the two"
            ),
        }
    }
}

/// Ordered Atlas calls, and why nothing more is done.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub actions: Vec<Action>,
    pub failure_mode: FailureMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// The plan removes what the object manages because the object is being deleted.
    pub deleting: bool,
    /// Decisions worth telling a person (adoption, hand-over, deferred removals).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Plan {
    fn new(failure_mode: FailureMode, deleting: bool) -> Self {
        Self { actions: Vec::new(), failure_mode, hold: None, deleting, notes: Vec::new() }
    }

    fn held(failure_mode: FailureMode, deleting: bool, hold: Hold) -> Self {
        Self { hold: Some(hold), ..Self::new(failure_mode, deleting) }
    }

    /// Whether the executor goes on after a failed action.
    pub fn continue_after(&self, error: &ActionError) -> bool {
        continue_after(self.failure_mode, error)
    }

    /// For a deletion plan: whether the finalizer may go, given what the executor did. A
    /// paused object keeps its finalizer (no writes, so nothing was cleaned up).
    pub fn finalizer_may_be_removed(&self, outcomes: &[ActionOutcome]) -> bool {
        self.deleting
            && self.hold != Some(Hold::Paused)
            && self.actions.iter().enumerate().all(|(i, a)| settle(a, outcomes.get(i)) == Settled::Done)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(hold) = &self.hold {
            writeln!(f, "held ({}): {hold}", hold.reason())?;
        }
        if self.actions.is_empty() && self.hold.is_none() {
            writeln!(f, "nothing to do")?;
        }
        for (i, action) in self.actions.iter().enumerate() {
            writeln!(f, "{}. {action}", i + 1)?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// The conditions of a paused object ([`paused_conditions`]): ready only while Atlas already
/// matches what the object would do unpaused. `unpaused` plans as if the annotation were gone and says whether
/// anything beyond the plan's actions and hold still differs (a team member not yet in).
fn paused_condition(
    desired: &mut Vec<conditions_api::DesiredCondition>,
    deleting: bool,
    unpaused: impl FnOnce() -> (Plan, bool),
) {
    let mut message = Hold::Paused.to_string();
    let drift = if deleting {
        message.push_str("; deletion waits until the annotation is removed (or deletionPolicy is Orphan)");
        true
    } else {
        let (would, other_drift) = unpaused();
        if let Some(first) = would.actions.first() {
            message.push_str(&format!("; {} change(s) waiting, first: {first}", would.actions.len()));
        }
        !would.actions.is_empty() || would.hold.is_some() || other_drift
    };
    paused_conditions(desired, drift, message);
}
