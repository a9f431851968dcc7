//! The deliverers of one deferring route on one instance: a pool of at most [`MAX_DELIVERERS`]
//! workers, fed by a reader and a caretaker, all consumers `<pid>-<random>` of the route's
//! consumer group.
//!
//! - The **reader** (`reader`) reads new entries (`XREADGROUP … BLOCK`) on a connection of its
//!   own — a blocking read would hold up every call behind it on a shared one — and only as many
//!   as there are idle workers: an entry is never read that no worker can take at once.
//! - The **caretaker** (`caretaker`), every [`TICK`], puts the tasks whose next try is due back
//!   into the stream, takes over entries whose deliverer went silent for the upstream's
//!   `timeout` + [`VISIBILITY_MARGIN`] (`XAUTOCLAIM`), and reads the figures behind the
//!   `sluice_deferred_tasks` gauges. After Redis was unreachable it takes nothing over for
//!   [`RECOVERY_GRACE`]: the deliverers that kept an outcome through the outage record it first.
//! - A **worker** (`worker`) delivers one task: it waits for a slot of the route's cap and then
//!   of the upstream's at the lowest priority, so deferred work only uses capacity that live
//!   requests leave idle; marks the task `delivering`, reads its body in pieces (counted in the
//!   buffering budget), sends it, and records what came of it (`outcome`). Only then is the entry
//!   acknowledged. While it holds the entry it refreshes its claim every [`HEARTBEAT`].
//!
//! Non-blocking calls (scripts, claims, heartbeats, body pieces) share a second connection of
//! the pool, each bounded by [`CALL_TIMEOUT`]. A failing Redis costs a pause of [`REDIS_PAUSE`]
//! per loop and counts in `sluice_store_errors_total`; the log gets a line when the route's
//! deliveries start failing and one when they work again.
//!
//! Stopping (a reload that removes the route or changes the store, or shutdown) stops reading;
//! a worker still waiting for a slot puts its task back at the end of the stream; a worker
//! sending finishes and records the outcome.

mod caretaker;
mod outcome;
mod reader;
mod worker;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Counts, DeliveryTarget, Keys, TaskId};
use crate::config::{CapSize, ConcurrencyConfig};
use crate::shutdown::Shutdown;
use crate::store::{open_dedicated, Link, RedisConn, Store};

/// Most deliverers (tasks held at once) per route and instance.
pub(crate) const MAX_DELIVERERS: usize = 32;

/// Deliverers of a route with no cap at all (neither its own nor its upstream's).
const DEFAULT_DELIVERERS: usize = 8;

/// How often the caretaker runs.
pub(crate) const TICK: Duration = Duration::from_millis(500);

/// How often a worker refreshes its claim on the entry it holds.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// An entry unrefreshed for the upstream's `timeout` plus this is taken over by another
/// deliverer: with a heartbeat every second, only a deliverer that died (or stalled for
/// seconds) loses its entry; and a task whose delivery started less than that long ago is not
/// sent again (the contract's "no sooner than `timeout` + 5 s after its delivery started").
pub(crate) const VISIBILITY_MARGIN: Duration = Duration::from_secs(5);

/// After Redis was unreachable, how long Redis must answer this pool before its caretaker
/// takes over entries of silent deliverers: deliverers that kept an outcome through the outage
/// retry recording it at least every [`RECORD_PAUSE`]'s longest, so they get there first, and
/// a Redis outage alone never sends an answered task again.
pub(crate) const RECOVERY_GRACE: Duration = Duration::from_secs(5);

/// Bound on each non-blocking Redis call of the deliverers (they run off the request path).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed Redis call before a loop tries again.
const REDIS_PAUSE: Duration = Duration::from_secs(1);

/// Pauses between tries at recording an outcome while Redis fails: doubling from the first to
/// the second, until the task's deadline.
const RECORD_PAUSE: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(2));

/// A consumer with nothing pending and idle this long belongs to an instance that is gone.
const CONSUMER_IDLE: Duration = Duration::from_secs(3600);

/// The deliverers of one route on this instance. Dropping it stops them (see the module docs).
pub(crate) struct Deliveries {
    pool: Arc<Pool>,
    /// The store it reads from: a new runtime on another store needs new deliverers.
    store: Arc<Store>,
    /// The reader and the caretaker.
    loops: Mutex<Vec<JoinHandle<()>>>,
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
    target: ArcSwap<DeliveryTarget>,
    /// One permit per worker.
    workers: Arc<Semaphore>,
    /// How many workers.
    size: usize,
    /// Fired when the pool stops.
    stop: Shutdown,
    /// The connection of non-blocking calls, opened on first use.
    ops: tokio::sync::OnceCell<RedisConn>,
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
    /// Since when Redis has answered every call of this pool (`None` while it fails): the
    /// caretaker's takeovers wait for [`RECOVERY_GRACE`] of it. std Mutex: a copy in or out.
    reachable_since: Mutex<Option<Instant>>,
}

