//! One token bucket per configured rate limit: `rate_limits[]` of a route.
//!
//! Used by the rate-limit stage of the pipeline (`pipeline/rate.rs`), right after routing and
//! before the concurrency caps: for each limit of the route the stage calls
//! [`RateLimit::check`] with the request's [`LimitKey`] and rejects with 429 on the first
//! [`Decision::Denied`]. A check takes the limit's `cost` in tokens (1 by default) or none, and
//! never waits; the decisions also feed the `RateLimit` header field.
//!
//! The buckets are governor's GCRA: per key one `AtomicU64`, the *theoretical arrival time* (TAT)
//! of the next request, updated with a CAS loop. A bucket of size `burst` refilling one token per
//! emission interval `T` admits a request of cost `n` at time `now` iff
//! `TAT - (burst - n)·T <= now`, i.e. iff its level `now + burst·T - TAT` (nanoseconds of refill
//! banked) is at least `n·T`, and then moves the TAT to `max(TAT, now) + n·T` (governor's
//! `check_key_n`).
//!
//! # Debt: a cost charged after the response
//!
//! [`RateLimit::charge`] moves a key's TAT further by the tokens an upstream reported
//! (`charge_header`), without a check: the level may go below zero, the bucket is in debt, and
//! every request of the key is denied until the refill has paid the debt back and banked the
//! request's cost (a denial's `retry_after` says how long that is). The TAT is moved at most to
//! `now + (1 + MAX_DEBT_BURSTS)·burst·T` — a debt of at most `MAX_DEBT_BURSTS` × burst tokens —
//! and never back.
//!
//! Keyed limits keep one state per key in a bounded table (`super::table`): at most `max_keys`
//! keys; when a new one comes to a full table, a key whose bucket is full again goes, else the
//! least recently used (sampled LRU), which counts in `sluice_rate_limit_evictions_total`.
//! [`RateLimit::housekeeping`] (an interval task) drops the keys whose bucket is full again,
//! which are indistinguishable from new ones, so that memory also follows the active keys.
//!
//! # `reset`: the exact time to the next token
//!
//! Governor's `StateInformationMiddleware` reports the whole tokens left but not when the next
//! one arrives. This module gets that exactly through governor's public `StateStore` extension
//! point: the store handed to governor is a thin wrapper (`Buckets`) around governor's own
//! stores that, during a check, records the TAT that governor commits and the time governor
//! measured, into the `Probe` the check was called with. From those two, the level of the
//! bucket after the request is known to the nanosecond.

use std::cell::Cell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;

use super::key::LimitKey;
use super::table::KeyTable;
use crate::config::{KeySpec, RateLimitConfig};

/// Largest bucket, as the time an empty bucket takes to refill (2^62 ns ≈ 146 years). Governor
/// stores times as `u64` nanoseconds since the limiter started and computes `burst × T` without
/// overflow checks in release builds; a larger bucket is cut to this size (with a warning)
/// rather than wrapped around. Config validation should reject such limits before they get here.
const MAX_REFILL_NANOS: u64 = 1 << 62;

/// The bucket(s) of one configured rate limit. `Send + Sync`: share it behind an `Arc` (one per
/// route and limit, kept across reloads when the limit is unchanged).
pub struct RateLimit<C: Clock = DefaultClock> {
    /// The limit as configured: name (header items, metrics label), key spec, rate and burst.
    config: RateLimitConfig,
    /// Governor's GCRA over our [`Buckets`]; `StateInformationMiddleware` so that an admitted
    /// request reports the whole tokens left.
    limiter: RateLimiter<Probe, Buckets, C, StateInformationMiddleware>,
    /// The emission interval `T` in nanoseconds: the time one token takes to come back.
    /// Equal to governor's own (same `Duration`, same 1 ns floor).
    emission_nanos: u64,
    /// Bucket size in tokens (`config.burst`, unless cut to [`MAX_REFILL_NANOS`]).
    burst: u32,
    /// Tokens a request takes (`config.cost`, at most `burst`).
    cost: NonZeroU32,
    /// `sluice_rate_limit_evictions_total{route,limit}` (shared with the key table).
    evictions: Counter,
}

