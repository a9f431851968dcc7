//! The deliverers of one deferring route on one instance: a pool of at most [`MAX_DELIVERERS`]
//! workers, fed by a reader and a caretaker, all consumers `<pid>-<random>` of the route's
//! consumer group.
//!
//! - The **reader** reads new entries (`XREADGROUP … BLOCK`) on a connection of its own — a
//!   blocking read would hold up every call behind it on a shared one — and only as many as
//!   there are idle workers: an entry is never read that no worker can take at once.
//! - The **caretaker**, every [`TICK`], puts the tasks whose retry is due back into the stream,
//!   takes over entries whose deliverer went silent for the upstream's `timeout` +
//!   [`VISIBILITY_MARGIN`] (`XAUTOCLAIM`), as many as there are idle workers, and reads the
//!   figures behind the `sluice_deferred_tasks` gauges. Now and then it removes consumers of
//!   dead instances (none pending, idle for [`CONSUMER_IDLE`]).
//! - A **worker** delivers one task: it waits for a slot of the route's cap and then of the
//!   upstream's at [`Priority::Low`], like a request of the lowest priority (a refusal is not an
//!   attempt: it waits a little and asks again), so deferred work only uses capacity that live
//!   requests leave idle; then it marks the task `delivering`, sends it, and records the
//!   outcome: `delivered` (a 2xx, 3xx, or a 4xx other than 408/429), a retry after a backoff (a
//!   5xx, 408, 429, a timeout or a connection failure), or `dead` (attempts spent, or past the
//!   task's deadline). Only then is the entry acknowledged. While it holds the entry it refreshes
//!   its claim every [`HEARTBEAT`], so no other deliverer takes it over.
//!
//! Non-blocking calls (scripts, claims, heartbeats) share a second connection of the pool, each
//! bounded by [`CALL_TIMEOUT`]. A failing Redis costs a pause of [`REDIS_PAUSE`] per loop and
//! counts in `sluice_store_errors_total`; the log gets a line when the route's deliveries start
//! failing and one when they work again.
//!
//! Stopping (a reload that removes the route or changes the store, or shutdown) stops reading;
//! a worker still waiting for a slot puts its task back at the end of the stream; a worker
//! sending finishes and records the outcome.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Limited};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use redis::Value;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::scripts;
use super::task::{decode_headers, IDEMPOTENCY_KEY};
use super::{DeferMetrics, Keys, TaskId, GROUP};
use crate::config::{CapSize, ConcurrencyConfig, DeferConfig, Priority};
use crate::limit::{ConcurrencyLimit, Rejected, Sample, Slots};
use crate::metrics::InflightGuard;
use crate::proxy::body::{ClientBody, UpstreamBody};
use crate::proxy::{Upstream, UpstreamError};
use crate::shutdown::{Shutdown, ShutdownWatch};
use crate::store::{open_dedicated, Conn, Link, Store};

/// Most deliverers (tasks held at once) per route and instance.
pub(crate) const MAX_DELIVERERS: usize = 32;

/// Deliverers of a route with no cap at all (neither its own nor its upstream's).
const DEFAULT_DELIVERERS: usize = 8;

/// Longest wait of one `XREADGROUP` for new entries; also how soon the reader sees a stop.
const READ_BLOCK: Duration = Duration::from_secs(1);

/// Most entries one takeover claims.
const READ_BATCH: usize = 16;

/// How often the caretaker runs.
pub(crate) const TICK: Duration = Duration::from_millis(500);

/// How often a worker refreshes its claim on the entry it holds.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// An entry unrefreshed for the upstream's `timeout` plus this is taken over by another
/// deliverer: with a heartbeat every second, only a deliverer that died (or stalled for
/// seconds) loses its entry. Takeover then happens within `timeout` + this + [`TICK`], inside
/// the contract's `timeout` + 15 s.
pub(crate) const VISIBILITY_MARGIN: Duration = Duration::from_secs(5);

/// Bound on each non-blocking Redis call of the deliverers (they run off the request path; a
/// task body of up to `max_body` travels in some).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed Redis call before the loop tries again.
const REDIS_PAUSE: Duration = Duration::from_secs(1);

/// The longest wait between two attempts (the contract's minute).
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Pauses between asking the caps again after a refusal: doubling from the first to the second.
const SLOT_PAUSE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(250));

/// Most retried tasks one tick puts back into the stream.
const PROMOTE_BATCH: usize = 100;

/// A consumer with nothing pending and idle this long belongs to an instance that is gone.
const CONSUMER_IDLE: Duration = Duration::from_secs(3600);

