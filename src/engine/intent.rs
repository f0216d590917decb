//! Write-ahead ownership: whatever an object will later take away, it records before it
//! grants it, where the record survives a restart. The engine plans, and when the plan grants
//! something the object's record does not hold yet it hands the new record to an
//! [`IntentRecorder`] before the first Atlas call; if recording fails, nothing is sent.
//!
//! Generic over the status type, so every kind that owns things in Atlas (AtlasOrgUser's
//! projects and teams, AtlasTeamMembership's added members) persists its record the same way.

use std::future::Future;

/// Persists an object's status carrying its new ownership record (the controller: a status
/// apply to the API server). `Err` carries a message for the event and the log (never a
/// credential).
pub trait IntentRecorder<S>: Sync {
    fn record(&self, intent: &S) -> impl Future<Output = Result<(), String>> + Send;
}

/// The record lives only as long as the run, in the status the caller keeps (the one-shot
/// `apply`, tests): recording always succeeds.
#[derive(Clone, Copy, Debug, Default)]
pub struct InMemoryRecord;

impl<S: Sync> IntentRecorder<S> for InMemoryRecord {
    async fn record(&self, _intent: &S) -> Result<(), String> {
        Ok(())
    }
}
