//! Concurrency caps: at most `limit` requests at once, and a bounded, priority-ordered wait
//! queue in front of them. The limit is `max_inflight`, or, for `adaptive:` caps, what
//! [`super::adaptive`] makes of the upstream's latency.
//!
//! Where it sits: after the rate limits, a request passes its route's cap, then its upstream's
//! (contract, "How sluice pushes back"). One [`ConcurrencyLimit`] exists per route cap and one per
//! upstream cap; the [`Permit`] it hands out travels with the response (and its body) and frees
//! the slot when dropped. A request that cannot get a slot gets a [`Rejected`], which the rescue
//! layer turns into a 503 with `Retry-After`.
//!
//! # Design
//!
//! - **State** is one `std::sync::Mutex` around the in-flight count and four FIFO queues, one per
//!   [`Priority`]. Every critical section is a few field updates with no `.await` inside, so a
//!   std mutex is cheaper than an async one and cannot be held across a suspension point.
//! - **Admission**: a request is admitted at once only if a slot is free *and* nobody is queued
//!   (no barging). Otherwise it joins the queue with a `oneshot` channel, the only allocation.
//! - **Hand-off**: dropping a permit does not free the slot while someone waits: under the lock it
//!   pops the best waiter (highest priority, then oldest) and sends it a new [`Permit`] for the
//!   same slot. Exactly one task is woken per release; `inflight` never drops in between.
//! - **Cancellation**: a waiter whose `acquire` future is dropped removes its own entry under the
//!   lock. If the slot was already sent to it, the permit sits in its channel and is dropped with
//!   it, and that drop hands the slot to the next waiter. Timeouts resolve the same race under the
//!   lock: a waiter whose entry is already gone takes whatever was sent to it (see [`Rejected`]).
//! - **Adaptive limit**: an adaptive cap learns from the [`Sample`] its permit is given by the
//!   pipeline ([`Permit::record`]), under the same lock. When the limit *grows*, waiters are
//!   admitted at once, best first, until the new limit is reached. When it *shrinks*, nothing in
//!   flight is cancelled: a release then frees its slot instead of handing it over, until fewer
//!   than the new limit are in flight; only then do waiters get slots again. Queue, priority,
//!   shedding and `Retry-After` work as with a fixed cap.
//! - **Shedding**: when the queue is full, an arrival of strictly higher priority than the
//!   lowest-priority waiter evicts the *most recently arrived* of the lowest-priority waiters; it
//!   has waited least, so evicting it wastes the least queueing already done and keeps FIFO
//!   fairness for the older ones. Equal or higher priority is never evicted.
//!
//! # Retry-After
//!
//! A 503 from a cap carries `(queue_depth + 1) / drain_rate` seconds, rounded up and clamped to
//! 1..=60: the time the queue ahead of a retrying client needs to drain. `drain_rate` is an
//! exponentially weighted moving average of permits released per second, measured over 1 s windows
//! (weight 1/4 for the newest window, so it follows a change within a few seconds). The windows run
//! on a *busy clock* that stops while nothing is in flight: an idle cap has nothing to drain, so
//! idleness does not decay the estimate, while a cap that is full and releases nothing (a stuck
//! upstream) sees its estimate decay and its `Retry-After` grow to the 60 s cap. Until the first
//! window completes there is no history, and `Retry-After` is `queue_timeout`, rounded up and
//! clamped the same way.

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::adaptive::{Adaptive, Sample};
use crate::clock::ceil_secs;
use crate::config::{CapSize, ConcurrencyConfig, Priority};
use queue::{WaitQueue, Waiter};

/// A concurrency cap with a bounded, priority-ordered wait queue.
///
/// Cheap to clone: clones share the same slots and queue.
#[derive(Clone)]
pub struct ConcurrencyLimit {
    /// Shared with every clone and with every outstanding [`Permit`], which must outlive a
    /// reload that drops the limit itself.
    shared: Arc<Shared>,
}

/// A slot in a [`ConcurrencyLimit`]. Dropping it frees the slot, or hands it straight to the best
/// waiter if anyone is queued.
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct Permit {
    /// The limit to give the slot back to. `None` only once the slot is accounted for elsewhere:
    /// after the drop, or for a permit that could not be delivered to a waiter, whose slot the
    /// releasing code keeps (see `Shared::release`).
    shared: Option<Arc<Shared>>,
    /// Time spent in the queue, for the `sluice_queue_wait_seconds` histogram.
    waited: Duration,
    /// A shadow-mode permit: counted in `State::shadow`, never a real slot.
    shadow: bool,
    /// The adaptive cap's epoch when the slot was granted (0 for a fixed cap): tells a probe
    /// which requests were admitted under its low limit.
    epoch: u64,
    /// A sample was given already; later ones are ignored (one request, one sample).
    recorded: bool,
}

