//! Deferred delivery: a route with `defer:` answers `202 Accepted` for work it stores in Redis,
//! and every instance delivers that work to the upstream when the upstream has idle capacity.
//!
//! Backpressure has two answers. The caps and limits give the first (slow down: 429, 503). This
//! module gives the second, the task queue's: take the work now, persist it, deliver it at the
//! consumer's pace, retry what fails, lose nothing and double nothing. It sits in
//! `crate::pipeline` after the body stage: `when: always` defers every request of the route
//! before the caps; `when: overflow` defers exactly the requests the caps refused
//! (`queue-full`, `queue-timeout`, `shed`).
//!
//! # Where tasks live
//!
//! In the task store (`store.tasks`, by default `store.redis`'s server): its own connections,
//! so that writing a task never delays a global limit's call, and a bound of its own
//! (`store.tasks.timeout`, 2 s) on the whole write of one task. Every key of a route carries the
//! route's name as its hash tag, `sluice:defer:{<route>}:…` (the name `%`/`:`-escaped as in
//! `crate::limit::global`), so that the scripts, which touch several of them, run on one node
//! of a Redis Cluster:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `…:t:<id>` | hash | the task: the request (`method`, `target`, `headers`, `client`, the client's `ikey`, the body's `size`) and its state (`status`, `attempts`, `tries`, `code`, `error`, `accepted`, `deadline`); expires at `deadline` (accepted + `ttl`) |
//! | `…:b:<id>` | hash | the task's body in pieces of 64 KiB (fields `0`, `1`, …), until it is delivered (or its deadline) |
//! | `…:i:<sha256 of the client's key>` | string | the id of the task an `Idempotency-Key` names, until that task's deadline |
//! | `…:s` | stream | one entry `id <id>` per delivery to make; consumer group `sluice` |
//! | `…:r` | sorted set | tasks waiting for their next try, scored by when |
//! | `…:n` | sorted set | every task not delivered (queued, waiting, delivering, dead), scored by deadline: what `max_tasks` counts |
//! | `…:sending`, `…:delivered`, `…:dead` | sorted sets | task ids by state, scored by deadline: the `sluice_deferred_tasks` gauge counts them |
//!
//! **Accepting** ([`accept`]) writes the task before the 202, so a 202 is sent if and only if
//! the task is stored. A body of up to 64 KiB goes in one script with the rest; a longer one in
//! pieces of 64 KiB under a record in state `writing` that expires unless the last script
//! commits it — no command sluice sends runs long, whatever the body. When the outcome of the
//! write is unknown (the commit's reply lost or late), the 503 names the task, whose status
//! then tells. A client's `Idempotency-Key` names one task of the route until that task's `ttl`
//! ends: a repeat is answered with that task (`202`, its state), never stored twice.
//!
//! **Delivering** is [`deliver`]'s: per route, each instance runs a pool of deliverers, consumers
//! of the group. The entry stays in the group's pending list until its outcome is recorded; a
//! deliverer refreshes its claim every second, and an entry nobody refreshed for the upstream's
//! `timeout` + 5 s is taken over by another deliverer (its instance presumably died). So every
//! accepted task is delivered at least once while Redis keeps it, and twice only after an
//! instance died mid-delivery: the `Idempotency-Key` the delivery carries (the client's, or the
//! task's id) lets the upstream drop the second.
//!
//! **Memory** is bounded on both sides. In Redis: `max_tasks` tasks per route not delivered, each
//! body at most `max_body`; a delivered task keeps only its state. In sluice: every body held in
//! memory (while it is written, while it is delivered) counts in `server.max_buffered_bytes`.
//!
//! Durability is Redis': a 202 means the task is in Redis' memory, and on disk as far as its
//! persistence settings (`appendonly`, `appendfsync`) say — see docs/deferred.md.
//!
//! # Layout, and builds without Redis
//!
//! `task` (a task's id, stored request and states) and the answers of a write ([`Deferred`],
//! [`Refused`]) are plain data; [`DeliveryTarget`] is what deliverers need of their route. Everything
//! that talks to Redis — `route` ([`RouteDefer`]), `accept`, `deliver`, `dead`, `scripts` — is
//! behind the cargo feature `redis`; without it, `absent` has the same names for types with no
//! value (config validation refuses `defer` in such a build), so the pipeline, the runtime and
//! the admin listener compile unchanged. Only this file, `crate::store` and
//! `crate::limit::global` name the feature.

// Without Redis, the plain data of tasks is built by nothing and read by nothing.
#![cfg_attr(not(feature = "redis"), allow(dead_code, unused_imports))]

#[cfg(not(feature = "redis"))]
mod absent;
#[cfg(feature = "redis")]
mod accept;
#[cfg(feature = "redis")]
mod dead;
#[cfg(feature = "redis")]
mod deliver;
#[cfg(feature = "redis")]
mod route;
#[cfg(feature = "redis")]
mod scripts;
mod target;
mod task;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

