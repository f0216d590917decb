//! The Atlas Admin API: wire models (and, beside them, the client).

pub mod models;
