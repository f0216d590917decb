//! Prometheus metrics of the controller (reconciles, durations, objects by Ready state),
//! kept in one registry that the Atlas client's metrics join, served on `/metrics`.

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
        metrics
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
}
