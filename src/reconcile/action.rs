//! What a plan asks Atlas to do: one [`Action`] per Atlas call, in order, each naming the
//! client operation it maps to so an executor is a plain `match`.

use std::fmt;

use serde::Serialize;

use crate::atlas::models::{MembershipStatus, OrgUserRequest};

/// Why a plan removes a user from the organization.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RemovalPurpose {
    /// The AtlasOrgUser is being deleted under `deletionPolicy: Delete`.
    Deletion,
    /// Atlas still lists the invitation as PENDING after its expiry; it is cancelled so a new
    /// one can be sent (createOrgUser answers 409 while a PENDING user exists).
    CancelExpiredInvitation,
}

/// One Atlas call. Variants map one to one onto client operations.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Action {
    /// `createOrgUser`: send an invitation (also replaces an expired or rejected one).
    CreateOrgUser {
        org_id: String,
        request: OrgUserRequest,
        /// The status of the invitation being replaced, for a re-invitation.
        #[serde(skip_serializing_if = "Option::is_none")]
        reissues: Option<MembershipStatus>,
    },
    /// `removeOrgUser`: remove the user, or cancel their invitation.
    RemoveOrgUser {
        org_id: String,
        user_id: String,
        username: String,
        /// What Atlas reported for the user when the plan was made.
        membership_status: MembershipStatus,
        purpose: RemovalPurpose,
    },
    /// `addOrgUserRole` (`:addRole`): one organization role.
    AddOrgRole { org_id: String, user_id: String, username: String, role: String },
    /// `removeOrgUserRole` (`:removeRole`): one organization role.
    RemoveOrgRole { org_id: String, user_id: String, username: String, role: String },
    /// `addGroupUserRole` (`POST /groups/{projectId}/users/{userId}:addRole`): one project
    /// role, atomically (roles granted by others in the project stay).
    AddProjectRole { org_id: String, project_id: String, user_id: String, username: String, role: String },
    /// `removeGroupUserRole` (`:removeRole`): one project role; planned after the additions
    /// of the same project so the user keeps at least one role there.
    RemoveProjectRole { org_id: String, project_id: String, user_id: String, username: String, role: String },
    /// `removeGroupUser` (`DELETE /groups/{projectId}/users/{userId}`): every role of the
    /// user in the project; the user stays in the organization.
    RemoveProjectUser { org_id: String, project_id: String, user_id: String, username: String },
    /// `addOrgTeamUser` (`:addUser`).
    AddTeamUser { org_id: String, team_id: String, user_id: String, username: String },
    /// `removeOrgTeamUser` (`:removeUser`).
    RemoveTeamUser { org_id: String, team_id: String, user_id: String, username: String },
}

impl Action {
    /// The Atlas user id the call is about, once known (an invitation has none yet).
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Action::CreateOrgUser { .. } => None,
            Action::RemoveOrgUser { user_id, .. }
            | Action::AddOrgRole { user_id, .. }
            | Action::RemoveOrgRole { user_id, .. }
            | Action::AddProjectRole { user_id, .. }
            | Action::RemoveProjectRole { user_id, .. }
            | Action::RemoveProjectUser { user_id, .. }
            | Action::AddTeamUser { user_id, .. }
            | Action::RemoveTeamUser { user_id, .. } => Some(user_id),
        }
    }

    /// The executor's phase of the call in an independent plan: removals (0) all finish
    /// before the additions (1) start.
    pub fn phase(&self) -> u8 {
        match self {
            Action::RemoveTeamUser { .. } => 0,
            _ => 1,
        }
    }

    /// The username the call is about.
    pub fn username(&self) -> &str {
        match self {
            Action::CreateOrgUser { request, .. } => &request.username,
            Action::RemoveOrgUser { username, .. }
            | Action::AddOrgRole { username, .. }
            | Action::RemoveOrgRole { username, .. }
            | Action::AddProjectRole { username, .. }
            | Action::RemoveProjectRole { username, .. }
            | Action::RemoveProjectUser { username, .. }
            | Action::AddTeamUser { username, .. }
            | Action::RemoveTeamUser { username, .. } => username,
        }
    }
}

fn join<S: AsRef<str>>(items: &[S]) -> String {
    items.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateOrgUser { org_id, request, reissues } => {
                match reissues {
                    None => write!(f, "invite {} to org {org_id}", request.username)?,
                    Some(MembershipStatus::InvitationRejected) => {
                        write!(f, "re-invite {} to org {org_id} (invitation rejected)", request.username)?
                    }
                    Some(_) => write!(f, "re-invite {} to org {org_id} (invitation expired)", request.username)?,
                }
                write!(f, " with {}", join(&request.roles.org_roles))?;
                for assignment in &request.roles.group_role_assignments {
                    let project = assignment.group_id.as_deref().unwrap_or("?");
                    write!(f, ", project {project}: {}", join(&assignment.group_roles))?;
                }
                if !request.team_ids.is_empty() {
                    write!(f, ", teams {}", join(&request.team_ids))?;
                }
                Ok(())
            }
            Action::RemoveOrgUser { org_id, user_id, username, membership_status, purpose } => match purpose {
                RemovalPurpose::CancelExpiredInvitation => write!(
                    f,
                    "cancel the expired invitation of {username} ({user_id}) in org {org_id} (Atlas still lists it as PENDING)"
                ),
                RemovalPurpose::Deletion if *membership_status == MembershipStatus::Active => {
                    write!(f, "remove {username} ({user_id}) from org {org_id}")
                }
                RemovalPurpose::Deletion => {
                    write!(f, "cancel the invitation of {username} ({user_id}) to org {org_id}")
                }
            },
            Action::AddOrgRole { org_id, user_id, username, role } => {
                write!(f, "add org role {role} to {username} ({user_id}) in org {org_id}")
            }
            Action::RemoveOrgRole { org_id, user_id, username, role } => {
                write!(f, "remove org role {role} from {username} ({user_id}) in org {org_id}")
            }
            Action::AddProjectRole { org_id, project_id, user_id, username, role } => {
                write!(f, "add project role {role} to {username} ({user_id}) in project {project_id} of org {org_id}")
            }
            Action::RemoveProjectRole { org_id, project_id, user_id, username, role } => write!(
                f,
                "remove project role {role} from {username} ({user_id}) in project {project_id} of org {org_id}"
            ),
            Action::RemoveProjectUser { org_id, project_id, user_id, username } => {
                write!(f, "remove {username} ({user_id}) from project {project_id} of org {org_id}")
            }
            Action::AddTeamUser { org_id, team_id, user_id, username } => {
                write!(f, "add {username} ({user_id}) to team {team_id} in org {org_id}")
            }
            Action::RemoveTeamUser { org_id, team_id, user_id, username } => {
                write!(f, "remove {username} ({user_id}) from team {team_id} in org {org_id}")
            }
        }
    }
}

/// How an executor treats a failed call.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FailureMode {
    /// Each call builds on the previous ones (roles: add before remove): stop at the first failure.
    Sequential,
    /// Calls are independent (one team member each): a refusal for one member does not stop the
    /// others; only failures that would hit every call (auth, rate limit, outage) stop the plan.
    /// They may overlap, except that every removal finishes before the first addition starts
    /// (at Atlas's limit of 250 users a team, the additions need the room).
    Independent,
}
