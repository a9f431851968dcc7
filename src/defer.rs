//! Deferred delivery: a route with `defer:` answers `202 Accepted` for work it stores in Redis,
//! and every instance delivers that work to the upstream when the upstream has idle capacity.
//!
//! Backpressure has two answers. The caps and limits give the first (slow down: 429, 503). This
//! module gives the second, the task queue's: take the work now, persist it, deliver it at the
//! consumer's pace, retry what fails, lose nothing. It sits in `crate::pipeline` after the body
//! stage: `when: always` defers every request of the route before the caps; `when: overflow`
//! defers exactly the requests the caps refused (`queue-full`, `queue-timeout`, `shed`).
//!
//! # Redis layout
//!
//! Every key of a route carries the route's name as its hash tag,
//! `sluice:defer:{<route>}:…` (the name `%`/`:`-escaped as in `crate::limit::global`), so that
//! the scripts below, which touch several of them, run on one node of a Redis Cluster:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `…:t:<id>` | hash | the task: the request (`method`, `target`, `headers`, `body`, `client`) while it waits, and its state (`status`, `attempts`, `code`, `error`, `accepted`, `deadline`); expires at `deadline` (accepted + `ttl`), or an hour after delivery when that is sooner |
//! | `…:s` | stream | one entry `id <id>` per delivery to make; consumer group `sluice` |
//! | `…:r` | sorted set | tasks waiting to be retried, scored by when |
//! | `…:sending`, `…:delivered`, `…:dead` | sorted sets | task ids by state, scored by deadline: the `sluice_deferred_tasks` gauge counts them |
//!
//! **Accepting** is one Lua script ([`scripts::ACCEPT`]): the task hash (with its expiry) and the
//! stream entry are written together, atomically, before the 202 is sent; the stream is trimmed
//! at the same time (`XADD … MINID ~ <now − ttl>`). If the script fails or does not answer within
//! `store.redis.timeout`, the client gets 503 `store-unavailable`: a 202 is only ever sent for a
//! task Redis has taken. The call goes over the store's shared connection ([`crate::store`]),
//! like a global limit's, with its breaker. Ids are 128 random bits from the OS, in hex: only the
//! client that got the 202 can name its task.
//!
//! **Delivering** is [`deliver`]'s: per route, each instance runs a pool of deliverers, a consumer
//! of the group, with connections of its own (one for its blocking `XREADGROUP`, one for
//! everything else). Redis' consumer group hands each entry to one consumer; the entry stays in
//! the group's pending list until acknowledged, which happens only after the upstream answered
//! (or the task ended otherwise). A deliverer that holds an entry refreshes its claim every
//! second; an entry nobody refreshed for the upstream's `timeout` + 5 s is taken over by another
//! deliverer (`XAUTOCLAIM`), whose instance presumably died. So every accepted task is delivered
//! at least once while Redis keeps it, and twice only after an instance died mid-delivery (or
//! stalled for that long): the `Idempotency-Key: <id>` header lets the upstream drop the second.
//!
//! **Memory** is bounded on both sides. In Redis: a task's request lives in its hash while it
//! waits and is removed when the task ends; the hash (then a few small fields) expires at the
//! task's deadline, or [`deliver::DELIVERED_KEEP`] after its delivery; delivered stream entries are deleted (`XDEL`), older ones trimmed; the state
//! sets are trimmed by deadline. In sluice: at most [`deliver::MAX_DELIVERERS`] tasks per route
//! are held by an instance at once, each body at most `max_body`.
//!
//! Durability is Redis': a 202 means the task is in Redis' memory, and on disk as far as its
//! persistence settings (`appendonly`, `appendfsync`) say — see the README.

pub(crate) mod deliver;
mod scripts;
mod task;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use redis::Value;

pub(crate) use self::deliver::{Deliveries, Target};
pub(crate) use self::task::TaskId;
pub(crate) use self::task::{accepted_json, StoredRequest, TaskStatus};
use crate::config::DeferConfig;
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
    /// `…:r`, tasks waiting for a retry.
    retry: Box<[u8]>,
    /// `…:sending`, `…:delivered`, `…:dead`.
    sending: Box<[u8]>,
    delivered: Box<[u8]>,
    dead: Box<[u8]>,
}

/// The deferred delivery of one route, as the request path uses it: accept a request, and the
/// handles of the metrics that count it. Built with the route.
pub(crate) struct RouteDefer {
    /// The route's `defer:`.
    pub(crate) config: DeferConfig,
    /// Where its tasks live.
    keys: Keys,
    /// The shared connection: accepting is one short call on it.
    store: Arc<Store>,
    /// `store.redis.timeout`: no request waits longer for Redis.
    timeout: Duration,
    /// The route's name, stored with each task (the status endpoint shows it).
    route: Arc<str>,
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
    /// `{result="delivered"}`.
    pub(crate) delivered: Counter,
    /// `{result="retried"}`.
    pub(crate) retried: Counter,
    /// `{result="dead"}`.
    pub(crate) dead: Counter,
    /// `sluice_deferred_delivery_seconds`: from acceptance to delivery.
    pub(crate) delivery: Histogram,
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
            sending: with(b"sending"),
            delivered: with(b"delivered"),
            dead: with(b"dead"),
            prefix: prefix.into_boxed_slice(),
        }
    }

    /// The hash of task `id`.
    pub(crate) fn task(&self, id: &TaskId) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + 34);
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(b"t:");
        key.extend_from_slice(id.to_string().as_bytes());
        key
    }
}

// === impl RouteDefer ===

impl RouteDefer {
    /// The deferral of route `route` on `store`, whose deliverers are `deliveries`.
    pub(crate) fn new(
        route: &Arc<str>,
        config: DeferConfig,
        store: Arc<Store>,
        timeout: Duration,
        metrics: DeferMetrics,
        deliveries: Arc<Deliveries>,
    ) -> RouteDefer {
        RouteDefer {
            config,
            keys: Keys::new(route),
            store,
            timeout,
            route: route.clone(),
            metrics,
            deliveries,
        }
    }

    /// The store this route's tasks live in.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Writes `request` to Redis as a new task; its id once Redis has it.
    ///
    /// # Errors
    /// [`CallError`] when Redis did not take it within `store.redis.timeout` (or the OS had no
    /// randomness for an id): the request must not be answered 202.
    pub(crate) async fn accept(&self, request: StoredRequest) -> Result<TaskId, CallError> {
        let id = TaskId::random().ok_or(CallError::Failed)?;
        let task = self.keys.task(&id);
        let ttl_ms = millis(self.config.ttl);
        let mut invocation = scripts::ACCEPT.key(&*self.keys.stream);
        invocation
            .key(&task)
            .arg(id.to_string())
            .arg(request.method.as_str())
            .arg(&request.target)
            .arg(&request.headers)
            .arg(&*request.body)
            .arg(&request.client)
            .arg(ttl_ms)
            .arg(&*self.route);
        self.store
            .call(&self.keys.stream, self.timeout, |conn| async move {
                conn.invoke::<Value>(&invocation).await
            })
            .await?;
        self.metrics.accepted.inc();
        Ok(id)
    }

    /// The state of task `id` if it belongs to this route; `Ok(None)` when Redis has no such
    /// task of this route (never accepted, or expired).
    ///
    /// # Errors
    /// [`CallError`] when Redis did not answer within `store.redis.timeout`.
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
