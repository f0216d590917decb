//! Write-ahead records: before a plan grants anything, the caller persists what the object is
//! about to grant (its status with the intent in it), where it survives a restart; only then
//! does the engine send the calls. If that write fails, nothing is sent. The team membership
//! records the users it is about to add, the org user the projects and teams it is about to
//! grant (`status.granted`): one hook for every grant an object must be able to take away.

use std::future::Future;

/// Persists an object's write-ahead record (its status with the intended grants in it)
/// before the engine sends the calls that make the grants. The controller writes the
/// status subresource; a caller whose statuses live in memory for the run ([`InMemory`])
/// has nothing to write ahead.
pub trait PersistIntent<S>: Sync {
    /// Persist `intent`; an error means no call is sent.
    fn persist_intent(&self, intent: &S) -> impl Future<Output = Result<(), IntentError>> + Send;
}

/// The write-ahead record could not be persisted, so no call was sent.
#[derive(Debug, thiserror::Error)]
#[error("recording what this object is about to grant failed, so nothing was sent to Atlas: {0}")]
pub struct IntentError(pub String);

/// For `plan -f` / `apply -f` and tests: the status of the report carries the record.
#[derive(Clone, Copy, Debug, Default)]
pub struct InMemory;

impl<S: Sync> PersistIntent<S> for InMemory {
    async fn persist_intent(&self, _intent: &S) -> Result<(), IntentError> {
        Ok(())
    }
}
