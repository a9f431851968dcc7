//! One request's path through sluice, in the contract's order:
//!
//! 0. **canonical** ([`canonical`]): one valid `Host`; the path in canonical form, which
//!    routing matches and the upstream receives; or 400 `bad-request`;
//! 1. **route**: the first matching route, or 404 `no-route`;
//! 2. **rate limits** ([`rate`]): a header the route's limits key on must come once (else
//!    400 `bad-request`, before any bucket is charged); every limit of the route must admit
//!    the request (never waits), or 429;
//! 3. **body** ([`body`]): the client's body is read (up to `request_buffer`; a gRPC body
//!    streams from the first byte) before the request may wait for a slot, or 413/408/400;
//! 4. **caps** ([`caps`]): the route's cap, then the upstream's — a slot, or a place in the
//!    bounded priority queue, or 503 (`queue-full`, `queue-timeout`, `shed`). A route with
//!    `defer:` ([`defer`]) writes the request to Redis and answers 202 instead: every request
//!    before this stage (`when: always`), or those it refuses (`when: overflow`);
//! 5. **forward**: the upstream's response streams back carrying the slots, or 502/504. The
//!    time the upstream took to answer (or that it did not) is handed to the slots' caps, which
//!    an adaptive cap learns from.
//!
//! An HTTP/1.1 upgrade (WebSocket, [`upgrade`]) leaves this path after stage 2: a place under
//! the route's `max_upgraded`, the caps' slots until the upstream's 101, never deferred.
//!
//! `/_sluice/tasks/<id>` ([`tasks`]) is answered before routing.
//!
//! Each stage returns `Result<_, Rejection>`; a request rejected at one stage consumes nothing
//! from the stages after it, and [`crate::rescue`] makes the response. In `shadow` mode each
//! stage only counts and logs what it would have rejected, and lets the request go on.

mod canonical;
mod caps;
mod context;
mod defer;
mod rate;
mod read_body;
mod tasks;
mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use futures_util::future::BoxFuture;

use crate::body::stream::StreamGuard;
use crate::body::{Drain, ProxyBody};
use crate::canonical::match_path;
use crate::client::Origin;
use crate::config::DeferWhen;
use crate::config::Mode;
use crate::limit::{Sample, Slots};
use crate::proxy::forward;
use crate::proxy::request_body::{Fault, UpstreamBody};
use crate::proxy::tunnel::Upgrades;
use crate::proxy::upstream::Exchanged;
use crate::rescue::{self, BadRequest, Rejection};
use crate::router::Target;
use crate::runtime::{Route, Runtime};

use self::context::{Answer, RequestContext};

/// Answers one request: forwards it, or rejects it with the response the contract fixes.
/// `stream`: an HTTP/2 stream's mark of activity, kept by the response body until it is done
/// (see `crate::body::stream`). `upgrades`: where the tunnel of an upgrade answered 101 goes,
/// the client connection's. Never fails: the `Result` is hyper's service contract, taken here
/// so that no wrapper future copies this one's state.
pub(crate) async fn handle(
    rt: Arc<Runtime>,
    origin: Origin,
    req: Request<Incoming>,
    mut stream: Option<StreamGuard>,
    upgrades: Arc<Upgrades>,
) -> Result<Response<ProxyBody>, Infallible> {
    let mut context = RequestContext::new(&rt, origin, &req);
    let answer = stages(&mut context, req, (&upgrades, &mut stream)).await;
    let res = context.finish(answer);
    Ok(match stream {
        Some(guard) => res.map(|body| body.with_stream_guard(guard)),
        None => res,
    })
}

