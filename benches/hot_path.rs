//! Criterion benches of the per-request hot path: path canonicalisation, route matching, key
//! extraction, limiter checks (also in tables full at `max_keys`), concurrency slots, header
//! formatting and the rejection response.
//! Run: `cargo bench --bench hot_path` (add a filter, e.g. `-- rate_check`).
// criterion's `criterion_group!` makes an undocumented `pub fn`.
#![allow(missing_docs)]

#[path = "support/limits.rs"]
mod limits;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};
use sluice::canonical::{self, EscapedSlashes};
use sluice::config::{
    CapSize, ConcurrencyConfig, HostMatch, KeySpec, PathMatch, Per, Priority, RouteMatch,
};
use sluice::limit::headers::{policy_value, RateLimitField};
use sluice::limit::{ConcurrencyLimit, KeyExtractor, LimitKey, RateLimit, Rejected};
use sluice::rescue::{CapTemplate, RateLimitedTemplate};
use sluice::router::{Router, Target};

use limits::per_second;

/// `n` routes with distinct prefixes and hosts; the request matches the last one, the worst
/// case for a first-match scan.
fn routes(n: usize) -> Router {
    Router::new(
        (0..n)
            .map(|i| RouteMatch {
                host: (i % 2 == 0).then(|| HostMatch::Exact(format!("svc{i}.example.com"))),
                path: PathMatch::Prefix(format!("/api/v1/service{i}")),
                methods: (i % 3 == 0).then(|| vec![Method::GET, Method::POST]),
            })
            .collect(),
    )
}

fn route_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match_last");
    for n in [10usize, 1000] {
        let router = routes(n);
        let last = n - 1;
        let host = format!("svc{last}.example.com");
        let path = format!("/api/v1/service{last}/items/42");
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let t = Target {
                    host: Some(black_box(&host)),
                    path: black_box(&path),
                    method: &Method::GET,
                };
                black_box(router.find(&t))
            })
        });
    }
    group.finish();
}

fn canonicalisation(c: &mut Criterion) {
    c.bench_function("canonical/path_already_canonical", |b| {
        b.iter(|| {
            black_box(canonical::path(
                black_box("/api/v1/service9/items/42"),
                EscapedSlashes::Reject,
            ))
        })
    });
    c.bench_function("canonical/path_rebuilt", |b| {
        b.iter(|| {
            black_box(canonical::path(
                black_box("/api/%761/./service9//items/42"),
                EscapedSlashes::Reject,
            ))
        })
    });
    c.bench_function("canonical/host", |b| {
        b.iter(|| black_box(canonical::host(black_box("svc9.example.com:8080"))))
    });
}

fn key_extraction(c: &mut Criterion) {
    let trusted = ["10.0.0.0/8".parse().unwrap()];
    let keys = KeyExtractor::new(&trusted, 64);
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_static("203.0.113.7, 10.1.1.1"),
    );
    headers.insert("x-api-key", HeaderValue::from_static("k-0123456789abcdef"));
    let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let by_header = KeySpec::Header(http::HeaderName::from_static("x-api-key"));
    c.bench_function("key/client_ip_trusted_xff", |b| {
        b.iter(|| black_box(keys.client_ip(black_box(peer), &headers)))
    });
    c.bench_function("key/header_hash", |b| {
        b.iter(|| black_box(keys.key(&by_header, black_box(peer), &headers)))
    });
}

