//! sluice's integration tests, one test binary: each module is a file of tests, each starting
//! the real server (in this process, or the `sluice` binary as a child) against upstreams,
//! Redis servers and clients of its own, on free loopback ports; [`support`] is what they share.
//!
//! The tests run in parallel (two at a time on a 2-core machine, as cargo runs them). The few
//! that measure rates or latencies against the clock, and those that load the machine hard
//! enough to disturb such a measurement, take [`support::alone`] first: they run one at a time,
//! beside light tests only.
//!
//! One file's tests: `cargo test --test it deferred::`; one test: `cargo test --test it
//! deferred::bodies_over_max_body -- --exact`.

mod support;

mod adaptive;
mod admin;
mod admin_access;
mod canonical;
mod cli;
mod concurrency;
mod cost;
mod dashboard;
#[cfg(feature = "redis")]
mod deferred;
#[cfg(feature = "redis")]
mod deferred_integrity;
#[cfg(feature = "redis")]
mod deferred_outage;
mod deploy;
mod docs;
mod edge;
mod examples;
mod fleet;
mod grpc;
mod grpc_client;
mod h1_differential;
mod proxy;
mod rate_limit;
#[cfg(feature = "redis")]
mod redis;
mod retry_after;
#[cfg(feature = "redis")]
mod scale_out;
mod sighup;
mod tls;
mod upstream_h2;
mod upstream_tls;
mod websocket;
