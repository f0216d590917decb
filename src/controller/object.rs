//! The reconcile both kinds share: finalizer, credentials, the engine, events, status.
//! Each kind plugs in through [`Managed`] (see `org_user.rs` and `team.rs`).

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::credentials::CredentialsRef;
use super::status::{ConditionedStatus, StatusWrite, apply_status_versioned, failed_status};
use super::{Context, Error, failure_message, incomplete, instrumented};
use crate::api::conditions::{HasConditions, READY, find};
use crate::api::{AtlasOrganization, DeletionPolicy, FINALIZER};
use crate::atlas::{AtlasClient, ErrorClass};
use crate::engine::{self, EngineError, Report};
use crate::metrics::KindLabels;
use crate::reconcile::tenancy::{self, NOT_ALLOWED, Request};

/// The controller's write-ahead: the record goes into the object's status (server-side
/// apply, the same field manager as every status write) before the engine sends a call.
pub(super) struct StatusIntent<'a, K: Managed> {
    pub api: Api<K>,
    pub object: &'a K,
    pub ctx: &'a Context,
}

impl<K: Managed> engine::PersistIntent<K::Status> for StatusIntent<'_, K> {
    async fn persist_intent(&self, intent: &K::Status) -> Result<(), engine::IntentError> {
        write_status(&self.api, self.object, self.ctx, intent)
            .await
            .map(|_| ())
            .map_err(|e| engine::IntentError(e.to_string()))
    }
}

