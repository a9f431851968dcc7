//! One request's path through sluice, in the contract's order:
//!
//! 1. **route**: the first matching route, or 404 `no-route`;
//! 2. **rate limits**: every limit of the route must admit the request (never waits), or 429;
//! 3. **route cap**, then 4. **upstream cap**: a slot, or a place in the bounded priority
//!    queue, or 503 (`queue-full`, `queue-timeout`, `shed`);
//! 5. **forward**: the upstream's response streams back carrying the slots, or 502/504.
//!
//! A request rejected at one step consumes nothing from the steps after it. In `shadow` mode
//! each step only counts and logs what it would have rejected.

use std::sync::Arc;

use http::{HeaderName, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::config::Mode;
use crate::limit::headers::RateLimitField;
use crate::limit::{ConcurrencyLimit, Decision, Permit, Rejected, Slots, Verdict};
use crate::metrics::{InflightGuard, Outcome, ScopeMetrics};
use crate::net::Origin;
use crate::proxy::forward;
use crate::proxy::UpstreamError;
use crate::rescue::{self, Rejection};
use crate::router::Target;
use crate::runtime::{Route, Runtime};

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Answers one request: forwards it, or rejects it with the response the contract fixes.
pub async fn handle(
    rt: Arc<Runtime>,
    origin: Origin,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let Some(index) = rt.router.find(&Target::of(&req)) else {
        tracing::debug!(client = %origin.peer, host = ?Target::of(&req).host, path = req.uri().path(), reason = "no-route", "rejected");
        rt.metrics.no_route();
        let res = rescue::respond(&Rejection::NoRoute);
        access_log(
            &rt,
            None,
            origin,
            &req,
            res.status().as_u16(),
            Outcome::NoRoute,
            started,
        );
        return res;
    };
    let route = &rt.routes[index];
    // Counts the request as `client_closed` if this future is dropped before it ends: the
    // client went away while queued or while the upstream was answering.
    let mut unfinished = Unfinished(Some(route));
    let (res, outcome) = admit_and_forward(&rt, route, origin, req).await;
    unfinished.0 = None;
    route.metrics.outcome(outcome, false);
    route.metrics.response(res.status().as_u16());
    res
}

/// Drop guard of [`handle`]: holds the route until the request has an outcome.
struct Unfinished<'a>(Option<&'a Route>);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(route) = self.0 {
            tracing::debug!(route = %route.name, reason = "client-closed", "client went away before the response");
            route.metrics.outcome(Outcome::ClientClosed, false);
        }
    }
}