/// Why a [`ConcurrencyLimit`] did not admit a request; all three become a 503 with
/// `Retry-After`.
///
/// A waiter whose slot (or eviction) arrives in the same instant as its `queue_timeout` takes
/// what arrived: the slot was handed over before the waiter noticed the deadline, so serving the
/// request wastes nothing, and the slot is never lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The cap was full and so was the queue (or the queue size is 0), and no waiter had a lower
    /// priority than this request.
    #[error("concurrency limit reached and its queue is full")]
    QueueFull {
        /// The `Retry-After` to send, whole seconds in 1..=60.
        retry_after: Duration,
    },
    /// The request waited `queue_timeout` without getting a slot.
    #[error("timed out waiting in the concurrency queue")]
    QueueTimeout {
        /// The `Retry-After` to send, whole seconds in 1..=60.
        retry_after: Duration,
    },
    /// The request was evicted from the queue to make room for one of higher priority.
    #[error("shed from the concurrency queue for higher-priority work")]
    Shed {
        /// The `Retry-After` to send, whole seconds in 1..=60.
        retry_after: Duration,
    },
}

/// What the limit and its permits share.
struct Shared {
    /// Fixed at construction; a reload with other parameters builds a new limit.
    config: ConcurrencyConfig,
    /// All mutable state. A std mutex is fine: every critical section is short and none contains
    /// an `.await`, so it is never held across a suspension point.
    state: Mutex<State>,
}

/// Mutable state of a limit.
///
/// Invariant: if `queue` is not empty then `inflight >= limit` — equal for a fixed cap, and
/// greater only while an adaptive limit has shrunk below the requests already in flight. Waiters
/// only join a full cap, a release hands its slot to a waiter instead of decrementing
/// `inflight` (unless `inflight` is above the limit), and a limit that grows admits waiters until
/// it is reached or the queue is empty.
struct State {
    /// Slots taken: permits alive, including ones sent to a waiter not yet polled.
    inflight: usize,
    /// The cap in force: `max_inflight`, or the adaptive limit (see `adaptive`).
    limit: usize,
    /// The adaptive cap's state; `None` for a fixed cap.
    adaptive: Option<Adaptive>,
    /// Requests waiting for a slot.
    queue: WaitQueue,
    /// Arrival number of the next waiter; orders waiters of one priority and identifies them for
    /// removal on cancellation or timeout.
    next_seq: u64,
    /// The drain-rate estimate behind `Retry-After`.
    drain: DrainRate,
    /// Shadow-mode requests in flight: counted to tell what the cap would have rejected, but
    /// never holding a real slot (enforced admission ignores them).
    shadow: usize,
}

/// The queue entry of an `acquire` future that is waiting. Dropping it (the client went away)
/// removes the entry; a permit already sent to it is dropped with `rx` and so passed on.
struct Queued<'a> {
    /// The limit whose queue holds the entry.
    shared: &'a Shared,
    /// Which level the entry is in, and under which key.
    priority: Priority,
    key: u64,
    /// Identifies the entry in that key's FIFO.
    seq: u64,
    /// When the waiter gives up; `None` if `queue_timeout` is too large to represent.
    deadline: Option<Instant>,
    /// Receives the waiter's outcome from whoever removes its entry.
    rx: oneshot::Receiver<Result<Permit, Rejected>>,
    /// The entry is known to be out of the queue; `Drop` need not take the lock.
    settled: bool,
}

/// An EWMA of permits released per second of busy time (see the module docs).
struct DrainRate {
    /// Start of the window being counted, on the busy clock; `None` until the first release.
    window_start: Option<Instant>,
    /// Releases counted in the current window.
    window_releases: u32,
    /// The average, in releases per second; `None` until the first window has completed.
    per_sec: Option<f64>,
    /// When the cap last became idle (nothing in flight). The busy clock stands still from then
    /// until the next admission, which moves `window_start` forward by the idle span.
    idle_since: Option<Instant>,
}

/// Length of one drain-rate window.
const WINDOW: Duration = Duration::from_secs(1);
/// Weight of the newest window in the drain-rate EWMA.
const ALPHA: f64 = 0.25;
/// Bounds of a `Retry-After` from a concurrency cap, in seconds (contract: 1..60 s).
const RETRY_AFTER_MIN_SECS: u64 = 1;
const RETRY_AFTER_MAX_SECS: u64 = 60;

