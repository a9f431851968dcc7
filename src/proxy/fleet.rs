//! The fleet behind one upstream: the endpoints its names resolve to now, and which one a
//! request goes to.
//!
//! - Each configured endpoint is a name or an IP literal with a port; a name stands for every
//!   address the system resolver gives for it ([`resolve`]), each one endpoint with the URL's
//!   port. Names are resolved when the upstream is built (start, reload) and again every
//!   `resolve_interval` by a task of the app ([`crate::supervise`]); a failed lookup keeps the
//!   name's last addresses.
//! - The endpoint list is swapped whole ([`ArcSwap`]): a request picks from the list it loaded
//!   and keeps the endpoint it picked (its pool, its connection) until it is done, so an
//!   endpoint that goes away fails no request in flight. An address kept across a resolution
//!   keeps its endpoint: its idle connections, its in-flight count and its state.
//! - At most [`UpstreamConfig::MAX_ENDPOINTS`] endpoints per upstream.
//! - Pushback: an endpoint that answers 503 with `Retry-After` gets no request until then (at
//!   most [`MAX_PUSHBACK`]); when every endpoint has asked to wait, [`Fleet::pushback_wait`]
//!   says how long the first still wants, and the upstream is not contacted. A 429 is about
//!   one client, not the endpoint: it changes nothing here.
//! - Choosing ([`balance`]): `least_request` (of two distinct endpoints picked at random, the
//!   one with fewer requests in flight) or `round_robin`; both skip an endpoint that is down
//!   unless every one is.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;

use crate::clock::Epoch;
use crate::config::{Balance, OutlierConfig, UpstreamConfig};
use crate::limit::ConcurrencyLimit;
use crate::proxy::connect::Connector;
use crate::proxy::pool::{EndpointPool, KeepAlive};

/// The longest an endpoint's `Retry-After` keeps it out of rotation.
pub(crate) const MAX_PUSHBACK: Duration = Duration::from_secs(60);

mod balance;
pub(crate) mod health;
pub(crate) mod resolve;
pub(crate) mod retry;

use self::health::Health;

/// One address of the upstream.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// Index of the configured endpoint (name) it came from.
    pub(crate) source: usize,
    /// Where connections go.
    pub(crate) addr: SocketAddr,
    /// Its keep-alive connections and requests in flight.
    pub(crate) pool: Arc<EndpointPool>,
    /// Milliseconds since the fleet's epoch until which this endpoint is skipped; 0 = never.
    down_until_ms: AtomicU64,
    /// Milliseconds since the fleet's epoch until which this endpoint asked (503 with
    /// `Retry-After`) to get no request; 0 = never.
    pushback_until_ms: AtomicU64,
    /// Outlier ejection and active checks.
    health: Health,
}

/// The endpoints of one upstream (see the module docs).
#[derive(Debug)]
pub(crate) struct Fleet {
    /// The upstream's name, for logs.
    upstream: Arc<str>,
    /// The endpoints as configured, names or IP literals.
    names: Vec<Authority>,
    /// How a request's endpoint is chosen.
    balance: Balance,
    /// Of every new endpoint's pool.
    connect_timeout: Duration,
    /// Of every new endpoint's pool.
    keep_alive: KeepAlive,
    /// Of every new endpoint's pool: TLS and the protocol.
    connector: Arc<Connector>,
    /// The endpoints now, in the order of `names` then of the resolver's answer.
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// Round-robin cursor.
    next: AtomicUsize,
    /// Least-request's random stream (a Weyl sequence, mixed on reading).
    seed: AtomicU64,
    /// When every endpoint is in pushback: the end of the shortest one (ms since `epoch`);
    /// else 0. Recomputed when an endpoint pushes back and when the list changes, so that a
    /// request checks it in O(1).
    all_pushback_until_ms: AtomicU64,
    /// Time base of `Endpoint::down_until_ms` and `pushback_until_ms`.
    epoch: Epoch,
    /// Set once a re-resolving task has been started for this fleet.
    resolver_started: AtomicBool,
    /// Set once an active health-check task has been started for this fleet.
    checker_started: AtomicBool,
    /// When an endpoint is ejected.
    outlier: OutlierConfig,
    /// Set while no endpoint is usable (logged once per episode).
    fallback_logged: AtomicBool,
    /// The upstream's `per_endpoint` cap and its N, which follow this fleet; taken away when a
    /// reload hands the cap to the next fleet. std Mutex: held to read or swap, never across
    /// an await, and only on fleet events (not per request).
    cap: Mutex<Option<(ConcurrencyLimit, usize)>>,
    /// Set once the task making `cap` follow has been started.
    follower_started: AtomicBool,
}

