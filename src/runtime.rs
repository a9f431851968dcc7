//! The running form of one config version: the route table, per-route limits and templates,
//! upstream pools and caps. Everything the request path reads, and nothing that runs.
//!
//! A `Runtime` is built from a `Config` (`Runtime::build`), carrying over limiter state,
//! caps and pools that a reload did not change. [`Shared`] holds the current one behind an
//! [`ArcSwap`]: each request loads it once, so a reload applies to new requests at once while
//! requests in flight finish under the runtime they started with.

pub(crate) mod http_settings;
pub(crate) mod tls;

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use self::http_settings::{http_builder, HttpBuilder};
use self::tls::Acceptor;
use crate::budget::Budget;
use crate::config::{
    Config, KeySpec, Mode, Per, Priority, Rate, RateLimitConfig, RouteConfig, UpstreamConfig,
};
use crate::defer::{Deliverers, RouteDefer};
use crate::limit::global::{GlobalLimit, Store};
use crate::limit::{headers, ConcurrencyLimit, KeyExtractor, RateLimit};
use crate::metrics::{Metrics, RouteMetrics, Scope, ScopeMetrics};
use crate::proxy::fleet::health::State;
use crate::proxy::Upstream;
use crate::rescue::{ProblemSource, RateLimitedTemplate, RouteProblems};
use crate::router::Router;

/// How often idle rate-limit keys are evicted and expired idle upstream connections closed.
pub(crate) const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);

/// Everything one config version needs to serve requests. Immutable once built.
#[derive(Debug)]
pub struct Runtime {
    /// The config this was built from.
    pub(crate) config: Arc<Config>,
    /// Route matching, by index into `routes`.
    pub(crate) router: Router,
    /// Per-route state, in file order.
    pub(crate) routes: Vec<Route>,
    /// Upstream pools, in file order.
    pub(crate) upstreams: Vec<Arc<Upstream>>,
    /// Client IP and bucket keys.
    pub(crate) keys: KeyExtractor,
    /// HTTP settings for new connections (header timeout, h2 streams).
    pub(crate) http: HttpBuilder,
    /// The HTTPS listener's TLS settings for new connections (`server.tls`), if any.
    pub(crate) tls: Option<Acceptor>,
    /// Process-wide metric families.
    pub(crate) metrics: Arc<Metrics>,
    /// `server.max_buffered_bytes`: what request and response buffering may hold together.
    /// Kept by the next runtime while the maximum is unchanged.
    pub(crate) budget: Arc<Budget>,
    /// `GET /_sluice/tasks/<id>`'s limit per client address.
    pub(crate) task_lookups: TaskLookups,
    /// The Redis connection of the `scope: global` limits (`None` when there are none). Kept by
    /// the next runtime while `store.redis` names the same server or cluster (and `ca`).
    store: Option<Arc<Store>>,
    /// The Redis connections of deferred tasks (`store.tasks`, by default `store.redis`'s
    /// server on connections of its own, so that task writes never delay a limit's call).
    /// `None` when no route defers; kept by the next runtime like `store`.
    tasks: Option<Arc<Store>>,
    /// The proxy's tokio runtime, where a new store's connecting task runs: a reload may build
    /// the next runtime on the admin thread, whose own runtime is not for request work. `None`
    /// only when the first runtime was built outside tokio.
    spawner: Option<tokio::runtime::Handle>,
}

