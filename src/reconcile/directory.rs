//! The pure part of the per-org user index and of a team's member list: lookups by
//! username (case-insensitive) over users of every membership status, updated in place
//! from the answers of the writes the executor makes, so a status can be computed without
//! listing again.

use std::collections::BTreeMap;

use super::action::Action;
use super::outcome::{ActionOutcome, Settled, settle};
use crate::atlas::models::{GroupRoleAssignment, OrgUser, Team};

/// Usernames are email addresses; Atlas treats them case-insensitively.
pub fn username_key(username: &str) -> String {
    username.trim().to_lowercase()
}

/// Every user of one organization, of every membership status (the index lists PENDING,
/// ACTIVE, INVITATION_EXPIRED and INVITATION_REJECTED), keyed by lowercase username.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OrgUserDirectory {
    by_username: BTreeMap<String, OrgUser>,
}

impl OrgUserDirectory {
    /// Build from a listing. Should Atlas list one username twice (an old expired record next
    /// to a current invitation), the pending or active one wins: that is the one Atlas acts on.
    pub fn new(users: impl IntoIterator<Item = OrgUser>) -> Self {
        let mut by_username: BTreeMap<String, OrgUser> = BTreeMap::new();
        for user in users {
            let key = username_key(&user.username);
            match by_username.get(&key) {
                Some(existing)
                    if existing.org_membership_status.is_in_org() && !user.org_membership_status.is_in_org() => {}
                _ => {
                    by_username.insert(key, user);
                }
            }
        }
        Self { by_username }
    }

    pub fn get(&self, username: &str) -> Option<&OrgUser> {
        self.by_username.get(&username_key(username))
    }

    pub fn get_by_id(&self, user_id: &str) -> Option<&OrgUser> {
        self.by_username.values().find(|u| u.id == user_id)
    }

    pub fn len(&self) -> usize {
        self.by_username.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_username.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &OrgUser> {
        self.by_username.values()
    }

    /// Record a user as Atlas just returned it.
    pub fn upsert(&mut self, user: OrgUser) {
        self.by_username.insert(username_key(&user.username), user);
    }

    /// Forget a user Atlas just removed.
    pub fn remove_id(&mut self, user_id: &str) -> Option<OrgUser> {
        let key = self.by_username.iter().find(|(_, u)| u.id == user_id).map(|(k, _)| k.clone())?;
        self.by_username.remove(&key)
    }

    /// The user with `user_id`, with an (empty if new) assignment for `project_id`.
    fn project_user_mut<'s>(this: &'s mut Self, user_id: &str, project_id: &str) -> Option<&'s mut OrgUser> {
        let user = this.by_username.values_mut().find(|u| u.id == user_id)?;
        let assignments = &mut user.roles.group_role_assignments;
        if !assignments.iter().any(|a| a.group_id.as_deref() == Some(project_id)) {
            assignments.push(GroupRoleAssignment { group_id: Some(project_id.to_string()), group_roles: Vec::new() });
        }
        Some(user)
    }

    /// Update after one executed action: the user Atlas returned replaces the old record; a
    /// removal (or a removal of someone already gone) drops it.
    pub fn apply(&mut self, action: &Action, outcome: &ActionOutcome) {
        if let ActionOutcome::Done(Some(user)) = outcome
            && !matches!(action, Action::RemoveOrgUser { .. })
        {
            self.upsert(user.as_ref().clone());
            return;
        }
        if settle(action, Some(outcome)) != Settled::Done {
            return;
        }
        // Project-role calls answer with the project's view of the user only: their effect
        // is applied to the org record here.
        let project_roles = Self::project_user_mut;
        match action {
            Action::RemoveOrgUser { user_id, .. } => {
                self.remove_id(user_id);
            }
            Action::AddProjectRole { user_id, project_id, role, .. } => {
                if let Some(user) = project_roles(self, user_id, project_id) {
                    for a in user.roles.group_role_assignments.iter_mut() {
                        if a.group_id.as_deref() == Some(project_id.as_str()) && !a.group_roles.contains(role) {
                            a.group_roles.push(role.clone());
                        }
                    }
                }
            }
            Action::RemoveProjectRole { user_id, project_id, role, .. } => {
                if let Some(user) = project_roles(self, user_id, project_id) {
                    for a in user.roles.group_role_assignments.iter_mut() {
                        if a.group_id.as_deref() == Some(project_id.as_str()) {
                            a.group_roles.retain(|r| r != role);
                        }
                    }
                    user.roles.group_role_assignments.retain(|a| !a.group_roles.is_empty());
                }
            }
            Action::RemoveProjectUser { user_id, project_id, .. } => {
                if let Some(user) = project_roles(self, user_id, project_id) {
                    user.roles.group_role_assignments.retain(|a| a.group_id.as_deref() != Some(project_id.as_str()));
                }
            }
            _ => {}
        }
    }
}

/// One team and the users Atlas lists in it (every page), by user id. Their membership
/// status comes from the [`OrgUserDirectory`].
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedTeam {
    pub id: String,
    pub name: String,
    /// user id -> username
    members: BTreeMap<String, String>,
}

impl ObservedTeam {
    pub fn new(team: Team, members: impl IntoIterator<Item = OrgUser>) -> Self {
        Self { id: team.id, name: team.name, members: members.into_iter().map(|u| (u.id, u.username)).collect() }
    }

    pub fn contains(&self, user_id: &str) -> bool {
        self.members.contains_key(user_id)
    }

    /// (user id, username) of every member, by user id.
    pub fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members.iter().map(|(id, name)| (id.as_str(), name.as_str()))
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// A user who left the organization (and so every team).
    pub fn remove_member(&mut self, user_id: &str) {
        self.members.remove(user_id);
    }

    /// Update after one executed team action on this team.
    pub fn apply(&mut self, action: &Action, outcome: &ActionOutcome) {
        match action {
            Action::AddTeamUser { team_id, user_id, username, .. }
                if *team_id == self.id && settle(action, Some(outcome)) == Settled::Done =>
            {
                self.members.insert(user_id.clone(), username.clone());
            }
            Action::RemoveTeamUser { team_id, user_id, .. }
                if *team_id == self.id && settle(action, Some(outcome)) == Settled::Done =>
            {
                self.members.remove(user_id);
            }
            _ => {}
        }
    }
}
