//! Limits: what decides whether a request may go on, and why not.
//!
//! The contract's order, which `crate::pipeline` follows: every rate limit of the route
//! ([`rate`], cheap, never waits), then the route's concurrency cap, then the upstream's
//! ([`concurrency`], which may queue, bounded in depth and time). A request rejected by one
//! check consumes nothing from the checks after it.
//!
//! - [`key`]: which bucket a request counts against (global, client IP, header value).
//! - [`rate`]: token buckets (GCRA, governor) and their housekeeping.
//! - `table`: the bounded per-key tables of keyed limits (`max_keys`, sampled LRU).
//! - [`headers`]: `RateLimit-Policy`, `RateLimit` and `Retry-After` values.
//! - [`concurrency`]: caps with bounded priority queues and shedding.
//! - [`adaptive`]: the size of an `adaptive:` cap, from the upstream's latency.
//! - `global`: rate limits with `scope: global`, whose buckets live in Redis and are shared by
//!   every instance (a stand-in without value in a build without the cargo feature `redis`).

pub mod adaptive;
pub mod concurrency;
// The seam of the cargo feature `redis` (with `crate::store` and `crate::defer`): without it, a
// stand-in with the same names and no value.
#[cfg(feature = "redis")]
pub mod global;
#[cfg(not(feature = "redis"))]
#[path = "limit/global/absent.rs"]
pub mod global;
pub mod headers;
pub mod key;
pub mod rate;
mod table;

pub use self::adaptive::Sample;
pub use self::concurrency::{ConcurrencyLimit, Permit, Rejected};
pub use self::key::{KeyExtractor, LimitKey};
pub use self::rate::{Decision, RateLimit};

use crate::metrics::InflightGuard;

/// Shards of every key table (the buckets of a keyed limit, the denial cache of a global
/// limit). The housekeeping pass walks a table shard by shard, holding each shard's write lock
/// while it walks it, and a request whose key falls in that shard waits — blocking its worker
/// thread. With DashMap's default (4 × CPUs: 8 shards on 2 cores) a table of 1M keys has 125k
/// keys a shard and holds a lock 1–3 ms; with 256 shards, about 4k keys and tens of µs. The
/// cost: 256 × 128 bytes (one cache-padded lock each) = 32 KiB per keyed limit, empty or not.
pub(crate) const KEY_TABLE_SHARDS: usize = 256;

/// A `scope: global` limit could not ask Redis and `store.redis.on_error` is `deny`: the
/// request gets 503 `store-unavailable`. (With `local` or `allow` a failure still decides; see
/// `global`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the shared store did not answer and on_error is deny")]
pub(crate) struct StoreUnavailable;

/// What a forwarded request holds while it is in flight: its route's and its upstream's
/// concurrency slots, and its presence in the `sluice_inflight` gauges.
///
/// Moved into the response body so all of it is released when the body has been sent whole,
/// when it fails, or when the client goes away — whichever comes first (dropping releases).
#[derive(Debug, Default)]
pub(crate) struct Slots {
    // Dropped in the order declared: the upstream's slot before the route's, the reverse of
    // taking them. A request handed this route slot goes on to the upstream cap at once (on
    // another worker thread, before this drop has finished), and must find this request's
    // upstream slot free already, or it is refused with the upstream's room about to be free.
    /// The upstream cap's permit.
    pub(crate) upstream: Option<Permit>,
    /// The route cap's permit.
    pub(crate) route: Option<Permit>,
    /// `sluice_inflight{upstream}`.
    pub(crate) upstream_gauge: Option<InflightGuard>,
    /// `sluice_inflight{route}`.
    pub(crate) route_gauge: Option<InflightGuard>,
}

// === impl Slots ===

impl Slots {
    /// Tells both caps what the upstream did with the request (see [`Permit::record`]): both
    /// learn the upstream's own latency, not the time spent queued at either cap, which is
    /// sluice's doing.
    pub(crate) fn record(&mut self, sample: Sample) {
        for permit in [&mut self.route, &mut self.upstream].into_iter().flatten() {
            permit.record(sample);
        }
    }
}
