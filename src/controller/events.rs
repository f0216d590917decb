//! Events through kube's `Recorder`, with its memory bounded at idle.
//!
//! kube's recorder keeps every event it sent (to turn a repeat into a series) and drops the
//! expired ones only inside `publish()`: after a burst (a cold start of thousands of
//! objects), the entries stay for as long as nothing else is published. The cache's entries
//! expire six minutes after their last occurrence, so once nothing was published for longer
//! than that, every entry has expired: the recorder is then replaced by an empty one, which
//! changes nothing a later publish would do (it would have pruned them all).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Recorder, Reporter};

/// kube-runtime's event cache TTL (`events.rs`, `CACHE_TTL`), and a margin for the clocks.
pub const RECORDER_CACHE_TTL: Duration = Duration::from_secs(6 * 60);
const MARGIN: Duration = Duration::from_secs(60);

/// How often [`EventRecorder::prune_idle`] is called by `run`.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

struct State {
    recorder: Recorder,
    last_publish: Option<Instant>,
}

/// The controller's one recorder (one per process, so repeats aggregate into series).
pub struct EventRecorder {
    kube: Client,
    reporter: Reporter,
    state: Mutex<State>,
}

/// Whether every entry of a recorder last used at `last_publish` has expired by `now`.
pub fn all_expired(last_publish: Option<Instant>, now: Instant) -> bool {
    last_publish.is_some_and(|at| now.saturating_duration_since(at) > RECORDER_CACHE_TTL + MARGIN)
}

impl EventRecorder {
    pub fn new(kube: Client, reporter: Reporter) -> Self {
        let recorder = Recorder::new(kube.clone(), reporter.clone());
        Self { kube, reporter, state: Mutex::new(State { recorder, last_publish: None }) }
    }

    pub async fn publish(&self, event: &Event, reference: &ObjectReference) -> kube::Result<()> {
        let recorder = {
            let mut state = self.state.lock().expect("recorder lock");
            state.last_publish = Some(Instant::now());
            state.recorder.clone()
        };
        recorder.publish(event, reference).await
    }

    /// Replace the recorder by an empty one when every entry of its cache has expired.
    /// Returns whether it did.
    pub fn prune_idle(&self, now: Instant) -> bool {
        let mut state = self.state.lock().expect("recorder lock");
        if !all_expired(state.last_publish, now) {
            return false;
        }
        state.recorder = Recorder::new(self.kube.clone(), self.reporter.clone());
        state.last_publish = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_dropped_only_when_every_entry_has_expired() {
        let now = Instant::now();
        let ago = |s: u64| now.checked_sub(Duration::from_secs(s));
        let cases = [
            (None, false),
            (ago(0), false),
            (ago(6 * 60), false),
            (ago(7 * 60 - 1), false),
            (ago(7 * 60 + 1), true),
            (ago(3600), true),
        ];
        for (last, expected) in cases {
            assert_eq!(all_expired(last, now), expected, "{last:?}");
        }
    }
}
