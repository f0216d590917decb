//! Whether the operator's two dependencies answer: the Atlas Admin API and the service-account
//! token endpoint. Every exchange is one of two things: answered (any HTTP status: a 401 or a
//! 500 is an answer, counted by `atlas_access_api_calls_total`) or unanswered (no connection,
//! no answer in time, a connection broken mid-answer). A dependency with [`WEDGED_AFTER`]
//! unanswered exchanges in a row and no answer since is wedged: the gauges
//! `atlas_access_dependency_up` (0), `atlas_access_dependency_unanswered_exchanges` and
//! `atlas_access_dependency_last_answer_timestamp_seconds` say so, and so does the body of
//! `/readyz` (which stays 200: see [`crate::http`]). One answer clears it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// Unanswered exchanges in a row (with no answer since) that make a dependency wedged: one
/// timeout is a slow answer, three in a row with nothing in between is a dependency that
/// does not answer.
pub const WEDGED_AFTER: u64 = 3;

/// What the operator calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dependency {
    /// The Atlas Admin API.
    Atlas,
    /// The OAuth token endpoint (service-account credentials only).
    TokenEndpoint,
}

impl Dependency {
    pub const ALL: [Dependency; 2] = [Dependency::Atlas, Dependency::TokenEndpoint];

    /// The `dependency` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Atlas => "atlas",
            Dependency::TokenEndpoint => "token_endpoint",
        }
    }

    fn index(self) -> usize {
        match self {
            Dependency::Atlas => 0,
            Dependency::TokenEndpoint => 1,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabels {
    pub dependency: &'static str,
}

#[derive(Clone, Debug, Default)]
struct State {
    last_answer: Option<(Instant, Timestamp)>,
    unanswered: u64,
    /// Why the last unanswered exchange got no answer (never a credential: transport
    /// errors name the operation and the failure only).
    last_error: Option<String>,
}

/// How a dependency is doing, for `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// No exchange yet.
    Unused,
    /// The last exchange was answered, or fewer than [`WEDGED_AFTER`] in a row were not.
    Answering,
    /// [`WEDGED_AFTER`] or more exchanges in a row without an answer.
    Wedged,
}

/// One dependency's line of `/readyz`.
#[derive(Clone, Debug)]
pub struct DependencyReport {
    pub dependency: Dependency,
    pub condition: Condition,
    /// Unanswered exchanges since the last answer.
    pub unanswered: u64,
    /// How long ago the last answer came.
    pub last_answer_age: Option<Duration>,
    pub last_error: Option<String>,
}

impl std::fmt::Display for DependencyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.dependency.as_str();
        let since = match self.last_answer_age {
            Some(age) => format!("the last answer {}s ago", age.as_secs()),
            None => "start-up (no answer yet)".to_string(),
        };
        let why = self.last_error.as_deref().map(|e| format!("; last: {e}")).unwrap_or_default();
        match self.condition {
            Condition::Unused => write!(f, "{name}: not called yet"),
            Condition::Wedged => {
                write!(f, "{name}: wedged: {} exchanges without an answer since {since}{why}", self.unanswered)
            }
            Condition::Answering if self.unanswered > 0 => {
                write!(f, "{name}: answering ({} unanswered since {since}{why})", self.unanswered)
            }
            Condition::Answering => write!(f, "{name}: answering ({since})"),
        }
    }
}

/// The dependencies' state, shared by every client given the same [`super::AtlasMetrics`].
#[derive(Clone, Debug, Default)]
pub struct DependencyHealth {
    states: Arc<Mutex<[State; 2]>>,
    up: Family<DependencyLabels, Gauge>,
    unanswered: Family<DependencyLabels, Gauge>,
    last_answer: Family<DependencyLabels, Gauge>,
}

impl DependencyHealth {
    pub(crate) fn register(&self, registry: &mut Registry) {
        for dependency in Dependency::ALL {
            let labels = DependencyLabels { dependency: dependency.as_str() };
            let wedged = self.report(dependency).condition == Condition::Wedged;
            self.up.get_or_create(&labels).set(if wedged { 0 } else { 1 });
            let _ = self.unanswered.get_or_create(&labels);
            let _ = self.last_answer.get_or_create(&labels);
        }
        registry.register(
            "atlas_access_dependency_up",
            "0 while a dependency (atlas, token_endpoint) is wedged: several exchanges in a row without an answer",
            self.up.clone(),
        );
        registry.register(
            "atlas_access_dependency_unanswered_exchanges",
            "Exchanges without an answer (timeout, no connection) since the dependency last answered",
            self.unanswered.clone(),
        );
        registry.register(
            "atlas_access_dependency_last_answer_timestamp_seconds",
            "Unix time of the dependency's last answer (0: none yet)",
            self.last_answer.clone(),
        );
    }

