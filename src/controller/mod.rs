//! The operator's Kubernetes side: watches, reconcile loop, finalizers, status, events, leases.
pub mod rbac;
