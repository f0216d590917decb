//! The client's bound on requests in flight, shared fairly between rate-limit keys
//! (organization and endpoint set): when every slot is taken, a freed slot goes to the next
//! key in turn (round robin), and within a key to the oldest request. A plain FIFO semaphore
//! let one key's burst (an organization's invitations, which hold their tokens already)
//! queue ahead of every other key's requests, so a bucket with room sat idle behind a
//! bucket being drained: the team additions that must follow those invitations started late,
//! and so did every other organization's small changes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

#[derive(Debug, Default)]
struct State {
    free: usize,
    /// Waiting requests per key, oldest first.
    waiting: HashMap<String, VecDeque<oneshot::Sender<()>>>,
    /// Keys with waiting requests, in the order they are served.
    turns: VecDeque<String>,
}

impl State {
    /// Hand a freed slot to the next waiting request; false when nobody waits.
    fn hand_over(&mut self) -> bool {
        while let Some(key) = self.turns.pop_front() {
            let Some(queue) = self.waiting.get_mut(&key) else { continue };
            let mut handed = false;
            while let Some(waiter) = queue.pop_front() {
                // A waiter that gave up has dropped its receiver: try the next.
                if waiter.send(()).is_ok() {
                    handed = true;
                    break;
                }
            }
            if queue.is_empty() {
                self.waiting.remove(&key);
            } else {
                self.turns.push_back(key);
            }
            if handed {
                return true;
            }
        }
        false
    }
}

/// At most `n` requests in flight; see the module documentation.
#[derive(Clone, Debug)]
pub(crate) struct FairSlots {
    state: Arc<Mutex<State>>,
}

/// A slot; dropping it frees it.
#[must_use]
pub(crate) struct Slot {
    state: Arc<Mutex<State>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        release(&self.state);
    }
}

fn release(state: &Mutex<State>) {
    let mut state = state.lock().expect("slots lock");
    if !state.hand_over() {
        state.free += 1;
    }
}

/// A request waiting for a slot; if its wait is cancelled after a slot was handed to it,
/// the slot goes on to the next.
struct Waiting {
    rx: oneshot::Receiver<()>,
    state: Arc<Mutex<State>>,
    granted: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.granted {
            self.rx.close();
            if self.rx.try_recv().is_ok() {
                release(&self.state);
            }
        }
    }
}

impl FairSlots {
    pub(crate) fn new(n: usize) -> Self {
        Self { state: Arc::new(Mutex::new(State { free: n, ..State::default() })) }
    }

    /// A slot for a request under `key`.
    pub(crate) async fn acquire(&self, key: &str) -> Slot {
        let mut waiting = {
            let mut state = self.state.lock().expect("slots lock");
            if state.free > 0 && state.turns.is_empty() {
                state.free -= 1;
                return Slot { state: self.state.clone() };
            }
            let (tx, rx) = oneshot::channel();
            match state.waiting.get_mut(key) {
                Some(queue) => queue.push_back(tx),
                None => {
                    state.waiting.insert(key.to_string(), VecDeque::from([tx]));
                    state.turns.push_back(key.to_string());
                }
            }
            Waiting { rx, state: self.state.clone(), granted: false }
        };
        // The sender is only dropped unsent by `hand_over`, which never drops a live one.
        let _ = (&mut waiting.rx).await;
        waiting.granted = true;
        Slot { state: self.state.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_one_key_does_not_hold_up_another() {
        let slots = FairSlots::new(1);
        let first = slots.acquire("org/a").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (n, key) in ["org/a", "org/a", "org/a", "org/b", "org/a", "org/b"].into_iter().enumerate() {
            let (task_slots, order) = (slots.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = task_slots.acquire(key).await;
                order.lock().unwrap().push((n, key));
                tokio::task::yield_now().await;
            }));
            while slots.state.lock().unwrap().waiting.values().map(VecDeque::len).sum::<usize>() <= n {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        // Turns alternate between the keys; each key's requests keep their order.
        let order: Vec<usize> = order.lock().unwrap().iter().map(|(n, _)| *n).collect();
        assert_eq!(order, [0, 3, 1, 5, 2, 4]);
        assert_eq!(slots.state.lock().unwrap().free, 1);
    }

    #[tokio::test]
    async fn a_cancelled_wait_passes_its_slot_on() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("k").await;
        let task_slots = slots.clone();
        let cancelled = tokio::spawn(async move {
            let _slot = task_slots.acquire("k").await;
        });
        while slots.state.lock().unwrap().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        cancelled.abort();
        let _ = cancelled.await;
        drop(held);
        // The slot came back: the next request gets it at once.
        let _again = tokio::time::timeout(std::time::Duration::from_secs(5), slots.acquire("k")).await.unwrap();
        assert_eq!(slots.state.lock().unwrap().free, 0);
    }
}
