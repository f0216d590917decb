//! The simulated Atlas data: organizations, their users (pending invitations included) and
//! teams, with Atlas's rules for invitations, roles and team membership. Every operation takes
//! the simulator's `now`, so invitation expiry follows the controllable clock.

use std::collections::{BTreeMap, HashMap};

use axum::http::StatusCode;
use jiff::{SignedDuration, Timestamp};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::clock::atlas_time;
use super::error::ApiFailure;
use super::error::codes;
use crate::atlas::models::{
    GroupRoleAssignment, INVITATION_LIFETIME_DAYS, MembershipStatus, OrgUser, OrgUserRequest, OrgUserRoles,
    OrgUserUpdateRequest,
};

/// The organization roles Atlas knows (`OrgUserRolesRequest.orgRoles` enum).
pub const ORG_ROLES: [&str; 7] = [
    "ORG_OWNER",
    "ORG_GROUP_CREATOR",
    "ORG_BILLING_ADMIN",
    "ORG_BILLING_READ_ONLY",
    "ORG_STREAM_PROCESSING_ADMIN",
    "ORG_READ_ONLY",
    "ORG_MEMBER",
];
const ORG_OWNER: &str = "ORG_OWNER";
/// 409 from createOrgTeam: a team with that name exists (not named by the spec).
pub const DUPLICATE_TEAM_NAME: &str = "DUPLICATE_TEAM_NAME";

fn invitation_lifetime() -> SignedDuration {
    SignedDuration::from_hours(24 * INVITATION_LIFETIME_DAYS)
}

/// One org user record; PENDING records are invitations.
#[derive(Debug, Clone)]
pub(crate) struct UserRec {
    pub id: String,
    pub username: String,
    status: MembershipStatus,
    pub roles: OrgUserRoles,
    pub team_ids: Vec<String>,
    invitation_created_at: Option<Timestamp>,
    invitation_expires_at: Option<Timestamp>,
    inviter_username: Option<String>,
    created_at: Option<Timestamp>,
    last_auth: Option<Timestamp>,
}

impl UserRec {
    /// A user with a fresh PENDING invitation sent `now`.
    fn invited(id: String, username: String, roles: OrgUserRoles, inviter: String, now: Timestamp) -> Self {
        Self {
            id,
            username,
            status: MembershipStatus::Pending,
            roles,
            team_ids: Vec::new(),
            invitation_created_at: Some(now),
            invitation_expires_at: now.checked_add(invitation_lifetime()).ok(),
            inviter_username: Some(inviter),
            created_at: None,
            last_auth: None,
        }
    }

    /// The status Atlas reports now: a PENDING invitation past its expiry is INVITATION_EXPIRED.
    pub fn status(&self, now: Timestamp) -> MembershipStatus {
        match (self.status, self.invitation_expires_at) {
            (MembershipStatus::Pending, Some(expires)) if expires <= now => MembershipStatus::InvitationExpired,
            (status, _) => status,
        }
    }

    pub fn is_in_org(&self, now: Timestamp) -> bool {
        self.status(now).is_in_org()
    }

    fn has_role(&self, role: &str) -> bool {
        self.roles.org_roles.iter().any(|r| r == role)
    }

    fn activate(&mut self, now: Timestamp) {
        self.status = MembershipStatus::Active;
        self.created_at = Some(now);
        self.last_auth = Some(now);
        self.invitation_created_at = None;
        self.invitation_expires_at = None;
        self.inviter_username = None;
    }

