//! What a reconcile tells people besides its status: the audit line of every Atlas write,
//! drift corrections (Atlas changed outside the operator, and the operator changed it back),
//! and Warning events for states that need a person (a Conflict, members not in the org),
//! each sent once when the state begins or its message changes, not on every resync.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::{EngineEvent, events, org_of};
use crate::api::AtlasOrgUserSpec;
use crate::api::conditions::{self, READY};
use crate::atlas::Operation;
use crate::atlas::models::OrgUser;
use crate::reconcile::{Action, ActionOutcome, reasons};

/// The client operation (the spec's `operationId`) an action calls.
pub fn operation(action: &Action) -> Operation {
    match action {
        Action::CreateOrgUser { .. } => Operation::CreateOrgUser,
        Action::RemoveOrgUser { .. } => Operation::RemoveOrgUser,
        Action::AddOrgRole { .. } => Operation::AddOrgUserRole,
        Action::RemoveOrgRole { .. } => Operation::RemoveOrgUserRole,
        Action::AddProjectRole { .. } => Operation::AddGroupUserRole,
        Action::RemoveProjectRole { .. } => Operation::RemoveGroupUserRole,
        Action::RemoveProjectUser { .. } => Operation::RemoveGroupUser,
        Action::AddTeamUser { .. } => Operation::AddOrgTeamUser,
        Action::RemoveTeamUser { .. } => Operation::RemoveOrgTeamUser,
    }
}

fn team_of(action: &Action) -> Option<&str> {
    match action {
        Action::AddTeamUser { team_id, .. } | Action::RemoveTeamUser { team_id, .. } => Some(team_id),
        _ => None,
    }
}

/// The audit trail: one `info` line per Atlas write, with the operation, the organization,
/// the user (and team), the object that asked and the outcome (Atlas's own words on failure).
pub fn audit(kind: &str, object: &str, action: &Action, outcome: &ActionOutcome) {
    let operation = operation(action).operation_id();
    let org_id = org_of(action);
    let username = action.username();
    let user_id = action.user_id().unwrap_or_default();
    let team_id = team_of(action).unwrap_or_default();
    match outcome {
        ActionOutcome::Done(returned) => {
            let user_id = returned.as_deref().map(|u| u.id.as_str()).unwrap_or(user_id);
            tracing::info!(
                audit = true,
                operation,
                org_id,
                username,
                user_id,
                team_id,
                kind,
                object,
                outcome = "success",
                "Atlas write: {action}"
            );
        }
        ActionOutcome::Failed(error) => {
            tracing::info!(
                audit = true,
                operation,
                org_id,
                username,
                user_id,
                team_id,
                kind,
                object,
                outcome = "failed",
                error = %error,
                "Atlas write refused: {action}: {error}"
            );
        }
        ActionOutcome::Skipped => {}
    }
}

/// Whether the previous status said Atlas matched this very generation of the spec: then
/// any change the plan makes now reverts something done in Atlas outside the operator.
pub fn was_in_sync(previous: &[Condition], previous_generation: Option<i64>, generation: Option<i64>) -> bool {
    previous_generation.is_some()
        && previous_generation == generation
        && conditions::find(previous, READY).is_some_and(|c| c.status == "True" && c.reason == reasons::SYNCED)
}

/// Writes that correct drift: role, project and team changes (an invitation, a re-invitation
/// or a removal on deletion is never drift).
fn is_correction(action: &Action) -> bool {
    matches!(
        action,
        Action::AddOrgRole { .. }
            | Action::RemoveOrgRole { .. }
            | Action::AddProjectRole { .. }
            | Action::RemoveProjectRole { .. }
            | Action::RemoveProjectUser { .. }
            | Action::AddTeamUser { .. }
            | Action::RemoveTeamUser { .. }
    )
}

fn done<'a>(actions: &'a [Action], outcomes: &'a [ActionOutcome]) -> impl Iterator<Item = &'a Action> {
    actions
        .iter()
        .zip(outcomes)
        .filter(|(a, o)| is_correction(a) && matches!(o, ActionOutcome::Done(_)))
        .map(|(a, _)| a)
}

fn sorted(items: impl IntoIterator<Item = String>) -> String {
    let mut items: Vec<String> = items.into_iter().collect();
    items.sort();
    if items.is_empty() { "none".into() } else { items.join(", ") }
}

