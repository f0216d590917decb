//! Status writes: server-side apply of the complete status under one field manager,
//! and no write at all when nothing changed (so a reconcile never re-triggers itself).

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "atlas-access-operator";

/// The body of a status apply: `apiVersion`, `kind` and the full `status`, nothing else.
pub fn status_patch<K, S>(status: &S) -> serde_json::Value
where
    K: Resource<DynamicType = ()>,
    S: Serialize,
{
    json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    })
}

/// Apply `desired` as the object's status unless it already is the status.
/// Returns whether a patch was sent.
pub async fn apply_status<K, S>(api: &Api<K>, name: &str, current: Option<&S>, desired: &S) -> kube::Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    Ok(matches!(apply_status_versioned(api, name, current, desired).await?, StatusWrite::Written { .. }))
}

/// What a status apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusWrite {
    /// The status already was the desired one: nothing sent.
    Unchanged,
    /// Sent; the object's `resourceVersion` after it.
    Written { resource_version: Option<String> },
}

/// [`apply_status`], telling the `resourceVersion` the write produced.
pub async fn apply_status_versioned<K, S>(
    api: &Api<K>,
    name: &str,
    current: Option<&S>,
    desired: &S,
) -> kube::Result<StatusWrite>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(StatusWrite::Unchanged);
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let written = api.patch_status(name, &params, &Patch::Apply(status_patch::<K, S>(desired))).await?;
    Ok(StatusWrite::Written { resource_version: written.meta().resource_version.clone() })
}

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::conditions::{self, DesiredCondition, HasConditions};
use crate::api::{AtlasOrgUserStatus, AtlasTeamMembershipStatus};

/// The parts of a status the controller sets itself when the engine could not run.
pub trait ConditionedStatus: HasConditions + Clone + Default {
    fn set_conditions(&mut self, conditions: Vec<Condition>);
    fn set_observed_generation(&mut self, generation: Option<i64>);
    /// Only what the object itself holds: its conditions and its ownership records (what it
    /// granted, adopted or added, which it must remember to take away later), without what
    /// Atlas reported. For a status that may not show Atlas data (not allowed, credentials
    /// refused): the records are never dropped, or a later deletion would forget them.
    fn records_only(&self) -> Self;
}

impl ConditionedStatus for AtlasOrgUserStatus {
    fn set_conditions(&mut self, conditions: Vec<Condition>) {
        self.conditions = conditions;
    }
    fn set_observed_generation(&mut self, generation: Option<i64>) {
        self.observed_generation = generation;
    }
    fn records_only(&self) -> Self {
        Self {
            adopted: self.adopted,
            granted: self.granted.clone(),
            reinvitations: self.reinvitations,
            invited_generation: self.invited_generation,
            conditions: self.conditions.clone(),
            ..Self::default()
        }
    }
}

impl ConditionedStatus for AtlasTeamMembershipStatus {
    fn set_conditions(&mut self, conditions: Vec<Condition>) {
        self.conditions = conditions;
    }
    fn set_observed_generation(&mut self, generation: Option<i64>) {
        self.observed_generation = generation;
    }
    fn records_only(&self) -> Self {
        Self {
            team_id: self.team_id.clone(),
            added_members: self.added_members.clone(),
            conditions: self.conditions.clone(),
            ..Self::default()
        }
    }
}

/// The previous status with Ready=False for `reason` and the kstatus condition that fits:
/// `Stalled` when retrying will not help, else `Reconciling`. Everything Atlas reported
/// before is kept: it is still the last known truth.
pub fn failed_status<S: ConditionedStatus>(
    previous: Option<&S>,
    generation: Option<i64>,
    reason: &str,
    message: &str,
    stalled: bool,
) -> S {
    let mut status = previous.cloned().unwrap_or_default();
    let mut desired = vec![DesiredCondition::new(conditions::READY, false, reason, message)];
    // Keep InvitationAccepted as it was: nothing new is known about it.
    if let Some(c) = conditions::find(status.conditions(), conditions::INVITATION_ACCEPTED) {
        desired.push(DesiredCondition::new(
            conditions::INVITATION_ACCEPTED,
            c.status == "True",
            c.reason.clone(),
            c.message.clone(),
        ));
    }
    if stalled {
        desired.push(DesiredCondition::new(conditions::STALLED, true, reason, message));
    } else {
        desired.push(DesiredCondition::new(conditions::RECONCILING, true, reason, message));
    }
    let merged = conditions::merge(status.conditions(), &desired, generation, Time(jiff::Timestamp::now()));
    status.set_conditions(merged);
    status.set_observed_generation(generation);
    status
}