    /// The `OrgUserResponse` view (pending or active branch by status).
    pub fn view(&self, now: Timestamp) -> OrgUser {
        let status = self.status(now);
        let active = status == MembershipStatus::Active;
        let (first_name, last_name) = names_of(&self.username);
        OrgUser {
            id: self.id.clone(),
            username: self.username.clone(),
            org_membership_status: status,
            roles: self.roles.clone(),
            team_ids: self.team_ids.clone(),
            invitation_created_at: (!active).then(|| self.invitation_created_at.map(atlas_time)).flatten(),
            invitation_expires_at: (!active).then(|| self.invitation_expires_at.map(atlas_time)).flatten(),
            inviter_username: (!active).then(|| self.inviter_username.clone()).flatten(),
            created_at: active.then(|| self.created_at.map(atlas_time)).flatten(),
            first_name: active.then_some(first_name),
            last_name: active.then_some(last_name),
            last_auth: active.then(|| self.last_auth.map(atlas_time)).flatten(),
            country: active.then(|| "US".to_string()),
            mobile_number: None,
        }
    }
}

/// Plausible profile names for a simulated person: the email's local part, split on '.'.
pub(crate) fn names_of(username: &str) -> (String, String) {
    let local = username.split('@').next().unwrap_or(username);
    let mut parts = local.splitn(2, ['.', '_', '-', '+']);
    let capitalize = |s: &str| {
        let mut chars = s.chars();
        chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_else(|| "User".to_string())
    };
    let first = capitalize(parts.next().unwrap_or(""));
    let last = parts.next().map(capitalize).unwrap_or_else(|| "Simulated".to_string());
    (first, last)
}

#[derive(Debug, Clone)]
pub(crate) struct TeamRec {
    pub id: String,
    pub name: String,
    /// Member user ids in the order they joined.
    pub members: Vec<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Org {
    pub id: String,
    pub name: String,
    /// Users in a stable order (creation sequence), so pagination is stable.
    users: BTreeMap<u64, UserRec>,
    by_id: HashMap<String, u64>,
    by_username: HashMap<String, u64>,
    pub teams: Vec<TeamRec>,
    next_seq: u64,
}

impl Org {
    pub fn users(&self) -> impl Iterator<Item = &UserRec> {
        self.users.values()
    }

    pub fn user(&self, id: &str) -> Option<&UserRec> {
        self.by_id.get(id).and_then(|seq| self.users.get(seq))
    }

    fn user_mut(&mut self, id: &str) -> Option<&mut UserRec> {
        self.by_id.get(id).and_then(|seq| self.users.get_mut(seq))
    }

    pub fn user_by_username(&self, username: &str) -> Option<&UserRec> {
        self.by_username.get(&username.to_ascii_lowercase()).and_then(|seq| self.users.get(seq))
    }

    pub fn team(&self, id: &str) -> Option<&TeamRec> {
        self.teams.iter().find(|t| t.id == id)
    }

    fn team_mut(&mut self, id: &str) -> Option<&mut TeamRec> {
        self.teams.iter_mut().find(|t| t.id == id)
    }

    fn insert_user(&mut self, user: UserRec) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_id.insert(user.id.clone(), seq);
        self.by_username.insert(user.username.to_ascii_lowercase(), seq);
        self.users.insert(seq, user);
    }

    fn delete_user(&mut self, id: &str) -> Option<UserRec> {
        let seq = self.by_id.remove(id)?;
        let user = self.users.remove(&seq)?;
        self.by_username.remove(&user.username.to_ascii_lowercase());
        for team in &mut self.teams {
            team.members.retain(|m| m != id);
        }
        Some(user)
    }

    fn active_owner_count(&self, now: Timestamp) -> usize {
        self.users().filter(|u| u.status(now) == MembershipStatus::Active && u.has_role(ORG_OWNER)).count()
    }

