//! What can be pinned without a Redis server: the key layout and the conversion of the script's
//! answer into a [`Decision`]. The script itself runs against a real redis-server in
//! `tests/redis.rs`.

use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::runtime::Handle;
use tokio::time::Instant;

use super::memo::Memos;
use super::*;
use crate::config::{LimitScope, Per, Rate, RedisTarget};
use prometheus_client::metrics::counter::Counter;

fn limit_config(name: &str, key: KeySpec, count: u32, per: Per, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        name: Arc::from(name),
        key,
        rate: Rate {
            count: NonZeroU32::new(count).unwrap(),
            per,
        },
        burst: NonZeroU32::new(burst).unwrap(),
        scope: LimitScope::Global,
        lease: 0,
        max_keys: NonZeroUsize::new(1_000_000).unwrap(),
        cost: crate::config::RateLimitConfig::DEFAULT_COST,
        charge_header: None,
    }
}

fn redis_config() -> RedisConfig {
    RedisConfig {
        // Nothing listens on port 1: the store never connects, which these tests do not need.
        target: RedisTarget::Server("redis://user:secret@127.0.0.1:1".into()),
        ca: None,
        ca_pem: None,
        timeout: Duration::from_millis(20),
        on_error: OnStoreError::Local,
    }
}

fn global(route: &str, config: &RateLimitConfig) -> GlobalLimit {
    let redis = redis_config();
    let store = Arc::new(Store::connect(
        &redis.target,
        None,
        redis.timeout,
        &Handle::current(),
        &Counter::default(),
    ));
    GlobalLimit::new(
        route,
        config,
        &redis,
        store,
        Arc::new(RateLimit::new(config)),
        Counter::default(),
    )
}

/// Simulates the script: the new TAT after a request at `now`, as `ahead = TAT − now`.
fn step(tat: &mut Option<u64>, now: u64, t: u64, tau: u64) -> Result<u64, u64> {
    let d = tat.map_or(0, |tat| tat as i128 - now as i128);
    if d > tau as i128 {
        return Err((d - tau as i128) as u64);
    }
    let ahead = d.max(0) as u64 + t;
    *tat = Some(now + ahead);
    Ok(ahead)
}

/// Pins: the script's answer becomes exactly the `Decision` governor's local bucket gives for the
/// same sequence of requests (remaining, reset, retry_after), checked against `RateLimit` on a
/// fake clock for a sequence with bursts, pauses and denials.
#[tokio::test]
async fn admitted_and_denied_match_the_local_limiter() {
    let config = limit_config("l", KeySpec::Global, 3, Per::Second, 4);
    let g = global("r", &config);
    let clock = FakeRelativeClock::default();
    let local = RateLimit::with_clock(&config, clock.clone(), Counter::default());
    let t = g.emission_nanos;
    let tau = t * 3;
    let mut tat = None;
    let mut now = 0u64;
    // Pauses in ms between requests: a burst, a denial, partial refills, a full refill.
    for pause in [0, 0, 0, 0, 0, 10, 150, 340, 0, 0, 1, 2000, 0, 333, 334, 0] {
        now += pause * 1_000_000;
        clock.advance(Duration::from_millis(pause));
        let expected = local.check(&LimitKey::Global);
        let got = match step(&mut tat, now, t, tau) {
            Ok(ahead) => g.decision(ahead, 0),
            Err(wait) => Decision::Denied {
                retry_after: Duration::from_nanos(wait),
            },
        };
        assert_eq!(got, expected, "after a pause of {pause} ms");
    }
}