/// How often the caretaker looks for such consumers.
const CONSUMER_SWEEP: Duration = Duration::from_secs(60);

/// Most bytes of an upstream's answer read (and dropped) so that its connection can be reused;
/// a longer answer closes the connection instead.
const DRAIN_MAX: usize = 1 << 20;

/// How long a delivered task's record is kept (at most until its deadline): long enough for a
/// producer to see the outcome, short enough that a busy route's records do not fill Redis for
/// a whole `ttl` (a dead task's record is kept until its deadline, for inspection).
pub(crate) const DELIVERED_KEEP: Duration = Duration::from_secs(3600);

/// Tries of a call that records an outcome (the upstream has answered: losing the record would
/// mean delivering again).
const SETTLE_TRIES: usize = 3;

/// What a worker needs of its route, swapped by a reload (see [`Deliveries::retarget`]).
#[derive(Debug)]
pub(crate) struct Target {
    /// The route's `defer:`.
    pub(crate) config: DeferConfig,
    /// Where tasks go.
    pub(crate) upstream: Arc<Upstream>,
    /// The route's own cap.
    pub(crate) route_cap: Option<ConcurrencyLimit>,
    /// `sluice_inflight{route}`.
    pub(crate) route_inflight: Gauge,
    /// `sluice_inflight{upstream}`.
    pub(crate) upstream_inflight: Gauge,
    /// `sluice_upstream_duration_seconds{route}`.
    pub(crate) upstream_duration: Histogram,
    /// `sluice_deferred_total` and `sluice_deferred_delivery_seconds`.
    pub(crate) metrics: DeferMetrics,
}

/// The deliverers of one route on this instance. Dropping it stops them (see the module docs).
pub(crate) struct Deliveries {
    pool: Arc<Pool>,
    /// The reader and the caretaker.
    loops: Mutex<Vec<JoinHandle<()>>>,
}

/// The figures behind `sluice_deferred_tasks` and `sluice_deferred_oldest_age_seconds`, as the
/// caretaker last read them from Redis: the whole fleet's, the same on every instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Waiting: in the stream (not being sent) or waiting for a retry.
    pub(crate) queued: i64,
    /// Being sent now.
    pub(crate) delivering: i64,
    /// Ended delivered, kept until their deadline.
    pub(crate) delivered: i64,
    /// Ended dead, kept until their deadline.
    pub(crate) dead: i64,
    /// Age of the oldest entry of the stream, ms.
    pub(crate) oldest_ms: i64,
}

/// What the reader, the caretaker and the workers share.
struct Pool {
    /// The route's name, for logs.
    route: Arc<str>,
    /// Its keys.
    keys: Keys,
    /// Where the store connects: the pool opens its own connections there.
    link: Link,
    /// `sluice_store_errors_total`.
    errors: Counter,
    /// This pool's consumer name.
    consumer: String,
    /// The route as the current runtime has it.
    target: ArcSwap<Target>,
    /// One permit per worker.
    workers: Arc<Semaphore>,
    /// How many workers.
    size: usize,
    /// Fired when the pool stops.
    stop: Shutdown,
    /// The connection of non-blocking calls, opened on first use.
    ops: tokio::sync::OnceCell<Conn>,
    /// Entries this pool's workers hold: a takeover by the caretaker must not hand a worker an
    /// entry another worker of the same consumer still has. std Mutex: set operations only.
    held: Mutex<HashSet<String>>,
    /// Where the next takeover scan of the pending entries starts (`XAUTOCLAIM`'s cursor):
    /// Redis looks at a bounded number of entries per call, so always starting at `0-0` would
    /// never get past the oldest entries while live deliverers hold them.
    claim_from: Mutex<String>,
    /// See [`Counts`]; `known` false until first read.
    counts: [AtomicI64; 5],
    known: AtomicBool,
    /// Whether the last Redis call failed (one log line per change).
    failing: AtomicBool,
}

/// How one attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// The upstream answered with this status.
    Answered(StatusCode),
    /// No answer: `upstream-unavailable` or `upstream-timeout`.
    Failed(&'static str),
}

/// A task as `START` gave it.
struct Task {
    attempts: u32,
    accepted_ms: i64,
    method: Vec<u8>,
    target: Vec<u8>,
    headers: Vec<u8>,
    body: Bytes,
}

/// What `START` found.
enum Started {
    /// The task expired (its hash is gone).
    Gone,
    /// The task has ended already: this entry is a duplicate.
    Ended,
    /// Its deadline has passed, after these attempts (the last answered with `code`).
    Expired { attempts: u32, code: Option<u16> },
    /// Here it is, marked `delivering`.
    Ready(Task),
}

