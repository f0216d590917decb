//! Prometheus metrics of the controller (reconciles, durations, objects by Ready state, drift
//! corrections, leadership, build), kept in one registry that the Atlas client's metrics join,
//! served on `/metrics`. Everything is named `atlas_access_...`; every counter exists at 0
//! from start-up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindOutcomeLabels {
    pub kind: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub kind: String,
    pub ready: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

/// The kinds the controller reconciles (label `kind`).
pub const KINDS: [&str; 2] = ["AtlasOrgUser", "AtlasTeamMembership"];
/// Values of the `outcome` label of `atlas_access_reconciles_total`.
pub const RECONCILE_OUTCOMES: [&str; 4] = ["success", "rate_limited", "transient_error", "permanent_error"];

fn duration_histogram() -> Histogram {
    // 5 ms .. ~80 s: a reconcile is a few Atlas calls, or a long wait on rate limits.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

type ObjectKey = (String, String, String); // (kind, namespace, name)

/// The controller's metrics.
#[derive(Clone)]
pub struct ControllerMetrics {
    pub reconciles: Family<KindOutcomeLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    pub objects: Family<ReadyLabels, Gauge>,
    pub status_writes: Family<KindLabels, Counter>,
    /// Writes that reverted a change made in Atlas outside the operator, by kind.
    pub drift_corrections: Family<KindLabels, Counter>,
    /// Reconciles running now, by kind.
    pub in_flight: Family<KindLabels, Gauge>,
    /// 1 while this instance may write to Atlas (the leader, or leader election off), else 0.
    pub leader: Gauge,
    pub build_info: Family<BuildLabels, Gauge>,
    ready_by_object: Arc<Mutex<HashMap<ObjectKey, String>>>,
}

impl ControllerMetrics {
    /// Create the metrics and register them under the `atlas_access` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            objects: Family::default(),
            status_writes: Family::default(),
            drift_corrections: Family::default(),
            in_flight: Family::default(),
            leader: Gauge::default(),
            build_info: Family::default(),
            ready_by_object: Arc::default(),
        };
        registry.register("atlas_access_reconciles", "Reconciles by kind and outcome", metrics.reconciles.clone());
        registry.register(
            "atlas_access_reconcile_duration_seconds",
            "Duration of one reconcile, by kind",
            metrics.reconcile_duration.clone(),
        );
        registry.register("atlas_access_objects", "Objects by kind and Ready condition", metrics.objects.clone());
        registry.register(
            "atlas_access_status_writes",
            "Status patches sent to the API server, by kind",
            metrics.status_writes.clone(),
        );
        registry.register(
            "atlas_access_drift_corrections",
            "Atlas writes that reverted a change made outside the operator, by kind",
            metrics.drift_corrections.clone(),
        );
        registry.register(
            "atlas_access_reconciles_in_flight",
            "Reconciles running now, by kind",
            metrics.in_flight.clone(),
        );
        registry.register(
            "atlas_access_leader",
            "1 while this instance writes to Atlas (it holds the Lease, or leader election is off), else 0",
            metrics.leader.clone(),
        );
        registry.register("atlas_access_build_info", "The operator's version (always 1)", metrics.build_info.clone());
        metrics.build_info.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        for kind in KINDS {
            for outcome in RECONCILE_OUTCOMES {
                let _ =
                    metrics.reconciles.get_or_create(&KindOutcomeLabels { kind: kind.into(), outcome: outcome.into() });
            }
            let _ = metrics.reconcile_duration.get_or_create(&KindLabels { kind: kind.into() });
            let _ = metrics.status_writes.get_or_create(&KindLabels { kind: kind.into() });
            let _ = metrics.drift_corrections.get_or_create(&KindLabels { kind: kind.into() });
            let _ = metrics.in_flight.get_or_create(&KindLabels { kind: kind.into() });
            for ready in ["True", "False", "Unknown"] {
                let _ = metrics.objects.get_or_create(&ReadyLabels { kind: kind.into(), ready: ready.into() });
            }
        }
        metrics
    }

    /// Count one Atlas write that reverted an out-of-band change.
    pub fn drift_corrected(&self, kind: &str) {
        self.drift_corrections.get_or_create(&KindLabels { kind: kind.into() }).inc();
    }

    /// Whether this instance writes to Atlas now.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Count one finished reconcile.
    pub fn observe_reconcile(&self, kind: &str, outcome: &str, took: Duration) {
        self.reconciles.get_or_create(&KindOutcomeLabels { kind: kind.into(), outcome: outcome.into() }).inc();
        self.reconcile_duration.get_or_create(&KindLabels { kind: kind.into() }).observe(took.as_secs_f64());
    }

    /// Record an object's Ready state ("True", "False", "Unknown"); `None` forgets a deleted object.
    pub fn set_ready(&self, kind: &str, namespace: &str, name: &str, ready: Option<&str>) {
        let key = (kind.to_string(), namespace.to_string(), name.to_string());
        let mut map = self.ready_by_object.lock().expect("metrics lock");
        let previous = match ready {
            Some(r) => map.insert(key, r.to_string()),
            None => map.remove(&key),
        };
        if previous.as_deref() == ready {
            return;
        }
        if let Some(p) = previous {
            self.objects.get_or_create(&ReadyLabels { kind: kind.into(), ready: p }).dec();
        }
        if let Some(r) = ready {
            self.objects.get_or_create(&ReadyLabels { kind: kind.into(), ready: r.into() }).inc();
        }
    }
}

