use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::metrics::Metrics;

fn runtime(yaml: &str) -> Runtime {
    let config = crate::config::from_yaml(yaml, Path::new("test.yaml"))
        .unwrap_or_else(|e| panic!("test config invalid: {e}"));
    Runtime::build(config, None, Arc::new(Metrics::new()))
}

const YAML: &str = "server: { listen: 127.0.0.1:0 }\n\
     upstreams: { api: { endpoints: [http://127.0.0.1:9], concurrency: { max_inflight: 4, queue: 2 } } }\n\
     routes:\n\
       - { name: a, upstream: api, concurrency: { adaptive: {}, queue: 3 }, rate_limits: [{ name: per-ip, key: client_ip, rate: 5/s }] }\n\
       - { name: b, upstream: api }\n";

fn stats(shared: &Shared, history: &History) -> Value {
    serde_json::from_str(&render(shared, history)).expect("/stats is JSON")
}

fn route<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["routes"]
        .as_array()
        .and_then(|routes| routes.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no route {name} in {stats}"))
}

/// Cumulative buckets with `n` observations in the bucket of bound `bound`.
fn buckets_with(n: u64, bound: f64) -> Buckets {
    let i = BUCKETS.iter().position(|&b| b == bound).unwrap();
    std::array::from_fn(|j| if j >= i { n } else { 0 })
}

/// Quantiles interpolate within the bucket they fall in (as `histogram_quantile` does), are
/// `None` without observations, and read the highest bound when they fall in `+Inf`.
#[test]
fn quantiles_from_buckets() {
    assert_eq!(quantile(&[0; BUCKETS.len() + 1], 0.5), None);
    // 10 observations in (0.005, 0.01].
    let b = buckets_with(10, 0.01);
    let p50 = quantile(&b, 0.5).unwrap();
    assert!((p50 - 0.0075).abs() < 1e-12, "{p50}");
    let p99 = quantile(&b, 0.99).unwrap();
    assert!((p99 - 0.00995).abs() < 1e-12, "{p99}");
    // In the first bucket: from 0.
    let first = quantile(&buckets_with(4, 0.0001), 0.5).unwrap();
    assert!((first - 0.00005).abs() < 1e-12, "{first}");
    // Beyond the last bound.
    let mut inf = [0; BUCKETS.len() + 1];
    inf[BUCKETS.len()] = 3;
    assert_eq!(quantile(&inf, 0.99), Some(30.0));
    // 90 fast and 10 slow: p50 among the fast, p99 among the slow.
    let mut mixed = buckets_with(90, 0.001);
    for (m, s) in mixed.iter_mut().zip(buckets_with(10, 1.0)) {
        *m += s;
    }
    assert!(quantile(&mixed, 0.5).unwrap() <= 0.001);
    let p99 = quantile(&mixed, 0.99).unwrap();
    assert!(p99 > 0.5 && p99 <= 1.0, "{p99}");
}

/// Rates are the counters' increase over the window divided by its length, quantiles come from
/// the histograms' increase over the same window, and an upstream adds up its routes.
#[tokio::test(start_paused = true)]
async fn rates_and_quantiles_cover_the_window() {
    let shared = Shared::new(runtime(YAML));
    let history = History::default();
    let rt = shared.runtime();
    let (a, b) = (&rt.routes[0], &rt.routes[1]);
    // Before the window: counted in totals, not in rates.
    a.metrics.outcome(Outcome::Forwarded, false);
    a.metrics.upstream_duration.observe(5.0);
    history.sample(&rt);

    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..10 {
        a.metrics.outcome(Outcome::Forwarded, false);
        a.metrics.upstream_duration.observe(0.02);
    }
    for _ in 0..4 {
        a.metrics.outcome(Outcome::RateLimited, false);
    }
    a.metrics.outcome(Outcome::QueueFull, true); // shadow
    for _ in 0..6 {
        b.metrics.outcome(Outcome::Shed, false);
        b.metrics.outcome(Outcome::BadRequest, false);
        b.cap_metrics.queue_wait.observe(0.3);
        b.upstream_cap_metrics.queue_wait.observe(0.3);
    }
    let s = stats(&shared, &history);
    assert_eq!(s["window_seconds"], 2.0);
    let ra = route(&s, "a");
    assert_eq!(ra["requests_per_second"]["forwarded"], 5.0);
    assert_eq!(ra["requests_per_second"]["rate_limited"], 2.0);
    assert_eq!(ra["admitted_per_second"], 5.0);
    assert_eq!(ra["rejected_per_second"], 2.0);
    assert_eq!(ra["shadow_per_second"]["queue_full"], 0.5);
    assert_eq!(ra["requests_total"]["forwarded"], 11);
    let p50 = ra["upstream_latency_seconds"]["p50"].as_f64().unwrap();
    assert!(
        p50 > 0.01 && p50 <= 0.025,
        "the 5 s before the window is left out: {p50}"
    );
    assert!(ra["queue_wait_seconds"]["p50"].is_null(), "{ra}");
    let rb = route(&s, "b");
    assert_eq!(rb["rejected_per_second"], 3.0, "shed is a rejection");
    assert_eq!(rb["requests_per_second"]["bad_request"], 3.0);
    assert_eq!(rb["admitted_per_second"], 0.0, "a bad request is neither");
    let wait = rb["queue_wait_seconds"]["p99"].as_f64().unwrap();
    assert!(wait > 0.25 && wait <= 0.5, "{wait}");

    let up = &s["upstreams"][0];
    assert_eq!(up["name"], "api");
    assert_eq!(up["routes"], serde_json::json!(["a", "b"]));
    assert_eq!(up["admitted_per_second"], 5.0);
    assert_eq!(up["rejected_per_second"], 5.0);
    assert_eq!(up["requests_per_second"]["shed"], 3.0);
    assert!(up["upstream_latency_seconds"]["p99"].as_f64().unwrap() <= 0.025);
    let up_wait = up["queue_wait_seconds"]["p50"].as_f64().unwrap();
    assert!(up_wait > 0.25 && up_wait <= 0.5, "{up_wait}");
}

