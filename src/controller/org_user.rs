//! AtlasOrgUser: finalizer, credentials, the engine, status, events.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, ResourceExt};

use super::status::{apply_status, failed_status};
use super::{Context, Error, instrumented};
use crate::api::{AtlasOrgUser, DeletionPolicy, FINALIZER};
use crate::engine::{self, Mode};
use crate::reconcile::{Claim, username_key};

pub(super) async fn reconcile(obj: Arc<AtlasOrgUser>, ctx: Arc<Context>) -> Result<Action, Error> {
    instrumented(obj.clone(), ctx.clone(), async move {
        let ns = obj.namespace().unwrap_or_default();
        let api: Api<AtlasOrgUser> = Api::namespaced(ctx.kube.clone(), &ns);
        finalizer(&api, FINALIZER, obj, |event| async {
            match event {
                FinalizerEvent::Apply(o) => converge(&api, o, &ctx, false).await,
                FinalizerEvent::Cleanup(o) => cleanup(&api, o, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    })
    .await
}

fn claim(o: &AtlasOrgUser) -> Claim {
    Claim::new(o.namespace().unwrap_or_default(), o.name_any(), o.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Other live objects that claim the same (orgId, username).
fn rivals(obj: &AtlasOrgUser, ctx: &Context) -> Vec<Claim> {
    let key = username_key(&obj.spec.username);
    ctx.org_users
        .state()
        .iter()
        .filter(|o| o.uid() != obj.uid() && o.metadata.deletion_timestamp.is_none())
        .filter(|o| o.spec.org_id == obj.spec.org_id && username_key(&o.spec.username) == key)
        .map(|o| claim(o))
        .collect()
}

async fn write_failure(api: &Api<AtlasOrgUser>, obj: &AtlasOrgUser, ctx: &Context, reason: &str, message: &str, stalled: bool) {
    let status = failed_status(obj.status.as_ref(), obj.metadata.generation, reason, message, stalled);
    match apply_status(api, &obj.name_any(), obj.status.as_ref(), &status).await {
        Ok(true) => ctx.metrics.status_writes.get_or_create(&crate::metrics::KindLabels { kind: "AtlasOrgUser".into() }).inc(),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "writing the failure status failed"),
    };
    ctx.metrics.set_ready("AtlasOrgUser", &obj.namespace().unwrap_or_default(), &obj.name_any(), Some("False"));
    ctx.publish(obj, true, reason, message).await;
}

/// Apply (and, with `deleting`, clean up): credentials -> engine -> events -> status.
async fn converge(api: &Api<AtlasOrgUser>, obj: Arc<AtlasOrgUser>, ctx: &Context, deleting: bool) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let secret_ref = obj.spec.credentials_secret_ref.as_ref().map(|r| r.name.as_str());
    let client = match ctx.clients.client_for(&ctx.kube, &ns, secret_ref, deleting).await {
        Ok(c) => c,
        Err(e) => {
            write_failure(api, &obj, ctx, e.reason(), &e.to_string(), !e.is_transient()).await;
            return Err(e.into());
        }
    };
    let rivals = rivals(&obj, ctx);
    let report = match engine::reconcile_org_user(&client, &ctx.index, &obj, &rivals, Mode::Apply, jiff::Timestamp::now()).await {
        Ok(r) => r,
        Err(e) => {
            let class = e.class();
            write_failure(api, &obj, ctx, super::atlas_reason(&class), &e.to_string(), !class.is_retryable()).await;
            return Err(e.into());
        }
    };
    for event in &report.events {
        ctx.publish(obj.as_ref(), event.warning, &event.reason, &event.note).await;
    }
    if !(deleting && report.finalizer_may_be_removed) {
        let written = apply_status(api, &obj.name_any(), obj.status.as_ref(), &report.status).await?;
        if written {
            ctx.metrics.status_writes.get_or_create(&crate::metrics::KindLabels { kind: "AtlasOrgUser".into() }).inc();
        }
        let ready = crate::api::conditions::find(&report.status.conditions, crate::api::conditions::READY)
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "Unknown".into());
        ctx.metrics.set_ready("AtlasOrgUser", &ns, &obj.name_any(), Some(&ready));
    }
    if deleting {
        if report.finalizer_may_be_removed {
            ctx.metrics.set_ready("AtlasOrgUser", &ns, &obj.name_any(), None);
            return Ok(Action::await_change());
        }
        let message = super::failure_message(&report.outcomes).unwrap_or_else(|| "clean-up in Atlas is not finished".into());
        return Err(Error::DeletionBlocked(message));
    }
    if let Some(err) = super::incomplete(&report.outcomes) {
        return Err(err);
    }
    Ok(match report.requeue_after {
        Some(d) => Action::requeue(d),
        None => ctx.resync(),
    })
}

async fn cleanup(api: &Api<AtlasOrgUser>, obj: Arc<AtlasOrgUser>, ctx: &Context) -> Result<Action, Error> {
    if ctx.deletion_protection || obj.spec.deletion_policy == DeletionPolicy::Orphan {
        let why = if ctx.deletion_protection { "the operator runs with --deletion-protection" } else { "deletionPolicy is Orphan" };
        ctx.publish(obj.as_ref(), false, "Orphaned", &format!("left {} in Atlas: {why}", obj.spec.username)).await;
        ctx.metrics.set_ready("AtlasOrgUser", &obj.namespace().unwrap_or_default(), &obj.name_any(), None);
        return Ok(Action::await_change());
    }
    converge(api, obj, ctx, true).await
}
