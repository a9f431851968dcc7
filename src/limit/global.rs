//! Rate limits with `scope: global`: one bucket per key shared by every sluice instance, kept in
//! Redis (`store.redis`).
//!
//! Sits in the rate limit stage of `crate::pipeline`, in place of the local bucket of
//! [`super::rate`] for the limits that say `scope: global`; local limits of the same route stay on
//! their synchronous path. A route without global limits never reaches this module.
//!
//! # The algorithm: governor's GCRA, in one Lua script
//!
//! Each decision is one `EVALSHA` of one Lua script (redis-rs' `Script` sends `EVALSHA` and loads
//! the script on `NOSCRIPT`), which reads the bucket's *theoretical arrival time* (TAT), decides
//! and writes the new TAT atomically — Redis runs a script to completion before anything else, so
//! instances racing for the last token cannot both get it. The arithmetic is governor's
//! (`gcra.rs`), step for step, with emission interval `T` and tolerance `τ = (burst − 1)·T`:
//! with `d = TAT − now` (0 for a missing key), a request is denied iff `d > τ`, and then
//! `retry_after = d − τ`; otherwise the new TAT is `now + max(d, 0) + T`. The script returns
//! `TAT − now` after an admission and `GlobalLimit::admitted` derives `remaining` and `reset`
//! from it exactly as [`super::rate`] does from governor's state, so the same sequence of requests
//! yields the same [`Decision`]s, hence the same `Retry-After` and `RateLimit` fields, as a local
//! limit with the same parameters.
//!
//! **Clock**: the script takes `now` from Redis' own `TIME`, not from the instance. Every
//! instance then measures the bucket against one clock, so clock skew between sluice hosts
//! cannot hand out extra tokens or deny early. A script calling `TIME` and then writing needs
//! effects replication (Redis ≥ 3.2, the default since Redis 5; the script asks for it, which is
//! a no-op on Redis 7).
//!
//! **Precision**: Redis' Lua numbers are doubles. The TAT is stored as text, `secs.nanos`
//! (`1712345678.123456789`), and the script only ever computes *differences* from `now`, which
//! are exact integers of nanoseconds while below 2^53 ns (104 days). A bucket whose refill time
//! (burst × T) exceeds that is cut to it, with a warning, as [`super::rate`] cuts at 2^62 ns.
//!
//! # Keys and memory
//!
//! `sluice:<route>:<limit>:<key>`, where `<route>` and `<limit>` are the config names with `%` and
//! `:` percent-escaped (so that no two pairs of names map to the same prefix) and `<key>` is
//! `global`, `ip:<address>` (IPv6 cut to `ipv6_key_prefix`, as locally) or `h:<32 hex digits>`:
//! the first 128 bits of SHA-256 over the header's value(s). The local limiter's header key is a
//! SipHash keyed with a random per-process key — right for one process, useless across
//! instances. The raw value would be stable too, but header keys are typically API keys, which
//! should not sit in Redis in clear (visible to `SCAN`, `MONITOR`, dumps), and a client-chosen
//! value would set the key's size. A cryptographic hash is stable, fixed-size and reveals
//! nothing; clients cannot choose values that collide. The route and limit names, not the
//! parameters, name the bucket: a reload that changes a limit's rate keeps its Redis state (the
//! TAT is valid under any rate), and so does a fleet half-way through a rolling config change.
//!
//! Every write sets the key's TTL (`SET … PX`) to `TAT − now`, the time until the bucket is full
//! again: a key that expires is indistinguishable from a full bucket, so Redis memory follows
//! the clients active within one refill time, like the local limiter's housekeeping.
//!
//! # Cost, and the hot key
//!
//! Every instance keeps one [`Store`]: one redis-rs `ConnectionManager`, i.e. one multiplexed
//! connection. Concurrent requests' scripts are pipelined on it: each request writes its command
//! and awaits its own reply, no request waits for another's round trip, and no connection pool
//! or per-request connect is involved. What does serialize is Redis itself (single-threaded; the
//! script is a few microseconds), so a hot key costs Redis CPU, not queueing in sluice.
//!
//! A client hammering one key past its limit does not cost a round trip per request: a denial
//! is remembered locally (`GlobalLimit`'s `denied` table, bounded by the limit's `max_keys`
//! like a local limit's keys, least recently used evicted first) until its `retry_after` has
//! passed,
//! and requests of that key are denied from memory until then. This is exact, not a heuristic: a
//! GCRA denial at `now` means `TAT − τ > now`, and a TAT only grows (requests push it forward,
//! time does not move it), so no request of that key can be admitted before `now + retry_after`
//! by any instance. (It errs late by at most one round trip, the time the answer took to
//! arrive.) So while a key is over its limit each instance asks Redis about it about once per
//! `retry_after`; admitted requests always take one round trip, since admitting is what must be
//! counted globally.
//!
//! # Failure: fail open or closed is the operator's choice
//!
//! Every call is bounded by `store.redis.timeout` (default 20 ms), including the wait for a
//! connection: no request waits longer than that for Redis. When a call fails or times out,
//! `store.redis.on_error` decides — there is no single right answer, so we do not pick one:
//!
//! - `local` (default, *fail soft*): the limit falls back to this instance's own bucket for it,
//!   built from the same config (so N instances admit up to N times the limit while Redis is
//!   down — degraded, but still limited);
//! - `allow` (*fail open*): the request passes this limit (its `RateLimit` item is left out: its
//!   state is unknown);
//! - `deny` (*fail closed*): 503 with `reason: "store-unavailable"` (an extension of the
//!   contract's reasons; `type` `about:blank`, as it is not a capacity decision).
//!
//! A failure opens a small circuit breaker: while Redis is failing, requests apply `on_error` at
//! once, without waiting, and one request per `PROBE_INTERVAL` per instance is let through to
//! try Redis (bounded by `timeout` as always); its success closes the breaker. Reconnecting
//! happens in the background (the connection manager reconnects on a connection error; the first
//! connection is made by a task that retries every `CONNECT_RETRY`), so sluice starts while
//! Redis is down — with a warning — and global limiting resumes when it comes back. Failed and
//! timed-out calls (and failed connection attempts) count in `sluice_store_errors_total`; the
//! log gets one line per change of state (failing, reachable again), never one per request.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::key::LimitKey;
use super::rate::{Decision, RateLimit};
use super::table::KeyTable;
use super::StoreUnavailable;
use crate::config::{
    redact_url, Config, KeySpec, OnStoreError, RateLimitConfig, RedisConfig, Scope,
};