// === impl Endpoint ===

impl Endpoint {
    fn new(source: usize, name: &Authority, addr: SocketAddr, fleet: &Fleet) -> Self {
        Endpoint {
            source,
            addr,
            pool: Arc::new(EndpointPool::at(
                name.clone(),
                addr,
                fleet.connect_timeout,
                fleet.keep_alive,
                fleet.connector.clone(),
            )),
            down_until_ms: AtomicU64::new(0),
            pushback_until_ms: AtomicU64::new(0),
            health: Health::default(),
        }
    }
}

// === impl Fleet ===

impl Fleet {
    /// The fleet of `config`, its names resolved now (blocking: called where a runtime is built,
    /// at start or on a reload's thread). A name that does not resolve takes its addresses in
    /// `previous` (the fleet of the runtime before), or none.
    pub(crate) fn new(
        config: &UpstreamConfig,
        keep_alive: KeepAlive,
        previous: Option<&Fleet>,
    ) -> Self {
        let fleet = Fleet {
            upstream: config.name.clone(),
            names: config.endpoints.clone(),
            balance: config.balance,
            connect_timeout: config.connect_timeout,
            keep_alive,
            connector: Arc::new(Connector::new(config)),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            seed: AtomicU64::new(seed()),
            all_pushback_until_ms: AtomicU64::new(0),
            epoch: Epoch::new(),
            resolver_started: AtomicBool::new(false),
            checker_started: AtomicBool::new(false),
            outlier: config.outlier,
            fallback_logged: AtomicBool::new(false),
            cap: Mutex::new(None),
            follower_started: AtomicBool::new(false),
        };
        let resolved: Vec<_> = fleet.names.iter().map(resolve::lookup_blocking).collect();
        let before = previous.map(|p| p.addresses_by_name()).unwrap_or_default();
        let resolved = resolved
            .into_iter()
            .zip(&fleet.names)
            .map(|(r, name)| {
                r.or_else(|err| match before.iter().find(|(n, _)| n == name) {
                    Some((_, addrs)) if !addrs.is_empty() => Ok(addrs.clone()),
                    _ => Err(err),
                })
            })
            .collect();
        fleet.apply(resolved);
        fleet
    }

    /// The endpoints now. A request keeps this list (and so its endpoint) until it is done.
    pub(crate) fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// True when some configured endpoint is a name (not an IP literal).
    pub(crate) fn has_names(&self) -> bool {
        self.names.iter().any(|n| resolve::literal(n).is_none())
    }

    /// True the first time it is called: the caller starts the re-resolving task.
    pub(crate) fn claim_resolver(&self) -> bool {
        !self.resolver_started.swap(true, Ordering::AcqRel)
    }

    /// Resolves every name again and applies the answers (see [`Self::apply`]).
    pub(crate) async fn refresh(&self) {
        let mut resolved = Vec::with_capacity(self.names.len());
        for name in &self.names {
            resolved.push(resolve::lookup(name).await);
        }
        self.apply(resolved);
    }

