//! Writing a task: a 202 if and only if it is stored, and the unknown outcome named.
//!
//! A body of up to [`PIECE`] bytes goes in one script with the rest of the task ([`ACCEPT`]).
//! A longer one takes three steps, so that no command runs long: [`BEGIN`] (the record, in
//! state `writing`, and the first piece), the other pieces ([`PIECE_GUARD`], up to
//! [`IN_FLIGHT`] at once), then [`COMMIT`], which makes the task `queued` only if the record is
//! still `writing` and the body whole. A write given up before its commit is removed
//! ([`ABORT`]), or expires with its record after [`WINDOW_MARGIN`] past the write's timeout.
//!
//! What the client is told:
//! - stored: 202;
//! - not stored, for certain (Redis refused, was not asked, or the commit was never sent):
//!   503 `store-unavailable`;
//! - the commit (or the one script) was sent and its reply did not come in time: 503
//!   `store-unavailable` naming the task (`"task"`, `Location`), whose status says what became
//!   of it — `writing` until the record's window ends, then stored or unknown (404). A retry
//!   with the same `Idempotency-Key` gets the same 503 meanwhile, then the task's 202;
//! - the key names a task already: that task's 202 and state (a duplicate), or 422 when the
//!   body differs; the route holds `max_tasks` tasks: 503 `queue-full`.
//!
//! [`ACCEPT`]: super::scripts::ACCEPT
//! [`BEGIN`]: super::scripts::BEGIN
//! [`PIECE_GUARD`]: super::scripts::PIECE_GUARD
//! [`COMMIT`]: super::scripts::COMMIT
//! [`ABORT`]: super::scripts::ABORT

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::{Script, ScriptInvocation, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::scripts::{self, PIECE};
use super::task::{Deferred, Refused, StoredRequest, TaskId, TaskStatus};
use super::{hex, millis, unknown_for, RouteDefer, WINDOW_MARGIN};
use crate::store::CallError;

/// Pieces of one body sent at once (each a command of its own; Redis runs others' commands in
/// between): 256 KiB in flight, which the write's reservation covers.
pub(crate) const IN_FLIGHT: usize = 4;

/// Bodies longer than this are hashed on a blocking thread: SHA-256 of megabytes would hold a
/// request thread for milliseconds.
const HASH_INLINE: usize = 256 << 10;

/// What an accepting script answered (see [`scripts::ACCEPT`]).
#[derive(Debug)]
pub(super) enum Reply {
    /// Stored (`ACCEPT`, `COMMIT`), or begun (`BEGIN`).
    Stored,
    /// The key names this task.
    Duplicate(TaskId, TaskFields),
    /// The key names this task, whose write is still under way.
    Pending(TaskId),
    /// The key names a task with another body.
    KeyReused,
    /// `max_tasks` reached.
    Full,
    /// The write had been abandoned before its commit.
    Abandoned,
    /// The key names no task (`NAMED`).
    Unknown,
}

/// A task's state as a script read it: status, attempts, code, error.
#[derive(Debug)]
pub(super) struct TaskFields([Option<String>; 4]);

// === impl RouteDefer: accepting ===

impl RouteDefer {
    /// Writes `request` as a new task of this route, within `store.tasks.timeout` in all (see
    /// the module docs for what each answer means). The body's bytes stay counted in the
    /// buffering budget by the caller's reservation; the pieces in flight are counted here.
    ///
    /// # Errors
    /// [`Refused`]: not stored, maybe stored, full, or the key reused with another body.
    pub(crate) async fn accept(&self, request: StoredRequest) -> Result<Deferred, Refused> {
        let id = TaskId::random().ok_or(Refused::NotStored)?;
        let sha = match &request.key {
            Some(_) => digest(&request.body).await,
            None => String::new(),
        };
        let window = i64::try_from(unknown_for(self.timeout).as_millis()).unwrap_or(i64::MAX);
        let write = Write {
            defer: self,
            id,
            request: &request,
            sha,
            until: Instant::now() + self.timeout,
            not_after: self.redis_now_ms().saturating_add(window),
        };
        let written = if request.body.len() <= PIECE {
            write.whole().await
        } else {
            write.in_pieces().await
        };
        match &written {
            Ok(Deferred::New(_)) => self.metrics.accepted.inc(),
            Ok(Deferred::Duplicate(_)) => self.metrics.duplicate.inc(),
            Err(_) => 0,
        };
        written
    }
}

/// One task being written.
struct Write<'a> {
    defer: &'a RouteDefer,
    id: TaskId,
    request: &'a StoredRequest,
    /// The body's SHA-256 in hex when the request has a key (else empty): a repeat of the key
    /// must carry the same body.
    sha: String,
    /// When the write's timeout ends.
    until: Instant,
    /// Redis' time (ms, as this instance last saw Redis' clock) after which no script of this
    /// write stores anything.
    not_after: i64,
}