/// Pins: with a cost, the script's arithmetic (denied below `cost·T`, `retry_after` to it,
/// `cost` tokens granted) gives the `Decision`s of governor's local bucket with the same cost.
#[tokio::test]
async fn a_cost_matches_the_local_limiter() {
    let mut config = limit_config("l", KeySpec::Global, 10, Per::Second, 10);
    config.cost = std::num::NonZeroU32::new(4).unwrap();
    let g = global("r", &config);
    let clock = FakeRelativeClock::default();
    let local = RateLimit::with_clock(&config, clock.clone(), Counter::default());
    let t = g.emission_nanos;
    let tau = t * 9;
    let mut d_at: Option<u64> = None; // the TAT
    let mut now = 0u64;
    for pause in [0, 0, 0, 50, 300, 0, 1, 399, 0, 2000, 0, 0, 0] {
        now += pause * 1_000_000;
        clock.advance(Duration::from_millis(pause));
        let expected = local.check(&LimitKey::Global);
        let d = d_at.map_or(0, |tat| tat as i64 - now as i64);
        let got = match lua_grant_n(d, t, tau, 4, 4) {
            Ok((k, ahead)) => {
                assert_eq!(k, 4);
                d_at = Some(now + ahead);
                g.decision(ahead, 0)
            }
            Err(wait) => Decision::Denied {
                retry_after: Duration::from_nanos(wait),
            },
        };
        assert_eq!(got, expected, "after a pause of {pause} ms");
    }
}

/// Pins: the key layout `sluice:{<route>:<limit>:<key>}` (the braces: Redis Cluster's hash tag), with `%` and `:` escaped in names so
/// that different (route, limit) pairs never share a prefix.
#[tokio::test]
async fn keys_name_route_limit_and_key() {
    let headers = HeaderMap::new();
    let g = global(
        "orders",
        &limit_config("total", KeySpec::Global, 1, Per::Second, 1),
    );
    assert_eq!(
        g.redis_key(&LimitKey::Global, &headers),
        b"sluice:{orders:total:global}"
    );
    let ip: IpAddr = "2001:db8::".parse().unwrap();
    assert_eq!(
        g.redis_key(&LimitKey::Ip(ip), &headers),
        b"sluice:{orders:total:ip:2001:db8::}"
    );
    let a = global(
        "a:b",
        &limit_config("c", KeySpec::Global, 1, Per::Second, 1),
    );
    let b = global(
        "a",
        &limit_config("b:c", KeySpec::Global, 1, Per::Second, 1),
    );
    assert_eq!(&*a.prefix, b"sluice:{a%3Ab:c:");
    assert_eq!(&*b.prefix, b"sluice:{a:b%3Ac:");
    let pct = global(
        "50%",
        &limit_config("x", KeySpec::Global, 1, Per::Second, 1),
    );
    assert_eq!(&*pct.prefix, b"sluice:{50%25:x:");
}

/// Pins: a `header:` key is a stable SHA-256 prefix of the value (the same in every process, not
/// the per-process SipHash), never the value itself, and several lines differ from their
/// concatenation.
#[tokio::test]
async fn header_keys_are_stable_hashes_not_values() {
    let name = HeaderName::from_static("x-api-key");
    let g = global(
        "r",
        &limit_config("l", KeySpec::Header(name.clone()), 1, Per::Second, 1),
    );
    let mut one = HeaderMap::new();
    one.insert(&name, HeaderValue::from_static("secret-key-123"));
    let key = g.redis_key(&LimitKey::Header(7), &one);
    let text = String::from_utf8(key.clone()).unwrap();
    assert!(text.starts_with("sluice:{r:l:h:"), "{text}");
    assert!(text.ends_with('}'), "{text}");
    assert_eq!(text.len(), "sluice:{r:l:h:}".len() + 32, "{text}");
    assert!(!text.contains("secret"), "{text}");
    // The per-process hash in LimitKey plays no part.
    assert_eq!(g.redis_key(&LimitKey::Header(8), &one), key);

    let mut split = HeaderMap::new();
    split.append(&name, HeaderValue::from_static("secret-"));
    split.append(&name, HeaderValue::from_static("key-123"));
    assert_ne!(g.redis_key(&LimitKey::Header(7), &split), key);
}

