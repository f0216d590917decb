//! The invitation queue: Atlas meters invitations per client IP (about 10 a minute, answered
//! `400 INVITATIONS_RATE_LIMITED_IP`, across every organization), so every invitation of the
//! process leaves through one queue.
//!
//! One queue per process is the honest approximation of one per egress IP: the clients of
//! every credential share it (they share a clone), but replicas, or other tools, behind the
//! same NAT share Atlas's limit without sharing this queue — each then sees refusals, and its
//! queue pauses on them instead of retrying in a herd.
//!
//! - Invitations leave first come, first served (a ticket per organization and username, so
//!   an object that comes back keeps its place), at the configured rate with a burst of the
//!   same size (Atlas's bucket).
//! - Only the head goes, one invitation in flight at a time: the others wait for their
//!   turn, not for a timer, so nobody retries together and a refusal can only ever hit one
//!   invitation (at Atlas's rate an interval is seconds, far above a call's latency). A refused invitation goes back to the head and the queue pauses for Atlas's
//!   `Retry-After` or, without one, one interval (the time one invitation's token takes to
//!   refill); the local count drops to zero, as Atlas's must be.
//! - A caller whose turn is further away than it may wait gets
//!   [`AtlasError::InvitationQueued`] with its position and ETA (and keeps its ticket):
//!   that is what the status of a waiting object shows.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::error::AtlasError;

/// The share of an interval a refilled token is spent late (see `until_token`).
const MARGIN: f64 = 0.02;

/// Where one invitation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuePlace {
    /// Invitations ahead of it (0: next).
    pub position: usize,
    /// Roughly how long until it is sent.
    pub eta: Duration,
}

/// The whole queue, for a progress line or a metric.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// Invitations holding a ticket (waiting now or coming back for their turn).
    pub queued: usize,
    /// Of those, callers waiting right now.
    pub waiting: usize,
    pub sent: u64,
    /// Invitations Atlas refused with `INVITATIONS_RATE_LIMITED_IP`.
    pub refused: u64,
    /// Until the queue may send again (pause or refill); zero when a token is ready.
    pub next_in: Duration,
    /// The configured rate: `rate` invitations every `per`.
    pub rate: u32,
    pub per: Duration,
}

#[derive(Debug)]
struct Entry {
    key: String,
    /// Callers waiting on this ticket right now.
    waiting: u32,
    /// When it was last expected to be sent; a ticket whose holder does not come back within
    /// a grace period after that is dropped.
    expected_at: Instant,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    updated: Instant,
    paused_until: Option<Instant>,
    /// A turn is out (an invitation on its way).
    in_flight: bool,
    next_ticket: u64,
    entries: BTreeMap<u64, Entry>,
    tickets: HashMap<String, u64>,
    sent: u64,
    refused: u64,
}

struct Inner {
    enabled: bool,
    rate: u32,
    per: Duration,
    interval: Duration,
    grace: Duration,
    state: Mutex<State>,
    changed: Notify,
}

/// One queue per process; clones share it.
#[derive(Clone)]
pub struct InvitationQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InvitationQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvitationQueue")
            .field("enabled", &self.inner.enabled)
            .field("rate", &self.inner.rate)
            .field("per", &self.inner.per)
            .finish()
    }
}

impl Default for InvitationQueue {
    /// Atlas's limit: 10 invitations a minute.
    fn default() -> Self {
        Self::per_minute(10)
    }
}

/// The right to send one invitation now. Say how it went: [`Turn::sent`] or
/// [`Turn::refused`]; dropped without either (the call was cancelled), the ticket stays at
/// the head (Atlas may or may not have seen the invitation).
#[must_use]
pub struct Turn {
    queue: InvitationQueue,
    ticket: u64,
    finished: bool,
}