// === impl Deliveries ===

impl Deliveries {
    /// Starts the deliverers of route `route` on `spawner`, connecting where `store` does.
    pub(crate) fn start(
        route: &Arc<str>,
        store: &Arc<Store>,
        target: DeliveryTarget,
        spawner: &Handle,
    ) -> Deliveries {
        let size = deliverers(
            target.route_cap.as_ref().map(|c| c.config()),
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
            reachable_since: Mutex::new(None),
        });
        tracing::info!(route = %route, deliverers = size, consumer = %pool.consumer, "deferred delivery started");
        let loops = vec![
            spawner.spawn(reader::read(pool.clone())),
            spawner.spawn(caretaker::tend(pool.clone())),
        ];
        Deliveries {
            pool,
            store: store.clone(),
            loops: Mutex::new(loops),
        }
    }

    /// True when these deliverers read from `store`.
    pub(crate) fn serves(&self, store: &Arc<Store>) -> bool {
        Arc::ptr_eq(&self.store, store)
    }

    /// Hands the workers the route as a reload rebuilt it (its caps, upstream, `defer:`); the
    /// deliveries under way finish with what they had.
    pub(crate) fn retarget(&self, target: DeliveryTarget) {
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
        // As many as one endpoint takes: the cap grows with the fleet, the deliverers do not.
        CapSize::PerEndpoint(n) => n.get(),
    };
    [route, upstream]
        .into_iter()
        .flatten()
        .map(size)
        .min()
        .unwrap_or(DEFAULT_DELIVERERS)
        .clamp(1, MAX_DELIVERERS)
}

// === impl Pool ===

impl Pool {
    /// The connection of non-blocking calls; `None` (after counting the failure) when it cannot
    /// be opened now.
    async fn ops(&self) -> Option<RedisConn> {
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
        *self
            .reachable_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        if !self.failing.swap(true, Ordering::AcqRel) {
            tracing::warn!(route = %self.route, redis = %self.link.redacted, %error, "deferred delivery cannot reach Redis; retrying");
        }
    }

    /// A call worked: log if calls were failing.
    fn succeeded(&self) {
        self.reachable_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::AcqRel) {
            tracing::info!(route = %self.route, "deferred delivery reaches Redis again");
        }
    }

    /// True once Redis has answered this pool for [`RECOVERY_GRACE`] in a row.
    fn settled(&self) -> bool {
        self.reachable_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|since| since.elapsed() >= RECOVERY_GRACE)
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

    /// Acknowledges and deletes `entry` without touching its task.
    async fn ack(&self, conn: &RedisConn, entry: &str) {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&*self.keys.stream).arg(super::GROUP).arg(entry);
        if self
            .call(conn.clone().query::<redis::Value>(&cmd))
            .await
            .is_some()
        {
            let mut cmd = redis::cmd("XDEL");
            cmd.arg(&*self.keys.stream).arg(entry);
            self.call(conn.clone().query::<redis::Value>(&cmd)).await;
        }
    }
}

/// The entry id and task id of a stream entry (`id <task id>`); the task id `None` when it does
/// not parse.
fn entry_of(entry: &redis::streams::StreamId) -> (String, Option<TaskId>) {
    let id = entry
        .map
        .get("id")
        .and_then(super::accept::text)
        .and_then(|text| TaskId::parse(&text));
    (entry.id.clone(), id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: the number of deliverers follows the smaller cap within 1..=32.
    #[test]
    fn deliverers_follow_the_caps() {
        let s = Duration::from_secs;
        let cap = |n: usize| ConcurrencyConfig {
            size: CapSize::Fixed(std::num::NonZeroUsize::new(n).unwrap()),
            queue: 0,
            queue_timeout: s(1),
            fair_by: None,
            max_queued_per_key: None,
        };
        assert_eq!(deliverers(None, None), DEFAULT_DELIVERERS);
        assert_eq!(deliverers(Some(&cap(1)), Some(&cap(64))), 1);
        assert_eq!(deliverers(None, Some(&cap(4))), 4);
        assert_eq!(deliverers(Some(&cap(1000)), None), MAX_DELIVERERS);
    }
}