/// `GET /_sluice/tasks/<id>` per client address: the contract's 20/s, burst 40. Checked before a
/// lookup costs anything: each takes a Redis call per deferring route and one of the process's
/// few lookup permits, and one client polling in a loop must not take them from everyone else.
#[derive(Debug)]
pub(crate) struct TaskLookups {
    /// The buckets, keyed like every `client_ip` limit (after `trusted_proxies`, IPv6 by
    /// `ipv6_key_prefix`). Built with the first runtime and handed to every next one, like
    /// the buffering budget: a reload does not refill them. Per instance, not per process: the
    /// contract's "per instance", and each sluice a process embeds (tests) keeps its own.
    pub(crate) rate: Arc<RateLimit>,
    /// `RateLimit-Policy` of the lookups' answers; `None` when `rate_limit_headers` is off.
    pub(crate) policy: Option<HeaderValue>,
    /// The 429 past the limit (with the `RateLimit` fields when `policy` is set).
    pub(crate) rejected: RateLimitedTemplate,
}

/// One route, ready to serve.
#[derive(Debug)]
pub(crate) struct Route {
    /// The route's name.
    pub(crate) name: Arc<str>,
    /// Queue order and shedding.
    pub(crate) priority: Priority,
    /// Enforce or shadow.
    pub(crate) mode: Mode,
    /// Where admitted requests go.
    pub(crate) upstream: Arc<Upstream>,
    /// All must admit a request.
    pub(crate) limits: Vec<Limit>,
    /// `RateLimit-Policy`, precomputed (constant per route); `None` without limits or when
    /// `rate_limit_headers` is off.
    pub(crate) policy: Option<HeaderValue>,
    /// This route's own cap.
    pub(crate) concurrency: Option<ConcurrencyLimit>,
    /// Every response sluice makes itself for this route, rendered ahead.
    pub(crate) problems: RouteProblems,
    /// Counters and gauges of this route.
    pub(crate) metrics: RouteMetrics,
    /// Queue wait of this route's cap.
    pub(crate) cap_metrics: ScopeMetrics,
    /// Queue wait of the upstream's cap.
    pub(crate) upstream_cap_metrics: ScopeMetrics,
    /// `sluice_inflight{upstream}`.
    pub(crate) upstream_inflight: Gauge,
    /// `defer:`: how requests are deferred, and this instance's deliverers of the route (kept
    /// by the next runtime while the route keeps its name and the store its target).
    pub(crate) defer: Option<RouteDefer>,
    /// `max_upgraded`: upgraded connections open at most (counted in `metrics.upgraded`).
    pub(crate) max_upgraded: usize,
    /// `upgraded_idle_timeout`: an upgraded connection quiet this long is closed.
    pub(crate) upgraded_idle_timeout: Duration,
}

/// A rate limit of a route.
#[derive(Debug)]
pub(crate) struct Limit {
    /// The bucket(s). Shared with the next runtime when unchanged by a reload. For a
    /// `scope: global` limit, this instance's own bucket: the fallback of `on_error: local`.
    pub(crate) rate: Arc<RateLimit>,
    /// `scope: global`: the bucket in Redis, checked instead of `rate`.
    pub(crate) global: Option<Arc<GlobalLimit>>,
    /// `sluice_rate_limited_total` of this limit: its 429s.
    pub(crate) rejected: Counter,
}

/// State that outlives config versions.
#[derive(Debug)]
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    ready: AtomicBool,
    /// Process-wide metric families; series survive reloads.
    pub(crate) metrics: Arc<Metrics>,
    /// Serializes reloads (SIGHUP and `POST /reload` may race). std Mutex: a reload does no
    /// `.await` while holding it.
    pub(crate) reloading: std::sync::Mutex<()>,
    /// The config generation: 1 for the config the process started with, plus one for each
    /// runtime a reload published (`/stats` shows it, so an operator sees that a reload took).
    generation: AtomicU64,
    /// When the process started: Unix time in milliseconds.
    started_at_ms: u64,
    /// When the running config was published (the start for generation 1): Unix time in
    /// milliseconds. Written before `generation`, so a reader of a generation sees at least
    /// its time.
    reloaded_at_ms: AtomicU64,
    /// The deliverers of the deferring routes: the app starts, retargets and stops them
    /// (`crate::supervise`); the gauges read their counts.
    pub(crate) deliverers: Deliverers,
    /// The proxy's tokio runtime, where the app spawns what runs beside the listeners (a reload
    /// runs on another thread); set when the app starts running.
    pub(crate) spawner: std::sync::OnceLock<tokio::runtime::Handle>,
}

