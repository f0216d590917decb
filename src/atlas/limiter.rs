//! Per-organization pacing fed by Atlas's `RateLimit-Limit` / `RateLimit-Remaining`.
//!
//! Keys are chosen by the client: an organization and an operation group
//! ([`Operation::rate_limit_group`](super::Operation::rate_limit_group)), since Atlas meters
//! endpoint sets per organization. Each key gets a local token bucket that mirrors Atlas's:
//! its capacity is the reported limit, it refills over `window`, and every answer resets the
//! local count to what Atlas reports (minus the requests still in flight). Requests pass at
//! once while the bucket holds more than a reserve; below it they are spaced at the refill
//! rate, so a burst slows down before Atlas answers 429.
//!
//! Nothing is held back while this process is the bucket's only user: the count is then
//! conservative (Atlas reports whole tokens, and takes a request's token when it arrives,
//! the local count as it leaves; requests in flight are taken off), and every token held back
//! is a token a large job never uses (10% of the bucket held back cost 10% of a bucket's worth
//! of time at the end of every job that drains it; one token held back left Atlas's bucket
//! two tokens above empty all through a long job, 30 ms of a 4 s benchmark). When Atlas reports fewer tokens than the local count expected (more than
//! [`SHARED_SLACK`] fewer), or refuses a request the local count had room for, someone else
//! uses the bucket (another tool on the same organization, another replica): for a window
//! from then on the reserve is 10% of the bucket, room for the other user's bursts before
//! Atlas answers 429. A 429 (or 503) with
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
    /// Requests acquired so far (each permit remembers the count at its start).
    acquired: u64,
    /// Requests waiting in `line`.
    waiting: u32,
    /// Waiting requests queue here, in arrival order.
    line: Arc<tokio::sync::Mutex<()>>,
    held_until: Option<Instant>,
    /// Until then, another client is taken to share the bucket: the large reserve applies.
    shared_until: Option<Instant>,
    /// A hold ended: the next request goes without waiting for the reserve.
    probe: bool,
    reported: Option<RateLimitSnapshot>,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self {
            capacity: 0.0,
            tokens: 0.0,
            updated: now,
            in_flight: 0,
            acquired: 0,
            waiting: 0,
            line: Arc::default(),
            held_until: None,
            shared_until: None,
            probe: false,
            reported: None,
        }
    }

    /// Another client used the bucket: the large reserve for `window`.
    fn mark_shared(&mut self, now: Instant, window: Duration) {
        self.shared_until = Some(now + window);
    }

    fn is_shared(&self, now: Instant) -> bool {
        self.shared_until.is_some_and(|until| until > now)
    }

    fn refill(&mut self, now: Instant, window: Duration) {
        if self.capacity > 0.0 {
            let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.capacity / window.as_secs_f64()).min(self.capacity);
        }
        self.updated = now;
    }
}

/// Tokens Atlas may report below the local count before another client is assumed: rounding
/// (Atlas reports whole tokens) and answers overtaking each other.
pub const SHARED_SLACK: f64 = 2.0;

/// The share of the bucket held back while another client uses it.
const SHARED_RESERVE: f64 = 0.1;

struct Inner {
    enabled: bool,
    window: Duration,
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
    /// The key's `acquired` count once this request was counted.
    seq: u64,
    /// Other requests under the key in flight when this one started.
    concurrent: u32,
}

impl Drop for OrgPermit {
    fn drop(&mut self) {
        if let Some(bucket) = self.limiter.inner.buckets.lock().expect("limiter lock").get_mut(&self.key) {
            bucket.in_flight = bucket.in_flight.saturating_sub(1);
        }
    }
}

