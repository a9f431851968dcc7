//! Serving one connection: hyper-util's auto builder speaks HTTP/1.1 and HTTP/2 (prior knowledge
//! on the plain listener, ALPN on TLS) and hands each request to [`crate::pipeline::handle`].

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

/// The per-listener HTTP settings, built once and shared by its connections.
pub type HttpBuilder = Arc<auto::Builder<TokioExecutor>>;

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
        .max_concurrent_streams(server.max_concurrent_streams);
    Arc::new(builder)
}

/// Serves HTTP on `io` until the client closes, an error occurs, or graceful shutdown has
/// finished the connection's in-flight requests.
pub async fn serve<I>(
    io: I,
    origin: Origin,
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
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(err) = watcher.watch(conn).await {
        // Client resets, malformed requests (hyper has already answered 400), timeouts: the
        // connection is gone, the process goes on.
        tracing::debug!(peer = %origin.peer, error = %err, "connection ended with an error");
    }
}