/// Pins: `on_error` picks the answer when Redis cannot be asked, and no check waits longer than
/// `timeout` while the store is not connected.
#[tokio::test]
async fn on_error_applies_without_redis() {
    let config = limit_config("l", KeySpec::Global, 1, Per::Minute, 2);
    let headers = HeaderMap::new();
    for (on_error, expect) in [
        (
            OnStoreError::Local,
            Ok(Some(Decision::Admitted {
                remaining: 1,
                reset: Duration::from_secs(60),
            })),
        ),
        (OnStoreError::Allow, Ok(None)),
        (OnStoreError::Deny, Err(StoreUnavailable)),
    ] {
        let redis = RedisConfig {
            on_error,
            ..redis_config()
        };
        let errors = Counter::default();
        let store = Arc::new(Store::connect(
            &redis.target,
            None,
            redis.timeout,
            &Handle::current(),
            &errors,
        ));
        let g = Arc::new(GlobalLimit::new(
            "r",
            &config,
            &redis,
            store,
            Arc::new(RateLimit::new(&config)),
            Counter::default(),
        ));
        let started = Instant::now();
        let verdict = g.check(&LimitKey::Global, &headers).await;
        assert!(started.elapsed() < Duration::from_millis(500));
        match (verdict, expect) {
            // The local bucket's reset is a hair under 60 s by the time it is read.
            (
                Ok(Some(Decision::Admitted { remaining, .. })),
                Ok(Some(Decision::Admitted { remaining: r, .. })),
            ) => assert_eq!(remaining, r),
            (got, expect) => assert_eq!(got, expect, "{on_error:?}"),
        }
    }
}

// === leases ===

/// The script's grant of up to `want` tokens, in the script's own arithmetic (doubles, as
/// Redis' Lua numbers are): `Ok((k, ahead))` or `Err(retry_after)`.
fn lua_grant(d: i64, t: u64, tau: u64, want: u64) -> Result<(u64, u64), u64> {
    lua_grant_n(d, t, tau, want, 1)
}

/// [`lua_grant`] needing at least `need` tokens (`ARGV[4]`, the limit's cost).
fn lua_grant_n(d: i64, t: u64, tau: u64, want: u64, need: u64) -> Result<(u64, u64), u64> {
    let (d, t, tau, want) = (d as f64, t as f64, tau as f64, want as f64);
    let slack = tau - (need as f64 - 1.0) * t;
    if d > slack {
        return Err((d - slack) as u64);
    }
    let d = d.max(0.0);
    let room = tau + t - d;
    let mut k = (room / t).floor();
    if k * t > room {
        k -= 1.0;
    }
    let k = k.min(want);
    Ok((k as u64, (d + k * t) as u64))
}

/// Pins: a grant of k tokens leaves the TAT that k single requests in a row would have left and
/// is never more than the whole tokens the bucket holds; the script's double arithmetic (with
/// its step back after a quotient rounded up) counts them exactly within validated bounds.
#[test]
fn a_lease_never_takes_more_than_the_bucket_holds() {
    let (t, burst) = (1_000_000u64, 10u64);
    let tau = t * (burst - 1);
    for d in [
        -5 * t as i64,
        0,
        1,
        (t / 2) as i64,
        (3 * t) as i64,
        tau as i64,
        tau as i64 + 1,
    ] {
        for want in 1..=12 {
            // `tat − now = d`, both unsigned.
            let now = u64::try_from(-d.min(0)).unwrap_or(0) + 1;
            let mut tat = Some(u64::try_from(now as i64 + d).unwrap());
            let granted = lua_grant(d, t, tau, want);
            let mut singles = 0;
            let mut last = None;
            while singles < want {
                match step(&mut tat, now, t, tau) {
                    Ok(ahead) => {
                        singles += 1;
                        last = Some(ahead);
                    }
                    Err(_) => break,
                }
            }
            match granted {
                Ok((k, ahead)) => {
                    assert_eq!((k, Some(ahead)), (singles, last), "d {d}, want {want}");
                    assert!(k >= 1 && k <= want);
                }
                Err(_) => assert_eq!(singles, 0, "d {d}, want {want}"),
            }
        }
    }
    // Within the bounds validation enforces (burst × T ≤ 2^53 ns, so room ≤ 2^53), the
    // script's double arithmetic gives the exact whole number of tokens, the step back
    // included: checked over a spread of intervals and rooms, near the top of the range too.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..200_000 {
        // xorshift: a fixed, spread sequence.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let t = 1 + (x >> 11) % (1 << (x % 40));
        let max_n = (1u64 << 53) / t;
        let n = 1 + (x >> 3) % max_n;
        let room = (n * t).saturating_sub(x % t.clamp(1, 3)).max(t);
        let tau = room - t;
        let (k, ahead) = lua_grant(0, t, tau, u64::MAX).unwrap();
        assert_eq!(k, room / t, "t {t}, room {room}");
        assert_eq!(ahead, k * t);
    }
}

