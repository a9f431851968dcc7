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
//! - **HTTP/2** (RFC 8441): an extended CONNECT with `:protocol websocket` is the same upgrade,
//!   routed as a GET and sent to the upstream as an HTTP/1.1 handshake (with a
//!   `Sec-WebSocket-Key` of sluice's, the upstream's `Sec-WebSocket-Accept` not passed back);
//!   the upstream's 101 becomes the client's 200, and the tunnel runs on the stream. A 2xx other
//!   than 101 is 502 (the client would take it for an open WebSocket). Another `:protocol`
//!   gets 400 before routing ([`extended_connect`]).

use std::sync::Arc;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use super::{answered, caps, exchange, shadowed};
use crate::body::stream::StreamGuard;
use crate::body::{Drain, ProxyBody};
use crate::client::Origin;
use crate::config::Mode;
use crate::limit::Sample;
use crate::proxy::forward;
use crate::proxy::request_body::UpstreamBody;
use crate::proxy::tunnel::{Place, Stream, Tunnel, Upgrades};
use crate::rescue::Rejection;
use crate::runtime::{Route, Runtime};

/// The protocol `req` asks to switch to, when it is an upgrade sluice tunnels (see the module
/// docs); `None` for a plain request.
pub(super) fn protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() == Version::HTTP_2 {
        let websocket =
            extended_connect(req) == Some(true) && req.extensions().get::<OnUpgrade>().is_some();
        return websocket.then(|| HeaderValue::from_static("websocket"));
    }
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