// === impl Deliveries ===

impl Deliveries {
    /// Starts the deliverers of route `route` on `spawner`, connecting where `store` does.
    pub(crate) fn start(
        route: &Arc<str>,
        store: &Store,
        target: Target,
        spawner: &Handle,
    ) -> Deliveries {
        let size = deliverers(
            target.route_cap.as_ref().map(|c| c.config()).as_ref(),
            target.upstream.config().concurrency.as_ref(),
        );
        let suffix = TaskId::random().map_or_else(String::new, |id| id.to_string()[..8].to_owned());
        let pool = Arc::new(Pool {
            route: route.clone(),
            keys: Keys::new(route),
            link: store.link(),
            errors: store.errors().clone(),
            consumer: format!("{}-{suffix}", std::process::id()),
            target: ArcSwap::from_pointee(target),
            workers: Arc::new(Semaphore::new(size)),
            size,
            stop: Shutdown::new(),
            ops: tokio::sync::OnceCell::new(),
            held: Mutex::new(HashSet::new()),
            claim_from: Mutex::new(String::from("0-0")),
            counts: Default::default(),
            known: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        });
        tracing::info!(route = %route, deliverers = size, consumer = %pool.consumer, "deferred delivery started");
        let loops = vec![
            spawner.spawn(read(pool.clone())),
            spawner.spawn(tend(pool.clone())),
        ];
        Deliveries {
            pool,
            loops: Mutex::new(loops),
        }
    }

    /// Hands the workers the route as a reload rebuilt it (its caps, upstream, `defer:`); the
    /// deliveries under way finish with what they had.
    pub(crate) fn retarget(&self, target: Target) {
        self.pool.target.store(Arc::new(target));
    }

    /// The fleet's figures as last read, `None` before the first read.
    pub(crate) fn counts(&self) -> Option<Counts> {
        let pool = &self.pool;
        pool.known.load(Ordering::Acquire).then(|| {
            let [queued, delivering, delivered, dead, oldest_ms] =
                pool.counts.each_ref().map(|c| c.load(Ordering::Relaxed));
            Counts {
                queued,
                delivering,
                delivered,
                dead,
                oldest_ms,
            }
        })
    }

    /// Stops the deliverers and waits (at most `grace`) until the reader and caretaker have
    /// ended and every worker has put back or finished its task.
    pub(crate) async fn stop(&self, grace: Duration) {
        self.pool.stop.trigger();
        let loops = std::mem::take(&mut *self.loops.lock().unwrap_or_else(|e| e.into_inner()));
        let all = async {
            for handle in loops {
                let _ = handle.await;
            }
            let _ = self.pool.workers.acquire_many(self.pool.size as u32).await;
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(route = %self.pool.route, "deferred deliveries still running at shutdown; their tasks are taken over after the visibility timeout");
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        self.pool.stop.trigger();
    }
}

impl fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliveries")
            .field("route", &self.pool.route)
            .field("consumer", &self.pool.consumer)
            .field("deliverers", &self.pool.size)
            .finish_non_exhaustive()
    }
}

/// Deliverers of a route: the smaller of its caps' sizes (an adaptive cap's `max_inflight`) —
/// more could only wait for slots — at most [`MAX_DELIVERERS`]; [`DEFAULT_DELIVERERS`] without
/// caps.
fn deliverers(route: Option<&ConcurrencyConfig>, upstream: Option<&ConcurrencyConfig>) -> usize {
    let size = |c: &ConcurrencyConfig| match c.size {
        CapSize::Fixed(n) => n.get(),
        CapSize::Adaptive(a) => a.max_inflight.get(),
    };
    [route, upstream]
        .into_iter()
        .flatten()
        .map(size)
        .min()
        .unwrap_or(DEFAULT_DELIVERERS)
        .clamp(1, MAX_DELIVERERS)
}

