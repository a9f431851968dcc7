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
//! net::listener ──▶ net::server ──▶ pipeline::handle
//! (accept, conn      (hyper h1/h2,    canonical ──▶ route ──▶ rate ──▶ caps ──▶ forward ──▶ proxy::upstream
//!  cap, TLS by        one task per    (path, host)  (router)  (limit::  (limit::   (proxy::    (pool, 502/504)
//!  net::tls)          connection)                             rate,     concur-    forward)
//!                                                             global)   rency)
//!                                        │ Err(Rejection) from any stage
//!                                        ▼
//!                                     rescue (every response sluice makes itself)
//! ```
//!
//! - [`config`]: YAML → raw serde types → validated runtime types; errors with line and path.
//! - [`runtime`]: the data model of one config version (routes, limits, caps, pools, rendered
//!   problems), built from a config and swapped atomically on reload. Imports none of the
//!   modules that run things.
//! - [`app`]: binds the listeners and runs them, the admin thread, reload on SIGHUP and the
//!   housekeeping of key tables and pools.
//! - `net`: accepting connections (`listener`), TLS (`tls`), serving HTTP/1.1 and HTTP/2
//!   (`server`, with the settings of `http` and the HTTP/2 idle watchdog `idle`).
//! - `pipeline`: the stages one request goes through, in the contract's order; the first,
//!   `canonical`, puts the path and host in the one form routes match and upstreams receive
//!   (the pure functions are [`canonical`]).
//! - [`router`], [`limit`], `proxy`: route matching, limits, forwarding.
//! - [`rescue`]: every response sluice makes itself; [`body`]: the response body type.
//! - `metrics`, `admin`: Prometheus metrics and the admin listener (the dashboard `/` and its
//!   `/stats`, `/metrics`, `/healthz`, `/readyz`, `/config`, `/reload`), on its own thread.
//! - `reload`: SIGHUP / `POST /reload` build a new runtime and publish it.
//! - [`shutdown`]: the drain signal shared by every listener; `clock`: atomic timestamps.
//! - [`demo`]: the built-in sample upstream behind `sluice demo`.
//!
//! Dependencies point down this list and never back: `runtime` knows the limits, pools and
//! rendered problems but not the listeners, the pipeline or the app that use it.
//!
//! Global limits (`scope: global`) live in [`limit::global`], deferred delivery (`defer:`
//! routes, `GET /_sluice/tasks/<id>`) in `defer`, both behind the default-on `redis` feature;
//! their connection to Redis is `store`'s.

mod admin;
pub mod app;
pub mod body;
mod budget;
pub mod canonical;
mod client;
mod clock;
pub mod config;
mod defer;
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
mod store;
mod supervise;