    /// Refuses a change that would take ORG_OWNER from the organization's last active owner.
    fn check_keeps_an_owner(&self, user: &UserRec, keeps_owner: bool, now: Timestamp) -> Result<(), ApiFailure> {
        if !keeps_owner
            && user.has_role(ORG_OWNER)
            && user.status(now) == MembershipStatus::Active
            && self.active_owner_count(now) <= 1
        {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                codes::CANNOT_REMOVE_LAST_ORG_OWNER,
                format!("Cannot remove the last Organization Owner {} of organization {}.", user.username, self.id),
            ));
        }
        Ok(())
    }

    /// Puts `user_id` in each team of `team_ids` and takes it out of the others.
    fn set_user_teams(&mut self, user_id: &str, team_ids: &[String], max_members: usize) -> Result<(), ApiFailure> {
        for team_id in team_ids {
            let team = self.team(team_id).ok_or_else(|| ApiFailure::not_found("team", team_id))?;
            if !team.members.iter().any(|m| m == user_id) && team.members.len() >= max_members {
                return Err(team_full(team_id, max_members));
            }
        }
        for team in &mut self.teams {
            let wanted = team_ids.contains(&team.id);
            let present = team.members.iter().any(|m| m == user_id);
            if wanted && !present {
                team.members.push(user_id.to_string());
            } else if !wanted && present {
                team.members.retain(|m| m != user_id);
            }
        }
        if let Some(user) = self.user_mut(user_id) {
            user.team_ids = team_ids.to_vec();
        }
        Ok(())
    }
}

fn team_full(team_id: &str, max_members: usize) -> ApiFailure {
    ApiFailure::new(
        StatusCode::BAD_REQUEST,
        codes::TEAM_USER_LIMIT_EXCEEDED,
        format!("Team {team_id} already has the maximum of {max_members} users."),
    )
}

fn user_not_in_org(user_id: &str, org_id: &str) -> ApiFailure {
    ApiFailure::new(
        StatusCode::BAD_REQUEST,
        codes::USER_NOT_IN_ORG,
        format!("User {user_id} is not a pending or active member of organization {org_id}."),
    )
}

/// All simulated organizations.
#[derive(Debug)]
pub(crate) struct Store {
    ids: StdRng,
    orgs: HashMap<String, Org>,
    /// Organization ids in creation order.
    org_order: Vec<String>,
    pub max_team_members: usize,
    pub inviter_username: String,
}

impl Store {
    pub fn new(seed: u64, max_team_members: usize, inviter_username: String) -> Self {
        Self {
            ids: StdRng::seed_from_u64(seed),
            orgs: HashMap::new(),
            org_order: Vec::new(),
            max_team_members,
            inviter_username,
        }
    }

    /// A fresh 24-hex-digit id, reproducible from the seed.
    fn next_id(&mut self) -> String {
        let mut bytes = [0u8; 12];
        self.ids.fill_bytes(&mut bytes);
        hex::encode(bytes)
    }

    pub fn add_org(&mut self, name: &str) -> String {
        let id = self.next_id();
        self.orgs.insert(id.clone(), Org { id: id.clone(), name: name.to_string(), ..Org::default() });
        self.org_order.push(id.clone());
        id
    }

    pub fn orgs(&self) -> impl Iterator<Item = &Org> {
        self.org_order.iter().filter_map(|id| self.orgs.get(id))
    }

    pub fn org(&self, org_id: &str) -> Result<&Org, ApiFailure> {
        self.orgs.get(org_id).ok_or_else(|| ApiFailure::not_found("organization", org_id))
    }

    fn org_mut(&mut self, org_id: &str) -> Result<&mut Org, ApiFailure> {
        self.orgs.get_mut(org_id).ok_or_else(|| ApiFailure::not_found("organization", org_id))
    }

