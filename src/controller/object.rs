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

use super::credentials::CredentialsRef;
use super::status::{ConditionedStatus, apply_status, failed_status};
use super::{Context, Error, failure_message, incomplete, instrumented};
use crate::api::conditions::{HasConditions, READY, find};
use crate::api::{AtlasOrganization, DeletionPolicy, FINALIZER};
use crate::atlas::{AtlasClient, AtlasError, ErrorClass};
use crate::engine::{self, Report};
use crate::metrics::KindLabels;
use crate::reconcile::tenancy::{self, NOT_ALLOWED, Request};

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
    /// What the object asks of its organization (for the AtlasOrganization's rules).
    fn tenancy_request(&self) -> Request<'_>;
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

/// How a failure status treats what Atlas reported before.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Observed {
    /// Keep it: still the last known truth, read with the object's own credentials.
    Keep,
    /// Drop it: the object may not see it (not allowed, no usable credentials, or Atlas refused
    /// its key), so a status never carries data read with someone else's key.
    Clear,
}

async fn write_failure<K: Managed>(
    api: &Api<K>,
    obj: &K,
    ctx: &Context,
    reason: &str,
    message: &str,
    stalled: bool,
    observed: Observed,
) {
    let cleared = match observed {
        Observed::Keep => None,
        Observed::Clear => {
            // Conditions only: the new status starts from an empty one.
            let mut empty = K::Status::default();
            if let Some(previous) = obj.current_status() {
                empty.set_conditions(previous.conditions().to_vec());
            }
            Some(empty)
        }
    };
    let previous = cleared.as_ref().or(obj.current_status());
    let status = failed_status(previous, obj.meta().generation, reason, message, stalled);
    match apply_status(api, &obj.name_any(), obj.current_status(), &status).await {
        Ok(true) => count_status_write::<K>(ctx),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %super::describe_kube_error(&e), "writing the failure status failed"),
    }
    ctx.metrics.set_ready(K::KIND, &obj.namespace().unwrap_or_default(), &obj.name_any(), Some("False"));
    ctx.publish(obj, true, reason, message).await;
}

/// The AtlasOrganizations that name the object's orgId (by name; normally one), and why they
/// refuse it, if they do. Reads the namespace only when a label selector has to decide.
async fn tenancy<K: Managed>(obj: &K, ctx: &Context) -> Result<(Vec<Arc<AtlasOrganization>>, Vec<String>), Error> {
    let request = obj.tenancy_request();
    let mut orgs: Vec<Arc<AtlasOrganization>> =
        ctx.organizations.state().into_iter().filter(|o| o.spec.org_id == request.org_id()).collect();
    orgs.sort_by_key(|o| o.name_any());
    let ns = obj.namespace().unwrap_or_default();
    let mut labels = None;
    let mut refusals = Vec::new();
    for org in &orgs {
        if labels.is_none() && tenancy::needs_labels(&org.spec, &ns) {
            let namespace = Api::<k8s_openapi::api::core::v1::Namespace>::all(ctx.kube.clone()).get(&ns).await?;
            labels = Some(namespace.metadata.labels.unwrap_or_default());
        }
        let empty = Default::default();
        refusals.extend(tenancy::refusals(&org.name_any(), &org.spec, &ns, labels.as_ref().unwrap_or(&empty), request));
    }
    Ok((orgs, refusals))
}

/// Apply (and, with `deleting`, clean up): tenancy -> credentials -> engine -> events -> status.
async fn converge<K: Managed>(api: &Api<K>, obj: Arc<K>, ctx: &Context, deleting: bool) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let (orgs, refusals) = tenancy(obj.as_ref(), ctx).await?;
    if !refusals.is_empty() {
        let message = refusals.join("; ");
        write_failure(api, obj.as_ref(), ctx, NOT_ALLOWED, &message, true, Observed::Clear).await;
        return Err(Error::NotAllowed(message));
    }
    let from = CredentialsRef {
        namespace: &ns,
        own: obj.secret_ref(),
        organization: orgs
            .first()
            .map(|o| (o.metadata.name.as_deref().unwrap_or_default(), o.spec.credentials_secret_ref.name.as_str())),
    };
    // A deletion may finish with the last good client when the Secret is already gone.
    let client = match ctx.clients.client_for(&ctx.kube, from, deleting).await {
        Ok(c) => c,
        Err(e) => {
            let observed = if e.is_transient() { Observed::Keep } else { Observed::Clear };
            let message = e.seen_from(&ns, from.organization.map(|(org, _)| org));
            write_failure(api, obj.as_ref(), ctx, e.reason(), &message, !e.is_transient(), observed).await;
            return Err(e.into());
        }
    };
    let report = match obj.run_engine(&client, ctx).await {
        Ok(r) => r,
        Err(e) => {
            let failure = engine::action_error(&e);
            let observed = if e.class() == ErrorClass::Auth { Observed::Clear } else { Observed::Keep };
            write_failure(
                api,
                obj.as_ref(),
                ctx,
                failure.reason(),
                &e.to_string(),
                !failure.waiting_may_fix(),
                observed,
            )
            .await;
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
    let (orgs, refusals) = tenancy(obj.as_ref(), ctx).await?;
    let policy = tenancy::effective_deletion_policy(obj.tenancy_request(), orgs.first().map(|o| &o.spec));
    // Orphaning needs no Atlas call, so it needs no credentials either; an object its
    // organization does not allow has no authority to call Atlas, not even to clean up.
    if ctx.deletion_protection || policy == DeletionPolicy::Orphan || !refusals.is_empty() {
        let why = if ctx.deletion_protection {
            "the operator runs with --deletion-protection".to_string()
        } else if !refusals.is_empty() {
            format!("not allowed: {}", refusals.join("; "))
        } else if obj.tenancy_request().deletion_policy().is_some() {
            "deletionPolicy is Orphan".to_string()
        } else {
            "the AtlasOrganization's defaultDeletionPolicy is Orphan".to_string()
        };
        ctx.publish(obj.as_ref(), false, "Orphaned", &format!("left {} in Atlas: {why}", obj.left_in_atlas())).await;
        ctx.metrics.set_ready(K::KIND, &obj.namespace().unwrap_or_default(), &obj.name_any(), None);
        return Ok(Action::await_change());
    }
    converge(api, obj, ctx, true).await
}
