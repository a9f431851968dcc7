//! Bounded key tables: per-key state, at most `max_keys` keys. One table serves both kinds of
//! limit: a keyed local rate limit keeps each bucket's TAT (an `AtomicU64`, updated lock-free),
//! a global limit its memory of leases and denials (`limit/global/memo.rs`, a small struct
//! behind a `Mutex`). What a state must tell the table is [`KeyState::ends`]: when it runs out.
//!
//! Keys are chosen by clients — an address in a /64 they own, an API key they make up — so an
//! unbounded table is memory anyone can fill: 20k new keys a second on a limit of 1/h is 72M
//! keys within the hour. NGINX's `limit_req_zone` and HAProxy's stick tables have a fixed size
//! and evict the least recently used entry; so does this table.
//!
//! # Layout
//!
//! `N` shards (256, or 4 × CPUs rounded up to a power of two when that is more; fewer for small
//! tables so that each holds at least 64 keys), each behind its own `RwLock`; a key's shard is picked
//! by a keyed SipHash of the key, so a client cannot aim its keys at one shard. The shards'
//! capacities add up to exactly `max_keys`. A shard is a dense `Vec` of slots — key, state
//! (`AtomicU64`), last use (`AtomicU64`) — and a hashbrown `HashTable<u32>` from the key's hash
//! to its slot: the key is stored once and the index costs 4 bytes per key (plus hashbrown's
//! control byte and free buckets). The slot vector grows only up to the shard's capacity.
//!
//! A check of a known key takes the shard's read lock, finds the slot, updates its state with a
//! compare-and-swap loop (governor's, the same as `InMemoryState`) and stamps its last use: no
//! allocation, no write lock. A new key takes the write lock.
//!
//! # Eviction: sampled LRU, stale entries first
//!
//! When a new key comes to a full shard, one slot is reused for it:
//!
//! 1. a slot whose state has ended (`ends ≤ now`: the bucket is full again, the denial or the
//!    lease has run out) is taken first — it is indistinguishable from a fresh key, so evicting it
//!    loses nothing;
//! 2. otherwise the least recently used of [`SAMPLES`] slots picked at random (all of them when
//!    the shard holds no more): Redis' approximation of LRU. A key in active use is evicted
//!    only if every sampled slot was used more recently than it; for a key used more recently
//!    than half of the shard, that is 2^-15 per eviction.
//!
//! Each eviction of a live key (step 2) counts in `sluice_rate_limit_evictions_total{route,limit}`:
//! state was lost because the table is too small. A stale entry taken in step 1 is not counted,
//! as housekeeping's drops are not: nothing was lost. An evicted key that comes back starts
//! afresh (a full bucket), so `max_keys` should exceed the keys active within one refill time.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use governor::nanos::Nanos;
use hashbrown::HashTable;
use prometheus_client::metrics::counter::Counter;

use super::key::LimitKey;

/// Slots compared per eviction when a shard is full.
pub(crate) const SAMPLES: usize = 16;

/// A shard holds at least this many keys (unless `max_keys` is smaller): sampling needs a
/// few dozen entries, and small tables stay balanced.
const MIN_PER_SHARD: usize = 64;

/// A key's state in a [`KeyTable`]: a new key starts from `Default`.
pub(crate) trait KeyState: Default + Send + Sync {
    /// When what it holds runs out, in the table owner's nanoseconds: a state ended at `now` is
    /// stale (evicting it loses nothing), and `u64::MAX` never ends.
    fn ends(&self) -> u64;
}

/// A rate limit's TAT (or the end of a denial): 0 = no state yet, ended from the start.
impl KeyState for AtomicU64 {
    fn ends(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
}

/// Per-key states, at most `max_keys` of them. `Send + Sync`.
pub(crate) struct KeyTable<S = AtomicU64> {
    shards: Box<[RwLock<Shard<S>>]>,
    /// Keyed SipHash: clients choose keys, so they must not be able to choose shards or
    /// collisions.
    hasher: RandomState,
    /// `sluice_rate_limit_evictions_total` of the limit: evictions of live keys.
    evictions: Counter,
}

/// One shard: the slots and their index.
struct Shard<S> {
    /// Slot positions by key hash.
    index: HashTable<u32>,
    /// Dense; at most `capacity` long.
    slots: Vec<Slot<S>>,
    /// This shard's share of `max_keys`.
    capacity: usize,
    /// xorshift64 state for sampling; only touched under the write lock.
    rng: u64,
}

/// One key's state.
struct Slot<S> {
    key: LimitKey,
    /// The limiter's state, e.g. governor's TAT (0 = none yet) or the end of a denial, in the
    /// table owner's nanoseconds.
    state: S,
    /// When the key was last checked, in the same nanoseconds: the LRU order.
    used: AtomicU64,
}

// === impl KeyTable ===

impl<S: KeyState> KeyTable<S> {
    /// An empty table for at most `max_keys` keys, counting evictions in `evictions`.
    pub(crate) fn new(max_keys: NonZeroUsize, evictions: Counter) -> Self {
        let max_keys = max_keys.get();
        let n = shard_count(max_keys);
        let hasher = RandomState::new();
        let shards = (0..n)
            .map(|i| {
                RwLock::new(Shard {
                    index: HashTable::new(),
                    slots: Vec::new(),
                    capacity: max_keys / n + usize::from(i < max_keys % n),
                    // Odd, so never the xorshift fixed point 0.
                    rng: hasher.hash_one(i) | 1,
                })
            })
            .collect();
        KeyTable {
            shards,
            hasher,
            evictions,
        }
    }

