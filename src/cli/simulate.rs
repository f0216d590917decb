//! `--simulate`: the built-in Atlas simulator, started in-process and seeded from the
//! manifests so that `plan` / `apply` can be tried on any machine.
//!
//! Seeding rules (printed when the run starts):
//! - every `orgId` becomes an organization with that id, owned by the simulator's admin;
//! - every team named in an AtlasTeamMembership (by id or by name) or in an AtlasOrgUser's
//!   `teamIds` exists, empty;
//! - people who are already there: users listed by `username` in a team membership without an
//!   AtlasOrgUser of their own, and the users of AtlasOrgUser objects with
//!   `deletionPolicy: Orphan` (how one declares someone who predates the operator), as ACTIVE
//!   `ORG_MEMBER`s.

use std::collections::{BTreeMap, BTreeSet};

use secrecy::SecretString;

use crate::api::DeletionPolicy;
use crate::atlas::Credentials;
use crate::atlas::models::MembershipStatus;
use crate::engine::driver::ObjectSet;
use crate::reconcile::username_key;
use crate::sim::{SimConfig, SimHandle, SimState, Simulator};

const DEMO_PUBLIC_KEY: &str = "simulated-public-key";

/// A running, seeded simulator and the credentials that work against it.
pub struct Simulated {
    pub handle: SimHandle,
    pub credentials: Credentials,
    /// What was seeded, one line each, for the reader.
    pub seeded: Vec<String>,
}

fn short(id: &str) -> String {
    id.chars().take(6).collect()
}

/// Start the simulator and create what the objects expect to find.
pub fn start(objects: &ObjectSet) -> std::io::Result<Simulated> {
    let private_key = format!("simulated-{:016x}", rand::random::<u64>());
    let handle = Simulator::start(SimConfig::default().with_api_key(DEMO_PUBLIC_KEY, &private_key))?;
    let state = handle.state();
    let seeded = seed(&state, objects);
    let credentials =
        Credentials::ApiKey { public_key: DEMO_PUBLIC_KEY.to_string(), private_key: SecretString::from(private_key) };
    Ok(Simulated { handle, credentials, seeded })
}

fn seed(state: &SimState, objects: &ObjectSet) -> Vec<String> {
    let mut lines = Vec::new();
    let mut teams: BTreeMap<String, BTreeSet<(Option<String>, String)>> = BTreeMap::new();
    for t in &objects.team_memberships {
        let entry = teams.entry(t.spec.org_id.clone()).or_default();
        match (&t.spec.team.id, &t.spec.team.name) {
            (Some(id), _) => entry.insert((Some(id.clone()), t.metadata.name.clone().unwrap_or_else(|| short(id)))),
            (None, Some(name)) => entry.insert((None, name.clone())),
            (None, None) => false,
        };
    }
    for u in &objects.org_users {
        for id in &u.spec.team_ids {
            teams.entry(u.spec.org_id.clone()).or_default().insert((Some(id.clone()), format!("team-{}", short(id))));
        }
    }
    let declared: BTreeSet<(String, String)> =
        objects.org_users.iter().map(|u| (u.spec.org_id.clone(), username_key(&u.spec.username))).collect();
    let mut existing: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in &objects.team_memberships {
        for m in &t.spec.members {
            if let Some(username) = &m.username
                && !declared.contains(&(t.spec.org_id.clone(), username_key(username)))
            {
                existing.entry(t.spec.org_id.clone()).or_default().insert(username.clone());
            }
        }
    }
    for u in objects.org_users.iter().filter(|u| u.spec.deletion_policy == Some(DeletionPolicy::Orphan)) {
        existing.entry(u.spec.org_id.clone()).or_default().insert(u.spec.username.clone());
    }

    for (n, org_id) in objects.org_ids().iter().enumerate() {
        let name = format!("simulated-org-{}", n + 1);
        state.add_org_with_id(org_id, &name);
        state.add_user(org_id, "atlas-admin@example.com", MembershipStatus::Active, &["ORG_OWNER"]);
        lines.push(format!("organization {org_id} ({name}), owner atlas-admin@example.com"));
        let mut seen_names = BTreeSet::new();
        for (id, team_name) in teams.get(org_id).into_iter().flatten() {
            if !seen_names.insert(team_name.to_lowercase()) {
                continue;
            }
            let id = match id {
                Some(id) => {
                    state.add_team_with_id(org_id, id, team_name);
                    id.clone()
                }
                None => state.add_team(org_id, team_name),
            };
            lines.push(format!("  team {team_name} ({id}), empty"));
        }
        for username in existing.get(org_id).into_iter().flatten() {
            state.add_user(org_id, username, MembershipStatus::Active, &["ORG_MEMBER"]);
            lines.push(format!("  {username}: already an ACTIVE ORG_MEMBER"));
        }
    }
    lines
}