fn rate_check(c: &mut Criterion) {
    // Generous limits so checks are admitted: the common path.
    let global = RateLimit::new(&per_second(
        "bench",
        KeySpec::Global,
        1_000_000_000,
        1_000_000_000,
    ));
    c.bench_function("rate_check/global", |b| {
        b.iter(|| black_box(global.check(&LimitKey::Global)))
    });

    let per_ip = RateLimit::new(&per_second(
        "bench",
        KeySpec::ClientIp,
        1_000_000,
        1_000_000,
    ));
    for i in 0..1_000_000u32 {
        let _ = per_ip.check(&LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(i))));
    }
    let mut i = 0u32;
    c.bench_function("rate_check/client_ip_1M_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % 1_000_000;
            black_box(per_ip.check(&LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(i)))))
        })
    });

    // A table full at max_keys (1M): 2M distinct keys went in, 1M were evicted. 1/h with a
    // burst of 1M: every key stays live (its bucket is nowhere near full again), so an eviction
    // has no stale entry to take and compares all 16 samples — the worst case. Checks of keys
    // it holds (the last 500,000, touched again so they are the most recent), and of new keys,
    // each of which evicts one.
    let mut hourly = per_second("bench", KeySpec::ClientIp, 1, 1_000_000);
    hourly.rate.per = Per::Hour;
    let full = RateLimit::new(&hourly);
    for i in 0..2_000_000u32 {
        let _ = full.check(&LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(0x1000_0000 + i))));
    }
    for i in 1_500_000..2_000_000u32 {
        let _ = full.check(&LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(0x1000_0000 + i))));
    }
    let mut i = 0u32;
    c.bench_function("rate_check/client_ip_full_1M_existing_key", |b| {
        b.iter(|| {
            i = (i + 7919) % 500_000;
            let key = LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(0x1000_0000 + 1_500_000 + i)));
            black_box(full.check(&key))
        })
    });
    let mut next = 0x2000_0000u32;
    c.bench_function("rate_check/client_ip_full_1M_new_key_evicts", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            black_box(full.check(&LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(next)))))
        })
    });
    assert_eq!(full.len(), 1_000_000);

    // Denied: the rejection path's limiter cost.
    let exhausted = RateLimit::new(&per_second("bench", KeySpec::Global, 1, 1));
    let _ = exhausted.check(&LimitKey::Global);
    c.bench_function("rate_check/denied", |b| {
        b.iter(|| black_box(exhausted.check(&LimitKey::Global)))
    });

    // Multi-threaded: two threads hammering one global bucket (contended CAS).
    let shared = Arc::new(RateLimit::new(&per_second(
        "bench",
        KeySpec::Global,
        1_000_000_000,
        1_000_000_000,
    )));
    let mut group = c.benchmark_group("rate_check_2_threads");
    group.throughput(Throughput::Elements(2 * 10_000));
    group.bench_function("global", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let l = shared.clone();
                    s.spawn(move || {
                        for _ in 0..10_000 {
                            let _ = black_box(l.check(&LimitKey::Global));
                        }
                    });
                }
            })
        })
    });
    group.finish();
}

fn concurrency_slots(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cap = ConcurrencyLimit::new(ConcurrencyConfig {
        size: CapSize::Fixed(NonZeroUsize::new(64).unwrap()),
        queue: 1000,
        queue_timeout: Duration::from_secs(10),
        fair_by: None,
        max_queued_per_key: None,
    });
    c.bench_function("slot/acquire_release_uncontended", |b| {
        b.iter(|| rt.block_on(async { drop(black_box(cap.acquire(Priority::Normal).await)) }))
    });

    // 1,000 waiters queued behind one slot: each release hands the slot to the next waiter.
    let one = ConcurrencyLimit::new(ConcurrencyConfig {
        size: CapSize::Fixed(NonZeroUsize::new(1).unwrap()),
        queue: 1000,
        queue_timeout: Duration::from_secs(60),
        fair_by: None,
        max_queued_per_key: None,
    });
    let mut group = c.benchmark_group("slot_queue");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("enqueue_dequeue_1000_waiters", |b| {
        b.iter(|| {
            rt.block_on(async {
                let first = one.acquire(Priority::Normal).await;
                let mut waiters = Vec::with_capacity(1000);
                for i in 0..1000 {
                    let cap = one.clone();
                    let p = if i % 4 == 0 {
                        Priority::High
                    } else {
                        Priority::Low
                    };
                    waiters.push(tokio::spawn(async move { drop(cap.acquire(p).await) }));
                }
                tokio::task::yield_now().await;
                drop(first);
                for w in waiters {
                    let _ = w.await;
                }
            })
        })
    });
    group.finish();
}

fn header_formatting(c: &mut Criterion) {
    let a = per_second("bench", KeySpec::ClientIp, 100, 200);
    let mut b2 = per_second("bench", KeySpec::Global, 1000, 1000);
    b2.name = Arc::from("total");
    c.bench_function("headers/policy_value_2_limits", |b| {
        b.iter(|| black_box(policy_value(&[&a, &b2])))
    });
    c.bench_function("headers/ratelimit_field_2_items", |b| {
        b.iter(|| {
            let mut f = RateLimitField::new();
            f.push("per-client", black_box(199), Duration::from_millis(10));
            f.push("total", black_box(999), Duration::from_millis(1));
            black_box(f.finish())
        })
    });
}

fn rejection_response(c: &mut Criterion) {
    let template = RateLimitedTemplate::new(
        "create-order",
        &Arc::from("per-client"),
        "limit per-client of route create-order: 100/s, burst 200",
        Some(HeaderValue::from_static("\"per-client\";q=200;w=2")),
    );
    c.bench_function("rescue/429_response", |b| {
        b.iter(|| black_box(template.respond(black_box(Duration::from_millis(1500)))))
    });
    let cap = CapTemplate::new("create-order", "upstream", "orders");
    let rejected = Rejected::QueueFull {
        retry_after: Duration::from_secs(3),
    };
    c.bench_function("rescue/503_response", |b| {
        b.iter(|| black_box(cap.respond(black_box(rejected))))
    });
}

criterion_group!(
    benches,
    canonicalisation,
    route_matching,
    key_extraction,
    rate_check,
    concurrency_slots,
    header_formatting,
    rejection_response
);
criterion_main!(benches);
