//! atlas-access-operator: MongoDB Atlas organization membership, declared as Kubernetes objects.
//!
//! Data flows one way: watch -> observe -> plan -> execute -> status. Each concern has one
//! home: [`api`] (CRD types and manifest validation) and [`cli`] (the binary's subcommands).

pub mod api;
pub mod atlas;
pub mod cli;
pub mod controller;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod reconcile;
pub mod sim;
pub mod telemetry;
