//! AtlasOrganization: checks its credentials against its organization (an authenticated
//! `getOrg`), and writes the organization's name and user counts, as those credentials see
//! them, into its status. It makes no change in Atlas and has no finalizer.

use std::collections::BTreeSet;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::status::apply_status;
use super::{Context, Error, instrumented};
use crate::api::conditions::{self, DesiredCondition, READY, RECONCILING, STALLED};
use crate::api::{AtlasOrganization, AtlasOrganizationStatus};
use crate::atlas::models::MembershipStatus;
use crate::engine;
use crate::reconcile::tenancy::NOT_ALLOWED;
use crate::reconcile::username_key;

/// Reason of Ready=True: the credentials answered getOrg for this organization.
pub const VERIFIED: &str = "CredentialsVerified";

fn status_with(
    obj: &AtlasOrganization,
    base: AtlasOrganizationStatus,
    ready: bool,
    reason: &str,
    message: &str,
    stalled: bool,
) -> AtlasOrganizationStatus {
    let mut desired = vec![DesiredCondition::new(READY, ready, reason, message)];
    if !ready {
        desired.push(DesiredCondition::new(if stalled { STALLED } else { RECONCILING }, true, reason, message));
    }
    let previous = obj.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = obj.metadata.generation;
    AtlasOrganizationStatus {
        observed_generation: generation,
        conditions: conditions::merge(previous, &desired, generation, Time(Timestamp::now())),
        ..base
    }
}

/// Users of the organization that an AtlasOrgUser of this organization declares and that its
/// organization did not refuse.
fn managed_usernames(obj: &AtlasOrganization, ctx: &Context) -> BTreeSet<String> {
    ctx.indexes
        .org_users
        .objects(&super::indexes::Key::Org(obj.spec.org_id.clone()), &ctx.org_users)
        .iter()
        .filter(|u| u.metadata.deletion_timestamp.is_none())
        .filter(|u| {
            let refused = u.status.as_ref().and_then(|s| conditions::find(&s.conditions, READY));
            refused.is_none_or(|c| c.reason != NOT_ALLOWED)
        })
        .map(|u| username_key(&u.spec.username))
        .collect()
}

async fn observe(obj: &AtlasOrganization, ctx: &Context) -> Result<AtlasOrganizationStatus, Error> {
    let secret = &obj.spec.credentials_secret_ref.name;
    let fail = |reason: &str, message: String, stalled: bool| {
        status_with(obj, AtlasOrganizationStatus::default(), false, reason, &message, stalled)
    };
    let Some(namespace) = ctx.clients.operator_namespace() else {
        let e = super::credentials::CredentialsError::NoOperatorNamespace {
            organization: obj.name_any(),
            name: secret.clone(),
        };
        return Ok(fail(e.reason(), e.to_string(), true));
    };
    let client = match ctx.clients.client_for_secret(&ctx.kube, namespace, secret).await {
        Ok(c) => c,
        Err(e) => return Ok(fail(e.reason(), e.to_string(), !e.is_transient())),
    };
    let org = match client.get_org(&obj.spec.org_id).await {
        Ok(org) => org,
        Err(e) => {
            let failure = engine::action_error(&e);
            return Ok(fail(failure.reason(), e.to_string(), !failure.waiting_may_fix()));
        }
    };
    let directory = match ctx.index.shared_directory(&client, &obj.spec.org_id).await {
        Ok(d) => d,
        Err(e) => {
            let failure = engine::action_error(&e);
            let base = AtlasOrganizationStatus { org_name: Some(org.name.clone()), ..Default::default() };
            return Ok(status_with(obj, base, false, failure.reason(), &e.to_string(), !failure.waiting_may_fix()));
        }
    };
    let managed = managed_usernames(obj, ctx);
    let count = |f: &dyn Fn(&crate::atlas::models::OrgUser) -> bool| directory.iter().filter(|u| f(u)).count() as u32;
    // The audit, from the same listing (no call of its own).
    let audit = crate::reconcile::audit::audit_org(
        &obj.spec.org_id,
        &directory,
        managed.iter().map(String::as_str),
        Timestamp::now(),
        ctx.invitation_warning,
    );
    let base = AtlasOrganizationStatus {
        org_name: Some(org.name.clone()),
        users: Some(directory.len() as u32),
        managed: Some(count(&|u| managed.contains(&username_key(&u.username)))),
        pending: Some(count(&|u| u.org_membership_status == MembershipStatus::Pending)),
        unmanaged: Some(audit.unmanaged.count as u32),
        unmanaged_users: audit.unmanaged.first,
        declared_absent: Some(audit.declared_absent.count as u32),
        invitations_expiring: Some(audit.expiring_count as u32),
        expiring_users: audit.expiring.into_iter().map(|e| e.username).collect(),
        ..Default::default()
    };
    let message = format!("the credentials in Secret {namespace}/{secret} read organization {} ({})", org.name, org.id);
    Ok(status_with(obj, base, true, VERIFIED, &message, false))
}

/// One reconcile of an AtlasOrganization: verify, count, write the status.
pub async fn reconcile(obj: Arc<AtlasOrganization>, ctx: Arc<Context>) -> Result<Action, Error> {
    instrumented(obj.clone(), ctx.clone(), async {
        let status = observe(&obj, &ctx).await?;
        let api: Api<AtlasOrganization> = Api::all(ctx.kube.clone());
        apply_status(&api, &obj.name_any(), obj.status.as_ref(), &status).await?;
        let ready = conditions::is_true(&status.conditions, READY);
        ctx.metrics.set_ready("AtlasOrganization", "", &obj.name_any(), Some(if ready { "True" } else { "False" }));
        Ok(ctx.resync())
    })
    .await
}
