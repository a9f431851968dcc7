//! Rate limits with `scope: global`: one bucket per key shared by every sluice instance, kept in
//! Redis (`store.redis`: one server, or a Redis Cluster).
//!
//! Sits in the rate limit stage of `crate::pipeline`, in place of the local bucket of
//! [`super::rate`] for the limits that say `scope: global`; local limits of the same route stay on
//! their synchronous path. A route without global limits never reaches this module. The
//! connection and its circuit breakers are [`crate::store`]'s; what an instance remembers between
//! calls (denials, leased tokens) is [`memo`]'s.
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
//! `TAT − now` after an admission and `GlobalLimit::decision` derives `remaining` and `reset`
//! from it exactly as [`super::rate`] does from governor's state, so the same sequence of requests
//! yields the same [`Decision`]s, hence the same `Retry-After` and `RateLimit` fields, as a local
//! limit with the same parameters.
//!
//! **A cost** (`cost: c`, without a lease): the script is asked for `c` tokens and needs them
//! all — denied iff `d > τ − (c − 1)·T` (the level is below `c·T`, governor's `check_key_n`),
//! with `retry_after = d − τ + (c − 1)·T` — and grants `c` then. `c = 1` is the step above.
//!
//! **Several tokens at once** (leases, below): the script is asked for up to `want` tokens and
//! grants `k = min(want, ⌊(τ + T − max(d, 0)) / T⌋)`, the whole tokens the bucket holds, setting
//! the TAT to `now + max(d, 0) + k·T`: `k` requests in a row would have left the same TAT, so a
//! lease never takes a token the bucket does not have. (The quotient is a double: when it rounds
//! up to the next whole number, the script steps back, checking `k·T ≤ room` exactly.) `want = 1`
//! is the step above.
//!
//! **Charged after the response** (`charge_header`): a second script moves the TAT to
//! `now + min(max(d, 0) + c·T, (1 + MAX_DEBT_BURSTS)·burst·T)` for `c` tokens charged, never
//! back: the bucket may go into debt (`d > τ` then denies every request until it is paid back),
//! exactly as the local `RateLimit::charge` does. It is called in a task of its own after the
//! response head, so the response never waits for Redis; the Redis key is computed at the check
//! (from the request's headers) and kept until then. A failed charge is lost.
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
//! `sluice:{<route>:<limit>:<key>}`, where `<route>` and `<limit>` are the config names with `%`
//! and `:` percent-escaped (so that no two pairs of names map to the same prefix) and `<key>` is
//! `global`, `ip:<address>` (IPv6 cut to `ipv6_key_prefix`, as locally) or `h:<32 hex digits>`:
//! the first 128 bits of SHA-256 over the header's value(s). The braces are Redis Cluster's hash
//! tag: only the text between them picks the key's slot, so everything a bucket ever stores sits
//! on one slot (one node) whatever is added to the key later, and distinct buckets spread over
//! the cluster's slots. A single server ignores them.
//!
//! The local limiter's header key is a SipHash keyed with a random per-process key — right for
//! one process, useless across instances. The raw value would be stable too, but header keys are
//! typically API keys, which should not sit in Redis in clear (visible to `SCAN`, `MONITOR`,
//! dumps), and a client-chosen value would set the key's size. A cryptographic hash is stable,
//! fixed-size and reveals nothing; clients cannot choose values that collide. The route and limit
//! names, not the parameters, name the bucket: a reload that changes a limit's rate keeps its
//! Redis state (the TAT is valid under any rate), and so does a fleet half-way through a rolling
//! config change.
//!
//! Every write sets the key's TTL (`SET … PX`) to `TAT − now`, the time until the bucket is full
//! again: a key that expires is indistinguishable from a full bucket, so Redis memory follows
//! the clients active within one refill time, like the local limiter's housekeeping.
//!
//! # Cost, the hot key, and leases
//!
//! Every instance keeps one [`Store`]: one multiplexed connection (per node, for a cluster).
//! Concurrent requests' scripts are pipelined on it: each request writes its command and awaits
//! its own reply, no request waits for another's round trip, and no connection pool or
//! per-request connect is involved. What does serialize is Redis itself (single-threaded; the
//! script is a few microseconds), so a hot key costs Redis CPU, not queueing in sluice.
//!
//! A client hammering one key past its limit does not cost a round trip per request: a denial
//! is remembered locally ([`memo`], at most the limit's `max_keys` keys) until its `retry_after` has passed, and requests of that key
//! are denied from memory until then. This is exact, not a heuristic: a GCRA denial at `now`
//! means `TAT − τ > now`, and a TAT only grows (requests push it forward, time does not move
//! it), so no request of that key can be admitted before `now + retry_after` by any instance.
//! (It errs late by at most one round trip, the time the answer took to arrive.) So while a key
//! is over its limit each instance asks Redis about it about once per `retry_after`.
//!
//! Without a lease, every admission takes one round trip: admitting is what must be counted
//! globally. With `lease: N`, one call takes up to N tokens for a key and the instance spends
//! them locally ([`memo`] has the rules: one call per key in flight, a refill in the background
//! at a quarter left, expiry after `lease_ttl`). An instance holds at most N tokens of a key, so
//! a fleet of `n` instances admits at most `n × N` more than the bucket alone would (the tokens
//! held, unspent, when it runs dry), and a key under steady load costs one round trip per about
//! `3N/4` requests instead of one per request.
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
//! Tokens already leased are spent whatever Redis does: they were granted.
//!
//! A failure opens a small circuit breaker ([`store`]: one for a server, one per 64 hash slots
//! for a cluster, so a dead node fails only its own keys): while it is open, requests apply
//! `on_error` at once, without waiting, and one request per `PROBE_INTERVAL` per instance is let
//! through to try Redis (bounded by `timeout` as always); its success closes the breaker.
//! Reconnecting happens in the background (redis-rs reconnects on a connection error, to a
//! server or to a cluster node, and follows MOVED/ASK to the slot's current node; the first
//! connection is made by a task that retries every `CONNECT_RETRY`), so sluice starts while
//! Redis is down — with a warning — and global limiting resumes when it comes back. Failed and
//! timed-out calls (and failed connection attempts) count in `sluice_store_errors_total`; the
//! log gets one line per change of state (failing, reachable again), never one per request.
//!
//! # TLS
//!
//! `rediss://` connections verify the server against the system's roots (rustls-native-certs:
//! the platform store, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set), plus the certificates of
//! `store.redis.ca` when given — read and checked when the config is loaded, like the
//! listener's certificate.