/// Pins: the `RateLimit` fields of a lease: right after a grant of k tokens (the request used
/// one, k − 1 are held) they are exactly those of a limit without lease after one request; each
/// leased admission then shows one token fewer; refill since the grant is counted.
#[tokio::test]
async fn leased_fields_count_the_bucket_and_the_lease() {
    let mut config = limit_config("l", KeySpec::Global, 10, Per::Second, 20);
    config.lease = 5;
    let g = global("r", &config);
    let t = g.emission_nanos;
    for d in [0, t / 3, 7 * t] {
        assert_eq!(g.decision(d + 5 * t, 4), g.decision(d + t, 0), "d {d}");
    }
    let first = g.decision(5 * t, 4);
    let Decision::Admitted { remaining, .. } = first else {
        panic!("{first:?}")
    };
    assert_eq!(remaining, 19);
    let next = g.decision(5 * t, 3);
    assert_eq!(
        next,
        Decision::Admitted {
            remaining: 18,
            reset: Duration::from_nanos(t)
        }
    );
    // Half a token of refill later: same count, half the wait.
    assert_eq!(
        g.decision(5 * t - t / 2, 3),
        Decision::Admitted {
            remaining: 18,
            reset: Duration::from_nanos(t / 2)
        }
    );
    // Never "full" after a request, however stale the grant.
    let Decision::Admitted { remaining, reset } = g.decision(0, 19) else {
        panic!()
    };
    assert_eq!(remaining, 19);
    assert!(reset > Duration::ZERO);
}

/// Pins: lease expiry is 16 × lease × T within 1 ms … 1 s.
#[test]
fn leased_tokens_live_sixteen_lease_refills_within_bounds() {
    let ms = Duration::from_millis;
    assert_eq!(lease_ttl(10, ms(1)), ms(160));
    assert_eq!(
        lease_ttl(100, Duration::from_micros(1)),
        Duration::from_micros(1600)
    );
    assert_eq!(lease_ttl(1, Duration::from_nanos(10)), ms(1));
    assert_eq!(lease_ttl(5, ms(6000)), Duration::from_secs(1));
    assert_eq!(
        lease_ttl(u32::MAX, Duration::from_secs(3600)),
        Duration::from_secs(1)
    );
}

/// Pins: the cluster hash slot of a key is CRC16 of its hash tag modulo 16384 (the examples of
/// the Redis Cluster specification), and every sluice key has its whole bucket name as tag.
#[tokio::test]
async fn keys_hash_to_the_slot_of_their_tag() {
    assert_eq!(slot_of(b"123456789"), 0x31C3);
    assert_eq!(slot_of(b"foo"), 12182);
    assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
    // An empty tag does not count: the whole key is hashed.
    assert_eq!(
        slot_of(b"foo{}{bar}"),
        crc16::State::<crc16::XMODEM>::calculate(b"foo{}{bar}") % 16384
    );
    assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
    assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
    let g = global("r", &limit_config("l", KeySpec::Global, 1, Per::Second, 1));
    let key = g.redis_key(&LimitKey::Global, &HeaderMap::new());
    assert_eq!(slot_of(&key), slot_of(b"r:l:global"));
}

/// What [`Memos::take`] says when Redis must be asked for `want` tokens.
fn ask(want: u32, refill: bool) -> Taken {
    Taken::Ask { want, refill }
}

/// A grant settled into the table: `left` tokens to keep, the bucket `ahead` ns from full.
fn granted(left: u32, ahead: u64) -> Settle {
    Settle::Granted { left, ahead }
}

