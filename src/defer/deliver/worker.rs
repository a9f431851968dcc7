//! A worker: delivers one task and records what came of it.
//!
//! 1. A slot of the route's cap, then of the upstream's, at [`Priority::Low`] (a refusal is not
//!    a try: it waits a little and asks again). Stopped meanwhile: the task goes back to the
//!    stream, unsent.
//! 2. [`scripts::START`]: the task, marked `delivering` — unless it ended, expired, or another
//!    deliverer started it less than the visibility timeout ago.
//! 3. Its body, read in pieces within the buffering budget (waiting for room; a body that finds
//!    none for [`BUDGET_WAIT`] waits in the retry set instead, not an attempt).
//! 4. The request, sent with the client's `Idempotency-Key` (or the task's id), judged
//!    (`outcome`) and recorded. An outcome Redis cannot take now is kept and recorded when
//!    Redis answers again, until the task's deadline: a Redis outage alone never sends an
//!    answered task again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_LENGTH, RETRY_AFTER};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Limited};
use redis::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::outcome::{judge, last_try_margin, Try, Verdict};
use super::reader::pause;
use super::{DeliveryTarget, Pool, HEARTBEAT, RECORD_PAUSE};
use crate::budget::Reservation;
use crate::config::Priority;
use crate::defer::accept::{int, text};
use crate::defer::scripts::{self, PIECE};
use crate::defer::task::{decode_headers, IDEMPOTENCY_KEY};
use crate::defer::TaskId;
use crate::limit::{Rejected, Sample, Slots};
use crate::metrics::InflightGuard;
use crate::proxy::request_body::{ClientBody, UpstreamBody};
use crate::proxy::UpstreamError;
use crate::store::RedisConn;

/// Pauses between asking the caps again after a refusal: doubling from the first to the second.
const SLOT_PAUSE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(250));

/// Most bytes of an upstream's answer read (and dropped) so that its connection can be reused;
/// a longer answer closes the connection instead.
const DRAIN_MAX: usize = 1 << 20;

/// How long a worker waits for room in the buffering budget for a task's body.
const BUDGET_WAIT: Duration = Duration::from_secs(5);

/// Body pieces read at once.
const READ_IN_FLIGHT: usize = crate::defer::accept::IN_FLIGHT;

/// A task as [`scripts::START`] gave it.
struct Task {
    attempts: u32,
    tries: u32,
    accepted_ms: i64,
    /// When [`scripts::START`] began this delivery (Redis' ms): only it is settled.
    started_ms: i64,
    /// Its deadline on this host's clock (Redis' deadline less Redis' now, from now).
    deadline: Instant,
    method: Vec<u8>,
    target: Vec<u8>,
    headers: Vec<u8>,
    /// The client's `Idempotency-Key`, or empty.
    key: String,
    body_len: usize,
}

/// What [`scripts::START`] found.
enum Started {
    /// The task expired (its hash is gone).
    Gone,
    /// The task has ended already: this entry is a duplicate.
    Ended,
    /// Its deadline has passed.
    Expired,
    /// Another deliverer started it a moment ago.
    Busy,
    /// Here it is, marked `delivering`.
    Ready(Task),
}

