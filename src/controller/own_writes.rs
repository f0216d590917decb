//! The controller's own status writes, until its cache has seen them.
//!
//! A reconcile starts from the cached object. When something else triggers an object right
//! after the operator wrote its status (a co-writer's or a member's change, a short requeue),
//! the watch may not have delivered that write yet: the reconcile would plan from the status
//! before it, send an Atlas write a second time or publish the same warning again. So each
//! status write that changed the object remembers the `resourceVersion` the cache held when
//! the reconcile began; a reconcile that finds the cache still at that version waits for the
//! watch instead of planning. An entry ends as soon as the cache shows anything else, and
//! after [`OWN_WRITE_TTL`] whatever happens, so a write the watch never reports (the object was
//! deleted, a relist replaced it) delays nothing for long and memory stays bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a write is waited for at most.
pub const OWN_WRITE_TTL: Duration = Duration::from_secs(30);

/// How soon a reconcile that found the cache behind is tried again.
pub const CACHE_BEHIND_RETRY: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct OwnWrites {
    /// Object key -> (the version the cache held when the writing reconcile began, when).
    pending: Mutex<HashMap<String, (String, Instant)>>,
}

impl OwnWrites {
    /// A status write of the object at key `key` was answered with `written` while the
    /// reconcile had started from the cached version `cached`.
    pub fn wrote(&self, key: &str, cached: Option<&str>, written: Option<&str>, now: Instant) {
        let (Some(cached), Some(written)) = (cached, written) else { return };
        let mut pending = self.pending.lock().expect("own writes lock");
        pending.retain(|_, (_, at)| now.saturating_duration_since(*at) < OWN_WRITE_TTL);
        if cached != written {
            pending.insert(key.to_string(), (cached.to_string(), now));
        }
    }

    /// Whether the cache still holds the version a write of ours replaced (the reconcile
    /// should wait for the watch). Forgets the write once the cache has moved on.
    pub fn cache_is_behind(&self, key: &str, cached: Option<&str>, now: Instant) -> bool {
        let mut pending = self.pending.lock().expect("own writes lock");
        let behind = match (pending.get(key), cached) {
            (Some((before, at)), Some(cached)) => {
                before == cached && now.saturating_duration_since(*at) < OWN_WRITE_TTL
            }
            _ => false,
        };
        if !behind {
            pending.remove(key);
        }
        behind
    }

    /// Writes not seen by the cache yet.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending.lock().expect("own writes lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_waits_only_while_the_cache_holds_the_version_our_write_replaced() {
        let t0 = Instant::now();
        let later = |s: u64| t0 + Duration::from_secs(s);
        // (cached at the write, answer of the write, cached at the next reconcile, seconds later, waits)
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, u64, bool);
        let cases: &[Case] = &[
            (Some("10"), Some("11"), Some("10"), 0, true),
            (Some("10"), Some("11"), Some("11"), 0, false),
            // Someone else wrote after us: the cache moved on, plan from it.
            (Some("10"), Some("11"), Some("12"), 0, false),
            // The write changed nothing on the server: nothing to wait for.
            (Some("10"), Some("10"), Some("10"), 0, false),
            // The watch never reported it: waited for at most the TTL.
            (Some("10"), Some("11"), Some("10"), 31, false),
            (None, Some("11"), Some("10"), 0, false),
            (Some("10"), None, Some("10"), 0, false),
        ];
        for &(cached, written, next, after, waits) in cases {
            let writes = OwnWrites::default();
            writes.wrote("AtlasOrgUser/ns/a", cached, written, t0);
            assert_eq!(
                writes.cache_is_behind("AtlasOrgUser/ns/a", next, later(after)),
                waits,
                "{cached:?} -> {written:?}, then {next:?} after {after}s"
            );
            assert!(!writes.cache_is_behind("AtlasOrgUser/ns/other", next, later(after)));
        }
    }

    #[test]
    fn entries_end_when_the_cache_catches_up_or_expire() {
        let t0 = Instant::now();
        let writes = OwnWrites::default();
        writes.wrote("a", Some("1"), Some("2"), t0);
        writes.wrote("b", Some("1"), Some("2"), t0);
        assert!(writes.cache_is_behind("a", Some("1"), t0));
        assert_eq!(writes.len(), 2);
        assert!(!writes.cache_is_behind("a", Some("2"), t0));
        assert_eq!(writes.len(), 1);
        // Any later write prunes what has expired (a deleted object's entry).
        writes.wrote("c", Some("5"), Some("6"), t0 + OWN_WRITE_TTL);
        assert_eq!(writes.len(), 1);
    }
}
