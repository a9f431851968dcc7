//! sluice: a reverse proxy that protects APIs from overload.
//!
//! A producer can send work faster than the API behind sluice can handle it. sluice sits in
//! front of that API and pushes back: token buckets answer 429 with `Retry-After` and the IETF
//! `RateLimit` fields, concurrency caps with bounded priority queues answer 503, and low-priority
//! work is shed first.
//!
//! # Layout
//! A request's path through the modules:
//!
//! ```text
//! net::listener ──▶ net::server ──▶ pipeline::handle ──▶ RequestContext::finish
//! (accept, conn      (hyper h1/h2,    canonical ──▶ route ──▶ rate ──▶ body ──▶ caps ──▶ forward ──▶ proxy::upstream
//!  cap, TLS by        one task per    (path, host)  (router)  (limit)   (read)   (limit)   (proxy)     (pool, 502/504)
//!  runtime::tls)      connection)                                        └──▶ defer (202, Redis)
//!                                        │ Answer::Rejected from any stage
//!                                        ▼
//!                                     rescue (every response sluice makes itself)
//! ```
//!
//! # Layers
//! Each module may use only the modules of the layers below its own (and, within a layer, the
//! ones listed before it); `layering`'s test reads every `crate::` path of the sources and fails
//! on one that points up or sideways-forward. Bottom to top:
//!
//! 1. **Data and pure functions**: [`canonical`] (path and host in canonical form), [`h1`] (our
//!    HTTP/1.1 codec: heads parsed in place, framing, bodies, head writers), [`config`]
//!    (YAML → validated types, certificate bytes included), `client` (who sent a request),
//!    `clock`, `budget` (the buffering budget), [`shutdown`] (the drain signal), `metrics` (the
//!    registry and its families).
//! 2. **Decisions and their state**: `store` (the Redis connections), [`router`], [`limit`]
//!    (token buckets, key tables, caps and their queues, global limits on `store`).
//! 3. **Talking to upstreams and making responses**: `proxy` (pools, exchanges, the request
//!    body), [`body`] (the response body), `defer` (deferred delivery on `store`), [`rescue`]
//!    (every response sluice makes itself).
//! 4. **One config version's built form**: [`runtime`] — routes, limits, caps, pools, rendered
//!    problems, TLS and HTTP settings; data that runs nothing.
//! 5. **One request, and what runs beside**: `pipeline` (the stages of one request, with one
//!    request context), `supervise` (the deliverers the app runs, reconciled with each runtime).
//! 6. **Serving**: `net` (listeners, connections, the HTTP/2 idle watchdog).
//! 7. **Supervision**: `reload`, `admin` (its own listener and thread), [`demo`] (the sample
//!    upstream of `sluice demo`), [`app`] (binds, runs, signals, housekeeping).
//!
//! The cargo feature `redis` (default on) is named only at one seam: `store`, `defer` and
//! `limit::global` have stand-ins without value in a build without it, and `config` refuses
//! what would need them.

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
// Public for its differential test, benchmark and fuzz targets.
pub mod h1;
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

#[cfg(test)]
mod layering;