impl Pool {
    /// Delivers task `id` of stream entry `entry` (see the module docs).
    pub(super) async fn work(self: &Arc<Self>, entry: &str, id: TaskId) {
        let mut stop = self.stop.watch();
        let target = self.target.load_full();
        let Some(conn) = self.ops().await else {
            // The entry stays pending: taken over once Redis answers again.
            return;
        };
        let (beating, mut lost) = self.heartbeat(&conn, entry);
        // 1. Slots, at the lowest priority.
        let slots = tokio::select! {
            slots = take_slots(&target) => slots,
            // Another deliverer has taken the entry over: it is theirs now.
            _ = &mut lost => return,
            () = stop.wait() => {
                beating.abort();
                let mut invocation = scripts::REQUEUE.key(&*self.keys.stream);
                invocation.arg(id.to_string()).arg(entry);
                self.call(conn.clone().invoke::<Value>(&invocation)).await;
                return;
            }
        };
        // 2. The task, marked `delivering`.
        let Some(task) = self.start(&conn, &target, entry, &id).await else {
            return;
        };
        // 3. Its body, within the budget.
        let Some(held) = self.room_for(&target, task.body_len).await else {
            let verdict = Verdict::Again {
                attempts: task.attempts,
                tries: task.tries,
                code: None,
                error: "",
                wait: target.config.backoff,
            };
            self.record(&conn, &target, (entry, &id, &task), verdict)
                .await;
            return;
        };
        let Some(body) = self.body(&conn, &id, task.body_len).await else {
            // Redis failed: the entry stays pending, and is taken over (by this instance or
            // another) once the visibility timeout has passed.
            return;
        };
        // 4. The delivery, and its outcome.
        let tried = send(&target, &task, &id, (body, held), slots).await;
        let verdict = judge(tried, (task.attempts, task.tries), &target.config);
        self.record(&conn, &target, (entry, &id, &task), verdict)
            .await;
        drop(beating);
    }

    /// Loads task `id` and marks it `delivering`; `None` when there is nothing to send — the
    /// task is gone, ended, expired (recorded so) or busy elsewhere, or Redis failed (the entry
    /// stays pending, taken over later).
    async fn start(
        &self,
        conn: &RedisConn,
        target: &DeliveryTarget,
        entry: &str,
        id: &TaskId,
    ) -> Option<Task> {
        let task_key = self.keys.task(id);
        let mut invocation = scripts::START.key(&task_key);
        invocation
            .key(&*self.keys.sending)
            .arg(id.to_string())
            .arg(self.visibility().as_millis() as u64);
        let started = self.call(conn.clone().invoke::<Value>(&invocation)).await?;
        match Started::from(started) {
            Some(Started::Ready(task)) => return Some(task),
            // A duplicate entry of a task that has ended, or one another deliverer is sending:
            // the latter stays pending, and is looked at again after the visibility timeout.
            Some(Started::Ended) => self.ack(conn, entry).await,
            Some(Started::Busy) => {}
            Some(Started::Gone) => {
                // Its record expired with its ttl: dead, nothing left to deliver.
                target.metrics.dead.inc();
                self.ack(conn, entry).await;
            }
            Some(Started::Expired) => {
                let mut invocation = scripts::EXPIRE.key(&task_key);
                invocation
                    .key(&*self.keys.stream)
                    .key(&*self.keys.sending)
                    .key(&*self.keys.dead)
                    .arg(id.to_string())
                    .arg(entry);
                if self
                    .call(conn.clone().invoke::<Value>(&invocation))
                    .await
                    .is_some()
                {
                    target.metrics.dead.inc();
                    tracing::debug!(route = %self.route, task = %id, "deferred task dead: expired");
                }
            }
            None => {
                // Not a reply `START` gives: leave the entry pending (taken over later) rather
                // than drop a task on a misread.
                tracing::warn!(route = %self.route, task = %id, "unexpected reply from Redis to START; the task is left for a later attempt");
            }
        }
        None
    }

    /// Room in the buffering budget for a body of `len` bytes and the pieces in flight while it
    /// is read; `None` when there was none for [`BUDGET_WAIT`].
    async fn room_for(&self, target: &DeliveryTarget, len: usize) -> Option<Reservation> {
        let bytes = (len + READ_IN_FLIGHT * PIECE) as u64;
        let until = Instant::now() + BUDGET_WAIT;
        let mut wait = Duration::from_millis(10);
        loop {
            if let Some(held) = target.budget.reserve(bytes) {
                return Some(held);
            }
            if Instant::now() + wait > until {
                tracing::debug!(route = %self.route, bytes, "no room in server.max_buffered_bytes for a deferred body; the task waits");
                return None;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(500));
        }
    }

