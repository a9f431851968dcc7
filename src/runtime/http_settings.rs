//! The HTTP/1.1 and HTTP/2 settings of one config version, and which protocol a connection
//! speaks.
//!
//! Built with each runtime (so a reload applies to new connections) and read by
//! [`crate::net::server`] for every connection it serves.
//!
//! How the protocol is chosen ([`Protocol`]): on the plain listener, hyper-util's auto builder
//! reads the first bytes and serves HTTP/2 when they are the HTTP/2 preface (prior knowledge,
//! h2c), HTTP/1.1 otherwise. On the TLS listener the client already said what it speaks through
//! ALPN, so the matching builder is used directly and nothing is sniffed.

use std::sync::Arc;

use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;

use crate::body::stream::StreamExecutor;
use crate::config::ServerConfig;

/// HTTP/2 flow-control window of one stream: what a client may send on it before sluice reads
/// (Envoy's default is 256 KiB too).
const H2_STREAM_WINDOW: u32 = 256 << 10;
/// HTTP/2 flow-control window of one connection, all streams together: the most unread body one
/// connection can make sluice hold. Buffered bodies beyond it are counted in
/// `max_buffered_bytes`.
const H2_CONNECTION_WINDOW: u32 = 1 << 20;

/// The HTTP settings of one config version, shared by the connections accepted under it.
pub(crate) type HttpBuilder = Arc<Http>;

/// The same HTTP/1.1 and HTTP/2 settings, once per way of choosing the protocol.
#[derive(Debug)]
pub(crate) struct Http {
    /// Reads the first bytes and picks HTTP/2 on the preface: the plain listener, and TLS
    /// clients that offered no ALPN.
    sniff: auto::Builder<StreamExecutor>,
    /// ALPN `http/1.1`.
    http1: auto::Builder<StreamExecutor>,
    /// ALPN `h2`.
    http2: auto::Builder<StreamExecutor>,
}

/// Which protocol to serve on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/2 if the client starts with its preface, else HTTP/1.1.
    Detect,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

// === impl Http ===

impl Http {
    /// The builder that serves `protocol`.
    pub(crate) fn builder(&self, protocol: Protocol) -> &auto::Builder<StreamExecutor> {
        match protocol {
            Protocol::Detect => &self.sniff,
            Protocol::Http1 => &self.http1,
            Protocol::Http2 => &self.http2,
        }
    }
}

// === impl Protocol ===

impl Protocol {
    /// The protocol a TLS client chose by ALPN; without ALPN, detection as on the plain listener.
    pub(crate) fn from_alpn(alpn: Option<&[u8]>) -> Protocol {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Detect,
        }
    }
}

/// Builds the HTTP/1.1 + HTTP/2 server settings from `server:`.
pub(crate) fn http_builder(server: &ServerConfig) -> HttpBuilder {
    let limits = &server.client;
    let head = limits.max_header_bytes.get();
    // Each HTTP/2 stream's task can be dropped to reset the stream (`send_timeout`).
    let mut builder = auto::Builder::new(StreamExecutor);
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slowloris: a client that dribbles its request head is cut after this.
        .header_read_timeout(server.header_read_timeout)
        // hyper answers 431 when a request head does not fit its read buffer.
        .max_buf_size(head)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Advertised in SETTINGS; streams beyond it are refused by h2, not queued by sluice.
        .max_concurrent_streams(server.max_concurrent_streams)
        .max_header_list_size(u32::try_from(head).unwrap_or(u32::MAX))
        // What one connection can make sluice hold of body bytes it has not read: at most
        // H2_CONNECTION_WINDOW, whatever its streams do (hyper's default is 1 MiB per stream
        // with an adaptive connection window that grows).
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .adaptive_window(false)
        // SETTINGS_ENABLE_CONNECT_PROTOCOL: WebSockets over HTTP/2 (RFC 8441), tunnelled to
        // the upstream as HTTP/1.1 upgrades (`crate::pipeline::upgrade`).
        .enable_connect_protocol();
    Arc::new(Http {
        http1: builder.clone().http1_only(),
        http2: builder.clone().http2_only(),
        sniff: builder,
    })
}
