//! Keep-alive connections to one upstream endpoint.
//!
//! A small pool built on hyper's connection-level client (`client::conn::http1`) rather than
//! hyper-util's general-purpose one: sluice knows its endpoints up front, so there is no pool
//! key to hash, no connector stack and no background checkout machinery. Idle connections are
//! kept in a LIFO stack (the most recently used first: it is the one least likely to have been
//! closed by the upstream's keep-alive timeout, and a few hot connections serve a steady load).
//!
//! A connection leaves the pool for one request and comes back when the response body has been
//! read to its end ([`Conn::release`]). A response dropped half-way takes its connection with it:
//! the rest of that body would have to be read before the connection could be reused.
//!
//! Bounds, per endpoint ([`KeepAlive`]):
//! - at most [`MAX_IDLE`] idle connections: one returned to a full stack is closed;
//! - an idle connection is closed once it has been idle for [`IDLE_TIMEOUT`]. Checkout skips
//!   (and closes) one that has expired or that the upstream closed; and because an endpoint that
//!   no request reaches never checks out, [`EndpointPool::reap`] closes expired ones and forgets
//!   closed ones without a request. It has no task of its own: the runtime's housekeeping pass
//!   (every [`HOUSEKEEPING_INTERVAL`], through [`Upstream::housekeeping`]) calls it for every
//!   endpoint, so an unused connection is closed between [`IDLE_TIMEOUT`] and [`IDLE_TIMEOUT`] +
//!   [`HOUSEKEEPING_INTERVAL`] after its last response.
//!
//! HTTP/2 (see [`connect`](super::connect) for when a connection speaks it): a connection is
//! shared by many requests at once, one stream each ([`multiplex`]). A request takes a stream
//! on a connection that has one free (below the server's `SETTINGS_MAX_CONCURRENT_STREAMS`);
//! only when none has is a new connection opened, by one request at a time (the others wait
//! for it and share it). A connection with no stream open is closed after [`IDLE_TIMEOUT`]
//! like an idle HTTP/1.1 one. `inflight` counts requests either way, so balancing and the
//! caps count requests, not connections.
//!
//! [`HOUSEKEEPING_INTERVAL`]: crate::runtime::HOUSEKEEPING_INTERVAL
//! [`Upstream::housekeeping`]: crate::proxy::Upstream::housekeeping

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::{http2, TrySendError};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub(crate) use crate::proxy::connect::ConnectError;
use crate::proxy::connect::{Connector, Handshaken, Spoken, SETTINGS_WAIT};
use crate::proxy::request_body::UpstreamBody;

mod multiplex;

pub(crate) use self::multiplex::TeTrailers;
use self::multiplex::{Shared, Stream};

/// Idle connections kept per endpoint at most (like NGINX's `keepalive` in an upstream block,
/// except that the connection being returned is the one closed, not the least recently used).
pub(crate) const MAX_IDLE: usize = 256;
/// A connection idle this long is closed rather than reused.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How many idle connections an endpoint keeps, and for how long. Not a config field: the
/// defaults ([`MAX_IDLE`], [`IDLE_TIMEOUT`]) serve every upstream; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeepAlive {
    /// An idle connection is closed once it has been idle this long.
    pub(crate) idle_timeout: Duration,
    /// Idle connections kept at most; one returned beyond this is closed.
    pub(crate) max_idle: usize,
}

/// The pool of one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointPool {
    /// `host:port`, for errors and for name resolution when it is not an IP.
    pub(crate) authority: Authority,
    /// The address, when the authority is an IP literal (resolved once, not per connection).
    addr: Option<SocketAddr>,
    connect_timeout: Duration,
    /// The idle bounds.
    keep_alive: KeepAlive,
    /// Idle connections, most recently used last. std Mutex: held for a push, a pop or a reap
    /// pass over at most `max_idle` entries, never across an await.
    idle: Mutex<Vec<Idle>>,
    /// Connections checked out now (a request each): least-request balancing reads it.
    inflight: AtomicUsize,
    /// TLS and the HTTP handshake.
    connector: Arc<Connector>,
    /// HTTP/2 connections, shared by the requests on them. std Mutex: held to pick a stream,
    /// add a connection or reap, never across an await.
    shared: Mutex<Vec<Arc<Shared>>>,
    /// Held by the request opening an HTTP/2 connection (or one that may turn out to be), so
    /// that requests arriving meanwhile wait and share it rather than each open its own.
    opening: tokio::sync::Mutex<()>,
    /// What the last connection made spoke: [`SPOKEN_NONE`], or a [`Spoken`] as u8.
    spoken: AtomicU8,
}

/// `spoken` before the first connection.
const SPOKEN_NONE: u8 = 0;

