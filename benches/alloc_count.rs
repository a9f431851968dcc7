//! Heap allocations per operation on the request path, counted by a wrapping global allocator.
//!
//! Run: `cargo bench --bench alloc_count` (a second or two once built; see docs/benchmarks.md).
//!
//! Every piece is run a few times to warm up (lazy statics, the first map entry of a key, the
//! clock's calibration), then `ROUNDS` times with the counter on; the figure is allocations per
//! operation (`alloc` + `alloc_zeroed` + `realloc`; frees are not counted).
//!
//! The bench **panics** if any of these allocates at all: canonicalising a path that is
//! already canonical and checking a `Host`, route matching, key extraction, a rate-limit check
//! of a key the limiter already tracks (admitted or denied, also in a table full at
//! `max_keys`), a full concurrency cap refusing at once, and the bodies of the 429 and of the
//! three 503s (queue-full, queue-timeout, shed). Those are the rejection paths up to the
//! response: under overload they run for every request.
//!
//! The rest is printed, not asserted: a path that is not canonical is rebuilt (one `String`,
//! and the URI around it in the pipeline); a key seen for the first time needs its table slot
//! (none once the table is full: an evicted key's slot is reused); the
//! `RateLimit` field value of a 200 is one `HeaderValue` (its own buffer); and a 429 or 503
//! response is an `http::Response`, whose `HeaderMap` allocates its tables on the first insert —
//! with hyper's types that cannot be zero, and the 429 and the 503s make the same two. The counts are a regression check: a change that adds an
//! allocation to a response shows up here as a different number.
//!
//! The allocator counts on every thread, so the bench stays single-threaded (no runtime).
// A global allocator is an `unsafe` impl by its nature: the one unsafe code of the package
// (`unsafe_code = "deny"` in Cargo.toml's [lints]), and it only forwards to the system's.
#![allow(unsafe_code)]

#[path = "support/limits.rs"]
mod limits;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use sluice::canonical::{self, EscapedSlashes};
use sluice::config::{
    CapSize, ConcurrencyConfig, HostMatch, KeySpec, PathMatch, Per, Priority, RouteMatch,
};
use sluice::limit::headers::{policy_value, RateLimitField};
use sluice::limit::{ConcurrencyLimit, Decision, KeyExtractor, LimitKey, RateLimit, Rejected};
use sluice::rescue::{CapTemplate, RateLimitedTemplate};
use sluice::router::{Router, Target};

use limits::per_second;

/// Counts allocations while `ON` is set; otherwise the plain system allocator.
struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

impl Counting {
    fn note(size: usize) {
        if ON.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(size as u64, Ordering::Relaxed);
        }
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARMUP: u64 = 100;
const ROUNDS: u64 = 10_000;

/// Allocations and bytes per call of `op`, after `WARMUP` uncounted calls.
fn per_op<R>(mut op: impl FnMut(u64) -> R) -> (f64, f64) {
    for i in 0..WARMUP {
        drop(black_box(op(i)));
    }
    ALLOCS.store(0, Ordering::Relaxed);
    BYTES.store(0, Ordering::Relaxed);
    ON.store(true, Ordering::SeqCst);
    for i in 0..ROUNDS {
        // The result is dropped inside the counted window: frees are not counted anyway.
        drop(black_box(op(WARMUP + i)));
    }
    ON.store(false, Ordering::SeqCst);
    let n = ROUNDS as f64;
    (
        ALLOCS.load(Ordering::Relaxed) as f64 / n,
        BYTES.load(Ordering::Relaxed) as f64 / n,
    )
}

/// Polls `fut` once with a waker that does nothing: for futures that decide at once.
fn poll_once<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => {
            panic!("the future waits; the bench needs one that decides at once")
        }
    }
}

/// One line per operation; [`Report::zero`] failures are checked at the end.
struct Report {
    failures: Vec<String>,
}