    /// Makes the endpoint list follow `resolved` (one answer per configured name, in order):
    /// a name whose lookup failed keeps its current addresses; an address kept keeps its
    /// endpoint. Returns true when the list changed.
    pub(crate) fn apply(&self, resolved: Vec<io::Result<Vec<SocketAddr>>>) -> bool {
        let current = self.endpoints();
        let mut next: Vec<Arc<Endpoint>> = Vec::with_capacity(current.len());
        for (source, (name, answer)) in self.names.iter().zip(resolved).enumerate() {
            let addrs = match answer {
                Ok(addrs) => addrs,
                Err(err) => {
                    tracing::warn!(upstream = %self.upstream, name = %name, error = %err, "name not resolved; its last addresses are kept");
                    let kept = current.iter().filter(|e| e.source == source);
                    next.extend(kept.cloned());
                    continue;
                }
            };
            for addr in addrs {
                if next.len() == UpstreamConfig::MAX_ENDPOINTS {
                    tracing::warn!(upstream = %self.upstream, name = %name, "more than {} endpoints; the rest are left out", UpstreamConfig::MAX_ENDPOINTS);
                    break;
                }
                let same = |e: &&Arc<Endpoint>| e.source == source && e.addr == addr;
                match current.iter().find(same) {
                    Some(kept) => next.push(kept.clone()),
                    None => next.push(Arc::new(Endpoint::new(source, name, addr, self))),
                }
            }
        }
        let changed = next.len() != current.len()
            || next
                .iter()
                .zip(current.iter())
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            let addrs: Vec<SocketAddr> = next.iter().map(|e| e.addr).collect();
            tracing::info!(upstream = %self.upstream, endpoints = ?addrs, "endpoints changed");
            self.endpoints.store(Arc::new(next));
            self.recompute_pushback();
            self.follow();
        }
        changed
    }

    /// Each configured name with its current addresses.
    fn addresses_by_name(&self) -> Vec<(Authority, Vec<SocketAddr>)> {
        let current = self.endpoints();
        let of = |source| {
            current
                .iter()
                .filter(move |e| e.source == source)
                .map(|e| e.addr)
        };
        (0..self.names.len())
            .map(|source| (self.names[source].clone(), of(source).collect()))
            .collect()
    }

    /// Skips `endpoint` for `period` (its connection failed).
    pub(crate) fn mark_down(&self, endpoint: &Endpoint, period: Duration) {
        let until = self.now_ms() + period.as_millis() as u64;
        endpoint.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// `endpoint` answered: it is no longer skipped.
    pub(crate) fn mark_up(&self, endpoint: &Endpoint) {
        endpoint.down_until_ms.store(0, Ordering::Relaxed);
    }

    /// True while `endpoint` is skipped: its connection failed, it asked to wait, it is
    /// ejected or its health check fails.
    pub(crate) fn is_down(&self, endpoint: &Endpoint) -> bool {
        let now = self.now_ms();
        endpoint.down_until_ms.load(Ordering::Relaxed) > now
            || endpoint.pushback_until_ms.load(Ordering::Relaxed) > now
            || self.is_ejected(endpoint)
            || self.is_unhealthy(endpoint)
    }

    /// True while `endpoint` has asked to wait.
    pub(crate) fn in_pushback(&self, endpoint: &Endpoint) -> bool {
        endpoint.pushback_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// `endpoint` answered 503 with `Retry-After: wait`: it gets no request for that long (at
    /// most [`MAX_PUSHBACK`]).
    pub(crate) fn push_back(&self, endpoint: &Endpoint, wait: Duration) {
        let until = self.now_ms() + wait.min(MAX_PUSHBACK).as_millis() as u64;
        endpoint.pushback_until_ms.store(until, Ordering::Relaxed);
        tracing::debug!(upstream = %self.upstream, endpoint = %endpoint.addr, ?wait, "endpoint asked to wait");
        self.recompute_pushback();
    }

    /// When every endpoint has asked to wait: how long until the first may be asked again.
    pub(crate) fn pushback_wait(&self) -> Option<Duration> {
        let until = self.all_pushback_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Sets `all_pushback_until_ms` from the endpoints now: O(endpoints), on a pushback or a
    /// change of the list only.
    fn recompute_pushback(&self) {
        let now = self.now_ms();
        let endpoints = self.endpoints();
        let untils = endpoints
            .iter()
            .map(|e| e.pushback_until_ms.load(Ordering::Relaxed));
        let all = if !endpoints.is_empty() && untils.clone().all(|u| u > now) {
            untils.min().unwrap_or(0)
        } else {
            0
        };
        self.all_pushback_until_ms.store(all, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        // +1 so that a healthy endpoint (0) is never "down until" the first millisecond.
        self.epoch.now() / 1_000_000 + 1
    }
}

/// Starts the task that resolves `fleet`'s names every `interval`, once per fleet, on
/// `handle`. It holds the fleet weakly and ends when the fleet is dropped (a reload built
/// another and the last request of the old one finished).
pub(crate) fn spawn_resolver(
    fleet: &Arc<Fleet>,
    interval: Duration,
    handle: &tokio::runtime::Handle,
) {
    if interval.is_zero() || !fleet.has_names() || !fleet.claim_resolver() {
        return;
    }
    let weak: Weak<Fleet> = Arc::downgrade(fleet);
    handle.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // The first tick is now: the fleet was resolved when built.
        loop {
            tick.tick().await;
            let Some(fleet) = weak.upgrade() else { break };
            fleet.refresh().await;
        }
    });
}

/// The wait a `Retry-After` asks for: delta-seconds or an HTTP date (RFC 9110 §10.2.3); `None`
/// when absent or unreadable.
pub(crate) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// A seed for least-request's random stream: differs between fleets and processes.
fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8)
}

#[cfg(test)]
mod tests;
