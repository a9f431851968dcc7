//! `GET /stats`: the dashboard's figures as JSON, for the page and for any script.
//!
//! Rates and quantiles need two readings of the same counters and histograms. A task on the
//! admin thread ([`run_sampler`]) reads them every [`SAMPLE_EVERY`] into a ring of at most
//! [`KEPT`] samples; `/stats` reads them once more and takes the difference to the oldest
//! sample, so its rates and quantiles cover the last few seconds (`window_seconds`) without a
//! Prometheus. Gauges (in flight, the cap in force, queue depth, tracked keys) are read when
//! `/stats` is asked.
//!
//! Nothing here touches the request path: the counters, gauges and histograms are the ones
//! `/metrics` reads, and the caps' state is read under their lock as a scrape reads it. The
//! ring is bounded by design: [`KEPT`] samples, each of 2 × 13 outcome counters and 2 × 18
//! bucket counts per route and 18 per upstream — about 600 bytes a route.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use tokio::time::Instant;

use crate::metrics::{read_buckets, Buckets, Outcome, BUCKETS};
use crate::runtime::{unix_ms, Route, Runtime, Shared};
use crate::shutdown::ShutdownWatch;

/// How often the sampler reads the counters.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept: `/stats` differences against the oldest, taken 5 to 6 s earlier (less in the
/// first seconds after start).
pub(super) const KEPT: usize = 6;

/// Outcomes counted as admitted: sent upstream (answered, failed or timed out).
const ADMITTED: [Outcome; 3] = [
    Outcome::Forwarded,
    Outcome::UpstreamError,
    Outcome::UpstreamTimeout,
];
/// Outcomes counted as rejected: sluice pushed back (429 and the 503s of limits and caps).
/// Malformed requests and clients that left are neither.
const REJECTED: [Outcome; 6] = [
    Outcome::RateLimited,
    Outcome::QueueFull,
    Outcome::QueueTimeout,
    Outcome::Shed,
    Outcome::StoreUnavailable,
    Outcome::UpstreamPushback,
];

/// Request counts by outcome, in [`Outcome::ALL`] order.
type Counts = [u64; Outcome::ALL.len()];

/// The sampler's ring of readings.
#[derive(Debug, Default)]
pub(super) struct History {
    /// Oldest first, at most [`KEPT`]. std Mutex: held to push or to clone an `Arc`, never
    /// across an `.await`.
    samples: Mutex<VecDeque<Arc<Snapshot>>>,
}

/// One reading of every counter and histogram `/stats` differences.
#[derive(Debug)]
struct Snapshot {
    at: Instant,
    /// By route name: counters survive reloads by name, so a sample taken under an older
    /// runtime still applies to a route of the same name.
    routes: HashMap<Arc<str>, RouteSample>,
    /// Queue wait of each upstream's cap, by upstream name.
    upstream_waits: HashMap<Arc<str>, Buckets>,
    /// Requests answered before a route: (no route, bad request).
    unrouted: (u64, u64),
}

#[derive(Debug)]
struct RouteSample {
    outcomes: Counts,
    shadow: Counts,
    queue_wait: Buckets,
    latency: Buckets,
}

/// The JSON of `GET /stats` (documented in docs/reference.md, "Stats JSON").
#[derive(Debug, Serialize)]
struct Stats<'a> {
    time: f64,
    window_seconds: f64,
    healthy: bool,
    ready: bool,
    generation: u64,
    started_at: f64,
    reloaded_at: f64,
    reloads_total: Reloads,
    buffered_bytes: u64,
    max_buffered_bytes: u64,
    unrouted_per_second: Unrouted,
    routes: Vec<RouteStats<'a>>,
    upstreams: Vec<UpstreamStats<'a>>,
}

#[derive(Debug, Serialize)]
struct Reloads {
    success: u64,
    failure: u64,
}

#[derive(Debug, Serialize)]
struct Unrouted {
    no_route: f64,
    bad_request: f64,
}