/// A table with `lease` tokens per refill, leases living 100 ms.
fn memos(lease: u32, cap: usize) -> Memos {
    Memos::new(lease, Duration::from_millis(100), cap, Counter::default())
}

/// Pins: the life of a lease in the table: the first request refills inline (N asked), others
/// ask for one token while it is in flight; the tokens are then spent locally, one refill of
/// `N − left` starts at a quarter left and is the only one in flight, and the tokens held
/// never exceed N.
#[tokio::test(start_paused = true)]
async fn a_lease_is_spent_locally_and_refilled_once_at_a_quarter() {
    let m = memos(8, 16);
    let key = LimitKey::Global;
    assert_eq!(m.take(&key), ask(8, true));
    assert_eq!(m.take(&key), ask(1, false));
    m.settle(&key, true, granted(7, 8_000));
    let mut refills = Vec::new();
    for expect_left in (0..7).rev() {
        match m.take(&key) {
            Taken::Leased { left, refill, .. } => {
                assert_eq!(left, expect_left);
                refills.extend(refill);
                assert!(m.held(&key) <= 8);
            }
            other => panic!("{other:?}"),
        }
    }
    // At 2 left (8 / 4): one refill of 6; none while it is in flight.
    assert_eq!(refills, [6]);
    assert_eq!(m.take(&key), ask(1, false));
    m.settle(&key, true, granted(6, 8_000));
    assert_eq!(m.held(&key), 6);
    assert!(matches!(
        m.take(&key),
        Taken::Leased {
            left: 5,
            refill: None,
            ..
        }
    ));
}

/// Pins: with a cost, a leased admission takes the cost in tokens; fewer than the cost left
/// serve no request (the request asks Redis while the refill started at a quarter is in
/// flight), and the refill tops them up.
#[tokio::test(start_paused = true)]
async fn a_lease_is_spent_a_cost_at_a_time() {
    let m = memos(10, 16).costing(4);
    let key = LimitKey::Global;
    assert_eq!(m.take(&key), ask(10, true));
    m.settle(&key, true, granted(6, 10_000)); // 10 granted, 4 taken by the request
    assert_eq!(
        m.take(&key),
        Taken::Leased {
            left: 2,
            ahead: 10_000,
            refill: Some(8)
        },
        "2 left (a quarter of 10): a refill of 8 starts"
    );
    assert_eq!(
        m.take(&key),
        ask(1, false),
        "2 tokens serve no request of cost 4"
    );
    assert_eq!(m.held(&key), 2, "and stay");
    m.settle(&key, true, granted(8, 10_000));
    assert_eq!(m.held(&key), 10);
    assert!(matches!(m.take(&key), Taken::Leased { left: 6, .. }));
}

/// Pins: leased tokens expire (dropped, and the next request refills), a denial is spent
/// after the lease (no refill while Redis is known to deny), and a refill dropped unsettled
/// (its request went away) does not leave the key refilling for good.
#[tokio::test(start_paused = true)]
async fn leases_expire_denials_hold_and_dropped_refills_clear() {
    let m = memos(4, 16);
    let key = LimitKey::Header(7);
    assert_eq!(m.take(&key), ask(4, true));
    m.settle(&key, true, granted(3, 0));
    tokio::time::advance(Duration::from_millis(101)).await;
    assert_eq!(m.held(&key), 0);
    assert_eq!(m.take(&key), ask(4, true));

    m.settle(&key, true, granted(2, 0));
    m.settle(&key, false, Settle::Denied(Duration::from_secs(3)));
    // Two leased tokens first, without a refill (it would be denied), then the denial.
    assert!(matches!(
        m.take(&key),
        Taken::Leased {
            left: 1,
            refill: None,
            ..
        }
    ));
    assert!(matches!(
        m.take(&key),
        Taken::Leased {
            left: 0,
            refill: None,
            ..
        }
    ));
    match m.take(&key) {
        Taken::Denied(left) => {
            assert!(left <= Duration::from_secs(3) && left > Duration::from_secs(2))
        }
        other => panic!("{other:?}"),
    }
    tokio::time::advance(Duration::from_secs(3)).await;
    {
        let Taken::Ask {
            want: 4,
            refill: true,
        } = m.take(&key)
        else {
            panic!()
        };
        let _guard = m.refill(key);
        // Dropped here without an answer.
    }
    assert_eq!(m.take(&key), ask(4, true));
}