    pub fn add_team(&mut self, org_id: &str, name: &str, usernames: &[String]) -> Result<TeamRec, ApiFailure> {
        self.org(org_id)?;
        let id = self.next_id();
        let max = self.max_team_members;
        let org = self.org_mut(org_id)?;
        if org.teams.iter().any(|t| t.name.eq_ignore_ascii_case(name)) {
            return Err(ApiFailure::new(
                StatusCode::CONFLICT,
                DUPLICATE_TEAM_NAME,
                format!("A team named {name} already exists in organization {org_id}."),
            ));
        }
        let mut members = Vec::new();
        for username in usernames {
            let user = org.user_by_username(username).ok_or_else(|| user_not_in_org(username, org_id))?;
            if !members.contains(&user.id) {
                members.push(user.id.clone());
            }
        }
        if members.len() > max {
            return Err(team_full(&id, max));
        }
        for member in &members {
            if let Some(user) = org.user_mut(member) {
                user.team_ids.push(id.clone());
            }
        }
        let team = TeamRec { id, name: name.to_string(), members };
        org.teams.push(team.clone());
        Ok(team)
    }

    /// Puts a user straight into an organization (seeding, not an API call).
    pub fn seed_user(
        &mut self,
        org_id: &str,
        username: &str,
        status: MembershipStatus,
        org_roles: &[&str],
        now: Timestamp,
    ) -> Result<String, ApiFailure> {
        self.org(org_id)?;
        let id = self.next_id();
        let inviter = self.inviter_username.clone();
        let org = self.org_mut(org_id)?;
        if let Some(existing) = org.user_by_username(username) {
            let existing = existing.id.clone();
            org.delete_user(&existing);
        }
        let roles = OrgUserRoles { org_roles: org_roles.iter().map(|r| r.to_string()).collect(), ..Default::default() };
        let mut user = UserRec::invited(id.clone(), username.to_string(), roles, inviter, now);
        user.status = status;
        match status {
            MembershipStatus::Active => user.activate(now),
            MembershipStatus::Pending => {}
            MembershipStatus::InvitationExpired => {
                user.invitation_created_at = now.checked_sub(invitation_lifetime()).ok();
                user.invitation_expires_at = Some(now);
            }
            MembershipStatus::InvitationRejected => user.invitation_expires_at = None,
            // The simulator serves the spec's four statuses only.
            MembershipStatus::Unknown => {}
        }
        org.insert_user(user);
        Ok(id)
    }

    /// `createOrgUser`: invite, replacing an expired or rejected invitation; 409 if the
    /// username is PENDING or ACTIVE.
    pub fn invite(&mut self, org_id: &str, request: &OrgUserRequest, now: Timestamp) -> Result<OrgUser, ApiFailure> {
        let max = self.max_team_members;
        let org = self.org(org_id)?;
        if org.user_by_username(&request.username).is_some_and(|u| u.is_in_org(now)) {
            return Err(ApiFailure::new(
                StatusCode::CONFLICT,
                codes::USER_ALREADY_IN_ORG,
                format!("User {} is already a pending or active member of organization {org_id}.", request.username),
            ));
        }
        for team_id in &request.team_ids {
            let team = org.team(team_id).ok_or_else(|| ApiFailure::not_found("team", team_id))?;
            if team.members.len() >= max {
                return Err(team_full(team_id, max));
            }
        }
        let id = self.next_id();
        let inviter = self.inviter_username.clone();
        let org = self.org_mut(org_id)?;
        if let Some(replaced) = org.user_by_username(&request.username).map(|u| u.id.clone()) {
            org.delete_user(&replaced);
        }
        org.insert_user(UserRec::invited(id.clone(), request.username.clone(), request.roles.clone(), inviter, now));
        org.set_user_teams(&id, &request.team_ids, max)?;
        Ok(org.user(&id).map(|u| u.view(now)).expect("user just inserted"))
    }

    /// A user visible under `statuses` (Atlas hides expired and rejected invitations unless asked).
    pub fn visible_user(
        &self,
        org_id: &str,
        user_id: &str,
        statuses: &[MembershipStatus],
        now: Timestamp,
    ) -> Result<&UserRec, ApiFailure> {
        let org = self.org(org_id)?;
        org.user(user_id)
            .filter(|u| statuses.contains(&u.status(now)))
            .ok_or_else(|| ApiFailure::not_found("user", user_id))
    }

