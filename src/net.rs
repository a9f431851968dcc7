//! The network edge: accepting connections, TLS, and serving HTTP/1.1 and HTTP/2 on them.
//!
//! A connection's path: [`listener`] accepts it (connection cap, first-byte or handshake
//! deadline) → [`tls`] terminates TLS on the HTTPS listener → [`server`] serves HTTP on it with
//! the settings of [`http`], handing each request to [`crate::pipeline`]. [`idle`] closes HTTP/2
//! connections that sit without streams; [`reset`] resets one HTTP/2 stream sluice gives up on.

pub(crate) mod http;
pub(crate) mod idle;
pub(crate) mod io;
pub(crate) mod listener;
pub(crate) mod per_ip;
pub(crate) mod reset;
pub(crate) mod server;
pub(crate) mod tls;

use std::net::IpAddr;

use ::http::HeaderName;

/// `X-Forwarded-For` (the `http` crate has no constant for it): read to learn the client behind
/// a trusted proxy, written to tell the upstream who the client is.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Where a request came from: what the connection knows about its client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    /// The socket peer (IPv4-mapped IPv6 already turned into IPv4).
    pub(crate) peer: IpAddr,
    /// True on the TLS listener.
    pub(crate) https: bool,
}
