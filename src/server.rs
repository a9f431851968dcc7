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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

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

/// Serves HTTP on `io` until the client closes, an error occurs, graceful shutdown has finished
/// the connection's in-flight requests, or — HTTP/2 — the connection has had no open stream
/// for `header_read_timeout`.
///
/// `maybe_h2`: the connection may speak HTTP/2 (ALPN said so, or the first byte is the
/// preface's `P`). HTTP/1 connections are cut by hyper's header timeout when idle; HTTP/2 has no
/// such timer, so a watchdog closes connections that sit without streams (NGINX's
/// `keepalive_timeout` for HTTP/2), including ones that sent the preface and nothing else.
pub async fn serve<I>(
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
        let runtime = shared.runtime();
        let guard = maybe_h2.then(|| StreamGuard::enter(&streams));
        async move {
            let res = pipeline::handle(runtime, origin, req).await;
            Ok::<_, Infallible>(match guard {
                Some(guard) => res.map(|body| body.with_stream_guard(guard)),
                None => res,
            })
        }
    });
    let builder = match protocol {
        Protocol::Detect => &builder.sniff,
        Protocol::Http1 => &builder.http1,
        Protocol::Http2 => &builder.http2,
    };
    let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
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

/// Open streams of one connection and when the last one ended.
#[derive(Debug)]
struct Activity {
    open: AtomicUsize,
    /// Milliseconds since `epoch` when a stream last ended (or the connection started).
    last_ms: AtomicU64,
    epoch: Instant,
}

/// Counts an HTTP/2 stream as open until dropped (it rides in the response body).
#[derive(Debug)]
pub struct StreamGuard(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Activity {
            open: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Resolves once no stream has been open for `timeout`. Checks a few times per timeout:
    /// a timer per connection, not per stream.
    async fn idle_for(&self, timeout: Duration) {
        let timeout_ms = timeout.as_millis() as u64;
        let step = (timeout / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(step).await;
            let idle = self.open.load(Ordering::Acquire) == 0
                && self
                    .now_ms()
                    .saturating_sub(self.last_ms.load(Ordering::Acquire))
                    >= timeout_ms;
            if idle {
                return;
            }
        }
    }
}

impl StreamGuard {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(activity.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}