#[derive(Debug)]
struct Idle {
    sender: SendRequest<UpstreamBody>,
    /// When it was returned: its idle time counts from here.
    since: Instant,
}

/// A connection checked out for one request.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Sends the request.
    sender: Sender,
    /// Where it goes back.
    pool: Arc<EndpointPool>,
    /// True when it came from the idle stack (and may have been closed by the upstream since).
    pub reused: bool,
    /// Counts this connection in its pool's `inflight` until it is released or dropped.
    _load: Load,
}

/// One request in flight on an endpoint: counted from checkout to release or drop.
#[derive(Debug)]
struct Load(Arc<EndpointPool>);

/// A connection of either protocol, as a request holds it.
#[derive(Debug)]
enum Sender {
    /// An HTTP/1.1 connection, the request's alone.
    H1(SendRequest<UpstreamBody>),
    /// A stream of a shared HTTP/2 connection, counted in it until dropped.
    H2 {
        sender: http2::SendRequest<UpstreamBody>,
        /// Counts the request in its connection until dropped.
        _stream: Stream,
    },
}

// === impl KeepAlive ===

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive {
            idle_timeout: IDLE_TIMEOUT,
            max_idle: MAX_IDLE,
        }
    }
}

// === impl EndpointPool ===

impl EndpointPool {
    /// An empty pool for `authority` with the given idle bounds.
    pub(crate) fn new(
        authority: Authority,
        connect_timeout: Duration,
        keep_alive: KeepAlive,
        connector: Arc<Connector>,
    ) -> Self {
        let addr = authority.as_str().parse().ok();
        EndpointPool {
            authority,
            addr,
            connect_timeout,
            keep_alive,
            idle: Mutex::new(Vec::new()),
            inflight: AtomicUsize::new(0),
            connector,
            shared: Mutex::new(Vec::new()),
            opening: tokio::sync::Mutex::new(()),
            spoken: AtomicU8::new(SPOKEN_NONE),
        }
    }

    /// An empty pool for address `addr`, which `authority` (the configured name, sent as
    /// `Host` when the client sent none) resolved to.
    pub(crate) fn at(
        authority: Authority,
        addr: SocketAddr,
        connect_timeout: Duration,
        keep_alive: KeepAlive,
        connector: Arc<Connector>,
    ) -> Self {
        EndpointPool {
            addr: Some(addr),
            ..Self::new(authority, connect_timeout, keep_alive, connector)
        }
    }

    /// The protocol its last connection spoke; `None` before the first.
    pub(crate) fn spoken(&self) -> Option<Spoken> {
        match self.spoken.load(Ordering::Relaxed) {
            1 => Some(Spoken::Http1),
            2 => Some(Spoken::Http2),
            _ => None,
        }
    }

    /// Requests on this endpoint now (connections checked out).
    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// A free stream of an HTTP/2 connection, or an idle HTTP/1.1 connection, if there is one.
    pub(crate) fn idle_conn(self: &Arc<Self>) -> Option<Conn> {
        if let Some((sender, stream)) = self.take_stream() {
            return Some(self.conn(
                Sender::H2 {
                    sender,
                    _stream: stream,
                },
                true,
            ));
        }
        self.take_idle()
            .map(|sender| self.conn(Sender::H1(sender), true))
    }

    /// A new connection — or, where HTTP/2 may be spoken, a stream of the connection another
    /// request has just opened (see the module docs).
    ///
    /// # Errors
    /// [`ConnectError`] when the connection cannot be made.
    pub(crate) async fn connect(self: &Arc<Self>) -> Result<Conn, ConnectError> {
        if !self.connector.may_speak_h2() || self.spoken() == Some(Spoken::Http1) {
            return self.open().await;
        }
        let opening = self.opening.lock().await;
        // Whoever held the lock before may have opened a connection with streams to spare.
        if let Some((sender, stream)) = self.take_stream() {
            return Ok(self.conn(
                Sender::H2 {
                    sender,
                    _stream: stream,
                },
                false,
            ));
        }
        // Or found that the server speaks HTTP/1.1: then connections are opened side by side.
        if self.spoken() == Some(Spoken::Http1) {
            drop(opening);
            return self.open().await;
        }
        let opened = self.open().await;
        drop(opening);
        opened
    }

