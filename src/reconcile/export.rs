//! An organization that already exists, as manifests: one AtlasOrgUser per person and one
//! AtlasTeamMembership per team, written so that applying them changes nothing in Atlas
//! (every object adopts what is there). Pure: what Atlas listed comes in, objects come out.
//!
//! - Users: PENDING and ACTIVE users, with their org roles, project roles and team ids; they
//!   predate the objects, so each gets `deletionPolicy: Orphan` (deleting the object never
//!   removes a person the operator did not invite). Expired and rejected invitations are not
//!   in the organization and are left out (reported in `skipped`).
//! - Teams: by team id, `mode: Additive`, members by `orgUserRef` to the exported users,
//!   `deletionPolicy: Orphan`.
//! - Names: derived from the username (or team name), valid DNS-1123 subdomains, unique; a
//!   name two usernames would share gets a short hash of the username.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use md5::{Digest as _, Md5};

use crate::api::{
    AtlasOrgUser, AtlasOrgUserSpec, AtlasTeamMembership, AtlasTeamMembershipSpec, DeletionPolicy, MembershipMode,
    OrgRole, OrgUserRef, ProjectRole, ProjectRoleAssignment, ReinvitePolicy, SecretRef, TeamMember, TeamRef,
};
use crate::atlas::models::{OrgUser, Team};

/// Longest Kubernetes object name (DNS-1123 subdomain).
const MAX_NAME: usize = 253;

/// How the manifests are written.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// `metadata.namespace` of every object (None: left out, `kubectl apply -n` decides).
    pub namespace: Option<String>,
    /// `credentialsSecretRef.name` of every object (None: the operator's credentials).
    pub credentials_secret: Option<String>,
}

/// What was read from one organization.
#[derive(Clone, Debug, Default)]
pub struct OrgSnapshot {
    pub org_id: String,
    /// Every user, all membership statuses.
    pub users: Vec<OrgUser>,
    /// Every team with its members.
    pub teams: Vec<(Team, Vec<OrgUser>)>,
}

/// The manifests, users first (teams refer to them), each list sorted by name.
#[derive(Clone, Debug, Default)]
pub struct Exported {
    pub org_users: Vec<AtlasOrgUser>,
    pub team_memberships: Vec<AtlasTeamMembership>,
    /// What was left out, and why (one line each).
    pub skipped: Vec<String>,
}

/// A DNS-1123 subdomain from free text: lowercase alphanumeric runs, joined by `.` where only
/// dots stood between them, by `-at-` across an `@`, by `-` otherwise; so every dot-separated
/// label starts and ends alphanumeric.
pub fn kubernetes_name(text: &str, prefix: &str) -> String {
    let mut out = String::from(prefix);
    let mut separator = String::new();
    for c in text.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            if !separator.is_empty() && !out.is_empty() && !out.ends_with(['.', '-']) {
                out.push_str(if separator.contains('@') {
                    "-at-"
                } else if separator.chars().all(|s| s == '.') {
                    "."
                } else {
                    "-"
                });
            }
            separator.clear();
            out.push(c);
        } else {
            separator.push(c);
        }
    }
    let mut name: String = out.chars().take(MAX_NAME).collect();
    while name.ends_with(['.', '-']) {
        name.pop();
    }
    if name.is_empty() { "unnamed".to_string() } else { name }
}

fn short_hash(text: &str) -> String {
    hex::encode(&Md5::digest(text.as_bytes())[..4])
}

/// Names for `texts` (in the given order), unique: a name two texts would share gets a hash of
/// its text on every holder, so the result does not depend on which came first.
fn unique_names(texts: &[String], prefix: &str) -> Vec<String> {
    let base: Vec<String> = texts.iter().map(|t| kubernetes_name(t, prefix)).collect();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for b in &base {
        *count.entry(b.as_str()).or_default() += 1;
    }
    base.iter()
        .zip(texts)
        .map(|(b, t)| {
            if count[b.as_str()] == 1 {
                return b.clone();
            }
            let hash = short_hash(t);
            let keep = MAX_NAME - hash.len() - 1;
            format!("{}-{hash}", b.chars().take(keep).collect::<String>().trim_end_matches(['.', '-']))
        })
        .collect()
}

fn meta(name: &str, options: &ExportOptions) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_string()), namespace: options.namespace.clone(), ..Default::default() }
}

fn secret_ref(options: &ExportOptions) -> Option<SecretRef> {
    options.credentials_secret.clone().map(|name| SecretRef { name })
}

/// The roles Atlas reports that the CRD can express; the rest reported in `skipped`.
fn known<R: std::str::FromStr>(roles: &[String], what: &str, username: &str, skipped: &mut Vec<String>) -> Vec<R> {
    let mut out = Vec::new();
    for role in roles {
        match role.parse() {
            Ok(r) => out.push(r),
            Err(_) => skipped.push(format!("{username}: {what} {role} is not one the CRD knows; left out")),
        }
    }
    out
}

