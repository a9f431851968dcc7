//! Prometheus metrics: what tells an operator that backpressure is building.
//!
//! Families live for the whole process (in [`Metrics`]), so series survive reloads. Each
//! runtime builds per-route and per-upstream *handles* ([`RouteMetrics`], [`ScopeMetrics`])
//! when it is built: the request path only increments atomics — no label hashing, no string
//! keys, no allocation. Gauges that are a property of a limiter (queue depth, the cap in force,
//! utilisation, tracked keys) are read from the current runtime when `/metrics` is scraped.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

mod exposition;

pub(crate) use exposition::Format;

/// Histogram buckets for an edge proxy: 100 µs … 30 s.
pub(crate) const BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The cumulative counts of a histogram's buckets, as exposed: observations ≤ each bound of
/// [`BUCKETS`], then all of them (`+Inf`).
pub(crate) type Buckets = [u64; BUCKETS.len() + 1];

/// How a request ended: the `outcome` label of `sluice_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    /// Sent upstream and answered.
    Forwarded,
    /// 429.
    RateLimited,
    /// 503: cap and queue full.
    QueueFull,
    /// 503: waited queue_timeout.
    QueueTimeout,
    /// 503: evicted by higher-priority work.
    Shed,
    /// 502.
    UpstreamError,
    /// 504.
    UpstreamTimeout,
    /// 404.
    NoRoute,
    /// 503: a `scope: global` limit could not reach Redis and `on_error: deny`.
    StoreUnavailable,
    /// The client went away before its response head (NGINX logs these as 499): queued, or
    /// waiting for the upstream. Nothing was sent, so no `sluice_responses_total` code.
    ClientClosed,
    /// 400: the request was malformed (its body's framing, its path, its Host, a repeated
    /// key header) — the client's fault, never an upstream error.
    BadRequest,
    /// 413: the body is larger than `max_request_body`.
    BodyTooLarge,
    /// 408: the body did not arrive within `request_body_timeout`.
    BodyTimeout,
    /// 202: written to Redis for deferred delivery.
    Deferred,
    /// 503: every endpoint of the upstream asked to wait (503 with `Retry-After`).
    UpstreamPushback,
}

