//! The simulator's clock: real time from a chosen start, plus whatever tests add with
//! [`SimClock::advance`]. Invitation expiry and token lifetimes are measured on it.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use parking_lot::Mutex;

#[derive(Debug)]
pub(crate) struct SimClock {
    start: Timestamp,
    started: Instant,
    advanced: Mutex<SignedDuration>,
}

impl SimClock {
    pub fn new(start: Option<Timestamp>) -> Self {
        Self {
            start: start.unwrap_or_else(Timestamp::now),
            started: Instant::now(),
            advanced: Mutex::new(SignedDuration::ZERO),
        }
    }

    pub fn now(&self) -> Timestamp {
        let elapsed = SignedDuration::try_from(self.started.elapsed()).unwrap_or(SignedDuration::MAX);
        let advanced = *self.advanced.lock();
        self.start.checked_add(elapsed.saturating_add(advanced)).unwrap_or(Timestamp::MAX)
    }

    pub fn advance(&self, by: Duration) {
        let by = SignedDuration::try_from(by).unwrap_or(SignedDuration::MAX);
        let mut advanced = self.advanced.lock();
        *advanced = advanced.saturating_add(by);
    }
}

/// Atlas's timestamp format: ISO 8601, UTC, whole seconds.
pub(crate) fn atlas_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_now_forward_and_formats_in_whole_seconds() {
        let start: Timestamp = "2025-03-01T10:00:00.123Z".parse().unwrap();
        let clock = SimClock::new(Some(start));
        clock.advance(Duration::from_secs(86_400));
        let now = clock.now();
        assert!(now >= "2025-03-02T10:00:00Z".parse().unwrap());
        assert!(now < "2025-03-02T10:01:00Z".parse().unwrap());
        assert_eq!(atlas_time(start), "2025-03-01T10:00:00Z");
    }
}