    /// Task `id`'s body of `len` bytes, read in pieces; `None` when Redis failed or the body is
    /// not all there.
    async fn body(&self, conn: &RedisConn, id: &TaskId, len: usize) -> Option<Bytes> {
        if len == 0 {
            return Some(Bytes::new());
        }
        let key = self.keys.body(id);
        let mut body = BytesMut::with_capacity(len);
        let pieces: Vec<usize> = (0..len.div_ceil(PIECE)).collect();
        for batch in pieces.chunks(READ_IN_FLIGHT) {
            let reads = batch.iter().map(|&index| {
                let cmd = redis::Cmd::hget(&key, index);
                let conn = conn.clone();
                async move { self.call(conn.query::<Vec<u8>>(&cmd)).await }
            });
            for piece in futures_util::future::join_all(reads).await {
                body.extend_from_slice(&piece?);
            }
        }
        (body.len() == len).then(|| body.freeze())
    }

    /// Records `verdict` on task `id` of `entry`, trying again while Redis fails (every
    /// [`RECORD_PAUSE`], until the task's deadline: the upstream has answered, and an unrecorded
    /// outcome means the task is delivered again).
    async fn record(
        &self,
        conn: &RedisConn,
        target: &DeliveryTarget,
        (entry, id, task): (&str, &TaskId, &Task),
        verdict: Verdict,
    ) {
        let mut wait = RECORD_PAUSE.0;
        let mut stop = self.stop.watch();
        loop {
            if self
                .record_once(conn, target, (entry, id, task), verdict)
                .await
            {
                return;
            }
            if Instant::now() + wait >= task.deadline {
                tracing::warn!(route = %self.route, task = %id, "could not record a deferred delivery's outcome in Redis before the task's ttl; it may be delivered again");
                return;
            }
            // A stop does not end the wait: the outcome is worth the shutdown grace.
            pause(&mut stop, wait).await;
            wait = (wait * 2).min(RECORD_PAUSE.1);
        }
    }

    /// One try at recording `verdict`; true when Redis took it.
    async fn record_once(
        &self,
        conn: &RedisConn,
        target: &DeliveryTarget,
        (entry, id, task): (&str, &TaskId, &Task),
        verdict: Verdict,
    ) -> bool {
        match verdict {
            Verdict::Delivered { attempts, code } => {
                self.delivered(conn, target, (entry, id, task), (attempts, code))
                    .await
            }
            Verdict::Dead {
                attempts,
                tries,
                code,
                error,
            } => {
                let settled = (attempts, tries, code, error, None);
                self.settle(conn, target, (entry, id, task), settled)
                    .await
                    .is_some()
            }
            Verdict::Again {
                attempts,
                tries,
                code,
                error,
                wait,
            } => {
                let settled = (attempts, tries, code, error, Some(wait));
                let recorded = self.settle(conn, target, (entry, id, task), settled).await;
                // `retried` counts failed attempts followed by another try, not waits.
                if recorded == Some(true) && attempts > task.attempts {
                    target.metrics.retried.inc();
                }
                recorded.is_some()
            }
        }
    }

    /// [`scripts::DELIVERED`]: the task ended delivered after `attempts`, answered `code`.
    /// True when Redis took it.
    async fn delivered(
        &self,
        conn: &RedisConn,
        target: &DeliveryTarget,
        (entry, id, task): (&str, &TaskId, &Task),
        (attempts, code): (u32, u16),
    ) -> bool {
        let keys = &self.keys;
        let (task_key, body_key) = (keys.task(id), keys.body(id));
        let mut invocation = scripts::DELIVERED.key(&task_key);
        invocation
            .key(&body_key)
            .key(&*keys.stream)
            .key(&*keys.sending)
            .key(&*keys.delivered)
            .key(&*keys.retry)
            .key(&*keys.live)
            .arg(id.to_string())
            .arg(entry)
            .arg(attempts)
            .arg(code);
        let Some((now, _)) = self
            .call(conn.clone().invoke::<(i64, i64)>(&invocation))
            .await
        else {
            return false;
        };
        target.metrics.delivered.inc();
        let took = (now - task.accepted_ms).max(0) as f64 / 1000.0;
        target.metrics.delivery.observe(took);
        true
    }

