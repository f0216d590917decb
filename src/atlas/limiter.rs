//! Per-organization pacing fed by Atlas's `RateLimit-Limit` / `RateLimit-Remaining`.
//!
//! Keys are chosen by the client: an organization and an operation group
//! ([`Operation::rate_limit_group`](super::Operation::rate_limit_group)), since Atlas meters
//! endpoint sets per organization. Each key gets a local token bucket that mirrors Atlas's:
//! its capacity is the reported limit, it refills over `window`, and every answer resets the
//! local count to what Atlas reports (minus the requests still in flight). Requests pass at
//! once while the bucket holds more than a small reserve; below it they are spaced at the
//! refill rate, so a burst slows down before Atlas answers 429. A 429 (or 503) with
//! `Retry-After` holds the key for exactly that long; the bucket keeps the count the refusal
//! reported (it is not drained), and when the hold ends one request goes at once, whatever
//! the reserve: Atlas said it would take it then, and its answer re-synchronises the count.
//! (governor's GCRA cannot take a count from the server, so the bucket is kept here.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// What Atlas last reported for one key (organization and operation group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitSnapshot {
    pub limit: u32,
    pub remaining: u32,
}

#[derive(Debug)]
struct Bucket {
    /// 0 until Atlas reports a limit: no pacing without information.
    capacity: f64,
    tokens: f64,
    updated: Instant,
    in_flight: u32,
    held_until: Option<Instant>,
    /// A hold ended: the next request goes without waiting for the reserve.
    probe: bool,
    reported: Option<RateLimitSnapshot>,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self { capacity: 0.0, tokens: 0.0, updated: now, in_flight: 0, held_until: None, probe: false, reported: None }
    }

    fn refill(&mut self, now: Instant, window: Duration) {
        if self.capacity > 0.0 {
            let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.capacity / window.as_secs_f64()).min(self.capacity);
        }
        self.updated = now;
    }
}

struct Inner {
    enabled: bool,
    window: Duration,
    reserve_fraction: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Per-organization rate limiter, shared by clones (and by every client given a clone, so
/// several credentials working on one organization pace together).
#[derive(Clone)]
pub struct OrgRateLimiter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OrgRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgRateLimiter")
            .field("enabled", &self.inner.enabled)
            .field("window", &self.inner.window)
            .finish()
    }
}

impl Default for OrgRateLimiter {
    /// Atlas states its limits per minute.
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

/// A request's place in its key's in-flight count; dropping it ends the request.
#[must_use]
pub struct OrgPermit {
    limiter: OrgRateLimiter,
    key: String,
}

impl Drop for OrgPermit {
    fn drop(&mut self) {
        if let Some(bucket) = self.limiter.inner.buckets.lock().expect("limiter lock").get_mut(&self.key) {
            bucket.in_flight = bucket.in_flight.saturating_sub(1);
        }
    }
}

impl OrgRateLimiter {
    /// A limiter that assumes a reported limit refills over `window`.
    pub fn new(window: Duration) -> Self {
        Self::build(true, window)
    }

    /// A limiter that never waits (it still records what Atlas reports).
    pub fn disabled() -> Self {
        Self::build(false, Duration::from_secs(60))
    }

    fn build(enabled: bool, window: Duration) -> Self {
        let window = window.max(Duration::from_millis(1));
        Self { inner: Arc::new(Inner { enabled, window, reserve_fraction: 0.1, buckets: Mutex::new(HashMap::new()) }) }
    }

    /// Wait until a request under `key` may go; returns its permit and how long it waited
    /// (zero when it went at once: only a request that slept counts as delayed).
    pub async fn acquire(&self, key: &str) -> (OrgPermit, Duration) {
        let started = Instant::now();
        let mut slept = false;
        loop {
            let wait = {
                let mut buckets = self.inner.buckets.lock().expect("limiter lock");
                let now = Instant::now();
                let bucket = buckets.entry(key.to_string()).or_insert_with(|| Bucket::new(now));
                bucket.refill(now, self.inner.window);
                self.wait_needed(bucket, now).unwrap_or_else(|| {
                    if bucket.capacity > 0.0 {
                        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
                    }
                    bucket.in_flight += 1;
                    Duration::ZERO
                })
            };
            if wait.is_zero() {
                let waited = if slept { started.elapsed() } else { Duration::ZERO };
                return (OrgPermit { limiter: self.clone(), key: key.to_string() }, waited);
            }
            tokio::time::sleep(wait).await;
            slept = true;
        }
    }