// === impl Runtime ===

impl Runtime {
    /// Builds the runtime for `config`. With `previous`, limiter state whose route name, limit
    /// name and parameters are unchanged is carried over, so a reload does not hand out fresh
    /// bursts; so are caps (slots in use, waiters) and upstream pools that did not change.
    pub(crate) fn build(
        config: Config,
        previous: Option<&Runtime>,
        metrics: Arc<Metrics>,
    ) -> Runtime {
        let carry = Carry::new(&config, previous, &metrics);
        let upstreams: Vec<Arc<Upstream>> =
            config.upstreams.iter().map(|u| carry.upstream(u)).collect();
        for upstream in &upstreams {
            upstream.count_retries_in(metrics.upstream_retries(&upstream.name));
        }
        let routes = config
            .routes
            .iter()
            .map(|r| carry.route(r, &upstreams[r.upstream], &config, &metrics))
            .collect();
        let keys = KeyExtractor::new(
            &config.server.trusted_proxies,
            config.server.ipv6_key_prefix,
        );
        Runtime {
            router: Router::new(config.routes.iter().map(|r| r.matcher.clone()).collect()),
            routes,
            upstreams,
            // Header keys hash as before, so carried-over buckets keep their owners.
            keys: match previous {
                Some(p) => keys.keeping_hash_key(&p.keys),
                None => keys,
            },
            http: http_builder(&config.server),
            tls: config
                .server
                .tls
                .as_ref()
                .map(|t| Acceptor::new(&t.identity)),
            budget: carry.budget.clone(),
            task_lookups: TaskLookups::new(&config, previous.map(|p| &p.task_lookups)),
            metrics,
            store: carry.store,
            tasks: carry.tasks,
            spawner: carry.spawner,
            config: Arc::new(config),
        }
    }

    /// The live cap of route `name`, if it has one (for tests and inspection).
    pub fn route_cap(&self, name: &str) -> Option<ConcurrencyLimit> {
        let route = self.routes.iter().find(|r| &*r.name == name)?;
        route.concurrency.clone()
    }

    /// The live cap of upstream `name`, if it has one (for tests and inspection).
    pub fn upstream_cap(&self, name: &str) -> Option<ConcurrencyLimit> {
        let upstream = self.upstreams.iter().find(|u| &*u.name == name)?;
        upstream.concurrency.clone()
    }

