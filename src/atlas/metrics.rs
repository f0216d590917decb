//! Metrics of the Atlas client (prometheus-client). One [`AtlasMetrics`] may be shared by
//! several clients; it works without a registry, and [`AtlasMetrics::register`] exposes it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::dependency::DependencyHealth;
use super::endpoint::Operation;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub operation: &'static str,
    /// `success` or an [`ErrorClass`](super::ErrorClass) name.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub outcome: &'static str,
}

/// Failures the retry policy retries.
const RETRY_CAUSES: [&str; 2] = ["transient", "rate_limited"];

type HistogramFamily = Family<OperationLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms .. ~41 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Counters and histograms of Atlas calls; clones share the same values.
#[derive(Clone, Debug)]
pub struct AtlasMetrics {
    /// Calls (one per client operation, retries included) by final outcome.
    pub calls: Family<OutcomeLabels, Counter>,
    /// Retries by the class of the failure that caused them.
    pub retries: Family<OutcomeLabels, Counter>,
    /// Answers that asked the client to slow down (429, 503 + Retry-After, invitation limit).
    pub rate_limited: Family<OperationLabels, Counter>,
    /// Requests the per-organization limiter delayed before sending.
    pub throttled: Family<OperationLabels, Counter>,
    /// Duration of each HTTP exchange (authentication round trips included).
    pub request_duration: HistogramFamily,
    /// Service account token fetches.
    pub token_fetches: Family<TokenLabels, Counter>,
    /// Exchanges that got no answer in time (`oauthToken`: the token endpoint): a wedged
    /// dependency shows here.
    pub timeouts: Family<OperationLabels, Counter>,
    /// Invitations holding a place in the process's invitation queue.
    pub invitations_queued: prometheus_client::metrics::gauge::Gauge,
    /// Invitations Atlas refused with `INVITATIONS_RATE_LIMITED_IP`.
    pub invitations_refused: Counter,
    /// Whether Atlas and the token endpoint answer (`atlas_access_dependency_*`, `/readyz`).
    pub dependencies: DependencyHealth,
}

impl Default for AtlasMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            retries: Family::default(),
            rate_limited: Family::default(),
            throttled: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            token_fetches: Family::default(),
            timeouts: Family::default(),
            invitations_queued: Default::default(),
            invitations_refused: Counter::default(),
            dependencies: DependencyHealth::default(),
        }
    }
}

impl AtlasMetrics {
    /// Register every metric (prefix `atlas_access_api_`, like everything the operator
    /// exposes) into `registry`, every counter present at 0 for every operation and outcome.
    pub fn register(&self, registry: &mut Registry) {
        self.initialize();
        registry.register("atlas_access_api_calls", "Atlas API calls by operation and outcome", self.calls.clone());
        registry.register(
            "atlas_access_api_retries",
            "Atlas API call retries by operation and cause",
            self.retries.clone(),
        );
        registry.register(
            "atlas_access_api_rate_limited",
            "Atlas answers asking to slow down (429, 503 with Retry-After, invitation limit)",
            self.rate_limited.clone(),
        );
        registry.register(
            "atlas_access_api_throttled",
            "Atlas requests the per-organization limiter delayed before sending them",
            self.throttled.clone(),
        );
        registry.register(
            "atlas_access_api_request_duration_seconds",
            "Duration of Atlas HTTP exchanges",
            self.request_duration.clone(),
        );
        registry.register(
            "atlas_access_api_token_fetches",
            "Service account token fetches by outcome",
            self.token_fetches.clone(),
        );
        registry.register(
            "atlas_access_api_timeouts",
            "Atlas exchanges (oauthToken: token requests) without an answer in time",
            self.timeouts.clone(),
        );
        registry.register(
            "atlas_access_api_invitations_queued",
            "Invitations waiting in the process's invitation queue",
            self.invitations_queued.clone(),
        );
        registry.register(
            "atlas_access_api_invitations_refused",
            "Invitations refused by Atlas's per-IP limit (INVITATIONS_RATE_LIMITED_IP)",
            self.invitations_refused.clone(),
        );
        self.dependencies.register(registry);
    }