/// The outcome of trying to join: decided at once, or queued.
enum Enqueue<'a> {
    Done(Result<Permit, Rejected>),
    Queued(Queued<'a>),
}

// === impl ConcurrencyLimit ===

impl ConcurrencyLimit {
    /// A limit with no slot taken and an empty queue.
    pub fn new(config: ConcurrencyConfig) -> Self {
        let (limit, adaptive) = match config.size {
            // A per-endpoint cap starts at one endpoint's share; its upstream sets the rest.
            CapSize::Fixed(max) | CapSize::PerEndpoint(max) => (max.get(), None),
            CapSize::Adaptive(bounds) => {
                let adaptive = Adaptive::new(bounds, Instant::now());
                (adaptive.limit(), Some(adaptive))
            }
        };
        ConcurrencyLimit {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State {
                    inflight: 0,
                    limit,
                    adaptive,
                    queue: WaitQueue::new(),
                    next_seq: 0,
                    drain: DrainRate::new(),
                    shadow: 0,
                }),
            }),
        }
    }

    /// Sets the limit of a `per_endpoint` cap (its upstream calls it as the fleet changes);
    /// waiters are admitted at once when it grows. A shrunk limit lets the requests in flight
    /// finish and admits none until they are below it. Other caps ignore it.
    pub(crate) fn set_limit(&self, limit: usize) {
        if !matches!(self.shared.config.size, CapSize::PerEndpoint(_)) {
            return;
        }
        let mut state = self.shared.lock();
        if state.limit == limit.max(1) {
            return;
        }
        state.limit = limit.max(1);
        self.shared.admit_waiters(&mut state, Instant::now());
    }

    /// The parameters this limit was built with.
    pub fn config(&self) -> &ConcurrencyConfig {
        &self.shared.config
    }

    /// Waits for a slot.
    ///
    /// Admits at once if a slot is free and nobody is queued. Otherwise the request waits in the
    /// queue, ordered by `priority` then arrival, for at most `queue_timeout`; the task sleeps
    /// until a released permit is handed to it, it is shed, or the deadline passes.
    ///
    /// Dropping the returned future while it waits removes it from the queue at once.
    ///
    /// # Errors
    ///
    /// - [`Rejected::QueueFull`] at once if the cap and the queue are full and no waiter has a
    ///   lower priority than `priority` (always, when no slot is free and `queue` is 0);
    /// - [`Rejected::QueueTimeout`] after waiting `queue_timeout`;
    /// - [`Rejected::Shed`] if a request of higher priority evicted this one from a full queue.
    pub async fn acquire(&self, priority: Priority) -> Result<Permit, Rejected> {
        self.acquire_as(priority, 0).await
    }

    /// As [`acquire`](Self::acquire), for a request of `key` (`fair_by`: a hash of the
    /// client's address or header): within its priority it waits for its key's turn, and
    /// [`Rejected::QueueFull`] comes at once when `key` already has `max_queued_per_key`
    /// waiters.
    pub async fn acquire_as(&self, priority: Priority, key: u64) -> Result<Permit, Rejected> {
        match self.shared.enqueue(priority, key) {
            Enqueue::Done(result) => result,
            Enqueue::Queued(queued) => queued.wait().await,
        }
    }

    /// Admits a request of a shadow-mode route: it never waits and is never refused, but is
    /// counted, and the verdict says whether the cap would have refused it — `QueueFull` when
    /// the requests in flight (enforced and shadow) already fill the limit in force + `queue`.
    /// Shadow permits do not take real slots: enforced admission ignores them, so trying a cap
    /// in shadow mode never makes enforcing routes wait.
    pub(crate) fn admit_shadow(&self) -> (Permit, Result<(), Rejected>) {
        let mut state = self.shared.lock();
        let config = &self.shared.config;
        let occupied = state.inflight + state.shadow;
        let verdict = if occupied < state.limit.saturating_add(config.queue) {
            Ok(())
        } else {
            Err(Rejected::QueueFull {
                retry_after: state.retry_after(config, Instant::now()),
            })
        };
        state.shadow += 1;
        let permit = Permit {
            shared: Some(Arc::clone(&self.shared)),
            waited: Duration::ZERO,
            shadow: true,
            epoch: 0,
            recorded: false,
        };
        (permit, verdict)
    }

    /// The cap in force now (the `sluice_concurrency_limit` gauge): `max_inflight` for a fixed
    /// cap; for an adaptive one, what it has learnt (`min_inflight` while it measures the
    /// upstream's no-load latency).
    pub fn limit(&self) -> usize {
        self.shared.lock().limit
    }

    /// Slots taken now (the `sluice_inflight` gauge).
    pub fn inflight(&self) -> usize {
        self.shared.lock().inflight
    }

    /// Slots taken and the cap in force, read together (the `sluice_utilization` gauge).
    pub(crate) fn inflight_and_limit(&self) -> (usize, usize) {
        let state = self.shared.lock();
        (state.inflight, state.limit)
    }

    /// Requests waiting now (the `sluice_queue_depth` gauge).
    pub fn queue_depth(&self) -> usize {
        self.shared.lock().queue.len
    }

    /// The `Retry-After` a 503 from this cap would carry now: whole seconds in 1..=60, from the
    /// drain rate (see the module docs).
    #[cfg(test)]
    pub(crate) fn retry_after(&self) -> Duration {
        self.shared
            .lock()
            .retry_after(&self.shared.config, Instant::now())
    }
}