#[derive(Debug, Serialize)]
struct RouteStats<'a> {
    name: &'a str,
    upstream: &'a str,
    priority: &'static str,
    mode: &'static str,
    admitted_per_second: f64,
    rejected_per_second: f64,
    requests_per_second: ByOutcome<f64>,
    shadow_per_second: ByOutcome<f64>,
    requests_total: ByOutcome<u64>,
    #[serde(flatten)]
    cap: CapStats,
    queue_wait_seconds: Quantiles,
    upstream_latency_seconds: Quantiles,
    rate_limit_keys: usize,
    rate_limits: Vec<LimitStats<'a>>,
    /// A `defer:` route's tasks (the whole fleet's, as Redis last told); `null` otherwise, or
    /// before the first count.
    deferred: Option<DeferredStats>,
}

/// The tasks of a deferring route, by state.
#[derive(Debug, Serialize)]
struct DeferredStats {
    queued: i64,
    delivering: i64,
    delivered: i64,
    dead: i64,
    oldest_age_seconds: f64,
}

#[derive(Debug, Serialize)]
struct UpstreamStats<'a> {
    name: &'a str,
    routes: Vec<&'a str>,
    admitted_per_second: f64,
    rejected_per_second: f64,
    requests_per_second: ByOutcome<f64>,
    #[serde(flatten)]
    cap: CapStats,
    utilization: Option<f64>,
    queue_wait_seconds: Quantiles,
    upstream_latency_seconds: Quantiles,
    /// `protocol:` as configured: `http1`, `http2` or `auto`.
    protocol: &'static str,
    /// True for `https://` endpoints.
    tls: bool,
    endpoints: Vec<EndpointStats>,
}

/// One endpoint of an upstream: `{"address": "127.0.0.2:8080", "state": "healthy",
/// "inflight": 3, "protocol": "http2"}`.
#[derive(Debug, Serialize)]
struct EndpointStats {
    address: String,
    state: &'static str,
    inflight: usize,
    /// What its last connection spoke (`http1`, `http2`); `null` before the first.
    protocol: Option<&'static str>,
}

/// In flight against a cap: the same members for a route and an upstream.
#[derive(Debug, Serialize)]
struct CapStats {
    /// The `sluice_inflight` gauge (also without a cap).
    inflight: i64,
    /// The cap in force (`sluice_concurrency_limit`); `None` without a cap.
    limit: Option<usize>,
    /// Whether the cap is adaptive.
    adaptive: bool,
    queue_depth: usize,
    /// `concurrency.queue`; `None` without a cap.
    queue_capacity: Option<usize>,
}

#[derive(Debug, Serialize)]
struct LimitStats<'a> {
    name: &'a str,
    keys: usize,
    evictions_total: u64,
}

/// p50 and p99 in seconds over the window; `None` (JSON `null`) when nothing was observed.
#[derive(Debug, Serialize)]
struct Quantiles {
    p50: Option<f64>,
    p99: Option<f64>,
}

/// Numbers by outcome, serialised as an object keyed by the `outcome` label values.
#[derive(Debug)]
struct ByOutcome<T>([T; Outcome::ALL.len()]);

/// What a figure's increase is measured from: the oldest sample that has it, and the time
/// from then until now.
#[derive(Debug)]
struct Base<'s, T> {
    then: &'s T,
    elapsed: f64,
}

// === impl History ===

impl History {
    /// Appends a sample, dropping the oldest beyond [`KEPT`].
    fn push(&self, sample: Snapshot) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(Arc::new(sample));
    }

    /// The samples kept, oldest first.
    fn samples(&self) -> Vec<Arc<Snapshot>> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.iter().cloned().collect()
    }

    /// Takes a sample of `runtime` now.
    pub(super) fn sample(&self, runtime: &Runtime) {
        self.push(Snapshot::take(runtime));
    }
}

/// Samples every [`SAMPLE_EVERY`] until `stop` fires. Runs on the admin thread: a sample reads
/// every route's counters and encodes its histograms, well under a millisecond for a few
/// dozen routes.
pub(super) async fn run_sampler(
    shared: Arc<Shared>,
    history: Arc<History>,
    mut stop: ShutdownWatch,
) {
    // The first sample was taken when the admin thread started.
    let mut tick = tokio::time::interval_at(Instant::now() + SAMPLE_EVERY, SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => history.sample(&shared.runtime()),
            () = stop.wait() => return,
        }
    }
}

/// The JSON answer of `/stats`, now.
pub(super) fn render(shared: &Shared, history: &History) -> String {
    let runtime = shared.runtime();
    let now = Snapshot::take(&runtime);
    let samples = history.samples();
    let stats = Stats::new(shared, &runtime, &now, &samples);
    // Serialising numbers, strings and maps into a String cannot fail.
    serde_json::to_string(&stats).unwrap_or_else(|_| "{}".to_owned())
}