impl Turn {
    /// Atlas answered (anything but the invitation limit): the ticket is done.
    pub fn sent(mut self) {
        self.finished = true;
        let mut state = self.queue.lock();
        state.in_flight = false;
        if let Some(entry) = state.entries.remove(&self.ticket) {
            state.tickets.remove(&entry.key);
        }
        state.sent += 1;
        drop(state);
        self.queue.inner.changed.notify_waiters();
    }

    /// Atlas refused it (`INVITATIONS_RATE_LIMITED_IP`): back to the head, the queue pauses.
    pub fn refused(mut self, retry_after: Option<Duration>) {
        self.finished = true;
        let now = Instant::now();
        let pause = retry_after.unwrap_or(self.queue.inner.interval);
        let mut state = self.queue.lock();
        state.in_flight = false;
        state.refused += 1;
        state.tokens = 0.0;
        let until = now + pause;
        state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
        if let Some(entry) = state.entries.get_mut(&self.ticket) {
            entry.waiting = entry.waiting.saturating_sub(1);
            entry.expected_at = until;
        }
        drop(state);
        self.queue.inner.changed.notify_waiters();
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.finished {
            let mut state = self.queue.lock();
            state.in_flight = false;
            if let Some(entry) = state.entries.get_mut(&self.ticket) {
                entry.waiting = entry.waiting.saturating_sub(1);
            }
            drop(state);
            self.queue.inner.changed.notify_waiters();
        }
    }
}

/// A caller's registration as waiting on its ticket, undone however the wait ends.
struct Waiting<'a> {
    queue: &'a InvitationQueue,
    ticket: u64,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.queue.lock();
            if let Some(entry) = state.entries.get_mut(&self.ticket) {
                entry.waiting = entry.waiting.saturating_sub(1);
            }
            drop(state);
            self.queue.inner.changed.notify_waiters();
        }
    }
}

impl InvitationQueue {
    /// `rate` invitations a minute (the operator's `--invitations-per-minute`).
    pub fn per_minute(rate: u32) -> Self {
        Self::new(rate, Duration::from_secs(60))
    }

    /// `rate` invitations every `per` (a shorter `per` scales the limit for benchmarks).
    pub fn new(rate: u32, per: Duration) -> Self {
        Self::build(true, rate.max(1), per.max(Duration::from_millis(1)))
    }

    /// First come, first served, but never paced (Atlas without the limit; tests).
    /// A refusal still pauses it, for Atlas's `Retry-After` or 6 s (Atlas's 10 a minute).
    pub fn disabled() -> Self {
        Self::build(false, 10, Duration::from_secs(60))
    }