/// The stages, in the contract's order, until one answers.
async fn stages<'rt>(
    context: &mut RequestContext<'rt>,
    mut req: Request<Incoming>,
    (upgrades, stream): (&Upgrades, &mut Option<StreamGuard>),
) -> Answer {
    let rt = context.rt;
    let index = match admit_to_routing(rt, &mut req) {
        Ok(Routed::Route(index)) => index,
        Ok(Routed::Tasks) => {
            return Answer::TaskLookup(tasks::answer(rt, context.origin, &req).await);
        }
        Err(rejection) => {
            context.refused_before_routing(&req, rejection);
            return Answer::Rejected(rejection);
        }
    };
    let route = &rt.routes[index];
    context.route = Some(route);
    let origin = context.origin;
    // The rate stage waits only for a global limit's Redis call; a request rejected here (the
    // hot path under a flood) never builds the state of the stages after it.
    let rated = match rate::check(rt, route, origin, req.headers(), &mut context.fields) {
        Ok(Some(at)) => rate::global(rt, route, req.headers(), &mut context.fields, at).await,
        Ok(_) => Ok(()),
        Err(rejection) => Err(rejection),
    };
    if let Err(rejection) = rated {
        return Answer::Rejected(rejection);
    }
    // An upgrade (WebSocket) goes its own way after the rate limits: no body, no deferral,
    // and no slot once the upstream has switched.
    if let Some(protocol) = upgrade::protocol(&req) {
        let upgraded = Box::pin(upgrade::forward(
            (rt, route),
            origin,
            req,
            protocol,
            (upgrades, stream),
        ));
        return match upgraded.await {
            Ok(res) => Answer::Forwarded(res),
            Err(rejection) => Answer::Rejected(rejection),
        };
    }
    match boxed_admit_and_forward(rt, route, origin, req).await {
        Ok(answer) => answer,
        Err(rejection) => Answer::Rejected(rejection),
    }
}

/// Where a canonical request goes.
enum Routed {
    /// The route of this index.
    Route(usize),
    /// `/_sluice/tasks/…`: deferred tasks' status, answered before any route (so that no route
    /// can shadow it), by canonical path.
    Tasks,
}

/// The canonical stage, then the route stage: the first route that matches the canonical
/// request. Paths are matched without their `;` parameters (`crate::canonical::match_path`).
fn admit_to_routing<B>(rt: &Runtime, req: &mut Request<B>) -> Result<Routed, Rejection> {
    // An HTTP/2 WebSocket (extended CONNECT) is routed as its HTTP/1.1 handshake, a GET.
    let connect = upgrade::extended_connect(req);
    if connect == Some(false) {
        return Err(Rejection::BadRequest(BadRequest::ConnectProtocol));
    }
    let (req, host) = canonical::check(req, rt.config.server.escaped_slashes)
        .map_err(|cause| Rejection::BadRequest(BadRequest::Canonical(cause)))?;
    let path = req.uri().path();
    if path.starts_with(rescue::TASKS_PATH) {
        return Ok(Routed::Tasks);
    }
    let path = match_path(path);
    rt.router
        .find(&Target {
            host,
            path: &path,
            method: match connect {
                Some(_) => &http::Method::GET,
                None => req.method(),
            },
        })
        .map(Routed::Route)
        .ok_or(Rejection::NoRoute)
}

/// When the route defers `headers`' request, and its `Idempotency-Key`. A gRPC client could
/// not read a 202: its request is handled as if the route had no `defer`.
fn deferral(
    route: &Route,
    headers: &http::HeaderMap,
) -> Result<(Option<DeferWhen>, Option<crate::defer::IdempotencyKey>), Rejection> {
    if crate::rescue::grpc::is_grpc(headers) {
        return Ok((None, None));
    }
    Ok((defer::when(route), defer::key(route, headers)?))
}

/// [`admit_and_forward`], boxed outside any async body. Its state is over a KiB (the nested
/// stages' futures), and hyper moves each request's future: boxed, what moves is a pointer.
fn boxed_admit_and_forward<'a>(
    rt: &'a Runtime,
    route: &'a Route,
    origin: Origin,
    req: Request<Incoming>,
) -> BoxFuture<'a, Result<Answer, Rejection>> {
    Box::pin(admit_and_forward(rt, route, origin, req))
}