/// For an HTTP/2 extended CONNECT (RFC 8441): whether it asks for `websocket` (the only
/// protocol sluice tunnels); `None` for any other request.
pub(super) fn extended_connect<B>(req: &Request<B>) -> Option<bool> {
    if req.method() != Method::CONNECT {
        return None;
    }
    let protocol = req.extensions().get::<hyper::ext::Protocol>()?;
    Some(protocol.as_str().eq_ignore_ascii_case("websocket"))
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
/// tunnel goes to `upgrades`, the client connection's (an HTTP/2 one takes the stream's guard
/// from `stream`).
pub(super) async fn forward(
    (rt, route): (&Runtime, &Route),
    origin: Origin,
    mut req: Request<Incoming>,
    protocol: HeaderValue,
    (upgrades, stream): (&Upgrades, &mut Option<StreamGuard>),
) -> Result<Response<ProxyBody>, Rejection> {
    let h2 = req.version() == Version::HTTP_2;
    let place = take_place(route)?;
    if let Some(retry_after) = route.upstream.pushback() {
        return Err(Rejection::UpstreamPushback { retry_after });
    }
    let asker = caps::Asker::new(rt, origin, req.headers());
    let mut slots = caps::admit(route, asker).await?;
    let client = hyper::upgrade::on(&mut req);
    let websocket = is_websocket(&protocol);
    let trusted = rt.keys.is_trusted_peer(origin.peer);
    let (parts, _empty) = req.into_parts();
    let mut req = Request::from_parts(parts, UpstreamBody::Empty);
    forward::request(&mut req, origin, trusted);
    forward::upgrade_headers(req.headers_mut(), protocol);
    if h2 {
        as_http1_handshake(&mut req);
    }
    let sent = Instant::now();
    let result = exchange(route, req).await;
    let took = sent.elapsed();
    let (res, conn) = match result {
        Ok((res, conn)) if res.status() == StatusCode::SWITCHING_PROTOCOLS => (res, conn),
        Ok((res, _)) if h2 && res.status().is_success() => {
            tracing::warn!(upstream = %route.upstream.name, status = %res.status(), "upstream answered a WebSocket handshake with a 2xx other than 101");
            return Err(Rejection::UpstreamBroken);
        }
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
    let client = ClientSide {
        upgrade: client,
        websocket,
        place,
    };
    switched(route, res, client, h2, (upgrades, stream))
}

/// A place under the route's `max_upgraded`; past it 503 (in shadow mode, only counted).
fn take_place(route: &Route) -> Result<Place, Rejection> {
    let (place, full) = Place::take(&route.metrics.upgraded, route.max_upgraded);
    if full {
        if route.mode == Mode::Enforce {
            return Err(Rejection::UpgradedFull);
        }
        shadowed(route, &Rejection::UpgradedFull);
    }
    Ok(place)
}

/// What a tunnel needs of the client's side: its connection's upgrade, whether it speaks
/// WebSocket (for close frames), and its place under `max_upgraded`.
struct ClientSide {
    upgrade: OnUpgrade,
    websocket: bool,
    place: Place,
}

/// The client's answer to the upstream's 101 `res`: the tunnel is handed to the client
/// connection (`upgrades`), and the response says what the client now speaks (a 200 on an
/// HTTP/2 stream, which takes the stream's guard from `stream`).
fn switched(
    route: &Route,
    mut res: Response<Incoming>,
    client: ClientSide,
    h2: bool,
    (upgrades, stream): (&Upgrades, &mut Option<StreamGuard>),
) -> Result<Response<ProxyBody>, Rejection> {
    let Some(switched_to) = res.headers().get(UPGRADE).cloned() else {
        // A 101 must name the protocol (RFC 9110 §15.2.2); without it the client could not
        // tell what it now speaks.
        tracing::warn!(upstream = %route.upstream.name, "upstream answered an upgrade 101 without Upgrade");
        return Err(Rejection::UpstreamBroken);
    };
    let upstream = hyper::upgrade::on(&mut res);
    let tunnel = Tunnel::new(
        client.upgrade,
        upstream,
        Arc::clone(&route.name),
        route.upgraded_idle_timeout,
        client.websocket,
        client.place,
    );
    let (mut parts, _empty) = res.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers);
    if h2 {
        // The stream is the tunnel now: its guard goes with it (see `crate::body::stream`).
        let tunnel = match stream.take() {
            Some(guard) => tunnel.on_stream(tunnel_stream(guard)),
            None => tunnel,
        };
        upgrades.spawn(tunnel);
        parts.headers.remove(SEC_WEBSOCKET_ACCEPT);
        parts.status = StatusCode::OK;
    } else {
        upgrades.hand_over(tunnel);
        forward::upgrade_headers(&mut parts.headers, switched_to);
    }
    Ok(Response::from_parts(parts, ProxyBody::empty()))
}

/// Makes an HTTP/2 WebSocket's request (already rewritten for the upstream) its HTTP/1.1
/// handshake: GET, a fresh `Sec-WebSocket-Key` (RFC 8441 has none), version 13 unless given.
fn as_http1_handshake<B>(req: &mut Request<B>) {
    *req.method_mut() = Method::GET;
    let headers = req.headers_mut();
    if let Ok(key) = HeaderValue::from_str(&websocket_key()) {
        headers.insert(SEC_WEBSOCKET_KEY, key);
    }
    headers
        .entry(SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
}

/// What an HTTP/2 tunnel holds of its stream: the guard, and when the connection carries no
/// request any more.
fn tunnel_stream(guard: StreamGuard) -> Stream {
    let guard = Arc::new(guard.into_tunnel());
    let waiting = guard.clone();
    Stream {
        hold: Box::new(guard),
        quiet: Box::pin(async move { waiting.only_tunnels().await }),
    }
}

/// A `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1), from the process's random
/// hasher seeds (the key only proves to the client that the server speaks WebSocket; the
/// upstream's answer to it is not passed on).
fn websocket_key() -> String {
    let state = RandomState::new();
    let mut bytes = [0u8; 16];
    for (i, half) in bytes.chunks_mut(8).enumerate() {
        let mut hasher = state.build_hasher();
        hasher.write_usize(i);
        half.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    base64(&bytes)
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Base64 as RFC 4648's test vectors; a key is 24 characters, as RFC 6455 wants.
    #[test]
    fn base64_and_keys() {
        for (raw, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), want);
        }
        let (a, b) = (websocket_key(), websocket_key());
        assert_eq!(a.len(), 24);
        assert_ne!(a, b, "a fresh key each time");
    }

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
