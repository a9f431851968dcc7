//! A deferring route's tasks in Redis: their keys ([`Keys`]) and [`RouteDefer`], what the
//! request path and the admin listener call (accepting is `accept`'s, the listing and requeue of
//! dead tasks `dead`'s).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use sha2::{Digest, Sha256};

use super::task::{IdempotencyKey, TaskId, TaskStatus};
use super::{accept, scripts};
use super::{DeferMetrics, Deferred, Refused};
use crate::budget::Budget;
use crate::config::DeferConfig;
use crate::store::{escape_into, CallError, Store};

/// The consumer group every instance's deliverers join.
pub(super) const GROUP: &str = "sluice";

/// The Redis keys of one deferring route: all under the route's hash tag (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// `sluice:defer:{<route>}:`, escaped: a task's key is this, `t:` and its id.
    pub(super) prefix: Box<[u8]>,
    /// `…:s`, the stream of deliveries to make.
    pub(super) stream: Box<[u8]>,
    /// `…:r`, tasks waiting for their next try.
    pub(super) retry: Box<[u8]>,
    /// `…:n`, tasks not delivered: what `max_tasks` counts.
    pub(super) live: Box<[u8]>,
    /// `…:sending`, `…:delivered`, `…:dead`.
    pub(super) sending: Box<[u8]>,
    pub(super) delivered: Box<[u8]>,
    pub(super) dead: Box<[u8]>,
}

/// The deferred delivery of one route, as the request path and the admin listener use it:
/// accept a request, read a task's state, list and requeue dead tasks. Built with the route.
pub(crate) struct RouteDefer {
    /// The route's `defer:`.
    pub(super) config: DeferConfig,
    /// Where its tasks live.
    pub(super) keys: Keys,
    /// The task store's connection.
    pub(super) store: Arc<Store>,
    /// `store.tasks.timeout`: the bound on one task write, all its pieces together.
    pub(super) timeout: Duration,
    /// The route's name, stored with each task (the status endpoint shows it).
    pub(super) route: Arc<str>,
    /// Every body held while it is written counts here (`server.max_buffered_bytes`).
    pub(super) budget: Arc<Budget>,
    /// Redis' clock less this host's, in ms, as the last script's reply showed (0 until then).
    pub(super) clock_offset_ms: std::sync::atomic::AtomicI64,
    /// `sluice_deferred_total{result="accepted"}` and the rest.
    pub(super) metrics: DeferMetrics,
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
pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

// === impl RouteDefer ===

impl RouteDefer {
    /// The deferral of route `route` on the task store `store` (whose writes `timeout` bounds).
    pub(crate) fn new(
        route: &Arc<str>,
        config: DeferConfig,
        (store, timeout): (Arc<Store>, Duration),
        budget: Arc<Budget>,
        metrics: DeferMetrics,
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
        }
    }

    /// The store this route's tasks live in.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The route's `defer:`.
    pub(crate) fn config(&self) -> &DeferConfig {
        &self.config
    }

    /// Its metric handles.
    pub(crate) fn metrics(&self) -> &DeferMetrics {
        &self.metrics
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
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