    fn wait_needed(&self, bucket: &mut Bucket, now: Instant) -> Option<Duration> {
        if !self.inner.enabled {
            return None;
        }
        if let Some(until) = bucket.held_until {
            if until > now {
                return Some(until - now);
            }
            bucket.held_until = None;
        }
        if std::mem::take(&mut bucket.probe) || bucket.capacity <= 0.0 {
            return None;
        }
        let reserve = (bucket.capacity * self.inner.reserve_fraction).max(1.0).min(bucket.capacity - 1.0).max(0.0);
        let missing = reserve + 1.0 - bucket.tokens;
        if missing <= 0.0 {
            return None;
        }
        let per_token = self.inner.window.as_secs_f64() / bucket.capacity;
        Some(Duration::from_secs_f64(missing * per_token).max(Duration::from_millis(1)))
    }

    /// Take the `RateLimit-*` headers of an answer to a request under `key` (the answering
    /// request still holds its permit).
    pub fn observe(&self, key: &str, limit: Option<u32>, remaining: Option<u32>) {
        let (Some(limit), Some(remaining)) = (limit, remaining) else { return };
        let mut buckets = self.inner.buckets.lock().expect("limiter lock");
        let now = Instant::now();
        let bucket = buckets.entry(key.to_string()).or_insert_with(|| Bucket::new(now));
        bucket.refill(now, self.inner.window);
        bucket.capacity = f64::from(limit.max(1));
        let others_in_flight = f64::from(bucket.in_flight.saturating_sub(1));
        bucket.tokens = (f64::from(remaining.min(limit)) - others_in_flight).max(0.0);
        bucket.reported = Some(RateLimitSnapshot { limit, remaining });
    }

    /// Atlas answered 429 (or 503) with `Retry-After`: nothing under `key` is sent before
    /// `retry_after` has passed, then one request goes at once. `synced` says the refusal
    /// carried `RateLimit-*` headers ([`Self::observe`] took them); without them the local
    /// count is set to empty.
    pub fn hold(&self, key: &str, retry_after: Duration, synced: bool) {
        let mut buckets = self.inner.buckets.lock().expect("limiter lock");
        let now = Instant::now();
        let bucket = buckets.entry(key.to_string()).or_insert_with(|| Bucket::new(now));
        bucket.refill(now, self.inner.window);
        if !synced {
            bucket.tokens = 0.0;
        }
        if self.inner.enabled {
            let until = now + retry_after;
            bucket.held_until = Some(bucket.held_until.map_or(until, |held| held.max(until)));
            bucket.probe = true;
        }
    }

