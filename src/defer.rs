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
//! persistence settings (`appendonly`, `appendfsync`) say — see the README.

mod accept;
mod dead;
pub(crate) mod deliver;
mod scripts;
mod task;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use redis::Value;
use sha2::{Digest, Sha256};

pub(crate) use self::accept::{unknown_for, Deferred, Refused};
pub(crate) use self::dead::LIST_MAX;
pub(crate) use self::deliver::{Deliveries, Target};
pub(crate) use self::task::{accepted_json, StoredRequest, TaskStatus};
pub(crate) use self::task::{BadIdempotencyKey, IdempotencyKey, TaskId};
use crate::budget::Budget;
use crate::config::DeferConfig;
use crate::metrics::Metrics;
use crate::store::{escape_into, CallError, Store};

/// The consumer group every instance's deliverers join.
const GROUP: &str = "sluice";

/// The Redis keys of one deferring route: all under the route's hash tag (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// `sluice:defer:{<route>}:`, escaped: a task's key is this, `t:` and its id.
    prefix: Box<[u8]>,
    /// `…:s`, the stream of deliveries to make.
    stream: Box<[u8]>,
    /// `…:r`, tasks waiting for their next try.
    retry: Box<[u8]>,
    /// `…:n`, tasks not delivered: what `max_tasks` counts.
    live: Box<[u8]>,
    /// `…:sending`, `…:delivered`, `…:dead`.
    sending: Box<[u8]>,
    delivered: Box<[u8]>,
    dead: Box<[u8]>,
}

/// The deferred delivery of one route, as the request path and the admin listener use it:
/// accept a request, read a task's state, list and requeue dead tasks. Built with the route.
pub(crate) struct RouteDefer {
    /// The route's `defer:`.
    pub(crate) config: DeferConfig,
    /// Where its tasks live.
    keys: Keys,
    /// The task store's connection.
    store: Arc<Store>,
    /// `store.tasks.timeout`: the bound on one task write, all its pieces together.
    timeout: Duration,
    /// The route's name, stored with each task (the status endpoint shows it).
    route: Arc<str>,
    /// Every body held while it is written counts here (`server.max_buffered_bytes`).
    budget: Arc<Budget>,
    /// Redis' clock less this host's, in ms, as the last script's reply showed (0 until then).
    clock_offset_ms: std::sync::atomic::AtomicI64,
    /// `sluice_deferred_total{result="accepted"}` and the rest.
    pub(crate) metrics: DeferMetrics,
    /// This route's deliverers on this instance; kept across reloads (see
    /// `crate::runtime`).
    pub(crate) deliveries: Arc<Deliveries>,
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

// === impl Keys ===

impl Keys {
    /// The keys of route `route`.
    pub(crate) fn new(route: &str) -> Keys {
        let mut prefix = b"sluice:defer:{".to_vec();
        escape_into(&mut prefix, route);
        prefix.extend_from_slice(b"}:");
        let with = |suffix: &[u8]| {
            let mut key = prefix.clone();
            key.extend_from_slice(suffix);
            key.into_boxed_slice()
        };
        Keys {
            stream: with(b"s"),
            retry: with(b"r"),
            live: with(b"n"),
            sending: with(b"sending"),
            delivered: with(b"delivered"),
            dead: with(b"dead"),
            prefix: prefix.into_boxed_slice(),
        }
    }

    /// `prefix` + `kind` + the id's hex digits.
    fn of(&self, kind: &[u8], id: &TaskId) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + 34);
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(kind);
        key.extend_from_slice(id.to_string().as_bytes());
        key
    }

    /// The hash of task `id`.
    pub(crate) fn task(&self, id: &TaskId) -> Vec<u8> {
        self.of(b"t:", id)
    }

    /// The body of task `id`.
    pub(crate) fn body(&self, id: &TaskId) -> Vec<u8> {
        self.of(b"b:", id)
    }

    /// The record of the task a client's `Idempotency-Key` names: the key's SHA-256, so that
    /// any key makes a short, plain Redis key.
    pub(crate) fn idempotency(&self, key: &IdempotencyKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + 66);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"i:");
        out.extend_from_slice(hex(&Sha256::digest(key.as_str().as_bytes())).as_bytes());
        out
    }
}

/// Lowercase hex digits of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

// === impl RouteDefer ===

impl RouteDefer {
    /// The deferral of route `route` on the task store `store` (whose writes `timeout` bounds),
    /// whose deliverers are `deliveries`.
    pub(crate) fn new(
        route: &Arc<str>,
        config: DeferConfig,
        (store, timeout): (Arc<Store>, Duration),
        budget: Arc<Budget>,
        metrics: DeferMetrics,
        deliveries: Arc<Deliveries>,
    ) -> RouteDefer {
        RouteDefer {
            config,
            keys: Keys::new(route),
            store,
            timeout,
            route: route.clone(),
            budget,
            clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
            metrics,
            deliveries,
        }
    }

    /// The store this route's tasks live in.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The state of task `id` if it belongs to this route; `Ok(None)` when Redis has no such
    /// task of this route (never accepted, or expired).
    ///
    /// # Errors
    /// [`CallError`] when Redis did not answer within `store.tasks.timeout`.
    pub(crate) async fn status(&self, id: &TaskId) -> Result<Option<TaskStatus>, CallError> {
        let key = self.keys.task(id);
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&key)
            .arg("status")
            .arg("attempts")
            .arg("code")
            .arg("error");
        let fields: Vec<Option<String>> = self
            .store
            .call(
                &key,
                self.timeout,
                |conn| async move { conn.query(&cmd).await },
            )
            .await?;
        Ok(TaskStatus::from_fields(*id, &self.route, fields))
    }

    /// What `key` names among this route's tasks, for a request the route may not defer at
    /// all (`when: overflow`): `Ok(None)` when nothing, else the task (or its unknown write).
    ///
    /// # Errors
    /// [`Refused::NotStored`] when Redis cannot say: the request must not be forwarded blind,
    /// it may repeat a stored task.
    pub(crate) async fn named(&self, key: &IdempotencyKey) -> Result<Option<Deferred>, Refused> {
        let record = self.keys.idempotency(key);
        let mut invocation = scripts::NAMED.key(&record);
        invocation.arg(&*self.keys.prefix);
        let reply = self
            .store
            .call(&record, self.timeout, |conn| async move {
                conn.invoke::<Value>(&invocation).await
            })
            .await
            .map_err(|_| Refused::NotStored)?;
        match accept::Reply::parse(&reply) {
            Some(accept::Reply::Unknown) => Ok(None),
            Some(reply) => accept::answer(self, reply, None).map(Some),
            None => Err(Refused::NotStored),
        }
    }
}

impl fmt::Debug for RouteDefer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteDefer")
            .field("route", &self.route)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A duration in whole milliseconds (at least 1).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests;