impl fmt::Debug for ConcurrencyLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("ConcurrencyLimit")
            .field("size", &self.shared.config.size)
            .field("limit", &state.limit)
            .field("adaptive", &state.adaptive)
            .field("queue", &self.shared.config.queue)
            .field("queue_timeout", &self.shared.config.queue_timeout)
            .field("inflight", &state.inflight)
            .field("queue_depth", &state.queue.len)
            .finish()
    }
}

// === impl Shared ===

impl Shared {
    /// Locks the state. A panic while it was held cannot leave it half-updated in a way that
    /// matters more than refusing all traffic would, so a poisoned lock is recovered.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits, rejects, or queues a request: everything `acquire` does before it may wait, in one
    /// critical section.
    fn enqueue(self: &Arc<Self>, priority: Priority, key: u64) -> Enqueue<'_> {
        let mut state = self.lock();
        let state = &mut *state;

        // Fast path: no allocation, and no clock read unless the cap was idle.
        if state.inflight < state.limit && state.queue.len == 0 {
            if state.inflight == 0 {
                state.drain.on_busy(Instant::now());
            }
            state.inflight += 1;
            return Enqueue::Done(Ok(self.permit(state, Duration::ZERO)));
        }
        debug_assert!(
            state.inflight >= state.limit,
            "waiters exist only while the cap is full"
        );

        let now = Instant::now();
        if let Err(refused) = self.make_room(state, priority, key, now) {
            return Enqueue::Done(Err(refused));
        }