impl Write<'_> {
    /// The time left of the write's timeout.
    fn left(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }

    /// The client's key, or empty.
    fn key(&self) -> &str {
        self.request.key.as_ref().map_or("", |k| k.as_str())
    }

    /// The Redis key of the idempotency record: the task's own key when there is no key (a
    /// script takes a fixed number of keys; that one is then never touched).
    fn record(&self) -> Vec<u8> {
        match &self.request.key {
            Some(key) => self.defer.keys.idempotency(key),
            None => self.defer.keys.task(&self.id),
        }
    }

    /// The keys and first arguments [`scripts::ACCEPT`] and [`scripts::COMMIT`] share: the
    /// stream, the task's keys, the idempotency record, and the request to store.
    fn task_invocation(&self, script: &'static Script) -> ScriptInvocation<'static> {
        let keys = &self.defer.keys;
        let mut invocation = script.key(&*keys.stream);
        invocation
            .key(keys.task(&self.id))
            .key(keys.body(&self.id))
            .key(&*keys.live)
            .key(self.record())
            .arg(self.id.to_string())
            .arg(self.request.method.as_str())
            .arg(&self.request.target)
            .arg(&self.request.headers)
            .arg(&self.request.client)
            .arg(millis(self.defer.config.ttl))
            .arg(&*self.defer.route);
        invocation
    }

    /// Sends the script that stores the task, within what is left of the write's time.
    async fn invoke(&self, invocation: ScriptInvocation<'static>) -> Result<Value, CallError> {
        let stream = &self.defer.keys.stream;
        self.defer
            .store
            .call(stream, self.left(), |conn| async move {
                conn.invoke::<Value>(&invocation).await
            })
            .await
    }

    /// A body of at most one piece: one script.
    async fn whole(&self) -> Result<Deferred, Refused> {
        let mut invocation = self.task_invocation(&scripts::ACCEPT);
        invocation
            .arg(self.defer.config.max_tasks)
            .arg(self.key())
            .arg(&self.sha)
            .arg(&*self.request.body)
            .arg(&*self.defer.keys.prefix)
            .arg(self.not_after);
        match self.invoke(invocation).await {
            Ok(reply) => self.answer(&reply),
            // The script was sent; its effect is unknown.
            Err(CallError::Failed | CallError::Timeout) => Err(Refused::Unknown(self.id)),
            Err(CallError::NotAsked | CallError::Refused) => Err(Refused::NotStored),
        }
    }

    /// A body of several pieces: begin, the pieces, commit.
    async fn in_pieces(&self) -> Result<Deferred, Refused> {
        let body = &self.request.body;
        // The client library copies each piece in flight into its write buffer: counted (even
        // past the maximum, like bytes read before they could be refused).
        let _in_flight = self.defer.budget.account((IN_FLIGHT * PIECE) as u64);
        match self.begin(body.slice(..PIECE)).await {
            Ok(None) => {}
            Ok(Some(answered)) => return answered,
            Err(()) => {
                self.abort();
                return Err(Refused::NotStored);
            }
        }
        if self.pieces(body).await.is_err() {
            self.abort();
            return Err(Refused::NotStored);
        }
        self.commit().await
    }

    /// [`scripts::BEGIN`] with the first piece: `Ok(None)` to go on, `Ok(Some(answer))` when the
    /// key answered for the request (a duplicate, a pending write, a reuse, a full route).
    async fn begin(&self, first: Bytes) -> Result<Option<Result<Deferred, Refused>>, ()> {
        let keys = &self.defer.keys;
        let (task, body) = (keys.task(&self.id), keys.body(&self.id));
        let window = self.defer.timeout + WINDOW_MARGIN;
        let mut invocation = scripts::BEGIN.key(&task);
        invocation
            .key(&body)
            .key(&*keys.live)
            .key(self.record())
            .arg(self.id.to_string())
            .arg(self.key())
            .arg(&self.sha)
            .arg(self.defer.config.max_tasks)
            .arg(millis(window))
            .arg(&*first)
            .arg(&*keys.prefix)
            .arg(self.not_after);
        let reply = self
            .defer
            .store
            .call(&task, self.left(), |conn| async move {
                conn.invoke::<Value>(&invocation).await
            })
            .await
            .map_err(drop)?;
        self.defer.saw_redis_clock(&reply);
        match Reply::parse(&reply) {
            Some(Reply::Stored) => Ok(None),
            Some(reply) => Ok(Some(answer(self.defer, reply, Some(self.id)))),
            None => Err(()),
        }
    }

    /// Every piece after the first, [`IN_FLIGHT`] at a time; `Err` as soon as one fails or
    /// finds the write abandoned.
    async fn pieces(&self, body: &Bytes) -> Result<(), ()> {
        let (key, task) = (
            self.defer.keys.body(&self.id),
            self.defer.keys.task(&self.id),
        );
        let offsets: Vec<usize> = (PIECE..body.len()).step_by(PIECE).collect();
        for batch in offsets.chunks(IN_FLIGHT) {
            let sends = batch.iter().map(|&at| {
                let piece = body.slice(at..(at + PIECE).min(body.len()));
                self.piece((&key, &task), at / PIECE, piece)
            });
            for written in futures_util::future::join_all(sends).await {
                written?;
            }
        }
        Ok(())
    }

    /// Piece number `index` into `key` under record `task`.
    async fn piece(
        &self,
        (key, task): (&[u8], &[u8]),
        index: usize,
        piece: Bytes,
    ) -> Result<(), ()> {
        let mut invocation = scripts::PIECE_GUARD.key(key);
        invocation.key(task).arg(index).arg(&*piece);
        let written: i64 = self
            .defer
            .store
            .call(key, self.left(), |conn| async move {
                conn.invoke::<i64>(&invocation).await
            })
            .await
            .map_err(drop)?;
        if written < 0 {
            return Err(());
        }
        Ok(())
    }

    /// [`scripts::COMMIT`]: the task is `queued` now, or was abandoned, or its fate is unknown.
    async fn commit(&self) -> Result<Deferred, Refused> {
        let mut invocation = self.task_invocation(&scripts::COMMIT);
        invocation
            .arg(self.key())
            .arg(self.request.body.len().div_ceil(PIECE))
            .arg(self.not_after)
            .arg(self.request.body.len());
        match self.invoke(invocation).await {
            Ok(reply) => self.answer(&reply),
            Err(CallError::Failed | CallError::Timeout) => Err(Refused::Unknown(self.id)),
            Err(CallError::NotAsked | CallError::Refused) => {
                self.abort();
                Err(Refused::NotStored)
            }
        }
    }

    /// What a script's `reply` means for this write.
    fn answer(&self, reply: &Value) -> Result<Deferred, Refused> {
        self.defer.saw_redis_clock(reply);
        match Reply::parse(reply) {
            Some(reply) => answer(self.defer, reply, Some(self.id)),
            // Not a reply these scripts give: whatever Redis did, it is not known to be stored.
            None => Err(Refused::Unknown(self.id)),
        }
    }

    /// Removes what a write given up left (best effort, in the background: the client's answer
    /// does not wait; what is not removed expires with the record's window).
    fn abort(&self) {
        let defer_keys = self.defer.keys.clone();
        let store = self.defer.store.clone();
        let (id, record, keyed) = (self.id, self.record(), self.request.key.is_some());
        let timeout = self.defer.timeout;
        tokio::spawn(async move {
            let (task, body) = (defer_keys.task(&id), defer_keys.body(&id));
            let mut invocation = scripts::ABORT.key(&task);
            invocation
                .key(&body)
                .key(&*defer_keys.live)
                .key(&record)
                .arg(id.to_string())
                .arg(if keyed { "1" } else { "0" });
            let _ = store
                .call(&task, timeout, |conn| async move {
                    conn.invoke::<Value>(&invocation).await
                })
                .await;
        });
    }
}

