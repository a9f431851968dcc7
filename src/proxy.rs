//! Forwarding: from an admitted request to the upstream's response.
//!
//! - [`forward`] rewrites the request for the upstream (hop-by-hop headers, `X-Forwarded-*`)
//!   and the response for the client.
//! - [`upstream`] is one upstream: round-robin over its endpoints, passive health, retries,
//!   connect and response timeouts.
//! - [`pool`] keeps each endpoint's keep-alive connections.
//! - [`body`] is the streaming body types: nothing is buffered whole in either direction.

pub mod body;
pub mod forward;
pub mod pool;
pub mod upstream;

pub use self::body::{ProxyBody, UpstreamBody};
pub use self::upstream::{Upstream, UpstreamError};