/// The outcome of one [`RateLimit::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a denied request must not be forwarded"]
pub enum Decision {
    /// The request took its cost in tokens.
    Admitted {
        /// Whole tokens left in the bucket after this request (`0..=burst - cost`).
        remaining: u32,
        /// Exact time until the bucket holds `remaining + 1` whole tokens, in `(0, T]` for an
        /// emission interval `T`. `ZERO` only if the bucket were full, which cannot happen right
        /// after a request took a token.
        reset: Duration,
    },
    /// The bucket holds less than the request's cost (or is in debt); nothing was taken.
    Denied {
        /// Time until this key's bucket admits one request of the limit's cost (pays back any
        /// debt and banks the cost), from governor's `NotUntil::wait_time_from` (exact with
        /// respect to the clock reading taken right after the decision).
        retry_after: Duration,
    },
}

/// The state store handed to governor: governor's direct state or our bounded key table, plus
/// recording into the [`Probe`] (see the module docs).
enum Buckets {
    /// `key: global`: a single atomic, governor's direct state. Cheaper than a map entry (no shard
    /// lock on the one key every request hits) and never evicted.
    One(InMemoryState),
    /// `key: client_ip` / `header:…`: one state per key, at most `max_keys`.
    PerKey(KeyTable),
}

/// The key governor passes through to [`Buckets`] on a check: the bucket key plus two cells the
/// store fills in. Lives on the caller's stack for one check (no allocation); never stored,
/// hashed or compared (the store uses `key`), the impls below only satisfy governor's bounds.
#[derive(Clone, Debug)]
struct Probe {
    key: LimitKey,
    /// `n·T` (ns) for the `n` tokens governor is asked for: governor's fresh TAT is
    /// `now + n·T`, which is how the store learns `now` without reading the clock.
    weight: u64,
    /// `Some` for a [`RateLimit::charge`]: the store moves the TAT itself instead of running
    /// governor's step.
    charge: Option<Charge>,
    /// The TAT governor committed for an admitted request (ns since the limiter started).
    tat: Cell<Nanos>,
    /// `now + n·T`, where `now` is the time governor measured for the decision (ns since the
    /// limiter started): the TAT a fresh bucket would have got.
    fresh_tat: Cell<Nanos>,
}

/// What a charge does to a TAT: `max(TAT, now) + add`, at most `now + ceiling`, never less
/// than the TAT was (all in ns).
#[derive(Clone, Copy, Debug)]
struct Charge {
    add: u64,
    ceiling: u64,
}

/// The emission interval (at least 1 ns) and the burst of `config`, the burst cut so that a
/// full refill (burst × interval) stays within `max_refill_nanos`. Validation rejects configs
/// beyond these bounds; the cut only keeps the arithmetic safe whatever is passed in.
pub(crate) fn bucket_shape(config: &RateLimitConfig, max_refill_nanos: u64) -> (Duration, u32) {
    let emission = config.rate.emission_interval().max(Duration::from_nanos(1));
    let emission_nanos = u64::try_from(emission.as_nanos()).unwrap_or(u64::MAX);
    let max_burst = u32::try_from(max_refill_nanos / emission_nanos).unwrap_or(u32::MAX);
    (emission, config.burst.get().min(max_burst.max(1)))
}

// === impl RateLimit ===

impl RateLimit {
    /// The bucket(s) for `config`, on governor's default clock (quanta; not tokio's, so
    /// `tokio::time::pause` does not affect it). Evictions are counted in a counter of its own
    /// ([`RateLimit::evictions`]).
    pub fn new(config: &RateLimitConfig) -> Self {
        Self::counting(config, Counter::default())
    }

    /// As [`RateLimit::new`], counting evictions in `evictions` (the route's
    /// `sluice_rate_limit_evictions_total` series).
    pub(crate) fn counting(config: &RateLimitConfig, evictions: Counter) -> Self {
        Self::with_clock(config, DefaultClock::default(), evictions)
    }
}

impl<C: Clock> RateLimit<C> {
    /// The bucket(s) for `config` on `clock` (`FakeRelativeClock` in tests).
    ///
    /// A quota: one token per `rate.emission_interval()` (at least 1 ns), `burst` tokens at most.
    /// `scope: global` limits get a local bucket here; sharing it is another layer's job.
    pub(crate) fn with_clock(config: &RateLimitConfig, clock: C, evictions: Counter) -> Self {
        let (emission, burst) = bucket_shape(config, MAX_REFILL_NANOS);
        let emission_nanos = u64::try_from(emission.as_nanos()).unwrap_or(u64::MAX);
        if burst < config.burst.get() {
            tracing::warn!(
                limit = %config.name,
                configured = config.burst.get(),
                used = burst,
                "burst cut: the bucket would take over a century to refill"
            );
        }
        let quota = Quota::with_period(emission)
            .expect("the emission interval is at least 1 ns")
            .allow_burst(burst.try_into().expect("burst is at least 1"));
        let buckets = match config.key {
            KeySpec::Global => Buckets::One(InMemoryState::default()),
            KeySpec::ClientIp | KeySpec::Header(_) => {
                Buckets::PerKey(KeyTable::new(config.max_keys, evictions.clone()))
            }
        };
        // Validation keeps the cost within the burst; a burst cut above keeps it there too.
        let cost = config
            .cost
            .min(NonZeroU32::new(burst).expect("burst is at least 1"));
        RateLimit {
            config: config.clone(),
            limiter: RateLimiter::new(quota, buckets, clock),
            emission_nanos,
            burst,
            cost,
            evictions,
        }
    }