/// The wait after `attempts` failed attempts: `backoff` × 2^(attempts − 1), at most a minute.
fn backoff(backoff: Duration, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    backoff.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// True when an answer ends the task: anything but a 5xx, 408 or 429, which say "later".
fn is_final(code: StatusCode) -> bool {
    !(code.is_server_error()
        || code == StatusCode::REQUEST_TIMEOUT
        || code == StatusCode::TOO_MANY_REQUESTS)
}

// === the reader ===

/// Reads new entries for idle workers until the pool stops.
async fn read(pool: Arc<Pool>) {
    let mut stop = pool.stop.watch();
    let mut conn: Option<Conn> = None;
    let mut grouped = false;
    loop {
        // An idle worker first: nothing is read that no worker can take now. One entry per
        // read: a reader holding more idle workers through its blocking wait would keep them
        // from the caretaker's takeovers.
        let permit = tokio::select! {
            permit = pool.workers.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = stop.wait() => return,
        };
        let c = match &conn {
            Some(c) => c.clone(),
            None => match open_dedicated(&pool.link, READ_BLOCK + CALL_TIMEOUT).await {
                Ok(c) => {
                    conn = Some(c.clone());
                    c
                }
                Err(err) => {
                    pool.failed(&err);
                    drop(permit);
                    pause(&mut stop, REDIS_PAUSE).await;
                    continue;
                }
            },
        };
        if !grouped {
            grouped = pool.create_group(&c).await;
            if !grouped {
                drop(permit);
                pause(&mut stop, REDIS_PAUSE).await;
                continue;
            }
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&pool.consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&*pool.keys.stream)
            .arg(">");
        match tokio::time::timeout(READ_BLOCK + CALL_TIMEOUT, c.query::<Value>(&cmd)).await {
            Ok(Ok(value)) => {
                pool.succeeded();
                if let Some(entry) = entries(stream_entries(&value)).into_iter().next() {
                    pool.dispatch(entry, permit);
                }
            }
            Ok(Err(err)) if err.code() == Some("NOGROUP") => grouped = false,
            Ok(Err(err)) => {
                pool.failed(&err);
                drop(permit);
                pause(&mut stop, REDIS_PAUSE).await;
            }
            Err(_) => {
                pool.failed(&"no answer to XREADGROUP in time");
                // The connection may be stuck: open another.
                conn = None;
                drop(permit);
                pause(&mut stop, REDIS_PAUSE).await;
            }
        }
    }
}

/// Sleeps `d` or until the stop.
async fn pause(stop: &mut ShutdownWatch, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = stop.wait() => {}
    }
}

// === the caretaker ===

/// Promotes due retries, takes over abandoned entries, reads the figures: every [`TICK`] until
/// the pool stops.
async fn tend(pool: Arc<Pool>) {
    let mut stop = pool.stop.watch();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut swept = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.wait() => return,
        }
        let Some(conn) = pool.ops().await else {
            continue;
        };
        pool.promote(&conn).await;
        pool.take_over(&conn).await;
        pool.count(&conn).await;
        if swept.elapsed() >= CONSUMER_SWEEP {
            swept = Instant::now();
            pool.sweep(&conn).await;
        }
    }
}

// === impl Pool ===

impl Pool {
    /// The connection of non-blocking calls; `None` (after counting the failure) when it cannot
    /// be opened now.
    async fn ops(&self) -> Option<Conn> {
        let opened = self
            .ops
            .get_or_try_init(|| open_dedicated(&self.link, CALL_TIMEOUT))
            .await;
        match opened {
            Ok(conn) => Some(conn.clone()),
            Err(err) => {
                self.failed(&err);
                None
            }
        }
    }