/// While Redis is failing, one request per interval (per instance) tries it; the others apply
/// `on_error` without waiting.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Pause between attempts at the first connection (later reconnections are the connection
/// manager's, driven by the probes).
pub(crate) const CONNECT_RETRY: Duration = Duration::from_millis(500);

/// Bound on establishing one connection (TCP, TLS, AUTH), separate from the per-call timeout: it
/// happens in the background, no request waits for it longer than `timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest refill time (burst × T) that the script computes exactly: its numbers are doubles.
const MAX_REFILL_NANOS: u64 = 1 << 53;

/// The GCRA step; see the module docs. `KEYS[1]` the bucket, `ARGV[1]` T (ns), `ARGV[2]` τ (ns).
/// Returns `{1, TAT − now}` (ns) after an admission, `{0, retry_after}` (ns) after a denial.
const SCRIPT_SOURCE: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now_s = tonumber(clock[1])
local now_ns = tonumber(clock[2]) * 1000
local d = 0
local tat = redis.call('GET', KEYS[1])
if tat then
  local s, ns = string.match(tat, '^(%d+)%.(%d+)$')
  if s then
    d = (tonumber(s) - now_s) * 1000000000 + (tonumber(ns) - now_ns)
  end
end
if d > tau then
  return {0, d - tau}
end
if d < 0 then d = 0 end
local ahead = d + t
local at = now_ns + ahead
local frac = math.fmod(at, 1000000000)
local secs = now_s + (at - frac) / 1000000000
redis.call('SET', KEYS[1], string.format('%d.%09d', secs, frac),
  'PX', string.format('%d', math.ceil(ahead / 1000000)))
