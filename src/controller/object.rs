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
use crate::atlas::AtlasClient;
use crate::engine::{self, EngineError, Report};
use crate::metrics::KindLabels;

/// The controller's write-ahead: the record goes into the object's status (server-side
/// apply, the same field manager as every status write) before the engine sends a call.
pub(super) struct StatusIntent<'a, K: Managed> {
    pub api: Api<K>,
    pub object: &'a K,
}

impl<K: Managed> engine::PersistIntent<K::Status> for StatusIntent<'_, K> {
    async fn persist_intent(&self, intent: &K::Status) -> Result<(), engine::IntentError> {
        apply_status(&self.api, &self.object.name_any(), self.object.current_status(), intent)
            .await
            .map(|_| ())
            .map_err(|e| engine::IntentError(e.to_string()))
    }
}

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
    /// Observe, plan, persist the write-ahead record, execute (or clean up, for an object
    /// being deleted).
    fn run_engine(
        &self,
        client: &AtlasClient,
        ctx: &Context,
    ) -> impl Future<Output = Result<Report<Self::Plan, Self::Status>, EngineError>> + Send;
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
        Err(e) => tracing::warn!(error = %e, "writing the failure status failed"),
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
        // The status could not be written, so writing a failure status would not work either.
        Err(EngineError::Intent(e)) => return Err(e.into()),
        Err(EngineError::Atlas(e)) => {
            let failure = engine::action_error(&e);
            write_failure(api, obj.as_ref(), ctx, failure.reason(), &e.to_string(), !failure.waiting_may_fix()).await;
            return Err(e.into());
        }
    };
    for event in &report.events {
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
