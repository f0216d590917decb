//! The reconcile both kinds share: finalizer, credentials, the engine, events, status.
//! Each kind plugs in through [`Managed`] (see `org_user.rs` and `team.rs`).

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::status::{ConditionedStatus, apply_status, failed_status};
use super::{Context, Error, failure_message, incomplete, instrumented};
use crate::api::conditions::{HasConditions, READY, find};
use crate::api::{DeletionPolicy, FINALIZER};
use crate::atlas::{AtlasClient, AtlasError};
use crate::engine::{self, Report};
use crate::metrics::KindLabels;

/// A kind the controller reconciles.
pub(super) trait Managed:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    type Status: ConditionedStatus + Serialize + PartialEq + Debug + Send + Sync;
    /// The engine's plan for this kind (carried in the report, not read here).
    type Plan: Send;
    const KIND: &'static str;
    fn current_status(&self) -> Option<&Self::Status>;
    fn secret_ref(&self) -> Option<&str>;
    fn deletion_policy(&self) -> DeletionPolicy;
    /// What an orphaning deletion leaves in Atlas, for the event.
    fn left_in_atlas(&self) -> String;
    /// Observe, plan, execute (or clean up, for an object being deleted).
    fn run_engine(
        &self,
        client: &AtlasClient,
        ctx: &Context,
    ) -> impl Future<Output = Result<Report<Self::Plan, Self::Status>, AtlasError>> + Send;
}

pub(super) async fn reconcile<K: Managed>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    instrumented(obj.clone(), ctx.clone(), async move {
        let ns = obj.namespace().unwrap_or_default();
        let api: Api<K> = Api::namespaced(ctx.kube.clone(), &ns);
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

fn count_status_write<K: Managed>(ctx: &Context) {
    ctx.metrics.status_writes.get_or_create(&KindLabels { kind: K::KIND.into() }).inc();
}

async fn write_failure<K: Managed>(api: &Api<K>, obj: &K, ctx: &Context, reason: &str, message: &str, stalled: bool) {
    let status = failed_status(obj.current_status(), obj.meta().generation, reason, message, stalled);
    match apply_status(api, &obj.name_any(), obj.current_status(), &status).await {
        Ok(true) => count_status_write::<K>(ctx),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %super::describe_kube_error(&e), "writing the failure status failed"),
    }
    ctx.metrics.set_ready(K::KIND, &obj.namespace().unwrap_or_default(), &obj.name_any(), Some("False"));
    ctx.publish(obj, true, reason, message).await;
}

/// Apply (and, with `deleting`, clean up): credentials -> engine -> events -> status.
async fn converge<K: Managed>(api: &Api<K>, obj: Arc<K>, ctx: &Context, deleting: bool) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    // A deletion may finish with the last good client when the Secret is already gone.
    let client = match ctx.clients.client_for(&ctx.kube, &ns, obj.secret_ref(), deleting).await {
        Ok(c) => c,
        Err(e) => {
            write_failure(api, obj.as_ref(), ctx, e.reason(), &e.to_string(), !e.is_transient()).await;
            return Err(e.into());
        }
    };
    let report = match obj.run_engine(&client, ctx).await {
        Ok(r) => r,
        Err(e) => {
            let failure = engine::action_error(&e);
            write_failure(api, obj.as_ref(), ctx, failure.reason(), &e.to_string(), !failure.waiting_may_fix()).await;
            return Err(e.into());
        }
    };
    for event in &report.events {
        if event.reason == engine::events::DRIFT_CORRECTED {
            ctx.metrics.drift_corrected(K::KIND);
        }
        ctx.publish(obj.as_ref(), event.warning, &event.reason, &event.note).await;
    }
    if deleting && report.finalizer_may_be_removed {
        ctx.metrics.set_ready(K::KIND, &ns, &name, None);
        return Ok(Action::await_change());
    }
    if apply_status(api, &name, obj.current_status(), &report.status).await? {
        count_status_write::<K>(ctx);
    }
    let ready = find(report.status.conditions(), READY).map(|c| c.status.clone()).unwrap_or_else(|| "Unknown".into());
    ctx.metrics.set_ready(K::KIND, &ns, &name, Some(&ready));
    if deleting {
        let message = failure_message(&report.outcomes).unwrap_or_else(|| {
            report
                .status
                .conditions()
                .iter()
                .find(|c| c.type_ == READY)
                .map(|c| c.message.clone())
                .unwrap_or_else(|| "clean-up in Atlas is not finished".into())
        });
        return Err(Error::DeletionBlocked(message));
    }
    if let Some(err) = incomplete(&report.outcomes) {
        return Err(err);
    }
    Ok(match report.requeue_after {
        Some(d) => Action::requeue(d),
        None => ctx.resync(),
    })
}

async fn cleanup<K: Managed>(api: &Api<K>, obj: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    // Orphaning needs no Atlas call, so it needs no credentials either.
    if ctx.deletion_protection || obj.deletion_policy() == DeletionPolicy::Orphan {
        let why = if ctx.deletion_protection {
            "the operator runs with --deletion-protection"
        } else {
            "deletionPolicy is Orphan"
        };
        ctx.publish(obj.as_ref(), false, "Orphaned", &format!("left {} in Atlas: {why}", obj.left_in_atlas())).await;
        ctx.metrics.set_ready(K::KIND, &obj.namespace().unwrap_or_default(), &obj.name_any(), None);
        return Ok(Action::await_change());
    }
    converge(api, obj, ctx, true).await
}