/// Body, caps (or deferral), forward: each stage may reject.
async fn admit_and_forward(
    rt: &Runtime,
    route: &Route,
    origin: Origin,
    req: Request<Incoming>,
) -> Result<Answer, Rejection> {
    // Whether the peer may tell us about the client (`Forwarded`, `X-Real-IP` kept).
    let trusted = rt.keys.is_trusted_peer(origin.peer);
    let (when, key) = deferral(route, req.headers())?;
    if when == Some(DeferWhen::Always) {
        defer::precheck(rt, route, req.body())?;
    }
    let (parts, body) = req.into_parts();
    let grpc = crate::rescue::grpc::is_grpc(&parts.headers);
    let body = read_body::read(rt, body, grpc).await?;
    match (when, &key) {
        (Some(DeferWhen::Always), _) => {
            let written = defer::defer((rt, route), (origin, trusted), (parts, body, key), None);
            return written.await.map(Answer::Deferred);
        }
        // A repeat of a request deferred before is answered with its task, not forwarded.
        (Some(DeferWhen::Overflow), Some(named)) => {
            if let Some(res) = defer::named(route, named).await? {
                return Ok(Answer::Deferred(res));
            }
        }
        _ => {}
    }
    // Every endpoint asked to wait: answered now, before the request takes a slot or a place
    // in a queue. (On a route that defers on overflow, its caps decide first; the exchange then
    // answers the same 503.)
    if when != Some(DeferWhen::Overflow) {
        if let Some(retry_after) = route.upstream.pushback() {
            return Err(Rejection::UpstreamPushback { retry_after });
        }
    }
    let slots = match caps::admit(route, caps::Asker::new(rt, origin, &parts.headers)).await {
        Ok(slots) => slots,
        Err(refused) if when == Some(DeferWhen::Overflow) => {
            let written = defer::defer(
                (rt, route),
                (origin, trusted),
                (parts, body, key),
                Some(refused),
            );
            return written.await.map(Answer::Deferred);
        }
        Err(rejection) => return Err(rejection),
    };
    let drain = Drain::new(
        rt.config.server.client.response_buffer.0,
        rt.config.server.client.send_timeout,
        rt.budget.clone(),
    );
    let req = Request::from_parts(parts, body);
    let log = rt.config.server.access_log;
    forward(route, (origin, trusted), req, slots, drain, log)
        .await
        .map(Answer::Forwarded)
}

/// Sends the request upstream; the response body carries `slots` until it ends. `trusted`: the
/// peer is one of `trusted_proxies` (its `Forwarded` and `X-Real-IP` are passed on). A plain
/// function around one `await`: the request is handed to the (boxed) exchange before the
/// returned future exists, so that future holds only what the answer needs. `log`: the access
/// log is on, and the response carries the protocol spoken upstream for it.
fn forward(
    route: &Route,
    (origin, trusted): (Origin, bool),
    mut req: Request<UpstreamBody>,
    slots: Slots,
    drain: Drain,
    log: bool,
) -> impl Future<Output = Result<Response<ProxyBody>, Rejection>> + Send + '_ {
    forward::request(&mut req, origin, trusted);
    let fault = match req.body() {
        UpstreamBody::Client(body) => body.fault(),
        UpstreamBody::Empty => None,
    };
    let sent = Instant::now();
    let exchange = exchange(route, req);
    async move {
        let mut result = exchange.await;
        if let (true, Ok((res, conn))) = (log, &mut result) {
            // Read by the access line (`RequestContext::finish`); only when it is written, as
            // the first extension costs an allocation.
            res.extensions_mut().insert(conn.spoken());
        }
        answered(route, result, sent.elapsed(), fault, slots, drain)
    }
}