    /// [`scripts::SETTLE`]: `wait` `None` for dead now. `Some(true)` when another try is
    /// scheduled, `Some(false)` when the task died or was settled already (a repeat), `None`
    /// when Redis did not take it.
    async fn settle(
        &self,
        conn: &RedisConn,
        target: &DeliveryTarget,
        (entry, id, task): (&str, &TaskId, &Task),
        (attempts, tries, code, error, wait): (u32, u32, Option<u16>, &str, Option<Duration>),
    ) -> Option<bool> {
        let keys = &self.keys;
        let task_key = keys.task(id);
        let wait_ms = wait.map_or(-1, |w| i64::try_from(w.as_millis()).unwrap_or(i64::MAX));
        let mut invocation = scripts::SETTLE.key(&task_key);
        invocation
            .key(&*keys.stream)
            .key(&*keys.sending)
            .key(&*keys.retry)
            .key(&*keys.dead)
            .arg(id.to_string())
            .arg(entry)
            .arg(attempts)
            .arg(tries)
            .arg(code.map_or_else(String::new, |c| c.to_string()))
            .arg(error)
            .arg(wait_ms)
            .arg(last_try_margin(&target.config).as_millis() as u64)
            .arg(task.started_ms);
        let (_, retried) = self
            .call(conn.clone().invoke::<(i64, i64)>(&invocation))
            .await?;
        if retried == 0 {
            target.metrics.dead.inc();
            tracing::debug!(route = %self.route, task = %id, attempts, ?code, error, "deferred task dead");
        }
        Some(retried == 1)
    }

    /// Refreshes the claim on `entry` every [`HEARTBEAT`] in a task of its own (so that the
    /// delivery is never held up by it) until aborted; the receiver resolves if another
    /// deliverer has taken the entry over.
    fn heartbeat(
        self: &Arc<Self>,
        conn: &RedisConn,
        entry: &str,
    ) -> (Beating, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let (pool, conn, entry) = (self.clone(), conn.clone(), entry.to_owned());
        let task = tokio::spawn(async move {
            let mut beat = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                beat.tick().await;
                let mut invocation = scripts::HEARTBEAT.key(&*pool.keys.stream);
                invocation.arg(&pool.consumer).arg(&entry);
                if pool.call(conn.clone().invoke::<i64>(&invocation)).await == Some(0) {
                    let _ = tx.send(());
                    return;
                }
            }
        });
        (Beating(task), rx)
    }
}

/// The heartbeat task of a worker; aborted when dropped.
struct Beating(JoinHandle<()>);

impl Beating {
    fn abort(&self) {
        self.0.abort();
    }
}

impl Drop for Beating {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A slot of the route's cap and then of the upstream's, at [`Priority::Low`]. A refusal is
/// not a try: after a short pause (doubling up to [`SLOT_PAUSE`]'s second value) the caps are
/// asked again, until they admit.
async fn take_slots(target: &DeliveryTarget) -> Slots {
    let mut pause = SLOT_PAUSE.0;
    loop {
        match try_slots(target).await {
            Ok(slots) => return slots,
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(SLOT_PAUSE.1);
            }
        }
    }
}

/// One try at both slots.
async fn try_slots(target: &DeliveryTarget) -> Result<Slots, Rejected> {
    let mut slots = Slots::default();
    if let Some(cap) = &target.route_cap {
        slots.route = Some(cap.acquire(Priority::Low).await?);
    }
    slots.route_gauge = Some(InflightGuard::enter(&target.route_inflight));
    if let Some(cap) = &target.upstream.concurrency {
        slots.upstream = Some(cap.acquire(Priority::Low).await?);
    }
    slots.upstream_gauge = Some(InflightGuard::enter(&target.upstream_inflight));
    Ok(slots)
}

