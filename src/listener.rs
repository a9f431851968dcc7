//! Accepting connections: the connection cap, the first-byte deadline, and one task per
//! connection. Stops accepting on shutdown and lets open connections drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::app::Shared;
use crate::proxy::forward::Origin;
use crate::server;
use crate::shutdown::ShutdownWatch;

/// A bound listener, not yet accepting.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    /// Bounds open connections: beyond it, new ones wait in the kernel's accept backlog.
    connections: Arc<Semaphore>,
}

/// Listener settings that come from `server:`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The deadline for a new connection's first byte (the rest of the head is hyper's).
    pub header_read_timeout: Duration,
    /// How long open connections may drain after shutdown.
    pub shutdown_grace: Duration,
}

// === impl Listener ===

impl Listener {
    /// Binds `addr`.
    ///
    /// # Errors
    /// The OS error when the address cannot be bound (in use, not local, no permission).
    pub async fn bind(addr: SocketAddr, max_connections: usize) -> std::io::Result<Self> {
        let tcp = TcpListener::bind(addr).await?;
        Ok(Listener {
            tcp,
            connections: Arc::new(Semaphore::new(max_connections)),
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    ///
    /// # Errors
    /// The OS error, if the socket cannot tell.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts until `shutdown` fires, then gives open connections up to `limits.shutdown_grace`
    /// to finish their requests.
    pub async fn serve(self, shared: Arc<Shared>, limits: Limits, mut shutdown: ShutdownWatch) {
        let graceful = GracefulShutdown::new();
        loop {
            let permit = tokio::select! {
                permit = self.connections.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break, // the semaphore is never closed
                },
                () = shutdown.wait() => break,
            };
            let (tcp, peer) = tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.wait() => break,
            };
            let watcher = graceful.watcher();
            let shared = shared.clone();
            // HTTP settings come from the current runtime, so a reload applies to new connections.
            let builder = shared.runtime().http.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let Some(tcp) = first_byte(tcp, peer, limits.header_read_timeout).await else {
                    return;
                };
                let origin = Origin {
                    peer: peer.ip(),
                    https: false,
                };
                server::serve(tcp, origin, shared, builder, watcher).await;
            });
        }
        drop(self.tcp);
        if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?limits.shutdown_grace, "shutdown grace expired; closing connections with requests in flight");
        }
    }
}

/// Waits for the connection's first byte for at most `timeout`: a client that connects and
/// says nothing must not hold a connection slot. hyper's own header timeout covers the rest.
async fn first_byte(tcp: TcpStream, peer: SocketAddr, timeout: Duration) -> Option<TcpStream> {
    let _ = tcp.set_nodelay(true);
    let mut buf = [0u8; 1];
    match tokio::time::timeout(timeout, tcp.peek(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(tcp),
        Ok(_) => None,
        Err(_) => {
            tracing::debug!(%peer, "no request within header_read_timeout; closing");
            None
        }
    }
}