    /// One call bounded by [`CALL_TIMEOUT`]; `None` after counting and maybe logging a failure.
    async fn call<T, F>(&self, call: F) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => {
                self.succeeded();
                Some(value)
            }
            Ok(Err(err)) => {
                self.failed(&err);
                None
            }
            Err(_) => {
                self.failed(&format_args!("no answer within {CALL_TIMEOUT:?}"));
                None
            }
        }
    }

    /// A call failed: count it; log if it is the first since calls last worked.
    fn failed(&self, error: &dyn fmt::Display) {
        self.errors.inc();
        if !self.failing.swap(true, Ordering::AcqRel) {
            tracing::warn!(route = %self.route, redis = %self.link.redacted, %error, "deferred delivery cannot reach Redis; retrying");
        }
    }

    /// A call worked: log if calls were failing.
    fn succeeded(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::AcqRel) {
            tracing::info!(route = %self.route, "deferred delivery reaches Redis again");
        }
    }

    /// Creates the consumer group (reading from the stream's start, so that tasks accepted
    /// before any deliverer ran are delivered too); true when it exists.
    async fn create_group(&self, conn: &Conn) -> bool {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&*self.keys.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match tokio::time::timeout(CALL_TIMEOUT, conn.clone().query::<Value>(&cmd)).await {
            Ok(Ok(_)) => true,
            Ok(Err(err)) if err.code() == Some("BUSYGROUP") => true,
            Ok(Err(err)) => {
                self.failed(&err);
                false
            }
            Err(_) => {
                self.failed(&"no answer to XGROUP CREATE in time");
                false
            }
        }
    }

    /// Hands `entry` to a worker holding `permit` (a task id that does not parse — not one
    /// sluice wrote — is acknowledged and dropped).
    fn dispatch(
        self: &Arc<Self>,
        (entry, id): (String, Option<TaskId>),
        permit: OwnedSemaphorePermit,
    ) {
        if !self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry.clone())
        {
            // A worker of this pool has it already (taken over from ourselves).
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            match id {
                Some(id) => pool.work(&entry, id).await,
                None => {
                    if let Some(conn) = pool.ops().await {
                        pool.ack(&conn, &entry).await;
                    }
                }
            }
            pool.held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&entry);
            drop(permit);
        });
    }

    /// Puts retries that are due back into the stream.
    async fn promote(&self, conn: &Conn) {
        let mut invocation = scripts::PROMOTE.key(&*self.keys.retry);
        invocation.key(&*self.keys.stream).arg(PROMOTE_BATCH);
        self.call(conn.clone().invoke::<i64>(&invocation)).await;
    }

    /// Takes over entries nobody refreshed for the visibility timeout, as many as there are
    /// idle workers — waiting up to a [`TICK`] for the first, in turn with the reader (the
    /// semaphore is fair), so that takeovers are not starved by a stream that is never empty.
    async fn take_over(self: &Arc<Self>, conn: &Conn) {
        let Ok(Ok(first)) = tokio::time::timeout(TICK, self.workers.clone().acquire_owned()).await
        else {
            return;
        };
        let mut permits = vec![first];
        while permits.len() < READ_BATCH {
            match self.workers.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let visibility = self.target.load().upstream.config().timeout + VISIBILITY_MARGIN;
        let from = self
            .claim_from
            .lock()
            .map_or_else(|e| e.into_inner().clone(), |c| c.clone());
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&*self.keys.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(visibility.as_millis() as u64)
            .arg(from)
            .arg("COUNT")
            .arg(permits.len());
        let Some(value) = self.call(conn.clone().query::<Value>(&cmd)).await else {
            return;
        };
        let claimed = match &value {
            Value::Array(parts) => {
                // Redis answers `0-0` once the scan has reached the end: the next starts over.
                if let Some(next) = parts.first().and_then(text) {
                    let mut from = self.claim_from.lock().unwrap_or_else(|e| e.into_inner());
                    *from = next;
                }
                parts.get(1).map(entries).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        if !claimed.is_empty() {
            tracing::info!(route = %self.route, tasks = claimed.len(), "took over deferred tasks whose deliverer went silent");
        }
        for entry in claimed {
            match permits.pop() {
                Some(permit) => self.dispatch(entry, permit),
                None => break,
            }
        }
    }

    /// Reads the figures behind the gauges.
    async fn count(&self, conn: &Conn) {
        let mut invocation = scripts::COUNTS.key(&*self.keys.stream);
        invocation
            .key(&*self.keys.retry)
            .key(&*self.keys.sending)
            .key(&*self.keys.delivered)
            .key(&*self.keys.dead);
        let Some(figures) = self
            .call(conn.clone().invoke::<Vec<i64>>(&invocation))
            .await
        else {
            return;
        };
        let [entries, retrying, sending, delivered, dead, oldest] = match figures[..] {
            [a, b, c, d, e, f] => [a, b, c, d, e, f],
            _ => return,
        };
        let values = [
            (entries + retrying - sending).max(0),
            sending,
            delivered,
            dead,
            oldest,
        ];
        for (gauge, value) in self.counts.iter().zip(values) {
            gauge.store(value, Ordering::Relaxed);
        }
        self.known.store(true, Ordering::Release);
    }

    /// Removes consumers of instances that are gone: nothing pending, idle for an hour.
    async fn sweep(&self, conn: &Conn) {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("CONSUMERS").arg(&*self.keys.stream).arg(GROUP);
        let Some(Value::Array(consumers)) = self.call(conn.clone().query::<Value>(&cmd)).await
        else {
            return;
        };
        for consumer in consumers {
            let fields = pairs(&consumer);
            let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            let name = field("name").and_then(|v| text(v));
            let pending = field("pending").and_then(|v| int(v)).unwrap_or(1);
            let idle = field("idle").and_then(|v| int(v)).unwrap_or(0);
            if let Some(name) = name {
                if name != self.consumer
                    && pending == 0
                    && u128::try_from(idle).unwrap_or(0) >= CONSUMER_IDLE.as_millis()
                {
                    let mut cmd = redis::cmd("XGROUP");
                    cmd.arg("DELCONSUMER")
                        .arg(&*self.keys.stream)
                        .arg(GROUP)
                        .arg(&name);
                    self.call(conn.clone().query::<Value>(&cmd)).await;
                }
            }
        }
    }

    /// Acknowledges and deletes `entry` without touching its task.
    async fn ack(&self, conn: &Conn, entry: &str) {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&*self.keys.stream).arg(GROUP).arg(entry);
        if self.call(conn.clone().query::<Value>(&cmd)).await.is_some() {
            let mut cmd = redis::cmd("XDEL");
            cmd.arg(&*self.keys.stream).arg(entry);
            self.call(conn.clone().query::<Value>(&cmd)).await;
        }
    }

    /// Delivers task `id` of stream entry `entry` (see the module docs).
    async fn work(self: &Arc<Self>, entry: &str, id: TaskId) {
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
        // 3. The delivery, and its outcome.
        let attempt = send(&target, &task, &id, slots).await;
        self.record(&conn, &target, entry, &id, &task, attempt)
            .await;
        drop(beating);
    }

    /// Loads task `id` and marks it `delivering`; `None` when there is nothing to send — the
    /// task is gone, ended or expired (recorded so), or Redis failed (the entry stays pending,
    /// taken over later).
    async fn start(&self, conn: &Conn, target: &Target, entry: &str, id: &TaskId) -> Option<Task> {
        let task_key = self.keys.task(id);
        let mut invocation = scripts::START.key(&task_key);
        invocation.key(&*self.keys.sending).arg(id.to_string());
        let started = self.call(conn.clone().invoke::<Value>(&invocation)).await?;
        match Started::from(started) {
            Some(Started::Ready(task)) => return Some(task),
            // A duplicate entry of a task that has ended.
            Some(Started::Ended) => self.ack(conn, entry).await,
            Some(Started::Gone) => {
                // Its record expired with its ttl: dead, nothing left to deliver.
                target.metrics.dead.inc();
                self.ack(conn, entry).await;
            }
            Some(Started::Expired { attempts, code }) => {
                let end = ("dead", attempts, code, "expired");
                self.finish(conn, target, entry, id, end).await;
            }
            None => {
                // Not a reply `START` gives: leave the entry pending (taken over later) rather
                // than drop a task on a misread.
                tracing::warn!(route = %self.route, task = %id, "unexpected reply from Redis to START; the task is left for a later attempt");
            }
        }
        None
    }

    /// Records how the attempt at `task` went: delivered, dead, or a retry after the backoff.
    async fn record(
        &self,
        conn: &Conn,
        target: &Target,
        entry: &str,
        id: &TaskId,
        task: &Task,
        attempt: Attempt,
    ) {
        let attempts = task.attempts.saturating_add(1);
        let (code, error) = match attempt {
            Attempt::Answered(code) => (Some(code.as_u16()), ""),
            Attempt::Failed(error) => (None, error),
        };
        match attempt {
            Attempt::Answered(status) if is_final(status) => {
                let end = ("delivered", attempts, code, "");
                if let Some(now) = self.finish(conn, target, entry, id, end).await {
                    let took = (now - task.accepted_ms).max(0) as f64 / 1000.0;
                    target.metrics.delivery.observe(took);
                }
            }
            _ if attempts >= target.config.attempts.get() => {
                let end = ("dead", attempts, code, error);
                self.finish(conn, target, entry, id, end).await;
            }
            _ => {
                let wait = backoff(target.config.backoff, attempts);
                let outcome = (attempts, code, error, wait);
                self.retry(conn, target, entry, id, outcome).await;
            }
        }
    }

    /// Refreshes the claim on `entry` every [`HEARTBEAT`] in a task of its own (so that the
    /// delivery is never held up by it) until aborted; the receiver resolves if another
    /// deliverer has taken the entry over.
    fn heartbeat(self: &Arc<Self>, conn: &Conn, entry: &str) -> (Beating, oneshot::Receiver<()>) {
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

    /// Records an end: `(status, attempts, code, error)`. Returns Redis' time (ms) when it did.
    async fn finish(
        &self,
        conn: &Conn,
        target: &Target,
        entry: &str,
        id: &TaskId,
        (status, attempts, code, error): (&str, u32, Option<u16>, &str),
    ) -> Option<i64> {
        let (ended, keep) = if status == "dead" {
            (&self.keys.dead, Duration::ZERO)
        } else {
            (&self.keys.delivered, DELIVERED_KEEP)
        };
        let task_key = self.keys.task(id);
        let mut invocation = scripts::FINISH.key(&task_key);
        invocation
            .key(&*self.keys.stream)
            .key(&*self.keys.sending)
            .key(&**ended)
            .key(&*self.keys.retry)
            .arg(id.to_string())
            .arg(entry)
            .arg(status)
            .arg(attempts)
            .arg(code.map_or_else(String::new, |c| c.to_string()))
            .arg(error)
            .arg(keep.as_millis() as u64);
        let answer: (i64, i64) = self.settle(conn, &invocation).await?;
        match status {
            "dead" => target.metrics.dead.inc(),
            _ => target.metrics.delivered.inc(),
        };
        if status == "dead" {
            tracing::debug!(route = %self.route, task = %id, attempts, ?code, error, "deferred task dead");
        }
        Some(answer.0)
    }

    /// Schedules the next attempt after `wait` — `(attempts, code, error, wait)` — or records the
    /// task dead when that would be past its deadline.
    async fn retry(
        &self,
        conn: &Conn,
        target: &Target,
        entry: &str,
        id: &TaskId,
        (attempts, code, error, wait): (u32, Option<u16>, &str, Duration),
    ) {
        let task_key = self.keys.task(id);
        let mut invocation = scripts::RETRY.key(&task_key);
        invocation
            .key(&*self.keys.stream)
            .key(&*self.keys.sending)
            .key(&*self.keys.retry)
            .key(&*self.keys.dead)
            .arg(id.to_string())
            .arg(entry)
            .arg(attempts)
            .arg(code.map_or_else(String::new, |c| c.to_string()))
            .arg(error)
            .arg(wait.as_millis() as u64);
        if let Some((_, retried)) = self.settle::<(i64, i64)>(conn, &invocation).await {
            if retried == 1 {
                target.metrics.retried.inc();
            } else {
                target.metrics.dead.inc();
            }
        }
    }

    /// Runs a script recording an outcome, trying [`SETTLE_TRIES`] times: the upstream has
    /// answered, and an unrecorded outcome means the task is delivered again later.
    async fn settle<T: redis::FromRedisValue>(
        &self,
        conn: &Conn,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        for attempt in 0..SETTLE_TRIES {
            if attempt > 0 {
                tokio::time::sleep(REDIS_PAUSE).await;
            }
            if let Some(value) = self.call(conn.clone().invoke::<T>(invocation)).await {
                return Some(value);
            }
        }
        tracing::warn!(route = %self.route, "could not record a deferred delivery's outcome in Redis; the task will be delivered again");
        None
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
/// not an attempt: after a short pause (doubling up to [`SLOT_PAUSE`]'s second value) the caps
/// are asked again, until they admit.
async fn take_slots(target: &Target) -> Slots {
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
async fn try_slots(target: &Target) -> Result<Slots, Rejected> {
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

/// Sends `task` upstream holding `slots`; what came of it. The answer's body is read (up to
/// [`DRAIN_MAX`]) so that the connection can be reused, then dropped.
async fn send(target: &Target, task: &Task, id: &TaskId, mut slots: Slots) -> Attempt {
    let Some(req) = request(task, id) else {
        // Not a request sluice could have stored; treated as an answer that ends it.
        return Attempt::Answered(StatusCode::BAD_REQUEST);
    };
    let sent = Instant::now();
    let result = target.upstream.send(req).await;
    let took = sent.elapsed();
    target.upstream_duration.observe(took.as_secs_f64());
    slots.record(match &result {
        Ok((res, _)) if res.status() != StatusCode::SERVICE_UNAVAILABLE => Sample::Answered(took),
        _ => Sample::Dropped,
    });
    match result {
        Ok((res, conn)) => {
            let code = res.status();
            let body = Limited::new(res.into_body(), DRAIN_MAX).collect();
            let timeout = target.upstream.config().timeout;
            if let Ok(Ok(_)) = tokio::time::timeout(timeout, body).await {
                conn.release();
            }
            Attempt::Answered(code)
        }
        Err(err) => {
            target.upstream.warn_failure(&err);
            Attempt::Failed(match err {
                UpstreamError::Timeout { .. } => "upstream-timeout",
                UpstreamError::Connect { .. } | UpstreamError::Failed { .. } => {
                    "upstream-unavailable"
                }
            })
        }
    }
}

/// The request of `task`, with `Idempotency-Key: <id>`.
fn request(task: &Task, id: &TaskId) -> Option<Request<UpstreamBody>> {
    let method = Method::from_bytes(&task.method).ok()?;
    let uri = Uri::try_from(task.target.as_slice()).ok()?;
    let mut headers = decode_headers(&task.headers);
    headers.insert(
        IDEMPOTENCY_KEY,
        HeaderValue::from_str(&id.to_string()).ok()?,
    );
    let body = if task.body.is_empty() {
        if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        UpstreamBody::Empty
    } else {
        UpstreamBody::Client(ClientBody::whole(VecDeque::from([task.body.clone()]), None))
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
        match items.first().and_then(int)? {
            0 => Some(Started::Gone),
            1 => Some(Started::Ended),
            2 => Some(Started::Expired {
                attempts: items
                    .get(2)
                    .and_then(int)
                    .and_then(|a| u32::try_from(a).ok())
                    .unwrap_or(0),
                code: items
                    .get(3)
                    .and_then(int)
                    .and_then(|c| u16::try_from(c).ok()),
            }),
            3 => {
                let mut rest = items.into_iter().skip(2);
                let mut next = || rest.next();
                let attempts = next().as_ref().and_then(int)?;
                let _deadline = next();
                let accepted_ms = next().as_ref().and_then(int)?;
                Some(Started::Ready(Task {
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    accepted_ms,
                    method: bytes(next()?),
                    target: bytes(next()?),
                    headers: bytes(next()?),
                    body: Bytes::from(bytes(next()?)),
                }))
            }
            _ => None,
        }
    }
}

/// The entries of an `XREADGROUP` reply for one stream (RESP2 array or RESP3 map).
fn stream_entries(value: &Value) -> &Value {
    static NONE: Value = Value::Nil;
    match value {
        Value::Array(streams) => match streams.first() {
            Some(Value::Array(stream)) => stream.get(1).unwrap_or(&NONE),
            _ => &NONE,
        },
        Value::Map(streams) => streams.first().map_or(&NONE, |(_, entries)| entries),
        _ => &NONE,
    }
}

/// Entry ids and their task ids, from an array of `[id, [field, value, …]]`.
fn entries(value: &Value) -> Vec<(String, Option<TaskId>)> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(parts) = item else {
                return None;
            };
            let entry = parts.first().and_then(text)?;
            let id = parts.get(1).and_then(|fields| {
                pairs(fields)
                    .into_iter()
                    .find(|(k, _)| k == "id")
                    .and_then(|(_, v)| text(v))
                    .and_then(|v| TaskId::parse(&v))
            });
            Some((entry, id))
        })
        .collect()
}

/// `[k, v, k, v, …]` (or a RESP3 map) as pairs with text keys.
fn pairs(value: &Value) -> Vec<(String, &Value)> {
    match value {
        Value::Array(flat) => flat
            .chunks_exact(2)
            .filter_map(|kv| Some((text(&kv[0])?, &kv[1])))
            .collect(),
        Value::Map(map) => map
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, v)))
            .collect(),
        _ => Vec::new(),
    }
}

