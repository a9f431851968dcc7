//! The upgrade stage: an HTTP/1.1 request asking to switch protocols (WebSocket), after the
//! route's rate limits.
//!
//! - **Which requests.** HTTP/1.1 with one `Upgrade` line and `upgrade` among the `Connection`
//!   options (RFC 9110 §7.8: a sender of `Upgrade` must name it there), and no body. Anything
//!   else — `Connection: upgrade` without `Upgrade`, `Upgrade` without it, a body, an HTTP/2
//!   request — is a plain request, its hop-by-hop headers removed as always. So is
//!   `Upgrade: h2c`: an HTTP/2 connection tunnelled to the upstream would carry requests that
//!   no limit of sluice sees.
//! - **Order.** A place under the route's `max_upgraded` (or 503 `queue-full`), the upstream's
//!   pushback, then the caps' slots like any request (queueing included): the handshake holds
//!   them until the upstream answers. Deferral never applies: a client waiting for its 101
//!   could not read a 202.
//! - **The answer.** A 101 releases the slots at once and hands a [`Tunnel`] to the client's
//!   connection (see [`crate::proxy::tunnel`]); it is counted as `forwarded` with code 101. Any
//!   other answer is relayed as a normal response, and a failure is the usual 502/504.

use std::sync::Arc;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use super::{answered, caps, exchange, shadowed};
use crate::body::{Drain, ProxyBody};
use crate::client::Origin;
use crate::config::Mode;
use crate::limit::Sample;
use crate::proxy::forward;
use crate::proxy::request_body::UpstreamBody;
use crate::proxy::tunnel::{Place, Tunnel, Upgrades};
use crate::rescue::Rejection;
use crate::runtime::{Route, Runtime};

/// The protocol `req` asks to switch to, when it is an upgrade sluice tunnels (see the module
/// docs); `None` for a plain request.
pub(super) fn protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11
        || req.extensions().get::<OnUpgrade>().is_none()
        || !req.body().is_end_stream()
    {
        return None;
    }
    let mut lines = req.headers().get_all(UPGRADE).iter();
    let protocol = lines.next()?;
    if lines.next().is_some() || !names(protocol, |token| !token.is_empty()) {
        return None;
    }
    if names(protocol, |token| token.eq_ignore_ascii_case("h2c")) {
        return None;
    }
    let asked = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .any(|line| names(line, |token| token.eq_ignore_ascii_case("upgrade")));
    asked.then(|| protocol.clone())
}

/// True when some comma-separated token of `value` (text) satisfies `wanted`.
fn names(value: &HeaderValue, wanted: impl Fn(&str) -> bool) -> bool {
    value
        .to_str()
        .is_ok_and(|text| text.split(',').map(str::trim).any(wanted))
}

/// True when `protocol` is WebSocket (`websocket`, or `websocket/13`-style with a version).
fn is_websocket(protocol: &HeaderValue) -> bool {
    names(protocol, |token| {
        let name = token.split('/').next().unwrap_or_default();
        name.eq_ignore_ascii_case("websocket")
    })
}

/// Forwards the handshake of an upgrade to `protocol` (see the module docs); on a 101 the
/// tunnel goes to `upgrades`, the client connection's.
pub(super) async fn forward(
    rt: &Runtime,
    route: &Route,
    origin: Origin,
    mut req: Request<Incoming>,
    protocol: HeaderValue,
    upgrades: &Upgrades,
) -> Result<Response<ProxyBody>, Rejection> {
    let (place, full) = Place::take(&route.metrics.upgraded, route.max_upgraded);
    if full {
        if route.mode == Mode::Enforce {
            return Err(Rejection::UpgradedFull);
        }
        shadowed(route, &Rejection::UpgradedFull);
    }
    if let Some(retry_after) = route.upstream.pushback() {
        return Err(Rejection::UpstreamPushback { retry_after });
    }
    let mut slots = caps::admit(route).await?;
    let client = hyper::upgrade::on(&mut req);
    let websocket = is_websocket(&protocol);
    let trusted = rt.keys.is_trusted_peer(origin.peer);
    let (parts, _empty) = req.into_parts();
    let mut req = Request::from_parts(parts, UpstreamBody::Empty);
    forward::request(&mut req, origin, trusted);
    forward::upgrade_headers(req.headers_mut(), protocol);
    let sent = Instant::now();
    let result = exchange(route, req).await;
    let took = sent.elapsed();
    let (mut res, conn) = match result {
        Ok((res, conn)) if res.status() == StatusCode::SWITCHING_PROTOCOLS => (res, conn),
        other => {
            // Not switched: relayed as any response (or failure), with the slots.
            let drain = Drain::new(
                rt.config.server.client.response_buffer.0,
                rt.config.server.client.send_timeout,
                rt.budget.clone(),
            );
            return answered(route, other, took, None, slots, drain);
        }
    };
    route.metrics.upstream_duration.observe(took.as_secs_f64());
    slots.record(Sample::answer(res.status(), false, took));
    // The handshake is over: an upgraded connection holds no slot.
    drop(slots);
    // The upstream's connection is the tunnel's now, never back in the pool.
    drop(conn);
    let Some(switched_to) = res.headers().get(UPGRADE).cloned() else {
        // A 101 must name the protocol (RFC 9110 §15.2.2); without it the client could not
        // tell what it now speaks.
        tracing::warn!(upstream = %route.upstream.name, "upstream answered an upgrade 101 without Upgrade");
        return Err(Rejection::UpstreamBroken);
    };
    let upstream = hyper::upgrade::on(&mut res);
    upgrades.hand_over(Tunnel::new(
        client,
        upstream,
        Arc::clone(&route.name),
        route.upgraded_idle_timeout,
        websocket,
        place,
    ));
    let (mut parts, _empty) = res.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers);
    forward::upgrade_headers(&mut parts.headers, switched_to);
    Ok(Response::from_parts(parts, ProxyBody::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WebSocket is told apart from other protocols, case and version aside.
    #[test]
    fn websocket_by_name() {
        for (value, want) in [
            ("websocket", true),
            ("WebSocket", true),
            ("websocket/13", true),
            ("foo, websocket", true),
            ("h2c", false),
            ("tls/1.3", false),
        ] {
            assert_eq!(
                is_websocket(&HeaderValue::from_static(value)),
                want,
                "{value}"
            );
        }
    }
}
