//! The operator's Kubernetes side: watches, reconcile loop, finalizers, status, events, leases.
pub mod credentials;
pub mod leader;
pub mod rbac;
pub mod status;
