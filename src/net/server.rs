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

use crate::body::stream::{Activity, StreamGuard};
use crate::client::Origin;
use crate::pipeline;
use crate::runtime::http_settings::{HttpBuilder, Protocol};
use crate::runtime::Shared;

/// Serves HTTP on `io` until the client closes, an error occurs, graceful shutdown has finished
/// the connection's in-flight requests, or — HTTP/2 — the connection has had no open stream
/// for `header_read_timeout`.
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
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle_timeout = shared.runtime().config.server.header_read_timeout;
    let activity = Arc::new(Activity::new());
    let streams = activity.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let stream = maybe_h2.then(|| StreamGuard::enter(&streams));
        pipeline::handle(shared.runtime(), origin, req, stream)
    });
    let conn = watcher.watch(
        builder
            .builder(protocol)
            .serve_connection(TokioIo::new(io), service),
    );
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
        }
    }
}