    fn member_mut(&mut self, org_id: &str, user_id: &str, now: Timestamp) -> Result<&mut UserRec, ApiFailure> {
        let org = self.org_mut(org_id)?;
        org.user_mut(user_id).filter(|u| u.is_in_org(now)).ok_or_else(|| ApiFailure::not_found("user", user_id))
    }

    /// `updateOrgUser` (PATCH): replaces the roles and/or the teams given.
    pub fn update_user(
        &mut self,
        org_id: &str,
        user_id: &str,
        update: &OrgUserUpdateRequest,
        now: Timestamp,
    ) -> Result<OrgUser, ApiFailure> {
        let max = self.max_team_members;
        let user = self.member_mut(org_id, user_id, now)?.clone();
        let org = self.org_mut(org_id)?;
        if let Some(roles) = &update.roles {
            org.check_keeps_an_owner(&user, roles.org_roles.iter().any(|r| r == ORG_OWNER), now)?;
        }
        if let Some(team_ids) = &update.team_ids {
            org.set_user_teams(user_id, team_ids, max)?;
        }
        let user = org.user_mut(user_id).expect("checked above");
        if let Some(roles) = &update.roles {
            user.roles.org_roles = roles.org_roles.clone();
            user.roles.group_role_assignments = roles.group_role_assignments.clone();
        }
        Ok(user.view(now))
    }

    /// `updateOrgUserRoles` (deprecated PUT): replaces the org roles of an active user.
    pub fn set_org_roles(
        &mut self,
        org_id: &str,
        user_id: &str,
        org_roles: &[String],
        now: Timestamp,
    ) -> Result<Vec<String>, ApiFailure> {
        let user = self.member_mut(org_id, user_id, now)?.clone();
        if user.status(now) != MembershipStatus::Active {
            return Err(ApiFailure::not_found("user", user_id));
        }
        if org_roles.is_empty() {
            return Err(last_role(&user));
        }
        self.org(org_id)?.check_keeps_an_owner(&user, org_roles.iter().any(|r| r == ORG_OWNER), now)?;
        let user = self.member_mut(org_id, user_id, now)?;
        user.roles.org_roles = org_roles.to_vec();
        Ok(user.roles.org_roles.clone())
    }

    /// `:addRole`: adding a role the user has changes nothing.
    pub fn add_role(&mut self, org_id: &str, user_id: &str, role: &str, now: Timestamp) -> Result<OrgUser, ApiFailure> {
        let user = self.member_mut(org_id, user_id, now)?;
        if !user.has_role(role) {
            user.roles.org_roles.push(role.to_string());
        }
        Ok(user.view(now))
    }

    /// `:removeRole`: refuses to take the last role, or the last active owner's ORG_OWNER.
    pub fn remove_role(
        &mut self,
        org_id: &str,
        user_id: &str,
        role: &str,
        now: Timestamp,
    ) -> Result<OrgUser, ApiFailure> {
        let user = self.member_mut(org_id, user_id, now)?.clone();
        if user.has_role(role) {
            if user.roles.org_roles.len() <= 1 {
                return Err(last_role(&user));
            }
            if role == ORG_OWNER {
                self.org(org_id)?.check_keeps_an_owner(&user, false, now)?;
            }
        }
        let user = self.member_mut(org_id, user_id, now)?;
        user.roles.org_roles.retain(|r| r != role);
        Ok(user.view(now))
    }

    /// `removeOrgUser`: removes a user or cancels an invitation. The 2023-01-01 version only
    /// removes active users.
    pub fn remove_user(
        &mut self,
        org_id: &str,
        user_id: &str,
        active_only: bool,
        now: Timestamp,
    ) -> Result<(), ApiFailure> {
        let org = self.org_mut(org_id)?;
        let user = org.user(user_id).ok_or_else(|| ApiFailure::not_found("user", user_id))?.clone();
        if active_only && user.status(now) != MembershipStatus::Active {
            return Err(ApiFailure::not_found("user", user_id));
        }
        org.check_keeps_an_owner(&user, false, now)?;
        org.delete_user(user_id);
        Ok(())
    }