    /// What Atlas last reported for `key`.
    pub fn snapshot(&self, key: &str) -> Option<RateLimitSnapshot> {
        self.inner.buckets.lock().expect("limiter lock").get(key).and_then(|b| b.reported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "5f1b2c3d4e5f60718293a4b5";

    #[tokio::test(start_paused = true)]
    async fn unknown_limits_do_not_wait() {
        let limiter = OrgRateLimiter::new(Duration::from_secs(60));
        for _ in 0..100 {
            let (_permit, waited) = limiter.acquire(ORG).await;
            assert_eq!(waited, Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paces_at_the_refill_rate_below_the_reserve() {
        // 10 a second: capacity 10 over a 1 s window, reserve 1.
        let limiter = OrgRateLimiter::new(Duration::from_secs(1));
        {
            let (_p, _) = limiter.acquire(ORG).await;
            limiter.observe(ORG, Some(10), Some(9));
        }
        let start = Instant::now();
        // 8 more pass at once (9 left, 1 kept in reserve) ...
        for _ in 0..8 {
            let (_p, waited) = limiter.acquire(ORG).await;
            assert_eq!(waited, Duration::ZERO);
        }
        // ... then one every 100 ms.
        for i in 1..=5u32 {
            let (_p, waited) = limiter.acquire(ORG).await;
            assert!(waited > Duration::ZERO);
            let elapsed = start.elapsed();
            assert!(elapsed >= Duration::from_millis(100) * i - Duration::from_millis(2), "{i}: {elapsed:?}");
            assert!(elapsed <= Duration::from_millis(100) * i + Duration::from_millis(5), "{i}: {elapsed:?}");
        }
        assert_eq!(limiter.snapshot(ORG), Some(RateLimitSnapshot { limit: 10, remaining: 9 }));
    }

    #[tokio::test(start_paused = true)]
    async fn atlas_count_overrides_the_local_one() {
        let limiter = OrgRateLimiter::new(Duration::from_secs(60));
        let (p, _) = limiter.acquire(ORG).await;
        // Another client drained the bucket: only the reserve is left.
        limiter.observe(ORG, Some(100), Some(1));
        drop(p);
        let (_p, waited) = limiter.acquire(ORG).await;
        // One token short of reserve (10) + 1: 10 tokens at 0.6 s each.
        assert!(waited >= Duration::from_secs(6) && waited < Duration::from_millis(6100), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_count_against_the_report() {
        let limiter = OrgRateLimiter::new(Duration::from_secs(60));
        let (first, _) = limiter.acquire(ORG).await;
        let (_second, _) = limiter.acquire(ORG).await;
        let (_third, _) = limiter.acquire(ORG).await;
        // `first` answers: 12 left, but two requests are still on their way.
        limiter.observe(ORG, Some(20), Some(12));
        drop(first);
        // reserve 2: 10 - 2 = 8 pass without waiting.
        let mut permits = Vec::new();
        for _ in 0..8 {
            let (p, waited) = limiter.acquire(ORG).await;
            assert_eq!(waited, Duration::ZERO);
            permits.push(p);
        }
        let (_p, waited) = limiter.acquire(ORG).await;
        assert!(waited > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_holds_the_org() {
        let limiter = OrgRateLimiter::new(Duration::from_secs(60));
        limiter.hold(ORG, Duration::from_secs(3), false);
        let (_p, waited) = limiter.acquire(ORG).await;
        assert!(waited >= Duration::from_secs(3), "{waited:?}");
        let (_p, waited) = limiter.acquire("6a1b2c3d4e5f60718293a4b6").await;
        assert_eq!(waited, Duration::ZERO, "other organizations are not held");
    }

    /// A 429 after a burst that emptied the bucket: the next request goes at `Retry-After`,
    /// not after the reserve refilled too; the ones after it are paced from Atlas's count.
    #[tokio::test(start_paused = true)]
    async fn after_a_hold_one_request_goes_at_retry_after() {
        let limiter = OrgRateLimiter::new(Duration::from_secs(60));
        let (p, _) = limiter.acquire(ORG).await;
        // The 429 reports an empty bucket of 100 (0.6 s a token, reserve 10).
        limiter.observe(ORG, Some(100), Some(0));
        limiter.hold(ORG, Duration::from_secs(1), true);
        drop(p);
        let (p, waited) = limiter.acquire(ORG).await;
        assert!(waited >= Duration::from_secs(1) && waited < Duration::from_millis(1010), "{waited:?}");
        // Its answer: Atlas refilled one token during the second and this request took it.
        limiter.observe(ORG, Some(100), Some(1));
        drop(p);
        let (_p, waited) = limiter.acquire(ORG).await;
        // 1 token of the reserve + 1 left to refill: 10 tokens at 0.6 s.
        assert!(waited >= Duration::from_secs(6) && waited < Duration::from_millis(6100), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_never_waits_but_records() {
        let limiter = OrgRateLimiter::disabled();
        limiter.hold(ORG, Duration::from_secs(3), false);
        limiter.observe(ORG, Some(1), Some(0));
        let (_p, waited) = limiter.acquire(ORG).await;
        assert_eq!(waited, Duration::ZERO);
        assert_eq!(limiter.snapshot(ORG), Some(RateLimitSnapshot { limit: 1, remaining: 0 }));
    }
}
