//! A cap's wait queue: one level per [`Priority`], served highest first. Within a level, waiters
//! are grouped by key and the keys take turns (`fair_by`): one waiter of the key whose turn it
//! is, then that key goes to the back of the line. Within a key, oldest first. A cap without
//! `fair_by` queues every waiter under one key, so each level is one FIFO, as before.
//!
//! Why turns and not arrival order: one tenant's batch job that fills the queue would otherwise
//! make every other tenant wait behind all of it; with turns, a light tenant's request waits
//! for at most one request of each other key queued at its priority. Deficit round robin with
//! every request costing one: O(1) per push and per admission.
//!
//! Memory follows the waiters: a key is in a level's map only while it has waiters there, so a
//! level holds at most as many keys as the queue holds requests. A waiter that gives up leaves
//! its key's turn in the line (a stale turn, skipped when reached); the line is compacted when
//! stale turns outnumber the live ones, so cancellations cost O(1) amortised too.

use std::collections::{HashMap, VecDeque};

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Permit, Rejected};
use crate::config::Priority;

/// One queued request.
pub(super) struct Waiter {
    /// Arrival number, unique per limit.
    pub(super) seq: u64,
    /// When it joined the queue, for [`Permit::waited`].
    pub(super) enqueued_at: Instant,
    /// Where its outcome goes: a permit (slot handed over) or `Shed`.
    pub(super) tx: oneshot::Sender<Result<Permit, Rejected>>,
}

/// The wait queue (see the module docs).
pub(super) struct WaitQueue {
    /// Indexed by [`level`]: 0 = low .. 3 = critical.
    levels: [Level; 4],
    /// Total waiters, so that `queue_depth` does not sum four lengths.
    pub(super) len: usize,
    /// Waiters per key over all levels, for `max_queued_per_key`; a key with none is absent.
    per_key: HashMap<u64, usize>,
}

/// The waiters of one priority.
#[derive(Default)]
struct Level {
    /// Each key's waiters (oldest first, so sorted by `seq`) and the number of its live turn.
    keys: HashMap<u64, KeyQueue>,
    /// The keys' turns in the order they are served: `(key, turn)`. A turn is live while its
    /// number is its key's `turn`; others are stale and skipped.
    line: VecDeque<(u64, u64)>,
    /// The number of the next turn given out.
    next_turn: u64,
}

/// One key's waiters at one level.
struct KeyQueue {
    waiters: VecDeque<Waiter>,
    /// The number of the key's one live turn in [`Level::line`].
    turn: u64,
}

/// The index of a priority's level: higher priority, higher index.
pub(super) fn level(priority: Priority) -> usize {
    match priority {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
        Priority::Critical => 3,
    }
}

/// Inverse of [`level`].
fn priority_of(level: usize) -> Priority {
    match level {
        0 => Priority::Low,
        1 => Priority::Normal,
        2 => Priority::High,
        _ => Priority::Critical,
    }
}

// === impl WaitQueue ===

impl WaitQueue {
    pub(super) fn new() -> Self {
        WaitQueue {
            levels: Default::default(),
            len: 0,
            per_key: HashMap::new(),
        }
    }

    /// Queues `waiter` of `key` at `priority`, behind the key's earlier waiters.
    pub(super) fn push(&mut self, priority: Priority, key: u64, waiter: Waiter) {
        self.levels[level(priority)].push(key, waiter);
        *self.per_key.entry(key).or_insert(0) += 1;
        self.len += 1;
    }

    /// Waiters of `key` now, at every priority.
    pub(super) fn queued_for(&self, key: u64) -> usize {
        self.per_key.get(&key).copied().unwrap_or(0)
    }

    /// The waiter to serve next: the highest priority, then the key whose turn it is, then that
    /// key's oldest.
    pub(super) fn pop_best(&mut self) -> Option<Waiter> {
        let (key, waiter) = self.levels.iter_mut().rev().find_map(Level::pop_next)?;
        self.taken(key);
        Some(waiter)
    }

    /// The lowest priority of any waiter.
    pub(super) fn lowest_priority(&self) -> Option<Priority> {
        let lowest = self.levels.iter().position(|l| !l.keys.is_empty())?;
        Some(priority_of(lowest))
    }