    /// The limit this was built from.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Takes the limit's `cost` in tokens from `key`'s bucket if it holds that many. Never
    /// waits, never allocates (except the table slot of a key seen for the first time, until
    /// the table is full).
    ///
    /// A `global` limit has one bucket and ignores `key`.
    pub fn check(&self, key: &LimitKey) -> Decision {
        let probe = self.probe(key, self.cost.get(), None);
        match self.limiter.check_key_n(&probe, self.cost) {
            Ok(Ok(state)) => self.admitted(&probe, state.remaining_burst_capacity()),
            Ok(Err(not_until)) => Decision::Denied {
                retry_after: not_until.wait_time_from(self.limiter.clock().now()),
            },
            Err(_) => unreachable!("the cost is at most the burst (see `with_clock`)"),
        }
    }

    /// Charges `tokens` more to `key`'s bucket, after the request was admitted (an upstream's
    /// `charge_header`, less the `cost` already taken): the bucket may go into debt, at most
    /// [`RateLimitConfig::MAX_DEBT_BURSTS`] × burst tokens (see the module docs). Never waits.
    /// A key the table no longer holds is inserted, in debt.
    pub fn charge(&self, key: &LimitKey, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let t = self.emission_nanos;
        let capacity = t * u64::from(self.burst);
        let ceiling = capacity.saturating_mul(u64::from(RateLimitConfig::MAX_DEBT_BURSTS) + 1);
        let charge = Charge {
            add: tokens.saturating_mul(t).min(ceiling),
            ceiling,
        };
        // A charge always succeeds: the store returns governor's admission of a fresh bucket
        // (one token, which it does not take) alongside the TAT it sets.
        let _ = self.limiter.check_key(&self.probe(key, 1, Some(charge)));
    }

    /// The key governor hands to the store, for a call asking for `n` tokens.
    fn probe(&self, key: &LimitKey, n: u32, charge: Option<Charge>) -> Probe {
        Probe {
            key: *key,
            weight: self.emission_nanos * u64::from(n),
            charge,
            tat: Cell::new(Nanos::default()),
            fresh_tat: Cell::new(Nanos::default()),
        }
    }

    /// Forgets the keys whose bucket has been full for at least one emission interval (governor's
    /// `retain_recent`), then gives the freed table capacity back (`shrink_to_fit`). A forgotten
    /// key behaves exactly like a new one, so this changes no decision: memory follows the keys
    /// active within about one refill time (burst × emission interval), and never exceeds
    /// `max_keys`. Takes each table shard's write lock in turn; call it from a housekeeping
    /// task, not per request.
    pub fn housekeeping(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys tracked now: the `sluice_rate_limit_keys` gauge, at most `max_keys`. Always 1 for a
    /// `global` limit (its single bucket).
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Keys still refilling that were evicted because the table was full: the limit's eviction
    /// counter (0 for a `global` limit).
    pub fn evictions(&self) -> u64 {
        self.evictions.get()
    }

    /// No key tracked (never true for a `global` limit).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The decision for an admitted request, from what the store recorded.
    ///
    /// After the request the bucket holds `level / T` tokens, where
    /// `level = now + burst·T - TAT` (nanoseconds of refill banked, at most `burst·T`; this is
    /// governor's own `remaining_burst_capacity` before its division by `T`).
    fn admitted(&self, probe: &Probe, remaining: u32) -> Decision {
        let t = self.emission_nanos;
        let capacity = t * u64::from(self.burst);
        // now + burst·T = (now + cost·T) + (burst - cost)·T
        let level = (probe.fresh_tat.get().as_u64() + (capacity - probe.weight))
            .saturating_sub(probe.tat.get().as_u64())
            .min(capacity);
        let decision = Decision::admitted(level, t, self.burst);
        debug_assert!(
            matches!(decision, Decision::Admitted { remaining: r, .. } if r == remaining),
            "governor's remaining_burst_capacity and the recorded TAT disagree"
        );
        decision
    }
}

// === impl Decision ===

impl Decision {
    /// The decision for an admitted request that left `level` nanoseconds of refill in a bucket
    /// of `burst` tokens refilling one per `t` ns: `remaining = ⌊level / t⌋` whole tokens, and the
    /// next whole token is `(remaining + 1)·t − level` away (zero if the bucket is full). The
    /// local buckets and the Redis script both come down to this, so both give the same fields.
    pub(crate) fn admitted(level: u64, t: u64, burst: u32) -> Decision {
        let level = level.min(t.saturating_mul(u64::from(burst)));
        let remaining = u32::try_from(level / t.max(1))
            .unwrap_or(u32::MAX)
            .min(burst);
        let reset = if remaining >= burst {
            Duration::ZERO
        } else {
            Duration::from_nanos((u64::from(remaining) + 1) * t - level)
        };
        Decision::Admitted { remaining, reset }
    }
}

impl<C: Clock> fmt::Debug for RateLimit<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("name", &self.config.name)
            .field("rate", &self.config.rate)
            .field("burst", &self.burst)
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

// === impl Buckets ===

impl StateStore for Buckets {
    type Key = Probe;

