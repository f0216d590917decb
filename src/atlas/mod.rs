//! The Atlas Admin API: wire models and the client the operator talks to Atlas through.
//!
//! [`AtlasClient`] authenticates (API key digest or service account token), names each
//! operation's versioned media type, paces requests per organization from Atlas's
//! `RateLimit-*` headers, retries what is safe to retry, and maps failures to typed
//! [`AtlasError`]s whose [`ErrorClass`] callers decide on.

pub mod auth;
pub mod client;
mod credential;
pub mod dependency;
pub mod endpoint;
pub mod error;
pub mod invitations;
pub mod limiter;
pub mod metrics;
pub mod models;
pub mod retry;
mod slots;

pub use client::{
    ATLAS_BASE_URL, ATLAS_GOV_BASE_URL, AtlasClient, ClientConfig, CreateOutcome, CredentialIdentity, Credentials,
    ListOrgUsersQuery,
};
pub use dependency::{Dependency, DependencyHealth};
pub use endpoint::Operation;
pub use error::{AtlasError, ErrorClass, TransportKind};
pub use invitations::{InvitationQueue, QueuePlace, QueueSnapshot};
pub use limiter::{OrgRateLimiter, RateLimitSnapshot};
pub use metrics::AtlasMetrics;
pub use retry::RetryPolicy;