impl RouteDefer {
    /// Redis' clock now, as far as this instance knows it: this host's clock and the offset
    /// between the two last seen.
    fn redis_now_ms(&self) -> i64 {
        local_ms().saturating_add(self.clock_offset_ms.load(Ordering::Relaxed))
    }

    /// Notes the offset between Redis' clock (the `now` of a script's `reply`) and this host's,
    /// so that the next write's `not after` is on Redis' clock even when the two disagree (a
    /// write refused as too late by a clock far ahead teaches the offset for the next).
    fn saw_redis_clock(&self, reply: &Value) {
        let Value::Array(items) = reply else {
            return;
        };
        if let Some(now) = items.get(1).and_then(int) {
            let offset = now.saturating_sub(local_ms());
            self.clock_offset_ms.store(offset, Ordering::Relaxed);
        }
    }
}

/// This host's clock, ms since the epoch.
fn local_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    i64::try_from(since.map_or(0, |d| d.as_millis())).unwrap_or(i64::MAX)
}

/// The answer `reply` makes for a request of `defer`; `new` is the id the request's own task
/// was written under (none for a lookup).
pub(super) fn answer(
    defer: &RouteDefer,
    reply: Reply,
    new: Option<TaskId>,
) -> Result<Deferred, Refused> {
    match reply {
        Reply::Stored => new.map(Deferred::New).ok_or(Refused::NotStored),
        Reply::Duplicate(id, TaskFields(fields)) => {
            TaskStatus::from_fields(id, &defer.route, fields.into())
                .map(Deferred::Duplicate)
                .ok_or(Refused::NotStored)
        }
        Reply::Pending(id) => Err(Refused::Unknown(id)),
        Reply::KeyReused => Err(Refused::KeyReused),
        Reply::Full => Err(Refused::Full),
        Reply::Abandoned | Reply::Unknown => Err(Refused::NotStored),
    }
}