#[cfg(not(feature = "redis"))]
pub(crate) use self::absent::{Deliveries, RouteDefer};
#[cfg(feature = "redis")]
pub(crate) use self::deliver::Deliveries;
#[cfg(feature = "redis")]
pub(crate) use self::route::RouteDefer;
#[cfg(feature = "redis")]
use self::route::{hex, millis, Keys, GROUP};
pub(crate) use self::target::DeliveryTarget;
pub(crate) use self::task::{accepted_json, Counts, Deferred, Refused, StoredRequest, TaskStatus};
pub(crate) use self::task::{BadIdempotencyKey, IdempotencyKey, TaskId};
use crate::metrics::Metrics;

/// The deliverers of every deferring route on this instance, by route name: started, handed each
/// new runtime's route and stopped by the app (`crate::supervise`), read for the gauges. Not
/// part of a runtime: they run, and outlive the runtime that first needed them.
#[derive(Debug, Default)]
pub(crate) struct Deliverers {
    /// std Mutex: taken to reconcile (a reload) and to read a count, never across an `.await`.
    by_route: std::sync::Mutex<HashMap<Arc<str>, Arc<Deliveries>>>,
}

impl Deliverers {
    /// The deliverers of every route, taken out to be reconciled with a new runtime.
    pub(crate) fn take(&self) -> HashMap<Arc<str>, Arc<Deliveries>> {
        std::mem::take(&mut *self.by_route.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts the reconciled deliverers back.
    pub(crate) fn put(&self, by_route: HashMap<Arc<str>, Arc<Deliveries>>) {
        *self.by_route.lock().unwrap_or_else(|e| e.into_inner()) = by_route;
    }

    /// The fleet's figures of route `route`'s tasks as its deliverers last read them.
    pub(crate) fn counts(&self, route: &str) -> Option<Counts> {
        let by_route = self.by_route.lock().unwrap_or_else(|e| e.into_inner());
        by_route.get(route).and_then(|d| d.counts())
    }

    /// Stops every route's deliverers (shutdown): no new task is taken, tasks waiting for a slot
    /// go back to their stream, deliveries under way finish — within `grace` in all.
    pub(crate) async fn stop_all(&self, grace: Duration) {
        let all: Vec<_> = self.take().into_values().collect();
        let stopping = async {
            for deliveries in &all {
                deliveries.stop(grace).await;
            }
        };
        let _ = tokio::time::timeout(grace, stopping).await;
    }
}

/// Most dead tasks one listing shows (the contract's 1000).
pub(crate) const LIST_MAX: usize = 1000;

/// How long past the write's timeout a script may still store the task (it waited in a queue
/// on the way); later, it stores nothing. So the outcome of a write is known, everywhere, once
/// the timeout and this have passed since it began: the 503 of an unknown outcome says so
/// with its `Retry-After`, and a `writing` record expires then.
pub(crate) const WINDOW_MARGIN: Duration = Duration::from_secs(5);

/// How long after a write to a task store of timeout `timeout` began its outcome may still be
/// unknown: what the 503 of an unknown outcome asks the client to wait before its lookup.
pub(crate) fn unknown_for(timeout: Duration) -> Duration {
    timeout + WINDOW_MARGIN
}

/// Per-route handles of the deferred-delivery metrics, created with the route.
#[derive(Clone, Debug)]
pub(crate) struct DeferMetrics {
    /// `sluice_deferred_total{result="accepted"}`.
    pub(crate) accepted: Counter,
    /// `{result="duplicate"}`: a repeated `Idempotency-Key` answered with its task.
    pub(crate) duplicate: Counter,
    /// `{result="delivered"}`.
    pub(crate) delivered: Counter,
    /// `{result="retried"}`.
    pub(crate) retried: Counter,
    /// `{result="dead"}`.
    pub(crate) dead: Counter,
    /// `{result="requeued"}`: dead tasks put back by `POST /tasks/requeue`.
    pub(crate) requeued: Counter,
    /// `sluice_deferred_delivery_seconds`: from acceptance to delivery.
    pub(crate) delivery: Histogram,
}

// === impl DeferMetrics ===

impl DeferMetrics {
    /// The handles of route `route`'s series in `metrics`.
    pub(crate) fn new(metrics: &Metrics, route: &Arc<str>) -> DeferMetrics {
        let counter = |result| metrics.deferred_total(route, result);
        DeferMetrics {
            accepted: counter("accepted"),
            duplicate: counter("duplicate"),
            delivered: counter("delivered"),
            retried: counter("retried"),
            dead: counter("dead"),
            requeued: counter("requeued"),
            delivery: metrics.deferred_delivery(route),
        }
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests;
