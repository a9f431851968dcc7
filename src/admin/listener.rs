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
//! - an accept error (out of file descriptors, …) is logged and retried after a pause instead
//!   of spinning.
//!
//! The slots, the per-address share and the pause are the proxy's accept loop
//! (`crate::net::accept`); this module gives its admin bounds and serves the connections.
//!
//! These are fixed, not config fields: the admin listener serves a few scrapers, probes and
//! operators, for whom the bounds are generous (documented in docs/reference.md).

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::body::ProxyBody;
use crate::net::accept::{Gate, Held, Share};

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

/// The admin listener's gate: [`MAX_CONNECTIONS`] slots of its own.
pub(super) fn gate(tcp: TcpListener) -> Gate {
    Gate::new(tcp, MAX_CONNECTIONS)
}

/// An admin client's share of the slots: [`MAX_PER_ADDRESS`] per address.
pub(super) fn share(peer: SocketAddr) -> Option<Share> {
    let key = peer.ip().to_canonical();
    Some(Share {
        key,
        cap: MAX_PER_ADDRESS,
    })
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
