//! Accepting connections (through the accept loop of [`super::accept`]: the connection cap and
//! `max_connections_per_ip`), the first-byte deadline (plain) or the handshake deadline (TLS),
//! and one task per connection. Stops accepting on shutdown and lets open
//! connections drain.
//!
//! Both listeners, plain and TLS, hand their connections to the same [`server::serve`] and so to
//! the same pipeline: routing, rate limits and caps do not depend on the listener. They also
//! share one connection cap (`server.max_connections`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::server::TlsStream;

use super::accept::{Admitted, Gate, Held, Share};
use super::io::SendTimeout;
use super::server;
use crate::client::Origin;
use crate::limit::key::client_group;
use crate::proxy::tunnel::{Tunnels, CLOSE_WRITE};
use crate::runtime::http_settings::{HttpBuilder, Protocol};
use crate::runtime::tls::Acceptor;
use crate::runtime::{Runtime, Shared};
use crate::shutdown::ShutdownWatch;

/// A bound listener, not yet accepting.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The socket with `server.max_connections` slots and the counts per client address
    /// (`server.max_connections_per_ip`), both shared by the plain and the TLS listener.
    gate: Gate,
    /// `Some` on the TLS listener: the certificate it started with. Each connection uses the
    /// current runtime's certificate (so a reload applies to new handshakes); this one is only
    /// used if a reload removed `server.tls` (which needs a restart to take effect).
    tls: Option<Acceptor>,
}

/// The accept backlog asked of the kernel (which caps it at `net.core.somaxconn`): room for
/// bursts of new connections, and for those that wait while `max_connections` are open. The
/// standard library's 128, which tokio copies, is small for a server at the edge.
const BACKLOG: u32 = 4096;

/// Listener settings fixed at start-up (`header_read_timeout`, the deadline for a new
/// connection's first byte or whole TLS handshake, is read from the current runtime at each
/// accept, so a reload applies to new connections).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// How long open connections may drain after shutdown.
    pub shutdown_grace: Duration,
}

// === impl Listener ===

impl Listener {
    /// Binds the plain HTTP listener on `addr`.
    ///
    /// # Errors
    /// The OS error when the address cannot be bound (in use, not local, no permission).
    pub(crate) async fn bind(addr: SocketAddr, max_connections: usize) -> std::io::Result<Self> {
        let tcp = bind_tcp(addr)?;
        Ok(Listener {
            gate: Gate::new(tcp, max_connections),
            tls: None,
        })
    }

    /// Binds the TLS listener on `addr`, sharing the connection cap of `beside` (the plain
    /// listener): `server.max_connections` bounds both together.
    ///
    /// # Errors
    /// The OS error when the address cannot be bound.
    pub(crate) async fn bind_tls(
        addr: SocketAddr,
        acceptor: Acceptor,
        beside: &Listener,
    ) -> std::io::Result<Self> {
        let tcp = bind_tcp(addr)?;
        Ok(Listener {
            gate: Gate::beside(tcp, &beside.gate),
            tls: Some(acceptor),
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    ///
    /// # Errors
    /// The OS error, if the socket cannot tell.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.gate.local_addr()
    }

    /// Accepts until `shutdown` fires, then gives open connections up to `limits.shutdown_grace`
    /// to finish their requests.
    pub(crate) async fn serve(
        self,
        shared: Arc<Shared>,
        limits: Limits,
        mut shutdown: ShutdownWatch,
    ) {
        let graceful = GracefulShutdown::new();
        let tunnels = Tunnels::default();
        let refused = |peer: SocketAddr| {
            shared.runtime().metrics.refused_per_ip();
            tracing::debug!(%peer, "max_connections_per_ip reached; closing at accept");
        };
        let share = |peer: SocketAddr| client_share(&shared.runtime(), peer);
        while let Some(admitted) = self.gate.accept(&mut shutdown, share, refused).await {
            let Admitted { tcp, peer, held } = admitted;
            // HTTP settings and the certificate come from the current runtime, so a reload
            // applies to new connections and leaves established ones as they are.
            let runtime = shared.runtime();
            let tls = self.tls.as_ref().map(|started_with| {
                let current = runtime.tls.as_ref();
                current.map_or(started_with, |t| t).acceptor()
            });
            let accepted = Accepted {
                tcp,
                peer,
                _held: held,
                tls,
                builder: runtime.http.clone(),
                header_read_timeout: runtime.config.server.header_read_timeout,
                send_timeout: runtime.config.server.client.send_timeout,
                shared: shared.clone(),
                watcher: graceful.watcher(),
                tunnels: tunnels.clone(),
                stopping: shutdown.clone(),
            };
            drop(runtime);
            tokio::spawn(accepted.serve());
        }
        drop(self.gate);
        // An HTTP/2 WebSocket keeps its stream, and so its connection, open: it closes once its
        // connection carries no request any more, so that graceful shutdown can finish.
        tunnels.drain();
        if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?limits.shutdown_grace, "shutdown grace expired; closing connections with requests in flight");
        }
        // Upgraded connections last, once the requests in flight are done: a close frame
        // each (WebSocket), then closed.
        let open = tunnels.open();
        if open > 0 {
            tracing::info!(open, "closing upgraded connections");
        }
        tunnels.close();
        let _ = tokio::time::timeout(2 * CLOSE_WRITE, tunnels.closed()).await;
    }
}