        let (tx, rx) = oneshot::channel();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.queue.push(
            priority,
            key,
            Waiter {
                seq,
                enqueued_at: now,
                tx,
            },
        );
        Enqueue::Queued(Queued {
            shared: self,
            priority,
            key,
            seq,
            deadline: now.checked_add(self.config.queue_timeout),
            rx,
            settled: false,
        })
    }

    /// Room in the queue for a waiter of `priority` and `key`: there is some, or a waiter of
    /// lower priority is shed to make it; `QueueFull` when `key` has `max_queued_per_key`
    /// waiters already, or the queue is full of equal or higher priority.
    fn make_room(
        &self,
        state: &mut State,
        priority: Priority,
        key: u64,
        now: Instant,
    ) -> Result<(), Rejected> {
        let key_full = self
            .config
            .max_queued_per_key
            .is_some_and(|max| state.queue.queued_for(key) >= max.get());
        if key_full {
            let retry_after = state.retry_after(&self.config, now);
            return Err(Rejected::QueueFull { retry_after });
        }
        if state.queue.len < self.config.queue {
            return Ok(());
        }
        let retry_after = state.retry_after(&self.config, now);
        match state.queue.lowest_priority() {
            Some(lowest) if priority > lowest => {
                if let Some(victim) = state.queue.pop_newest_of_lowest() {
                    // A send fails only if the victim's receiver is gone, and then it has
                    // nothing left to tell.
                    let _ = victim.tx.send(Err(Rejected::Shed { retry_after }));
                }
                Ok(())
            }
            _ => Err(Rejected::QueueFull { retry_after }),
        }
    }

    /// A permit for a slot just taken (`inflight` already counts it).
    fn permit(self: &Arc<Self>, state: &State, waited: Duration) -> Permit {
        Permit {
            shared: Some(Arc::clone(self)),
            waited,
            shadow: false,
            epoch: state.adaptive.as_ref().map_or(0, Adaptive::epoch),
            recorded: false,
        }
    }

    /// Gives a slot back: hands it to the best live waiter, or frees it if nobody waits or an
    /// adaptive limit has shrunk below the requests in flight.
    fn release(self: &Arc<Self>) {
        let mut state = self.lock();
        let now = Instant::now();
        if state.inflight > state.limit || !self.hand_over(&mut state, now) {
            state.inflight = state.inflight.saturating_sub(1);
        }
        let inflight = state.inflight;
        state.drain.on_release(now, inflight);
    }

    /// Sends a slot already counted in `inflight` to the best live waiter; `false` if nobody
    /// waits (the slot is still the caller's).
    fn hand_over(self: &Arc<Self>, state: &mut State, now: Instant) -> bool {
        while let Some(waiter) = state.queue.pop_best() {
            let permit = self.permit(state, now.saturating_duration_since(waiter.enqueued_at));
            match waiter.tx.send(Ok(permit)) {
                // The slot now belongs to the waiter.
                Ok(()) => return true,
                // The waiter's receiver is gone (it cannot be, as a waiter removes its entry
                // before dropping it, but if it were): the slot is still ours, try the next one.
                // The undelivered permit must not run its `Drop` under this lock.
                Err(Ok(mut undelivered)) => undelivered.shared = None,
                Err(Err(_)) => {}
            }
        }
        false
    }

    /// Feeds an adaptive cap a sample of a request admitted in `epoch`, and admits waiters at
    /// once if the limit grew.
    fn record(self: &Arc<Self>, sample: Sample, epoch: u64) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(adaptive) = state.adaptive.as_mut() else {
            return;
        };
        let now = Instant::now();
        adaptive.on_sample(now, sample, epoch, state.inflight);
        state.limit = adaptive.limit();
        self.admit_waiters(state, now);
    }

    /// Waiters exist only while the cap is full: a grown limit has room for some of them,
    /// admitted now.
    fn admit_waiters(self: &Arc<Self>, state: &mut State, now: Instant) {
        while state.inflight < state.limit && state.queue.len > 0 {
            state.inflight += 1;
            if !self.hand_over(state, now) {
                state.inflight -= 1;
            }
        }
    }
}

// === impl State ===

impl State {
    /// See [`ConcurrencyLimit::retry_after`].
    fn retry_after(&mut self, config: &ConcurrencyConfig, now: Instant) -> Duration {
        self.drain.roll(now);
        let secs = match self.drain.per_sec {
            None => ceil_secs(config.queue_timeout),
            Some(rate) => {
                // The small epsilon keeps an exact quotient such as 10 / 2.0 from rounding up to
                // the next second through float error.
                let secs = (self.queue.len as f64 + 1.0) / rate - 1e-9;
                if secs.is_finite() {
                    // `as` saturates, and a negative value becomes 0 (then clamped to 1).
                    secs.ceil() as u64
                } else {
                    RETRY_AFTER_MAX_SECS
                }
            }
        };
        Duration::from_secs(secs.clamp(RETRY_AFTER_MIN_SECS, RETRY_AFTER_MAX_SECS))
    }
}

// === impl Queued ===

impl Queued<'_> {
    /// Waits for a permit, an eviction, or the deadline.
    async fn wait(mut self) -> Result<Permit, Rejected> {
        let sleep = self.deadline.map(tokio::time::sleep_until);
        tokio::pin!(sleep);
        let rx = &mut self.rx;
        // The deadline is checked first, so that a deadline and an outcome in the same instant
        // always take the one path that settles the race under the lock, below.
        let received = poll_fn(|cx| {
            if let Some(sleep) = sleep.as_mut().as_pin_mut() {
                if sleep.poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
            }
            Pin::new(&mut *rx).poll(cx).map(Some)
        })
        .await;

        match received {
            Some(Ok(outcome)) => {
                self.settled = true;
                outcome
            }
            // Senders are dropped without sending only by the waiter itself, after this future;
            // treat a broken invariant as a timeout rather than panic in production.
            Some(Err(_closed)) => {
                debug_assert!(false, "a waiter's sender was dropped without an outcome");
                self.give_up()
            }
            None => self.give_up(),
        }
    }

    /// The deadline passed: leave the queue, unless an outcome was sent first.
    fn give_up(&mut self) -> Result<Permit, Rejected> {
        let mut state = self.shared.lock();
        self.settled = true;
        if state.queue.remove(self.priority, self.key, self.seq) {
            let retry_after = state.retry_after(&self.shared.config, Instant::now());
            return Err(Rejected::QueueTimeout { retry_after });
        }
        drop(state);
        // The entry was removed by a release or an eviction, which sent the outcome under the
        // lock before we took it: it is in the channel.
        match self.rx.try_recv() {
            Ok(outcome) => outcome,
            Err(_) => {
                let retry_after = self
                    .shared
                    .lock()
                    .retry_after(&self.shared.config, Instant::now());
                Err(Rejected::QueueTimeout { retry_after })
            }
        }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.shared
                .lock()
                .queue
                .remove(self.priority, self.key, self.seq);
        }
        // The lock is released here; `rx` is dropped after this body. If a permit was sent to
        // this waiter before it could remove its entry, that drop hands the slot on.
    }
}

