//! Conditions: built fresh each reconcile and merged with the previous ones so that
//! `lastTransitionTime` moves only when a condition's status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types the operator writes.
pub const READY: &str = "Ready";
/// Whether the person has accepted the invitation (AtlasOrgUser only).
pub const INVITATION_ACCEPTED: &str = "InvitationAccepted";
/// The pending invitation lapses within the warning window (AtlasOrgUser only).
pub const INVITATION_EXPIRING_SOON: &str = "InvitationExpiringSoon";
/// kstatus: the controller is working towards the spec.
pub const RECONCILING: &str = "Reconciling";
/// kstatus: the controller cannot make progress without a change.
pub const STALLED: &str = "Stalled";

/// A condition the planner wants, before timestamps are decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl DesiredCondition {
    pub fn new(type_: &'static str, status: bool, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { type_, status, reason: reason.into(), message: message.into() }
    }
}

fn status_str(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// Merge desired conditions into the previous list: a condition keeps its
/// `lastTransitionTime` unless its status flips; conditions not desired are dropped.
pub fn merge(
    previous: &[Condition],
    desired: &[DesiredCondition],
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = status_str(d.status);
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == d.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: d.type_.to_string(),
                status: status.to_string(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// A status that carries conditions (both kinds' statuses do).
pub trait HasConditions {
    fn conditions(&self) -> &[Condition];
}

impl HasConditions for super::AtlasOrgUserStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl HasConditions for super::AtlasTeamMembershipStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

/// The condition of one type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of one type is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let first = merge(&[], &[DesiredCondition::new(READY, false, "Reconciling", "inviting")], Some(1), t(100));
        assert_eq!(first[0].last_transition_time, t(100));
        // Same status, new reason and message: the time stays.
        let second = merge(&first, &[DesiredCondition::new(READY, false, "RateLimited", "waiting")], Some(2), t(200));
        assert_eq!(second[0].last_transition_time, t(100));
        assert_eq!(second[0].reason, "RateLimited");
        assert_eq!(second[0].observed_generation, Some(2));
        // Flip: the time moves.
        let third = merge(&second, &[DesiredCondition::new(READY, true, "Synced", "ok")], Some(2), t(300));
        assert_eq!(third[0].last_transition_time, t(300));
        assert_eq!(third[0].status, "True");
        assert!(is_true(&third, READY));
        assert!(!is_true(&third, STALLED));
    }

    #[test]
    fn undesired_conditions_are_dropped() {
        let prev = merge(&[], &[DesiredCondition::new(STALLED, true, "Conflict", "x")], None, t(1));
        let next = merge(&prev, &[DesiredCondition::new(READY, true, "Synced", "ok")], None, t(2));
        assert_eq!(next.len(), 1);
        assert!(find(&next, STALLED).is_none());
    }
}
