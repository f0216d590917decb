//! The simulator's seed file (`atlas-access-operator sim --config FILE`): credentials,
//! organizations, teams and users to start with.
//!
//! ```yaml
//! apiKeys: [{publicKey: demopub, privateKey: demopriv}]
//! serviceAccounts: [{clientId: mdb_sa_id_demo, clientSecret: mdb_sa_sk_demo}]
//! orgs:
//!   - name: demo
//!     teams: [platform-admins]
//!     users:
//!       - {username: owner@example.com, orgMembershipStatus: ACTIVE, orgRoles: [ORG_OWNER], teams: [platform-admins]}
//! ```

use std::path::Path;

use serde::Deserialize;

use super::SimState;
use crate::atlas::models::MembershipStatus;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a valid simulator seed file: {source}")]
    Parse { path: String, source: serde_yaml::Error },
    #[error("user {username} names team {team}, which organization {org} does not have")]
    UnknownTeam { org: String, username: String, team: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedFile {
    #[serde(default)]
    pub api_keys: Vec<SeedApiKey>,
    #[serde(default)]
    pub service_accounts: Vec<SeedServiceAccount>,
    #[serde(default)]
    pub orgs: Vec<SeedOrg>,
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedApiKey {
    pub public_key: String,
    pub private_key: String,
}

impl std::fmt::Debug for SeedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedApiKey").field("public_key", &self.public_key).finish_non_exhaustive()
    }
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedServiceAccount {
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for SeedServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedServiceAccount").field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedOrg {
    pub name: String,
    #[serde(default)]
    pub teams: Vec<String>,
    #[serde(default)]
    pub users: Vec<SeedUser>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedUser {
    pub username: String,
    #[serde(default = "active")]
    pub org_membership_status: MembershipStatus,
    #[serde(default = "member")]
    pub org_roles: Vec<String>,
    #[serde(default)]
    pub teams: Vec<String>,
}

fn active() -> MembershipStatus {
    MembershipStatus::Active
}

fn member() -> Vec<String> {
    vec!["ORG_MEMBER".to_string()]
}

/// What a seed created, by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeededOrg {
    pub id: String,
    pub name: String,
    /// (id, name)
    pub teams: Vec<(String, String)>,
    /// (id, username)
    pub users: Vec<(String, String)>,
}

impl SeedFile {
    pub fn load(path: &Path) -> Result<Self, SeedError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read { path: shown.clone(), source })?;
        serde_yaml::from_str(&text).map_err(|source| SeedError::Parse { path: shown, source })
    }

    /// Creates the organizations, teams and users in a running simulator.
    pub fn apply(&self, state: &SimState) -> Result<Vec<SeededOrg>, SeedError> {
        let mut seeded = Vec::new();
        for org in &self.orgs {
            let id = state.add_org(&org.name);
            let teams: Vec<(String, String)> =
                org.teams.iter().map(|name| (state.add_team(&id, name), name.clone())).collect();
            let mut users = Vec::new();
            for user in &org.users {
                let roles: Vec<&str> = user.org_roles.iter().map(String::as_str).collect();
                let user_id = state.add_user(&id, &user.username, user.org_membership_status, &roles);
                for team in &user.teams {
                    let (team_id, _) =
                        teams.iter().find(|(_, name)| name == team).ok_or_else(|| SeedError::UnknownTeam {
                            org: org.name.clone(),
                            username: user.username.clone(),
                            team: team.clone(),
                        })?;
                    state.add_team_member(&id, team_id, &user_id);
                }
                users.push((user_id, user.username.clone()));
            }
            seeded.push(SeededOrg { id, name: org.name.clone(), teams, users });
        }
        Ok(seeded)
    }
}
