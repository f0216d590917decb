//! AtlasTeamMembership in the controller: `orgUserRef`s resolve through the AtlasOrgUser store.

use jiff::Timestamp;
use kube::ResourceExt;

use super::object::Managed;
use super::{Context, org_user_refs};
use crate::api::{AtlasTeamMembership, AtlasTeamMembershipStatus};
use crate::atlas::{AtlasClient, AtlasError};
use crate::engine::{self, Mode, Report};
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
    ) -> Result<Report<Self::Plan, Self::Status>, AtlasError> {
        let refs = org_user_refs(&ctx.org_users, &self.namespace().unwrap_or_default());
        engine::reconcile_team_membership(client, &ctx.index, self, &refs, Mode::Apply, Timestamp::now()).await
    }
}
