//! Leader election on a coordination.k8s.io Lease, so two replicas never both write.
//!
//! A replica waits until it holds the Lease, then runs the controllers; when it loses the
//! Lease it stops them (and the process exits non-zero, so Kubernetes restarts it as a
//! follower) — the controller-runtime convention, simpler than pausing reconcilers.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Lease timing: a new leader takes over at most `LEASE_DURATION_SECS` after the old one stops renewing.
pub const LEASE_DURATION_SECS: u64 = 15;
const LEASE_GRACE_SECS: u64 = 5;

/// A held Lease: `lost()` resolves when leadership is lost; dropping releases it.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leader election on Lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("leader election on Lease {namespace}/{name} stopped")]
    Stopped { namespace: String, name: String },
}

/// Block until this process holds the Lease `namespace/name`.
pub async fn acquire(client: Client, namespace: &str, name: &str, identity: &str) -> Result<Leadership, LeaderError> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_DURATION_SECS)
        .with_grace(LEASE_GRACE_SECS)
        .with_field_manager(format!("atlas-access-operator-{identity}"))
        .build()
        .await
        .map_err(|source| LeaderError::Lease { namespace: namespace.into(), name: name.into(), source })?;
    let (mut state, task) = manager.watch().await;
    tracing::info!(lease = %format!("{namespace}/{name}"), %identity, "waiting for leadership");
    while !*state.borrow_and_update() {
        if state.changed().await.is_err() {
            return Err(LeaderError::Stopped { namespace: namespace.into(), name: name.into() });
        }
    }
    tracing::info!(lease = %format!("{namespace}/{name}"), %identity, "acquired leadership");
    Ok(Leadership { state, task })
}

impl Leadership {
    /// Resolves once the Lease is no longer held by this process.
    pub async fn lost(&mut self) {
        loop {
            if !*self.state.borrow_and_update() {
                return;
            }
            if self.state.changed().await.is_err() {
                return;
            }
        }
    }

    /// Give the Lease up (on shutdown), so a follower takes over at once.
    pub async fn release(self) {
        drop(self.state);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released leadership"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing leadership failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the leadership task ended abnormally"),
            Err(_) => tracing::warn!("releasing leadership did not finish within 5s"),
        }
    }
}
