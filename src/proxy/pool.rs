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
//! [`HOUSEKEEPING_INTERVAL`]: crate::runtime::HOUSEKEEPING_INTERVAL
//! [`Upstream::housekeeping`]: crate::proxy::Upstream::housekeeping

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::proxy::request_body::UpstreamBody;

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
}

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
    pub sender: SendRequest<UpstreamBody>,
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

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// TCP connect failed (refused, unreachable, name not resolved).
    #[error("connect to {0} failed: {1}")]
    Io(Authority, #[source] std::io::Error),
    /// `connect_timeout` expired.
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(Authority, Duration),
    /// No name of the upstream resolved to an address (yet).
    #[error("no endpoint address (no name of the upstream resolved)")]
    NoAddress,
    /// The HTTP/1.1 handshake failed.
    #[error("connection to {0} failed: {1}")]
    Handshake(Authority, #[source] hyper::Error),
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
    ) -> Self {
        let addr = authority.as_str().parse().ok();
        EndpointPool {
            authority,
            addr,
            connect_timeout,
            keep_alive,
            idle: Mutex::new(Vec::new()),
            inflight: AtomicUsize::new(0),
        }
    }

    /// An empty pool for address `addr`, which `authority` (the configured name, sent as
    /// `Host` when the client sent none) resolved to.
    pub(crate) fn at(
        authority: Authority,
        addr: SocketAddr,
        connect_timeout: Duration,
        keep_alive: KeepAlive,
    ) -> Self {
        EndpointPool {
            addr: Some(addr),
            ..Self::new(authority, connect_timeout, keep_alive)
        }
    }

    /// Requests on this endpoint now (connections checked out).
    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// An idle connection ready for a request, if there is one.
    pub(crate) fn idle_conn(self: &Arc<Self>) -> Option<Conn> {
        self.take_idle().map(|sender| Conn {
            sender,
            pool: self.clone(),
            reused: true,
            _load: Load::new(self),
        })
    }

    /// Opens a new connection (not from the idle stack).
    ///
    /// # Errors
    /// [`ConnectError`] when the connection cannot be made.
    pub(crate) async fn connect(self: &Arc<Self>) -> Result<Conn, ConnectError> {
        let connecting = async {
            match self.addr {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect(self.authority.as_str()).await,
            }
        };
        let tcp = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(err)) => return Err(ConnectError::Io(self.authority.clone(), err)),
            Err(_) => {
                return Err(ConnectError::Timeout(
                    self.authority.clone(),
                    self.connect_timeout,
                ))
            }
        };
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|err| ConnectError::Handshake(self.authority.clone(), err))?;
        let authority = self.authority.clone();
        // With upgrades: a 101 hands the connection to the response (`proxy::tunnel`).
        let connection = connection.with_upgrades();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(endpoint = %authority, error = %err, "upstream connection ended with an error");
            }
        });
        Ok(Conn {
            sender,
            pool: self.clone(),
            reused: false,
            _load: Load::new(self),
        })
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
    /// Returns the connection to its pool: call when the response has been read whole.
    pub(crate) fn release(self) {
        self.pool.put(self.sender);
    }
}

#[cfg(test)]
mod tests;