    /// The organization a user id belongs to (user ids are unique across the simulator).
    /// The project-user paths name no organization: the simulator does not model projects
    /// themselves, so any well-formed `groupId` is a project of the user's organization (as
    /// createOrgUser's `groupRoleAssignments` already accept any).
    pub fn org_of_user(&self, user_id: &str) -> Option<String> {
        self.orgs().find(|o| o.user(user_id).is_some()).map(|o| o.id.clone())
    }

    /// `addGroupUserRole` (`:addRole`): one project role. "You can add a role to an active
    /// user or a user that has been invited" (spec, addGroupUserRole): PENDING and ACTIVE
    /// users only, others are 404. Adding a role the user holds changes nothing.
    pub fn group_add_role(
        &mut self,
        org_id: &str,
        group_id: &str,
        user_id: &str,
        role: &str,
        now: Timestamp,
    ) -> Result<UserRec, ApiFailure> {
        let user = self.member_mut(org_id, user_id, now)?;
        let assignments = &mut user.roles.group_role_assignments;
        match assignments.iter_mut().find(|a| a.group_id.as_deref() == Some(group_id)) {
            Some(a) if a.group_roles.iter().any(|r| r == role) => {}
            Some(a) => a.group_roles.push(role.to_string()),
            None => assignments.push(GroupRoleAssignment {
                group_id: Some(group_id.to_string()),
                group_roles: vec![role.to_string()],
            }),
        }
        Ok(user.clone())
    }

    /// `removeGroupUserRole` (`:removeRole`): "A user must have at least one role at all
    /// times" (spec, removeGroupUserRole; ../shared/atlas-api/README.md): taking the only role
    /// is refused (400). A user without roles in the project is not a project user: 404.
    /// Removing a role the user does not hold changes nothing.
    pub fn group_remove_role(
        &mut self,
        org_id: &str,
        group_id: &str,
        user_id: &str,
        role: &str,
        now: Timestamp,
    ) -> Result<UserRec, ApiFailure> {
        let user = self.member_mut(org_id, user_id, now)?;
        let username = user.username.clone();
        let assignment = user
            .roles
            .group_role_assignments
            .iter_mut()
            .find(|a| a.group_id.as_deref() == Some(group_id) && !a.group_roles.is_empty())
            .ok_or_else(|| ApiFailure::not_found("project user", user_id))?;
        if assignment.group_roles.iter().any(|r| r == role) {
            if assignment.group_roles.len() <= 1 {
                return Err(ApiFailure::new(
                    StatusCode::BAD_REQUEST,
                    codes::CANNOT_REMOVE_LAST_GROUP_ROLE,
                    format!(
                        "Cannot remove the only role {role} of {username} in project {group_id}; add another role first or remove the user from the project."
                    ),
                ));
            }
            assignment.group_roles.retain(|r| r != role);
        }
        Ok(user.clone())
    }

    /// `removeGroupUser`: "You can remove an active user or a user that has not yet accepted
    /// the invitation" (spec, removeGroupUser, 2025-02-19; the 2023-01-01 version removes
    /// active users only). The user stays in the organization. Not a project user: 404.
    pub fn group_remove_user(
        &mut self,
        org_id: &str,
        group_id: &str,
        user_id: &str,
        active_only: bool,
        now: Timestamp,
    ) -> Result<(), ApiFailure> {
        let user = self.member_mut(org_id, user_id, now)?;
        if active_only && user.status(now) != MembershipStatus::Active {
            return Err(ApiFailure::not_found("user", user_id));
        }
        let assignments = &mut user.roles.group_role_assignments;
        let before = assignments.len();
        assignments.retain(|a| a.group_id.as_deref() != Some(group_id) || a.group_roles.is_empty());
        if assignments.len() == before {
            return Err(ApiFailure::not_found("project user", user_id));
        }
        Ok(())
    }

