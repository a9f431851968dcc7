//! Serving one connection: HTTP/1.1 or HTTP/2 through hyper, each request handed to
//! [`crate::pipeline::handle`] with the runtime current when it arrived.
//!
//! HTTP/2 and backpressure: a rejection (429, 503) is an ordinary response on its own stream and
//! never resets the connection or the other streams; `server.max_concurrent_streams` is the
//! `SETTINGS_MAX_CONCURRENT_STREAMS` sluice advertises; and a response body is only polled
//! (so read from the upstream) while the client's flow-control window has room, so a slow
//! reader pushes back all the way to the upstream instead of making sluice buffer.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};

use futures_util::future::Either;

use crate::body::stream::{Activity, StreamGuard};
use crate::client::Origin;
use crate::pipeline;
use crate::proxy::tunnel::{Tunnels, Upgrades};
use crate::runtime::http_settings::{HttpBuilder, Protocol};
use crate::runtime::Shared;

/// How a connection takes part in its listener's graceful shutdown.
#[derive(Debug)]
pub(crate) struct Draining {
    /// Graceful shutdown waits for the connection's requests in flight.
    pub(crate) watcher: Watcher,
    /// And then closes its upgraded connection, if it has one.
    pub(crate) tunnels: Tunnels,
}

/// Serves HTTP on `io` until the client closes, an error occurs, graceful shutdown has finished
/// the connection's in-flight requests, or — HTTP/2 — the connection has had no open stream
/// for `header_read_timeout`. An HTTP/1.1 connection upgraded (WebSocket) is then relayed
/// here until the tunnel ends (`crate::proxy::tunnel`): it keeps the connection's slots of
/// `max_connections` and `max_connections_per_ip` meanwhile, and is one of `draining.tunnels`.
///
/// `maybe_h2`: the connection may speak HTTP/2 (ALPN said so, or the first byte is the
/// preface's `P`); then [`super::idle`] closes it once it sits without streams, including when
/// it sent the preface and nothing else.
pub(crate) async fn serve<I>(
    io: I,
    origin: Origin,
    protocol: Protocol,
    maybe_h2: bool,
    shared: Arc<Shared>,
    builder: HttpBuilder,
    draining: Draining,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle_timeout = shared.runtime().config.server.header_read_timeout;
    let activity = Arc::new(Activity::new());
    let streams = activity.clone();
    let Draining { watcher, tunnels } = draining;
    let upgrades = Arc::new(Upgrades::new(tunnels));
    let handed = upgrades.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let stream = maybe_h2.then(|| StreamGuard::enter(&streams));
        pipeline::handle(shared.runtime(), origin, req, stream, handed.clone())
    });
    let builder = builder.builder(protocol);
    let io = TokioIo::new(io);
    // HTTP/1.1 may upgrade (hyper-util's upgradeable connection always reads the first bytes
    // to tell HTTP/2's preface, even after ALPN said http/1.1); HTTP/2 by ALPN never does.
    let conn = match protocol {
        Protocol::Http2 => Either::Left(watcher.watch(builder.serve_connection(io, service))),
        Protocol::Detect | Protocol::Http1 => {
            Either::Right(watcher.watch(builder.serve_connection_with_upgrades(io, service)))
        }
    };
    let idle = async {
        if !maybe_h2 {
            return std::future::pending().await;
        }
        activity.idle_for(idle_timeout).await;
    };
    tokio::select! {
        served = conn => if let Err(err) = served {
            // Client resets, malformed requests (hyper has already answered 400), timeouts: the
            // connection is gone, the process goes on.
            tracing::debug!(peer = %origin.peer, error = %err, "connection ended with an error");
        },
        () = idle => {
            tracing::debug!(peer = %origin.peer, "no open stream within header_read_timeout; closing");
            return;
        }
    }
    upgrades.run().await;
}