    fn build(enabled: bool, rate: u32, per: Duration) -> Self {
        let interval = per / rate;
        let now = Instant::now();
        let state = State {
            tokens: f64::from(rate),
            updated: now,
            paused_until: None,
            in_flight: false,
            next_ticket: 0,
            entries: BTreeMap::new(),
            tickets: HashMap::new(),
            sent: 0,
            refused: 0,
        };
        Self {
            inner: Arc::new(Inner {
                enabled,
                rate,
                per,
                interval,
                grace: (interval * 4).max(Duration::from_secs(60)),
                state: Mutex::new(state),
                changed: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("invitation queue lock")
    }

    /// Wait for `key`'s turn (organization and username), at most about `max_wait`: a turn
    /// further away returns [`AtlasError::InvitationQueued`] at once, and the ticket is kept.
    pub async fn turn(&self, key: &str, max_wait: Duration) -> Result<Turn, AtlasError> {
        let ticket = {
            let now = Instant::now();
            let mut state = self.lock();
            self.prune(&mut state, now);
            let ticket = match state.tickets.get(key) {
                Some(&t) => t,
                None => {
                    let t = state.next_ticket;
                    state.next_ticket += 1;
                    state.tickets.insert(key.to_string(), t);
                    state.entries.insert(t, Entry { key: key.to_string(), waiting: 0, expected_at: now });
                    t
                }
            };
            if let Some(entry) = state.entries.get_mut(&ticket) {
                entry.waiting += 1;
            }
            ticket
        };
        let mut waiting = Waiting { queue: self, ticket, armed: true };
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let now = Instant::now();
                let mut state = self.lock();
                self.refill(&mut state, now);
                let place = self.place_of(&state, ticket, now);
                if let Some(entry) = state.entries.get_mut(&ticket) {
                    entry.expected_at = now + place.eta;
                }
                if place.eta > max_wait {
                    return Err(AtlasError::InvitationQueued {
                        position: place.position,
                        eta: place.eta,
                        // Back when the turn is within reach, with time to spare.
                        come_back: place.eta.saturating_sub(max_wait / 2).max(Duration::from_secs(1)),
                        rate: self.inner.rate,
                        per: self.inner.per,
                    });
                }
                // Disabled: no order and no limit on invitations in flight, only the pause.
                let ahead_waiting = self.inner.enabled && state.entries.range(..ticket).any(|(_, e)| e.waiting > 0);
                let blocked = ahead_waiting || (self.inner.enabled && state.in_flight);
                if !blocked && place.eta.is_zero() {
                    if self.inner.enabled {
                        state.tokens -= 1.0;
                        state.in_flight = true;
                    }
                    waiting.armed = false;
                    return Ok(Turn { queue: self.clone(), ticket, finished: false });
                }
                // Ahead of us someone waits: their turn (or refusal) wakes us; otherwise the
                // refill or the pause does.
                if blocked { None } else { Some(place.eta) }
            };
            match wait {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Where `key` stands, if it holds a ticket.
    pub fn place(&self, key: &str) -> Option<QueuePlace> {
        let now = Instant::now();
        let mut state = self.lock();
        self.refill(&mut state, now);
        let ticket = *state.tickets.get(key)?;
        Some(self.place_of(&state, ticket, now))
    }

    pub fn snapshot(&self) -> QueueSnapshot {
        let now = Instant::now();
        let mut state = self.lock();
        self.refill(&mut state, now);
        QueueSnapshot {
            queued: state.entries.len(),
            waiting: state.entries.values().filter(|e| e.waiting > 0).count(),
            sent: state.sent,
            refused: state.refused,
            next_in: self.until_token(&state, now, 0),
            rate: self.inner.rate,
            per: self.inner.per,
        }
    }

    fn refill(&self, state: &mut State, now: Instant) {
        if let Some(until) = state.paused_until {
            if now < until {
                return;
            }
            // Atlas's `Retry-After` (or one interval) is when its bucket holds a token again.
            state.paused_until = None;
            state.tokens = state.tokens.max(1.0);
            state.updated = until;
        }
        let elapsed = now.saturating_duration_since(state.updated).as_secs_f64();
        let per_sec = f64::from(self.inner.rate) / self.inner.per.as_secs_f64();
        state.tokens = (state.tokens + elapsed * per_sec).min(f64::from(self.inner.rate));
        state.updated = now;
    }

    /// Until the `ahead + 1`-th token from now may be spent.
    fn until_token(&self, state: &State, now: Instant, ahead: usize) -> Duration {
        if !self.inner.enabled {
            return state.paused_until.map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        }
        let interval = self.inner.interval.as_secs_f64();
        match state.paused_until {
            // One token when the pause ends, then one an interval.
            Some(until) => until.saturating_duration_since(now) + Duration::from_secs_f64(ahead as f64 * interval),
            // A token earned by refilling is spent a little late (MARGIN of an interval):
            // the queue's clock starts at the grant, Atlas's when the request arrives, and
            // at exactly Atlas's rate the queue would otherwise be early by that latency.
            None if ahead as f64 + 1.0 <= state.tokens => Duration::ZERO,
            None => Duration::from_secs_f64((ahead as f64 + 1.0 + MARGIN - state.tokens) * interval),
        }
    }

    fn place_of(&self, state: &State, ticket: u64, now: Instant) -> QueuePlace {
        let position = state.entries.range(..ticket).count();
        QueuePlace { position, eta: self.until_token(state, now, position) }
    }

    /// Drop tickets whose holders did not come back long after their expected turn.
    fn prune(&self, state: &mut State, now: Instant) {
        let grace = self.inner.grace;
        let stale: Vec<u64> = state
            .entries
            .iter()
            .filter(|(_, e)| e.waiting == 0 && now.saturating_duration_since(e.expected_at) > grace)
            .map(|(t, _)| *t)
            .collect();
        for t in stale {
            if let Some(entry) = state.entries.remove(&t) {
                state.tickets.remove(&entry.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn burst_then_the_rate_in_arrival_order() {
        let queue = InvitationQueue::new(2, Duration::from_secs(10));
        let start = Instant::now();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (queue, sent) = (queue.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                let turn = queue.turn(&format!("org/u{i}"), LONG).await.unwrap();
                sent.lock().unwrap().push((i, start.elapsed()));
                turn.sent();
            }));
            // Arrive in order.
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let sent = sent.lock().unwrap().clone();
        let order: Vec<usize> = sent.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        let secs: Vec<u64> = sent.iter().map(|(_, t)| t.as_secs()).collect();
        // A burst of 2, then one every 5 s.
        assert_eq!(secs, vec![0, 0, 5, 10, 15]);
        assert_eq!(queue.snapshot().sent, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_goes_back_to_the_head_and_pauses() {
        let queue = InvitationQueue::new(1, Duration::from_secs(10));
        let first = queue.turn("org/a", LONG).await.unwrap();
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let turn = queue.turn("org/b", LONG).await.unwrap();
                let at = Instant::now();
                turn.sent();
                at
            })
        };
        tokio::task::yield_now().await;
        let start = Instant::now();
        first.refused(Some(Duration::from_secs(30)));
        // a comes back first, after the pause; b only after a's next token.
        let again = queue.turn("org/a", LONG).await.unwrap();
        assert_eq!(start.elapsed().as_secs(), 30);
        again.sent();
        let b_at = waiter.await.unwrap();
        assert_eq!((b_at - start).as_secs(), 40);
        let snap = queue.snapshot();
        assert_eq!((snap.sent, snap.refused, snap.queued), (2, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_too_far_away_is_reported_and_keeps_its_place() {
        let queue = InvitationQueue::new(1, Duration::from_secs(6));
        queue.turn("org/a", LONG).await.unwrap().sent();
        let _b = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.turn("org/b", LONG).await.unwrap().sent() })
        };
        tokio::task::yield_now().await;
        let err = queue.turn("org/c", Duration::from_secs(1)).await.err().unwrap();
        match &err {
            AtlasError::InvitationQueued { position, eta, .. } => {
                assert_eq!(*position, 1);
                assert_eq!(eta.as_secs(), 12);
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("number 2 in line, to be sent in about 12s"), "{err}");
        assert_eq!(queue.place("org/c").unwrap().position, 1);
        // A later arrival queues behind c even while c is away.
        let d = queue.place("org/d");
        assert!(d.is_none());
        let err = queue.turn("org/d", Duration::from_secs(1)).await.err().unwrap();
        assert!(matches!(err, AtlasError::InvitationQueued { position: 2, .. }), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_tickets_expire() {
        let queue = InvitationQueue::new(1, Duration::from_secs(6));
        queue.turn("org/a", LONG).await.unwrap().sent();
        assert!(queue.turn("org/gone", Duration::ZERO).await.is_err());
        tokio::time::sleep(Duration::from_secs(120)).await;
        let turn = queue.turn("org/b", Duration::ZERO).await.unwrap();
        turn.sent();
        assert_eq!(queue.snapshot().queued, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_never_waits_nor_serialises() {
        let queue = InvitationQueue::disabled();
        let mut turns = Vec::new();
        for i in 0..50 {
            turns.push(queue.turn(&format!("org/u{i}"), Duration::ZERO).await.unwrap());
        }
        for turn in turns {
            turn.sent();
        }
        assert_eq!(queue.snapshot().sent, 50);
    }
}