    pub fn team(&self, org_id: &str, team_id: &str) -> Result<&TeamRec, ApiFailure> {
        self.org(org_id)?.team(team_id).ok_or_else(|| ApiFailure::not_found("team", team_id))
    }

    pub fn team_by_name(&self, org_id: &str, name: &str) -> Result<&TeamRec, ApiFailure> {
        self.org(org_id)?.teams.iter().find(|t| t.name == name).ok_or_else(|| ApiFailure::not_found("team", name))
    }

    /// `:addUser`: pending or active users only; adding a member again changes nothing.
    pub fn team_add_user(
        &mut self,
        org_id: &str,
        team_id: &str,
        user_id: &str,
        now: Timestamp,
    ) -> Result<OrgUser, ApiFailure> {
        let max = self.max_team_members;
        self.team(org_id, team_id)?;
        let org = self.org_mut(org_id)?;
        if !org.user(user_id).is_some_and(|u| u.is_in_org(now)) {
            return Err(user_not_in_org(user_id, org_id));
        }
        let team = org.team_mut(team_id).expect("checked above");
        if !team.members.iter().any(|m| m == user_id) {
            if team.members.len() >= max {
                return Err(team_full(team_id, max));
            }
            team.members.push(user_id.to_string());
            org.user_mut(user_id).expect("checked above").team_ids.push(team_id.to_string());
        }
        Ok(org.user(user_id).expect("checked above").view(now))
    }

    /// `:removeUser` (and the deprecated DELETE): the user must be in the team.
    pub fn team_remove_user(
        &mut self,
        org_id: &str,
        team_id: &str,
        user_id: &str,
        now: Timestamp,
    ) -> Result<OrgUser, ApiFailure> {
        self.team(org_id, team_id)?;
        let org = self.org_mut(org_id)?;
        if org.user(user_id).is_none() {
            return Err(user_not_in_org(user_id, org_id));
        }
        let team = org.team_mut(team_id).expect("checked above");
        if !team.members.iter().any(|m| m == user_id) {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                codes::USER_NOT_IN_TEAM,
                format!("User {user_id} is not a member of team {team_id}."),
            ));
        }
        team.members.retain(|m| m != user_id);
        let user = org.user_mut(user_id).expect("checked above");
        user.team_ids.retain(|t| t != team_id);
        Ok(user.view(now))
    }

    /// The deprecated bulk `addOrgTeamUsers`: all or nothing.
    pub fn team_add_users(
        &mut self,
        org_id: &str,
        team_id: &str,
        user_ids: &[String],
        now: Timestamp,
    ) -> Result<(), ApiFailure> {
        let max = self.max_team_members;
        let team = self.team(org_id, team_id)?.clone();
        let org = self.org(org_id)?;
        let mut added = Vec::new();
        for user_id in user_ids {
            if !org.user(user_id).is_some_and(|u| u.is_in_org(now)) {
                return Err(user_not_in_org(user_id, org_id));
            }
            if !team.members.contains(user_id) && !added.contains(user_id) {
                added.push(user_id.clone());
            }
        }
        if team.members.len() + added.len() > max {
            return Err(team_full(team_id, max));
        }
        let org = self.org_mut(org_id)?;
        for user_id in added {
            org.team_mut(team_id).expect("checked above").members.push(user_id.clone());
            org.user_mut(&user_id).expect("checked above").team_ids.push(team_id.to_string());
        }
        Ok(())
    }

    fn invitation_mut(&mut self, org_id: &str, username: &str, now: Timestamp) -> Option<&mut UserRec> {
        let org = self.orgs.get_mut(org_id)?;
        let seq = *org.by_username.get(&username.to_ascii_lowercase())?;
        org.users.get_mut(&seq).filter(|u| u.status(now) == MembershipStatus::Pending)
    }

    /// The invitee accepts: PENDING becomes ACTIVE. False if there is no open invitation.
    pub fn accept_invitation(&mut self, org_id: &str, username: &str, now: Timestamp) -> bool {
        self.invitation_mut(org_id, username, now).map(|u| u.activate(now)).is_some()
    }

    /// The invitee declines: INVITATION_REJECTED, with no expiry.
    pub fn reject_invitation(&mut self, org_id: &str, username: &str, now: Timestamp) -> bool {
        self.invitation_mut(org_id, username, now)
            .map(|u| {
                u.status = MembershipStatus::InvitationRejected;
                u.invitation_expires_at = None;
            })
            .is_some()
    }

    /// The invitation runs out now, whatever its 30 days say.
    pub fn expire_invitation(&mut self, org_id: &str, username: &str, now: Timestamp) -> bool {
        self.invitation_mut(org_id, username, now)
            .map(|u| {
                u.status = MembershipStatus::InvitationExpired;
                u.invitation_expires_at = Some(now);
            })
            .is_some()
    }
}