/// For an AtlasOrgUser that was in sync: one `DriftCorrected` event saying what Atlas had and
/// what the spec wants, in place of the plain role and team events. `observed` is the user as
/// Atlas reported it before the calls.
pub fn org_user_drift(
    spec: &AtlasOrgUserSpec,
    observed: Option<&OrgUser>,
    actions: &[Action],
    outcomes: &[ActionOutcome],
) -> Option<EngineEvent> {
    let corrected: Vec<&Action> = done(actions, outcomes).collect();
    if corrected.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if corrected.iter().any(|a| matches!(a, Action::AddOrgRole { .. } | Action::RemoveOrgRole { .. })) {
        let had = sorted(observed.map(|u| u.roles.org_roles.clone()).unwrap_or_default());
        let wants = sorted(spec.org_roles.iter().map(|r| r.as_str().to_string()));
        parts.push(format!("org roles: Atlas had {had}, the spec wants {wants}"));
    }
    let mut changed_projects: Vec<&str> = corrected
        .iter()
        .filter_map(|a| match a {
            Action::AddProjectRole { project_id, .. }
            | Action::RemoveProjectRole { project_id, .. }
            | Action::RemoveProjectUser { project_id, .. } => Some(project_id.as_str()),
            _ => None,
        })
        .collect();
    changed_projects.sort();
    changed_projects.dedup();
    for project in changed_projects {
        let had = sorted(
            observed
                .into_iter()
                .flat_map(|u| &u.roles.group_role_assignments)
                .filter(|a| a.group_id.as_deref() == Some(project))
                .flat_map(|a| a.group_roles.clone()),
        );
        let wants = sorted(
            spec.project_roles
                .iter()
                .filter(|p| p.project_id == project)
                .flat_map(|p| p.roles.iter().map(|r| r.as_str().to_string())),
        );
        parts.push(format!("project {project} roles: Atlas had {had}, the spec wants {wants}"));
    }
    for action in &corrected {
        if let Action::AddTeamUser { team_id, username, .. } = action {
            parts.push(format!("team {team_id}: Atlas no longer had {username} in it, the spec lists it"));
        }
    }
    Some(drift_event(&spec.username, parts))
}

/// For an AtlasTeamMembership that was in sync: one `DriftCorrected` event naming the members
/// Atlas had removed (added back) or had added without the spec listing them (removed).
pub fn team_drift(team: &str, actions: &[Action], outcomes: &[ActionOutcome]) -> Option<EngineEvent> {
    let mut parts = Vec::new();
    for action in done(actions, outcomes) {
        match action {
            Action::AddTeamUser { username, .. } => {
                parts.push(format!("{username} was no longer in the team, the spec lists them: added back"))
            }
            Action::RemoveTeamUser { username, .. } => {
                parts.push(format!("{username} was in the team, the spec does not list them: removed"))
            }
            _ => {}
        }
    }
    (!parts.is_empty()).then(|| drift_event(&format!("team {team}"), parts))
}

fn drift_event(subject: &str, parts: Vec<String>) -> EngineEvent {
    EngineEvent::normal(
        events::DRIFT_CORRECTED,
        format!("{subject} was changed in Atlas outside the operator; corrected: {}", parts.join("; ")),
    )
}

/// Replace the plain change events that a drift event covers.
pub fn fold_drift(events: &mut Vec<EngineEvent>, drift: Option<EngineEvent>) {
    let Some(drift) = drift else { return };
    let covered = [
        events::ORG_ROLES_CHANGED,
        events::PROJECT_ROLES_CHANGED,
        events::TEAM_JOINED,
        events::MEMBER_ADDED,
        events::MEMBER_REMOVED,
    ];
    events.retain(|e| !covered.contains(&e.reason.as_str()));
    tracing::info!(reason = events::DRIFT_CORRECTED, "{}", drift.note);
    events.push(drift);
}

/// Ready reasons that need a person and get a Warning event when they begin (or their
/// message changes), rather than on every reconcile.
const WARNED_REASONS: [&str; 2] = [reasons::CONFLICT, reasons::MEMBERS_NOT_IN_ORG];

