//! What one instance remembers of a global limit's keys between Redis calls: denials, which
//! hold until their `retry_after` (exact, see the parent module), and leased tokens, spent
//! locally until they run out or expire. They live in the same bounded key table as a local
//! limit's buckets (`limit::table`): at most the limit's `max_keys` keys, what has run out
//! evicted first, then the least recently used of a sample; a live entry evicted to make room
//! counts in `sluice_rate_limit_evictions_total`. Evicting is safe either way: a forgotten
//! denial means one more call to Redis, which denies again; forgotten leased tokens are not
//! spent (the fleet admits fewer, never more).
//!
//! # Leases
//!
//! With `lease: N`, the first request of a key asks Redis for N tokens at once, takes one and
//! keeps the rest here. The next requests take from them without a round trip. When a request
//! leaves `N / 4` or fewer, it asks for `N − left` more in the background (its own answer is
//! already decided), so a key under steady load rarely waits for Redis. One call per key is in
//! flight at a time (`refilling`): requests that find the lease empty while one is in flight
//! ask Redis for their own single token. So this instance holds at most N tokens of a key at
//! any time, and N instances exceed the limit by at most N × `lease` tokens (those held, not
//! yet spent, when the bucket runs dry).
//!
//! With a `cost` of `c` tokens a request, a leased admission takes `c` of them; fewer than `c`
//! left serve no request (they stay until they expire or a refill tops them up).
//!
//! Leased tokens expire `ttl` after they were granted (unspent ones are dropped, never given
//! back): an instance that stops getting a key's requests does not sit on its tokens.

use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::LimitKey;
use crate::limit::table::{KeyState, KeyTable};

/// What is remembered of one key. Times are ns since the table's epoch.
#[derive(Clone, Copy, Debug, Default)]
struct Memo {
    /// Leased tokens not spent yet.
    left: u32,
    /// A call for more tokens is in flight: the only one for this key.
    refilling: bool,
    /// Leased tokens are not spent at or after this.
    expires: u64,
    /// The bucket's TAT as Redis left it at the last grant, on this instance's clock: what the
    /// `RateLimit` fields of leased admissions are computed from.
    tat: u64,
    /// Redis denied the key: no token can be had before this (0: no denial).
    denied_until: u64,
}

/// The table of one global limit.
pub(super) struct Memos {
    /// Per key, at most `max_keys`.
    table: KeyTable<Mutex<Memo>>,
    /// The origin of the [`Memo`] times.
    epoch: Instant,
    /// `lease`: tokens asked per refill (0: no lease, every admission asks for one).
    lease: u32,
    /// A request that leaves this many tokens or fewer starts a refill in the background.
    low_water: u32,
    /// How long leased tokens may be spent, ns.
    ttl: u64,
    /// Leased tokens a request takes: the limit's `cost` (at most `lease`).
    cost: u32,
}

/// What a request does, decided from the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Taken {
    /// Admitted with a leased token: `left` remain; the bucket in Redis was `ahead` ns from
    /// full at the last grant, less the time since. `refill`: ask Redis for that many tokens in
    /// the background (this request's answer does not wait for it).
    Leased {
        left: u32,
        ahead: u64,
        refill: Option<u32>,
    },
    /// Denied from memory: Redis denied the key earlier, and this much time is still to run.
    Denied(Duration),
    /// Ask Redis for `want` tokens now. `refill`: the call is the key's refill (settle it with
    /// [`Memos::settle`] as a refill, or let a [`Refill`] guard do it).
    Ask { want: u32, refill: bool },
}

/// A call's result, for the table.
#[derive(Clone, Copy, Debug)]
pub(super) enum Settle {
    /// Granted: the caller used one token, `left` more are to keep; the bucket is `ahead` ns
    /// from full.
    Granted { left: u32, ahead: u64 },
    /// Denied: no token before `retry_after` from now.
    Denied(Duration),
    /// No answer (Redis failed, or the call was abandoned).
    Failed,
}

/// Settles a key's refill when dropped unsettled (the request's future was dropped mid-call),
/// so that the key does not stay `refilling` for good.
pub(super) struct Refill<'a> {
    memos: &'a Memos,
    key: LimitKey,
    settled: bool,
}

// === impl Memo ===

impl Memo {
    /// Still worth keeping at `now`.
    fn live(&self, now: u64) -> bool {
        self.refilling || (self.left > 0 && self.expires > now) || self.denied_until > now
    }

    /// When what it holds runs out (eviction takes the soonest first).
    fn ends(&self) -> u64 {
        let lease = if self.left > 0 { self.expires } else { 0 };
        lease.max(self.denied_until)
    }
}

/// A key's memo ends when its lease and its denial have run out; one being refilled has a
/// call in flight, and does not end before the call is settled.
impl KeyState for Mutex<Memo> {
    fn ends(&self) -> u64 {
        let memo = lock(self);
        if memo.refilling {
            u64::MAX
        } else {
            memo.ends()
        }
    }
}

/// A memo's lock is held for a few field updates, never across an `.await`; a poisoned one is
/// used as it is.
fn lock(memo: &Mutex<Memo>) -> MutexGuard<'_, Memo> {
    memo.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Memos ===