return {1, ahead}
";

/// The script, hashed once (`EVALSHA` needs its SHA-1).
static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SCRIPT_SOURCE));

/// [`Health`] states.
const CONNECTING: u8 = 0;
const HEALTHY: u8 = 1;
const FAILING: u8 = 2;

/// The connection to `store.redis` shared by every global limit of a runtime, and kept by the
/// next runtime while `store.redis.url` is unchanged. Dropping it stops the connecting task.
pub struct Store {
    /// Connection, health and counters, shared with the connecting task.
    inner: Arc<Inner>,
    /// The task making the first connection (done once it has).
    connector: JoinHandle<()>,
}

struct Inner {
    /// `store.redis.url`, to tell whether a reload may keep this store. Never printed.
    url: String,
    /// The same, password replaced by `***`: what logs show.
    redacted: String,
    /// Set once by the connecting task; the manager reconnects by itself from then on.
    conn: OnceLock<ConnectionManager>,
    /// The circuit breaker and the once-per-change logging.
    health: Health,
    /// Wakes requests waiting for the first connection attempt to end.
    connected: Notify,
    /// `sluice_store_errors_total`.
    errors: Counter,
}

/// Healthy / failing, and when the next probe may go while failing.
struct Health {
    /// [`CONNECTING`] until the first attempt ends, then [`HEALTHY`] or [`FAILING`].
    state: AtomicU8,
    /// While failing: no probe before this, in ns since `epoch`.
    next_probe: AtomicU64,
    /// The origin of `next_probe`.
    epoch: Instant,
}

/// One `scope: global` rate limit of one route.
pub(crate) struct GlobalLimit {
    /// The shared connection.
    store: Arc<Store>,
    /// This instance's own bucket for the limit: used when Redis fails and `on_error: local`.
    /// The same `Arc` as the route's `Limit::rate`, so it is kept across reloads with it.
    local: Arc<RateLimit>,
    /// `sluice:<route>:<limit>:`, escaped.
    prefix: Box<[u8]>,
    /// `T`, ns.
    emission_nanos: u64,
    /// Bucket size (`config.burst`, unless cut to [`MAX_REFILL_NANOS`]).
    burst: u32,
    /// `ARGV[1]`, `ARGV[2]`: T and τ in decimal, formatted once.
    argv: [Box<str>; 2],
    /// `store.redis.timeout`.
    timeout: Duration,
    /// `store.redis.on_error`.
    on_error: OnStoreError,
    /// Keys that Redis denied, until when (ns since `epoch`): denied locally without a round
    /// trip until then. Process-local, so the per-process `LimitKey` hash is fine here. At most
    /// `max_keys` keys (an evicted denial only costs a round trip later); pruned by
    /// [`GlobalLimit::housekeeping`].
    denied: KeyTable,
    /// The origin of `denied`'s times.
    epoch: Instant,
}

// === impl Store ===

impl Store {
    /// The store for `config`: `None` when no limit has `scope: global`; the `previous` one when
    /// its URL is unchanged (the connection and its health carry over a reload); else a new one
    /// whose first connection is made by a task spawned on `spawner` (the proxy's runtime: a
    /// reload may run on the admin thread).
    ///
    /// # Panics
    /// When a new store is needed and `spawner` is `None` (a runtime built outside tokio).
    pub(crate) fn for_config(
        config: &Config,
        previous: Option<&Arc<Store>>,
        spawner: Option<&Handle>,
        errors: &Counter,
    ) -> Option<Arc<Store>> {
        let uses_store = config
            .routes
            .iter()
            .flat_map(|r| &r.rate_limits)
            .any(|l| l.scope == Scope::Global);
        let redis = &config.store.as_ref()?.redis;
        if !uses_store {
            return None;
        }
        if let Some(previous) = previous.filter(|p| p.inner.url == redis.url) {
            return Some(previous.clone());
        }
        let spawner = spawner.expect("a runtime with global limits is built inside tokio");
        Some(Arc::new(Store::connect(redis, spawner, errors)))
    }