// === impl Reply ===

impl Reply {
    /// A script's reply (see [`scripts::ACCEPT`]); `None` if it is not one.
    pub(super) fn parse(value: &Value) -> Option<Reply> {
        let Value::Array(items) = value else {
            return None;
        };
        let text = |i: usize| items.get(i).and_then(text);
        let id = |i: usize| text(i).and_then(|t| TaskId::parse(&t));
        Some(match items.first().and_then(int)? {
            0 => Reply::Stored,
            1 => Reply::Duplicate(id(2)?, TaskFields([text(3), text(4), text(5), text(6)])),
            2 => Reply::Pending(id(2)?),
            3 => Reply::KeyReused,
            4 => Reply::Full,
            5 => Reply::Abandoned,
            6 => Reply::Unknown,
            _ => return None,
        })
    }
}

/// The SHA-256 of `body` in hex (on a blocking thread when it is long).
async fn digest(body: &Bytes) -> String {
    if body.len() <= HASH_INLINE {
        return hex(&Sha256::digest(body));
    }
    let owned = body.clone();
    match tokio::task::spawn_blocking(move || hex(&Sha256::digest(&owned))).await {
        Ok(sha) => sha,
        // The blocking pool is gone (shutdown): hash here rather than fail the write.
        Err(_) => hex(&Sha256::digest(body)),
    }
}

/// A string reply as text.
pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An integer reply, or a string of digits.
pub(super) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}