// === impl Base ===

// By hand: the derives would ask `T: Copy`, and only the reference is copied.
impl<T> Clone for Base<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Base<'_, T> {}

impl<'s, T> Base<'s, T> {
    /// The oldest of `samples` that `get` finds something in (a route or upstream a reload
    /// added is only in the samples taken since).
    fn find(
        samples: &'s [Arc<Snapshot>],
        now: &Snapshot,
        get: impl Fn(&'s Snapshot) -> Option<&'s T>,
    ) -> Option<Self> {
        samples.iter().find_map(|sample| {
            get(sample).map(|then| Base {
                then,
                elapsed: now.at.saturating_duration_since(sample.at).as_secs_f64(),
            })
        })
    }

    /// `delta` per second over the elapsed time (0 when none has elapsed).
    fn per_second(&self, delta: u64) -> f64 {
        if self.elapsed > 0.0 {
            round(delta as f64 / self.elapsed, 1e3)
        } else {
            0.0
        }
    }
}

// === impl Snapshot ===

impl Snapshot {
    fn take(runtime: &Runtime) -> Snapshot {
        // Each upstream's queue-wait histogram through the first route that sends to it (an
        // upstream no route names has had no request).
        let mut waits: Vec<(Arc<str>, usize)> = Vec::new();
        let mut histograms = Vec::with_capacity(runtime.routes.len() * 3);
        for route in &runtime.routes {
            histograms.push(&route.cap_metrics.queue_wait);
            histograms.push(&route.metrics.upstream_duration);
        }
        for route in &runtime.routes {
            if !waits.iter().any(|(name, _)| *name == route.upstream.name) {
                waits.push((route.upstream.name.clone(), histograms.len()));
                histograms.push(&route.upstream_cap_metrics.queue_wait);
            }
        }
        let buckets = read_buckets(&histograms);
        let routes = runtime
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let (outcomes, shadow) = route.metrics.outcome_counts();
                let sample = RouteSample {
                    outcomes,
                    shadow,
                    queue_wait: buckets[2 * i],
                    latency: buckets[2 * i + 1],
                };
                (route.name.clone(), sample)
            })
            .collect();
        Snapshot {
            at: Instant::now(),
            routes,
            upstream_waits: waits
                .into_iter()
                .map(|(name, i)| (name, buckets[i]))
                .collect(),
            unrouted: runtime.metrics.unrouted_counts(),
        }
    }
}

// === impl Stats ===

impl<'a> Stats<'a> {
    fn new(
        shared: &Shared,
        runtime: &'a Runtime,
        now: &Snapshot,
        samples: &[Arc<Snapshot>],
    ) -> Self {
        let routes: Vec<RouteStats<'a>> = runtime
            .routes
            .iter()
            .map(|route| {
                let base = Base::find(samples, now, |s| s.routes.get(&route.name));
                let deferred = deferred(shared, route);
                RouteStats::new(route, &now.routes[&route.name], base, deferred)
            })
            .collect();
        let upstreams = runtime
            .upstreams
            .iter()
            .map(|up| UpstreamStats::new(up, runtime, &routes, now, samples))
            .collect();
        let (success, failure) = runtime.metrics.reload_counts();
        let unrouted = Base::find(samples, now, |s| Some(&s.unrouted));
        let unrouted_rate = |pick: fn(&(u64, u64)) -> u64| {
            unrouted.map_or(0.0, |b| {
                b.per_second(pick(&now.unrouted).saturating_sub(pick(b.then)))
            })
        };
        Stats {
            time: seconds(unix_ms(SystemTime::now())),
            window_seconds: unrouted.map_or(0.0, |b| round(b.elapsed, 1e3)),
            healthy: true,
            ready: shared.is_ready(),
            generation: shared.generation(),
            started_at: seconds(shared.started_at_ms()),
            reloaded_at: seconds(shared.reloaded_at_ms()),
            reloads_total: Reloads { success, failure },
            buffered_bytes: runtime.budget.used(),
            max_buffered_bytes: runtime.config.server.client.max_buffered_bytes.0,
            unrouted_per_second: Unrouted {
                no_route: unrouted_rate(|u| u.0),
                bad_request: unrouted_rate(|u| u.1),
            },
            routes,
            upstreams,
        }
    }
}

