//! AtlasTeamMembership in the controller: `orgUserRef`s resolve through the AtlasOrgUser
//! store, the other writers of a team come from both stores, and the write-ahead record goes
//! into the status before any call.

use jiff::Timestamp;
use kube::{Api, ResourceExt};

use super::Context;
use super::object::{Managed, StatusIntent};
use crate::api::{AtlasTeamMembership, AtlasTeamMembershipStatus};
use crate::atlas::AtlasClient;
use crate::engine::{self, EngineError, Mode, Report, TeamSurroundings};
use crate::reconcile::TeamPlan;
use crate::reconcile::tenancy::Request;

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
        let teams = ctx.teams.state();
        let org_users = ctx.org_users.state();
        let around = TeamSurroundings::of(self, teams.iter().map(|t| t.as_ref()), org_users.iter().map(|u| u.as_ref()));
        let intent = StatusIntent {
            api: Api::namespaced(ctx.kube.clone(), &self.namespace().unwrap_or_default()),
            object: self,
        };
        engine::reconcile_team_membership(client, &ctx.index, self, &around, Mode::Apply, Timestamp::now(), &intent)
            .await
    }
}