/// Sends `task` upstream holding `slots`, its body counted by `held`; how it went. The answer's
/// body is read (up to [`DRAIN_MAX`]) so that the connection can be reused, then dropped.
async fn send(
    target: &DeliveryTarget,
    task: &Task,
    id: &TaskId,
    (body, held): (Bytes, Reservation),
    mut slots: Slots,
) -> Try {
    let Some(req) = request(task, id, body, held) else {
        // Not a request sluice could have stored; treated as an answer that ends it.
        return Try::Answered(StatusCode::BAD_REQUEST, None);
    };
    let sent = Instant::now();
    let result = target.upstream.send(req).await;
    let took = sent.elapsed();
    target.upstream_duration.observe(took.as_secs_f64());
    // A delivery teaches an adaptive cap like any request (see `crate::limit::adaptive`).
    slots.record(match &result {
        Ok((res, _)) => Sample::answer(res.status(), res.headers().contains_key(RETRY_AFTER), took),
        Err(_) => Sample::Dropped,
    });
    match result {
        Ok((res, conn)) => {
            let code = res.status();
            let retry_after = retry_after(res.headers());
            let body = Limited::new(res.into_body(), DRAIN_MAX).collect();
            let timeout = target.upstream.config().timeout;
            if let Ok(Ok(_)) = tokio::time::timeout(timeout, body).await {
                conn.release();
            }
            Try::Answered(code, retry_after)
        }
        Err(err) => {
            target.upstream.warn_failure(&err);
            match err {
                // Nothing was sent: the task waits.
                UpstreamError::Connect { .. } | UpstreamError::Pushback { .. } => Try::Unreached,
                UpstreamError::Timeout { .. } => Try::Unanswered("upstream-timeout"),
                UpstreamError::Failed { .. } => Try::Unanswered("upstream-unavailable"),
            }
        }
    }
}

/// A `Retry-After` in delta-seconds (an HTTP date is read as "some time": the backoff then).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    Some(
        value
            .parse::<u64>()
            .map_or(Duration::ZERO, Duration::from_secs),
    )
}

/// The request of `task`, with the client's `Idempotency-Key` (or the task's id), its body
/// counted by `held` until it is sent.
fn request(
    task: &Task,
    id: &TaskId,
    body: Bytes,
    held: Reservation,
) -> Option<Request<UpstreamBody>> {
    let method = Method::from_bytes(&task.method).ok()?;
    let uri = Uri::try_from(task.target.as_slice()).ok()?;
    let mut headers = decode_headers(&task.headers);
    let key = match task.key.as_str() {
        "" => HeaderValue::from_str(&id.to_string()).ok()?,
        key => HeaderValue::from_str(key).ok()?,
    };
    headers.insert(IDEMPOTENCY_KEY, key);
    let body = if body.is_empty() {
        if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        UpstreamBody::Empty
    } else {
        UpstreamBody::Client(ClientBody::whole(VecDeque::from([body]), Some(held)))
    };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Some(req)
}

// === parsing replies ===

impl Started {
    /// `START`'s reply (see [`scripts::START`]); `None` if it is not one.
    fn from(value: Value) -> Option<Started> {
        let Value::Array(items) = value else {
            return None;
        };
        let int_at = |i: usize| items.get(i).and_then(int);
        match int_at(0)? {
            0 => Some(Started::Gone),
            1 => Some(Started::Ended),
            2 => Some(Started::Expired),
            4 => Some(Started::Busy),
            3 => {
                let now = int_at(1)?;
                let deadline_ms = int_at(4)?;
                let left = u64::try_from(deadline_ms.saturating_sub(now)).unwrap_or(0);
                let bytes_at = |i: usize| match items.get(i) {
                    Some(Value::BulkString(b)) => b.clone(),
                    Some(Value::SimpleString(s)) => s.clone().into_bytes(),
                    _ => Vec::new(),
                };
                Some(Started::Ready(Task {
                    attempts: u32::try_from(int_at(2)?).unwrap_or(0),
                    tries: u32::try_from(int_at(3)?).unwrap_or(0),
                    accepted_ms: int_at(5)?,
                    started_ms: now,
                    deadline: Instant::now() + Duration::from_millis(left),
                    method: bytes_at(6),
                    target: bytes_at(7),
                    headers: bytes_at(8),
                    key: items.get(9).and_then(text).unwrap_or_default(),
                    body_len: usize::try_from(int_at(10)?).unwrap_or(0),
                }))
            }
            _ => None,
        }
    }
}
