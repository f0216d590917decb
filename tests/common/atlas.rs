//! Atlas client fixtures: a client pointed at the in-process simulator, fast retry
//! policies, and a log capture for asserting what the client writes.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atlas_access_operator::atlas::{
    AtlasClient, ClientConfig, Credentials, InvitationQueue, OrgRateLimiter, RetryPolicy,
};
use secrecy::SecretString;

use super::sim::{CLIENT_ID, CLIENT_SECRET, PRIVATE_KEY, PUBLIC_KEY, Sim};

pub fn api_key() -> Credentials {
    Credentials::ApiKey { public_key: PUBLIC_KEY.into(), private_key: SecretString::from(PRIVATE_KEY) }
}

pub fn service_account() -> Credentials {
    Credentials::ServiceAccount { client_id: CLIENT_ID.into(), client_secret: SecretString::from(CLIENT_SECRET) }
}

/// Retries in milliseconds instead of seconds, same shape as the default.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(20),
        ..RetryPolicy::default()
    }
}

/// A client config for the simulator (plain http allowed), fast retries, no pacing.
pub fn config(sim: &Sim, credentials: Credentials) -> ClientConfig {
    ClientConfig {
        insecure_http: true,
        retry: fast_retry(),
        timeout: Duration::from_secs(5),
        limiter: OrgRateLimiter::disabled(),
        invitations: InvitationQueue::disabled(),
        ..ClientConfig::new(sim.handle.base_url(), credentials)
    }
}

pub fn client(sim: &Sim, credentials: Credentials) -> AtlasClient {
    AtlasClient::new(config(sim, credentials)).expect("client builds")
}

/// Everything the `tracing` subscriber of this thread writes, at every level.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Capture every event of the process from now on. Once per test binary: a scoped
    /// (thread-local) subscriber can miss events whose callsites other test threads saw first.
    pub fn install_global() -> Self {
        let capture = Self::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber of this binary");
        capture
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