use std::fmt::{self, Write as _};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use redis::Script;
use sha2::{Digest, Sha256};

use self::memo::{Memos, Settle, Taken};
use super::key::LimitKey;
use super::rate::{Decision, RateLimit};
use super::StoreUnavailable;
use crate::config::{KeySpec, OnStoreError, RateLimitConfig, RedisConfig};
pub use crate::store::Store;
use crate::store::{escape_into, slot_of, ByteSink, RedisConn};

mod memo;

/// Largest refill time (burst × T) that the script computes exactly: its numbers are doubles.
const MAX_REFILL_NANOS: u64 = 1 << 53;

/// Redis Cluster's hash tag: only the part of a key between these is hashed to pick its slot,
/// so every key of one bucket lands on one node.
const HASH_TAG: [u8; 2] = *b"{}";

/// Leased tokens live for this many times the time the bucket takes to refill a lease
/// (`lease × T`), within [`LEASE_TTL_BOUNDS`]. 16: an instance that gets a sixteenth of a key's
/// traffic at exactly the limit still spends a lease before it expires (see `lease_ttl`).
const LEASE_TTL_INTERVALS: u32 = 16;

/// The shortest and longest life of leased tokens.
const LEASE_TTL_BOUNDS: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(1));

/// What both scripts start with: Redis' clock (`now_s`, `now_ns`) and `d`, how far the stored
/// TAT of `KEYS[1]` is ahead of it (ns; 0 for none).
const TAT_AHEAD: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
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
";

/// The GCRA step for up to `want` tokens, at least `need`; see the module docs (after
/// [`TAT_AHEAD`]). `KEYS[1]` the
/// bucket, `ARGV[1]` T (ns), `ARGV[2]` τ (ns), `ARGV[3]` want (≥ need), `ARGV[4]` need (≥ 1, the
/// limit's cost). Returns `{k, TAT − now}` (ns) after granting `k ≥ need` tokens,
/// `{0, retry_after}` (ns) after a denial.
const SCRIPT_SOURCE: &str = r"
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local slack = tau - (tonumber(ARGV[4]) - 1) * t
if d > slack then
  return {0, d - slack}
