//! AtlasTeamMembership: finalizer, credentials, the engine, status, events.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, ResourceExt};

use super::status::{apply_status, failed_status};
use super::{Context, Error, instrumented, org_user_refs};
use crate::api::{AtlasTeamMembership, DeletionPolicy, FINALIZER};
use crate::engine::{self, Mode};

const KIND: &str = "AtlasTeamMembership";

pub(super) async fn reconcile(obj: Arc<AtlasTeamMembership>, ctx: Arc<Context>) -> Result<Action, Error> {
    instrumented(obj.clone(), ctx.clone(), async move {
        let ns = obj.namespace().unwrap_or_default();
        let api: Api<AtlasTeamMembership> = Api::namespaced(ctx.kube.clone(), &ns);
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

async fn write_failure(
    api: &Api<AtlasTeamMembership>,
    obj: &AtlasTeamMembership,
    ctx: &Context,
    reason: &str,
    message: &str,
    stalled: bool,
) {
    let status = failed_status(obj.status.as_ref(), obj.metadata.generation, reason, message, stalled);
    match apply_status(api, &obj.name_any(), obj.status.as_ref(), &status).await {
        Ok(true) => ctx.metrics.status_writes.get_or_create(&crate::metrics::KindLabels { kind: KIND.into() }).inc(),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "writing the failure status failed"),
    };
    ctx.metrics.set_ready(KIND, &obj.namespace().unwrap_or_default(), &obj.name_any(), Some("False"));
    ctx.publish(obj, true, reason, message).await;
}

async fn converge(
    api: &Api<AtlasTeamMembership>,
    obj: Arc<AtlasTeamMembership>,
    ctx: &Context,
    deleting: bool,
) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let secret_ref = obj.spec.credentials_secret_ref.as_ref().map(|r| r.name.as_str());
    let client = match ctx.clients.client_for(&ctx.kube, &ns, secret_ref, deleting).await {
        Ok(c) => c,
        Err(e) => {
            write_failure(api, &obj, ctx, e.reason(), &e.to_string(), !e.is_transient()).await;
            return Err(e.into());
        }
    };
    let refs = org_user_refs(&ctx.org_users, &ns);
    let report =
        match engine::reconcile_team_membership(&client, &ctx.index, &obj, &refs, Mode::Apply, jiff::Timestamp::now())
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let class = e.class();
                write_failure(api, &obj, ctx, super::atlas_reason(&class), &e.to_string(), !class.is_retryable())
                    .await;
                return Err(e.into());
            }
        };
    for event in &report.events {
        ctx.publish(obj.as_ref(), event.warning, &event.reason, &event.note).await;
    }
    if !(deleting && report.finalizer_may_be_removed) {
        if apply_status(api, &obj.name_any(), obj.status.as_ref(), &report.status).await? {
            ctx.metrics.status_writes.get_or_create(&crate::metrics::KindLabels { kind: KIND.into() }).inc();
        }
        let ready = crate::api::conditions::find(&report.status.conditions, crate::api::conditions::READY)
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "Unknown".into());
        ctx.metrics.set_ready(KIND, &ns, &obj.name_any(), Some(&ready));
    }
    if deleting {
        if report.finalizer_may_be_removed {
            ctx.metrics.set_ready(KIND, &ns, &obj.name_any(), None);
            return Ok(Action::await_change());
        }
        let message =
            super::failure_message(&report.outcomes).unwrap_or_else(|| "clean-up in Atlas is not finished".into());
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

async fn cleanup(api: &Api<AtlasTeamMembership>, obj: Arc<AtlasTeamMembership>, ctx: &Context) -> Result<Action, Error> {
    if ctx.deletion_protection || obj.spec.deletion_policy == DeletionPolicy::Orphan {
        let why =
            if ctx.deletion_protection { "the operator runs with --deletion-protection" } else { "deletionPolicy is Orphan" };
        ctx.publish(obj.as_ref(), false, "Orphaned", &format!("left the team's members in Atlas: {why}")).await;
        ctx.metrics.set_ready(KIND, &obj.namespace().unwrap_or_default(), &obj.name_any(), None);
        return Ok(Action::await_change());
    }
    converge(api, obj, ctx, true).await
}
