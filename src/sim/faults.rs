//! Faults on demand: 500s, 503s with `Retry-After`, dropped connections and extra latency,
//! for all operations or per operationId. Decisions come from a seeded generator, so a run
//! with the same requests in the same order sees the same faults.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// What goes wrong, and how often, for one operation (or all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultSpec {
    /// Share of requests answered 500 `UNEXPECTED_ERROR` (0.0 ..= 1.0).
    pub error_rate: f64,
    /// Share answered 503 `SERVICE_UNAVAILABLE` with `Retry-After`.
    pub unavailable_rate: f64,
    /// Share whose connection is closed without an answer.
    pub drop_rate: f64,
    /// Extra latency before every matching request is answered, in milliseconds.
    pub latency_ms: u64,
    /// `Retry-After` of the 503s, in seconds.
    pub retry_after_secs: u64,
    /// Stop injecting after this many faults (500, 503, 429 or drop); `None`: no end.
    pub max_faults: Option<u64>,
    /// Share answered 429 `RATE_LIMITED_TOKEN_BUCKET` with `Retry-After: retry_after_secs`.
    pub rate_limited_rate: f64,
    /// When above `latency_ms`: each request's extra latency is drawn uniformly from
    /// `latency_ms ..= latency_max_ms`.
    pub latency_max_ms: u64,
}

impl FaultSpec {
    /// Every request fails with 500, `n` times.
    pub fn errors(n: u64) -> Self {
        Self { error_rate: 1.0, max_faults: Some(n), ..Self::default() }
    }

    /// Every request gets 503 with `Retry-After: retry_after_secs`, `n` times.
    pub fn unavailable(n: u64, retry_after_secs: u64) -> Self {
        Self { unavailable_rate: 1.0, retry_after_secs, max_faults: Some(n), ..Self::default() }
    }

    /// Every request's connection is dropped, `n` times.
    pub fn drops(n: u64) -> Self {
        Self { drop_rate: 1.0, max_faults: Some(n), ..Self::default() }
    }

    /// Only extra latency.
    pub fn latency(latency: Duration) -> Self {
        Self { latency_ms: latency.as_millis() as u64, ..Self::default() }
    }
}

/// The faults in force. `operations` (by operationId, e.g. `createOrgUser`, or `oauthToken`
/// for the token endpoint) take precedence over `global`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultConfig {
    pub seed: u64,
    pub global: FaultSpec,
    pub operations: BTreeMap<String, FaultSpec>,
}

impl FaultConfig {
    pub fn global(spec: FaultSpec) -> Self {
        Self { global: spec, ..Self::default() }
    }

    pub fn for_operation(operation_id: &str, spec: FaultSpec) -> Self {
        Self { operations: BTreeMap::from([(operation_id.to_string(), spec)]), ..Self::default() }
    }
}

/// The fault chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Error,
    Unavailable { retry_after_secs: u64 },
    Drop,
    RateLimited { retry_after_secs: u64 },
}

#[derive(Debug)]
pub(crate) struct FaultInjector {
    config: FaultConfig,
    rng: StdRng,
    injected: HashMap<String, u64>,
}

impl Default for FaultInjector {
    fn default() -> Self {
        Self::new(FaultConfig::default())
    }
}

impl FaultInjector {
    pub fn new(config: FaultConfig) -> Self {
        Self { rng: StdRng::seed_from_u64(config.seed), config, injected: HashMap::new() }
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// The latency to add and the fault (if any) for one request of `operation_id`.
    pub fn decide(&mut self, operation_id: &str) -> (Duration, Option<Fault>) {
        let (key, spec) = match self.config.operations.get(operation_id) {
            Some(spec) => (operation_id, spec),
            None => ("*", &self.config.global),
        };
        let latency = if spec.latency_max_ms > spec.latency_ms {
            Duration::from_millis(self.rng.random_range(spec.latency_ms..=spec.latency_max_ms))
        } else {
            Duration::from_millis(spec.latency_ms)
        };
        let total = spec.error_rate + spec.unavailable_rate + spec.drop_rate + spec.rate_limited_rate;
        if total <= 0.0 {
            return (latency, None);
        }
        let used = self.injected.get(key).copied().unwrap_or(0);
        if spec.max_faults.is_some_and(|max| used >= max) {
            return (latency, None);
        }
        let draw: f64 = self.rng.random();
        let fault = if draw < spec.error_rate {
            Some(Fault::Error)
        } else if draw < spec.error_rate + spec.unavailable_rate {
            Some(Fault::Unavailable { retry_after_secs: spec.retry_after_secs })
        } else if draw < spec.error_rate + spec.unavailable_rate + spec.drop_rate {
            Some(Fault::Drop)
        } else if draw < total {
            Some(Fault::RateLimited { retry_after_secs: spec.retry_after_secs })
        } else {
            None
        };
        if fault.is_some() {
            *self.injected.entry(key.to_string()).or_default() += 1;
        }
        (latency, fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_faults_and_max_faults_ends_them() {
        let config = FaultConfig::global(FaultSpec { error_rate: 0.3, drop_rate: 0.2, ..FaultSpec::default() });
        let run = |config: &FaultConfig| {
            let mut injector = FaultInjector::new(config.clone());
            (0..200).map(|_| injector.decide("getOrg").1).collect::<Vec<_>>()
        };
        let first = run(&config);
        assert_eq!(first, run(&config));
        let errors = first.iter().filter(|f| **f == Some(Fault::Error)).count();
        assert!((30..90).contains(&errors), "about 30% errors, got {errors}");

        let mut injector = FaultInjector::new(FaultConfig::for_operation("getOrg", FaultSpec::errors(2)));
        let faults: Vec<_> = (0..4).map(|_| injector.decide("getOrg").1).collect();
        assert_eq!(faults, vec![Some(Fault::Error), Some(Fault::Error), None, None]);
        assert_eq!(injector.decide("listOrgTeams").1, None, "other operations are untouched");
    }
}
