//! AtlasTeamMembership in the controller: `orgUserRef`s resolve through the AtlasOrgUser
//! store and its indexes, the other writers of a team come from both stores, and the write-ahead record goes
//! into the status before any call.

use jiff::Timestamp;
use kube::{Api, ResourceExt};

use std::collections::BTreeMap;

use kube::runtime::reflector::ObjectRef;

use super::Context;
use super::indexes::Key;
use super::object::{Managed, StatusIntent};
use crate::api::{AtlasTeamMembership, AtlasTeamMembershipStatus};
use crate::atlas::AtlasClient;
use crate::engine::{self, EngineError, Mode, Report, TeamSurroundings};
use crate::reconcile::TeamPlan;
use crate::reconcile::tenancy::Request;
use crate::reconcile::{Claim, TeamWriter, username_key};

/// The AtlasOrgUsers of `team`'s namespace its members name (by `orgUserRef`, or declaring a
/// member's username), name -> username: what [`TeamSurroundings::org_user_refs`] is read for.
fn refs_of(team: &AtlasTeamMembership, ctx: &Context) -> BTreeMap<String, String> {
    let ns = team.namespace().unwrap_or_default();
    let mut refs = BTreeMap::new();
    for m in &team.spec.members {
        if let Some(r) = &m.org_user_ref
            && let Some(u) = ctx.org_users.get(&ObjectRef::new(&r.name).within(&ns))
        {
            refs.insert(r.name.clone(), u.spec.username.clone());
        }
        if let Some(username) = &m.username {
            let key = Key::NamespaceUsername(ns.clone(), username_key(username));
            for u in ctx.indexes.org_users.objects(&key, &ctx.org_users) {
                refs.insert(u.name_any(), u.spec.username.clone());
            }
        }
    }
    refs
}

/// What the team's planning needs of the other objects, from the indexes: the other team
/// memberships of its organization, and its AtlasOrgUsers with `teamIds`.
fn surroundings(obj: &AtlasTeamMembership, ctx: &Context) -> TeamSurroundings {
    let org = obj.spec.org_id.clone();
    let me = Claim::of(&obj.metadata);
    let mut writers: Vec<TeamWriter> = ctx
        .indexes
        .teams
        .objects(&Key::Org(org.clone()), &ctx.teams)
        .iter()
        .filter(|t| Claim::of(&t.metadata) != me)
        .map(|t| TeamWriter::of_team_membership(t, &refs_of(t, ctx)))
        .collect();
    writers.extend(
        ctx.indexes
            .org_users
            .objects(&Key::TeamWriters(org), &ctx.org_users)
            .iter()
            .filter(|u| u.metadata.deletion_timestamp.is_none())
            .flat_map(|u| TeamWriter::of_org_user(u)),
    );
    TeamSurroundings { org_user_refs: refs_of(obj, ctx).into(), writers }
}

impl Managed for AtlasTeamMembership {
    type Plan = TeamPlan;
    type Status = AtlasTeamMembershipStatus;
    const KIND: &'static str = "AtlasTeamMembership";

    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    fn secret_ref(&self) -> Option<&str> {
        self.spec.credentials_secret_ref.as_ref().map(|r| r.name.as_str())
    }

    fn tenancy_request(&self) -> Request<'_> {
        Request::TeamMembership(&self.spec)
    }

    fn left_in_atlas(&self) -> String {
        "the team's members".to_string()
    }

    async fn run_engine(
        &self,
        client: &AtlasClient,
        ctx: &Context,
    ) -> Result<Report<Self::Plan, Self::Status>, EngineError> {
        let around = surroundings(self, ctx);
        let intent = StatusIntent {
            api: Api::namespaced(ctx.kube.clone(), &self.namespace().unwrap_or_default()),
            object: self,
            ctx,
        };
        engine::reconcile_team_membership(client, &ctx.index, self, &around, Mode::Apply, Timestamp::now(), &intent)
            .await
    }
}
