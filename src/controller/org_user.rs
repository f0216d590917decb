//! AtlasOrgUser in the controller: conflicts come from the controller's own store.

use jiff::Timestamp;
use kube::ResourceExt;

use super::Context;
use super::object::Managed;
use crate::api::{AtlasOrgUser, AtlasOrgUserStatus, DeletionPolicy};
use crate::atlas::AtlasClient;
use crate::engine::{self, EngineError, Mode, Report};
use crate::reconcile::OrgUserPlan;
use crate::reconcile::{Claim, username_key};

/// Other live objects that claim the same (orgId, username).
fn rivals(obj: &AtlasOrgUser, ctx: &Context) -> Vec<Claim> {
    let key = username_key(&obj.spec.username);
    ctx.org_users
        .state()
        .iter()
        .filter(|o| o.uid() != obj.uid() && o.metadata.deletion_timestamp.is_none())
        .filter(|o| o.spec.org_id == obj.spec.org_id && username_key(&o.spec.username) == key)
        .map(|o| Claim::of(&o.metadata))
        .collect()
}

impl Managed for AtlasOrgUser {
    type Plan = OrgUserPlan;
    type Status = AtlasOrgUserStatus;
    const KIND: &'static str = "AtlasOrgUser";

    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    fn secret_ref(&self) -> Option<&str> {
        self.spec.credentials_secret_ref.as_ref().map(|r| r.name.as_str())
    }

    fn deletion_policy(&self) -> DeletionPolicy {
        self.spec.deletion_policy
    }

    fn left_in_atlas(&self) -> String {
        format!("{} in organization {}", self.spec.username, self.spec.org_id)
    }

    async fn run_engine(
        &self,
        client: &AtlasClient,
        ctx: &Context,
    ) -> Result<Report<Self::Plan, Self::Status>, EngineError> {
        let rivals = rivals(self, ctx);
        Ok(engine::reconcile_org_user(client, &ctx.index, self, &rivals, Mode::Apply, Timestamp::now()).await?)
    }
}
