//! The network edge: accepting connections, TLS, and serving HTTP/1.1 and HTTP/2 on them.
//!
//! A connection's path: [`listener`] accepts it (connection cap, first-byte or handshake
//! deadline) → [`tls`] terminates TLS on the HTTPS listener → [`server`] serves HTTP on it with
//! the runtime's HTTP settings (`crate::runtime::http_settings`), handing each request to
//! [`crate::pipeline`]; it closes HTTP/2 connections that sit without streams (what a response
//! body holds for its stream: `crate::body::stream`).

pub(crate) mod accept;
pub(crate) mod io;
pub(crate) mod listener;
pub(crate) mod per_ip;
pub(crate) mod server;
