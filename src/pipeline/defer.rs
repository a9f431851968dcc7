//! The deferral stage, for routes with `defer:` (see `crate::defer`): instead of waiting for
//! the upstream, the request is written to Redis and answered `202 Accepted`.
//!
//! - `when: always`: every request of the route, after the body stage and before the caps. A
//!   body announced longer than the route's body limit (the smaller of `defer.max_body` and
//!   `max_request_body`) gets 413 at once; one found longer while reading, 413 too.
//! - `when: overflow`: only a request the caps refused (`queue-full`, `queue-timeout`, `shed`)
//!   — the 503 it would have had becomes a 202. A request that cannot be deferred keeps that 503:
//!   its body is longer than `defer.max_body`, or cannot be held in memory because the
//!   buffering budget (`server.max_buffered_bytes`) is spent, or the route is full. A request
//!   whose `Idempotency-Key` names a task of the route already gets that task's 202 before the
//!   caps, and is not forwarded.
//!
//! The body must be whole in memory to be written: what the body stage read ahead, plus, for a
//! body that streams (announced or found longer than `server.request_buffer`), the rest, read
//! now within the buffering budget and under the same rules as streaming
//! (`request_body_timeout` per pause). A 202 is sent if and only if Redis has the task; an
//! unknown outcome is a 503 that names the task.

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Response};
use http_body::Body as _;
use hyper::body::Incoming;

use futures_util::future::BoxFuture;

use crate::body::ProxyBody;
use crate::client::Origin;
use crate::config::DeferWhen;
use crate::defer::{Deferred, IdempotencyKey, Refused, StoredRequest};
use crate::proxy::request_body::{Unheld, UpstreamBody};
use crate::rescue::{self, BadRequest, Rejection};
use crate::runtime::{Route, Runtime};

/// When the route defers requests: `None` for a route without `defer:`.
pub(super) fn when(route: &Route) -> Option<DeferWhen> {
    route.defer.as_ref().map(|d| d.config().when)
}

/// The client's `Idempotency-Key` of a request to a deferring route, checked before anything
/// is read: one that cannot name a task is 400.
pub(super) fn key(route: &Route, headers: &HeaderMap) -> Result<Option<IdempotencyKey>, Rejection> {
    if route.defer.is_none() {
        return Ok(None);
    }
    IdempotencyKey::of(headers)
        .map_err(|bad| Rejection::BadRequest(BadRequest::IdempotencyKey(bad)))
}

/// For `when: always`, before the body is read: a body announced longer than the route's body
/// limit is refused at once (`max_request_body`'s own 413 comes from the body stage).
pub(super) fn precheck(rt: &Runtime, route: &Route, body: &Incoming) -> Result<(), Rejection> {
    let (Some(defer), announced) = (&route.defer, body.size_hint().lower()) else {
        return Ok(());
    };
    if announced > defer.config().max_body.0
        && announced <= rt.config.server.client.max_request_body.0
    {
        return Err(Rejection::DeferBodyTooLarge);
    }
    Ok(())
}

/// For `when: overflow`: the 202 of the task `key` names, if it names one. Boxed, like
/// [`defer`].
pub(super) fn named<'a>(
    route: &'a Route,
    key: &'a IdempotencyKey,
) -> BoxFuture<'a, Result<Option<Response<ProxyBody>>, Rejection>> {
    Box::pin(async move {
        let Some(defer) = &route.defer else {
            return Ok(None);
        };
        match defer.named(key).await {
            Ok(None) => Ok(None),
            Ok(Some(deferred)) => Ok(Some(answer(deferred))),
            Err(refused) => Err(refusal(refused, None)),
        }
    })
}

/// Writes the request to Redis: its 202, or why not. `refused` is the caps' answer for
/// `when: overflow` (`None` for `always`): what a request that cannot be deferred gets.
/// `trusted`: the peer is a trusted proxy (as for forwarding).
///
/// Boxed, and built outside any async body: the Redis exchange's state stays out of the future
/// of every request (a future boxed inside an async body still takes its size there).
pub(super) fn defer<'a>(
    (rt, route): (&'a Runtime, &'a Route),
    (origin, trusted): (Origin, bool),
    (parts, body, key): (Parts, UpstreamBody, Option<IdempotencyKey>),
    refused: Option<Rejection>,
) -> BoxFuture<'a, Result<Response<ProxyBody>, Rejection>> {
    Box::pin(write(
        rt,
        route,
        (origin, trusted),
        (parts, body, key),
        refused,
    ))
}

/// [`defer`]'s work.
async fn write(
    rt: &Runtime,
    route: &Route,
    (origin, trusted): (Origin, bool),
    (parts, body, key): (Parts, UpstreamBody, Option<IdempotencyKey>),
    refused: Option<Rejection>,
) -> Result<Response<ProxyBody>, Rejection> {
    let Some(defer) = &route.defer else {
        return Err(refused.unwrap_or(Rejection::DeferUnavailable));
    };
    let max = defer.config().max_body.0;
    // Held until the task is written: the bytes stay accounted in the buffering budget.
    let (body, _held) = match body {
        UpstreamBody::Empty => (Bytes::new(), None),
        UpstreamBody::Client(body) => match body.into_whole(max, &rt.budget).await {
            Ok(whole) => whole,
            Err(Unheld::Fault(fault)) => return Err(Rejection::from(fault)),
            Err(Unheld::TooLarge) => return Err(refused.unwrap_or(Rejection::DeferBodyTooLarge)),
            Err(Unheld::OverBudget) => return Err(refused.unwrap_or(Rejection::DeferUnavailable)),
        },
    };
    let request = StoredRequest::new(parts, origin, trusted, body, key);
    match defer.accept(request).await {
        Ok(deferred) => {
            tracing::debug!(route = %route.name, ?deferred, overflow = refused.is_some(), "deferred");
            Ok(answer(deferred))
        }
        Err(why) => {
            tracing::debug!(route = %route.name, ?why, "not deferred");
            Err(refusal(why, refused))
        }
    }
}

/// The 202 of a deferred request.
fn answer(deferred: Deferred) -> Response<ProxyBody> {
    match deferred {
        Deferred::New(id) => rescue::accepted(&id),
        Deferred::Duplicate(status) => rescue::duplicate(&status),
    }
}

/// The answer to a request the route could not defer; `refused`, the caps' 503 for
/// `when: overflow`, stands where the task is certainly not stored and the route is not the
/// cause (a full route, Redis' refusal).
fn refusal(why: Refused, refused: Option<Rejection>) -> Rejection {
    match why {
        Refused::NotStored => refused.unwrap_or(Rejection::DeferUnavailable),
        Refused::Full => refused.unwrap_or(Rejection::DeferFull),
        Refused::Unknown(id) => Rejection::DeferUnknown(id),
        Refused::KeyReused => Rejection::KeyReused,
    }
}
