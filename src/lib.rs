//! sluice: a reverse proxy that protects APIs from overload.
//!
//! A producer can send work faster than the API behind sluice can handle it. sluice sits in
//! front of that API and pushes back: token buckets answer 429 with `Retry-After` and the IETF
//! `RateLimit` fields, concurrency caps with bounded priority queues answer 503, and low-priority
//! work is shed first.
//!
//! # Layout
//! The modules follow a request through the proxy:
//!
//! ```text
//! listener ──▶ server ──▶ pipeline ──▶ router ──▶ limit::rate ──▶ limit::concurrency ──▶ proxy
//! (accept,     (hyper h1/h2  (one request:  (first     (token buckets:   (route cap, then      (upstream pool,
//!  conn cap)    per conn)     the order of   match)     429)              upstream cap: 503)    502/504)
//!                             checks)
//!                                 │ any rejection
//!                                 ▼
//!                              rescue (problem JSON, Retry-After, RateLimit fields)
//! ```
//!
//! - [`config`]: YAML → raw serde types → validated runtime types; errors with line and path.
//! - [`app`]: builds a [`app::Runtime`] from a config and runs the listeners; reload swaps it.
//! - [`listener`], [`server`]: accepting connections and serving HTTP/1.1 and HTTP/2 on them.
//! - [`tls`]: the HTTPS listener's certificate, TLS versions and ALPN (between listener and server).
//! - [`pipeline`]: the checks one request goes through, in the contract's order.
//! - [`router`], [`limit`], [`proxy`]: route matching, limits, forwarding.
//! - [`rescue`]: every response sluice makes itself.
//! - [`metrics`], [`admin`]: Prometheus metrics and the admin listener (`/metrics`, `/healthz`,
//!   `/readyz`, `/config`, `/reload`), on its own thread.
//! - [`reload`]: SIGHUP / `POST /reload` build a new runtime and publish it.
//! - [`shutdown`]: the drain signal shared by every listener.
//! - [`demo`]: the built-in sample upstream behind `sluice demo`.
//!
//! Global limits (`scope: global`) live in `limit::global`, behind the default-on `redis`
//! feature; upstream keep-alive connections in [`proxy::pool`].
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod admin;
pub mod app;
pub mod body;
mod clock;
pub mod config;
pub mod demo;
pub mod limit;
mod metrics;
mod net;
mod pipeline;
mod proxy;
mod reload;
pub mod rescue;
pub mod router;
pub mod runtime;
pub mod shutdown;
