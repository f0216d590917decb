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
    /// Whether deleting the object needs an Atlas call, so a finalizer must hold it until
    /// that is done. Not for `Orphan`, nor under global deletion protection: such objects
    /// carry no finalizer and delete at once, with or without a running operator.
    fn needs_finalizer(&self, deletion_protection: bool) -> bool {
        !deletion_protection && self.deletion_policy() == DeletionPolicy::Delete
    }
    /// What an orphaning deletion leaves in Atlas, for the event.
    fn left_in_atlas(&self) -> String;
    /// Why deletion leaves Atlas alone when [`Managed::needs_finalizer`] says no for a reason
    /// of the kind's own (an adopted user).
    fn kept_because(&self) -> String {
        "deletion needs no Atlas call".to_string()
    }
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
        if !obj.needs_finalizer(ctx.deletion_protection) {
            return without_finalizer(&api, obj, &ctx).await;
        }
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

/// An object whose deletion needs no Atlas call: a finalizer it still carries (added before
/// the policy changed, or before adoption was known) is removed; when it is being deleted
/// the only thing left is the `Orphaned` event.
async fn without_finalizer<K: Managed>(api: &Api<K>, obj: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let ours = obj.finalizers().iter().position(|f| f == FINALIZER);
    if obj.meta().deletion_timestamp.is_some() {
        if let Some(index) = ours {
            orphaned(obj.as_ref(), ctx).await;
            remove_finalizer(api, obj.as_ref(), index).await?;
        }
        return Ok(Action::await_change());
    }
    if let Some(index) = ours {
        remove_finalizer(api, obj.as_ref(), index).await?;
    }
    converge(api, obj, ctx, false).await
}

/// Removes the finalizer at `index`, testing first that it is still there (as kube-rs does).
async fn remove_finalizer<K: Managed>(api: &Api<K>, obj: &K, index: usize) -> Result<(), Error> {
    let path = format!("/metadata/finalizers/{index}");
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]))
    .expect("a well-formed JSON patch");
    api.patch::<K>(&obj.name_any(), &kube::api::PatchParams::default(), &kube::api::Patch::Json(patch)).await?;
    Ok(())
}

async fn orphaned<K: Managed>(obj: &K, ctx: &Context) {
    let why = if ctx.deletion_protection {
        "the operator runs with --deletion-protection".to_string()
    } else if obj.deletion_policy() == DeletionPolicy::Orphan {
        "deletionPolicy is Orphan".to_string()
    } else {
        obj.kept_because()
    };
    ctx.publish(obj, false, "Orphaned", &format!("left {} in Atlas: {why}", obj.left_in_atlas())).await;
    ctx.metrics.set_ready(K::KIND, &obj.namespace().unwrap_or_default(), &obj.name_any(), None);
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
        Err(e) => {
            let failure = engine::action_error(&e);
            write_failure(api, obj.as_ref(), ctx, failure.reason(), &e.to_string(), !failure.waiting_may_fix()).await;
            return Err(e.into());
        }
    };
    for event in &report.events {
        ctx.publish(obj.as_ref(), event.warning, &event.reason, &event.note).await;
    }
    if let Some(why) = report.unrecorded {
        // Nothing was sent: the next attempt plans, records and grants again.
        return Err(Error::OwnershipNotRecorded(why));
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
    if !obj.needs_finalizer(ctx.deletion_protection) {
        orphaned(obj.as_ref(), ctx).await;
        return Ok(Action::await_change());
    }
    converge(api, obj, ctx, true).await
}