/// What [`forward`] makes of the exchange's result, which took `took`.
fn answered(
    route: &Route,
    result: Exchanged,
    took: Duration,
    fault: Option<Arc<Fault>>,
    mut slots: Slots,
    drain: Drain,
) -> Result<Response<ProxyBody>, Rejection> {
    route.metrics.upstream_duration.observe(took.as_secs_f64());
    let client_fault = fault.as_ref().and_then(|f| f.get());
    let body_sent = fault.as_ref().is_none_or(|f| f.complete());
    let answer = result.as_ref().ok().map(|(res, _)| {
        let status = res.status();
        // Only a 5xx's is looked at: no lookup for the others.
        let retry_after = status.is_server_error() && res.headers().contains_key(RETRY_AFTER);
        Sample::answer(status, retry_after, took)
    });
    if let Some(sample) = sample(answer, client_fault.is_some(), body_sent) {
        slots.record(sample);
    }
    match result {
        // A switch of protocols no request of this path asked for (RFC 9110 §15.2.2: only to
        // one the client's `Upgrade` named): the upstream broke the exchange.
        Ok((res, _)) if res.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
            tracing::warn!(upstream = %route.upstream.name, "upstream switched protocols on a request that asked for no upgrade");
            Err(Rejection::UpstreamBroken)
        }
        Ok((mut res, conn)) => {
            forward::response(&mut res);
            let (parts, body) = res.into_parts();
            let body = ProxyBody::upstream(body, slots, conn, drain);
            Ok(Response::from_parts(parts, body))
        }
        Err(err) => {
            // A streamed body that broke a rule (or the client's framing) broke the exchange:
            // the client's fault, answered as such and not logged as an upstream failure.
            if let Some(fault) = client_fault {
                return Err(Rejection::from(fault));
            }
            route.upstream.warn_failure(&err);
            Err(Rejection::from(&err))
        }
    }
}

/// What an exchange tells the caps of its slots (an adaptive cap learns from it): the
/// upstream's `answer` (which the cap judges itself: see [`Sample`]); a drop when there was
/// none (a timeout, a failure); nothing when the client's streamed body broke a rule
/// (`client_fault`), and nothing for a failure or a 5xx before the client had sent all of its
/// body (`!body_sent`): a trickle that outlasts the upstream's patience is the client's doing
/// and says nothing of the upstream.
fn sample(answer: Option<Sample>, client_fault: bool, body_sent: bool) -> Option<Sample> {
    match answer {
        _ if client_fault => None,
        Some(Sample::ServerError { .. }) if !body_sent => None,
        Some(answer) => Some(answer),
        None if body_sent => Some(Sample::Dropped),
        None => None,
    }
}

/// The upstream exchange, boxed: by far the largest part of a forwarded request's state, and
/// rejected requests (which never get this far) stay small and cheap to move.
fn exchange(route: &Route, req: Request<UpstreamBody>) -> BoxFuture<'_, Exchanged> {
    Box::pin(route.upstream.send(req))
}

/// Counts and logs what a shadow-mode stage would have rejected.
fn shadowed(route: &Route, rejection: &Rejection) {
    debug_assert_eq!(route.mode, Mode::Shadow);
    tracing::debug!(route = %route.name, reason = rejection.reason(), shadow = true, "would reject");
    route.metrics.outcome(rejection.outcome(), true);
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    /// The upstream's answer goes to the caps as it is (the cap judges it, see
    /// `limit::adaptive`), a failure as a drop; a client's broken or unfinished upload teaches
    /// nothing (it would let a slow uploader halve an adaptive cap), and neither does a 5xx that
    /// came before the client had sent all of its body.
    #[test]
    fn what_an_exchange_teaches_the_caps() {
        let took = Duration::from_millis(20);
        let answer = |code: u16, retry_after: bool| {
            let status = StatusCode::from_u16(code).expect("a valid status");
            Some(Sample::answer(status, retry_after, took))
        };
        let cases = [
            // (answer, client_fault, body_sent) → sample
            ((answer(200, false), false, true), answer(200, false)),
            ((answer(200, false), false, false), answer(200, false)),
            ((answer(404, false), false, true), answer(404, false)),
            ((answer(404, false), false, false), answer(404, false)),
            ((answer(503, false), false, true), answer(503, false)),
            ((answer(503, true), false, true), answer(503, true)),
            ((None, false, true), Some(Sample::Dropped)),
            ((None, false, false), None),
            ((answer(503, true), false, false), None),
            ((answer(500, false), false, false), None),
            ((None, true, false), None),
            ((answer(200, false), true, true), None),
        ];
        for ((answer, fault, sent), want) in cases {
            assert_eq!(
                sample(answer, fault, sent),
                want,
                "{answer:?} {fault} {sent}"
            );
        }
    }
}