/// A client's share of the connections: `max_connections_per_ip` for its address group (`None`
/// without that cap).
fn client_share(runtime: &Runtime, peer: SocketAddr) -> Option<Share> {
    let server = &runtime.config.server;
    let cap = server.client.max_connections_per_ip;
    (cap > 0).then(|| Share {
        key: client_group(peer.ip(), server.ipv6_key_prefix),
        cap,
    })
}

/// One accepted connection, with everything its task needs.
struct Accepted {
    tcp: TcpStream,
    peer: SocketAddr,
    /// Its slot of `max_connections` and its address's count, held until it closes.
    _held: Held,
    /// The TLS listener's handshake driver; `None` on the plain listener.
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: HttpBuilder,
    header_read_timeout: Duration,
    send_timeout: Duration,
    shared: Arc<Shared>,
    watcher: Watcher,
    /// The listener's upgraded connections, closed last on shutdown.
    tunnels: Tunnels,
    /// Shutdown need not wait for a connection that has not sent a request yet.
    stopping: ShutdownWatch,
}

impl Accepted {
    /// Waits for the first byte (plain) or the handshake (TLS), then serves HTTP.
    async fn serve(mut self) {
        let _ = self.tcp.set_nodelay(true);
        // An IPv4 client on a dual-stack listener arrives as ::ffff:a.b.c.d; upstreams, keys
        // and logs should see a.b.c.d.
        let client = self.peer.ip().to_canonical();
        let (shared, builder) = (self.shared, self.builder);
        let draining = server::Draining {
            watcher: self.watcher,
            tunnels: self.tunnels,
        };
        match self.tls.take() {
            None => {
                let waited = tokio::select! {
                    waited = first_byte(self.tcp, self.peer, self.header_read_timeout) => waited,
                    () = self.stopping.wait() => None,
                };
                let Some((tcp, first)) = waited else { return };
                let origin = Origin {
                    peer: client,
                    https: false,
                };
                // The HTTP/2 preface starts with `P`; anything else is HTTP/1.
                let maybe_h2 = first == b'P';
                server::serve(
                    SendTimeout::new(tcp, self.send_timeout),
                    origin,
                    Protocol::Detect,
                    maybe_h2,
                    shared,
                    builder,
                    draining,
                )
                .await;
            }
            Some(acceptor) => {
                let handshaken = tokio::select! {
                    tls = handshake(self.tcp, self.peer, acceptor, self.header_read_timeout, &shared) => tls,
                    () = self.stopping.wait() => None,
                };
                let Some(tls) = handshaken else { return };
                let protocol = Protocol::from_alpn(tls.get_ref().1.alpn_protocol());
                let origin = Origin {
                    peer: client,
                    https: true,
                };
                let maybe_h2 = protocol != Protocol::Http1;
                server::serve(
                    SendTimeout::new(tls, self.send_timeout),
                    origin,
                    protocol,
                    maybe_h2,
                    shared,
                    builder,
                    draining,
                )
                .await;
            }
        }
    }
}

/// Binds and listens on `addr` with [`BACKLOG`], as `TcpListener::bind` does otherwise
/// (`SO_REUSEADDR` on Unix, so a restart does not wait for old sockets in TIME_WAIT).
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Waits for the connection's first byte for at most `timeout`: a client that connects and
/// says nothing must not hold a connection slot. hyper's own header timeout covers the rest.
async fn first_byte(
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<(TcpStream, u8)> {
    let mut buf = [0u8; 1];
    match tokio::time::timeout(timeout, tcp.peek(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some((tcp, buf[0])),
        Ok(_) => None,
        Err(_) => {
            tracing::debug!(%peer, "no request within header_read_timeout; closing");
            None
        }
    }
}

/// Runs the TLS handshake, which must complete within `timeout` (a client that connects and
/// never finishes its ClientHello must not hold a connection slot). A failed or timed-out
/// handshake is logged at debug and counted in `sluice_tls_handshake_failures_total` — counted
/// before the socket is closed, so a client that sees the close also sees the count. A peer
/// that closes without sending a byte (a TCP health check) attempted no handshake: not counted.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    timeout: Duration,
    shared: &Shared,
) -> Option<TlsStream<TcpStream>> {
    // One deadline for the whole handshake, waiting for the first byte included.
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let failed = |error: &dyn std::fmt::Display| {
        shared.metrics.tls_handshake_failures().inc();
        tracing::debug!(%peer, %error, "TLS handshake failed; closing");
    };
    let mut first = [0u8; 1];
    tokio::select! {
        peeked = tcp.peek(&mut first) => match peeked {
            Ok(n) if n > 0 => {}
            _ => return None,
        },
        () = &mut deadline => {
            failed(&"no ClientHello within header_read_timeout");
            return None;
        }
    }
    // Fallible: on error the socket comes back, so it is closed only after being counted.
    let mut accept = acceptor.accept(tcp).into_fallible();
    tokio::select! {
        accepted = &mut accept => match accepted {
            Ok(tls) => Some(tls),
            Err((error, _tcp)) => {
                failed(&error);
                None
            }
        },
        () = &mut deadline => {
            failed(&"handshake not completed within header_read_timeout");
            None
        }
    }
}