impl Outcome {
    /// Every outcome, in label order.
    pub(crate) const ALL: [Outcome; 15] = [
        Outcome::Forwarded,
        Outcome::RateLimited,
        Outcome::QueueFull,
        Outcome::QueueTimeout,
        Outcome::Shed,
        Outcome::UpstreamError,
        Outcome::UpstreamTimeout,
        Outcome::NoRoute,
        Outcome::StoreUnavailable,
        Outcome::ClientClosed,
        Outcome::BadRequest,
        Outcome::BodyTooLarge,
        Outcome::BodyTimeout,
        Outcome::Deferred,
        Outcome::UpstreamPushback,
    ];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::RateLimited => "rate_limited",
            Outcome::QueueFull => "queue_full",
            Outcome::QueueTimeout => "queue_timeout",
            Outcome::Shed => "shed",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::NoRoute => "no_route",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::ClientClosed => "client_closed",
            Outcome::BadRequest => "bad_request",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::Deferred => "deferred",
            Outcome::UpstreamPushback => "upstream_pushback",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RequestLabels {
    route: Arc<str>,
    outcome: Outcome,
    shadow: bool,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, mut encoder: LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("route", &*self.route).encode(encoder.encode_label())?;
        ("outcome", self.outcome.as_str()).encode(encoder.encode_label())?;
        if self.shadow {
            ("shadow", "true").encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ResponseLabels {
    route: Arc<str>,
    code: u16,
}

impl EncodeLabelSet for ResponseLabels {
    fn encode(&self, mut encoder: LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("route", &*self.route).encode(encoder.encode_label())?;
        ("code", self.code as u64).encode(encoder.encode_label())
    }
}

/// `route="x"` or `upstream="y"`: whose inflight, queue or wait.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    /// A route.
    Route(Arc<str>),
    /// An upstream.
    Upstream(Arc<str>),
}

impl EncodeLabelSet for Scope {
    fn encode(&self, mut encoder: LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        match self {
            Scope::Route(name) => ("route", &**name).encode(encoder.encode_label()),
            Scope::Upstream(name) => ("upstream", &**name).encode(encoder.encode_label()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LimitLabels {
    route: Arc<str>,
    limit: Arc<str>,
}

impl EncodeLabelSet for LimitLabels {
    fn encode(&self, mut encoder: LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("route", &*self.route).encode(encoder.encode_label())?;
        ("limit", &*self.limit).encode(encoder.encode_label())
    }
}

/// `sluice_rate_limited_total`'s labels: the limit that answered, and its plan (empty for a
/// limit without plans).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RateLimitedLabels {
    limit: LimitLabels,
    plan: Arc<str>,
}

impl EncodeLabelSet for RateLimitedLabels {
    fn encode(&self, mut encoder: LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("route", &*self.limit.route).encode(encoder.encode_label())?;
        ("limit", &*self.limit.limit).encode(encoder.encode_label())?;
        ("plan", &*self.plan).encode(encoder.encode_label())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct UpstreamLabel(Arc<str>);

impl EncodeLabelSet for UpstreamLabel {
    fn encode(&self, mut encoder: LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("upstream", &*self.0).encode(encoder.encode_label())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ResultLabel(&'static str);

/// `route`, and a `status` or `result` of deferred delivery.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DeferLabels {
    route: Arc<str>,
    /// `status` or `result`.
    name: &'static str,
    value: &'static str,
}

impl EncodeLabelSet for DeferLabels {
    fn encode(&self, mut encoder: LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("route", &*self.route).encode(encoder.encode_label())?;
        (self.name, self.value).encode(encoder.encode_label())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ReasonLabel(&'static str);

impl EncodeLabelSet for ReasonLabel {
    fn encode(&self, mut encoder: LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("reason", self.0).encode(encoder.encode_label())
    }
}

impl EncodeLabelSet for ResultLabel {
    fn encode(&self, mut encoder: LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("result", self.0).encode(encoder.encode_label())
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A family's name (as registered: counters get `_total` on their samples) and help text.
type Help = (&'static str, &'static str);

const REQUESTS: Help = ("sluice_requests", "Requests by route and how they ended");
const RESPONSES: Help = ("sluice_responses", "Responses by route and status code");
const INFLIGHT: Help = (
    "sluice_inflight",
    "Requests in flight, by route or upstream",
);
const QUEUE_DEPTH: Help = (
    "sluice_queue_depth",
    "Requests waiting for a concurrency slot",
);
const QUEUE_WAIT: Help = (
    "sluice_queue_wait_seconds",
    "Time spent waiting for a concurrency slot",
);
const UPSTREAM_DURATION: Help = (
    "sluice_upstream_duration_seconds",
    "Time from sending a request upstream until its response head",
);
const CONCURRENCY_LIMIT: Help = (
    "sluice_concurrency_limit",
    "The concurrency cap in force, fixed or adaptive",
);
const UPSTREAM_RETRIES: Help = (
    "sluice_upstream_retries",
    "Requests sent to an upstream again, on another endpoint (retries)",
);
const UPSTREAM_ENDPOINTS: Help = (
    "sluice_upstream_endpoints",
    "Endpoints of an upstream by state: healthy, unhealthy (active check), ejected (outlier), pushback (503 with Retry-After)",
);
const UTILIZATION: Help = (
    "sluice_utilization",
    "Upstream in-flight requests / the cap in force",
);
const UPGRADED: Help = (
    "sluice_upgraded_connections",
    "Upgraded (WebSocket) connections open now, handshakes toward one included, by route",
);
const RATE_LIMIT_KEYS: Help = ("sluice_rate_limit_keys", "Rate limit keys tracked now");
const RATE_LIMIT_EVICTIONS: Help = (
    "sluice_rate_limit_evictions",
    "Keys evicted because the limit's table was full (max_keys)",
);
const RATE_LIMITED: Help = (
    "sluice_rate_limited",
    "429s by the rate limit that answered (and its plan: empty for a limit without plans)",
);
const RELOADS: Help = ("sluice_config_reloads", "Config reloads by result");
const BUFFERED_BYTES: Help = (
    "sluice_buffered_bytes",
    "Request and response body bytes buffered now (bounded by server.max_buffered_bytes)",
);
const CONNECTIONS_REFUSED: Help = (
    "sluice_connections_refused",
    "Client connections closed at accept, by reason (per_ip: server.max_connections_per_ip)",
);
const STORE_ERRORS: Help = (
    "sluice_store_errors",
    "Redis calls that failed or timed out",
);
const DEFERRED_TASKS: Help = (
    "sluice_deferred_tasks",
    "Deferred tasks by status now, in the whole fleet (read from Redis)",
);
const DEFERRED_TOTAL: Help = (
    "sluice_deferred",
    "Deferred tasks accepted, delivered, retried and given up (dead) by this instance",
);
const DEFERRED_OLDEST: Help = (
    "sluice_deferred_oldest_age_seconds",
    "Age of the oldest task waiting in a route's stream (read from Redis)",
);
const DEFERRED_DELIVERY: Help = (
    "sluice_deferred_delivery_seconds",
    "Time from accepting a deferred task to its delivery",
);

/// Buckets of `sluice_deferred_delivery_seconds`: deferred work waits from milliseconds (idle
/// upstream) to hours (an outage), beyond [`BUCKETS`]' 30 s.
pub(crate) const DELIVERY_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// The `status` values of `sluice_deferred_tasks`.
const DEFER_STATUSES: [&str; 4] = ["queued", "delivering", "delivered", "dead"];

const TLS_HANDSHAKE_FAILURES: Help = (
    "sluice_tls_handshake_failures",
    "TLS handshakes that failed or timed out",
);

/// Registers `metric` and hands it back (families are shared handles).
fn register<M: Metric + Clone>(registry: &mut Registry, (name, help): Help, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

fn delivery_histogram() -> Histogram {
    Histogram::new(DELIVERY_BUCKETS)
}

/// The families of the fleet behind each upstream.
#[derive(Debug)]
struct FleetFamilies {
    /// `sluice_upstream_retries_total{upstream}`.
    retries: Family<UpstreamLabel, Counter>,
    /// `sluice_upstream_endpoints{upstream, state}`.
    endpoints: Family<EndpointLabels, Gauge>,
}

impl FleetFamilies {
    fn register(r: &mut Registry) -> Self {
        FleetFamilies {
            retries: register(r, UPSTREAM_RETRIES, Family::default()),
            endpoints: register(r, UPSTREAM_ENDPOINTS, Family::default()),
        }
    }
}

/// `upstream` and `state` of `sluice_upstream_endpoints`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EndpointLabels {
    upstream: Arc<str>,
    state: &'static str,
}

impl EncodeLabelSet for EndpointLabels {
    fn encode(&self, mut encoder: LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("upstream", &*self.upstream).encode(encoder.encode_label())?;
        ("state", self.state).encode(encoder.encode_label())?;
        Ok(())
    }
}

/// The `sluice_deferred_*` families: a deferring route's tasks by state, its results, the age
/// of its oldest task and its acceptance-to-delivery time.
#[derive(Debug)]
struct DeferredFamilies {
    tasks: Family<DeferLabels, Gauge>,
    total: Family<DeferLabels, Counter>,
    oldest: Family<Scope, Gauge<f64, AtomicU64>>,
    delivery: HistogramFamily<Scope>,
}

impl DeferredFamilies {
    fn register(r: &mut Registry) -> Self {
        DeferredFamilies {
            tasks: register(r, DEFERRED_TASKS, Family::default()),
            total: register(r, DEFERRED_TOTAL, Family::default()),
            oldest: register(r, DEFERRED_OLDEST, Family::default()),
            delivery: register(
                r,
                DEFERRED_DELIVERY,
                Family::new_with_constructor(delivery_histogram as fn() -> Histogram),
            ),
        }
    }
}

/// Every metric family of the contract, registered once per process.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    inflight: Family<Scope, Gauge>,
    queue_depth: Family<Scope, Gauge>,
    queue_wait: HistogramFamily<Scope>,
    upstream_duration: HistogramFamily<Scope>,
    concurrency_limit: Family<Scope, Gauge>,
    utilization: Family<UpstreamLabel, Gauge<f64, AtomicU64>>,
    /// `sluice_upgraded_connections{route}`.
    upgraded: Family<Scope, Gauge>,
    rate_limit_keys: Family<LimitLabels, Gauge>,
    rate_limit_evictions: Family<LimitLabels, Counter>,
    rate_limited: Family<RateLimitedLabels, Counter>,
    deferred: DeferredFamilies,
    /// `sluice_upstream_retries_total{upstream}` and `sluice_upstream_endpoints`.
    fleet: FleetFamilies,
    reloads: Family<ResultLabel, Counter>,
    store_errors: Counter,
    buffered_bytes: Gauge,
    /// `sluice_connections_refused_total{reason="per_ip"}`.
    refused_per_ip: Counter,
    tls_handshake_failures: Counter,
    /// `sluice_requests_total{route="",outcome="no_route"}` and
    /// `sluice_responses_total{route="",code="404"}`, created once: unmatched requests only
    /// increment them.
    no_route: (Counter, Counter),
    /// `sluice_requests_total` and `sluice_responses_total` of requests refused before routing
    /// with 400 (`route=""`), kept to count them without a lookup.
    bad_request: (Counter, Counter),
}

/// Per-route handles, built with the route.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    route: Arc<str>,
    outcomes: [Counter; Outcome::ALL.len()],
    shadow: [Counter; Outcome::ALL.len()],
    /// `sluice_responses_total` by status code, created on first use of each code (a code
    /// that never occurs costs nothing; after the first, an atomic increment).
    responses: Box<[OnceLock<Counter>]>,
    responses_family: Family<ResponseLabels, Counter>,
    /// Requests of this route in flight (admitted, response not finished).
    pub(crate) inflight: Gauge,
    /// Time from sending upstream until the response head.
    pub(crate) upstream_duration: Histogram,
    /// `sluice_upgraded_connections{route}`: also the count `max_upgraded` bounds (one atomic,
    /// and the same series for every runtime of the route's name, so a reload carries it).
    pub(crate) upgraded: Gauge,
}

/// Handles for one cap: a route's or an upstream's.
#[derive(Debug, Clone)]
pub(crate) struct ScopeMetrics {
    /// Time spent queued before admission.
    pub(crate) queue_wait: Histogram,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `sluice_connections_refused_total{reason="per_ip"}`, registered in `r`.
fn refused_per_ip(r: &mut Registry) -> Counter {
    let refused: Family<ReasonLabel, Counter> = register(r, CONNECTIONS_REFUSED, Family::default());
    let per_ip = refused.get_or_create(&ReasonLabel("per_ip")).clone();
    per_ip
}

/// The `sluice_requests_total` and `sluice_responses_total` series of requests refused before
/// routing (`route=""`) with `outcome` and status `code`.
fn unrouted_series(
    requests: &Family<RequestLabels, Counter>,
    responses: &Family<ResponseLabels, Counter>,
    outcome: Outcome,
    code: u16,
) -> (Counter, Counter) {
    let route: Arc<str> = Arc::from("");
    let requests = requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            outcome,
            shadow: false,
        })
        .clone();
    let responses = responses
        .get_or_create(&ResponseLabels { route, code })
        .clone();
    (requests, responses)
}

impl Metrics {
    /// Registers every family.
    pub(crate) fn new() -> Self {
        let mut r = Registry::default();
        let requests: Family<RequestLabels, Counter> =
            register(&mut r, REQUESTS, Family::default());
        let responses: Family<ResponseLabels, Counter> =
            register(&mut r, RESPONSES, Family::default());
        let inflight = register(&mut r, INFLIGHT, Family::default());
        let queue_depth = register(&mut r, QUEUE_DEPTH, Family::default());
        let mut histograms = |name| {
            register(
                &mut r,
                name,
                Family::new_with_constructor(histogram as fn() -> Histogram),
            )
        };
        let (queue_wait, upstream_duration) =
            (histograms(QUEUE_WAIT), histograms(UPSTREAM_DURATION));
        let concurrency_limit = register(&mut r, CONCURRENCY_LIMIT, Family::default());
        let utilization = register(&mut r, UTILIZATION, Family::default());
        let upgraded = register(&mut r, UPGRADED, Family::default());
        let rate_limit_keys = register(&mut r, RATE_LIMIT_KEYS, Family::default());
        let rate_limit_evictions = register(&mut r, RATE_LIMIT_EVICTIONS, Family::default());
        let rate_limited = register(&mut r, RATE_LIMITED, Family::default());
        let deferred = DeferredFamilies::register(&mut r);
        let reloads: Family<ResultLabel, Counter> = register(&mut r, RELOADS, Family::default());
        let store_errors = register(&mut r, STORE_ERRORS, Counter::default());
        let buffered_bytes = register(&mut r, BUFFERED_BYTES, Gauge::default());
        let refused_per_ip = refused_per_ip(&mut r);
        let tls_handshake_failures = register(&mut r, TLS_HANDSHAKE_FAILURES, Counter::default());
        let no_route = unrouted_series(&requests, &responses, Outcome::NoRoute, 404);
        let bad_request = unrouted_series(&requests, &responses, Outcome::BadRequest, 400);
        // Both results exist from the start, at 0: `increase()` then sees the first failure.
        for result in ["success", "failure"] {
            let _ = reloads.get_or_create(&ResultLabel(result));
        }
        Metrics {
            no_route,
            bad_request,
            requests,
            responses,
            inflight,
            queue_depth,
            queue_wait,
            upstream_duration,
            concurrency_limit,
            utilization,
            upgraded,
            rate_limit_keys,
            rate_limit_evictions,
            rate_limited,
            deferred,
            fleet: FleetFamilies::register(&mut r),
            reloads,
            store_errors,
            buffered_bytes,
            refused_per_ip,
            tls_handshake_failures,
            registry: r,
        }
    }

    /// Handles for a route (series are shared with earlier runtimes of the same name).
    pub(crate) fn route(&self, route: &Arc<str>) -> RouteMetrics {
        let counter = |outcome, shadow| {
            self.requests
                .get_or_create(&RequestLabels {
                    route: route.clone(),
                    outcome,
                    shadow,
                })
                .clone()
        };
        RouteMetrics {
            route: route.clone(),
            outcomes: Outcome::ALL.map(|o| counter(o, false)),
            shadow: Outcome::ALL.map(|o| counter(o, true)),
            responses: (100..600).map(|_| OnceLock::new()).collect(),
            responses_family: self.responses.clone(),
            inflight: self
                .inflight
                .get_or_create(&Scope::Route(route.clone()))
                .clone(),
            upstream_duration: self
                .upstream_duration
                .get_or_create(&Scope::Route(route.clone()))
                .clone(),
            upgraded: self
                .upgraded
                .get_or_create(&Scope::Route(route.clone()))
                .clone(),
        }
    }

    /// `sluice_deferred_total{route, result}` of `route` (series shared with earlier runtimes
    /// of the same name).
    pub(crate) fn deferred_total(&self, route: &Arc<str>, result: &'static str) -> Counter {
        self.deferred
            .total
            .get_or_create(&DeferLabels {
                route: route.clone(),
                name: "result",
                value: result,
            })
            .clone()
    }

    /// `sluice_deferred_delivery_seconds{route}` of `route`.
    pub(crate) fn deferred_delivery(&self, route: &Arc<str>) -> Histogram {
        self.deferred
            .delivery
            .get_or_create(&Scope::Route(route.clone()))
            .clone()
    }

    /// Sets a deferring route's `sluice_deferred_tasks` (queued, delivering, delivered, dead)
    /// and `sluice_deferred_oldest_age_seconds` (read at scrape time).
    pub(crate) fn set_deferred(
        &self,
        route: &Arc<str>,
        tasks: [i64; 4],
        oldest: std::time::Duration,
    ) {
        for (status, value) in DEFER_STATUSES.into_iter().zip(tasks) {
            self.deferred
                .tasks
                .get_or_create(&DeferLabels {
                    route: route.clone(),
                    name: "status",
                    value: status,
                })
                .set(value);
        }
        self.deferred
            .oldest
            .get_or_create(&Scope::Route(route.clone()))
            .set(oldest.as_secs_f64());
    }

    /// Handles for a cap.
    pub(crate) fn scope(&self, scope: &Scope) -> ScopeMetrics {
        ScopeMetrics {
            queue_wait: self.queue_wait.get_or_create(scope).clone(),
        }
    }

    /// `sluice_upstream_retries_total` of an upstream (created at 0).
    pub(crate) fn upstream_retries(&self, upstream: &Arc<str>) -> Counter {
        self.fleet
            .retries
            .get_or_create(&UpstreamLabel(upstream.clone()))
            .clone()
    }

    /// Sets `sluice_upstream_endpoints{upstream, state}` (read at scrape time): one count per
    /// state, in `states` order, every state written even at 0.
    pub(crate) fn set_upstream_endpoints(
        &self,
        upstream: &Arc<str>,
        states: &[&'static str],
        counts: &[usize],
    ) {
        for (state, count) in states.iter().zip(counts) {
            let labels = EndpointLabels {
                upstream: upstream.clone(),
                state,
            };
            let gauge = self.fleet.endpoints.get_or_create(&labels);
            gauge.set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
    }

    /// The in-flight gauge of an upstream.
    pub(crate) fn upstream_inflight(&self, upstream: &Arc<str>) -> Gauge {
        self.inflight
            .get_or_create(&Scope::Upstream(upstream.clone()))
            .clone()
    }

    /// Counts a request that ended before it had a route (`route=""`): no route matched
    /// (404), or the request had no canonical form (400).
    pub(crate) fn unrouted(&self, outcome: Outcome) {
        debug_assert!(
            matches!(outcome, Outcome::NoRoute | Outcome::BadRequest),
            "only canonicalisation and routing answer before a route: {outcome:?}"
        );
        let (requests, responses) = match outcome {
            Outcome::BadRequest => (&self.bad_request.0, &self.bad_request.1),
            _ => (&self.no_route.0, &self.no_route.1),
        };
        requests.inc();
        responses.inc();
    }

    /// `sluice_rate_limit_evictions_total{route,limit}`: handed to the limit's key tables when
    /// the route is built (the series is shared with earlier runtimes of the same names).
    pub(crate) fn rate_limit_evictions(&self, route: &Arc<str>, limit: &Arc<str>) -> Counter {
        self.rate_limit_evictions
            .get_or_create(&LimitLabels {
                route: route.clone(),
                limit: limit.clone(),
            })
            .clone()
    }

    /// `sluice_rate_limited_total{route, limit, plan=""}`: the 429s of a limit without plans
    /// (the series exists from the start, at 0).
    pub(crate) fn rate_limited(&self, route: &Arc<str>, limit: &Arc<str>) -> Counter {
        self.rate_limited
            .get_or_create(&RateLimitedLabels {
                limit: LimitLabels {
                    route: route.clone(),
                    limit: limit.clone(),
                },
                plan: Arc::from(""),
            })
            .clone()
    }

    /// Reloads so far: (succeeded, failed).
    pub(crate) fn reload_counts(&self) -> (u64, u64) {
        let count = |result| self.reloads.get_or_create(&ResultLabel(result)).get();
        (count("success"), count("failure"))
    }

    /// Requests that ended before a route so far: (no route matched, no canonical form).
    pub(crate) fn unrouted_counts(&self) -> (u64, u64) {
        (self.no_route.0.get(), self.bad_request.0.get())
    }

    /// Counts a reload.
    pub(crate) fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabel(if ok { "success" } else { "failure" }))
            .inc();
    }

    /// `sluice_store_errors_total`.
    pub(crate) fn store_errors(&self) -> &Counter {
        &self.store_errors
    }

    /// `sluice_tls_handshake_failures_total`.
    pub(crate) fn tls_handshake_failures(&self) -> &Counter {
        &self.tls_handshake_failures
    }

    /// Forgets the gauges read from limiters at scrape time, so that a route, limit or cap a
    /// reload removed does not keep reporting its last value; `refresh_gauges` sets the current
    /// ones again right after.
    pub(crate) fn clear_limiter_gauges(&self) {
        self.queue_depth.clear();
        self.concurrency_limit.clear();
        self.utilization.clear();
        self.rate_limit_keys.clear();
        self.deferred.tasks.clear();
        self.deferred.oldest.clear();
        self.fleet.endpoints.clear();
    }

    /// Sets a cap's queue depth gauge (read at scrape time).
    pub(crate) fn set_queue_depth(&self, scope: &Scope, depth: usize) {
        self.queue_depth.get_or_create(scope).set(depth as i64);
    }

    /// Sets the buffered-bytes gauge (read at scrape time).
    pub(crate) fn set_buffered_bytes(&self, bytes: u64) {
        self.buffered_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts a connection closed at accept because its address had
    /// `server.max_connections_per_ip` open already.
    pub(crate) fn refused_per_ip(&self) {
        self.refused_per_ip.inc();
    }

    /// Sets a cap's limit gauge, the cap in force (read at scrape time).
    pub(crate) fn set_concurrency_limit(&self, scope: &Scope, limit: usize) {
        self.concurrency_limit
            .get_or_create(scope)
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// Sets an upstream's utilisation gauge (read at scrape time).
    pub(crate) fn set_utilization(&self, upstream: &Arc<str>, value: f64) {
        self.utilization
            .get_or_create(&UpstreamLabel(upstream.clone()))
            .set(value);
    }

    /// Sets the tracked-keys gauge of a limit (read at scrape time).
    pub(crate) fn set_rate_limit_keys(&self, route: &Arc<str>, limit: &Arc<str>, keys: usize) {
        self.rate_limit_keys
            .get_or_create(&LimitLabels {
                route: route.clone(),
                limit: limit.clone(),
            })
            .set(keys as i64);
    }

    /// The text exposition of every family in `format`.
    pub(crate) fn encode(&self, format: Format) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        match format {
            Format::OpenMetrics => out,
            Format::Prometheus => exposition::prometheus_text(&out),
        }
    }
}

// === impl RouteMetrics ===

impl RouteMetrics {
    /// Counts how a request ended; `shadow` = shadow mode let it through anyway.
    pub(crate) fn outcome(&self, outcome: Outcome, shadow: bool) {
        let counters = if shadow { &self.shadow } else { &self.outcomes };
        counters[outcome.index()].inc();
    }

    /// Requests of this route so far by outcome, in [`Outcome::ALL`] order: (enforced, shadow).
    pub(crate) fn outcome_counts(&self) -> ([u64; Outcome::ALL.len()], [u64; Outcome::ALL.len()]) {
        (
            self.outcomes.each_ref().map(Counter::get),
            self.shadow.each_ref().map(Counter::get),
        )
    }

    /// Counts a response status.
    pub(crate) fn response(&self, code: u16) {
        let Some(slot) = self.responses.get(usize::from(code).wrapping_sub(100)) else {
            return;
        };
        slot.get_or_init(|| {
            self.responses_family
                .get_or_create(&ResponseLabels {
                    route: self.route.clone(),
                    code,
                })
                .clone()
        })
        .inc();
    }
}

/// Reads the bucket counts of `histograms`, in order.
///
/// prometheus-client keeps a histogram's buckets to its encoder, so they are read the way a
/// scrape reads them: a scratch registry holding just these histograms (as `h0`, `h1`, …) is
/// encoded to text and the `_bucket` lines parsed back. Each histogram's lock is held only while
/// it is encoded, as during a scrape. Meant for the admin thread's once-a-second sampler
/// (`/stats`), never for the request path.
pub(crate) fn read_buckets(histograms: &[&Histogram]) -> Vec<Buckets> {
    let mut registry = Registry::default();
    for (i, histogram) in histograms.iter().enumerate() {
        registry.register(format!("h{i}"), "", (*histogram).clone());
    }
    let mut text = String::with_capacity(histograms.len() * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    let mut out = vec![[0; BUCKETS.len() + 1]; histograms.len()];
    for line in text.lines() {
        // `h3_bucket{le="0.25"} 17`
        let Some((index, rest)) = line
            .strip_prefix('h')
            .and_then(|l| l.split_once("_bucket{le=\""))
        else {
            continue;
        };
        let Some((le, count)) = rest.split_once("\"} ") else {
            continue;
        };
        let slot = match le {
            "+Inf" => Some(BUCKETS.len()),
            bound => bound
                .parse::<f64>()
                .ok()
                .and_then(|b| BUCKETS.iter().position(|&known| known == b)),
        };
        let counts = index.parse::<usize>().ok().and_then(|i| out.get_mut(i));
        if let (Some(counts), Some(slot), Ok(count)) = (counts, slot, count.trim().parse()) {
            counts[slot] = count;
        }
    }
    out
}

/// Decrements a gauge when dropped: a request's presence in flight.
#[derive(Debug)]
pub(crate) struct InflightGuard(Gauge);

impl InflightGuard {
    /// Increments `gauge` now and decrements it on drop.
    pub(crate) fn enter(gauge: &Gauge) -> Self {
        gauge.inc();
        InflightGuard(gauge.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both `result` series of `sluice_config_reloads_total` exist before any reload, at 0, in
    /// both formats (so `increase()` sees the first failure).
    #[test]
    fn reload_series_exist_from_the_start() {
        let m = Metrics::new();
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = m.encode(format);
            for result in ["success", "failure"] {
                let series = format!("sluice_config_reloads_total{{result=\"{result}\"}} 0\n");
                assert!(text.contains(&series), "{format:?}: {text}");
            }
        }
    }

    /// Names, labels and the shadow label come out as the contract fixes them.
    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::new();
        let route: Arc<str> = Arc::from("orders");
        let r = m.route(&route);
        r.outcome(Outcome::Forwarded, false);
        r.outcome(Outcome::RateLimited, true);
        r.response(200);
        r.response(999); // out of range: ignored, no panic
        m.reload(false);
        m.set_utilization(&Arc::from("api"), 0.5);
        let text = m.encode(Format::OpenMetrics);
        assert!(
            text.contains("sluice_requests_total{route=\"orders\",outcome=\"forwarded\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "sluice_requests_total{route=\"orders\",outcome=\"rate_limited\",shadow=\"true\"} 1"
        ));
        assert!(text.contains("sluice_responses_total{route=\"orders\",code=\"200\"} 1"));
        assert!(!text.contains("code=\"999\""), "{text}");
        assert!(text.contains("sluice_config_reloads_total{result=\"failure\"} 1"));
        assert!(text.contains("sluice_utilization{upstream=\"api\"} 0.5"));
        assert!(
            text.contains(
                "sluice_upstream_duration_seconds_bucket{le=\"0.0001\",route=\"orders\"}"
            ) || text.contains(
                "sluice_upstream_duration_seconds_bucket{route=\"orders\",le=\"0.0001\"}"
            )
        );
        assert!(text.contains("# TYPE sluice_store_errors counter"));
    }

    /// `read_buckets` reads back what was observed: cumulative counts per bound, `+Inf` last,
    /// each histogram on its own (`h1` and `h10` kept apart).
    #[test]
    fn read_buckets_reads_cumulative_counts() {
        let histograms: Vec<Histogram> = (0..12).map(|_| histogram()).collect();
        histograms[1].observe(0.0002); // ≤ 0.00025
        histograms[1].observe(0.3); // ≤ 0.5
        histograms[1].observe(100.0); // only +Inf
        histograms[10].observe(1.0); // ≤ 1 (bounds are inclusive)
        let refs: Vec<&Histogram> = histograms.iter().collect();
        let read = read_buckets(&refs);
        assert_eq!(read.len(), 12);
        assert_eq!(read[0], [0; BUCKETS.len() + 1]);
        let at = |bound: f64| BUCKETS.iter().position(|&b| b == bound).unwrap();
        assert_eq!(read[1][at(0.0001)], 0);
        assert_eq!(read[1][at(0.00025)], 1);
        assert_eq!(read[1][at(0.25)], 1);
        assert_eq!(read[1][at(0.5)], 2);
        assert_eq!(read[1][at(30.0)], 2);
        assert_eq!(read[1][BUCKETS.len()], 3);
        assert_eq!(read[10][at(0.5)], 0);
        assert_eq!(read[10][at(1.0)], 1);
        assert_eq!(read[10][BUCKETS.len()], 1);
        assert_eq!(read[11][BUCKETS.len()], 0);
    }
}
