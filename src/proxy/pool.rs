//! Keep-alive connections to one upstream endpoint.
//!
//! A small pool built on hyper's connection-level client (`client::conn::http1`) rather than
//! hyper-util's general-purpose one: sluice knows its endpoints up front, so there is no pool
//! key to hash, no connector stack and no background checkout machinery. Idle connections are
//! kept in a LIFO stack (the most recently used first: it is the one least likely to have been
//! closed by the upstream's keep-alive timeout, and a few hot connections serve a steady load),
//! bounded by [`MAX_IDLE`] and dropped after [`IDLE_TIMEOUT`].
//!
//! A connection leaves the pool for one request and comes back when the response body has been
//! read to its end ([`Conn::release`]). A response dropped half-way takes its connection with it:
//! the rest of that body would have to be read before the connection could be reused.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::proxy::body::UpstreamBody;

/// Idle connections kept per endpoint at most (NGINX's `keepalive` in an upstream block).
pub const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The pool of one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    /// `host:port`, for errors and for name resolution when it is not an IP.
    pub authority: Authority,
    /// The address, when the authority is an IP literal (resolved once, not per connection).
    addr: Option<SocketAddr>,
    connect_timeout: Duration,
    /// Idle connections, most recently used last. std Mutex: held for a push or a pop, never
    /// across an await.
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

/// A connection checked out for one request.
#[derive(Debug)]
pub struct Conn {
    /// Sends the request.
    pub sender: SendRequest<UpstreamBody>,
    /// Where it goes back.
    pool: Arc<EndpointPool>,
    /// True when it came from the idle stack (and may have been closed by the upstream since).
    pub reused: bool,
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed (refused, unreachable, name not resolved).
    #[error("connect to {0} failed: {1}")]
    Io(Authority, #[source] std::io::Error),
    /// `connect_timeout` expired.
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(Authority, Duration),
    /// The HTTP/1.1 handshake failed.
    #[error("connection to {0} failed: {1}")]
    Handshake(Authority, #[source] hyper::Error),
}

// === impl EndpointPool ===

impl EndpointPool {
    /// An empty pool for `authority`.
    pub fn new(authority: Authority, connect_timeout: Duration) -> Self {
        let addr = authority.as_str().parse().ok();
        EndpointPool {
            authority,
            addr,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection ready for a request, or a new one.
    ///
    /// # Errors
    /// [`ConnectError`] when a new connection cannot be made.
    pub async fn checkout(self: &Arc<Self>) -> Result<Conn, ConnectError> {
        if let Some(sender) = self.take_idle() {
            return Ok(Conn {
                sender,
                pool: self.clone(),
                reused: true,
            });
        }
        self.connect().await
    }

    /// Opens a new connection (not from the idle stack).
    ///
    /// # Errors
    /// [`ConnectError`] when the connection cannot be made.
    pub async fn connect(self: &Arc<Self>) -> Result<Conn, ConnectError> {
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
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(endpoint = %authority, error = %err, "upstream connection ended with an error");
            }
        });
        Ok(Conn {
            sender,
            pool: self.clone(),
            reused: false,
        })
    }

    /// Pops the most recently used idle connection that is still usable.
    fn take_idle(&self) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while let Some(conn) = idle.pop() {
            if conn.sender.is_ready() && now.saturating_duration_since(conn.since) < IDLE_TIMEOUT {
                return Some(conn.sender);
            }
            // Closed by the upstream, broken, or idle too long: dropping it closes it.
        }
        None
    }

    /// Returns a connection to the idle stack, or closes it (by dropping it) when it is closed
    /// already or the stack is full.
    pub(super) fn put(&self, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Idle connections now (for tests).
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

// === impl Conn ===

impl Conn {
    /// Returns the connection to its pool: call when the response has been read whole.
    pub fn release(self) {
        self.pool.put(self.sender);
    }
}