/// Pins: the table holds at most `cap` keys; when full, what has run out goes first, then the
/// least recently used entry, and the key being added is kept.
#[tokio::test(start_paused = true)]
async fn the_table_is_bounded_and_evicts_the_oldest() {
    let m = memos(0, 8);
    for i in 0..8u64 {
        m.settle(
            &LimitKey::Header(i),
            false,
            Settle::Denied(Duration::from_secs(10 + i)),
        );
    }
    assert_eq!(m.len(), 8);
    m.settle(
        &LimitKey::Header(100),
        false,
        Settle::Denied(Duration::from_secs(60)),
    );
    assert!(m.len() <= 8, "{}", m.len());
    assert!(matches!(m.take(&LimitKey::Header(100)), Taken::Denied(_)));
    // The least recently used denial (the first, as all were used at the same paused instant)
    // was evicted: that key asks Redis again.
    assert_eq!(m.take(&LimitKey::Header(0)), ask(1, false));
    // Expired entries make room first.
    tokio::time::advance(Duration::from_secs(30)).await;
    for i in 200..207u64 {
        m.settle(
            &LimitKey::Header(i),
            false,
            Settle::Denied(Duration::from_secs(5)),
        );
    }
    assert_eq!(m.len(), 8);
    for i in 200..207u64 {
        assert!(
            matches!(m.take(&LimitKey::Header(i)), Taken::Denied(_)),
            "{i}"
        );
    }
}

/// Pins: a global limit's memory of its keys (denials, leases) is bounded by the limit's
/// `max_keys`, and a live entry dropped for room counts in the eviction counter.
#[tokio::test(start_paused = true)]
async fn evictions_from_a_full_table_are_counted() {
    let evictions = Counter::default();
    let m = Memos::new(0, Duration::from_millis(100), 16, evictions.clone());
    for i in 0..100u64 {
        m.settle(
            &LimitKey::Header(i),
            false,
            Settle::Denied(Duration::from_secs(60 + i)),
        );
        assert!(m.len() <= 16, "{}", m.len());
    }
    assert!(evictions.get() >= 84, "{} evicted", evictions.get());
    assert!(matches!(m.take(&LimitKey::Header(99)), Taken::Denied(_)));
}

/// Pins: a full table reuses an entry that has run out before it evicts a live one, and only
/// the live one counts as an eviction; a table of one key holds one.
#[tokio::test(start_paused = true)]
async fn a_full_table_reuses_what_has_run_out_first() {
    let evictions = Counter::default();
    let m = Memos::new(0, Duration::from_millis(100), 16, evictions.clone());
    m.settle(
        &LimitKey::Header(0),
        false,
        Settle::Denied(Duration::from_secs(1)),
    );
    for i in 1..16u64 {
        m.settle(
            &LimitKey::Header(i),
            false,
            Settle::Denied(Duration::from_secs(60 + i)),
        );
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    m.settle(
        &LimitKey::Header(100),
        false,
        Settle::Denied(Duration::from_secs(60)),
    );
    assert_eq!(m.len(), 16);
    assert_eq!(evictions.get(), 0, "the expired entry made room");
    m.settle(
        &LimitKey::Header(101),
        false,
        Settle::Denied(Duration::from_secs(60)),
    );
    assert_eq!(m.len(), 16);
    assert_eq!(evictions.get(), 1, "a live entry made room");
    for key in [100, 101] {
        assert!(matches!(m.take(&LimitKey::Header(key)), Taken::Denied(_)));
    }

    let one = Memos::new(0, Duration::from_millis(100), 1, Counter::default());
    for i in 0..3u64 {
        one.settle(
            &LimitKey::Header(i),
            false,
            Settle::Denied(Duration::from_secs(60)),
        );
        assert_eq!(one.len(), 1);
    }
}
