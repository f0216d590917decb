//! What the executor reports back for each action, independent of the client's own error
//! type: the status builders fold these into conditions carrying Atlas's own message.

use std::fmt;

use serde::Serialize;

use super::action::{Action, FailureMode};
pub use crate::atlas::error::ErrorClass;
use crate::atlas::models::OrgUser;

/// A failed Atlas call, as the executor saw it. Carries Atlas's own words, never credentials.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ActionError {
    pub class: ErrorClass,
    /// HTTP status, when Atlas answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Atlas's `errorCode`, when Atlas answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Atlas's `detail`, or what went wrong on the way (timeout, connection reset).
    pub detail: String,
    /// Seconds Atlas asked to wait (`Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl ActionError {
    pub fn new(class: ErrorClass, detail: impl Into<String>) -> Self {
        Self { class, http_status: None, error_code: None, detail: detail.into(), retry_after_secs: None }
    }

    /// An error Atlas answered with.
    pub fn atlas(class: ErrorClass, http_status: u16, error_code: &str, detail: impl Into<String>) -> Self {
        Self {
            class,
            http_status: Some(http_status),
            error_code: Some(error_code.to_string()),
            detail: detail.into(),
            retry_after_secs: None,
        }
    }

    /// The condition reason this failure shows.
    pub fn reason(&self) -> &'static str {
        failure_reason(self.class)
    }

    /// Whether waiting alone may fix it (kstatus `Reconciling`), or a change is needed
    /// (`Stalled`). Unlike a resend by the client, a 409 counts: the plan was made from an
    /// observation Atlas has moved past, and the next pass observes again.
    pub fn waiting_may_fix(&self) -> bool {
        waiting_may_fix(self.class)
    }

    /// Whether the failure would hit every later call too (so an independent plan stops).
    fn hits_every_call(&self) -> bool {
        matches!(self.class, ErrorClass::Transient | ErrorClass::RateLimited | ErrorClass::Auth)
    }
}

/// The condition reason a failure of this class shows.
pub fn failure_reason(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Transient => "AtlasUnavailable",
        ErrorClass::RateLimited => "RateLimited",
        ErrorClass::Permanent => "AtlasError",
        ErrorClass::Conflict => "AtlasConflict",
        ErrorClass::NotFound => "AtlasNotFound",
        ErrorClass::Auth => "AtlasUnauthorized",
    }
}

/// See [`ActionError::waiting_may_fix`].
pub fn waiting_may_fix(class: ErrorClass) -> bool {
    matches!(class, ErrorClass::Transient | ErrorClass::RateLimited | ErrorClass::Conflict)
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(status) = self.http_status {
            write!(f, "HTTP {status} ")?;
        }
        if let Some(code) = &self.error_code {
            write!(f, "{code}: ")?;
        }
        f.write_str(&self.detail)?;
        if let Some(secs) = self.retry_after_secs {
            write!(f, " (retry after {secs}s)")?;
        }
        Ok(())
    }
}

/// What became of one planned action.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "outcome", content = "value", rename_all = "camelCase")]
pub enum ActionOutcome {
    /// Atlas accepted the call; the user as Atlas returned it (None for a 204).
    Done(Option<Box<OrgUser>>),
    /// Atlas (or the way to it) refused.
    Failed(ActionError),
    /// Not attempted, because an earlier failure stopped the plan.
    Skipped,
}

impl ActionOutcome {
    /// Atlas returned the user.
    pub fn user(user: OrgUser) -> Self {
        ActionOutcome::Done(Some(Box::new(user)))
    }

    pub fn error(&self) -> Option<&ActionError> {
        match self {
            ActionOutcome::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// An outcome read in the light of its action: some refusals mean the goal already holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Settled<'a> {
    /// The call did what it was for (or Atlas says it already holds).
    Done,
    /// createOrgUser answered 409: the user is already in the organization (the observation
    /// was stale); adopt it on the next pass.
    AlreadyInOrg,
    Failed(&'a ActionError),
    /// Skipped, or no outcome reported.
    NotRun,
}

pub(crate) fn settle<'a>(action: &Action, outcome: Option<&'a ActionOutcome>) -> Settled<'a> {
    match outcome {
        None | Some(ActionOutcome::Skipped) => Settled::NotRun,
        Some(ActionOutcome::Done(_)) => Settled::Done,
        Some(ActionOutcome::Failed(e)) => match action {
            Action::CreateOrgUser { .. } if e.class == ErrorClass::Conflict => Settled::AlreadyInOrg,
            // Removing what is already gone reached its goal.
            Action::RemoveOrgUser { .. } | Action::RemoveProjectUser { .. } if e.class == ErrorClass::NotFound => {
                Settled::Done
            }
            // The client settles a refused removal by reading the user again; a 404 (user or
            // team gone) also leaves the user out of the team.
            Action::RemoveTeamUser { .. } if e.class == ErrorClass::NotFound => Settled::Done,
            _ => Settled::Failed(e),
        },
    }
}

/// Whether an answer contradicted the observation the plan was made from (a 404: the user,
/// project user or team is not where the listing said), so the organization must be listed
/// again and the object planned from that fresh read.
pub fn contradicts_observation(outcomes: &[ActionOutcome]) -> bool {
    outcomes.iter().filter_map(ActionOutcome::error).any(|e| e.class == ErrorClass::NotFound)
}

/// Whether an executor should go on with the next action after `error`.
pub fn continue_after(mode: FailureMode, error: &ActionError) -> bool {
    match mode {
        FailureMode::Sequential => false,
        FailureMode::Independent => !error.hits_every_call(),
    }
}

/// The first real failure among the outcomes, with its action.
pub(crate) fn first_failure<'a>(
    actions: &'a [Action],
    outcomes: &'a [ActionOutcome],
) -> Option<(&'a Action, &'a ActionError)> {
    actions.iter().enumerate().find_map(|(i, a)| match settle(a, outcomes.get(i)) {
        Settled::Failed(e) => Some((a, e)),
        _ => None,
    })
}