// === impl DrainRate ===

impl DrainRate {
    fn new() -> Self {
        DrainRate {
            window_start: None,
            window_releases: 0,
            per_sec: None,
            idle_since: None,
        }
    }

    /// Counts a released permit; `inflight` is the count after the release.
    fn on_release(&mut self, now: Instant, inflight: usize) {
        if self.window_start.is_none() {
            self.window_start = Some(now);
        } else {
            self.roll(now);
        }
        self.window_releases = self.window_releases.saturating_add(1);
        if inflight == 0 {
            self.idle_since = Some(now);
        }
    }

    /// The cap takes work again after being idle: restart the busy clock.
    fn on_busy(&mut self, now: Instant) {
        if let (Some(idle), Some(start)) = (self.idle_since.take(), self.window_start.as_mut()) {
            *start += now.saturating_duration_since(idle);
        }
    }

    /// Folds every window that has ended by `now` into the average: the counted one, then one
    /// empty window (a decay by `1 - ALPHA`) for each further whole window of busy time.
    fn roll(&mut self, now: Instant) {
        let Some(start) = self.window_start else {
            return;
        };
        // While idle, the busy clock stands at the moment the cap became idle.
        let now = self.idle_since.map_or(now, |idle| idle.min(now));
        let elapsed = now.saturating_duration_since(start);
        let windows = elapsed.as_nanos() / WINDOW.as_nanos();
        if windows == 0 {
            return;
        }
        let counted = f64::from(self.window_releases) / WINDOW.as_secs_f64();
        let rate = match self.per_sec {
            None => counted,
            Some(rate) => ALPHA * counted + (1.0 - ALPHA) * rate,
        };
        let empty = i32::try_from(windows - 1).unwrap_or(i32::MAX);
        self.per_sec = Some(rate * (1.0 - ALPHA).powi(empty));
        let into_window = elapsed.as_nanos() % WINDOW.as_nanos();
        // `into_window` < 1 s, so the conversion and the subtraction cannot fail.
        self.window_start = Some(now - Duration::from_nanos(into_window as u64));
        self.window_releases = 0;
    }
}

// === impl Permit ===

impl Permit {
    /// Time spent queued; zero if the request was admitted at once.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Tells the cap what became of the request (the pipeline calls it when the upstream's
    /// response head arrives, or the exchange failed). An adaptive cap learns from it (see
    /// [`super::adaptive`]); a fixed cap, a shadow permit, or a second call ignores it. Takes
    /// the cap's lock only for an adaptive cap.
    pub fn record(&mut self, sample: Sample) {
        if self.recorded || self.shadow {
            return;
        }
        self.recorded = true;
        if let Some(shared) = &self.shared {
            if matches!(shared.config.size, CapSize::Adaptive(_)) {
                shared.record(sample, self.epoch);
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            if self.shadow {
                let mut state = shared.lock();
                state.shadow = state.shadow.saturating_sub(1);
            } else {
                shared.release();
            }
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("waited", &self.waited)
            .finish()
    }
}

// === impl Rejected ===

impl Rejected {
    /// The `Retry-After` to send with the 503: whole seconds in 1..=60.
    pub fn retry_after(&self) -> Duration {
        match *self {
            Rejected::QueueFull { retry_after }
            | Rejected::QueueTimeout { retry_after }
            | Rejected::Shed { retry_after } => retry_after,
        }
    }

    /// The problem JSON `reason`: `queue-full`, `queue-timeout` or `shed`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::QueueFull { .. } => "queue-full",
            Rejected::QueueTimeout { .. } => "queue-timeout",
            Rejected::Shed { .. } => "shed",
        }
    }
}

mod queue;
#[cfg(test)]
mod tests;