/// The figures read now: caps (fixed and adaptive), queue room, tracked keys, and the
/// process-wide members.
#[tokio::test(start_paused = true)]
async fn gauges_and_top_level_members() {
    let shared = Shared::new(runtime(YAML));
    shared.set_ready(true);
    let history = History::default();
    history.sample(&shared.runtime());
    let s = stats(&shared, &history);
    for member in [
        "time",
        "window_seconds",
        "started_at",
        "reloaded_at",
        "generation",
        "buffered_bytes",
        "max_buffered_bytes",
    ] {
        assert!(s[member].is_number(), "{member}: {s}");
    }
    assert_eq!(s["healthy"], true);
    assert_eq!(s["ready"], true);
    assert_eq!(s["generation"], 1);
    assert_eq!(
        s["reloads_total"],
        serde_json::json!({"success": 0, "failure": 0})
    );
    let a = route(&s, "a");
    assert_eq!(a["adaptive"], true);
    assert!(a["limit"].as_u64().unwrap() >= 1, "{a}");
    assert_eq!(a["queue_capacity"], 3);
    assert_eq!(a["rate_limits"][0]["name"], "per-ip");
    assert_eq!(a["rate_limit_keys"], 0);
    assert_eq!(a["priority"], "normal");
    assert_eq!(a["mode"], "enforce");
    let b = route(&s, "b");
    assert!(b["limit"].is_null() && b["queue_capacity"].is_null(), "{b}");
    assert_eq!(b["queue_depth"], 0);
    let up = &s["upstreams"][0];
    assert_eq!(up["limit"], 4);
    assert_eq!(up["adaptive"], false);
    assert_eq!(up["queue_capacity"], 2);
    assert_eq!(up["utilization"], 0.0);
}

/// The ring keeps at most `KEPT` samples: rates cover the last 5 to 6 s, not everything since
/// start; a route a reload added shows no rate until a sample knows it.
#[tokio::test(start_paused = true)]
async fn window_slides_and_new_routes_start_at_zero() {
    let shared = Shared::new(runtime(YAML));
    let history = History::default();
    for _ in 0..20 {
        history.sample(&shared.runtime());
        tokio::time::advance(SAMPLE_EVERY).await;
    }
    let s = stats(&shared, &history);
    let window = s["window_seconds"].as_f64().unwrap();
    assert!((5.0..=6.0).contains(&window), "{window}");
    assert!(history.samples.lock().unwrap().len() <= KEPT);

    let added = format!("{YAML}- {{ name: c, upstream: api }}\n");
    shared.swap(runtime(&added));
    let rt = shared.runtime();
    rt.routes[2].metrics.outcome(Outcome::Forwarded, false);
    let s = stats(&shared, &history);
    assert_eq!(route(&s, "c")["admitted_per_second"], 0.0);
    assert_eq!(route(&s, "c")["requests_total"]["forwarded"], 1);
    assert_eq!(s["generation"], 2);
    history.sample(&rt);
    rt.routes[2].metrics.outcome(Outcome::Forwarded, false);
    tokio::time::advance(SAMPLE_EVERY).await;
    let s = stats(&shared, &history);
    assert!(
        route(&s, "c")["admitted_per_second"].as_f64().unwrap() > 0.0,
        "{s}"
    );
}
