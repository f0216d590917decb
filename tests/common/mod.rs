//! Helpers shared by the integration tests.

#![allow(dead_code)] // Each test binary uses its own subset.

pub mod atlas;
pub mod cluster;
pub mod kube_mock;
pub mod manifests;
pub mod operator;
pub mod sim;
pub mod tools;

use std::sync::Once;

/// Installs ring as rustls's crypto provider, once per test binary; reqwest (built with
/// `rustls-no-provider`) panics on `Client::builder().build()` without it.
pub fn init_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
