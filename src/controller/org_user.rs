//! AtlasOrgUser in the controller: conflicts come from the index of the controller's store.

use jiff::Timestamp;
use kube::ResourceExt;

use super::Context;
use super::indexes::Key;
use super::object::Managed;
use kube::Api;

use super::object::StatusIntent;
use crate::api::{AdoptedDeletionPolicy, AtlasOrgUser, AtlasOrgUserStatus, DeletionPolicy};
use crate::atlas::AtlasClient;
use crate::engine::{self, EngineError, Mode, Report};
use crate::reconcile::OrgUserPlan;
use crate::reconcile::tenancy::Request;
use crate::reconcile::{Claim, username_key};

/// Other live objects that claim the same (orgId, username).
fn rivals(obj: &AtlasOrgUser, ctx: &Context) -> Vec<Claim> {
    let key = Key::Username(obj.spec.org_id.clone(), username_key(&obj.spec.username));
    ctx.indexes
        .org_users
        .objects(&key, &ctx.org_users)
        .iter()
        .filter(|o| o.uid() != obj.uid() && o.metadata.deletion_timestamp.is_none())
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

    fn tenancy_request(&self) -> Request<'_> {
        Request::OrgUser(&self.spec)
    }

    fn left_in_atlas(&self) -> String {
        format!("{} in organization {}", self.spec.username, self.spec.org_id)
    }

    /// An adopted user (in the organization before this object) is left in Atlas on deletion
    /// unless `adoptedDeletionPolicy: Delete`: no Atlas call, so no finalizer.
    fn needs_finalizer(&self, policy: DeletionPolicy, deletion_protection: bool) -> bool {
        let keeps_adopted = self.status.as_ref().and_then(|s| s.adopted) == Some(true)
            && self.spec.adopted_deletion_policy == AdoptedDeletionPolicy::Orphan;
        !deletion_protection && policy == DeletionPolicy::Delete && !keeps_adopted
    }

    fn kept_because(&self) -> String {
        "the user was in the organization before this object (adopted) and adoptedDeletionPolicy is Orphan".into()
    }

    async fn run_engine(
        &self,
        client: &AtlasClient,
        ctx: &Context,
    ) -> Result<Report<Self::Plan, Self::Status>, EngineError> {
        let rivals = rivals(self, ctx);
        let intent = StatusIntent {
            api: Api::namespaced(ctx.kube.clone(), &self.namespace().unwrap_or_default()),
            object: self,
            ctx,
        };
        let now = Timestamp::now();
        let mut report =
            engine::reconcile_org_user_recorded(client, &ctx.index, self, &rivals, Mode::Apply, now, &intent).await?;
        engine::flag_expiring_invitation(&mut report, self.status.as_ref(), now, ctx.invitation_warning);
        Ok(report)
    }
}