    /// The waiter to shed: at the lowest priority, the newest (it has waited least) of the key
    /// with the most waiters there (the heaviest tenant gives way first). O(keys at that level).
    pub(super) fn pop_newest_of_lowest(&mut self) -> Option<Waiter> {
        let (key, waiter) = self
            .levels
            .iter_mut()
            .find_map(Level::pop_newest_of_heaviest)?;
        self.taken(key);
        Some(waiter)
    }

    /// Removes a waiter that gives up; `false` if it was already removed (served or shed).
    pub(super) fn remove(&mut self, priority: Priority, key: u64, seq: u64) -> bool {
        let removed = self.levels[level(priority)].remove(key, seq);
        if removed {
            self.taken(key);
        }
        removed
    }

    /// The length of level `level`'s line, stale turns included (tests: memory is bounded).
    #[cfg(test)]
    pub(super) fn line_len(&self, level: usize) -> usize {
        self.levels[level].line.len()
    }

    /// Counts a waiter of `key` out of the queue.
    fn taken(&mut self, key: u64) {
        self.len -= 1;
        if let Some(n) = self.per_key.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_key.remove(&key);
            }
        }
    }
}

// === impl Level ===

impl Level {
    fn push(&mut self, key: u64, waiter: Waiter) {
        if let Some(queue) = self.keys.get_mut(&key) {
            queue.waiters.push_back(waiter);
            return;
        }
        let turn = self.new_turn(key);
        self.keys.insert(
            key,
            KeyQueue {
                waiters: VecDeque::from([waiter]),
                turn,
            },
        );
    }

    /// A new turn for `key` at the back of the line.
    fn new_turn(&mut self, key: u64) -> u64 {
        let turn = self.next_turn;
        self.next_turn += 1;
        self.line.push_back((key, turn));
        turn
    }

    /// The oldest waiter of the key whose turn it is; that key goes to the back of the line if
    /// it has more.
    fn pop_next(&mut self) -> Option<(u64, Waiter)> {
        while let Some((key, turn)) = self.line.pop_front() {
            let Some(queue) = self.keys.get_mut(&key).filter(|q| q.turn == turn) else {
                continue; // stale: the key's waiters left, or it has a later turn
            };
            let Some(waiter) = queue.waiters.pop_front() else {
                self.keys.remove(&key);
                continue;
            };
            if queue.waiters.is_empty() {
                self.keys.remove(&key);
            } else {
                let turn = self.new_turn(key);
                if let Some(queue) = self.keys.get_mut(&key) {
                    queue.turn = turn;
                }
            }
            return Some((key, waiter));
        }
        None
    }

    /// The newest waiter of the key with the most waiters (the first such key met on a tie).
    fn pop_newest_of_heaviest(&mut self) -> Option<(u64, Waiter)> {
        let key = self
            .keys
            .iter()
            .max_by_key(|(_, q)| q.waiters.len())
            .map(|(&key, _)| key)?;
        let queue = self.keys.get_mut(&key)?;
        let waiter = queue.waiters.pop_back()?;
        if queue.waiters.is_empty() {
            self.forget(key);
        }
        Some((key, waiter))
    }

    /// Removes `key`'s waiter `seq`; `false` if it is not here.
    fn remove(&mut self, key: u64, seq: u64) -> bool {
        let Some(queue) = self.keys.get_mut(&key) else {
            return false;
        };
        let Ok(i) = queue.waiters.binary_search_by_key(&seq, |w| w.seq) else {
            return false;
        };
        queue.waiters.remove(i);
        if queue.waiters.is_empty() {
            self.forget(key);
        }
        true
    }

    /// `key` has no waiters left: its turn goes stale, and the line is compacted once stale
    /// turns outnumber live ones.
    fn forget(&mut self, key: u64) {
        self.keys.remove(&key);
        if self.line.len() > 2 * self.keys.len() + 16 {
            let keys = &self.keys;
            self.line
                .retain(|(key, turn)| keys.get(key).is_some_and(|q| q.turn == *turn));
        }
    }
}