/// Render a registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_gauge_moves_with_objects() {
        let mut registry = Registry::default();
        let m = ControllerMetrics::register(&mut registry);
        m.set_ready("AtlasOrgUser", "ns", "a", Some("False"));
        m.set_ready("AtlasOrgUser", "ns", "b", Some("False"));
        m.set_ready("AtlasOrgUser", "ns", "a", Some("True"));
        let text = encode(&registry);
        assert!(text.contains(r#"atlas_access_objects{kind="AtlasOrgUser",ready="True"} 1"#), "{text}");
        assert!(text.contains(r#"atlas_access_objects{kind="AtlasOrgUser",ready="False"} 1"#), "{text}");
        m.set_ready("AtlasOrgUser", "ns", "b", None);
        let text = encode(&registry);
        assert!(text.contains(r#"atlas_access_objects{kind="AtlasOrgUser",ready="False"} 0"#), "{text}");
        m.observe_reconcile("AtlasOrgUser", "success", Duration::from_millis(20));
        let text = encode(&registry);
        assert!(text.contains(r#"atlas_access_reconciles_total{kind="AtlasOrgUser",outcome="success"} 1"#), "{text}");
        assert!(text.contains("atlas_access_reconcile_duration_seconds_bucket"), "{text}");
    }

    #[test]
    fn every_counter_exists_at_zero_from_the_start() {
        let mut registry = Registry::default();
        let m = ControllerMetrics::register(&mut registry);
        let text = encode(&registry);
        for kind in KINDS {
            for outcome in RECONCILE_OUTCOMES {
                let line = format!(r#"atlas_access_reconciles_total{{kind="{kind}",outcome="{outcome}"}} 0"#);
                assert!(text.contains(&line), "{line} missing:\n{text}");
            }
            assert!(text.contains(&format!(r#"atlas_access_drift_corrections_total{{kind="{kind}"}} 0"#)), "{text}");
            assert!(text.contains(&format!(r#"atlas_access_status_writes_total{{kind="{kind}"}} 0"#)), "{text}");
        }
        assert!(text.contains("atlas_access_leader 0"), "{text}");
        let build = format!(r#"atlas_access_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"));
        assert!(text.contains(&build), "{text}");
        m.set_leader(true);
        m.drift_corrected("AtlasOrgUser");
        let text = encode(&registry);
        assert!(text.contains("atlas_access_leader 1"), "{text}");
        assert!(text.contains(r#"atlas_access_drift_corrections_total{kind="AtlasOrgUser"} 1"#), "{text}");
    }
}