// === impl RouteStats ===

impl<'a> RouteStats<'a> {
    /// Without a base (no sample has the route yet), rates are 0 and quantiles `null`.
    fn new(
        route: &'a Route,
        now: &RouteSample,
        base: Option<Base<'_, RouteSample>>,
        deferred: Option<DeferredStats>,
    ) -> Self {
        let rates = |pick: fn(&RouteSample) -> &Counts| {
            ByOutcome(std::array::from_fn(|i| {
                base.map_or(0.0, |b| {
                    b.per_second(pick(now)[i].saturating_sub(pick(b.then)[i]))
                })
            }))
        };
        let before = base.map(|b| b.then);
        let requests_per_second = rates(|s| &s.outcomes);
        let rate_limits: Vec<LimitStats<'a>> = route
            .limits
            .iter()
            .map(|l| LimitStats {
                name: &l.rate.config().name,
                keys: l.rate.len(),
                evictions_total: l.rate.evictions(),
            })
            .collect();
        RouteStats {
            name: &route.name,
            upstream: &route.upstream.name,
            priority: route.priority.as_str(),
            mode: match route.mode {
                crate::config::Mode::Enforce => "enforce",
                crate::config::Mode::Shadow => "shadow",
            },
            admitted_per_second: round(sum_of(&requests_per_second.0, &ADMITTED), 1e3),
            rejected_per_second: round(sum_of(&requests_per_second.0, &REJECTED), 1e3),
            shadow_per_second: rates(|s| &s.shadow),
            requests_total: ByOutcome(now.outcomes),
            requests_per_second,
            cap: CapStats::new(route.concurrency.as_ref(), route.metrics.inflight.get()),
            queue_wait_seconds: Quantiles::of(&delta(
                &now.queue_wait,
                before.map(|b| &b.queue_wait),
            )),
            upstream_latency_seconds: Quantiles::of(&delta(
                &now.latency,
                before.map(|b| &b.latency),
            )),
            rate_limit_keys: rate_limits.iter().map(|l| l.keys).sum(),
            rate_limits,
            deferred,
        }
    }
}

/// The task counts of a deferring route, as its deliverers last read them.
fn deferred(shared: &Shared, route: &Route) -> Option<DeferredStats> {
    route.defer.as_ref()?;
    let counts = shared.deliverers.counts(&route.name)?;
    Some(DeferredStats {
        queued: counts.queued,
        delivering: counts.delivering,
        delivered: counts.delivered,
        dead: counts.dead,
        oldest_age_seconds: counts.oldest_ms as f64 / 1000.0,
    })
}

// === impl UpstreamStats ===

