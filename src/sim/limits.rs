//! Token-bucket rate limits as Atlas applies them: one bucket per endpoint set and scope
//! (organization, IP, client). Buckets refill on real (tokio) time, so `Retry-After` is in
//! real seconds; scale the capacities to make tests and benchmarks fast.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// A bucket holding `capacity` tokens that refills `refill` tokens every `per`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketSpec {
    pub capacity: u32,
    pub refill: u32,
    pub per: Duration,
}

impl BucketSpec {
    /// `n` requests a minute, with a burst of `n`.
    pub fn per_minute(n: u32) -> Self {
        Self { capacity: n, refill: n, per: Duration::from_secs(60) }
    }

    fn refill_per_sec(&self) -> f64 {
        f64::from(self.refill) / self.per.as_secs_f64().max(f64::EPSILON)
    }
}

/// Rate limits of the Admin API endpoint sets (`orgs`, `org-users-read`, `org-users-write`,
/// `teams-read`, `teams-write`), each per organization.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// The bucket of every endpoint set not in `per_set`; `None` switches the limit off.
    pub default: Option<BucketSpec>,
    /// Endpoint set name -> its bucket (`None`: unlimited).
    pub per_set: BTreeMap<String, Option<BucketSpec>>,
}

impl Default for RateLimitConfig {
    /// 100 requests a minute per endpoint set and organization, bursts of 100.
    fn default() -> Self {
        Self { default: Some(BucketSpec::per_minute(100)), per_set: BTreeMap::new() }
    }
}

impl RateLimitConfig {
    /// No limits (RateLimit headers are then left out, as Atlas may do).
    pub fn disabled() -> Self {
        Self { default: None, per_set: BTreeMap::new() }
    }

    /// The same bucket for every endpoint set.
    pub fn uniform(spec: BucketSpec) -> Self {
        Self { default: Some(spec), per_set: BTreeMap::new() }
    }

    pub fn spec_for(&self, set: &str) -> Option<BucketSpec> {
        self.per_set.get(set).copied().unwrap_or(self.default)
    }
}

/// The outcome of taking one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    pub limit: u32,
    pub remaining: u32,
    /// Set when the bucket was empty: whole seconds until a token is back.
    pub retry_after: Option<u64>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct Limiter {
    buckets: HashMap<(String, String), Bucket>,
}

impl Limiter {
    /// Takes a token from the bucket of `set` for `scope`.
    pub fn take(&mut self, spec: BucketSpec, set: &str, scope: &str) -> Taken {
        let now = Instant::now();
        let bucket = self
            .buckets
            .entry((set.to_string(), scope.to_string()))
            .or_insert(Bucket { tokens: f64::from(spec.capacity), last: now });
        let rate = spec.refill_per_sec();
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(f64::from(spec.capacity));
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Taken { limit: spec.capacity, remaining: bucket.tokens.floor() as u32, retry_after: None }
        } else {
            let wait = ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64;
            Taken { limit: spec.capacity, remaining: 0, retry_after: Some(wait) }
        }
    }

    /// The bucket's state without taking a token (for answers that do not count).
    pub fn peek(&mut self, spec: BucketSpec, set: &str, scope: &str) -> Taken {
        let remaining = match self.buckets.get(&(set.to_string(), scope.to_string())) {
            None => spec.capacity,
            Some(bucket) => {
                let elapsed = Instant::now().saturating_duration_since(bucket.last).as_secs_f64();
                (bucket.tokens + elapsed * spec.refill_per_sec()).min(f64::from(spec.capacity)).floor() as u32
            }
        };
        Taken { limit: spec.capacity, remaining, retry_after: None }
    }

    pub fn clear(&mut self) {
        self.buckets.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn empties_then_refills_on_tokio_time() {
        let mut limiter = Limiter::default();
        let spec = BucketSpec { capacity: 2, refill: 1, per: Duration::from_secs(10) };
        assert_eq!(limiter.take(spec, "s", "o").remaining, 1);
        assert_eq!(limiter.take(spec, "s", "o").remaining, 0);
        let refused = limiter.take(spec, "s", "o");
        assert_eq!(refused.retry_after, Some(10));
        assert_eq!(limiter.take(spec, "s", "other").retry_after, None, "scopes have their own buckets");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(limiter.take(spec, "s", "o").retry_after, None);
    }
}
