use std::net::{IpAddr, Ipv4Addr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use prometheus_client::metrics::counter::Counter;

use super::{Decision, RateLimit};
use crate::config::{KeySpec, LimitScope, RateLimitConfig};
use crate::limit::key::LimitKey;

fn config(key: KeySpec, rate: &str, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        name: Arc::from("test"),
        key,
        rate: rate.parse().expect("test rate"),
        burst: NonZeroU32::new(burst).expect("test burst"),
        scope: LimitScope::Local,
        lease: 0,
        max_keys: NonZeroUsize::new(1_000_000).expect("nonzero"),
        cost: RateLimitConfig::DEFAULT_COST,
        charge_header: None,
    }
}

fn limit(
    key: KeySpec,
    rate: &str,
    burst: u32,
) -> (RateLimit<FakeRelativeClock>, FakeRelativeClock) {
    costing(key, rate, burst, 1)
}

/// A limit whose requests take `cost` tokens each, on a fake clock.
fn costing(
    key: KeySpec,
    rate: &str,
    burst: u32,
    cost: u32,
) -> (RateLimit<FakeRelativeClock>, FakeRelativeClock) {
    let mut c = config(key, rate, burst);
    c.cost = NonZeroU32::new(cost).expect("test cost");
    let clock = FakeRelativeClock::default();
    (
        RateLimit::with_clock(&c, clock.clone(), Counter::default()),
        clock,
    )
}