    /// Opens a new connection: TCP, then TLS and the HTTP handshake, all within
    /// `connect_timeout`.
    async fn open(self: &Arc<Self>) -> Result<Conn, ConnectError> {
        let connecting = async {
            let tcp = match self.addr {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect(self.authority.as_str()).await,
            }
            .map_err(|err| ConnectError::Io(self.authority.clone(), err))?;
            let _ = tcp.set_nodelay(true);
            self.connector.handshake(tcp, &self.authority).await
        };
        let handshaken = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ConnectError::Timeout(
                    self.authority.clone(),
                    self.connect_timeout,
                ))
            }
        };
        let sender = match handshaken {
            Handshaken::H1(sender) => {
                self.spoken.store(Spoken::Http1 as u8, Ordering::Relaxed);
                Sender::H1(sender)
            }
            Handshaken::H2(sender, max_streams) => {
                self.spoken.store(Spoken::Http2 as u8, Ordering::Relaxed);
                // Shared once the server has said how many streams it takes (see `connect`).
                max_streams.settled(SETTINGS_WAIT).await;
                let shared = Arc::new(Shared::new(sender.clone(), max_streams));
                let stream = shared.first_stream();
                let mut all = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                all.retain(|c| !c.is_closed());
                all.push(shared);
                Sender::H2 {
                    sender,
                    _stream: stream,
                }
            }
        };
        Ok(self.conn(sender, false))
    }

    fn conn(self: &Arc<Self>, sender: Sender, reused: bool) -> Conn {
        Conn {
            sender,
            pool: self.clone(),
            reused,
            _load: Load::new(self),
        }
    }

    /// A stream on the first HTTP/2 connection that has one free.
    fn take_stream(&self) -> Option<(http2::SendRequest<UpstreamBody>, Stream)> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.iter().find_map(Shared::take)
    }

    /// Pops the most recently used idle connection that is still usable.
    fn take_idle(&self) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while let Some(conn) = idle.pop() {
            if conn.sender.is_ready() && !self.expired(&conn, now) {
                return Some(conn.sender);
            }
            // Closed by the upstream, broken, or idle too long: dropping it closes it.
        }
        None
    }

    /// Returns a connection to the idle stack, or closes it (by dropping it) when it is closed
    /// already or the stack holds `max_idle`.
    pub(super) fn put(&self, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.keep_alive.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes the idle connections that have been idle for `idle_timeout` at `now`, and forgets
    /// those the upstream closed. Called by the housekeeping pass, so that idle connections
    /// expire even when no request comes to check them out.
    pub(crate) fn reap(&self, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Dropping a `SendRequest` ends its connection task, which closes the socket; the drop
        // itself only closes a channel, so doing it under the lock costs little.
        idle.retain(|conn| !conn.sender.is_closed() && !self.expired(conn, now));
        drop(idle);
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.retain(|c| !c.is_closed() && !c.idle_for(self.keep_alive.idle_timeout, now));
    }

    /// True when `conn` has been idle for `idle_timeout` at `now`.
    fn expired(&self, conn: &Idle, now: Instant) -> bool {
        now.saturating_duration_since(conn.since) >= self.keep_alive.idle_timeout
    }

    /// `n` requests in flight on this endpoint until the result is dropped (balancing tests).
    #[cfg(test)]
    pub(crate) fn test_load(self: &Arc<Self>, n: usize) -> Vec<impl Drop> {
        (0..n).map(|_| Load::new(self)).collect()
    }

    /// Idle connections now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

// === impl Load ===

impl Load {
    fn new(pool: &Arc<EndpointPool>) -> Self {
        pool.inflight.fetch_add(1, Ordering::Relaxed);
        Load(pool.clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Conn ===

impl Conn {
    /// Returns the connection to its pool: call when the response has been read whole. (An
    /// HTTP/2 stream just ends; its connection stays in the pool.)
    pub(crate) fn release(self) {
        match self.sender {
            Sender::H1(sender) => self.pool.put(sender),
            Sender::H2 { .. } => {}
        }
    }

    /// The protocol this connection speaks.
    pub(crate) fn spoken(&self) -> Spoken {
        match self.sender {
            Sender::H1(_) => Spoken::Http1,
            Sender::H2 { .. } => Spoken::Http2,
        }
    }

    /// Sends `req` (origin-form, with `Host`) in the form of the connection's protocol.
    ///
    /// # Errors
    /// What hyper says when the exchange fails.
    pub(crate) async fn send_request(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        self.try_send_request(req)
            .await
            .map_err(TrySendError::into_error)
    }

    /// As [`Self::send_request`], and a request the connection closed before writing is given
    /// back in the error.
    ///
    /// # Errors
    /// What hyper says when the exchange fails, with the request when it was not sent.
    pub(crate) async fn try_send_request(
        &mut self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>> {
        match &mut self.sender {
            Sender::H1(sender) => {
                multiplex::for_h1(&mut req);
                sender.try_send_request(req).await
            }
            Sender::H2 { sender, .. } => {
                let https = self.pool.connector.is_tls();
                multiplex::for_h2(&mut req, &self.pool.authority, https);
                sender.try_send_request(req).await
            }
        }
    }
}

#[cfg(test)]
mod tests;
