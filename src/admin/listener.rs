//! Accepting admin connections, bounded like the proxy's listener (`net::listener`): the admin
//! listener answers whoever reaches its address, so no client may pin its thread or its file
//! descriptors.
//!
//! - at most [`MAX_CONNECTIONS`] open at once; a slot is taken before `accept`, so further
//!   connections wait in the kernel's backlog;
//! - at most [`MAX_PER_ADDRESS`] of them from one client address: further ones are closed at
//!   accept, so that one client cannot take every slot and starve the probes and scrapers;
//! - a connection whose request head is not in within [`HEADER_READ_TIMEOUT`] is closed: one
//!   that says nothing, one that dribbles its head, and an idle keep-alive connection alike
//!   (hyper's header timer starts as soon as it waits for a head);
//! - a connection is asked to close after [`MAX_CONNECTION_AGE`] (the response in progress is
//!   finished), and dropped [`CLOSE_GRACE`] later: one that never reads its response cannot
//!   keep its slot;
//! - an accept error (out of file descriptors, …) is logged and retried after
//!   [`ACCEPT_BACKOFF`] instead of spinning.
//!
//! These are fixed, not config fields: the admin listener serves a few scrapers, probes and
//! operators, for whom the bounds are generous (documented in docs/reference.md).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::ProxyBody;
use crate::net::per_ip::{IpSlot, PerIp};
use crate::shutdown::ShutdownWatch;

/// Admin connections open at once, at most.
pub(super) const MAX_CONNECTIONS: usize = 64;
/// Admin connections open at once from one client address, at most (the proxy listener's
/// `max_connections_per_ip`, fixed here).
pub(super) const MAX_PER_ADDRESS: usize = 16;
/// The time a connection has to send a whole request head (or, idle, its next one).
pub(super) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The age after which a connection is asked to close.
pub(super) const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// How long a connection asked to close may take to finish its response.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The pause after a failed `accept`, as on the proxy's listener.
pub(super) const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The admin listener's socket and its connection slots.
#[derive(Debug)]
pub(super) struct Listener {
    tcp: TcpListener,
    /// [`MAX_CONNECTIONS`] slots; each connection holds one until it closes.
    slots: Arc<Semaphore>,
    /// Connections open per client address.
    per_address: Arc<PerIp>,
}

/// What an admin connection holds until it closes: its slot and its address's count.
#[derive(Debug)]
pub(super) struct Held {
    _slot: OwnedSemaphorePermit,
    _address: IpSlot,
}

// === impl Listener ===

impl Listener {
    pub(super) fn new(tcp: TcpListener) -> Self {
        Listener {
            tcp,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            per_address: Arc::new(PerIp::default()),
        }
    }

    /// The next connection with what it holds; `None` once `stop` fires. A connection from an
    /// address that has [`MAX_PER_ADDRESS`] open already is closed at once.
    pub(super) async fn accept(&self, stop: &mut ShutdownWatch) -> Option<(TcpStream, Held)> {
        let slot = tokio::select! {
            slot = self.slots.clone().acquire_owned() => slot.ok()?,
            () = stop.wait() => return None,
        };
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = accept_backing_off(|| self.tcp.accept()) => accepted,
                () = stop.wait() => return None,
            };
            let client = peer.ip().to_canonical();
            if let Some(address) = self.per_address.enter(client, MAX_PER_ADDRESS) {
                let held = Held {
                    _slot: slot,
                    _address: address,
                };
                return Some((tcp, held));
            }
            tracing::debug!(%client, "admin connection refused: too many open from this address");
        }
    }
}

/// Serves HTTP/1.1 on one admin connection with `service`, within the bounds of the module
/// docs; what it `_held` is released when it closes.
pub(super) async fn serve_connection<S>(tcp: TcpStream, service: S, _held: Held)
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
}

/// Calls `accept` until it succeeds, pausing [`ACCEPT_BACKOFF`] after each error: errors such
/// as EMFILE persist until a descriptor is freed, and retrying at once would spin a core.
async fn accept_backing_off<T, F, Fut>(mut accept: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    loop {
        match accept().await {
            Ok(accepted) => return accepted,
            Err(err) => {
                tracing::warn!(error = %err, "admin accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::{accept_backing_off, ACCEPT_BACKOFF};

    /// Regression (the admin listener retried a failed accept at once, spinning a core on
    /// EMFILE): after each error, accept is tried again only after the back-off.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off() {
        let calls = AtomicUsize::new(0);
        let accept = || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 1000 {
                    Err(std::io::Error::from_raw_os_error(24)) // EMFILE
                } else {
                    Ok(n)
                }
            }
        };
        let second = Duration::from_secs(1);
        let got = tokio::time::timeout(second, accept_backing_off(accept)).await;
        assert!(
            got.is_err(),
            "a thousand errors were retried within a second"
        );
        let tried = calls.load(Ordering::SeqCst);
        let at_most = (second.as_millis() / ACCEPT_BACKOFF.as_millis()) as usize + 1;
        assert!(
            (at_most - 1..=at_most).contains(&tried),
            "{tried} accept calls in 1 s, expected about {at_most}"
        );
    }
}