    fn measure_and_replace<T, F, E>(&self, probe: &Probe, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // `f` is governor's GCRA step. It may run several times (CAS retries); the last `Ok` is
        // the TAT that got stored whenever the outcome is `Ok`.
        let record = |tat: Option<Nanos>| {
            let decision = f(tat);
            if let Ok((_, next)) = &decision {
                probe.tat.set(*next);
            }
            decision
        };
        // `f` is pure (it captured governor's clock reading; the middleware only builds a
        // snapshot). On a fresh bucket (`None`) it admits and returns `now + n·T`: that is how
        // we learn the `now` governor decided at without reading the clock again.
        let fresh = f(None).ok().map(|(_, fresh)| fresh);
        // A fresh bucket admits any cost up to the burst, so `fresh` is there; were it not, 0
        // would only make this key look old to the LRU.
        let now = fresh.map_or(0, |f| f.as_u64().saturating_sub(probe.weight));
        if let Some(charge) = probe.charge {
            // Governor's admission of a fresh bucket is returned as it is; the TAT is ours.
            let charged = |tat: Option<Nanos>| {
                let (out, _) = f(None)?;
                Ok((out, charge.apply(tat.map_or(0, Nanos::as_u64), now).into()))
            };
            return self.update(&probe.key, now, charged);
        }
        let outcome = self.update(&probe.key, now, record);
        if let (true, Some(fresh)) = (outcome.is_ok(), fresh) {
            probe.fresh_tat.set(fresh);
        }
        outcome
    }
}

impl Buckets {
    /// Governor's compare-and-swap step `f` on `key`'s state (the one state of a `global` key).
    fn update<T, E>(
        &self,
        key: &LimitKey,
        now: u64,
        f: impl Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    ) -> Result<T, E> {
        match self {
            Buckets::One(state) => state.measure_and_replace(&NotKeyed::NonKey, f),
            Buckets::PerKey(table) => table.update(key, now, f),
        }
    }
}

impl ShrinkableKeyedStateStore<Probe> for Buckets {
    fn retain_recent(&self, drop_below: Nanos) {
        if let Buckets::PerKey(table) = self {
            // governor's rule: a state at or below `drop_below` is a full bucket.
            table.retain(|tat| tat > drop_below.as_u64());
        }
    }

    fn shrink_to_fit(&self) {
        if let Buckets::PerKey(table) = self {
            table.shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        match self {
            Buckets::One(_) => 1,
            Buckets::PerKey(table) => table.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl Charge ===

impl Charge {
    /// The TAT after charging a bucket whose TAT is `tat` at `now` (ns since the limiter
    /// started). Saturating: the ceiling may be near `u64::MAX` for a bucket of a century.
    fn apply(self, tat: u64, now: u64) -> u64 {
        let charged = tat.max(now).saturating_add(self.add);
        // Kept below 2^63 so that governor's `TAT + (n - 1)·T` cannot overflow.
        let ceiling = now.saturating_add(self.ceiling).min(1 << 63);
        charged.min(ceiling).max(tat)
    }
}

// === impl Probe ===

impl PartialEq for Probe {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Probe {}

impl Hash for Probe {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

#[cfg(test)]
mod tests;
