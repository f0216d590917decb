//! The operational HTTP surface: `/healthz` (alive), `/readyz` (CRDs found and caches
//! synced) and `/metrics` (Prometheus text format).
//!
//! `/readyz` also reports, one line each, whether Atlas and the token endpoint answer
//! ([`DependencyHealth`]): `atlas: wedged: 5 exchanges without an answer since ...`. A wedged
//! dependency does not make the pod unready, on purpose: readiness is about this pod, and an
//! Atlas outage is the same for every replica. Flipping it would take every replica out of
//! the metrics Service at once (the outage's own metrics with them), stall a rolling update
//! (a new pod that never becomes ready; the fix for the outage may be in it), and make the
//! PodDisruptionBudget block node drains, while the operator serves no traffic a Service
//! could route elsewhere. Liveness ignores it too: a restart does not unwedge Atlas, and
//! reconciles already give up after `--reconcile-timeout`. Alert on
//! `atlas_access_dependency_up == 0` instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::atlas::DependencyHealth;

/// Shared by the HTTP handlers and the controller that flips readiness.
#[derive(Clone)]
pub struct HttpState {
    pub registry: Arc<Registry>,
    pub ready: Arc<AtomicBool>,
    /// What `/readyz` reports about Atlas and the token endpoint (never its status code).
    pub dependencies: DependencyHealth,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let (status, first) = if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: waiting for CRDs and caches")
    };
    let mut body = first.to_string();
    for report in state.dependencies.reports() {
        body.push('\n');
        body.push_str(&report.to_string());
    }
    body.push('\n');
    (status, body)
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::metrics::encode(&state.registry),
    )
}

/// The router, for serving and for tests.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Bind and serve until `shutdown` resolves. Returns the bound address through `on_bound`.
pub async fn serve(
    bind: SocketAddr,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let handle =
        tokio::spawn(async move { axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await });
    Ok((addr, handle))
}
