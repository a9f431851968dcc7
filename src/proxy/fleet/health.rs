//! Health of the endpoints: passive outlier ejection and optional active checks.
//!
//! - **Outlier ejection** (always on): `outlier.consecutive_failures` failures in a row — a
//!   connection that could not be made, one reset before a response, a response head that did
//!   not come within `timeout` — eject the endpoint for `outlier.ejection`, doubled for each
//!   ejection that follows within [`OutlierConfig::MAX_EJECTION`] of the last one's end, at most
//!   that. Any response resets the count: an answer is the upstream's choice, and counting it
//!   would let a client that provokes fast 5xx eject endpoints (and shrink a `per_endpoint`
//!   cap). A failure the client's own body caused is not counted either (the caller says so).
//!   The last endpoint that is neither ejected nor unhealthy is never ejected.
//! - **Active checks** (`health_check`): a `GET path` on a new connection to every endpoint
//!   every `interval`; a 2xx within `timeout` is a success. `unhealthy_after` failures in a row
//!   make an endpoint unhealthy, `healthy_after` successes healthy again.
//! - When no endpoint is usable (ejected, unhealthy), all are used (except those in pushback),
//!   and the log says so once per episode.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::header::HOST;
use http::{HeaderValue, Request};

use super::{Endpoint, Fleet};
use crate::config::{HealthCheckConfig, OutlierConfig};
use crate::limit::ConcurrencyLimit;
use crate::proxy::request_body::UpstreamBody;

/// An endpoint's state, as `sluice_upstream_endpoints{state}` and `/stats` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Takes requests.
    Healthy,
    /// Its active health check fails.
    Unhealthy,
    /// Ejected by outlier detection.
    Ejected,
    /// Asked to wait (503 with `Retry-After`).
    Pushback,
}

/// What `/stats` and the metrics show of one endpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EndpointView {
    /// Its address.
    pub(crate) address: std::net::SocketAddr,
    /// Its state now.
    pub(crate) state: State,
    /// Requests on it now.
    pub(crate) inflight: usize,
    /// The protocol its last connection spoke; `None` before the first.
    pub(crate) spoken: Option<crate::proxy::connect::Spoken>,
}

/// The health an endpoint carries (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Passive failures in a row.
    failures: AtomicU32,
    /// Milliseconds since the fleet's epoch until which it is ejected; 0 = never was.
    ejected_until_ms: AtomicU64,
    /// Ejections in a row: the next lasts `ejection` × 2^this.
    ejections: AtomicU32,
    /// Its active check fails.
    unhealthy: AtomicBool,
    /// Active checks in a row: successes when positive, failures when negative.
    streak: AtomicI32,
}

// === impl State ===

impl State {
    /// Every state, in label order.
    pub(crate) const ALL: [State; 4] = [
        State::Healthy,
        State::Unhealthy,
        State::Ejected,
        State::Pushback,
    ];

    /// The label value (and `/stats`' `state`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
            State::Ejected => "ejected",
            State::Pushback => "pushback",
        }
    }
}

// === impl Fleet: health ===

impl Fleet {
    /// `endpoint` answered (any status): its failure count starts again.
    pub(crate) fn succeeded(&self, endpoint: &Endpoint) {
        if endpoint.health.failures.load(Ordering::Relaxed) != 0 {
            endpoint.health.failures.store(0, Ordering::Relaxed);
        }
    }

    /// `endpoint` failed (see the module docs for what counts); ejects it at
    /// `consecutive_failures` unless it is the last usable one.
    pub(crate) fn failed(&self, endpoint: &Endpoint) {
        let health = &endpoint.health;
        let n = health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < self.outlier.consecutive_failures || self.is_ejected(endpoint) {
            return;
        }
        let endpoints = self.endpoints();
        let others_usable = endpoints
            .iter()
            .any(|e| !std::ptr::eq(&**e, endpoint) && !self.is_ejected(e) && !self.is_unhealthy(e));
        if !others_usable {
            return; // Never the last endpoint.
        }
        let now = self.now_ms();
        let last_end = health.ejected_until_ms.load(Ordering::Relaxed);
        let max = OutlierConfig::MAX_EJECTION.as_millis() as u64;
        if last_end == 0 || now.saturating_sub(last_end) > max {
            health.ejections.store(0, Ordering::Relaxed);
        }
        let repeats = health.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let period = (self.outlier.ejection.as_millis() as u64)
            .saturating_mul(1 << repeats)
            .min(max);
        health
            .ejected_until_ms
            .store(now + period, Ordering::Relaxed);
        health.failures.store(0, Ordering::Relaxed);
        tracing::warn!(upstream = %self.upstream, endpoint = %endpoint.addr, failures = n, ejected_for = ?Duration::from_millis(period), "endpoint ejected");
    }

