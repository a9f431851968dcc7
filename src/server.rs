//! Serving one connection: HTTP/1.1 or HTTP/2 through hyper, each request handed to
//! [`crate::pipeline::handle`].
//!
//! How the protocol is chosen ([`Protocol`]): on the plain listener, hyper-util's auto builder
//! reads the first bytes and serves HTTP/2 when they are the HTTP/2 preface (prior knowledge,
//! h2c), HTTP/1.1 otherwise. On the TLS listener the client already said what it speaks through
//! ALPN, so the matching builder is used directly and nothing is sniffed.
//!
//! HTTP/2 and backpressure: a rejection (429, 503) is an ordinary response on its own stream and
//! never resets the connection or the other streams; `server.max_concurrent_streams` is the
//! `SETTINGS_MAX_CONCURRENT_STREAMS` sluice advertises; and a response body is only polled
//! (so read from the upstream) while the client's flow-control window has room, so a slow
//! reader pushes back all the way to the upstream instead of making sluice buffer.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::app::Shared;
use crate::config::ServerConfig;
use crate::pipeline;
use crate::proxy::forward::Origin;

/// The HTTP settings of one config version, shared by the connections accepted under it.
pub type HttpBuilder = Arc<Http>;

/// The same HTTP/1.1 and HTTP/2 settings, once per way of choosing the protocol.
#[derive(Debug)]
pub struct Http {
    /// Reads the first bytes and picks HTTP/2 on the preface: the plain listener, and TLS
    /// clients that offered no ALPN.
    sniff: auto::Builder<TokioExecutor>,
    /// ALPN `http/1.1`.
    http1: auto::Builder<TokioExecutor>,
    /// ALPN `h2`.
    http2: auto::Builder<TokioExecutor>,
}

/// Which protocol to serve on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 if the client starts with its preface, else HTTP/1.1.
    Detect,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

// === impl Protocol ===

impl Protocol {
    /// The protocol a TLS client chose by ALPN; without ALPN, detection as on the plain listener.
    pub fn from_alpn(alpn: Option<&[u8]>) -> Protocol {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Detect,
        }
    }
}

/// Builds the HTTP/1.1 + HTTP/2 server settings from `server:`.
pub fn http_builder(server: &ServerConfig) -> HttpBuilder {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slowloris: a client that dribbles its request head is cut after this.
        .header_read_timeout(server.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Advertised in SETTINGS; streams beyond it are refused by h2, not queued by sluice.
        .max_concurrent_streams(server.max_concurrent_streams);
    Arc::new(Http {
        http1: builder.clone().http1_only(),
        http2: builder.clone().http2_only(),
        sniff: builder,
    })
}

/// Serves HTTP on `io` until the client closes, an error occurs, or graceful shutdown has
/// finished the connection's in-flight requests.
pub async fn serve<I>(
    io: I,
    origin: Origin,
    protocol: Protocol,
    shared: Arc<Shared>,
    builder: HttpBuilder,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let runtime = shared.runtime();
        async move { Ok::<_, Infallible>(pipeline::handle(runtime, origin, req).await) }
    });
    let builder = match protocol {
        Protocol::Detect => &builder.sniff,
        Protocol::Http1 => &builder.http1,
        Protocol::Http2 => &builder.http2,
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(err) = watcher.watch(conn).await {
        // Client resets, malformed requests (hyper has already answered 400), timeouts: the
        // connection is gone, the process goes on.
        tracing::debug!(peer = %origin.peer, error = %err, "connection ended with an error");
    }
}
