//! The accept loop. Each connection is served by hyper directly (rather than `axum::serve`) so
//! that a fault can close one connection without answering.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

use super::SimState;
use super::api::{self, ConnInfo};
use super::control;

pub(crate) fn router(state: SimState) -> Router {
    Router::new().nest("/__sim", control::router()).fallback(api::handle).with_state(state)
}

pub(crate) async fn serve(listener: TcpListener, router: Router, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of file descriptors or similar: give the system a moment.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let kill = Arc::new(Notify::new());
        let info = ConnInfo { peer, kill: kill.clone() };
        let router = router.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(info.clone());
                router.clone().oneshot(req.map(Body::new))
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            // Dropping the connection future closes the socket.
            tokio::select! {
                _ = connection => {}
                _ = kill.notified() => {}
                _ = stop.changed() => {}
            }
        });
    }
}