    /// True while `endpoint` is ejected.
    pub(crate) fn is_ejected(&self, endpoint: &Endpoint) -> bool {
        endpoint.health.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// True while `endpoint`'s active check fails.
    pub(crate) fn is_unhealthy(&self, endpoint: &Endpoint) -> bool {
        endpoint.health.unhealthy.load(Ordering::Relaxed)
    }

    /// `endpoint`'s state now: unhealthy, then ejected, then pushback, over healthy.
    pub(crate) fn state(&self, endpoint: &Endpoint) -> State {
        if self.is_unhealthy(endpoint) {
            State::Unhealthy
        } else if self.is_ejected(endpoint) {
            State::Ejected
        } else if self.in_pushback(endpoint) {
            State::Pushback
        } else {
            State::Healthy
        }
    }

    /// Every endpoint now, with its state and its requests in flight.
    pub(crate) fn views(&self) -> Vec<EndpointView> {
        let endpoints = self.endpoints();
        let view = |e: &Arc<Endpoint>| EndpointView {
            address: e.addr,
            state: self.state(e),
            inflight: e.pool.inflight(),
            spoken: e.pool.spoken(),
        };
        endpoints.iter().map(view).collect()
    }

    /// Endpoints by state, in [`State::ALL`] order.
    pub(crate) fn state_counts(&self) -> [usize; 4] {
        let mut counts = [0; 4];
        for view in self.views() {
            counts[view.state as usize] += 1;
        }
        counts
    }

    /// Endpoints that count for a `per_endpoint` cap: the healthy ones and those in pushback
    /// (an endpoint that asked to wait is still there); at least 1.
    pub(crate) fn capacity_count(&self) -> usize {
        let endpoints = self.endpoints();
        let counted = endpoints
            .iter()
            .filter(|e| matches!(self.state(e), State::Healthy | State::Pushback))
            .count();
        if counted == 0 {
            // None healthy: all are used, so all count.
            endpoints.len().max(1)
        } else {
            counted
        }
    }

    /// Makes an attached `per_endpoint` cap follow the fleet: N × [`Self::capacity_count`].
    pub(crate) fn follow(&self) {
        let cap = self.cap.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((cap, per)) = cap {
            cap.set_limit(per.saturating_mul(self.capacity_count()));
        }
    }

    /// Attaches the upstream's `per_endpoint` cap of `per` requests per endpoint, and sets it.
    pub(crate) fn attach_cap(&self, cap: ConcurrencyLimit, per: usize) {
        *self.cap.lock().unwrap_or_else(|e| e.into_inner()) = Some((cap, per));
        self.follow();
    }

    /// Lets go of the cap (a reload handed it to another fleet).
    pub(crate) fn detach_cap(&self) {
        *self.cap.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The result of one active check of `endpoint`.
    fn checked(&self, endpoint: &Endpoint, ok: bool, config: &HealthCheckConfig) {
        let health = &endpoint.health;
        let streak = health.streak.load(Ordering::Relaxed);
        let streak = if ok {
            streak.max(0) + 1
        } else {
            streak.min(0) - 1
        };
        health
            .streak
            .store(streak.clamp(-1000, 1000), Ordering::Relaxed);
        let unhealthy = health.unhealthy.load(Ordering::Relaxed);
        if !unhealthy && !ok && streak.unsigned_abs() >= config.unhealthy_after {
            health.unhealthy.store(true, Ordering::Relaxed);
            self.follow();
            tracing::warn!(upstream = %self.upstream, endpoint = %endpoint.addr, "health check failed; endpoint unhealthy");
        } else if unhealthy && ok && streak.unsigned_abs() >= config.healthy_after {
            health.unhealthy.store(false, Ordering::Relaxed);
            self.follow();
            tracing::info!(upstream = %self.upstream, endpoint = %endpoint.addr, "health check passed; endpoint healthy again");
        }
    }

    /// Logs, once per episode, that no endpoint is usable and all are used.
    pub(crate) fn note_fallback(&self, none_usable: bool) {
        if none_usable {
            if !self.fallback_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(upstream = %self.upstream, "no healthy endpoint; using them all");
            }
        } else if self.fallback_logged.load(Ordering::Relaxed) {
            self.fallback_logged.store(false, Ordering::Relaxed);
        }
    }
}

/// Starts `fleet`'s active health checks on `handle`, once per fleet. The task holds the fleet
/// weakly and ends with it.
pub(crate) fn spawn_health_checks(
    fleet: &Arc<Fleet>,
    config: &HealthCheckConfig,
    handle: &tokio::runtime::Handle,
) {
    if fleet.checker_started.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak: Weak<Fleet> = Arc::downgrade(fleet);
    let config = config.clone();
    handle.spawn(async move {
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(fleet) = weak.upgrade() else { break };
            let endpoints = fleet.endpoints();
            let checks = endpoints.iter().map(|e| check(e, &config));
            let results = futures_util::future::join_all(checks).await;
            for (endpoint, ok) in endpoints.iter().zip(results) {
                fleet.checked(endpoint, ok, &config);
            }
        }
    });
}

/// Starts, once per fleet with a `per_endpoint` cap, the task that makes the cap follow
/// changes no event marks (an ejection or a pushback that ends) every [`FOLLOW_EVERY`]; the
/// changes events mark (addresses, ejections, checks) are followed at once.
pub(crate) fn spawn_follower(fleet: &Arc<Fleet>, handle: &tokio::runtime::Handle) {
    let has_cap = fleet.cap.lock().is_ok_and(|cap| cap.is_some());
    if !has_cap || fleet.follower_started.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak: Weak<Fleet> = Arc::downgrade(fleet);
    handle.spawn(async move {
        let mut tick = tokio::time::interval(FOLLOW_EVERY);
        loop {
            tick.tick().await;
            let Some(fleet) = weak.upgrade() else { break };
            fleet.follow();
        }
    });
}

/// How often a `per_endpoint` cap is checked against the fleet for changes no event marks.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// One check of `endpoint`: `GET path` on a new connection, a 2xx within `timeout`.
async fn check(endpoint: &Endpoint, config: &HealthCheckConfig) -> bool {
    let pool = &endpoint.pool;
    let exchange = async {
        let mut conn = pool.connect().await.ok()?;
        let host = HeaderValue::from_str(pool.authority.as_str()).ok()?;
        let req = Request::get(config.path.as_str())
            .header(HOST, host)
            .body(UpstreamBody::Empty)
            .ok()?;
        let res = conn.send_request(req).await.ok()?;
        Some(res.status().is_success())
    };
    matches!(
        tokio::time::timeout(config.timeout, exchange).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests;