impl Report {
    fn zero<R>(&mut self, name: &str, op: impl FnMut(u64) -> R) {
        let (allocs, bytes) = per_op(op);
        let verdict = if allocs == 0.0 {
            "ok (must be 0)"
        } else {
            "FAIL (must be 0)"
        };
        println!("{name:<62} {allocs:>8.3} {bytes:>10.1}  {verdict}");
        if allocs != 0.0 {
            self.failures.push(format!(
                "{name}: {allocs} allocations per operation ({bytes} bytes)"
            ));
        }
    }

    fn show<R>(&mut self, name: &str, op: impl FnMut(u64) -> R) {
        let (allocs, bytes) = per_op(op);
        println!("{name:<62} {allocs:>8.3} {bytes:>10.1}");
    }
}

/// 10 routes; requests match the last one (a full first-match scan).
fn router() -> Router {
    Router::new(
        (0..10)
            .map(|i| RouteMatch {
                host: (i % 2 == 1).then(|| HostMatch::Exact(format!("svc{i}.example.com"))),
                path: PathMatch::Prefix(format!("/api/v1/service{i}")),
                methods: (i % 3 == 0).then(|| vec![Method::GET, Method::POST]),
            })
            .collect(),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported (the whole run is short).
    println!("{:<62} {:>8} {:>10}", "operation", "allocs/op", "bytes/op");
    let mut report = Report {
        failures: Vec::new(),
    };

    // --- Canonicalisation: what the pipeline does first, before routing.
    report.zero("canonical::path, already canonical (5 segments)", |_| {
        let p = canonical::path(
            black_box("/api/v1/service9/items/42"),
            EscapedSlashes::Reject,
        );
        assert!(matches!(p, Ok(std::borrow::Cow::Borrowed(_))));
        p.map(|p| p.len())
    });
    report.zero("canonical::match_path, no ; parameters", |_| {
        canonical::match_path(black_box("/api/v1/service9/items/42")).len()
    });
    report.zero("canonical::host, name with port", |_| {
        canonical::host(black_box("svc9.example.com:8080")).map(|h| h.name.len())
    });
    report.show(
        "canonical::path, rebuilt (/api/%761/./service9//items/42)",
        |_| {
            canonical::path(
                black_box("/api/%761/./service9//items/42"),
                EscapedSlashes::Reject,
            )
            .map(|p| p.len())
        },
    );

    // --- Route matching: `Router::find(&Target::of(&req))`.
    let router = router();
    let req = Request::builder()
        .method(Method::GET)
        .uri("/api/v1/service9/items/42")
        .header("host", "svc9.example.com:8080")
        .body(())
        .unwrap();
    report.zero(
        "Router::find(Target::of(req)), 10 routes, last matches",
        |_| {
            let found = router.find(&Target::of(black_box(&req)));
            assert_eq!(found, Some(9));
            found
        },
    );
    report.zero("Router::find, no route matches (404 path)", |_| {
        router.find(&Target {
            host: Some("other.example.com"),
            path: black_box("/nowhere"),
            method: &Method::GET,
        })
    });

    // --- Key extraction.
    let trusted = ["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
    let keys = KeyExtractor::new(&trusted, 64);
    let untrusted_peer = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let proxy_peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let v6_peer = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6));
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_static("198.51.100.1, 203.0.113.7, 10.1.1.1, [fd00::1]:443"),
    );
    headers.append("x-forwarded-for", HeaderValue::from_static("10.2.2.2"));
    headers.insert("x-api-key", HeaderValue::from_static("k-0123456789abcdef"));
    let by_header = KeySpec::Header(HeaderName::from_static("x-api-key"));
    let by_missing_header = KeySpec::Header(HeaderName::from_static("x-tenant"));
    report.zero("KeyExtractor::client_ip, untrusted peer", |_| {
        keys.client_ip(black_box(untrusted_peer), &headers)
    });
    report.zero("KeyExtractor::client_ip, trusted peer, 2-line XFF", |_| {
        let ip = keys.client_ip(black_box(proxy_peer), &headers);
        assert_eq!(ip, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
        ip
    });
    report.zero("KeyExtractor::client_ip + key(client_ip), IPv6 /64", |_| {
        let ip = keys.client_ip(black_box(v6_peer), &headers);
        keys.key(&KeySpec::ClientIp, ip, &headers)
    });
    report.zero("KeyExtractor::key(global)", |_| {
        keys.key(&KeySpec::Global, black_box(untrusted_peer), &headers)
    });
    report.zero("KeyExtractor::key(header:x-api-key), keyed hash", |_| {
        keys.key(&by_header, black_box(untrusted_peer), &headers)
    });
    report.zero("KeyExtractor::key(header:x-tenant), missing -> IP", |_| {
        keys.key(&by_missing_header, black_box(untrusted_peer), &headers)
    });

    // --- Limiter checks.
    let global = RateLimit::new(&per_second(
        "total",
        KeySpec::Global,
        1_000_000_000,
        1_000_000_000,
    ));
    report.zero("RateLimit::check, global, admitted", |_| {
        let d = global.check(&LimitKey::Global);
        assert!(matches!(d, Decision::Admitted { .. }));
        d
    });
    let global_out = RateLimit::new(&per_second("total", KeySpec::Global, 1, 1));
    let _ = global_out.check(&LimitKey::Global);
    report.zero("RateLimit::check, global, denied", |_| {
        let d = global_out.check(&LimitKey::Global);
        assert!(matches!(d, Decision::Denied { .. }));
        d
    });

    // 10,000 tracked keys, all checked once before counting: the checks below hit existing
    // entries only (the key cycles through the 10,000).
    const KEYS: u32 = 10_000;
    let ip = |i: u64| LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i as u32 % KEYS))));
    let per_ip = RateLimit::new(&per_second(
        "per-client",
        KeySpec::ClientIp,
        1_000_000,
        1_000_000,
    ));
    let per_ip_out = RateLimit::new(&per_second("per-client", KeySpec::ClientIp, 1, 1));
    for i in 0..u64::from(KEYS) {
        let _ = per_ip.check(&ip(i));
        let _ = per_ip_out.check(&ip(i));
    }
    report.zero("RateLimit::check, client_ip, existing key, admitted", |i| {
        let d = per_ip.check(&ip(i));
        assert!(matches!(d, Decision::Admitted { .. }));
        d
    });
    report.zero("RateLimit::check, client_ip, existing key, denied", |i| {
        let d = per_ip_out.check(&ip(i));
        assert!(matches!(d, Decision::Denied { .. }));
        d
    });
    assert_eq!(
        per_ip.len(),
        KEYS as usize,
        "no key was added by the counted checks"
    );

    // A table full at max_keys (10,000, filled with 30,000 keys, so evicting): checks of keys
    // it holds allocate nothing either. 1/h: every key stays live (a stale key would be dropped
    // first, uncounted), so any new key during the counted checks would show as an eviction.
    // The checked keys are touched once more first, so they are the most recently used and none
    // is evicted meanwhile (asserted: no eviction during the counted checks).
    const FULL: u32 = 10_000;
    let mut full_config = per_second("per-client", KeySpec::ClientIp, 1, 1_000_000);
    full_config.rate.per = Per::Hour;
    full_config.max_keys = NonZeroUsize::new(FULL as usize).unwrap();
    let full = RateLimit::new(&full_config);
    let mut denied_config = per_second("per-client", KeySpec::ClientIp, 1, 1);
    denied_config.rate.per = Per::Hour;
    denied_config.max_keys = full_config.max_keys;
    let full_out = RateLimit::new(&denied_config);
    let late = |i: u64| LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(0x0c00_0000 + (i as u32 % 1000))));
    for i in 0..3 * FULL {
        let k = LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(0x0d00_0000 + i)));
        let _ = full.check(&k);
        let _ = full_out.check(&k);
    }
    for i in 0..1000 {
        let _ = full.check(&late(i));
        let _ = full_out.check(&late(i));
    }
    assert_eq!(full.len(), FULL as usize, "the table is full");
    let before = (full.evictions(), full_out.evictions());
    report.zero(
        "RateLimit::check, full table (max_keys), existing key, admitted",
        |i| {
            let d = full.check(&late(i));
            assert!(matches!(d, Decision::Admitted { .. }));
            d
        },
    );
    report.zero(
        "RateLimit::check, full table (max_keys), existing key, denied",
        |i| {
            let d = full_out.check(&late(i));
            assert!(matches!(d, Decision::Denied { .. }));
            d
        },
    );
    assert_eq!(
        (full.evictions(), full_out.evictions()),
        before,
        "the counted checks found every key"
    );

    // A key never seen: its table slot (plus, now and then, the table's growth).
    let fresh = RateLimit::new(&per_second("per-client", KeySpec::ClientIp, 100, 100));
    report.show("RateLimit::check, client_ip, new key (amortised)", |i| {
        fresh.check(&LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(i as u32))))
    });
    report.show("RateLimit::check, full table, new key (evicts one)", |i| {
        full.check(&LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(
            0x0e00_0000 + i as u32,
        ))))
    });

    // --- Header fields and the 429.
    let a = per_second("per-client", KeySpec::ClientIp, 100, 200);
    let b = per_second("total", KeySpec::Global, 1000, 1000);
    let policy = policy_value(&[&a, &b]);
    report.show("RateLimitField: 2 x push + finish (the HeaderValue)", |i| {
        let mut f = RateLimitField::new();
        f.push("per-client", (i % 200) as u32, Duration::from_millis(10));
        f.push("total", 999, Duration::from_millis(1));
        f.finish()
    });
    let template = RateLimitedTemplate::new(
        "create-order",
        &std::sync::Arc::from("per-client"),
        "limit per-client of route create-order: 100/s, burst 200",
        Some(policy.clone()),
    );
    report.zero("429 body (RateLimitedTemplate::body)", |_| {
        template.body(black_box(Duration::from_millis(1500)))
    });
    report.show(
        "429 response (body, Retry-After, RateLimit-Policy, RateLimit)",
        |_| template.respond(black_box(Duration::from_millis(1500))),
    );

    // --- The 503s: a full cap refusing at once, and the bodies of all three reasons.
    let cap = ConcurrencyLimit::new(ConcurrencyConfig {
        size: CapSize::Fixed(NonZeroUsize::MIN),
        queue: 0,
        queue_timeout: Duration::from_secs(1),
        fair_by: None,
        max_queued_per_key: None,
    });
    let held = poll_once(cap.acquire(Priority::Normal)).expect("a free slot");
    report.zero(
        "ConcurrencyLimit::acquire, cap and queue full (queue-full)",
        |_| {
            let refused = poll_once(cap.acquire(black_box(Priority::Normal)));
            assert!(matches!(refused, Err(Rejected::QueueFull { .. })));
            refused
        },
    );
    drop(held);
    let cap_problems = CapTemplate::new("create-order", "upstream", "orders");
    for (name, rejected) in [
        (
            "503 queue-full body (CapTemplate::body)",
            Rejected::QueueFull {
                retry_after: Duration::from_secs(3),
            },
        ),
        (
            "503 queue-timeout body",
            Rejected::QueueTimeout {
                retry_after: Duration::from_secs(1),
            },
        ),
        (
            "503 shed body",
            Rejected::Shed {
                retry_after: Duration::from_secs(60),
            },
        ),
    ] {
        report.zero(name, |_| cap_problems.body(black_box(rejected)));
    }
    report.show("503 response (body, Retry-After)", |_| {
        cap_problems.respond(black_box(Rejected::Shed {
            retry_after: Duration::from_secs(2),
        }))
    });
    // For comparison: where the 429's allocations come from.
    report.show("  of which: Bytes::from(Vec) with spare capacity", |_| {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(b"{\"retry_after\":2}");
        bytes::Bytes::from(v)
    });
    report.show("  vs Bytes::from(Vec) with len == capacity", |_| {
        let mut v = Vec::with_capacity(17);
        v.extend_from_slice(b"{\"retry_after\":2}");
        bytes::Bytes::from(v)
    });
    report.show("  http::HeaderMap::new + 1 insert", |_| {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("2"));
        h
    });

    if !report.failures.is_empty() {
        panic!(
            "allocations on a path that must not allocate:\n  {}",
            report.failures.join("\n  ")
        );
    }
    println!("\nzero-allocation checks passed (canonical path and host, route matching, key extraction, limiter checks on existing keys, full tables included, cap refusal, 429 and 503 bodies)");
}