    /// `dependency` answered (whatever the status).
    pub(crate) fn answered(&self, dependency: Dependency) {
        let now = Timestamp::now();
        let mut states = self.states.lock().expect("dependency lock");
        let state = &mut states[dependency.index()];
        state.last_answer = Some((Instant::now(), now));
        state.unanswered = 0;
        let labels = DependencyLabels { dependency: dependency.as_str() };
        self.up.get_or_create(&labels).set(1);
        self.unanswered.get_or_create(&labels).set(0);
        self.last_answer.get_or_create(&labels).set(now.as_second());
    }

    /// An exchange with `dependency` got no answer (`why`: the transport error).
    pub(crate) fn unanswered(&self, dependency: Dependency, why: String) {
        let mut states = self.states.lock().expect("dependency lock");
        let state = &mut states[dependency.index()];
        state.unanswered += 1;
        state.last_error = Some(why);
        let labels = DependencyLabels { dependency: dependency.as_str() };
        self.unanswered.get_or_create(&labels).set(state.unanswered as i64);
        if state.unanswered >= WEDGED_AFTER {
            self.up.get_or_create(&labels).set(0);
        }
    }

    /// How `dependency` is doing.
    pub fn report(&self, dependency: Dependency) -> DependencyReport {
        let states = self.states.lock().expect("dependency lock");
        let state = &states[dependency.index()];
        let condition = if state.unanswered >= WEDGED_AFTER {
            Condition::Wedged
        } else if state.last_answer.is_none() && state.unanswered == 0 {
            Condition::Unused
        } else {
            Condition::Answering
        };
        DependencyReport {
            dependency,
            condition,
            unanswered: state.unanswered,
            last_answer_age: state.last_answer.map(|(at, _)| at.elapsed()),
            last_error: if state.unanswered > 0 { state.last_error.clone() } else { None },
        }
    }

    /// Every dependency, in [`Dependency::ALL`] order.
    pub fn reports(&self) -> Vec<DependencyReport> {
        Dependency::ALL.into_iter().map(|d| self.report(d)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(health: &DependencyHealth) -> String {
        let mut registry = Registry::default();
        health.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn wedged_after_unanswered_exchanges_in_a_row_until_one_answer() {
        let health = DependencyHealth::default();
        assert_eq!(health.report(Dependency::Atlas).condition, Condition::Unused);
        assert!(encoded(&health).contains(r#"atlas_access_dependency_up{dependency="atlas"} 1"#));
        health.answered(Dependency::TokenEndpoint);
        for n in 1..WEDGED_AFTER {
            health.unanswered(Dependency::TokenEndpoint, format!("oauthToken: timeout {n}"));
            assert_eq!(health.report(Dependency::TokenEndpoint).condition, Condition::Answering);
        }
        health.unanswered(Dependency::TokenEndpoint, "oauthToken: no answer in time".into());
        let report = health.report(Dependency::TokenEndpoint);
        assert_eq!(report.condition, Condition::Wedged);
        assert_eq!(report.unanswered, WEDGED_AFTER);
        let line = report.to_string();
        assert!(
            line.starts_with("token_endpoint: wedged: 3 exchanges without an answer since the last answer"),
            "{line}"
        );
        assert!(line.ends_with("last: oauthToken: no answer in time"), "{line}");
        let text = encoded(&health);
        assert!(text.contains(r#"atlas_access_dependency_up{dependency="token_endpoint"} 0"#), "{text}");
        assert!(text.contains(r#"atlas_access_dependency_unanswered_exchanges{dependency="token_endpoint"} 3"#));
        // Atlas itself is not affected.
        assert_eq!(health.report(Dependency::Atlas).condition, Condition::Unused);

        health.answered(Dependency::TokenEndpoint);
        let report = health.report(Dependency::TokenEndpoint);
        assert_eq!((report.condition, report.unanswered, report.last_error), (Condition::Answering, 0, None));
        assert!(encoded(&health).contains(r#"atlas_access_dependency_up{dependency="token_endpoint"} 1"#));
    }

    #[test]
    fn never_answered_says_so() {
        let health = DependencyHealth::default();
        for _ in 0..WEDGED_AFTER {
            health.unanswered(Dependency::Atlas, "listOrgUsers: cannot connect".into());
        }
        let line = health.report(Dependency::Atlas).to_string();
        assert!(line.contains("since start-up (no answer yet)"), "{line}");
    }
}
