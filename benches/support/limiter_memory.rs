//! The body of the limiter memory benches (`limiter_memory`, system allocator, and
//! `limiter_memory_mimalloc`, the allocator the `sluice` binary uses). Each bench file sets its
//! global allocator and calls [`run`]. See docs/benchmarks.md.
//!
//! One `client_ip` limit (100/s, burst 100, `max_keys` = `LIMITER_KEYS`), then:
//! 1. baseline RSS;
//! 2. `LIMITER_KEYS` (default 1,000,000) distinct IPv4 keys, each checked once → RSS, `len()`;
//!    the table is then full (a shard that gets more than its share evicts the surplus);
//! 3. as many new keys again, into the full table → RSS, `len()`, evictions: memory stays
//!    where it was;
//! 4. wait until every key's bucket is full again and has been for one emission interval
//!    (governor's eviction rule; refill time 1 s + margin), `housekeeping()` → RSS, `len()`;
//! 5. half a second of ordinary small allocations (a server keeps allocating; some allocators
//!    only return freed memory to the OS from inside later calls) → RSS;
//! 6. the allocator's own release call (`release`, e.g. glibc `malloc_trim(0)`) → RSS;
//! 7. another `LIMITER_KEYS` keys, none seen before → RSS: memory freed by eviction is reused,
//!    not added to.
//!
//! RSS is `VmRSS` of /proc/self/status (Linux only); the peak is `VmHWM`.

use std::net::{IpAddr, Ipv4Addr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::config::{KeySpec, LimitScope, Per, Rate, RateLimitConfig};
use sluice::limit::{LimitKey, RateLimit};

/// The growth target of the issue: 1M keys in less than this.
const GROWTH_TARGET_MB: f64 = 200.0;

/// `VmRSS` and `VmHWM` in MiB.
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux)");
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn line(step: &str, keys: usize, base: f64, secs: Option<f64>) -> f64 {
    let (now, peak) = rss();
    let took = secs.map_or(String::new(), |s| format!("  ({s:.2} s)"));
    println!(
        "{step:<44} len={keys:>9}  RSS {now:>8.1} MiB  (+{:>7.1} over baseline)  peak {peak:>8.1} MiB{took}",
        now - base
    );
    now
}

/// Small short-lived allocations for `d`, with 1 ms pauses: what a serving process does anyway.
fn churn(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        for i in 0..1000usize {
            std::hint::black_box(vec![0u8; 64 + i % 512]);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn check_range(limit: &RateLimit, from: u32, n: u32) -> f64 {
    let start = Instant::now();
    for i in from..from + n {
        // Distinct addresses from 11.0.0.0 on; every check of a new key is admitted.
        let _ = limit.check(&LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i))));
    }
    start.elapsed().as_secs_f64()
}

/// Runs the bench; `allocator` names the global allocator in the output, `release` asks it to
/// give free memory back to the OS (if it can). Exits with status 1 if a target is missed.
pub(crate) fn run(allocator: &str, release: Option<(&str, fn())>) {
    let n: u32 = std::env::var("LIMITER_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let config = RateLimitConfig {
        name: Arc::from("per-client"),
        key: KeySpec::ClientIp,
        rate: Rate {
            count: NonZeroU32::new(100).unwrap(),
            per: Per::Second,
        },
        burst: NonZeroU32::new(100).unwrap(),
        scope: LimitScope::Local,
        lease: 0,
        max_keys: NonZeroUsize::new(n as usize).unwrap(),
        cost: RateLimitConfig::DEFAULT_COST,
        charge_header: None,
    };
    // Full again after burst × T = 1 s at the latest; governor then keeps a key for one more
    // emission interval T (10 ms). 1.2 s after the last check every key is evictable.
    let idle = Duration::from_millis(1200);
    println!(
        "limiter_memory: {n} distinct client_ip keys, limit 100/s burst 100, allocator: {allocator}"
    );

    let limit = RateLimit::new(&config);
    let (base, _) = rss();
    line("baseline", limit.len(), base, None);

    let secs = check_range(&limit, 0, n);
    let filled = line(
        &format!("after {n} keys, each checked once"),
        limit.len(),
        base,
        Some(secs),
    );
    let growth = filled - base;

    let secs = check_range(&limit, 2 * n, n);
    let full = line(
        &format!("after {n} more new keys, table full"),
        limit.len(),
        base,
        Some(secs),
    );
    let keys_before = limit.len();
    let evictions = limit.evictions();

    std::thread::sleep(idle);
    let start = Instant::now();
    limit.housekeeping();
    let hk = start.elapsed().as_secs_f64();
    let evicted = line(
        &format!("idle {} ms, then housekeeping()", idle.as_millis()),
        limit.len(),
        base,
        Some(hk),
    );
    let keys_after = limit.len();

    churn(Duration::from_millis(500));
    let churned = line("after 0.5 s of small allocations", limit.len(), base, None);

    let released = match release {
        Some((name, f)) => {
            f();
            Some(line(&format!("after {name}"), limit.len(), base, None))
        }
        None => None,
    };

    let secs = check_range(&limit, n, n);
    let again = line(
        &format!("after {n} more new keys"),
        limit.len(),
        base,
        Some(secs),
    );

    println!();
    println!(
        "growth for {n} keys: {growth:.1} MiB = {:.0} bytes/key; target < {GROWTH_TARGET_MB} MB: {}",
        growth * 1024.0 * 1024.0 / f64::from(n),
        if growth < GROWTH_TARGET_MB { "met" } else { "MISSED" }
    );
    println!(
        "table full at max_keys {n}: {keys_before} keys, {evictions} evictions; RSS +{:.1} MiB \
         over baseline ({:+.1} MiB from the first fill): {}",
        full - base,
        full - filled,
        if keys_before <= n as usize && full - filled < 0.1 * growth.max(1.0) {
            "bounded"
        } else {
            "NOT bounded"
        }
    );
    println!(
        "keys tracked: {keys_before} before housekeeping, {keys_after} after: {}",
        if keys_after == 0 {
            "all evicted"
        } else {
            "NOT all evicted"
        }
    );
    println!(
        "RSS after eviction: +{:.1} MiB over baseline right after housekeeping, +{:.1} MiB after 0.5 s \
         of other allocations{}",
        evicted - base,
        churned - base,
        released.map_or(String::new(), |r| format!(
            ", +{:.1} MiB after the allocator's release call",
            r - base
        ))
    );
    println!(
        "RSS after {n} more new keys: +{:.1} MiB over baseline (not cumulative: {}; {:.1} MiB would \
         be the two fills added up)",
        again - base,
        if again - base < 2.0 * growth { "yes" } else { "NO" },
        2.0 * growth
    );
    if growth >= GROWTH_TARGET_MB || keys_after != 0 || keys_before > n as usize {
        std::process::exit(1);
    }
}