    /// The Redis store of the global limits, if any (for tests and inspection).
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Sets the gauges that are properties of limiters (queue depth, the cap in force,
    /// utilisation, tracked keys); called when `/metrics` is scraped.
    pub(crate) fn refresh_gauges(&self) {
        self.metrics.clear_limiter_gauges();
        self.metrics.set_buffered_bytes(self.budget.used());
        for route in &self.routes {
            if let Some(cap) = &route.concurrency {
                let scope = Scope::Route(route.name.clone());
                self.metrics.set_queue_depth(&scope, cap.queue_depth());
                self.metrics.set_concurrency_limit(&scope, cap.limit());
            }
            for limit in &route.limits {
                self.metrics.set_rate_limit_keys(
                    &route.name,
                    &limit.rate.config().name,
                    limit.rate.len(),
                );
            }
        }
        let states = State::ALL.map(State::as_str);
        for up in &self.upstreams {
            let counts = up.fleet().state_counts();
            self.metrics
                .set_upstream_endpoints(&up.name, &states, &counts);
            if let Some(cap) = &up.concurrency {
                let scope = Scope::Upstream(up.name.clone());
                self.metrics.set_queue_depth(&scope, cap.queue_depth());
                // One read of the two, so that in flight and the limit belong together.
                let (inflight, limit) = cap.inflight_and_limit();
                self.metrics.set_concurrency_limit(&scope, limit);
                self.metrics
                    .set_utilization(&up.name, inflight as f64 / limit.max(1) as f64);
            }
        }
    }

    /// Evicts idle keys from every rate limit and closes the upstream connections that have
    /// been idle too long (`src/proxy/pool.rs`).
    pub(crate) fn housekeeping(&self) {
        for route in &self.routes {
            for limit in &route.limits {
                limit.rate.housekeeping();
                if let Some(global) = &limit.global {
                    global.housekeeping();
                }
            }
        }
        self.task_lookups.rate.housekeeping();
        // Upstreams a reload dropped are not here: their pools close with the last request
        // that still holds the old runtime.
        for upstream in &self.upstreams {
            upstream.housekeeping();
        }
    }
}

// === impl TaskLookups ===

impl TaskLookups {
    /// Tokens per second and bucket size (the contract's numbers).
    const RATE: NonZeroU32 = NonZeroU32::new(20).unwrap();
    const BURST: NonZeroU32 = NonZeroU32::new(40).unwrap();
    /// Client addresses tracked at most (a few MB); past it the table evicts stale buckets,
    /// then the least recently used (`limit::table`), so memory stays bounded under a flood of
    /// addresses.
    const MAX_KEYS: NonZeroUsize = NonZeroUsize::new(100_000).unwrap();

    /// The lookup limit for `config`: `previous`'s buckets when there is one.
    fn new(config: &Config, previous: Option<&TaskLookups>) -> Self {
        let limit = RateLimitConfig {
            name: Arc::from("task-lookups"),
            key: KeySpec::ClientIp,
            rate: Rate {
                count: Self::RATE,
                per: Per::Second,
            },
            burst: Self::BURST,
            scope: crate::config::LimitScope::Local,
            lease: 0,
            max_keys: Self::MAX_KEYS,
            cost: RateLimitConfig::DEFAULT_COST,
            charge_header: None,
        };
        let policy = config
            .server
            .rate_limit_headers
            .then(|| headers::policy_value(&[&limit]));
        let detail = format!(
            "lookups of deferred tasks from one client address: {}, burst {}",
            limit.rate, limit.burst
        );
        TaskLookups {
            rejected: RateLimitedTemplate::unrouted(&limit.name, &detail, policy.clone()),
            policy,
            rate: previous.map_or_else(|| Arc::new(RateLimit::new(&limit)), |p| p.rate.clone()),
        }
    }
}

// === impl Shared ===

impl Shared {
    /// Wraps the first runtime.
    pub(crate) fn new(runtime: Runtime) -> Self {
        let now = unix_ms(SystemTime::now());
        Shared {
            metrics: runtime.metrics.clone(),
            runtime: ArcSwap::from_pointee(runtime),
            ready: AtomicBool::new(false),
            reloading: std::sync::Mutex::new(()),
            generation: AtomicU64::new(1),
            started_at_ms: now,
            reloaded_at_ms: AtomicU64::new(now),
            deliverers: Deliverers::default(),
            spawner: std::sync::OnceLock::new(),
        }
    }

    /// Sets the gauges read at scrape time: the runtime's (`Runtime::refresh_gauges`) and the
    /// deferred tasks' counts, as each route's deliverers last read them.
    pub(crate) fn refresh_gauges(&self) {
        let runtime = self.runtime();
        runtime.refresh_gauges();
        for route in runtime.routes.iter().filter(|r| r.defer.is_some()) {
            if let Some(counts) = self.deliverers.counts(&route.name) {
                self.metrics.set_deferred(
                    &route.name,
                    [
                        counts.queued,
                        counts.delivering,
                        counts.delivered,
                        counts.dead,
                    ],
                    Duration::from_millis(u64::try_from(counts.oldest_ms).unwrap_or(0)),
                );
            }
        }
    }