fn ip(s: &str) -> LimitKey {
    LimitKey::Ip(s.parse::<IpAddr>().expect("test address"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn admitted(remaining: u32, reset: Duration) -> Decision {
    Decision::Admitted { remaining, reset }
}

fn denied(retry_after: Duration) -> Decision {
    Decision::Denied { retry_after }
}

// The whole burst passes at once, the next request is denied, one emission interval later
// exactly one more passes.
#[test]
fn burst_then_denial_then_refill() {
    let (lim, clock) = limit(KeySpec::ClientIp, "10/s", 3);
    let a = ip("192.0.2.1");
    for _ in 0..3 {
        assert!(matches!(lim.check(&a), Decision::Admitted { .. }));
    }
    assert!(matches!(lim.check(&a), Decision::Denied { .. }));
    clock.advance(ms(100));
    assert!(
        matches!(lim.check(&a), Decision::Admitted { .. }),
        "one token back after 1/rate"
    );
    assert!(
        matches!(lim.check(&a), Decision::Denied { .. }),
        "and only one"
    );
}

// remaining counts down burst-1, burst-2, …, 0 while the clock stands still.
#[test]
fn remaining_counts_down_from_burst_minus_one() {
    let (lim, _clock) = limit(KeySpec::ClientIp, "5/s", 5);
    let a = ip("192.0.2.1");
    let seen: Vec<u32> = (0..5)
        .map(|_| match lim.check(&a) {
            Decision::Admitted { remaining, .. } => remaining,
            other => panic!("expected admission, got {other:?}"),
        })
        .collect();
    assert_eq!(seen, [4, 3, 2, 1, 0]);
}

// Denied.retry_after is the exact time until the bucket admits again, and shrinks as time passes.
#[test]
fn denied_retry_after_is_exact() {
    let (lim, clock) = limit(KeySpec::ClientIp, "1/s", 2);
    let a = ip("192.0.2.1");
    assert_eq!(lim.check(&a), admitted(1, Duration::from_secs(1)));
    assert_eq!(lim.check(&a), admitted(0, Duration::from_secs(1)));
    assert_eq!(lim.check(&a), denied(Duration::from_secs(1)));
    clock.advance(ms(300));
    assert_eq!(lim.check(&a), denied(ms(700)));
    clock.advance(ms(699));
    assert_eq!(lim.check(&a), denied(ms(1)));
    clock.advance(ms(1));
    assert!(matches!(
        lim.check(&a),
        Decision::Admitted { remaining: 0, .. }
    ));
}

// A denial takes nothing: after any number of denials, one interval still buys one request.
#[test]
fn denial_consumes_nothing() {
    let (lim, clock) = limit(KeySpec::ClientIp, "10/s", 1);
    let a = ip("192.0.2.1");
    assert_eq!(lim.check(&a), admitted(0, ms(100)));
    for _ in 0..100 {
        assert!(matches!(lim.check(&a), Decision::Denied { .. }));
    }
    clock.advance(ms(100));
    assert_eq!(lim.check(&a), admitted(0, ms(100)));
}

// reset is the exact time to the next whole token: T on a bucket that was full, then what is
// left of the current interval as time passes between requests.
#[test]
fn reset_is_exact_time_to_next_token() {
    let (lim, clock) = limit(KeySpec::ClientIp, "10/s", 3); // T = 100 ms
    let a = ip("192.0.2.1");
    assert_eq!(lim.check(&a), admitted(2, ms(100)));
    clock.advance(ms(30)); // level 2T+30 → take one → T+30
    assert_eq!(lim.check(&a), admitted(1, ms(70)));
    clock.advance(ms(50)); // T+80 → take one → 80
    assert_eq!(lim.check(&a), admitted(0, ms(20)));
    assert_eq!(
        lim.check(&a),
        denied(ms(20)),
        "reset and retry_after agree on an empty bucket"
    );
    clock.advance(Duration::from_secs(10)); // full again
    assert_eq!(lim.check(&a), admitted(2, ms(100)));
}

// N/m: T = 60/N s; retry_after and reset in seconds that an upper bound (T) would overstate.
#[test]
fn per_minute_rate() {
    let (lim, clock) = limit(KeySpec::ClientIp, "6/m", 6); // T = 10 s
    let a = ip("192.0.2.1");
    for left in (0..6).rev() {
        assert_eq!(lim.check(&a), admitted(left, Duration::from_secs(10)));
    }
    assert_eq!(lim.check(&a), denied(Duration::from_secs(10)));
    clock.advance(Duration::from_secs(25)); // 2.5 tokens back
    assert_eq!(lim.check(&a), admitted(1, Duration::from_secs(5)));
    assert_eq!(lim.check(&a), admitted(0, Duration::from_secs(5)));
    assert_eq!(lim.check(&a), denied(Duration::from_secs(5)));
}

// N/h: T = 3600/N s, with a burst smaller than N.
#[test]
fn per_hour_rate() {
    let (lim, clock) = limit(KeySpec::ClientIp, "2/h", 1); // T = 30 min
    let a = ip("192.0.2.1");
    assert_eq!(lim.check(&a), admitted(0, Duration::from_secs(1800)));
    assert_eq!(lim.check(&a), denied(Duration::from_secs(1800)));
    clock.advance(Duration::from_secs(1799));
    assert_eq!(lim.check(&a), denied(Duration::from_secs(1)));
    clock.advance(Duration::from_secs(1));
    assert_eq!(lim.check(&a), admitted(0, Duration::from_secs(1800)));
}

// Rates that do not divide the period: T is truncated to whole nanoseconds, like governor's.
#[test]
fn uneven_emission_interval() {
    let (lim, _clock) = limit(KeySpec::ClientIp, "3/s", 1);
    let a = ip("192.0.2.1");
    assert_eq!(
        lim.check(&a),
        admitted(0, Duration::from_nanos(333_333_333))
    );
    assert_eq!(lim.check(&a), denied(Duration::from_nanos(333_333_333)));
}

// Keys have separate buckets.
#[test]
fn keys_are_independent() {
    let (lim, _clock) = limit(KeySpec::ClientIp, "1/s", 1);
    assert!(matches!(
        lim.check(&ip("192.0.2.1")),
        Decision::Admitted { .. }
    ));
    assert!(matches!(
        lim.check(&ip("192.0.2.1")),
        Decision::Denied { .. }
    ));
    assert!(matches!(
        lim.check(&ip("192.0.2.2")),
        Decision::Admitted { .. }
    ));
    assert!(matches!(
        lim.check(&LimitKey::Header(7)),
        Decision::Admitted { .. }
    ));
}

// key: global has one bucket whatever key it is given, and counts as one key.
#[test]
fn global_limit_is_one_bucket() {
    let (lim, clock) = limit(KeySpec::Global, "10/s", 2);
    assert_eq!(lim.len(), 1);
    assert_eq!(lim.check(&LimitKey::Global), admitted(1, ms(100)));
    assert_eq!(lim.check(&ip("192.0.2.1")), admitted(0, ms(100)));
    assert_eq!(lim.check(&ip("192.0.2.2")), denied(ms(100)));
    clock.advance(Duration::from_secs(60));
    lim.housekeeping();
    assert_eq!(lim.len(), 1, "the single bucket is never evicted");
    assert_eq!(lim.check(&LimitKey::Global), admitted(1, ms(100)));
}

// housekeeping drops keys whose bucket is full again (len back to 0 after the refill time) and
// keeps the ones still refilling; a dropped key starts over with a full bucket.
#[test]
fn housekeeping_evicts_idle_keys_keeps_active_ones() {
    let (lim, clock) = limit(KeySpec::ClientIp, "10/s", 5); // T = 100 ms, refill 500 ms
    let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
    for left in (0..5).rev() {
        assert_eq!(lim.check(&a), admitted(left, ms(100))); // empty: full again at 500 ms
    }
    assert_eq!(lim.check(&b), admitted(4, ms(100))); // one token: full again at 100 ms
    assert_eq!(lim.len(), 2);

    clock.advance(ms(300));
    lim.housekeeping();
    assert_eq!(
        lim.len(),
        1,
        "b is full again and evicted, a is still refilling"
    );
    assert_eq!(lim.check(&c), admitted(4, ms(100)));
    assert_eq!(lim.len(), 2);

    clock.advance(ms(700)); // past a's and c's refill time plus one interval
    lim.housekeeping();
    assert_eq!(lim.len(), 0);
    assert!(lim.is_empty());
    assert_eq!(
        lim.check(&a),
        admitted(4, ms(100)),
        "an evicted key starts with a full bucket"
    );
}

// Under contention (CAS retries) every token is handed out exactly once, and each admitted
// request sees its own remaining count and a consistent reset.
#[test]
fn concurrent_checks_hand_out_each_token_once() {
    let (lim, _clock) = limit(KeySpec::Global, "10/s", 1000);
    let lim = Arc::new(lim);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let lim = Arc::clone(&lim);
            std::thread::spawn(move || {
                (0..200)
                    .map(|_| lim.check(&LimitKey::Global))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut remaining = Vec::new();
    let mut denials = 0;
    for t in threads {
        for d in t.join().expect("checker thread") {
            match d {
                Decision::Admitted {
                    remaining: r,
                    reset,
                } => {
                    assert_eq!(reset, ms(100));
                    remaining.push(r);
                }
                Decision::Denied { .. } => denials += 1,
            }
        }
    }
    remaining.sort_unstable();
    assert_eq!(remaining, (0..1000).collect::<Vec<_>>());
    assert_eq!(denials, 600);
}

// A limit is shared by all connections: it must be Send + Sync on the real clock.
#[test]
fn rate_limit_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RateLimit>();
    assert_send_sync::<Decision>();
}

// A burst whose refill time overflows governor's nanosecond arithmetic is cut, not wrapped.
#[test]
fn huge_burst_is_cut_not_wrapped() {
    let (lim, _clock) = limit(KeySpec::ClientIp, "1/h", u32::MAX);
    let a = ip("192.0.2.1");
    match lim.check(&a) {
        Decision::Admitted { remaining, reset } => {
            assert!(remaining > 1_000_000, "still a huge bucket: {remaining}");
            assert_eq!(reset, Duration::from_secs(3600));
        }
        other => panic!("expected admission, got {other:?}"),
    }
}

// On the real (quanta) clock the recorded TAT and clock reading still agree with governor's own
// remaining count (the debug assertion in `reset`), and reset stays within (0, T].
#[test]
fn real_clock_reset_within_one_interval() {
    // 1/h: the checks below cannot straddle a refill however slow the machine is.
    let lim = RateLimit::new(&config(KeySpec::ClientIp, "1/h", 3));
    let a = ip("192.0.2.1");
    for expected in [2, 1, 0] {
        match lim.check(&a) {
            Decision::Admitted { remaining, reset } => {
                assert_eq!(remaining, expected);
                assert!(
                    reset > Duration::ZERO && reset <= Duration::from_secs(3600),
                    "{reset:?}"
                );
            }
            other => panic!("expected admission, got {other:?}"),
        }
    }
    match lim.check(&a) {
        Decision::Denied { retry_after } => assert!(retry_after <= Duration::from_secs(3600)),
        other => panic!("expected denial, got {other:?}"),
    }
}

/// A keyed limit with at most `max_keys` keys, on a fake clock.
fn bounded(
    rate: &str,
    burst: u32,
    max_keys: usize,
) -> (RateLimit<FakeRelativeClock>, FakeRelativeClock) {
    let mut c = config(KeySpec::ClientIp, rate, burst);
    c.max_keys = NonZeroUsize::new(max_keys).expect("nonzero");
    let clock = FakeRelativeClock::default();
    (
        RateLimit::with_clock(&c, clock.clone(), Counter::default()),
        clock,
    )
}

fn nth(i: u32) -> LimitKey {
    LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)))
}

/// The flood: 120,000 distinct keys on a 1/h limit keep the table at `max_keys`, and
/// every key past the bound is one eviction.
#[test]
fn flood_of_keys_stays_at_max_keys() {
    let (lim, clock) = bounded("1/h", 1, 1000);
    for i in 0..120_000 {
        assert!(matches!(lim.check(&nth(i)), Decision::Admitted { .. }));
        if i % 1000 == 0 {
            clock.advance(ms(1));
        }
        assert!(lim.len() <= 1000);
    }
    assert_eq!(lim.len(), 1000);
    assert_eq!(lim.evictions(), 119_000);
}

/// A key in active use survives a flood of new keys: its bucket stays empty (denied) all along,
/// instead of being evicted and starting over full (what random eviction would do).
#[test]
fn active_key_survives_a_flood() {
    let (lim, clock) = bounded("1/h", 1, 1000);
    let active = ip("192.0.2.1");
    assert!(matches!(lim.check(&active), Decision::Admitted { .. }));
    for i in 0..120_000 {
        clock.advance(Duration::from_micros(10));
        let _ = lim.check(&nth(i));
        if i % 50 == 0 {
            assert!(
                matches!(lim.check(&active), Decision::Denied { .. }),
                "the active key was evicted after {i} new keys"
            );
        }
    }
    assert_eq!(lim.len(), 1000);
}

/// Keys whose bucket is full again are evicted before any key still refilling (forgetting them
/// loses nothing, so it is not counted); after them, the least recently used.
#[test]
fn stale_keys_go_first() {
    // 16 keys: one shard, no more slots than samples, so the choice is exact.
    let (lim, clock) = bounded("10/s", 1, 16);
    let idle = ip("192.0.2.1");
    assert!(matches!(lim.check(&idle), Decision::Admitted { .. })); // full again at 100 ms
    clock.advance(ms(50));
    for i in 0..15 {
        let _ = lim.check(&nth(i)); // full again at 150 ms
    }
    clock.advance(ms(70));
    // At 120 ms, `idle` is the only stale key: the new key takes its slot, uncounted.
    let _ = lim.check(&nth(100));
    assert_eq!((lim.evictions(), lim.len()), (0, 16));
    // Now nobody is stale: the next new key evicts the least recently used, nth(0), still
    // refilling: counted.
    let _ = lim.check(&nth(101));
    assert_eq!((lim.evictions(), lim.len()), (1, 16));
    for i in 1..15 {
        assert!(
            matches!(lim.check(&nth(i)), Decision::Denied { .. }),
            "nth({i}) kept its state"
        );
    }
    assert!(
        matches!(lim.check(&nth(0)), Decision::Admitted { .. }),
        "nth(0) was evicted and starts over"
    );
}

// cost 5 against burst 10: two requests pass (5 then 0 tokens left), the third waits for five
// tokens, not one; `reset` is still the time to the next whole token.
#[test]
fn cost_takes_several_tokens() {
    let (lim, clock) = costing(KeySpec::ClientIp, "10/s", 10, 5); // T = 100 ms
    let a = ip("192.0.2.1");
    assert_eq!(lim.check(&a), admitted(5, ms(100)));
    assert_eq!(lim.check(&a), admitted(0, ms(100)));
    assert_eq!(lim.check(&a), denied(ms(500)), "five tokens away");
    clock.advance(ms(420)); // 4.2 tokens
    assert_eq!(lim.check(&a), denied(ms(80)));
    clock.advance(ms(80));
    assert_eq!(lim.check(&a), admitted(0, ms(100)));
    clock.advance(ms(730)); // 7.3 tokens → take 5 → 2.3
    assert_eq!(lim.check(&a), admitted(2, ms(70)));
}

// A cost equal to the burst: one request per full bucket.
#[test]
fn cost_equal_to_burst() {
    let (lim, clock) = costing(KeySpec::Global, "1/s", 3, 3);
    assert_eq!(
        lim.check(&LimitKey::Global),
        admitted(0, Duration::from_secs(1))
    );
    assert_eq!(lim.check(&LimitKey::Global), denied(Duration::from_secs(3)));
    clock.advance(Duration::from_secs(2));
    assert_eq!(lim.check(&LimitKey::Global), denied(Duration::from_secs(1)));
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        lim.check(&LimitKey::Global),
        admitted(0, Duration::from_secs(1))
    );
}

