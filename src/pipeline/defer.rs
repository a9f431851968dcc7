//! The deferral stage, for routes with `defer:` (see `crate::defer`): instead of waiting for
//! the upstream, the request is written to Redis and answered `202 Accepted`.
//!
//! - `when: always`: every request of the route, after the body stage and before the caps. A
//!   body announced longer than `defer.max_body` gets 413 at once; one found longer while
//!   reading, 413 too.
//! - `when: overflow`: only a request the caps refused (`queue-full`, `queue-timeout`, `shed`)
//!   — the 503 it would have had becomes a 202. A request that cannot be deferred keeps that 503:
//!   its body is longer than `defer.max_body`, or cannot be held in memory because the
//!   buffering budget (`server.max_buffered_bytes`) is spent.
//!
//! The body must be whole in memory to be written: what the body stage read ahead, plus, for a
//! body that streams (longer than `server.request_buffer`), the rest, read now under the same
//! rules as streaming (`request_body_timeout` per pause, `max_request_body` in all). When
//! Redis does not take the task within `store.redis.timeout`, the answer is 503
//! `store-unavailable` — never a 202 for work that is not stored.

use bytes::Bytes;
use http::request::Parts;
use http_body::Body as _;
use hyper::body::Incoming;

use crate::config::DeferWhen;
use crate::defer::StoredRequest;
use crate::net::Origin;
use crate::proxy::body::{Unheld, UpstreamBody};
use crate::rescue::Rejection;
use crate::runtime::{Route, Runtime};

/// When the route defers requests: `None` for a route without `defer:`.
pub(super) fn when(route: &Route) -> Option<DeferWhen> {
    route.defer.as_ref().map(|d| d.config.when)
}

/// For `when: always`, before the body is read: a body announced longer than `defer.max_body`
/// (but within `max_request_body`, whose own 413 the body stage gives) is refused at once.
pub(super) fn precheck(rt: &Runtime, route: &Route, body: &Incoming) -> Result<(), Rejection> {
    let (Some(defer), announced) = (&route.defer, body.size_hint().lower()) else {
        return Ok(());
    };
    if announced > defer.config.max_body.0
        && announced <= rt.config.server.client.max_request_body.0
    {
        return Err(Rejection::DeferBodyTooLarge);
    }
    Ok(())
}

/// Writes the request to Redis: the 202's rejection ([`Rejection::Deferred`]), or why not.
/// `refused` is the caps' answer for `when: overflow` (`None` for `always`): what a request that
/// cannot be deferred gets. `trusted`: the peer is a trusted proxy (as for forwarding).
///
/// Boxed, and built outside any async body: the Redis exchange's state stays out of the future
/// of every request (a future boxed inside an async body still takes its size there).
pub(super) fn defer(
    route: &Route,
    origin: Origin,
    trusted: bool,
    parts: Parts,
    body: UpstreamBody,
    refused: Option<Rejection>,
) -> super::Boxed<'_, Rejection> {
    Box::pin(write(route, origin, trusted, parts, body, refused))
}

/// [`defer`]'s work.
async fn write(
    route: &Route,
    origin: Origin,
    trusted: bool,
    parts: Parts,
    body: UpstreamBody,
    refused: Option<Rejection>,
) -> Rejection {
    let Some(defer) = &route.defer else {
        return refused.unwrap_or(Rejection::DeferUnavailable);
    };
    // Held until the task is written: the bytes stay accounted in the buffering budget.
    let (body, _held) = match body {
        UpstreamBody::Empty => (Bytes::new(), None),
        UpstreamBody::Client(body) => match body.into_whole(defer.config.max_body.0).await {
            Ok(whole) => whole,
            Err(Unheld::Fault(fault)) => return Rejection::from(fault),
            Err(Unheld::TooLarge) => return refused.unwrap_or(Rejection::DeferBodyTooLarge),
            Err(Unheld::OverBudget) => return refused.unwrap_or(Rejection::DeferUnavailable),
        },
    };
    match defer
        .accept(StoredRequest::new(parts, origin, trusted, body))
        .await
    {
        Ok(id) => {
            tracing::debug!(route = %route.name, task = %id, overflow = refused.is_some(), "deferred");
            Rejection::Deferred(id)
        }
        Err(error) => {
            tracing::debug!(route = %route.name, %error, "Redis did not take a request to defer");
            Rejection::DeferUnavailable
        }
    }
}
