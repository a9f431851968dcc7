//! Who sent a request: what the connection knows of its client ([`Origin`]), and the header a
//! trusted proxy names the client in ([`X_FORWARDED_FOR`]). Plain data, made by the listener
//! (`crate::net`) and read by every stage after it: the limits key on the client, forwarding
//! tells the upstream who it is, deferral stores it.

use std::net::IpAddr;

use http::HeaderName;

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