/// A Warning event when the new `Ready` condition enters one of [`WARNED_REASONS`], or its
/// message changed since the previous status.
pub fn condition_warning(previous: &[Condition], current: &[Condition]) -> Option<EngineEvent> {
    let now = conditions::find(current, READY)?;
    if now.status == "True" || !WARNED_REASONS.contains(&now.reason.as_str()) {
        return None;
    }
    let before = conditions::find(previous, READY);
    if before.is_some_and(|b| b.reason == now.reason && b.message == now.message) {
        return None;
    }
    Some(EngineEvent::warning(&now.reason, now.message.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{DesiredCondition, merge};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ready(status: bool, reason: &str, message: &str) -> Vec<Condition> {
        merge(&[], &[DesiredCondition::new(READY, status, reason, message)], Some(1), Time(jiff::Timestamp::UNIX_EPOCH))
    }

    #[test]
    fn conflict_warns_once_per_message() {
        let conflict = ready(false, reasons::CONFLICT, "ns/a (older) already manages this Atlas user");
        let warning = condition_warning(&[], &conflict).expect("a first Conflict warns");
        assert!(warning.warning);
        assert_eq!(warning.reason, "Conflict");
        assert!(warning.note.contains("ns/a (older)"), "{}", warning.note);
        // The next resync with the same condition: no new event.
        assert_eq!(condition_warning(&conflict, &conflict), None);
        // Another message (another owner): a new event.
        let other = ready(false, reasons::CONFLICT, "ns/b (older) already manages this Atlas user");
        assert!(condition_warning(&conflict, &other).is_some());
        // Progressing never warns.
        assert_eq!(condition_warning(&[], &ready(false, reasons::PROGRESSING, "1 change(s) to go")), None);
        assert!(
            condition_warning(&ready(true, reasons::SYNCED, "ok"), &ready(false, "MembersNotInOrg", "x")).is_some()
        );
    }

    #[test]
    fn in_sync_only_for_the_same_generation() {
        let synced = ready(true, reasons::SYNCED, "Atlas matches the spec");
        assert!(was_in_sync(&synced, Some(3), Some(3)));
        assert!(!was_in_sync(&synced, Some(2), Some(3)), "a spec change is not drift");
        assert!(!was_in_sync(&ready(false, reasons::PROGRESSING, "x"), Some(3), Some(3)));
        assert!(!was_in_sync(&ready(true, reasons::PAUSED, "x"), Some(3), Some(3)));
        assert!(!was_in_sync(&[], None, None));
    }

    #[test]
    fn org_user_drift_says_what_atlas_had_and_what_the_spec_wants() {
        use crate::atlas::models::{MembershipStatus, OrgUserRoles};
        let spec: AtlasOrgUserSpec = serde_json::from_value(serde_json::json!({
            "orgId": "5f1b2c3d4e5f60718293a4b5", "username": "bob@example.com", "orgRoles": ["ORG_MEMBER"]
        }))
        .unwrap();
        let observed = OrgUser {
            id: "u1".into(),
            username: "bob@example.com".into(),
            org_membership_status: MembershipStatus::Active,
            roles: OrgUserRoles {
                org_roles: vec!["ORG_OWNER".into(), "ORG_MEMBER".into()],
                group_role_assignments: vec![],
            },
            ..serde_json::from_value(serde_json::json!({
                "id": "u1", "username": "bob@example.com", "orgMembershipStatus": "ACTIVE", "roles": {"orgRoles": []}
            }))
            .unwrap()
        };
        let remove = Action::RemoveOrgRole {
            org_id: spec.org_id.clone(),
            user_id: "u1".into(),
            username: "bob@example.com".into(),
            role: "ORG_OWNER".into(),
        };
        let event = org_user_drift(&spec, Some(&observed), std::slice::from_ref(&remove), &[ActionOutcome::Done(None)])
            .unwrap();
        assert_eq!(
            event.note,
            "bob@example.com was changed in Atlas outside the operator; corrected: org roles: Atlas had ORG_MEMBER, \
             ORG_OWNER, the spec wants ORG_MEMBER"
        );
        // A refused correction corrected nothing.
        let refused =
            ActionOutcome::Failed(crate::reconcile::ActionError::new(crate::reconcile::ErrorClass::Permanent, "no"));
        assert_eq!(org_user_drift(&spec, Some(&observed), &[remove], &[refused]), None);
    }

    #[test]
    fn team_drift_names_each_member() {
        let remove = Action::RemoveTeamUser {
            org_id: "o".into(),
            team_id: "t".into(),
            user_id: "u1".into(),
            username: "stranger@example.com".into(),
        };
        let add = Action::AddTeamUser {
            org_id: "o".into(),
            team_id: "t".into(),
            user_id: "u2".into(),
            username: "alice@example.com".into(),
        };
        let outcomes = [ActionOutcome::Done(None), ActionOutcome::Done(None)];
        let event = team_drift("platform", &[remove, add], &outcomes).unwrap();
        assert_eq!(event.reason, "DriftCorrected");
        assert!(
            event.note.contains("stranger@example.com was in the team, the spec does not list them"),
            "{}",
            event.note
        );
        assert!(event.note.contains("alice@example.com was no longer in the team"), "{}", event.note);
        let mut events = vec![EngineEvent::normal(events::MEMBER_REMOVED, "x".into())];
        fold_drift(&mut events, Some(event));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "DriftCorrected");
    }
}