async fn admit_and_forward(
    rt: &Runtime,
    route: &Route,
    origin: Origin,
    req: Request<Incoming>,
) -> (Response<ProxyBody>, Outcome) {
    let started = Instant::now();
    let shadow = route.mode == Mode::Shadow;

    // Rate limits: cheap, never wait. Every limit is checked in order; the first that denies
    // decides (the ones after it are not charged). A `scope: global` limit asks Redis, bounded
    // by `store.redis.timeout`; local limits stay synchronous (no await, no allocation).
    let mut field = route.policy.is_some().then(RateLimitField::new);
    if !route.limits.is_empty() {
        let client_ip = rt.keys.client_ip(origin.peer, req.headers());
        for limit in &route.limits {
            let config = limit.rate.config();
            let key = rt.keys.key(&config.key, client_ip, req.headers());
            #[cfg(feature = "redis")]
            let verdict = match &limit.global {
                // Boxed: keeps the Redis call's state out of the future of every request.
                Some(global) => Box::pin(global.check(&key, req.headers())).await,
                None => Verdict::Decided(limit.rate.check(&key)),
            };
            #[cfg(not(feature = "redis"))]
            let verdict = Verdict::Decided(limit.rate.check(&key));
            let decision = match verdict {
                Verdict::Decided(decision) => decision,
                // Redis failed, `on_error: allow`: this limit passes and has no item.
                Verdict::Allowed => continue,
                Verdict::Unavailable if shadow => {
                    tracing::debug!(route = %route.name, limit = %config.name, ?key, reason = "store-unavailable", shadow = true, "would reject");
                    route.metrics.outcome(Outcome::StoreUnavailable, true);
                    continue;
                }
                Verdict::Unavailable => {
                    tracing::debug!(route = %route.name, limit = %config.name, ?key, reason = "store-unavailable", "rejected");
                    let rejection = Rejection::StoreUnavailable {
                        route: route.name.clone(),
                        detail: unavailable_detail(limit),
                    };
                    return reject(rt, route, origin, &req, &rejection, field, started);
                }
            };
            match decision {
                Decision::Admitted { remaining, reset } => {
                    if let Some(f) = &mut field {
                        f.push(&config.name, remaining, reset);
                    }
                }
                Decision::Denied { retry_after } if shadow => {
                    tracing::debug!(route = %route.name, limit = %config.name, ?key, reason = "rate-limited", shadow = true, "would reject");
                    route.metrics.outcome(Outcome::RateLimited, true);
                    if let Some(f) = &mut field {
                        f.push(&config.name, 0, retry_after);
                    }
                }
                Decision::Denied { retry_after } => {
                    tracing::debug!(route = %route.name, limit = %config.name, ?key, reason = "rate-limited", "rejected");
                    let mut res = limit.rejection.respond(retry_after);
                    if let Some(policy) = &route.policy {
                        // On a 429 `RateLimit` carries only the rejecting limit, t = Retry-After.
                        res.headers_mut().insert(RATELIMIT_POLICY, policy.clone());
                        res.headers_mut()
                            .insert(RATELIMIT, limit.rejection.ratelimit_field(retry_after));
                    }
                    access_log(
                        rt,
                        Some(route),
                        origin,
                        &req,
                        429,
                        Outcome::RateLimited,
                        started,
                    );
                    return (res, Outcome::RateLimited);
                }
            }
        }
    }

    // Concurrency: the route's cap, then the upstream's. Everything the request holds rides in
    // `slots` until the response body is done.
    let mut slots = Slots::default();
    if let Some(cap) = &route.concurrency {
        match admit(cap, route, &route.cap_metrics, "route", &route.name).await {
            Ok(permit) => slots.route = permit,
            Err(rejection) => return reject(rt, route, origin, &req, &rejection, field, started),
        }
    }
    slots.route_gauge = Some(InflightGuard::enter(&route.metrics.inflight));
    if let Some(cap) = &route.upstream.concurrency {
        match admit(
            cap,
            route,
            &route.upstream_cap_metrics,
            "upstream",
            &route.upstream.name,
        )
        .await
        {
            Ok(permit) => slots.upstream = permit,
            Err(rejection) => return reject(rt, route, origin, &req, &rejection, field, started),
        }
    }
    slots.upstream_gauge = Some(InflightGuard::enter(&route.upstream_inflight));

    let (method, path) = access_fields(rt, &req);
    let mut req = req;
    forward::request(&mut req, origin);
    let sent = Instant::now();
    // Boxed: the upstream exchange is by far the largest part of this future, and hyper moves
    // the service future around; boxing it here keeps rejections (which never get this far)
    // small and cheap to move.
    let result = Box::pin(route.upstream.send(req)).await;
    route
        .metrics
        .upstream_duration
        .observe(sent.elapsed().as_secs_f64());
    match result {
        Ok((mut res, conn)) => {
            forward::response(&mut res);
            if let Some((method, path)) = &method.zip(path) {
                log_access(
                    route,
                    origin,
                    method,
                    path,
                    res.status().as_u16(),
                    Outcome::Forwarded,
                    started,
                );
            }
            let res = res.map(|body| ProxyBody::upstream(body, Some(slots), conn));
            (with_fields(res, route, field), Outcome::Forwarded)
        }
        Err(err) => {
            let (rejection, outcome) = match &err {
                // The error itself (endpoint addresses, OS errors) goes to the log, not to the
                // client: the detail names only the upstream.
                UpstreamError::Timeout { upstream, timeout } => (
                    Rejection::UpstreamTimeout {
                        route: route.name.clone(),
                        detail: format!(
                            "upstream {upstream} did not answer within {}",
                            humantime::format_duration(*timeout)
                        ),
                    },
                    Outcome::UpstreamTimeout,
                ),
                UpstreamError::Connect { upstream, .. } => (
                    Rejection::UpstreamUnavailable {
                        route: route.name.clone(),
                        detail: format!("upstream {upstream} could not be reached"),
                    },
                    Outcome::UpstreamError,
                ),
                UpstreamError::Failed { upstream, .. } => (
                    Rejection::UpstreamUnavailable {
                        route: route.name.clone(),
                        detail: format!("upstream {upstream} closed or broke the exchange"),
                    },
                    Outcome::UpstreamError,
                ),
            };
            route.upstream.warn_failure(&err);
            let res = rescue::respond(&rejection);
            if let Some((method, path)) = &method.zip(path) {
                log_access(
                    route,
                    origin,
                    method,
                    path,
                    res.status().as_u16(),
                    outcome,
                    started,
                );
            }
            (with_fields(res, route, field), outcome)
        }
    }
}

