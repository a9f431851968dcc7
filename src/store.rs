//! The connection to `store.redis` — one server or a Redis Cluster — and its circuit breakers,
//! shared by what keeps state in Redis: the global rate limits (`crate::limit::global`, whose
//! docs give the failure policy) and deferred delivery (`crate::defer`).
//!
//! One [`Store`] per runtime (kept by the next one while `store.redis` is unchanged): one redis-rs
//! `ConnectionManager` (one multiplexed connection) for a server, or one async
//! `ClusterConnection` (one multiplexed connection per node, slot routing, MOVED/ASK and
//! reconnection handled by redis-rs) for a cluster. The first connection is made by a task, so
//! sluice starts while Redis is down. Every call on it is short: nothing blocks on the shared
//! connection, whose calls are pipelined — a blocking read (`XREADGROUP … BLOCK`) would hold up
//! every request's call behind it. The deliverers of deferred delivery open connections of
//! their own for those ([`open_dedicated`]).
//!
//! # Breakers per slot range
//!
//! A server has one breaker. A cluster has one per [`SLOTS_PER_BREAKER`] hash slots: when a node
//! is down, the keys of its slots apply `on_error` at once (one probe per [`PROBE_INTERVAL`] per
//! range), while the keys served by the other nodes keep using Redis. Nodes own contiguous slot
//! ranges (`redis-cli --cluster create` and resharding move ranges), so a range of 64 slots
//! belongs to one node except at the few boundaries between two nodes' ranges. A finer breaker
//! (per slot) would let up to 16384 probes per interval through to a dead node; a coarser one
//! (per store) would fail the healthy nodes' keys with the dead one's.
//!
//! # Builds without Redis
//!
//! The cargo feature `redis` (default on) brings the Redis client. Without it, [`Store`] is a
//! type with no value: config validation refuses `store`-backed features (`scope: global`,
//! `defer`), so no store is ever made, and the code that would use one compiles unchanged. This
//! file, `crate::defer` and `crate::limit::global` are the only places the feature is named.

#[cfg(not(feature = "redis"))]
mod absent;
#[cfg(feature = "redis")]
mod redis;

#[cfg(not(feature = "redis"))]
pub use self::absent::Store;
#[cfg(feature = "redis")]
pub use self::redis::Store;
#[cfg(feature = "redis")]
pub(crate) use self::redis::{
    escape_into, open_dedicated, slot_of, ByteSink, CallError, Link, RedisConn,
};