    /// Create every counter series at 0, so that alerts see 0 rather than no data.
    fn initialize(&self) {
        for op in Operation::ALL {
            let operation = op.operation_id();
            for outcome in std::iter::once("success").chain(super::error::ErrorClass::ALL.map(|c| c.as_str())) {
                let _ = self.calls.get_or_create(&OutcomeLabels { operation, outcome });
            }
            for outcome in RETRY_CAUSES {
                let _ = self.retries.get_or_create(&OutcomeLabels { operation, outcome });
            }
            let _ = self.rate_limited.get_or_create(&OperationLabels { operation });
            let _ = self.throttled.get_or_create(&OperationLabels { operation });
            let _ = self.timeouts.get_or_create(&OperationLabels { operation });
        }
        let _ = self.timeouts.get_or_create(&OperationLabels { operation: super::error::TOKEN_OPERATION });
        for outcome in ["success", "failure"] {
            let _ = self.token_fetches.get_or_create(&TokenLabels { outcome });
        }
    }

    pub(crate) fn call(&self, operation: &'static str, outcome: &'static str) {
        let _ = self.calls.get_or_create(&OutcomeLabels { operation, outcome }).inc();
    }

    pub(crate) fn retry(&self, operation: &'static str, cause: &'static str) {
        let _ = self.retries.get_or_create(&OutcomeLabels { operation, outcome: cause }).inc();
    }

    pub(crate) fn rate_limited(&self, operation: &'static str) {
        let _ = self.rate_limited.get_or_create(&OperationLabels { operation }).inc();
    }

    pub(crate) fn throttled(&self, operation: &'static str) {
        let _ = self.throttled.get_or_create(&OperationLabels { operation }).inc();
    }

    pub(crate) fn request_duration(&self, operation: &'static str, seconds: f64) {
        self.request_duration.get_or_create(&OperationLabels { operation }).observe(seconds);
    }

    pub(crate) fn timeout(&self, operation: &'static str) {
        self.timeouts.get_or_create(&OperationLabels { operation }).inc();
    }

    /// Exchanges of `operation` (`oauthToken` for the token endpoint) that timed out so far.
    pub fn timeout_count(&self, operation: &'static str) -> u64 {
        self.timeouts.get(&OperationLabels { operation }).map_or(0, |c| c.get())
    }

    pub(crate) fn token_fetch(&self, outcome: &'static str) {
        let _ = self.token_fetches.get_or_create(&TokenLabels { outcome }).inc();
    }

    /// Calls of `operation` that ended in `outcome` so far.
    pub fn call_count(&self, operation: &'static str, outcome: &'static str) -> u64 {
        self.calls.get(&OutcomeLabels { operation, outcome }).map_or(0, |c| c.get())
    }

    /// Retries of `operation` so far, whatever the cause.
    pub fn retry_count(&self, operation: &'static str) -> u64 {
        RETRY_CAUSES
            .into_iter()
            .map(|outcome| self.retries.get(&OutcomeLabels { operation, outcome }).map_or(0, |c| c.get()))
            .sum()
    }

    /// Rate-limit answers to `operation` so far.
    pub fn rate_limited_count(&self, operation: &'static str) -> u64 {
        self.rate_limited.get(&OperationLabels { operation }).map_or(0, |c| c.get())
    }

    /// Requests to `operation` the limiter delayed so far.
    pub fn throttled_count(&self, operation: &'static str) -> u64 {
        self.throttled.get(&OperationLabels { operation }).map_or(0, |c| c.get())
    }

    /// Token fetches that ended in `outcome` (`success` / `failure`).
    pub fn token_fetch_count(&self, outcome: &'static str) -> u64 {
        self.token_fetches.get(&TokenLabels { outcome }).map_or(0, |c| c.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_values_and_encode() {
        let metrics = AtlasMetrics::default();
        let clone = metrics.clone();
        clone.call("getOrg", "success");
        clone.retry("getOrg", "transient");
        clone.request_duration("getOrg", 0.02);
        clone.token_fetch("success");
        assert_eq!(metrics.call_count("getOrg", "success"), 1);
        assert_eq!(metrics.retry_count("getOrg"), 1);
        assert_eq!(metrics.token_fetch_count("success"), 1);

        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"atlas_access_api_calls_total{operation="getOrg",outcome="success"} 1"#), "{text}");
        assert!(text.contains(r#"atlas_access_api_request_duration_seconds_count{operation="getOrg"} 1"#), "{text}");
        // Registered counters exist at 0 before any call.
        assert!(
            text.contains(r#"atlas_access_api_calls_total{operation="createOrgUser",outcome="success"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"atlas_access_api_retries_total{operation="addOrgTeamUser",outcome="transient"} 0"#));
        assert!(text.contains(r#"atlas_access_api_throttled_total{operation="listOrgUsers"} 0"#), "{text}");
        assert!(text.contains(r#"atlas_access_api_token_fetches_total{outcome="failure"} 0"#), "{text}");
        assert!(!text.contains("\natlas_calls"), "{text}");
    }
}