fn org_user(
    user: &OrgUser,
    name: &str,
    org_id: &str,
    options: &ExportOptions,
    skipped: &mut Vec<String>,
) -> Option<AtlasOrgUser> {
    let mut org_roles: Vec<OrgRole> = known(&user.roles.org_roles, "org role", &user.username, skipped);
    org_roles.sort();
    org_roles.dedup();
    if org_roles.is_empty() {
        skipped.push(format!("{}: no organization role the CRD knows; not exported", user.username));
        return None;
    }
    let mut project_roles: Vec<ProjectRoleAssignment> = user
        .roles
        .group_role_assignments
        .iter()
        .filter_map(|a| {
            let project_id = a.group_id.clone()?;
            let mut roles: Vec<ProjectRole> =
                known(&a.group_roles, &format!("project {project_id} role"), &user.username, skipped);
            roles.sort();
            roles.dedup();
            (!roles.is_empty()).then_some(ProjectRoleAssignment { project_id, roles })
        })
        .collect();
    project_roles.sort_by(|a, b| a.project_id.cmp(&b.project_id));
    let mut team_ids = user.team_ids.clone();
    team_ids.sort();
    team_ids.dedup();
    Some(AtlasOrgUser {
        metadata: meta(name, options),
        spec: AtlasOrgUserSpec {
            org_id: org_id.to_string(),
            username: user.username.clone(),
            org_roles,
            project_roles,
            team_ids,
            credentials_secret_ref: secret_ref(options),
            deletion_policy: Some(DeletionPolicy::Orphan),
            adopted_deletion_policy: Default::default(),
            unlisted_access: Default::default(),
            reinvite: ReinvitePolicy::default(),
        },
        status: None,
    })
}

/// The manifests for one organization.
pub fn export_org(snapshot: &OrgSnapshot, options: &ExportOptions) -> Exported {
    let mut skipped = Vec::new();
    let mut people: Vec<&OrgUser> = Vec::new();
    for user in &snapshot.users {
        if user.org_membership_status.is_in_org() {
            people.push(user);
        } else {
            skipped.push(format!(
                "{}: {} is not in the organization; not exported",
                user.username,
                user.org_membership_status.as_str()
            ));
        }
    }
    people.sort_by_key(|u| u.username.to_lowercase());
    let names = unique_names(&people.iter().map(|u| u.username.to_lowercase()).collect::<Vec<_>>(), "");
    let mut name_of_user: BTreeMap<&str, &str> = BTreeMap::new();
    let mut org_users = Vec::new();
    for (user, name) in people.iter().zip(&names) {
        if let Some(object) = org_user(user, name, &snapshot.org_id, options, &mut skipped) {
            name_of_user.insert(user.id.as_str(), name.as_str());
            org_users.push(object);
        }
    }

    let mut teams: Vec<&(Team, Vec<OrgUser>)> = snapshot.teams.iter().collect();
    teams.sort_by(|a, b| (a.0.name.to_lowercase(), &a.0.id).cmp(&(b.0.name.to_lowercase(), &b.0.id)));
    let team_names = unique_names(&teams.iter().map(|(t, _)| t.name.to_lowercase()).collect::<Vec<_>>(), "team-");
    let mut team_memberships = Vec::new();
    for ((team, members), name) in teams.iter().zip(&team_names) {
        let mut refs: BTreeSet<&str> = BTreeSet::new();
        for member in members {
            match name_of_user.get(member.id.as_str()) {
                Some(user_name) => {
                    refs.insert(user_name);
                }
                None => skipped.push(format!(
                    "team {}: member {} is not an exported user; not listed",
                    team.name, member.username
                )),
            }
        }
        team_memberships.push(AtlasTeamMembership {
            metadata: meta(name, options),
            spec: AtlasTeamMembershipSpec {
                org_id: snapshot.org_id.clone(),
                team: TeamRef { id: Some(team.id.clone()), name: None },
                members: refs
                    .into_iter()
                    .map(|n| TeamMember { username: None, org_user_ref: Some(OrgUserRef { name: n.to_string() }) })
                    .collect(),
                mode: MembershipMode::Additive,
                credentials_secret_ref: secret_ref(options),
                deletion_policy: Some(DeletionPolicy::Orphan),
            },
            status: None,
        });
    }
    org_users.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    team_memberships.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Exported { org_users, team_memberships, skipped }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_readable() {
        let table = [
            ("alice@example.com", "", "alice-at-example.com"),
            ("Bob.Smith+atlas@Example.COM", "", "bob.smith-atlas-at-example.com"),
            ("..weird__name..@x.io", "", "weird-name-at-x.io"),
            ("a.-b@x.io", "", "a-b-at-x.io"),
            ("Platform Admins", "team-", "team-platform-admins"),
            ("???", "", "unnamed"),
        ];
        for (text, prefix, want) in table {
            assert_eq!(kubernetes_name(text, prefix), want, "{text}");
        }
        let long = format!("{}@example.com", "a".repeat(300));
        assert!(kubernetes_name(&long, "").len() <= MAX_NAME);
    }

    #[test]
    fn names_that_would_collide_get_a_hash_each() {
        let texts = ["a+b@x.io".to_string(), "a-b@x.io".to_string(), "c@x.io".to_string()];
        let names = unique_names(&texts, "");
        assert_ne!(names[0], names[1]);
        assert!(names[0].starts_with("a-b-at-x.io-") && names[1].starts_with("a-b-at-x.io-"), "{names:?}");
        assert_eq!(names[2], "c-at-x.io");
        // The same input gives the same names, whatever the order.
        let reversed = unique_names(&[texts[1].clone(), texts[0].clone(), texts[2].clone()], "");
        assert_eq!((reversed[0].as_str(), reversed[1].as_str()), (names[1].as_str(), names[0].as_str()));
    }
}
