//! Forwarding: from an admitted request to the upstream's response.
//!
//! - [`forward`] rewrites the request for the upstream (hop-by-hop headers, `X-Forwarded-*`)
//!   and the response for the client.
//! - [`upstream`] is one upstream: passive health, retries, connect and response timeouts.
//! - [`fleet`] is the endpoints of an upstream: the addresses its names resolve to, re-resolved
//!   while it runs, and the balancing among them.
//! - [`pool`] keeps each endpoint's keep-alive connections, bounded in number and idle time;
//!   HTTP/2 connections are shared by the requests on them.
//! - [`connect`] makes a connection speak HTTP: TLS for `https://`, HTTP/1.1 or HTTP/2.
//! - [`body`] is the body sent upstream (the response body is [`crate::body`]).
//! - [`tunnel`] relays an upgraded connection (WebSocket) after the upstream's 101.

pub(crate) mod connect;
pub(crate) mod fleet;
pub(crate) mod forward;
pub(crate) mod pool;
pub(crate) mod request_body;
pub(crate) mod tunnel;
pub(crate) mod upstream;

#[cfg(test)]
pub(crate) mod test_util;

pub(crate) use self::upstream::{Upstream, UpstreamError};