end
if d < 0 then d = 0 end
local room = tau + t - d
local k = math.floor(room / t)
if k * t > room then k = k - 1 end
if k > want then k = want end
local ahead = d + k * t
local at = now_ns + ahead
local frac = math.fmod(at, 1000000000)
local secs = now_s + (at - frac) / 1000000000
redis.call('SET', KEYS[1], string.format('%d.%09d', secs, frac),
  'PX', string.format('%d', math.ceil(ahead / 1000000)))
return {k, ahead}
";

/// The script, hashed once (`EVALSHA` needs its SHA-1).
static SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{TAT_AHEAD}{SCRIPT_SOURCE}")));

/// A charge after the response (`charge_header`; see the module docs): `KEYS[1]` the bucket,
/// `ARGV[1]` the ns to add to `max(TAT, now)`, `ARGV[2]` the most `TAT − now` may become (the
/// debt's cap). Never moves the TAT back. Returns `TAT − now` (ns).
const CHARGE_SOURCE: &str = r"
local add = tonumber(ARGV[1])
local ceiling = tonumber(ARGV[2])
if d < 0 then d = 0 end
local ahead = d + add
if ahead > ceiling then ahead = ceiling end
if ahead <= d then return d end
local at = now_ns + ahead
local frac = math.fmod(at, 1000000000)
local secs = now_s + (at - frac) / 1000000000
redis.call('SET', KEYS[1], string.format('%d.%09d', secs, frac),
  'PX', string.format('%d', math.ceil(ahead / 1000000)))
return ahead
";

/// The charge script, hashed once.
static CHARGE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{TAT_AHEAD}{CHARGE_SOURCE}")));

/// One `scope: global` rate limit of one route.
pub(crate) struct GlobalLimit {
    /// The shared connection.
    store: Arc<Store>,
    /// This instance's own bucket for the limit: used when Redis fails and `on_error: local`.
    /// The same `Arc` as the route's `Limit::rate`, so it is kept across reloads with it.
    local: Arc<RateLimit>,
    /// `sluice:{<route>:<limit>:`, escaped; a key ends with `<key>}`.
    prefix: Box<[u8]>,
    /// `T`, ns.
    emission_nanos: u64,
    /// Bucket size (`config.burst`, unless cut to [`MAX_REFILL_NANOS`]).
    burst: u32,
    /// Tokens a request takes (`config.cost`, at most `burst`, and `lease` if any): `ARGV[4]`.
    cost: u32,
    /// `ARGV[1]`, `ARGV[2]`: T and τ in decimal, formatted once.
    argv: [Box<str>; 2],
    /// `store.redis.timeout`.
    timeout: Duration,
    /// `store.redis.on_error`.
    on_error: OnStoreError,
    /// Denials (until when) and leased tokens, per key. Pruned by [`GlobalLimit::housekeeping`]
    /// and bounded by the limit's `max_keys`.
    memos: Memos,
}