    /// Starts connecting to `redis` in the background; usable at once (requests apply
    /// `on_error` until a connection is up, after waiting at most `timeout` for the first
    /// attempt).
    pub(crate) fn connect(redis: &RedisConfig, spawner: &Handle, errors: &Counter) -> Store {
        let inner = Arc::new(Inner {
            url: redis.url.clone(),
            redacted: redact_url(&redis.url),
            conn: OnceLock::new(),
            health: Health {
                state: AtomicU8::new(CONNECTING),
                next_probe: AtomicU64::new(0),
                epoch: Instant::now(),
            },
            connected: Notify::new(),
            errors: errors.clone(),
        });
        let connector = match redis::Client::open(redis.url.as_str()) {
            Ok(client) => spawner.spawn(connect(inner.clone(), client)),
            Err(err) => {
                // Validation parses the URL with the same function; this is only a guard.
                inner.failed(&err);
                inner.connected.notify_waiters();
                spawner.spawn(async {})
            }
        };
        Store { inner, connector }
    }

    /// True while the last call (or connection attempt) succeeded.
    pub(crate) fn is_healthy(&self) -> bool {
        self.inner.health.state.load(Ordering::Acquire) == HEALTHY
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.connector.abort();
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.inner.redacted)
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

/// Makes the first connection, retrying every [`CONNECT_RETRY`] until it succeeds.
async fn connect(inner: Arc<Inner>, client: redis::Client) {
    // No retries inside the manager: a failed reconnection surfaces at once as an error, and the
    // next probe starts another. `connection_timeout` bounds each attempt, TLS and AUTH included.
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_connection_timeout(CONNECT_TIMEOUT);
    loop {
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client.clone(), config.clone()),
        )
        .await;
        match attempt {
            Ok(Ok(conn)) => {
                // Only this task sets it.
                let _ = inner.conn.set(conn);
                inner.succeeded();
                inner.connected.notify_waiters();
                return;
            }
            Ok(Err(err)) => inner.failed(&err),
            Err(_) => inner.failed(&format_args!("no connection within {CONNECT_TIMEOUT:?}")),
        }
        inner.connected.notify_waiters();
        tokio::time::sleep(CONNECT_RETRY).await;
    }
}

// === impl Inner ===

impl Inner {
    /// A connection to call Redis on, or `None` to apply `on_error` now: not connected yet (the
    /// connecting task is on it), or failing and it is not this request's turn to probe. Waits
    /// only for the end of the very first connection attempt (the caller bounds the wait).
    async fn connection(&self) -> Option<ConnectionManager> {
        match self.health.state.load(Ordering::Acquire) {
            HEALTHY => self.conn.get().cloned(),
            FAILING => {
                let conn = self.conn.get()?;
                self.health.claim_probe().then(|| conn.clone())
            }
            _ => {
                let notified = self.connected.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.health.state.load(Ordering::Acquire) == CONNECTING {
                    notified.await;
                }
                match self.health.state.load(Ordering::Acquire) {
                    HEALTHY => self.conn.get().cloned(),
                    _ => None,
                }
            }
        }
    }

    /// A call or connection attempt failed: count it, hold the probes back, log if this is news.
    fn failed(&self, error: &dyn fmt::Display) {
        self.errors.inc();
        let now = self.health.nanos_since_epoch(Instant::now());
        let next = now.saturating_add(PROBE_INTERVAL.as_nanos() as u64);
        self.health.next_probe.store(next, Ordering::Release);
        match self.health.state.swap(FAILING, Ordering::AcqRel) {
            FAILING => {}
            CONNECTING => tracing::warn!(
                redis = %self.redacted,
                %error,
                "Redis is unreachable: global rate limits apply store.redis.on_error until it answers (retrying in the background)"
            ),
            _ => tracing::warn!(
                redis = %self.redacted,
                %error,
                "Redis is failing: global rate limits apply store.redis.on_error until it answers again"
            ),
        }
    }