impl<'a> UpstreamStats<'a> {
    /// Rates and latency add up those of the routes that send to `up`; in flight, the cap and
    /// the queue are the upstream's own.
    fn new(
        up: &'a Arc<crate::proxy::Upstream>,
        runtime: &'a Runtime,
        routes: &[RouteStats<'a>],
        now: &Snapshot,
        samples: &[Arc<Snapshot>],
    ) -> Self {
        let mine: Vec<(&'a Route, &RouteStats<'a>)> = runtime
            .routes
            .iter()
            .zip(routes)
            .filter(|(r, _)| Arc::ptr_eq(&r.upstream, up))
            .collect();
        let mut rates = [0.0; Outcome::ALL.len()];
        let mut latency = [0; BUCKETS.len() + 1];
        for (route, stats) in &mine {
            for (sum, rate) in rates.iter_mut().zip(stats.requests_per_second.0) {
                *sum += rate;
            }
            let before = Base::find(samples, now, |s| s.routes.get(&route.name));
            let increase = delta(
                &now.routes[&route.name].latency,
                before.map(|b| &b.then.latency),
            );
            for (sum, d) in latency.iter_mut().zip(increase) {
                *sum += d;
            }
        }
        let wait = now
            .upstream_waits
            .get(&up.name)
            .map_or([0; BUCKETS.len() + 1], |w| {
                let before = Base::find(samples, now, |s| s.upstream_waits.get(&up.name));
                delta(w, before.map(|b| b.then))
            });
        let inflight = mine.first().map_or(0, |(r, _)| r.upstream_inflight.get());
        let cap = CapStats::new(up.concurrency.as_ref(), inflight);
        UpstreamStats {
            name: &up.name,
            routes: mine.iter().map(|(r, _)| &*r.name).collect(),
            admitted_per_second: round(sum_of(&rates, &ADMITTED), 1e3),
            rejected_per_second: round(sum_of(&rates, &REJECTED), 1e3),
            requests_per_second: ByOutcome(rates.map(|r| round(r, 1e3))),
            // As `sluice_utilization`: the cap's own slots (shadow-mode requests, in the
            // `inflight` gauge, hold none), in one read with its limit.
            utilization: up.concurrency.as_ref().map(|c| {
                let (inflight, limit) = c.inflight_and_limit();
                round(inflight as f64 / limit.max(1) as f64, 1e3)
            }),
            cap,
            queue_wait_seconds: Quantiles::of(&wait),
            upstream_latency_seconds: Quantiles::of(&latency),
            protocol: up.config().protocol.as_str(),
            tls: up.config().https,
            endpoints: EndpointStats::of(up),
        }
    }
}

// === impl EndpointStats ===

impl EndpointStats {
    /// Every endpoint of `up` now.
    fn of(up: &crate::proxy::Upstream) -> Vec<Self> {
        let view = |v: crate::proxy::fleet::health::EndpointView| EndpointStats {
            address: v.address.to_string(),
            state: v.state.as_str(),
            inflight: v.inflight,
            protocol: v.spoken.map(|s| s.as_str()),
        };
        up.fleet().views().into_iter().map(view).collect()
    }
}

// === impl CapStats ===

impl CapStats {
    fn new(cap: Option<&crate::limit::ConcurrencyLimit>, inflight: i64) -> Self {
        match cap {
            Some(cap) => {
                let config = cap.config();
                CapStats {
                    inflight,
                    limit: Some(cap.limit()),
                    adaptive: matches!(config.size, crate::config::CapSize::Adaptive(_)),
                    queue_depth: cap.queue_depth(),
                    queue_capacity: Some(config.queue),
                }
            }
            None => CapStats {
                inflight,
                limit: None,
                adaptive: false,
                queue_depth: 0,
                queue_capacity: None,
            },
        }
    }
}

// === impl Quantiles ===

impl Quantiles {
    fn of(buckets: &Buckets) -> Self {
        Quantiles {
            p50: quantile(buckets, 0.5).map(|q| round(q, 1e6)),
            p99: quantile(buckets, 0.99).map(|q| round(q, 1e6)),
        }
    }
}

// === impl ByOutcome ===

impl<T: Serialize> Serialize for ByOutcome<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (outcome, value) in Outcome::ALL.iter().zip(&self.0) {
            map.serialize_entry(outcome.as_str(), value)?;
        }
        map.end()
    }
}

/// The `q` quantile of cumulative bucket counts, interpolated linearly within its bucket as
/// Prometheus' `histogram_quantile` does (from 0 in the first bucket; the highest bound,
/// 30 s, when it falls in `+Inf`). `None` when nothing was observed.
fn quantile(buckets: &Buckets, q: f64) -> Option<f64> {
    let total = buckets[BUCKETS.len()];
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let i = buckets.iter().position(|&c| c as f64 >= rank)?;
    let Some(&upper) = BUCKETS.get(i) else {
        return BUCKETS.last().copied();
    };
    let (lower, below) = match i {
        0 => (0.0, 0),
        _ => (BUCKETS[i - 1], buckets[i - 1]),
    };
    let inside = buckets[i].saturating_sub(below);
    if inside == 0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below as f64) / inside as f64)
}

/// `now - before`, bucket by bucket; nothing without a base (a route new since).
fn delta(now: &Buckets, before: Option<&Buckets>) -> Buckets {
    match before {
        Some(b) => std::array::from_fn(|i| now[i].saturating_sub(b[i])),
        None => [0; BUCKETS.len() + 1],
    }
}

fn sum_of(rates: &[f64; Outcome::ALL.len()], outcomes: &[Outcome]) -> f64 {
    outcomes
        .iter()
        .filter_map(|o| Outcome::ALL.iter().position(|a| a == o))
        .map(|i| rates[i])
        .sum()
}

/// `v` rounded to `1/scale`: the JSON carries meaningful digits only.
fn round(v: f64, scale: f64) -> f64 {
    (v * scale).round() / scale
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1e3
}

#[cfg(test)]
mod tests;