/// Apply `desired` as the object's status (unless it already is), remembering a write that
/// changed the object until the cache has seen it ([`super::own_writes`]). Whether a patch was sent.
async fn write_status<K: Managed>(api: &Api<K>, obj: &K, ctx: &Context, desired: &K::Status) -> kube::Result<bool> {
    match apply_status_versioned(api, &obj.name_any(), obj.current_status(), desired).await? {
        StatusWrite::Unchanged => Ok(false),
        StatusWrite::Written { resource_version } => {
            ctx.own_writes.wrote(
                &super::object_key(obj),
                obj.meta().resource_version.as_deref(),
                resource_version.as_deref(),
                Instant::now(),
            );
            Ok(true)
        }
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
    /// What the object asks of its organization (for the AtlasOrganization's rules).
    fn tenancy_request(&self) -> Request<'_>;
    /// Whether deleting the object, under the effective deletion `policy` (its own, else its
    /// AtlasOrganization's default), needs an Atlas call, so a finalizer must hold it until
    /// that is done. Not for `Orphan`, nor under global deletion protection: such objects
    /// carry no finalizer and delete at once, with or without a running operator.
    fn needs_finalizer(&self, policy: DeletionPolicy, deletion_protection: bool) -> bool {
        !deletion_protection && policy == DeletionPolicy::Delete
    }
    /// What an orphaning deletion leaves in Atlas, for the event.
    fn left_in_atlas(&self) -> String;
    /// Why deletion leaves Atlas alone when [`Managed::needs_finalizer`] says no for a reason
    /// of the kind's own (an adopted user).
    fn kept_because(&self) -> String {
        "deletion needs no Atlas call".to_string()
    }
    /// Observe, plan, persist the write-ahead record, execute (or clean up, for an object
    /// being deleted).
    fn run_engine(
        &self,
        client: &AtlasClient,
        ctx: &Context,
    ) -> impl Future<Output = Result<Report<Self::Plan, Self::Status>, EngineError>> + Send;
}

pub(super) async fn reconcile<K: Managed>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Started from a cached object our own last status write has not reached yet: planning
    // from it would repeat what that reconcile did. Wait for the watch.
    let key = super::object_key(obj.as_ref());
    if ctx.own_writes.cache_is_behind(&key, obj.meta().resource_version.as_deref(), Instant::now()) {
        tracing::debug!(object = %key, "the cache has not seen our status write yet");
        return Ok(Action::requeue(super::own_writes::CACHE_BEHIND_RETRY));
    }
    instrumented(obj.clone(), ctx.clone(), async move {
        let ns = obj.namespace().unwrap_or_default();
        let api: Api<K> = Api::namespaced(ctx.kube.clone(), &ns);
        let policy = effective_deletion_policy(obj.as_ref(), &ctx);
        if !obj.needs_finalizer(policy, ctx.deletion_protection) {
            return without_finalizer(&api, obj, &ctx, policy).await;
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
async fn without_finalizer<K: Managed>(
    api: &Api<K>,
    obj: Arc<K>,
    ctx: &Context,
    policy: DeletionPolicy,
) -> Result<Action, Error> {
    let ours = obj.finalizers().iter().position(|f| f == FINALIZER);
    if obj.meta().deletion_timestamp.is_some() {
        if let Some(index) = ours {
            orphaned(obj.as_ref(), ctx, policy, None).await;
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

async fn orphaned<K: Managed>(obj: &K, ctx: &Context, policy: DeletionPolicy, refused: Option<String>) {
    let why = if let Some(refused) = refused {
        refused
    } else if ctx.deletion_protection {
        "the operator runs with --deletion-protection".to_string()
    } else if policy == DeletionPolicy::Orphan && obj.tenancy_request().deletion_policy().is_some() {
        "deletionPolicy is Orphan".to_string()
    } else if policy == DeletionPolicy::Orphan {
        "the AtlasOrganization's defaultDeletionPolicy is Orphan".to_string()
    } else {
        obj.kept_because()
    };
    ctx.publish(obj, false, "Orphaned", &format!("left {} in Atlas: {why}", obj.left_in_atlas())).await;
    ctx.metrics.set_ready(K::KIND, &obj.namespace().unwrap_or_default(), &obj.name_any(), None);
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
        // Conditions and ownership records only: nothing Atlas reported.
        Observed::Clear => Some(obj.current_status().map(ConditionedStatus::records_only).unwrap_or_default()),
    };
    let previous = cleared.as_ref().or(obj.current_status());
    let status = failed_status(previous, obj.meta().generation, reason, message, stalled);
    match write_status(api, obj, ctx, &status).await {
        Ok(true) => count_status_write::<K>(ctx),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %super::describe_kube_error(&e), "writing the failure status failed"),
    }
    ctx.metrics.set_ready(K::KIND, &obj.namespace().unwrap_or_default(), &obj.name_any(), Some("False"));
    ctx.publish(obj, true, reason, message).await;
}

/// The AtlasOrganizations that name the object's orgId (by name; normally one), and why they
/// refuse it, if they do. Reads the namespace only when a label selector has to decide.
/// The AtlasOrganizations of the object's organization, by name (from the store).
fn organizations_of<K: Managed>(obj: &K, ctx: &Context) -> Vec<Arc<AtlasOrganization>> {
    super::organizations_of_org(ctx, obj.tenancy_request().org_id())
}

/// The object's own deletion policy, else its AtlasOrganization's default, else `Delete`.
fn effective_deletion_policy<K: Managed>(obj: &K, ctx: &Context) -> DeletionPolicy {
    let orgs = organizations_of(obj, ctx);
    tenancy::effective_deletion_policy(obj.tenancy_request(), orgs.first().map(|o| &o.spec))
}

async fn tenancy<K: Managed>(obj: &K, ctx: &Context) -> Result<(Vec<Arc<AtlasOrganization>>, Vec<String>), Error> {
    let request = obj.tenancy_request();
    let orgs = organizations_of(obj, ctx);
    let ns = obj.namespace().unwrap_or_default();
    let mut labels = None;
    let mut refusals = Vec::new();
    for org in &orgs {
        if labels.is_none() && tenancy::needs_labels(&org.spec, &ns) {
            labels = Some(ctx.namespace_labels(&ns).await?);
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
        // The status could not be written, so writing a failure status would not work either.
        Err(EngineError::Intent(e)) => return Err(e.into()),
        Err(EngineError::Atlas(e)) => {
            let failure = engine::action_error(&e);
            let observed = if e.class() == ErrorClass::Auth { Observed::Clear } else { Observed::Keep };
            if e.class() == ErrorClass::Auth {
                // The key may have been rotated: read its Secret again on the next attempt.
                ctx.clients.recheck(from);
            }
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
    if let Some(why) = report.unrecorded {
        // Nothing was sent: the next attempt plans, records and grants again.
        return Err(Error::Intent(engine::IntentError(why)));
    }
    if deleting && report.finalizer_may_be_removed {
        ctx.metrics.set_ready(K::KIND, &ns, &name, None);
        return Ok(Action::await_change());
    }
    if write_status(api, obj.as_ref(), ctx, &report.status).await? {
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
    if !obj.needs_finalizer(policy, ctx.deletion_protection) || !refusals.is_empty() {
        let why = (!refusals.is_empty()).then(|| format!("not allowed: {}", refusals.join("; ")));
        orphaned(obj.as_ref(), ctx, policy, why).await;
        return Ok(Action::await_change());
    }
    converge(api, obj, ctx, true).await
}
