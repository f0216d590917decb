//! Retry policy: jittered exponential backoff (backon) for transient failures, Atlas's own
//! `Retry-After` for rate limits, bounded in attempts and in total time.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use super::error::ErrorClass;

/// How the client retries a call.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (1 = never retry).
    pub max_attempts: u32,
    /// First backoff delay; each next one is `factor` times longer, up to `max_delay`.
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub factor: f32,
    /// Add up to 100% random jitter to each backoff delay (so many clients do not retry in step).
    pub jitter: bool,
    /// No retry starts after this much time since the call began (waits included).
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            factor: 2.0,
            jitter: true,
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Never retry: every failure goes straight to the caller.
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// The backoff delays of one call (an endless iterator capped at `max_delay`; the
    /// attempt and time bounds are applied by [`RetryPolicy::next_wait`]).
    pub fn backoff(&self) -> ExponentialBackoff {
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        builder.build()
    }

    /// How long to wait before attempt `attempt + 1`, after attempt `attempt` failed with an
    /// error of class `class` (Atlas asking for `retry_after`) and `elapsed` has passed since
    /// the call began; `None` means give up and return the error.
    #[allow(clippy::too_many_arguments)]
    pub fn next_wait(
        &self,
        class: ErrorClass,
        retry_after: Option<Duration>,
        error_code: Option<&str>,
        attempt: u32,
        elapsed: Duration,
        backoff: &mut ExponentialBackoff,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let wait = match (class, retry_after) {
            // A refused invitation goes back to the head of the invitation queue, which
            // pauses (for Atlas's `Retry-After`, if any): the retry waits there, not here.
            _ if error_code == Some(super::models::codes::INVITATIONS_RATE_LIMITED_IP) => Duration::ZERO,
            (ErrorClass::RateLimited, Some(after)) => after,
            (ErrorClass::RateLimited | ErrorClass::Transient, _) => backoff.next()?,
            _ => return None,
        };
        (elapsed + wait <= self.max_elapsed).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_jitter_bounds_and_caps() {
        let policy = RetryPolicy { max_attempts: 100, max_elapsed: Duration::from_secs(3600), ..Default::default() };
        let mut backoff = policy.backoff();
        let mut base = policy.min_delay;
        for attempt in 1..20 {
            let wait =
                policy.next_wait(ErrorClass::Transient, None, None, attempt, Duration::ZERO, &mut backoff).unwrap();
            // backon's jitter adds 0..100% of the current delay.
            assert!(wait >= base && wait < base * 2, "attempt {attempt}: {wait:?} not in [{base:?}, {:?})", base * 2);
            base = (base * 2).min(policy.max_delay);
        }
    }

    #[test]
    fn bounded_in_attempts_and_time() {
        let policy = RetryPolicy::default();
        let mut backoff = policy.backoff();
        assert!(policy.next_wait(ErrorClass::Transient, None, None, 5, Duration::ZERO, &mut backoff).is_some());
        assert!(policy.next_wait(ErrorClass::Transient, None, None, 6, Duration::ZERO, &mut backoff).is_none());
        let mut fresh = policy.backoff();
        // The first delay is at least 250 ms: past the 60 s budget.
        assert!(
            policy.next_wait(ErrorClass::Transient, None, None, 1, Duration::from_millis(59_800), &mut fresh).is_none()
        );
        assert!(
            RetryPolicy::none().next_wait(ErrorClass::Transient, None, None, 1, Duration::ZERO, &mut backoff).is_none()
        );
    }

    #[test]
    fn only_transient_and_rate_limited_are_retried() {
        let policy = RetryPolicy::default();
        let mut backoff = policy.backoff();
        for class in [ErrorClass::Conflict, ErrorClass::NotFound, ErrorClass::Permanent, ErrorClass::Auth] {
            assert!(policy.next_wait(class, None, None, 1, Duration::ZERO, &mut backoff).is_none(), "{class:?}");
        }
    }

    #[test]
    fn rate_limits_wait_what_atlas_asks() {
        let policy = RetryPolicy::default();
        let mut backoff = policy.backoff();
        let limited = ErrorClass::RateLimited;
        let seven = Some(Duration::from_secs(7));
        assert_eq!(policy.next_wait(limited, seven, None, 1, Duration::ZERO, &mut backoff), seven);
        assert_eq!(
            policy.next_wait(limited, None, Some("INVITATIONS_RATE_LIMITED_IP"), 1, Duration::ZERO, &mut backoff),
            Some(Duration::ZERO),
            "the invitation queue waits"
        );
        // A wait past the time budget is the caller's to make (requeue), not the client's.
        assert_eq!(
            policy.next_wait(limited, Some(Duration::from_secs(120)), None, 1, Duration::ZERO, &mut backoff),
            None
        );
    }
}
