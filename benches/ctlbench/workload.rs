//! The objects of one run: organizations of up to 400 AtlasOrgUser, a team of 40 listed
//! members per 100 users (half by username, half by orgUserRef; half the teams by id, half by
//! name), seeded into the simulator and written to the API server the way `kubectl apply`
//! users write them.

use atlas_access_operator::atlas::models::MembershipStatus;
use atlas_access_operator::sim::SimState;
use serde_json::{Value, json};

pub const USERS_PER_ORG: usize = 400;
pub const USERS_PER_TEAM: usize = 100;
pub const MEMBERS_PER_TEAM: usize = 40;
pub const API_VERSION: &str = "atlas-access.dev/v1alpha1";
/// Atlas's largest page (`itemsPerPage`).
pub const PAGE: usize = 500;

pub struct Org {
    pub id: String,
    pub index: usize,
    pub users: usize,
    /// (team id in the simulator, team name)
    pub teams: Vec<(String, String)>,
}

pub struct Workload {
    pub namespace: String,
    pub orgs: Vec<Org>,
    /// AtlasOrgUser manifests, interleaved across organizations.
    pub users: Vec<Value>,
    pub teams: Vec<Value>,
}

impl Workload {
    /// `n` AtlasOrgUser in `ceil(n / 400)` new simulator organizations (named after `tag`),
    /// with `n / 100` teams, in `namespace`.
    pub fn seed(state: &SimState, namespace: &str, tag: &str, n: usize, last_applied: bool) -> Self {
        let org_count = n.div_ceil(USERS_PER_ORG).max(1);
        let orgs: Vec<Org> = (0..org_count)
            .map(|o| {
                let id = state.add_org(&format!("{tag}-org-{o}"));
                // Every organization has an owner (the key's own user, in a real one).
                state.add_user(&id, &format!("owner.{tag}.{o}@example.com"), MembershipStatus::Active, &["ORG_OWNER"]);
                let users = (n - o * USERS_PER_ORG).min(USERS_PER_ORG);
                let teams = (0..users / USERS_PER_TEAM)
                    .map(|t| {
                        let name = format!("team-{t}");
                        (state.add_team(&id, &name), name)
                    })
                    .collect();
                Org { id, index: o, users, teams }
            })
            .collect();
        let mut users = Vec::with_capacity(n);
        for u in 0..USERS_PER_ORG {
            for org in orgs.iter().filter(|org| u < org.users) {
                users.push(user_manifest(namespace, tag, org, u, last_applied));
            }
        }
        let mut teams = Vec::new();
        let most_teams = orgs.iter().map(|o| o.teams.len()).max().unwrap_or(0);
        for t in 0..most_teams {
            for org in orgs.iter().filter(|org| t < org.teams.len()) {
                teams.push(team_manifest(namespace, tag, org, t, last_applied));
            }
        }
        Self { namespace: namespace.to_string(), orgs, users, teams }
    }

    pub fn objects(&self) -> usize {
        self.users.len() + self.teams.len()
    }

    pub fn team_count(&self) -> usize {
        self.teams.len()
    }

    pub fn teams_by_name(&self) -> usize {
        self.teams.iter().filter(|t| t["spec"]["team"].get("name").is_some()).count()
    }

    pub fn member_count(&self) -> usize {
        self.teams.iter().map(|t| t["spec"]["members"].as_array().map_or(0, Vec::len)).sum()
    }

    /// Users of each organization in Atlas once converged (the owner included).
    pub fn atlas_users(&self, org: &Org) -> usize {
        org.users + 1
    }
}

pub fn username(tag: &str, org: usize, u: usize) -> String {
    format!("user{u}.org{org}.{tag}@example.com")
}

pub fn user_name(org: usize, u: usize) -> String {
    format!("o{org}-u{u}")
}

/// An AtlasOrgUser as `kubectl apply` leaves it (the last-applied annotation holds the
/// manifest as applied).
pub fn user_manifest(namespace: &str, tag: &str, org: &Org, u: usize, last_applied: bool) -> Value {
    let manifest = json!({
        "apiVersion": API_VERSION, "kind": "AtlasOrgUser",
        "metadata": {"name": user_name(org.index, u), "namespace": namespace},
        "spec": {"orgId": org.id, "username": username(tag, org.index, u), "orgRoles": ["ORG_MEMBER"]},
    });
    with_last_applied(manifest, last_applied)
}

fn team_manifest(namespace: &str, tag: &str, org: &Org, t: usize, last_applied: bool) -> Value {
    let members: Vec<Value> = (t * MEMBERS_PER_TEAM..(t + 1) * MEMBERS_PER_TEAM)
        .map(|u| {
            if u.is_multiple_of(2) {
                json!({"username": username(tag, org.index, u)})
            } else {
                json!({"orgUserRef": {"name": user_name(org.index, u)}})
            }
        })
        .collect();
    let (team_id, team_name) = &org.teams[t];
    let team = if t.is_multiple_of(2) { json!({"id": team_id}) } else { json!({"name": team_name}) };
    let manifest = json!({
        "apiVersion": API_VERSION, "kind": "AtlasTeamMembership",
        "metadata": {"name": format!("o{}-team{t}", org.index), "namespace": namespace},
        "spec": {"orgId": org.id, "team": team, "members": members, "mode": "Additive"},
    });
    with_last_applied(manifest, last_applied)
}

fn with_last_applied(mut manifest: Value, on: bool) -> Value {
    if on {
        let mut applied = manifest.clone();
        applied["metadata"]["annotations"] = json!({});
        let text = format!("{}\n", serde_json::to_string(&applied).expect("JSON"));
        manifest["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/last-applied-configuration": text});
    }
    manifest
}

/// Listing pages of `n` items.
pub fn pages(n: usize) -> usize {
    n.div_ceil(PAGE).max(1)
}