impl Memos {
    /// The table of a limit with `lease` (0: none) whose leased tokens live for `ttl`, of at
    /// most `cap` keys.
    pub(super) fn new(lease: u32, ttl: Duration, cap: usize, evictions: Counter) -> Memos {
        Memos {
            table: KeyTable::new(
                NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN),
                evictions,
            ),
            epoch: Instant::now(),
            lease,
            low_water: lease / 4,
            ttl: u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX),
            cost: 1,
        }
    }

    /// The same table for a limit whose requests take `cost` tokens (default 1).
    pub(super) fn costing(self, cost: u32) -> Memos {
        Memos {
            cost: cost.clamp(1, self.lease.max(1)),
            ..self
        }
    }

    /// What a request of `key` does now; takes a leased token if there is one. Without a
    /// lease, a key the table does not hold asks Redis for its token and is not added (only a
    /// denial is worth remembering); with one, a new key starts its first refill.
    pub(super) fn take(&self, key: &LimitKey) -> Taken {
        let now = self.now();
        let take = |memo: &Mutex<Memo>| self.take_from(&mut lock(memo), now);
        if self.lease == 0 {
            return self.table.existing(key, now, take).unwrap_or(Taken::Ask {
                want: 1,
                refill: false,
            });
        }
        self.table.with(key, now, take)
    }

    /// A guard that settles `key`'s refill as failed unless [`Refill::settle`] is called.
    pub(super) fn refill(&self, key: LimitKey) -> Refill<'_> {
        Refill {
            memos: self,
            key,
            settled: false,
        }
    }

    /// Records a call's `outcome` for `key`; `refill` when the call was the key's refill.
    pub(super) fn settle(&self, key: &LimitKey, refill: bool, outcome: Settle) {
        let now = self.now();
        match outcome {
            // A single token was asked for and used: nothing to keep.
            Settle::Granted { .. } if !refill => {}
            Settle::Granted { left, ahead } => {
                let ttl = self.ttl;
                self.update(key, now, |memo| {
                    memo.left = memo.left.saturating_add(left);
                    memo.expires = now.saturating_add(ttl);
                    memo.tat = now.saturating_add(ahead);
                    memo.refilling = false;
                });
            }
            Settle::Denied(retry_after) => {
                let until =
                    now.saturating_add(u64::try_from(retry_after.as_nanos()).unwrap_or(u64::MAX));
                self.update(key, now, |memo| {
                    memo.denied_until = memo.denied_until.max(until);
                    memo.refilling &= !refill;
                });
            }
            Settle::Failed if refill => {
                self.table
                    .existing(key, now, |memo| lock(memo).refilling = false);
            }
            Settle::Failed => {}
        }
    }

    /// Forgets what has run out. Call it from the housekeeping task.
    pub(super) fn housekeeping(&self) {
        let now = self.now();
        self.table.retain_states(|memo| lock(memo).live(now));
        self.table.shrink_to_fit();
    }

    /// Keys remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Leased tokens held for `key` now (expired ones count as none).
    #[cfg(test)]
    pub(super) fn held(&self, key: &LimitKey) -> u32 {
        let now = self.now();
        self.table
            .existing(key, now, |memo| {
                let memo = lock(memo);
                if memo.expires > now {
                    memo.left
                } else {
                    0
                }
            })
            .unwrap_or(0)
    }

    fn now(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.epoch)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    /// [`Memos::take`] on a key that has an entry.
    fn take_from(&self, memo: &mut Memo, now: u64) -> Taken {
        if memo.left >= self.cost && now < memo.expires {
            memo.left -= self.cost;
            // No refill while Redis is known to deny: it would be denied.
            let refill = (memo.left <= self.low_water
                && !memo.refilling
                && now >= memo.denied_until)
                .then(|| {
                    memo.refilling = true;
                    self.lease - memo.left
                });
            return Taken::Leased {
                left: memo.left,
                ahead: memo.tat.saturating_sub(now),
                refill,
            };
        }
        // Expired tokens are dropped; fewer than a request's cost stay for a refill to top up.
        if now >= memo.expires {
            memo.left = 0;
        }
        if now < memo.denied_until {
            return Taken::Denied(Duration::from_nanos(memo.denied_until - now));
        }
        if self.lease == 0 || memo.refilling {
            return Taken::Ask {
                want: 1,
                refill: false,
            };
        }
        memo.refilling = true;
        Taken::Ask {
            want: self.lease,
            refill: true,
        }
    }

    /// Applies `change` to `key`'s entry, creating it (room made first) if there is none.
    fn update(&self, key: &LimitKey, now: u64, change: impl FnOnce(&mut Memo)) {
        self.table.with(key, now, |memo| change(&mut lock(memo)));
    }
}

// === impl Refill ===

impl Refill<'_> {
    /// Records the refill's outcome.
    pub(super) fn settle(mut self, outcome: Settle) {
        self.settled = true;
        self.memos.settle(&self.key, true, outcome);
    }
}

impl Drop for Refill<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.memos.settle(&self.key, true, Settle::Failed);
        }
    }
}