/// Takes a slot of `cap` for this route's priority. In shadow mode nothing waits and no real
/// slot is taken: the request is counted, and one the cap would have refused is logged.
async fn admit(
    cap: &ConcurrencyLimit,
    route: &Route,
    metrics: &ScopeMetrics,
    whose: &str,
    name: &str,
) -> Result<Option<Permit>, Rejection> {
    if route.mode == Mode::Shadow {
        let (permit, verdict) = cap.admit_shadow();
        if let Err(rejected) = verdict {
            tracing::debug!(route = %route.name, cap = %name, reason = rejected.reason(), shadow = true, "would reject");
            route
                .metrics
                .outcome(Outcome::from_reason(rejected.reason()), true);
        }
        return Ok(Some(permit));
    }
    match cap.acquire(route.priority).await {
        Ok(permit) => {
            metrics.queue_wait.observe(permit.waited().as_secs_f64());
            Ok(Some(permit))
        }
        Err(rejected) => Err(Rejection::Capacity {
            route: route.name.clone(),
            cap: cap_detail(whose, name, &rejected),
            rejected,
        }),
    }
}

fn cap_detail(whose: &str, name: &str, rejected: &Rejected) -> String {
    match rejected {
        Rejected::QueueFull { .. } => {
            format!("concurrency cap of {whose} {name} is full and so is its queue")
        }
        Rejected::QueueTimeout { .. } => format!("waited too long in the queue of {whose} {name}"),
        Rejected::Shed { .. } => {
            format!("shed from the queue of {whose} {name} to make room for higher-priority work")
        }
    }
}

fn reject(
    rt: &Runtime,
    route: &Route,
    origin: Origin,
    req: &Request<Incoming>,
    rejection: &Rejection,
    field: Option<RateLimitField>,
    started: Instant,
) -> (Response<ProxyBody>, Outcome) {
    let outcome = Outcome::from_reason(rejection.reason());
    tracing::debug!(route = %route.name, client = %origin.peer, reason = rejection.reason(), detail = ?rejection, "rejected");
    let res = rescue::respond(rejection);
    access_log(
        rt,
        Some(route),
        origin,
        req,
        res.status().as_u16(),
        outcome,
        started,
    );
    (with_fields(res, route, field), outcome)
}

/// Adds `RateLimit-Policy` and `RateLimit` to a response of a route with limits. `RateLimit`
/// is left out when no limit has an item (all were global with Redis down and `on_error: allow`).
fn with_fields(
    mut res: Response<ProxyBody>,
    route: &Route,
    field: Option<RateLimitField>,
) -> Response<ProxyBody> {
    if let (Some(policy), Some(mut field)) = (&route.policy, field) {
        res.headers_mut().insert(RATELIMIT_POLICY, policy.clone());
        if !field.is_empty() {
            res.headers_mut().insert(RATELIMIT, field.finish());
        }
    }
    res
}

/// The `detail` of a `store-unavailable` 503 for `limit`.
#[cfg(feature = "redis")]
fn unavailable_detail(limit: &crate::runtime::Limit) -> Arc<str> {
    match &limit.global {
        Some(global) => global.unavailable_detail().clone(),
        None => Arc::from("the shared store did not answer"),
    }
}

/// Without Redis support no limit is global, so this is never called.
#[cfg(not(feature = "redis"))]
fn unavailable_detail(_: &crate::runtime::Limit) -> Arc<str> {
    Arc::from("the shared store did not answer")
}

/// Method and path kept for the access log (only copied when the access log is on).
fn access_fields(rt: &Runtime, req: &Request<Incoming>) -> (Option<http::Method>, Option<String>) {
    if rt.config.server.access_log {
        (
            Some(req.method().clone()),
            Some(req.uri().path().to_owned()),
        )
    } else {
        (None, None)
    }
}

fn access_log(
    rt: &Runtime,
    route: Option<&Route>,
    origin: Origin,
    req: &Request<Incoming>,
    status: u16,
    outcome: Outcome,
    started: Instant,
) {
    if !rt.config.server.access_log {
        return;
    }
    let name = route.map_or("", |r| &r.name);
    tracing::info!(
        target: "sluice::access",
        route = name,
        client = %origin.peer,
        method = %req.method(),
        path = req.uri().path(),
        status,
        outcome = outcome.as_str(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
    );
}

fn log_access(
    route: &Route,
    origin: Origin,
    method: &http::Method,
    path: &str,
    status: u16,
    outcome: Outcome,
    started: Instant,
) {
    tracing::info!(
        target: "sluice::access",
        route = %route.name,
        client = %origin.peer,
        %method,
        path,
        status,
        outcome = outcome.as_str(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
    );
}
