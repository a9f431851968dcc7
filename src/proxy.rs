//! Forwarding: from an admitted request to the upstream's response.
//!
//! - [`forward`] rewrites the request for the upstream (hop-by-hop headers, `X-Forwarded-*`)
//!   and the response for the client.
//! - [`upstream`] holds the pooled keep-alive client of one upstream: round-robin over its
//!   endpoints, passive health, connect and response timeouts.
//! - [`body`] is the streaming body types: nothing is buffered whole in either direction.

pub mod body;
pub mod forward;
pub mod upstream;

pub use self::body::{ProxyBody, UpstreamBody};
pub use self::upstream::{Upstream, UpstreamError};