/// What Redis answered to one call, or that it did not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// `tokens ≥ 1` granted; the bucket is now `ahead` ns from full.
    Granted { tokens: u32, ahead: u64 },
    /// Nothing granted; the first token comes in `retry_after`.
    Denied { retry_after: Duration },
    /// No answer within `timeout` (or none asked: breaker open, not connected).
    Failed,
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
        prefix.push(HASH_TAG[0]);
        escape_into(&mut prefix, route);
        prefix.push(b':');
        escape_into(&mut prefix, &config.name);
        prefix.push(b':');
        let tau = emission_nanos * u64::from(burst - 1);
        let lease = config.lease.min(burst);
        GlobalLimit {
            store,
            local,
            prefix: prefix.into_boxed_slice(),
            emission_nanos,
            burst,
            cost: config.cost.get().min(burst),
            argv: [emission_nanos.to_string().into(), tau.to_string().into()],
            timeout: redis.timeout,
            on_error: redis.on_error,
            memos: Memos::new(
                lease,
                lease_ttl(lease, emission),
                config.max_keys.get(),
                evictions,
            )
            .costing(config.cost.get()),
        }
    }

    /// The limit this was built from.
    pub(crate) fn config(&self) -> &RateLimitConfig {
        self.local.config()
    }

    /// True when a reload may keep this limit (with its denials and leased tokens) for `config`
    /// of the same route: same limit, same store, same call settings.
    pub(crate) fn keeps(
        &self,
        config: &RateLimitConfig,
        redis: &RedisConfig,
        store: &Arc<Store>,
    ) -> bool {
        self.config() == config
            && Arc::ptr_eq(&self.store, store)
            && self.timeout == redis.timeout
            && self.on_error == redis.on_error
    }

    /// Takes one token from `key`'s bucket — from this instance's lease when it holds one,
    /// else from Redis. `headers` are the request's (a `header:` key is hashed from them again:
    /// `key` holds a per-process hash).
    ///
    /// Waits at most `store.redis.timeout`; when Redis fails, answers as `on_error` says:
    /// `local` decides with this instance's bucket, `allow` answers `Ok(None)` (the request
    /// passes this limit, whose state is unknown, so it has no `RateLimit` item).
    ///
    /// # Errors
    /// [`StoreUnavailable`] when Redis failed and `on_error` is `deny`.
    pub(crate) async fn check(
        self: &Arc<Self>,
        key: &LimitKey,
        headers: &HeaderMap,
    ) -> Result<Option<Decision>, StoreUnavailable> {
        let (want, refill) = match self.memos.take(key) {
            Taken::Denied(retry_after) => return Ok(Some(Decision::Denied { retry_after })),
            Taken::Leased {
                left,
                ahead,
                refill,
            } => {
                if let Some(want) = refill {
                    self.refill_later(*key, self.redis_key(key, headers), want);
                }
                return Ok(Some(self.decision(ahead, left)));
            }
            // `want` is 1 without a lease (or while a refill is in flight): the request's cost
            // is what it asks for then.
            Taken::Ask { want, refill } => (want.max(self.cost), refill),
        };
        let guard = refill.then(|| self.memos.refill(*key));
        let answer = self.ask(&self.redis_key(key, headers), want).await;
        let settle = match answer {
            Answer::Granted { tokens, ahead } => Settle::Granted {
                left: tokens.saturating_sub(self.cost),
                ahead,
            },
            Answer::Denied { retry_after } => Settle::Denied(retry_after),
            Answer::Failed => Settle::Failed,
        };
        match guard {
            Some(guard) => guard.settle(settle),
            None => self.memos.settle(key, false, settle),
        }
        match answer {
            Answer::Granted { tokens, ahead } => {
                Ok(Some(self.decision(ahead, tokens.saturating_sub(self.cost))))
            }
            Answer::Denied { retry_after } => Ok(Some(Decision::Denied { retry_after })),
            Answer::Failed => self.fallback(key),
        }
    }

    /// The Redis key of the request's bucket, kept from the check (whose `headers` a `header:`
    /// key is hashed from) for [`GlobalLimit::charge`] after the response.
    pub(crate) fn charge_key(&self, key: &LimitKey, headers: &HeaderMap) -> Vec<u8> {
        self.redis_key(key, headers)
    }

    /// Charges `tokens` more to the bucket `redis_key` (a `charge_header`, less the cost
    /// already taken), in a task of its own: the response does not wait for Redis. The bucket
    /// may go into debt, at most `MAX_DEBT_BURSTS` × burst tokens (and at most 2^53 ns, the
    /// script's exact range). When Redis fails, the charge is lost (counted as a store error).
    pub(crate) fn charge(self: &Arc<Self>, redis_key: Vec<u8>, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let t = self.emission_nanos;
        let ceiling = (t * u64::from(self.burst))
            .saturating_mul(u64::from(RateLimitConfig::MAX_DEBT_BURSTS) + 1)
            .min(MAX_REFILL_NANOS);
        let add = tokens.saturating_mul(t).min(ceiling);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut invocation = CHARGE.key(&redis_key);
            invocation.arg(add).arg(ceiling);
            this.call::<i64>(&redis_key, &invocation).await;
        });
    }

    /// Forgets denials and leases that have run out. Call it from the housekeeping task.
    pub(crate) fn housekeeping(&self) {
        self.memos.housekeeping();
    }

    /// Asks Redis for `want` more tokens of `key` in a task of its own: the request that
    /// noticed the lease running low is already decided.
    fn refill_later(self: &Arc<Self>, key: LimitKey, redis_key: Vec<u8>, want: u32) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let guard = this.memos.refill(key);
            let settle = match this.ask(&redis_key, want).await {
                Answer::Granted { tokens, ahead } => Settle::Granted {
                    left: tokens,
                    ahead,
                },
                Answer::Denied { retry_after } => Settle::Denied(retry_after),
                Answer::Failed => Settle::Failed,
            };
            guard.settle(settle);
        });
    }

    /// One script call for up to `want` tokens (at least the limit's cost) of the bucket
    /// `redis_key`, bounded by `timeout`;
    /// failures feed the breaker of the key's slot.
    async fn ask(&self, redis_key: &[u8], want: u32) -> Answer {
        let mut invocation = SCRIPT.key(redis_key);
        invocation
            .arg(&*self.argv[0])
            .arg(&*self.argv[1])
            .arg(want)
            .arg(self.cost.min(want));
        let Some(answer) = self.call::<(i64, i64)>(redis_key, &invocation).await else {
            return Answer::Failed;
        };
        match answer {
            (tokens @ 1.., ahead) => Answer::Granted {
                tokens: u32::try_from(tokens).unwrap_or(1).min(want),
                ahead: u64::try_from(ahead).unwrap_or(0),
            },
            (_, wait) => Answer::Denied {
                retry_after: Duration::from_nanos(u64::try_from(wait).unwrap_or(0)),
            },
        }
    }

    /// One script `invocation` on the bucket `redis_key`, bounded by `timeout`; failures feed
    /// the breaker of the key's slot. `None` when it failed or was not made (not connected, or
    /// the breaker is open: not an error of its own).
    async fn call<T: redis::FromRedisValue>(
        &self,
        redis_key: &[u8],
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        let inner = &self.store.inner;
        let breaker = self.store.breaker_of(slot_of(redis_key));
        let call = async {
            let Some(conn) = inner.connection(breaker).await else {
                return Ok(None);
            };
            let answer = match conn {
                RedisConn::Server(mut conn) => invocation.invoke_async::<T>(&mut conn).await,
                RedisConn::Cluster(mut conn) => invocation.invoke_async::<T>(&mut conn).await,
            };
            answer.map(Some)
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(Some(answer))) => {
                inner.succeeded(breaker);
                Some(answer)
            }
            Ok(Ok(None)) => None,
            Ok(Err(err)) => {
                inner.failed(breaker, &err);
                None
            }
            Err(_) => {
                inner.failed(
                    breaker,
                    &format_args!("no answer within {:?}", self.timeout),
                );
                None
            }
        }
    }

    /// The answer when Redis could not decide.
    fn fallback(&self, key: &LimitKey) -> Result<Option<Decision>, StoreUnavailable> {
        match self.on_error {
            OnStoreError::Local => Ok(Some(self.local.check(key))),
            OnStoreError::Allow => Ok(None),
            OnStoreError::Deny => Err(StoreUnavailable),
        }
    }

    /// The decision for an admission after which the bucket in Redis is `ahead` ns from full
    /// and this instance holds `left` leased tokens of the key: the bucket then holds
    /// `burst·T − ahead` ns of refill, as in [`super::rate`], and the lease `left` whole tokens
    /// more. Right after a grant this is exactly what a limit without lease reports; for a
    /// leased admission later, `ahead` is the value at the grant less the time since (the
    /// refill this instance knows of; what other instances took since, it does not know).
    fn decision(&self, ahead: u64, left: u32) -> Decision {
        let t = self.emission_nanos;
        let capacity = t * u64::from(self.burst);
        let level = capacity
            .saturating_sub(ahead)
            .saturating_add(u64::from(left) * t)
            // A request has just taken a token: the bucket is not full.
            .min(capacity - 1);
        Decision::admitted(level, t, self.burst)
    }

    /// `sluice:{<route>:<limit>:<key>}` (see the module docs).
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
        out.push(HASH_TAG[1]);
        out
    }
}

impl fmt::Debug for GlobalLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalLimit")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("burst", &self.burst)
            .field("lease", &self.config().lease)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

/// How long leased tokens may be spent: [`LEASE_TTL_INTERVALS`] × `lease` × T, within
/// [`LEASE_TTL_BOUNDS`]. `lease × T` is the time the shared bucket takes to refill one lease;
/// an instance that gets a share `s` of a key's traffic at exactly the limit spends a lease in
/// `lease × T / s`, so up to 16 instances sharing a key evenly spend their leases before they
/// expire (under overload, faster still). The floor keeps a lease useful at very high rates,
/// the ceiling keeps an idle instance from sitting on tokens of a slow limit for long.
fn lease_ttl(lease: u32, emission: Duration) -> Duration {
    let ttl = emission
        .saturating_mul(lease)
        .saturating_mul(LEASE_TTL_INTERVALS);
    ttl.clamp(LEASE_TTL_BOUNDS.0, LEASE_TTL_BOUNDS.1)
}

#[cfg(test)]
mod tests;