    /// Runs `f` on `key`'s state, inserting the key first (a `Default` state, evicting another
    /// key if the shard is full) when the table does not hold it. `now` is the current time in
    /// the states' nanoseconds: the key's last use, and what tells ended states apart.
    pub(crate) fn with<R>(&self, key: &LimitKey, now: u64, f: impl FnOnce(&S) -> R) -> R {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        {
            let s = read(shard);
            if let Some(slot) = s.find(hash, key) {
                slot.used.store(now, Ordering::Relaxed);
                return f(&slot.state);
            }
        }
        let mut s = write(shard);
        let at = match s.position(hash, key) {
            Some(at) => at,
            None => s.insert(hash, *key, now, &self.hasher, &self.evictions),
        };
        let slot = &s.slots[at];
        slot.used.store(now, Ordering::Relaxed);
        f(&slot.state)
    }

    /// Runs `f` on `key`'s state if the table holds the key (stamping its use); `None` if not.
    // Only a global limit's leases (and tests) look without inserting: unused without Redis.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn existing<R>(
        &self,
        key: &LimitKey,
        now: u64,
        f: impl FnOnce(&S) -> R,
    ) -> Option<R> {
        let hash = self.hasher.hash_one(key);
        let s = read(self.shard(hash));
        let slot = s.find(hash, key)?;
        slot.used.store(now, Ordering::Relaxed);
        Some(f(&slot.state))
    }

    /// Keeps the keys whose state `keep` accepts; the others are dropped (not counted as
    /// evictions: they are gone because they no longer matter). Takes each shard's write lock
    /// in turn.
    pub(crate) fn retain_states(&self, keep: impl Fn(&S) -> bool) {
        for shard in &*self.shards {
            write(shard).retain(&keep, &self.hasher);
        }
    }

    /// Gives back the memory of dropped keys.
    pub(crate) fn shrink_to_fit(&self) {
        for shard in &*self.shards {
            let mut s = write(shard);
            let Shard { index, slots, .. } = &mut *s;
            slots.shrink_to_fit();
            index.shrink_to_fit(|&at| self.hasher.hash_one(slots[at as usize].key));
        }
    }

    /// Keys held now.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).slots.len()).sum()
    }

    /// Live keys evicted since the table was built.
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.get()
    }

    fn shard(&self, hash: u64) -> &RwLock<Shard<S>> {
        // Bits 40.. pick the shard: hashbrown uses the top 7 bits and the low bits itself.
        &self.shards[(hash >> 40) as usize & (self.shards.len() - 1)]
    }
}

impl KeyTable<AtomicU64> {
    /// Runs `f` — governor's GCRA step: the old state (`None` for a new key) to the outcome and
    /// the new state — on `key`'s state until its compare-and-swap succeeds, as governor's own
    /// stores do. A new key is inserted first, evicting another if the shard is full.
    pub(crate) fn update<T, E>(
        &self,
        key: &LimitKey,
        now: u64,
        f: impl Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    ) -> Result<T, E> {
        self.with(key, now, |state| compare_and_swap(state, f))
    }

    /// `key`'s state, if the table holds it (stamping its use).
    #[cfg(test)]
    pub(crate) fn get(&self, key: &LimitKey, now: u64) -> Option<u64> {
        self.existing(key, now, |state| state.load(Ordering::Acquire))
    }

    /// Sets `key`'s state to `value`, inserting the key (and evicting another) if needed.
    #[cfg(test)]
    pub(crate) fn set(&self, key: &LimitKey, value: u64, now: u64) {
        let _ = self.update(key, now, |_| Ok::<_, ()>(((), Nanos::from(value))));
    }

    /// [`KeyTable::retain_states`] on the states' values.
    pub(crate) fn retain(&self, keep: impl Fn(u64) -> bool) {
        self.retain_states(|state| keep(state.load(Ordering::Acquire)));
    }
}

impl<S: KeyState> fmt::Debug for KeyTable<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyTable")
            .field("shards", &self.shards.len())
            .field("keys", &self.len())
            .field("evictions", &self.evictions())
            .finish_non_exhaustive()
    }
}