    /// The current runtime; a request holds it until it is done.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Publishes a new runtime for new requests.
    pub(crate) fn swap(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
        self.reloaded_at_ms
            .store(unix_ms(SystemTime::now()), Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The config generation: 1 at start, plus one per successful reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// When the running config was published (the process's start for generation 1), in
    /// milliseconds since the Unix epoch.
    pub fn reloaded_at_ms(&self) -> u64 {
        self.reloaded_at_ms.load(Ordering::Acquire)
    }

    /// When the process started, in milliseconds since the Unix epoch.
    pub fn started_at_ms(&self) -> u64 {
        self.started_at_ms
    }

    /// True once listeners are up and until shutdown starts.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Sets what `/readyz` answers.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// `t` in milliseconds since the Unix epoch (0 for a clock set before 1970).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a new runtime takes over from the previous one, and builds what it cannot.
struct Carry<'a> {
    previous: Option<&'a Runtime>,
    /// `server.max_buffered_bytes`: the previous runtime's while the maximum is unchanged.
    budget: Arc<Budget>,
    /// One Redis connection for every global limit; an unchanged target keeps the running one.
    store: Option<Arc<Store>>,
    /// The connections of deferred tasks, likewise.
    tasks: Option<Arc<Store>>,
    spawner: Option<tokio::runtime::Handle>,
}

impl<'a> Carry<'a> {
    fn new(config: &Config, previous: Option<&'a Runtime>, metrics: &Metrics) -> Self {
        let budget = match previous {
            Some(p)
                if p.config.server.client.max_buffered_bytes
                    == config.server.client.max_buffered_bytes =>
            {
                p.budget.clone()
            }
            _ => Budget::new(config.server.client.max_buffered_bytes.0),
        };
        let spawner = match previous {
            Some(p) => p.spawner.clone(),
            None => tokio::runtime::Handle::try_current().ok(),
        };
        let store = Store::for_limits(
            config,
            previous.and_then(|p| p.store.as_ref()),
            spawner.as_ref(),
            metrics.store_errors(),
        );
        let tasks = Store::for_tasks(
            config,
            previous.and_then(|p| p.tasks.as_ref()),
            spawner.as_ref(),
            metrics.store_errors(),
        );
        Carry {
            previous,
            budget,
            store,
            tasks,
            spawner,
        }
    }

    fn upstream(&self, config: &UpstreamConfig) -> Arc<Upstream> {
        let old = self
            .previous
            .and_then(|p| p.upstreams.iter().find(|o| o.name == config.name));
        match old {
            // Unchanged: keep its connection pool and its cap.
            Some(o) if same_upstream(o.config(), config) => o.clone(),
            // Changed elsewhere, same cap: the cap (slots in use, waiters) carries over.
            Some(o) if o.config().concurrency == config.concurrency => {
                Arc::new(Upstream::with_cap(config, o.concurrency.clone(), Some(o)))
            }
            // A name that does not resolve now keeps the addresses it had.
            Some(o) => Arc::new(Upstream::with_cap(config, None, Some(o))),
            None => Arc::new(Upstream::new(config)),
        }
    }

    fn route(
        &self,
        r: &RouteConfig,
        upstream: &Arc<Upstream>,
        config: &Config,
        metrics: &Metrics,
    ) -> Route {
        let old = self
            .previous
            .and_then(|p| p.routes.iter().find(|o| o.name == r.name));
        let limits = r
            .rate_limits
            .iter()
            .map(|l| self.limit(old, &r.name, l, config, metrics))
            .collect();
        let policy = (config.server.rate_limit_headers && !r.rate_limits.is_empty())
            .then(|| headers::policy_value(&r.rate_limits.iter().collect::<Vec<_>>()));
        let concurrency = r.concurrency.clone().map(|c| {
            old.and_then(|o| o.concurrency.as_ref())
                .filter(|oc| *oc.config() == c)
                .cloned()
                .unwrap_or_else(|| ConcurrencyLimit::new(c))
        });
        let problems = problems(r, upstream, config, policy.clone());
        let route_metrics = metrics.route(&r.name);
        let upstream_inflight = metrics.upstream_inflight(&upstream.name);
        let defer = self.defer(r, config, metrics);
        Route {
            metrics: route_metrics,
            cap_metrics: metrics.scope(&Scope::Route(r.name.clone())),
            upstream_cap_metrics: metrics.scope(&Scope::Upstream(upstream.name.clone())),
            upstream_inflight,
            defer,
            name: r.name.clone(),
            priority: r.priority,
            mode: r.mode,
            upstream: upstream.clone(),
            limits,
            policy,
            concurrency,
            problems,
            max_upgraded: r.max_upgraded,
            upgraded_idle_timeout: r.upgraded_idle_timeout,
        }
    }

    /// The deferral of route `r`, if it has `defer:`, on the task store. (Its deliverers are
    /// the app's: `crate::supervise`.)
    // In a build without Redis a deferral has no value: what follows its making is unreachable.
    #[allow(unreachable_code)]
    fn defer(&self, r: &RouteConfig, config: &Config, metrics: &Metrics) -> Option<RouteDefer> {
        let (defer, store) = (r.defer?, self.tasks.as_ref()?);
        let tasks = config.store.as_ref()?.tasks.as_ref()?;
        Some(RouteDefer::new(
            &r.name,
            defer,
            (store.clone(), tasks.timeout),
            self.budget.clone(),
            crate::defer::DeferMetrics::new(metrics, &r.name),
        ))
    }

    /// A limit of route `route`: its bucket carried over when the route had the same limit.
    fn limit(
        &self,
        old: Option<&Route>,
        route: &Arc<str>,
        l: &RateLimitConfig,
        config: &Config,
        metrics: &Metrics,
    ) -> Limit {
        // The same series for a carried-over table: same route and limit names.
        let evictions = metrics.rate_limit_evictions(route, &l.name);
        let kept = old.and_then(|o| o.limits.iter().find(|ol| ol.rate.config() == l));
        let rate = kept.map_or_else(
            || Arc::new(RateLimit::counting(l, evictions.clone())),
            |ol| ol.rate.clone(),
        );
        let redis = config.store.as_ref().and_then(|s| s.redis.as_ref());
        let global = match (&self.store, redis) {
            (Some(store), Some(redis)) if l.scope == crate::config::LimitScope::Global => {
                // Unchanged: keep its remembered denials and leased tokens (dropping leased
                // tokens would not overshoot, but would waste them).
                let same = kept
                    .and_then(|ol| ol.global.as_ref())
                    .filter(|g| g.keeps(l, redis, store));
                Some(same.cloned().unwrap_or_else(|| {
                    Arc::new(GlobalLimit::new(
                        route,
                        l,
                        redis,
                        store.clone(),
                        rate.clone(),
                        evictions,
                    ))
                }))
            }
            _ => None,
        };
        let rejected = metrics.rate_limited(route, &l.name);
        Limit {
            rate,
            global,
            rejected,
        }
    }
}

/// Every problem of route `r` to `upstream`, rendered (`policy`: its `RateLimit-Policy`).
fn problems(
    r: &RouteConfig,
    upstream: &Upstream,
    config: &Config,
    policy: Option<HeaderValue>,
) -> RouteProblems {
    RouteProblems::new(&ProblemSource {
        route: &r.name,
        upstream: &upstream.name,
        upstream_timeout: upstream.config().timeout,
        limits: r
            .rate_limits
            .iter()
            .map(|l| (l.name.clone(), format!("{}, burst {}", l.rate, l.burst)))
            .collect(),
        key_headers: r
            .rate_limits
            .iter()
            .map(|l| match &l.key {
                KeySpec::Header(name) => Some(name.to_string()),
                _ => None,
            })
            .collect(),
        global_keyed: r
            .rate_limits
            .iter()
            .map(|l| matches!(l.key, KeySpec::Global))
            .collect(),
        spread: config.server.retry_after_spread,
        policy,
        max_request_body: config.server.client.max_request_body,
        request_body_timeout: config.server.client.request_body_timeout,
        defer: r.defer,
        defer_unknown_for: unknown_for(config),
        max_upgraded: r.max_upgraded,
    })
}

/// How long the outcome of a task write may stay unknown (see `crate::defer::unknown_for`).
fn unknown_for(config: &Config) -> Duration {
    let tasks = config.store.as_ref().and_then(|s| s.tasks.as_ref());
    tasks.map_or(Duration::ZERO, |t| crate::defer::unknown_for(t.timeout))
}

/// True when a reload can keep an upstream's pool and cap as they are.
fn same_upstream(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
    a.name == b.name
        && a.endpoints == b.endpoints
        && a.connect_timeout == b.connect_timeout
        && a.timeout == b.timeout
        && a.concurrency == b.concurrency
        && a.resolve_interval == b.resolve_interval
        && a.balance == b.balance
        && a.health_check == b.health_check
        && a.outlier == b.outlier
        && a.retry == b.retry
        && a.protocol == b.protocol
        && a.https == b.https
        // Certificates as read now: a reload that finds new files builds new connections.
        && match (&a.tls, &b.tls) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same_as(b),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use super::Runtime;
    use crate::metrics::Metrics;
    use crate::proxy::pool::IDLE_TIMEOUT;
    use crate::proxy::test_util::{get, text, TestUpstream};

    /// Builds a runtime from `yaml` (a test config), after `previous` if given.
    fn build(yaml: &str, previous: Option<&Runtime>) -> Runtime {
        let config = crate::config::from_yaml(yaml, Path::new("test.yaml"))
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        Runtime::build(config, previous, Arc::new(Metrics::new()))
    }

    /// Feeds `cap` answers of 20 ms, two requests at a time, for `windows` windows of 100 ms:
    /// after its probe it grows from `min_inflight`.
    async fn teach(cap: &crate::limit::ConcurrencyLimit, windows: usize) {
        use crate::config::Priority;
        use crate::limit::Sample;
        for _ in 0..windows * 10 {
            let mut a = cap.acquire(Priority::Normal).await.expect("a free slot");
            let mut b = cap.acquire(Priority::Normal).await.expect("a free slot");
            a.record(Sample::Answered(Duration::from_millis(20)));
            b.record(Sample::Answered(Duration::from_millis(20)));
            tokio::time::advance(Duration::from_millis(10)).await;
        }
    }

    /// A reload keeps an adaptive cap's learnt limit when its config (route or upstream) is
    /// unchanged, even when other settings of the upstream change; a changed `adaptive` starts
    /// over at `min_inflight`.
    #[tokio::test(start_paused = true)]
    async fn reload_keeps_what_an_unchanged_adaptive_cap_has_learnt() {
        let yaml = "server: { listen: 127.0.0.1:0 }\n\
             upstreams: { api: { endpoints: [http://127.0.0.1:9], timeout: 5s, concurrency: { adaptive: { min_inflight: 2 } } } }\n\
             routes: [{ name: all, upstream: api, concurrency: { adaptive: {}, queue: 1 } }]\n";
        let rt = build(yaml, None);
        let (up, route) = (
            rt.upstream_cap("api").expect("upstream cap"),
            rt.route_cap("all").expect("route cap"),
        );
        teach(&up, 4).await;
        teach(&route, 4).await;
        let (up_learnt, route_learnt) = (up.limit(), route.limit());
        assert!(
            up_learnt > 2 && route_learnt > 2,
            "{up_learnt} {route_learnt}"
        );

        let changed_timeout = yaml.replace("timeout: 5s", "timeout: 6s");
        let rt = build(&changed_timeout, Some(&rt));
        assert_eq!(rt.upstream_cap("api").map(|c| c.limit()), Some(up_learnt));
        assert_eq!(rt.route_cap("all").map(|c| c.limit()), Some(route_learnt));

        let changed_caps = changed_timeout
            .replace("min_inflight: 2", "min_inflight: 3")
            .replace("queue: 1", "queue: 2");
        let rt = build(&changed_caps, Some(&rt));
        assert_eq!(rt.upstream_cap("api").map(|c| c.limit()), Some(3));
        assert_eq!(rt.route_cap("all").map(|c| c.limit()), Some(2));
    }

    /// The housekeeping pass reaches the upstream pools: an idle connection stays until it has
    /// been idle for 60 s and is closed by the first pass after that (docs/guide.md's "closed after
    /// 60 s idle" once held only when a request came to check the connection out).
    #[tokio::test]
    async fn housekeeping_closes_upstream_connections_idle_for_60_s() {
        let server = TestUpstream::start().await;
        let yaml = format!(
            "server: {{ listen: 127.0.0.1:0 }}\n\
             upstreams: {{ api: {{ endpoints: [http://{}] }} }}\n\
             routes: [{{ name: all, upstream: api }}]\n",
            server.addr
        );
        let config = crate::config::from_yaml(&yaml, Path::new("test.yaml"))
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let rt = Runtime::build(config, None, Arc::new(Metrics::new()));
        let upstream = &rt.upstreams[0];
        let (res, conn) = upstream
            .send(get())
            .await
            .expect("the test upstream answers");
        assert_eq!(text(res).await, "ok");
        // Paused from here: the exchange above needed real I/O; what follows is only time.
        tokio::time::pause();
        conn.release();
        assert_eq!(upstream.idle(), 1);

        tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        rt.housekeeping();
        assert_eq!(upstream.idle(), 1, "closed before 60 s idle");
        tokio::time::advance(Duration::from_secs(1)).await;
        rt.housekeeping();
        assert_eq!(upstream.idle(), 0, "kept after 60 s idle");
    }

    /// Pins: a reload keeps a global limit (with its leased tokens and remembered denials) while
    /// it and its store are unchanged, and builds it anew when its parameters or the store change.
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn reload_keeps_unchanged_global_limits() {
        let yaml = |url: &str, lease: u32| {
            format!(
                "server: {{ listen: 127.0.0.1:0 }}\n\
                 store: {{ redis: {{ url: \"{url}\" }} }}\n\
                 upstreams: {{ api: {{ endpoints: [http://127.0.0.1:1] }} }}\n\
                 routes: [{{ name: all, upstream: api, rate_limits: [{{ key: global, rate: 100/s, scope: global, lease: {lease} }}] }}]\n"
            )
        };
        let build = |text: String, previous: Option<&Runtime>| {
            let config = crate::config::from_yaml(&text, Path::new("test.yaml"))
                .unwrap_or_else(|e| panic!("test config invalid: {e}"));
            Runtime::build(config, previous, Arc::new(Metrics::new()))
        };
        let global = |rt: &Runtime| rt.routes[0].limits[0].global.clone().unwrap();
        // Nothing listens on port 1: these runtimes never reach Redis, which is not needed.
        let first = build(yaml("redis://127.0.0.1:1", 10), None);
        let same = build(yaml("redis://127.0.0.1:1", 10), Some(&first));
        assert!(Arc::ptr_eq(&global(&first), &global(&same)));
        let other_lease = build(yaml("redis://127.0.0.1:1", 20), Some(&same));
        assert!(!Arc::ptr_eq(&global(&same), &global(&other_lease)));
        let other_store = build(yaml("redis://127.0.0.2:1", 20), Some(&other_lease));
        assert!(!Arc::ptr_eq(&global(&other_lease), &global(&other_store)));
    }
}
