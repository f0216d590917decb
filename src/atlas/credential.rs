//! Per-credential backoff after Atlas refuses the credentials.
//!
//! A client is one credential (the controller builds one per Secret version). When Atlas or
//! the token endpoint answers 401 (or the token endpoint refuses the service account), every
//! call of that credential would be refused the same way: the refusal is cached for an
//! interval, calls fail fast with it ([`AtlasError::CredentialBackoff`], naming the
//! credential), and once the interval is over one call at a time goes through as the probe.
//! A 403 only says these credentials may not touch one organization: it backs off that
//! organization alone. Any answer past authentication clears the backoff; so does a new
//! client, which is what a changed Secret gets.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::error::{AtlasError, ErrorClass};

/// The backoff scope a refusal belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Scope {
    /// The credential as a whole (401, token refused).
    Credential,
    /// One organization (403).
    Org(String),
}

#[derive(Debug)]
struct Refusal {
    error: AtlasError,
    at: Instant,
    probing: bool,
}

#[derive(Debug)]
pub(crate) struct CredentialHealth {
    label: String,
    interval: Duration,
    refusals: Mutex<HashMap<Scope, Refusal>>,
}

/// A call admitted while its scope was backed off: it is the probe. Dropped without an
/// outcome, the next call may probe.
pub(crate) struct Probe<'a> {
    health: &'a CredentialHealth,
    scopes: Vec<Scope>,
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if self.scopes.is_empty() {
            return;
        }
        let mut refusals = self.health.refusals.lock().expect("credential health lock");
        for scope in &self.scopes {
            if let Some(r) = refusals.get_mut(scope) {
                r.probing = false;
            }
        }
    }
}

fn scope_of(error: &AtlasError, org_id: &str) -> Option<Scope> {
    if error.class() != ErrorClass::Auth || matches!(error, AtlasError::CredentialBackoff { .. }) {
        return None;
    }
    match error {
        AtlasError::Api { status: 403, .. } => Some(Scope::Org(org_id.to_string())),
        _ => Some(Scope::Credential),
    }
}

impl CredentialHealth {
    pub(crate) fn new(label: String, interval: Duration) -> Self {
        Self { label, interval, refusals: Mutex::new(HashMap::new()) }
    }

    /// May a call on `org_id` go? `Err` is the cached refusal; `Ok` may carry the probe.
    pub(crate) fn admit(&self, org_id: &str) -> Result<Probe<'_>, AtlasError> {
        let now = Instant::now();
        let mut refusals = self.refusals.lock().expect("credential health lock");
        let mut probe = Probe { health: self, scopes: Vec::new() };
        for scope in [Scope::Credential, Scope::Org(org_id.to_string())] {
            let Some(refusal) = refusals.get_mut(&scope) else { continue };
            let since = now.saturating_duration_since(refusal.at);
            if since < self.interval || refusal.probing {
                let next_probe_in = self.interval.saturating_sub(since);
                let error = AtlasError::CredentialBackoff {
                    credential: match &scope {
                        Scope::Credential => self.label.clone(),
                        Scope::Org(org) => format!("{} (for organization {org})", self.label),
                    },
                    since,
                    next_probe_in,
                    cause: Box::new(refusal.error.clone()),
                };
                // Release the probes already taken (under this lock, not in `probe`'s drop).
                for taken in probe.scopes.drain(..) {
                    if let Some(r) = refusals.get_mut(&taken) {
                        r.probing = false;
                    }
                }
                return Err(error);
            }
            refusal.probing = true;
            probe.scopes.push(scope);
        }
        Ok(probe)
    }

    /// What Atlas answered a call on `org_id`.
    pub(crate) fn record(&self, org_id: &str, result: Result<(), &AtlasError>) {
        let mut refusals = self.refusals.lock().expect("credential health lock");
        match result {
            Err(error) => {
                if let Some(scope) = scope_of(error, org_id) {
                    refusals.insert(scope, Refusal { error: error.clone(), at: Instant::now(), probing: false });
                } else if matches!(error, AtlasError::Api { .. }) {
                    // Atlas answered past authentication: the credentials work.
                    refusals.remove(&Scope::Credential);
                    refusals.remove(&Scope::Org(org_id.to_string()));
                }
            }
            Ok(()) => {
                refusals.remove(&Scope::Credential);
                refusals.remove(&Scope::Org(org_id.to_string()));
            }
        }
    }

    /// Whether the credential as a whole is backed off now.
    pub(crate) fn is_refused(&self) -> bool {
        self.refusals.lock().expect("credential health lock").contains_key(&Scope::Credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "5f1b2c3d4e5f60718293a4b5";
    const OTHER: &str = "6a1b2c3d4e5f60718293a4b6";

    fn api(status: u16) -> AtlasError {
        AtlasError::Api {
            operation: "listOrgUsers",
            status,
            error_code: if status == 401 { "UNAUTHORIZED".into() } else { "USER_UNAUTHORIZED".into() },
            detail: Some("refused".into()),
            retry_after: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_fails_fast_then_one_probe_per_interval() {
        let health = CredentialHealth::new("Secret ns/bad".into(), Duration::from_secs(30));
        assert!(health.admit(ORG).is_ok());
        health.record(ORG, Err(&api(401)));
        let err = health.admit(OTHER).err().unwrap();
        assert_eq!(err.class(), ErrorClass::Auth);
        assert!(err.to_string().starts_with("Secret ns/bad refused by Atlas 0s ago, next check in 30s"), "{err}");
        assert_eq!(err.error_code(), Some("UNAUTHORIZED"));
        tokio::time::sleep(Duration::from_secs(30)).await;
        let probe = health.admit(ORG).unwrap();
        assert!(health.admit(ORG).is_err(), "one probe at a time");
        health.record(ORG, Err(&api(401)));
        drop(probe);
        assert!(health.admit(ORG).is_err(), "refused again: another interval");
        tokio::time::sleep(Duration::from_secs(30)).await;
        let probe = health.admit(ORG).unwrap();
        health.record(ORG, Ok(()));
        drop(probe);
        assert!(health.admit(OTHER).is_ok());
        assert!(!health.is_refused());
    }

    #[tokio::test(start_paused = true)]
    async fn a_403_backs_off_one_organization() {
        let health = CredentialHealth::new("Secret ns/key".into(), Duration::from_secs(30));
        health.record(ORG, Err(&api(403)));
        let err = health.admit(ORG).err().unwrap();
        assert!(err.to_string().contains("for organization 5f1b2c3d4e5f60718293a4b5"), "{err}");
        assert!(health.admit(OTHER).is_ok());
        assert!(!health.is_refused());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_call_probe() {
        let health = CredentialHealth::new("Secret ns/bad".into(), Duration::from_secs(1));
        health.record(ORG, Err(&api(401)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(health.admit(ORG).unwrap());
        assert!(health.admit(ORG).is_ok());
    }
}
