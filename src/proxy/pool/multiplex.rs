//! HTTP/2 connections shared by many requests: how many streams each has open, the server's
//! limit, and the request's form on the wire.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderValue, HOST, TE};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Version};
use hyper::client::conn::http2::SendRequest;
use tokio::time::Instant;

use crate::proxy::connect::StreamLimit;
use crate::proxy::request_body::UpstreamBody;

/// One HTTP/2 connection of an endpoint.
#[derive(Debug)]
pub(super) struct Shared {
    /// Cloned for each request on it.
    sender: SendRequest<UpstreamBody>,
    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS`, published by the connection's task (0
    /// once it has ended).
    max_streams: Arc<StreamLimit>,
    /// Streams open now (requests from checkout until their response is read or dropped).
    streams: AtomicUsize,
    /// Since when no stream has been open. std Mutex: a store or a load, never across an await.
    idle_since: Mutex<Instant>,
}

/// One stream of a [`Shared`] connection: counted in it until dropped.
#[derive(Debug)]
pub(crate) struct Stream(Arc<Shared>);

/// Marks a request whose client sent `TE: trailers` (a gRPC client does): forwarded to an
/// HTTP/2 upstream, where `TE` may carry nothing else. Any other `TE` is removed, like every
/// hop-by-hop field.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TeTrailers;

// === impl Shared ===

impl Shared {
    pub(super) fn new(sender: SendRequest<UpstreamBody>, max_streams: Arc<StreamLimit>) -> Self {
        Shared {
            sender,
            max_streams,
            streams: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    /// A stream, when fewer than the server's limit are open and the connection is not closed.
    pub(super) fn take(self: &Arc<Self>) -> Option<(SendRequest<UpstreamBody>, Stream)> {
        if self.sender.is_closed() {
            return None;
        }
        let max = self.max_streams.get();
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some((self.sender.clone(), Stream(self.clone())))
    }

    /// The stream of the request that opened the connection, whatever the limit says (a
    /// server may advertise 0 for a while; hyper then holds the request until it may send).
    pub(super) fn first_stream(self: &Arc<Self>) -> Stream {
        self.streams.fetch_add(1, Ordering::AcqRel);
        Stream(self.clone())
    }

    /// True once the connection has ended.
    pub(super) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// True when no stream has been open for `timeout` at `now`.
    pub(super) fn idle_for(&self, timeout: Duration, now: Instant) -> bool {
        if self.streams.load(Ordering::Acquire) > 0 {
            return false;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        now.saturating_duration_since(since) >= timeout
    }
}

// === impl Stream ===

impl Drop for Stream {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
    }
}

/// `req` (origin-form, `Host`) as HTTP/2 sends it: the authority from `Host` (else the
/// endpoint's), the scheme of the connection, no `Host` field; `TE: trailers` when the client
/// sent it.
pub(super) fn for_h2(req: &mut Request<UpstreamBody>, endpoint: &Authority, https: bool) {
    let authority = req
        .headers_mut()
        .remove(HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        .or_else(|| req.uri().authority().cloned())
        .unwrap_or_else(|| endpoint.clone());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(if https { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    // Scheme, authority and path are all set: the parts make a URI.
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
    if req.extensions().get::<TeTrailers>().is_some() {
        req.headers_mut()
            .insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// `req` as HTTP/1.1 sends it: origin-form with `Host` (a request given back by an HTTP/2
/// connection that closed before sending it is in HTTP/2's form).
pub(super) fn for_h1(req: &mut Request<UpstreamBody>) {
    if req.version() != Version::HTTP_2 {
        return;
    }
    if let Some(authority) = req.uri().authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(HOST, host);
        }
    }
    let path = req.uri().path_and_query().cloned();
    *req.uri_mut() = path.map_or_else(|| Uri::from_static("/"), Uri::from);
    *req.version_mut() = Version::HTTP_11;
    req.headers_mut().remove(TE);
}