    /// A call or connection attempt succeeded: close the breaker, log if this is news.
    fn succeeded(&self) {
        if self.health.state.load(Ordering::Relaxed) == HEALTHY {
            return;
        }
        match self.health.state.swap(HEALTHY, Ordering::AcqRel) {
            HEALTHY => {}
            CONNECTING => {
                tracing::info!(redis = %self.redacted, "connected to Redis for global rate limits")
            }
            _ => {
                tracing::info!(redis = %self.redacted, "Redis answers again: global rate limits use it")
            }
        }
    }
}

// === impl Health ===

impl Health {
    fn nanos_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// True for the one caller that may probe now (at most one per [`PROBE_INTERVAL`]).
    fn claim_probe(&self) -> bool {
        let now = self.nanos_since_epoch(Instant::now());
        let next = self.next_probe.load(Ordering::Acquire);
        now >= next
            && self
                .next_probe
                .compare_exchange(
                    next,
                    now.saturating_add(PROBE_INTERVAL.as_nanos() as u64),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

// === impl GlobalLimit ===

impl GlobalLimit {
    /// The global limit `config` of route `route` on `store`, falling back to `local` (this
    /// instance's bucket for the same config) as `redis.on_error` says.
    /// Evictions from its denial cache count in `evictions`, the limit's
    /// `sluice_rate_limit_evictions_total` series.
    pub(crate) fn new(
        route: &str,
        config: &RateLimitConfig,
        redis: &RedisConfig,
        store: Arc<Store>,
        local: Arc<RateLimit>,
        evictions: Counter,
    ) -> GlobalLimit {
        let (emission, burst) = crate::limit::rate::bucket_shape(config, MAX_REFILL_NANOS);
        let emission_nanos = u64::try_from(emission.as_nanos()).unwrap_or(u64::MAX);
        if burst < config.burst.get() {
            tracing::warn!(
                route,
                limit = %config.name,
                configured = config.burst.get(),
                used = burst,
                "global limit's burst cut: the bucket would take over 104 days to refill"
            );
        }
        let mut prefix = b"sluice:".to_vec();
        escape_into(&mut prefix, route);
        prefix.push(b':');
        escape_into(&mut prefix, &config.name);
        prefix.push(b':');
        let tau = emission_nanos * u64::from(burst - 1);
        GlobalLimit {
            store,
            local,
            prefix: prefix.into_boxed_slice(),
            emission_nanos,
            burst,
            argv: [emission_nanos.to_string().into(), tau.to_string().into()],
            timeout: redis.timeout,
            on_error: redis.on_error,
            denied: KeyTable::new(config.max_keys, evictions),
            epoch: Instant::now(),
        }
    }

    /// The limit this was built from.
    pub(crate) fn config(&self) -> &RateLimitConfig {
        self.local.config()
    }

    /// Takes one token from `key`'s bucket in Redis if it has one. `headers` are the request's
    /// (a `header:` key is hashed from them again: `key` holds a per-process hash).
    ///
    /// Waits at most `store.redis.timeout`; when Redis fails, answers as `on_error` says:
    /// `local` decides with this instance's bucket, `allow` answers `Ok(None)` (the request
    /// passes this limit, whose state is unknown, so it has no `RateLimit` item).
    ///
    /// # Errors
    /// [`StoreUnavailable`] when Redis failed and `on_error` is `deny`.
    pub(crate) async fn check(
        &self,
        key: &LimitKey,
        headers: &HeaderMap,
    ) -> Result<Option<Decision>, StoreUnavailable> {
        if let Some(retry_after) = self.still_denied(key) {
            return Ok(Some(Decision::Denied { retry_after }));
        }
        let call = async {
            let mut conn = self.store.inner.connection().await.ok_or(Failed::Skipped)?;
            let redis_key = self.redis_key(key, headers);
            SCRIPT
                .key(redis_key)
                .arg(&*self.argv[0])
                .arg(&*self.argv[1])
                .invoke_async::<(i64, i64)>(&mut conn)
                .await
                .map_err(Failed::Redis)
        };
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(Failed::Skipped)) => return self.fallback(key),
            Ok(Err(Failed::Redis(err))) => {
                self.store.inner.failed(&err);
                return self.fallback(key);
            }
            Err(_) => {
                self.store
                    .inner
                    .failed(&format_args!("no answer within {:?}", self.timeout));
                return self.fallback(key);
            }
        };
        self.store.inner.succeeded();
        match answer {
            (1, ahead) => Ok(Some(self.admitted(u64::try_from(ahead).unwrap_or(0)))),
            (_, wait) => {
                let retry_after = Duration::from_nanos(u64::try_from(wait).unwrap_or(0));
                self.remember_denial(key, retry_after);
                Ok(Some(Decision::Denied { retry_after }))
            }
        }
    }

    /// Forgets denials that have run out. Call it from the housekeeping task.
    pub(crate) fn housekeeping(&self) {
        let now = self.now();
        self.denied.retain(|until| until > now);
        self.denied.shrink_to_fit();
    }

    /// Denials remembered now.
    #[cfg(test)]
    pub(crate) fn denials(&self) -> usize {
        self.denied.len()
    }

    /// Denies `key` locally for `retry_after`, Redis' answer. Exact: nobody can be admitted on
    /// this key before then (module docs).
    fn remember_denial(&self, key: &LimitKey, retry_after: Duration) {
        let now = self.now();
        let wait = u64::try_from(retry_after.as_nanos()).unwrap_or(u64::MAX);
        self.denied.set(key, now.saturating_add(wait), now);
    }

    /// `retry_after` of a denial Redis made earlier that still holds.
    fn still_denied(&self, key: &LimitKey) -> Option<Duration> {
        let now = self.now();
        let until = self.denied.get(key, now)?;
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Nanoseconds since `epoch`: the time of `denied`.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The answer when Redis could not decide.
    fn fallback(&self, key: &LimitKey) -> Result<Option<Decision>, StoreUnavailable> {
        match self.on_error {
            OnStoreError::Local => Ok(Some(self.local.check(key))),
            OnStoreError::Allow => Ok(None),
            OnStoreError::Deny => Err(StoreUnavailable),
        }
    }

    /// The decision for an admission whose new TAT is `ahead` ns from now: the bucket then
    /// holds `burst·T − ahead` ns of refill, as in [`super::rate`].
    fn admitted(&self, ahead: u64) -> Decision {
        let t = self.emission_nanos;
        let capacity = t * u64::from(self.burst);
        Decision::admitted(capacity.saturating_sub(ahead), t, self.burst)
    }

    /// `sluice:<route>:<limit>:<key>` (see the module docs).
    fn redis_key(&self, key: &LimitKey, headers: &HeaderMap) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + 48);
        out.extend_from_slice(&self.prefix);
        match key {
            LimitKey::Global => out.extend_from_slice(b"global"),
            LimitKey::Ip(ip) => {
                out.extend_from_slice(b"ip:");
                let _ = write!(ByteSink(&mut out), "{ip}");
            }
            LimitKey::Header(_) => {
                let mut sha = Sha256::new();
                if let KeySpec::Header(name) = &self.config().key {
                    for value in headers.get_all(name) {
                        // Length-prefixed, so that the lines `a`, `b` differ from `ab`.
                        sha.update((value.len() as u64).to_le_bytes());
                        sha.update(value.as_bytes());
                    }
                }
                out.extend_from_slice(b"h:");
                for byte in &sha.finalize()[..16] {
                    let _ = write!(ByteSink(&mut out), "{byte:02x}");
                }
            }
        }
        out
    }
}

impl fmt::Debug for GlobalLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalLimit")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("burst", &self.burst)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

/// Why a call gave no answer.
enum Failed {
    /// Not tried: no connection yet, or the breaker is open. Not an error of its own.
    Skipped,
    /// Redis or the connection failed.
    Redis(redis::RedisError),
}

/// `fmt::Write` into a byte buffer (the key's address or hex digits).
struct ByteSink<'a>(&'a mut Vec<u8>);

impl fmt::Write for ByteSink<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends a config name with `%` and `:` percent-escaped: the names may hold both, and the key's
/// parts are separated by `:`.
fn escape_into(out: &mut Vec<u8>, name: &str) {
    for b in name.bytes() {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b':' => out.extend_from_slice(b"%3A"),
            b => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests;
