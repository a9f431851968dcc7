//! What can be pinned without a Redis server: the key layout and the conversion of the script's
//! answer into a [`Decision`]. The script itself runs against a real redis-server in
//! `tests/redis.rs`.

use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;
use crate::config::{Per, Rate};

fn limit_config(name: &str, key: KeySpec, count: u32, per: Per, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        name: Arc::from(name),
        key,
        rate: Rate {
            count: NonZeroU32::new(count).unwrap(),
            per,
        },
        burst: NonZeroU32::new(burst).unwrap(),
        scope: Scope::Global,
        max_keys: NonZeroUsize::new(1_000_000).unwrap(),
    }
}

fn redis_config() -> RedisConfig {
    RedisConfig {
        // Nothing listens on port 1: the store never connects, which these tests do not need.
        url: "redis://user:secret@127.0.0.1:1".into(),
        timeout: Duration::from_millis(20),
        on_error: OnStoreError::Local,
    }
}

fn global(route: &str, config: &RateLimitConfig) -> GlobalLimit {
    let redis = redis_config();
    let store = Arc::new(Store::connect(
        &redis,
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
            Ok(ahead) => g.admitted(ahead),
            Err(wait) => Decision::Denied {
                retry_after: Duration::from_nanos(wait),
            },
        };
        assert_eq!(got, expected, "after a pause of {pause} ms");
    }
}

/// Pins: the key layout `sluice:<route>:<limit>:<key>`, with `%` and `:` escaped in names so
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
        b"sluice:orders:total:global"
    );
    let ip: IpAddr = "2001:db8::".parse().unwrap();
    assert_eq!(
        g.redis_key(&LimitKey::Ip(ip), &headers),
        b"sluice:orders:total:ip:2001:db8::"
    );
    let a = global(
        "a:b",
        &limit_config("c", KeySpec::Global, 1, Per::Second, 1),
    );
    let b = global(
        "a",
        &limit_config("b:c", KeySpec::Global, 1, Per::Second, 1),
    );
    assert_eq!(&*a.prefix, b"sluice:a%3Ab:c:");
    assert_eq!(&*b.prefix, b"sluice:a:b%3Ac:");
    let pct = global(
        "50%",
        &limit_config("x", KeySpec::Global, 1, Per::Second, 1),
    );
    assert_eq!(&*pct.prefix, b"sluice:50%25:x:");
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
    assert!(text.starts_with("sluice:r:l:h:"), "{text}");
    assert_eq!(text.len(), "sluice:r:l:h:".len() + 32, "{text}");
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
        let store = Arc::new(Store::connect(&redis, &Handle::current(), &errors));
        let g = GlobalLimit::new(
            "r",
            &config,
            &redis,
            store,
            Arc::new(RateLimit::new(&config)),
            Counter::default(),
        );
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

/// The local denial cache holds at most `max_keys` keys: a flood of denied keys evicts the
/// least recently used denials (counted), and a fresh denial still holds.
#[tokio::test]
async fn denial_cache_is_bounded() {
    let mut config = limit_config("l", KeySpec::ClientIp, 1, Per::Hour, 1);
    config.max_keys = NonZeroUsize::new(16).unwrap();
    let g = global("r", &config);
    let key = |i: u32| LimitKey::Ip(IpAddr::from(std::net::Ipv4Addr::from(i)));
    for i in 0..100 {
        g.remember_denial(&key(i), Duration::from_secs(60));
        assert!(g.denials() <= 16);
    }
    assert_eq!(g.denials(), 16);
    assert_eq!(g.denied.evictions(), 84);
    assert!(g
        .still_denied(&key(99))
        .is_some_and(|left| left <= Duration::from_secs(60)));
    assert!(
        g.still_denied(&key(0)).is_none(),
        "the oldest denial was evicted"
    );
}
