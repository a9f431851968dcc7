//! Forwarding: from an admitted request to the upstream's response.
//!
//! - [`forward`] rewrites the request for the upstream (hop-by-hop headers, `X-Forwarded-*`)
//!   and the response for the client.
//! - [`upstream`] is one upstream: round-robin over its endpoints, passive health, retries,
//!   connect and response timeouts.
//! - [`pool`] keeps each endpoint's keep-alive connections, bounded in number and idle time.
//! - [`body`] is the body sent upstream (the response body is [`crate::body`]).

pub(crate) mod forward;
pub(crate) mod pool;
pub(crate) mod request_body;
pub(crate) mod upstream;

#[cfg(test)]
pub(crate) mod test_util;

pub(crate) use self::upstream::{Upstream, UpstreamError};
