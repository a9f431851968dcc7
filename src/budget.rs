//! The process's budget of buffered body bytes (`server.max_buffered_bytes`).
//!
//! Buffering is how sluice keeps a slow client from holding capacity: a request body is read
//! whole before the request waits for a slot, a response body is read whole as fast as the
//! upstream sends it. Both cost memory, so all of it together is bounded: a buffer takes a
//! [`Reservation`] before it holds bytes, and gives them back when dropped. When the budget is
//! spent, bodies stream instead — slower clients then hold their slots again, but memory stays
//! bounded, which is the property that must never give.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes that may be buffered at once, and how many are.
#[derive(Debug)]
pub(crate) struct Budget {
    max: u64,
    used: AtomicU64,
}

/// Bytes taken from a [`Budget`]; given back on drop.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

// === impl Budget ===

impl Budget {
    /// A budget of `max` bytes, none used.
    pub(crate) fn new(max: u64) -> Arc<Self> {
        Arc::new(Budget {
            max,
            used: AtomicU64::new(0),
        })
    }

    /// Takes `bytes` if that many are left (0 always succeeds: a reservation to grow later);
    /// `None` (nothing taken) otherwise.
    pub(crate) fn reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        self.take(bytes).then(|| Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    /// Counts `bytes` that are buffered already (read before they could be refused), even past
    /// the maximum: the budget then shows them, and the next buffers stream instead.
    pub(crate) fn account(self: &Arc<Self>, bytes: u64) -> Reservation {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        Reservation {
            budget: self.clone(),
            bytes,
        }
    }

    /// Bytes buffered now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    fn give(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

// === impl Reservation ===

impl Reservation {
    /// Takes `bytes` more; `false` (nothing taken) when the budget is spent.
    pub(crate) fn grow(&mut self, bytes: u64) -> bool {
        let taken = self.budget.take(bytes);
        if taken {
            self.bytes += bytes;
        }
        taken
    }

    /// Counts `bytes` more that are in memory already, past the maximum if need be (like
    /// [`Budget::account`]); `false` when they did not fit, so that the caller stops reading
    /// ahead.
    pub(crate) fn grow_past(&mut self, bytes: u64) -> bool {
        let within = self.budget.take(bytes);
        if !within {
            self.budget.used.fetch_add(bytes, Ordering::AcqRel);
        }
        self.bytes += bytes;
        within
    }

    /// Gives back `bytes` of the reservation (what was sent on already).
    pub(crate) fn shrink(&mut self, bytes: u64) {
        let bytes = bytes.min(self.bytes);
        self.budget.give(bytes);
        self.bytes -= bytes;
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: bytes already in memory are counted past the maximum, say so, and come back in
    /// full when dropped.
    #[test]
    fn grow_past_counts_what_does_not_fit() {
        let budget = Budget::new(100);
        let mut held = budget.account(0);
        assert!(held.grow_past(80));
        assert!(!held.grow_past(50), "80 + 50 > 100");
        assert_eq!((held.bytes(), budget.used()), (130, 130));
        assert!(budget.reserve(1).is_none(), "spent");
        drop(held);
        assert_eq!(budget.used(), 0);
    }

    /// Pins: reservations never take the budget past its maximum, and every byte comes back
    /// when they are dropped or shrunk.
    #[test]
    fn reservations_stay_within_the_budget() {
        let budget = Budget::new(100);
        let a = budget.reserve(60).expect("60 of 100");
        assert!(budget.reserve(41).is_none(), "60 + 41 > 100");
        let mut b = budget.reserve(0).expect("nothing");
        assert!(b.grow(40));
        assert!(!b.grow(1), "full");
        assert_eq!(budget.used(), 100);
        b.shrink(30);
        assert_eq!((b.bytes(), budget.used()), (10, 70));
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    /// Pins: bytes read before they could be refused are counted even past the maximum, so
    /// that the next reservations fail until they are given back.
    #[test]
    fn accounted_bytes_may_pass_the_maximum() {
        let budget = Budget::new(100);
        let held = budget.account(150);
        assert_eq!(budget.used(), 150);
        assert!(budget.reserve(1).is_none(), "spent");
        drop(held);
        assert!(budget.reserve(100).is_some());
    }
}