/// A string reply as text.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// An integer reply, or a string of digits.
fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// A string reply's bytes (empty for anything else).
fn bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes,
        Value::SimpleString(s) => s.into_bytes(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: the wait doubles from `backoff` and never exceeds a minute; the number of
    /// deliverers follows the smaller cap within 1..=32.
    #[test]
    fn backoff_doubles_up_to_a_minute_and_deliverers_follow_the_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(1), 1), s(1));
        assert_eq!(backoff(s(1), 2), s(2));
        assert_eq!(backoff(s(1), 4), s(8));
        assert_eq!(backoff(s(1), 7), s(60));
        assert_eq!(backoff(s(50), 2), s(60));
        assert_eq!(backoff(s(1), 100), s(60));
        let cap = |n: usize| ConcurrencyConfig {
            size: CapSize::Fixed(std::num::NonZeroUsize::new(n).unwrap()),
            queue: 0,
            queue_timeout: s(1),
        };
        assert_eq!(deliverers(None, None), DEFAULT_DELIVERERS);
        assert_eq!(deliverers(Some(&cap(1)), Some(&cap(64))), 1);
        assert_eq!(deliverers(None, Some(&cap(4))), 4);
        assert_eq!(deliverers(Some(&cap(1000)), None), MAX_DELIVERERS);
    }

    /// Pins: which answers end a task (2xx, 3xx, 4xx but 408/429) and which are retried.
    #[test]
    fn final_answers() {
        for code in [200, 201, 204, 301, 400, 404, 409, 422] {
            assert!(is_final(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(!is_final(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }
}