/// A request in its key's line (also when its wait is cancelled).
struct InLine<'a> {
    limiter: &'a OrgRateLimiter,
    key: &'a str,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        if let Some(bucket) = self.limiter.inner.buckets.lock().expect("limiter lock").get_mut(self.key) {
            bucket.waiting = bucket.waiting.saturating_sub(1);
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
        Self { inner: Arc::new(Inner { enabled, window, buckets: Mutex::new(HashMap::new()) }) }
    }

    /// Wait until a request under `key` may go; returns its permit and how long it waited
    /// (zero when it went at once: only a request that queued counts as delayed). Requests
    /// that must wait go in arrival order: the first in line sleeps until its token is
    /// there, the others queue behind it (tokio's `Mutex` is fair). Without the line, every
    /// waiter slept for the same next token and whichever woke first took it, so a request
    /// could be overtaken again and again, and whatever waited for it (a team waiting for
    /// its members' invitations, a pass waiting for its last object) waited with it.
    pub async fn acquire(&self, key: &str) -> (OrgPermit, Duration) {
        let started = Instant::now();
        let gate = match self.take(key, true) {
            Ok(permit) => return (permit, Duration::ZERO),
            Err((_, gate)) => gate,
        };
        let _in_line = InLine { limiter: self, key };
        let _turn = gate.lock().await;
        loop {
            match self.take(key, false) {
                Ok(permit) => return (permit, started.elapsed()),
                Err((wait, _)) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// The permit if a request under `key` may go now; else how long until it may and the
    /// key's line. `first` (not in line yet): only when nobody waits, and joins the line if
    /// it may not go.
    #[allow(clippy::type_complexity)]
    fn take(&self, key: &str, first: bool) -> Result<OrgPermit, (Duration, Arc<tokio::sync::Mutex<()>>)> {
        let mut buckets = self.inner.buckets.lock().expect("limiter lock");
        let now = Instant::now();
        let bucket = buckets.entry(key.to_string()).or_insert_with(|| Bucket::new(now));
        bucket.refill(now, self.inner.window);
        let wait = if first && bucket.waiting > 0 { Some(Duration::ZERO) } else { self.wait_needed(bucket, now) };
        if let Some(wait) = wait {
            if first {
                bucket.waiting += 1;
            }
            return Err((wait, bucket.line.clone()));
        }
        if bucket.capacity > 0.0 {
            bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        }
        let concurrent = bucket.in_flight;
        bucket.in_flight += 1;
        bucket.acquired += 1;
        Ok(OrgPermit { limiter: self.clone(), key: key.to_string(), seq: bucket.acquired, concurrent })
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
        let shared = if bucket.is_shared(now) { bucket.capacity * SHARED_RESERVE } else { 0.0 };
        let reserve = shared.min(bucket.capacity - 1.0).max(0.0);
        let missing = reserve + 1.0 - bucket.tokens;
        if missing <= 0.0 {
            return None;
        }
        let per_token = self.inner.window.as_secs_f64() / bucket.capacity;
        Some(Duration::from_secs_f64(missing * per_token).max(Duration::from_millis(1)))
    }

    /// Take the `RateLimit-*` headers of the answer to `permit`'s request (still in flight).
    pub fn observe(&self, permit: &OrgPermit, limit: Option<u32>, remaining: Option<u32>) {
        let (Some(limit), Some(remaining)) = (limit, remaining) else { return };
        let mut buckets = self.inner.buckets.lock().expect("limiter lock");
        let now = Instant::now();
        let bucket = buckets.entry(permit.key.clone()).or_insert_with(|| Bucket::new(now));
        bucket.refill(now, self.inner.window);
        let remaining_f = f64::from(remaining.min(limit));
        // Requests of ours that flew while this one did: in flight when it started, or
        // started since.
        let overlapped = u64::from(permit.concurrent) + bucket.acquired.saturating_sub(permit.seq);
        if bucket.capacity <= 0.0 || overlapped == 0 {
            // Alone in flight: Atlas's count is the count. Far below ours: someone else
            // takes from the bucket too.
            if bucket.capacity > 0.0 && remaining_f + SHARED_SLACK < bucket.tokens {
                bucket.mark_shared(now, self.inner.window);
            }
            let others_in_flight = f64::from(bucket.in_flight.saturating_sub(1));
            bucket.tokens = (remaining_f - others_in_flight).max(0.0);
        } else {
            let bound = (remaining_f - overlapped as f64).max(0.0);
            bucket.tokens = bucket.tokens.max(bound);
        }
        bucket.capacity = f64::from(limit.max(1));
        bucket.reported = Some(RateLimitSnapshot { limit, remaining });
    }

    /// Atlas answered 429 (or 503) with `Retry-After`: nothing under `key` is sent before
    /// `retry_after` has passed, then one request goes at once. `synced` says the refusal
    /// carried `RateLimit-*` headers ([`Self::observe`] took them): the count is then at
    /// most what the refusal reported; without them it is set to empty. A refusal while the
    /// local count had room means someone else takes from the bucket too.
    pub fn hold(&self, key: &str, retry_after: Duration, synced: bool) {
        let mut buckets = self.inner.buckets.lock().expect("limiter lock");
        let now = Instant::now();
        let bucket = buckets.entry(key.to_string()).or_insert_with(|| Bucket::new(now));
        bucket.refill(now, self.inner.window);
        if bucket.capacity > 0.0 && bucket.tokens >= SHARED_SLACK {
            bucket.mark_shared(now, self.inner.window);
        }
        let reported = bucket.reported.filter(|_| synced).map_or(0.0, |r| f64::from(r.remaining));
        bucket.tokens = bucket.tokens.min(reported);
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

    /// One request, answered with Atlas's count (`limit`, `remaining`) and done.
    async fn answered(limiter: &OrgRateLimiter, limit: u32, remaining: u32) {
        let (p, _) = limiter.acquire(ORG).await;
        limiter.observe(&p, Some(limit), Some(remaining));
    }

    /// `n` requests that each pass without waiting, kept in flight.
    async fn pass_at_once(limiter: &OrgRateLimiter, n: usize) -> Vec<OrgPermit> {
        let mut permits = Vec::new();
        for _ in 0..n {
            let (p, waited) = limiter.acquire(ORG).await;
            assert_eq!(waited, Duration::ZERO);
            permits.push(p);
        }
        permits
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_limits_do_not_wait() {
        let limiter = OrgRateLimiter::new(Duration::from_secs(60));
        for _ in 0..100 {
            let (_permit, waited) = limiter.acquire(ORG).await;
            assert_eq!(waited, Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paces_at_the_refill_rate_once_drained() {
        // 10 a second: capacity 10 over a 1 s window, nothing held back.
        let limiter = OrgRateLimiter::new(Duration::from_secs(1));
        answered(&limiter, 10, 9).await;
        let start = Instant::now();
        // 9 more pass at once (9 left) ...
        for _ in 0..9 {
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
        // The first answer: only two tokens left (someone used the bucket before us).
        answered(&limiter, 100, 2).await;
        let _permits = pass_at_once(&limiter, 2).await;
        let (_p, waited) = limiter.acquire(ORG).await;
        // One token short: 0.6 s.
        assert!(waited >= Duration::from_millis(600) && waited < Duration::from_millis(610), "{waited:?}");
    }

    /// Alone on a bucket, a burst uses all of it: the local count is conservative (Atlas's
    /// whole tokens, our requests in flight taken off), so no token need be held back.
    #[tokio::test(start_paused = true)]
    async fn a_lone_client_drains_the_whole_bucket() {
        let limiter = OrgRateLimiter::new(Duration::from_secs(60));
        answered(&limiter, 100, 99).await;
        let _permits = pass_at_once(&limiter, 99).await;
        let (_p, waited) = limiter.acquire(ORG).await;
        assert!(waited > Duration::ZERO);
    }

    /// Requests that wait go in the order they came, one per refill: none is overtaken.
    #[tokio::test(start_paused = true)]
    async fn waiting_requests_go_in_arrival_order() {
        let limiter = OrgRateLimiter::new(Duration::from_secs(1));
        answered(&limiter, 10, 1).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for n in 0..20 {
            let (limiter, order) = (limiter.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let (_p, _) = limiter.acquire(ORG).await;
                order.lock().unwrap().push((n, Instant::now()));
            }));
            // Arrive in a defined order.
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order.iter().map(|(n, _)| *n).collect::<Vec<_>>(), (0..20).collect::<Vec<_>>());
        // Paced at the refill rate, 100 ms apart.
        for pair in order.windows(2) {
            let gap = pair[1].1 - pair[0].1;
            assert!(gap >= Duration::from_millis(99) && gap <= Duration::from_millis(102), "{gap:?}");
        }
    }

    /// A burst's answers come back in the reverse of the order Atlas counted them: the last
    /// one read carries the oldest (highest) count, which must not become the count.
    #[tokio::test(start_paused = true)]
    async fn answers_overtaking_each_other_do_not_inflate_the_count() {
        let limiter = OrgRateLimiter::new(Duration::from_secs(60));
        answered(&limiter, 10, 9).await;
        let burst = pass_at_once(&limiter, 6).await;
        // Atlas counted them in order (8, 7, ... 3 left); they are read last first.
        for (n, p) in burst.into_iter().enumerate().rev() {
            limiter.observe(&p, Some(10), Some(8 - n as u32));
            drop(p);
        }
        // 3 left: three go at once, the fourth waits.
        for _ in 0..3 {
            let (_p, waited) = limiter.acquire(ORG).await;
            assert_eq!(waited, Duration::ZERO);
        }
        let (_p, waited) = limiter.acquire(ORG).await;
        assert!(waited > Duration::ZERO);
    }

    /// Atlas reports far fewer tokens than the local count: another client shares the bucket,
    /// and 10% of it is held back for a window; then nothing is held back again.
    #[tokio::test(start_paused = true)]
    async fn another_client_on_the_bucket_brings_the_reserve_back() {
        let limiter = OrgRateLimiter::new(Duration::from_secs(60));
        answered(&limiter, 100, 90).await;
        // Locally 89 are left; Atlas says 50.
        answered(&limiter, 100, 50).await;
        // Reserve 10: 40 pass at once, the 41st waits.
        let mut permits = pass_at_once(&limiter, 40).await;
        let (p, waited) = limiter.acquire(ORG).await;
        assert!(waited > Duration::ZERO);
        permits.push(p);
        drop(permits);
        // A window later, nothing else seen: the bucket has refilled, and none of it is
        // held back.
        tokio::time::sleep(Duration::from_secs(61)).await;
        answered(&limiter, 100, 99).await;
        let _permits = pass_at_once(&limiter, 99).await;
        let (_p, waited) = limiter.acquire(ORG).await;
        assert!(waited > Duration::ZERO);
    }

    /// A refusal without `RateLimit-*` headers while the local count had room: shared too.
    #[tokio::test(start_paused = true)]
    async fn an_unexpected_refusal_brings_the_reserve_back() {
        let limiter = OrgRateLimiter::new(Duration::from_secs(60));
        answered(&limiter, 100, 90).await;
        limiter.hold(ORG, Duration::from_secs(1), false);
        // The hold's probe goes at Retry-After whatever the count ...
        let (p, waited) = limiter.acquire(ORG).await;
        assert!(waited >= Duration::from_secs(1), "{waited:?}");
        limiter.observe(&p, Some(100), Some(20));
        drop(p);
        // ... then 20 tokens with a reserve of 10: 10 pass at once.
        let _permits = pass_at_once(&limiter, 10).await;
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
        // The 429 reports an empty bucket of 100 (0.6 s a token).
        limiter.observe(&p, Some(100), Some(0));
        limiter.hold(ORG, Duration::from_secs(1), true);
        drop(p);
        let (p, waited) = limiter.acquire(ORG).await;
        assert!(waited >= Duration::from_secs(1) && waited < Duration::from_millis(1010), "{waited:?}");
        // Its answer: Atlas refilled one token during the second and this request took it.
        limiter.observe(&p, Some(100), Some(1));
        drop(p);
        let _next = pass_at_once(&limiter, 1).await;
        let (_p, waited) = limiter.acquire(ORG).await;
        // The one after it: a token at 0.6 s (not the 10% reserve of a bucket shared with
        // another client).
        assert!(waited >= Duration::from_millis(600) && waited < Duration::from_millis(610), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_never_waits_but_records() {
        let limiter = OrgRateLimiter::disabled();
        limiter.hold(ORG, Duration::from_secs(3), false);
        let (p, waited) = limiter.acquire(ORG).await;
        assert_eq!(waited, Duration::ZERO);
        limiter.observe(&p, Some(1), Some(0));
        drop(p);
        let (_p, waited) = limiter.acquire(ORG).await;
        assert_eq!(waited, Duration::ZERO);
        assert_eq!(limiter.snapshot(ORG), Some(RateLimitSnapshot { limit: 1, remaining: 0 }));
    }
}