// A charge puts the bucket into debt: the key is denied until the refill has paid the debt back
// and banked the request's cost, and `retry_after` says exactly when; other keys are untouched.
#[test]
fn charge_puts_key_into_debt() {
    let (lim, clock) = limit(KeySpec::ClientIp, "10/s", 10); // T = 100 ms
    let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
    assert_eq!(lim.check(&a), admitted(9, ms(100)));
    lim.charge(&a, 49); // the upstream said 50; 1 was taken: level 10 − 50 = −40 tokens
    assert_eq!(
        lim.check(&a),
        denied(Duration::from_millis(4100)),
        "40 owed + 1 to take"
    );
    assert_eq!(
        lim.check(&b),
        admitted(9, ms(100)),
        "another key is unaffected"
    );
    clock.advance(Duration::from_millis(4000));
    assert_eq!(lim.check(&a), denied(ms(100)));
    clock.advance(ms(100));
    assert_eq!(lim.check(&a), admitted(0, ms(100)));
}

// A debt is at most 10 × burst tokens, however much is charged, at once or in pieces; the
// key's next request of cost `c` passes after (10 × burst + c) × T at most.
#[test]
fn debt_is_capped_at_ten_bursts() {
    let (lim, clock) = costing(KeySpec::ClientIp, "10/s", 10, 2); // T = 100 ms
    let a = ip("192.0.2.1");
    assert_eq!(lim.check(&a), admitted(8, ms(100)));
    lim.charge(&a, u64::MAX);
    let most = Duration::from_millis((10 * 10 + 2) * 100);
    assert_eq!(lim.check(&a), denied(most), "level −100 tokens, 2 to take");
    lim.charge(&a, 1_000);
    assert_eq!(
        lim.check(&a),
        denied(most),
        "a second charge cannot go deeper"
    );
    clock.advance(most);
    assert_eq!(lim.check(&a), admitted(0, ms(100)));
}

// A charge of nothing changes nothing; a charge on a full bucket takes from it like requests
// would, without a check.
#[test]
fn small_charges() {
    let (lim, _clock) = limit(KeySpec::Global, "10/s", 10);
    lim.charge(&LimitKey::Global, 0);
    assert_eq!(lim.check(&LimitKey::Global), admitted(9, ms(100)));
    lim.charge(&LimitKey::Global, 4);
    assert_eq!(lim.check(&LimitKey::Global), admitted(4, ms(100)));
}

// A key in debt is not stale: housekeeping keeps it (forgetting it would forgive the debt).
#[test]
fn housekeeping_keeps_keys_in_debt() {
    let (lim, clock) = limit(KeySpec::ClientIp, "10/s", 2);
    let a = ip("192.0.2.1");
    assert!(matches!(lim.check(&a), Decision::Admitted { .. }));
    lim.charge(&a, 10);
    clock.advance(Duration::from_millis(900));
    lim.housekeeping();
    assert_eq!(lim.len(), 1);
    assert!(matches!(lim.check(&a), Decision::Denied { .. }));
}