/// `std` locks: critical sections are short and never `.await`. A panic inside one cannot
/// leave a shard inconsistent in a way that matters more than losing the service, so a
/// poisoned lock is used as it is.
fn read<S>(shard: &RwLock<Shard<S>>) -> RwLockReadGuard<'_, Shard<S>> {
    shard.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<S>(shard: &RwLock<Shard<S>>) -> RwLockWriteGuard<'_, Shard<S>> {
    shard.write().unwrap_or_else(PoisonError::into_inner)
}

/// 4 × CPUs rounded up to a power of two (DashMap's default), but no more than leaves
/// [`MIN_PER_SHARD`] keys to each shard.
fn shard_count(max_keys: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    // At least KEY_TABLE_SHARDS: housekeeping takes one shard's write lock at a time, and a
    // request whose key is in that shard waits for it; small shards keep that wait short.
    let wanted = (cpus * 4).next_power_of_two().max(super::KEY_TABLE_SHARDS);
    let most = (max_keys / MIN_PER_SHARD).max(1);
    wanted.min(1 << most.ilog2())
}

// === impl Shard ===

impl<S: KeyState> Shard<S> {
    fn position(&self, hash: u64, key: &LimitKey) -> Option<usize> {
        self.index
            .find(hash, |&at| self.slots[at as usize].key == *key)
            .map(|&at| at as usize)
    }

    fn find(&self, hash: u64, key: &LimitKey) -> Option<&Slot<S>> {
        self.position(hash, key).map(|at| &self.slots[at])
    }

    /// Makes room for `key` and returns its slot.
    fn insert(
        &mut self,
        hash: u64,
        key: LimitKey,
        now: u64,
        hasher: &RandomState,
        evictions: &Counter,
    ) -> usize {
        let fresh = Slot {
            key,
            state: S::default(),
            used: AtomicU64::new(now),
        };
        let at = if self.slots.len() < self.capacity {
            if self.slots.len() == self.slots.capacity() {
                // Grow by doubling, but never past the capacity.
                let more = self
                    .slots
                    .len()
                    .max(8)
                    .min(self.capacity - self.slots.len());
                self.slots.reserve_exact(more);
            }
            self.slots.push(fresh);
            self.slots.len() - 1
        } else {
            let (at, stale) = self.victim(now);
            let old = hasher.hash_one(self.slots[at].key);
            if let Ok(entry) = self.index.find_entry(old, |&i| i as usize == at) {
                entry.remove();
            }
            self.slots[at] = fresh;
            if !stale {
                evictions.inc();
            }
            at
        };
        let Shard { index, slots, .. } = self;
        // Positions fit in u32: a shard holds at most max_keys ≤ 100,000,000 < 2^32 keys.
        index.insert_unique(hash, at as u32, |&i| hasher.hash_one(slots[i as usize].key));
        at
    }

    /// The slot to reuse in a full shard, and whether it is stale: a stale one if the sample
    /// holds one, else the least recently used of [`SAMPLES`] picked at random (of all when
    /// there are no more).
    fn victim(&mut self, now: u64) -> (usize, bool) {
        let n = self.slots.len();
        let mut best = 0;
        let mut best_used = u64::MAX;
        for k in 0..SAMPLES.min(n) {
            let at = if n <= SAMPLES {
                k
            } else {
                (self.next_random() % n as u64) as usize
            };
            let slot = &self.slots[at];
            if slot.state.ends() <= now {
                return (at, true);
            }
            let used = slot.used.load(Ordering::Relaxed);
            if used < best_used {
                best = at;
                best_used = used;
            }
        }
        (best, false)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: plenty for picking samples; the seed is keyed per process.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Drops the slots whose state `keep` refuses, keeping the slot vector dense: the last
    /// slot moves into each hole, and its index entry follows.
    fn retain(&mut self, keep: &impl Fn(&S) -> bool, hasher: &RandomState) {
        let mut at = 0;
        while at < self.slots.len() {
            if keep(&self.slots[at].state) {
                at += 1;
                continue;
            }
            let gone = hasher.hash_one(self.slots[at].key);
            if let Ok(entry) = self.index.find_entry(gone, |&i| i as usize == at) {
                entry.remove();
            }
            let last = self.slots.len() - 1;
            self.slots.swap_remove(at);
            if at < last {
                let moved = hasher.hash_one(self.slots[at].key);
                if let Some(i) = self.index.find_mut(moved, |&i| i as usize == last) {
                    *i = at as u32;
                }
            }
        }
    }
}

/// Governor's compare-and-swap loop over a TAT (0 = no state yet).
fn compare_and_swap<T, E>(
    state: &AtomicU64,
    f: impl Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
) -> Result<T, E> {
    let tat = |raw: u64| (raw != 0).then(|| Nanos::from(raw));
    let mut prev = state.load(Ordering::Acquire);
    loop {
        let (out, next) = f(tat(prev))?;
        match state.compare_exchange_weak(prev, next.as_u64(), Ordering::Release, Ordering::Relaxed)
        {
            Ok(_) => return Ok(out),
            Err(actual) => prev = actual,
        }
    }
}

#[cfg(test)]
mod tests;