fn last_role(user: &UserRec) -> ApiFailure {
    ApiFailure::new(
        StatusCode::BAD_REQUEST,
        codes::CANNOT_REMOVE_LAST_ORG_ROLE,
        format!("User {} must keep at least one organization role.", user.username),
    )
}

/// Organizations and teams with ids chosen by the caller, so a demo or a benchmark can serve
/// the ids its manifests name.
impl Store {
    pub fn add_org_with_id(&mut self, org_id: &str, name: &str) -> Result<(), ApiFailure> {
        if self.orgs.contains_key(org_id) {
            return Err(ApiFailure::new(
                StatusCode::CONFLICT,
                "ORG_ALREADY_EXISTS",
                format!("Organization {org_id} already exists."),
            ));
        }
        self.orgs.insert(org_id.to_string(), Org { id: org_id.to_string(), name: name.to_string(), ..Org::default() });
        self.org_order.push(org_id.to_string());
        Ok(())
    }

    /// Renames a team (as a person would in the Atlas UI). False if there is no such team.
    pub fn rename_team(&mut self, org_id: &str, team_id: &str, name: &str) -> bool {
        match self.org_mut(org_id).ok().and_then(|org| org.team_mut(team_id)) {
            Some(team) => {
                team.name = name.to_string();
                true
            }
            None => false,
        }
    }

    pub fn add_team_with_id(&mut self, org_id: &str, team_id: &str, name: &str) -> Result<(), ApiFailure> {
        let org = self.org_mut(org_id)?;
        if org.teams.iter().any(|t| t.id == team_id || t.name.eq_ignore_ascii_case(name)) {
            return Err(ApiFailure::new(
                StatusCode::CONFLICT,
                DUPLICATE_TEAM_NAME,
                format!("Team {team_id} or a team named {name} already exists in organization {org_id}."),
            ));
        }
        org.teams.push(TeamRec { id: team_id.to_string(), name: name.to_string(), members: Vec::new() });
        Ok(())
    }

    /// Sets a user's roles in one project as they stand (none: not in the project).
    pub fn seed_project_roles(
        &mut self,
        org_id: &str,
        user_id: &str,
        project_id: &str,
        roles: &[&str],
    ) -> Result<(), ApiFailure> {
        let org = self.org_mut(org_id)?;
        let user = org.user_mut(user_id).ok_or_else(|| ApiFailure::not_found("user", user_id))?;
        let assignments = &mut user.roles.group_role_assignments;
        assignments.retain(|a| a.group_id.as_deref() != Some(project_id));
        if !roles.is_empty() {
            assignments.push(crate::atlas::models::GroupRoleAssignment {
                group_id: Some(project_id.to_string()),
                group_roles: roles.iter().map(|r| r.to_string()).collect(),
            });
        }
        Ok(())
    }
}
