//! Tests of the concurrency cap. Time is paused (`start_paused`) and moved with `advance`, and
//! futures are polled by hand, so that no test depends on the machine's speed.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::advance;

use super::*;
use crate::config::Priority::{Critical, High, Low, Normal};

/// A limit with a long queue timeout unless the test is about timeouts.
fn limit(max: usize, queue: usize, queue_timeout: Duration) -> ConcurrencyLimit {
    ConcurrencyLimit::new(ConcurrencyConfig {
        size: CapSize::Fixed(NonZeroUsize::new(max).expect("tests use max_inflight >= 1")),
        queue,
        queue_timeout,
        fair_by: None,
        max_queued_per_key: None,
    })
}

const HOUR: Duration = Duration::from_secs(3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Polls once with the test task's waker, like tokio-test's `Spawn::poll`.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

macro_rules! assert_ready {
    ($fut:expr) => {
        match poll_once(&mut $fut).await {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("`{}` is pending", stringify!($fut)),
        }
    };
}

macro_rules! assert_pending {
    ($fut:expr) => {
        assert!(
            poll_once(&mut $fut).await.is_pending(),
            "`{}` is ready",
            stringify!($fut)
        )
    };
}

/// A 1-slot cap (queue `queue`) whose slot is held by the returned permit, so the next
/// `acquire` waits.
async fn busy(queue: usize, queue_timeout: Duration) -> (ConcurrencyLimit, Permit) {
    let lim = limit(1, queue, queue_timeout);
    let held = lim
        .acquire(Normal)
        .await
        .expect("a new cap has a free slot");
    (lim, held)
}

/// A queued `acquire`, polled by hand. Boxed as `dyn` so that waiters made anywhere in a test
/// share one type (a `Vec` of them, a `for` over several).
type Waiter<'a> = Pin<Box<dyn Future<Output = Result<Permit, Rejected>> + 'a>>;

/// An `acquire` polled once and found waiting in the queue; the test polls it by hand from here.
async fn queued(lim: &ConcurrencyLimit, priority: Priority) -> Waiter<'_> {
    let mut waiter: Waiter<'_> = Box::pin(lim.acquire(priority));
    assert_pending!(waiter);
    waiter
}

/// `n` normal-priority waiters, first come first.
async fn queue_up(lim: &ConcurrencyLimit, n: usize) -> VecDeque<Waiter<'_>> {
    let mut waiters = VecDeque::with_capacity(n);
    for _ in 0..n {
        waiters.push_back(queued(lim, Normal).await);
    }
    waiters
}

/// Every test ends with nothing held and nothing queued: no slot or entry leaked.
#[track_caller]
fn assert_idle(lim: &ConcurrencyLimit) {
    assert_eq!(lim.inflight(), 0, "inflight at the end");
    assert_eq!(lim.queue_depth(), 0, "queue_depth at the end");
}

// === admission and order ===

/// Free slots are taken at once, with no wait recorded; a full cap queues.
#[tokio::test(start_paused = true)]
async fn admits_at_once_while_slots_are_free() {
    let lim = limit(2, 4, HOUR);
    let p1 = assert_ready!(Box::pin(lim.acquire(Normal))).expect("slot 1 free");
    let p2 = assert_ready!(Box::pin(lim.acquire(Low))).expect("slot 2 free");
    assert_eq!((p1.waited(), p2.waited()), (Duration::ZERO, Duration::ZERO));
    assert_eq!(lim.inflight(), 2);

    let w = queued(&lim, Critical).await;
    assert_eq!(lim.queue_depth(), 1);

    drop(w);
    drop((p1, p2));
    assert_idle(&lim);
}

/// Waiters of one priority are served in arrival order, each told how long it waited.
#[tokio::test(start_paused = true)]
async fn fifo_within_a_priority() {
    let (lim, hold) = busy(8, HOUR).await;
    let mut w1 = queued(&lim, Normal).await;
    advance(ms(100)).await;
    let mut w2 = queued(&lim, Normal).await;
    advance(ms(100)).await;
    let mut w3 = queued(&lim, Normal).await;
    advance(ms(100)).await;

    drop(hold);
    assert_pending!(w3);
    assert_pending!(w2);
    let p1 = assert_ready!(w1).expect("first in line");
    assert_eq!(p1.waited(), ms(300));

    drop(p1);
    assert_pending!(w3);
    let p2 = assert_ready!(w2).expect("second in line");
    assert_eq!(p2.waited(), ms(200));

    drop(p2);
    let p3 = assert_ready!(w3).expect("third in line");
    assert_eq!(p3.waited(), ms(100));

    drop(p3);
    assert_idle(&lim);
}

/// Higher priority is served first whatever the arrival order; FIFO among equals.
#[tokio::test(start_paused = true)]
async fn priority_order_across_priorities() {
    let lim = limit(1, 8, HOUR);
    let mut held = Some(lim.acquire(Normal).await.expect("free"));
    let mut waiters: Vec<(&str, _)> = Vec::new();
    for (name, priority) in [
        ("normal-1", Normal),
        ("low", Low),
        ("critical", Critical),
        ("normal-2", Normal),
        ("high", High),
    ] {
        let w = queued(&lim, priority).await;
        waiters.push((name, w));
    }

    let mut served = Vec::new();
    while !waiters.is_empty() {
        drop(held.take());
        let mut granted = None;
        for (i, (_, w)) in waiters.iter_mut().enumerate() {
            if let Poll::Ready(out) = poll_once(w).await {
                assert!(granted.is_none(), "one release wakes exactly one waiter");
                granted = Some((i, out.expect("granted, not rejected")));
            }
        }
        let (i, permit) = granted.expect("a release hands the slot to a waiter");
        served.push(waiters.remove(i).0);
        held = Some(permit);
    }
    assert_eq!(served, ["critical", "high", "normal-1", "normal-2", "low"]);

    drop(held);
    assert_idle(&lim);
}

/// Released permits go straight to waiters in order; `inflight` stays at the cap meanwhile.
#[tokio::test(start_paused = true)]
async fn released_permits_hand_over_in_order() {
    let lim = limit(2, 4, HOUR);
    let p1 = lim.acquire(Normal).await.expect("free");
    let p2 = lim.acquire(Normal).await.expect("free");
    let mut w1 = queued(&lim, Normal).await;
    let mut w2 = queued(&lim, Normal).await;
    let mut w3 = queued(&lim, Normal).await;
    advance(ms(50)).await;

    drop(p2);
    assert_eq!((lim.inflight(), lim.queue_depth()), (2, 2));
    let q1 = assert_ready!(w1).expect("handed p2's slot");
    assert_eq!(q1.waited(), ms(50));
    assert_pending!(w2);

    drop(p1);
    assert_eq!((lim.inflight(), lim.queue_depth()), (2, 1));
    let q2 = assert_ready!(w2).expect("handed p1's slot");
    assert_pending!(w3);

    drop(q1);
    let q3 = assert_ready!(w3).expect("handed q1's slot");
    assert_eq!((lim.inflight(), lim.queue_depth()), (2, 0));

    drop((q2, q3));
    assert_idle(&lim);
}

/// An arrival never takes a slot that was freed for a queued waiter (no barging), whatever its
/// priority.
#[tokio::test(start_paused = true)]
async fn no_barging_past_a_handed_over_slot() {
    let (lim, hold) = busy(4, HOUR).await;
    let mut w = queued(&lim, Low).await;

    drop(hold);
    let mut late = queued(&lim, Critical).await;
    assert_eq!(lim.inflight(), 1);

    let p = assert_ready!(w).expect("the slot was handed to the waiter");
    drop(p);
    let p = assert_ready!(late).expect("served after the earlier waiter");
    drop(p);
    assert_idle(&lim);
}

// === rejection and shedding ===

/// `queue: 0` rejects at once, with no history so Retry-After is queue_timeout rounded up.
#[tokio::test(start_paused = true)]
async fn queue_zero_rejects_at_once() {
    let (lim, hold) = busy(0, ms(1500)).await;
    let err = assert_ready!(Box::pin(lim.acquire(Critical))).expect_err("no queue");
    assert_eq!(
        err,
        Rejected::QueueFull {
            retry_after: Duration::from_secs(2)
        }
    );
    assert_eq!(lim.queue_depth(), 0);

    drop(hold);
    assert_idle(&lim);
}

/// A full queue rejects an arrival of equal priority and never evicts its peer.
#[tokio::test(start_paused = true)]
async fn equal_priority_never_evicts() {
    let (lim, hold) = busy(2, HOUR).await;
    let mut n1 = queued(&lim, Normal).await;
    let mut n2 = queued(&lim, Normal).await;

    let err = assert_ready!(Box::pin(lim.acquire(Normal))).expect_err("queue full");
    assert_eq!(err.reason(), "queue-full");
    assert_pending!(n1);
    assert_pending!(n2);
    assert_eq!(lim.queue_depth(), 2);

    drop((n1, n2));
    drop(hold);
    assert_idle(&lim);
}

/// A lower-priority arrival never evicts, and nothing evicts critical waiters.
#[tokio::test(start_paused = true)]
async fn lower_priority_never_evicts() {
    let (lim, hold) = busy(2, HOUR).await;
    let mut h = queued(&lim, High).await;
    let mut n = queued(&lim, Normal).await;

    for priority in [Low, Normal] {
        let err = assert_ready!(Box::pin(lim.acquire(priority))).expect_err("queue full");
        assert!(
            matches!(err, Rejected::QueueFull { .. }),
            "{priority:?}: {err:?}"
        );
    }
    assert_pending!(h);
    assert_pending!(n);
    drop((h, n));

    let c1 = queued(&lim, Critical).await;
    let c2 = queued(&lim, Critical).await;
    let err = assert_ready!(Box::pin(lim.acquire(Critical))).expect_err("queue full");
    assert!(matches!(err, Rejected::QueueFull { .. }), "{err:?}");
    assert_eq!(lim.queue_depth(), 2);

    drop((c1, c2));
    drop(hold);
    assert_idle(&lim);
}

/// A higher-priority arrival evicts the newest of the lowest-priority waiters, which gets `Shed`.
#[tokio::test(start_paused = true)]
async fn higher_priority_evicts_newest_of_lowest() {
    let (lim, mut held) = busy(3, HOUR).await;
    let mut low_old = queued(&lim, Low).await;
    let mut normal = queued(&lim, Normal).await;
    let mut low_new = queued(&lim, Low).await;

    let mut high = queued(&lim, High).await;
    let err = assert_ready!(low_new).expect_err("evicted");
    assert!(matches!(err, Rejected::Shed { .. }), "{err:?}");
    assert_eq!(err.reason(), "shed");
    assert_pending!(low_old);
    assert_eq!(lim.queue_depth(), 3);

    // The remaining order is still priority then arrival.
    for w in [&mut high, &mut normal, &mut low_old] {
        drop(held);
        held = assert_ready!(*w).expect("served");
    }
    drop(held);
    assert_idle(&lim);
}

// === timeouts and cancellation ===

/// A waiter gets `QueueTimeout` exactly at queue_timeout, leaves the queue, and takes no slot.
#[tokio::test(start_paused = true)]
async fn waiter_times_out_after_queue_timeout() {
    let (lim, hold) = busy(4, Duration::from_secs(2)).await;
    let mut w1 = queued(&lim, Normal).await;
    advance(ms(1000)).await;
    let mut w2 = queued(&lim, Normal).await;

    advance(ms(999)).await;
    assert_pending!(w1);
    advance(ms(1)).await;
    let err = assert_ready!(w1).expect_err("timed out");
    assert_eq!(
        err,
        Rejected::QueueTimeout {
            retry_after: Duration::from_secs(2)
        }
    );
    assert_eq!(err.reason(), "queue-timeout");
    assert_eq!(lim.queue_depth(), 1, "the timed-out entry is gone");

    drop(hold);
    let p = assert_ready!(w2).expect("the slot skips the timed-out waiter");
    assert_eq!(p.waited(), ms(1000));
    drop(p);
    assert_idle(&lim);
}

/// Dropping a queued `acquire` future (client gone) removes its entry at once.
#[tokio::test(start_paused = true)]
async fn dropping_a_queued_acquire_removes_it() {
    let (lim, hold) = busy(4, HOUR).await;
    let w1 = queued(&lim, High).await;
    let mut w2 = queued(&lim, Normal).await;
    assert_eq!(lim.queue_depth(), 2);

    drop(w1);
    assert_eq!(lim.queue_depth(), 1);

    drop(hold);
    let p = assert_ready!(w2).expect("next waiter served");
    drop(p);
    assert_idle(&lim);
}

/// Race: a slot handed to a waiter whose future is then dropped unpolled passes to the next one.
#[tokio::test(start_paused = true)]
async fn slot_handed_to_a_dropped_waiter_passes_on() {
    let (lim, hold) = busy(4, HOUR).await;
    let w1 = queued(&lim, Normal).await;
    let mut w2 = queued(&lim, Normal).await;

    drop(hold);
    assert_eq!(
        (lim.inflight(), lim.queue_depth()),
        (1, 1),
        "w1 owns the slot"
    );
    drop(w1);
    assert_eq!(
        (lim.inflight(), lim.queue_depth()),
        (1, 0),
        "w2 owns the slot"
    );
    let p = assert_ready!(w2).expect("slot passed on");
    drop(p);
    assert_idle(&lim);

    // With nobody else waiting, the slot is freed instead.
    let hold = lim.acquire(Normal).await.expect("free");
    let w = queued(&lim, Normal).await;
    drop(hold);
    drop(w);
    assert_idle(&lim);
}

/// Race: a slot handed over in the instant the waiter's deadline passes is taken, not lost.
#[tokio::test(start_paused = true)]
async fn slot_handed_at_the_deadline_is_not_lost() {
    let (lim, hold) = busy(4, Duration::from_secs(1)).await;
    let mut w1 = queued(&lim, Normal).await;
    advance(ms(500)).await;
    let mut w2 = queued(&lim, Normal).await;

    // w1's deadline has passed but it has not run yet when the slot is handed to it.
    advance(ms(500)).await;
    drop(hold);
    let p1 = assert_ready!(w1).expect("the hand-off won the race");
    assert_eq!(p1.waited(), ms(1000));
    assert_eq!((lim.inflight(), lim.queue_depth()), (1, 1));

    drop(p1);
    let p2 = assert_ready!(w2).expect("then the next waiter");
    drop(p2);
    assert_idle(&lim);
}

/// Race: a waiter evicted in the instant its deadline passes reports `Shed`, and leaves no entry.
#[tokio::test(start_paused = true)]
async fn shed_at_the_deadline_reports_shed() {
    let (lim, hold) = busy(1, Duration::from_secs(1)).await;
    let mut low = queued(&lim, Low).await;

    advance(ms(1000)).await;
    let mut high = queued(&lim, High).await;
    let err = assert_ready!(low).expect_err("evicted");
    assert!(matches!(err, Rejected::Shed { .. }), "{err:?}");
    assert_eq!(lim.queue_depth(), 1);

    drop(hold);
    let p = assert_ready!(high).expect("served");
    drop(p);
    assert_idle(&lim);
}

// === under load ===

/// 200 tasks on a paused clock never hold more than max_inflight slots, and all are served.
#[tokio::test(start_paused = true)]
async fn inflight_never_exceeds_max_under_contention() {
    let lim = limit(4, 200, Duration::from_secs(60));
    let holding = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (lim, holding, max_seen) = (lim.clone(), holding.clone(), max_seen.clone());
            let priority = [Low, Normal, High, Critical][i % 4];
            tokio::spawn(async move {
                let permit = lim.acquire(priority).await?;
                let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now, Ordering::SeqCst);
                assert!(lim.inflight() <= 4, "inflight {}", lim.inflight());
                tokio::time::sleep(ms(10)).await;
                holding.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
                Ok::<_, Rejected>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task panicked").expect("nobody rejected");
    }
    assert_eq!(max_seen.load(Ordering::SeqCst), 4);
    assert_idle(&lim);
}

/// The same on two worker threads with real time: the cap holds when tasks truly run in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_never_exceeds_max_on_two_threads() {
    let lim = limit(4, 200, HOUR);
    let holding = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (lim, holding, max_seen) = (lim.clone(), holding.clone(), max_seen.clone());
            tokio::spawn(async move {
                let permit = lim.acquire(Normal).await?;
                let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now, Ordering::SeqCst);
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                holding.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
                Ok::<_, Rejected>(())
            })
        })
        .collect();
    // Real time: a lost hand-over would leave a task waiting for an hour (queue_timeout), so
    // the wait for all of them is bounded instead (generous: a loaded 2-core machine).
    let all_done = async {
        for task in tasks {
            task.await.expect("task panicked").expect("nobody rejected");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all_done)
        .await
        .expect("all 200 tasks served within 30 s: a waiter was never woken");
    let max = max_seen.load(Ordering::SeqCst);
    assert!((1..=4).contains(&max), "max held at once: {max}");
    assert_idle(&lim);
}

// === Retry-After ===

/// With no drain history, Retry-After is queue_timeout rounded up to whole seconds, in 1..=60.
#[tokio::test(start_paused = true)]
async fn retry_after_without_history_is_queue_timeout() {
    for (timeout, expected) in [
        (ms(0), 1),
        (ms(1), 1),
        (ms(1500), 2),
        (ms(2000), 2),
        (ms(2001), 3),
        (Duration::from_secs(600), 60),
        (Duration::MAX, 60),
    ] {
        let lim = limit(1, 0, timeout);
        assert_eq!(
            lim.retry_after(),
            Duration::from_secs(expected),
            "{timeout:?}"
        );
        assert_idle(&lim);
    }
}

/// Keeps a 1-slot cap busy: drops `held` and hands its slot to the next waiter.
async fn release_one<F>(held: Permit, next: &mut F) -> Permit
where
    F: Future<Output = Result<Permit, Rejected>> + Unpin,
{
    drop(held);
    match poll_once(next).await {
        Poll::Ready(out) => out.expect("handed the slot"),
        Poll::Pending => panic!("the next waiter did not get the slot"),
    }
}

/// Retry-After = (queue_depth + 1) / drain rate, rounded up; a stalled cap decays to the 60 s cap;
/// a full queue's rejection carries the same value.
#[tokio::test(start_paused = true)]
async fn retry_after_follows_the_drain_rate() {
    let (lim, mut held) = busy(9, HOUR).await;
    let mut waiters = queue_up(&lim, 9).await;

    // Releases at 0.5 s, 1.0 s, 1.5 s: the window [0.5, 1.5) counted 2, so 2 per second.
    for _ in 0..3 {
        advance(ms(500)).await;
        let mut next = waiters.pop_front().expect("queued");
        held = release_one(held, &mut next).await;
    }
    assert_eq!(lim.queue_depth(), 6);
    assert_eq!(
        lim.retry_after(),
        Duration::from_secs(4),
        "(6 + 1) / 2 = 3.5"
    );

    // A queue-full rejection carries the same estimate (the queue holds 9 at most).
    for _ in 0..3 {
        waiters.push_back(queued(&lim, Normal).await);
    }
    let err = assert_ready!(Box::pin(lim.acquire(Normal))).expect_err("queue full");
    assert_eq!(err.retry_after(), lim.retry_after());
    assert_eq!(err.retry_after(), Duration::from_secs(5), "(9 + 1) / 2");

    // Stalled: busy but releasing nothing, so the estimate decays and Retry-After grows to 60 s.
    advance(Duration::from_secs(3)).await;
    let stalled = lim.retry_after();
    assert!(stalled > Duration::from_secs(5), "{stalled:?}");
    assert!(stalled < Duration::from_secs(60), "{stalled:?}");
    advance(Duration::from_secs(30)).await;
    assert_eq!(lim.retry_after(), Duration::from_secs(60));

    drop(waiters);
    drop(held);
    assert_idle(&lim);
}

/// Idle time (nothing in flight) does not decay the drain rate: the busy clock stands still.
#[tokio::test(start_paused = true)]
async fn idle_time_does_not_decay_the_drain_rate() {
    let (lim, mut held) = busy(9, HOUR).await;
    let mut waiters = queue_up(&lim, 3).await;
    for _ in 0..3 {
        advance(ms(500)).await;
        let mut next = waiters.pop_front().expect("queued");
        held = release_one(held, &mut next).await;
    }
    drop(held);
    assert_idle(&lim);

    advance(HOUR).await;
    let held = lim.acquire(Normal).await.expect("free");
    let mut waiters = queue_up(&lim, 9).await;
    assert_eq!(
        lim.retry_after(),
        Duration::from_secs(5),
        "(9 + 1) / 2, as before the idle hour"
    );

    waiters.clear();
    drop(held);
    assert_idle(&lim);
}

/// A fast drain gives the 1 s floor.
#[tokio::test(start_paused = true)]
async fn retry_after_is_at_least_one_second() {
    let lim = limit(100, 10, HOUR);
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(lim.acquire(Normal).await.expect("free"));
    }
    held.clear();
    for _ in 0..100 {
        held.push(lim.acquire(Normal).await.expect("free"));
    }
    // 100 releases in the first window: 100 per second, so 1 / 100 s, raised to 1 s.
    advance(Duration::from_secs(1)).await;
    let w = queued(&lim, Normal).await;
    assert_eq!(lim.retry_after(), Duration::from_secs(1));

    drop(w);
    drop(held);
    assert_idle(&lim);
}

// === API ===

/// `reason()` gives the contract's problem JSON reasons; `retry_after()` the carried value.
#[test]
fn rejected_reason_and_retry_after() {
    let s = Duration::from_secs(7);
    for (rejected, reason) in [
        (Rejected::QueueFull { retry_after: s }, "queue-full"),
        (Rejected::QueueTimeout { retry_after: s }, "queue-timeout"),
        (Rejected::Shed { retry_after: s }, "shed"),
    ] {
        assert_eq!(rejected.reason(), reason);
        assert_eq!(rejected.retry_after(), s);
        assert!(!rejected.to_string().is_empty());
    }
}

/// Permits and limits move across tasks; the acquire future can be spawned; Debug shows state.
#[tokio::test(start_paused = true)]
async fn public_types_are_send_and_debug() {
    fn send_static<T: Send + Sync + 'static>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let lim = limit(1, 1, HOUR);
    send_static(&lim);
    let fut = lim.acquire(Normal);
    send(&fut);
    let permit = fut.await.expect("free");
    send_static(&permit);

    assert_eq!(format!("{permit:?}"), "Permit { waited: 0ns }");
    let dbg = format!("{lim:?}");
    assert!(
        dbg.contains("inflight: 1") && dbg.contains("queue_depth: 0"),
        "{dbg}"
    );
    assert_eq!(lim.config().queue, 1);

    drop(permit);
    assert_idle(&lim);
}

// === adaptive limits ===

/// An adaptive cap (`min..=max`, queue `queue`) whose first probe has measured 20 ms, so that
/// it tracks from `min`.
fn adaptive(min: usize, max: usize, queue: usize) -> ConcurrencyLimit {
    let lim = ConcurrencyLimit::new(ConcurrencyConfig {
        size: CapSize::Adaptive(crate::config::AdaptiveConfig {
            min_inflight: NonZeroUsize::new(min).expect("tests use min >= 1"),
            max_inflight: NonZeroUsize::new(max).expect("tests use max >= 1"),
        }),
        queue,
        queue_timeout: HOUR,
        fair_by: None,
        max_queued_per_key: None,
    });
    assert_eq!(lim.limit(), min, "a new cap probes at min_inflight");
    feed(&lim, ms(20), crate::limit::adaptive::PROBE_SAMPLES);
    assert_eq!(lim.limit(), min);
    lim
}

/// `n` samples of `latency`, as if from permits admitted now (without holding them).
fn feed(lim: &ConcurrencyLimit, latency: Duration, n: usize) {
    for _ in 0..n {
        let epoch = lim
            .shared
            .lock()
            .adaptive
            .as_ref()
            .map_or(0, Adaptive::epoch);
        lim.shared.record(Sample::Answered(latency), epoch);
    }
}

/// One window of 10 samples of `latency` closed 100 ms after the last one.
async fn window(lim: &ConcurrencyLimit, latency: Duration) {
    feed(lim, latency, 9);
    advance(ms(100)).await;
    feed(lim, latency, 1);
}

/// When the adaptive limit grows, waiters get the new slots at once — best first — without
/// waiting for a release; those left wait on.
#[tokio::test(start_paused = true)]
async fn a_growing_limit_admits_waiters_at_once() {
    let lim = adaptive(2, 64, 8);
    let held: Vec<Permit> = (0..2)
        .map(|_| lim.shared.enqueue(Normal, 0))
        .map(|e| match e {
            Enqueue::Done(Ok(p)) => p,
            _ => panic!("2 free slots"),
        })
        .collect();
    let mut low = queued(&lim, Low).await;
    let mut normal = queued(&lim, Normal).await;
    let mut critical = queued(&lim, Critical).await;

    window(&lim, ms(20)).await; // 2 + √2 = 3.4
    assert_eq!(lim.limit(), 3);
    let c = assert_ready!(critical).expect("admitted by the growth");
    assert_pending!(normal);
    assert_eq!((lim.inflight(), lim.queue_depth()), (3, 2));

    window(&lim, ms(20)).await; // 3.4 + 1.8 = 5.3
    assert_eq!(lim.limit(), 5);
    let n = assert_ready!(normal).expect("admitted");
    let l = assert_ready!(low).expect("admitted");
    assert_eq!((lim.inflight(), lim.queue_depth()), (5, 0));

    // With the queue empty, the next request takes a free slot of the grown cap at once.
    window(&lim, ms(20)).await;
    let extra = assert_ready!(Box::pin(lim.acquire(Low))).expect("a free slot");
    drop((held, c, n, l, extra));
    assert_idle(&lim);
}

/// When the adaptive limit shrinks, nothing in flight is cancelled: releases free their slots
/// instead of handing them over until fewer than the new limit are in flight, and only then
/// does the best waiter get a slot. Queueing, order and the queue bound work as before.
#[tokio::test(start_paused = true)]
async fn a_shrinking_limit_cancels_nothing_and_admits_below_it() {
    let lim = adaptive(2, 64, 2);
    let mut held = Vec::new();
    while lim.limit() < 10 {
        while lim.inflight() < lim.limit() {
            held.push(assert_ready!(Box::pin(lim.acquire(Normal))).expect("a free slot"));
        }
        window(&lim, ms(20)).await;
    }
    while lim.inflight() < lim.limit() {
        held.push(assert_ready!(Box::pin(lim.acquire(Normal))).expect("a free slot"));
    }
    let before = lim.limit();
    assert_eq!(held.len(), before);
    let mut low = queued(&lim, Low).await;
    let mut high = queued(&lim, High).await;
    let full = assert_ready!(Box::pin(lim.acquire(Low))).expect_err("queue full");
    assert_eq!(full.reason(), "queue-full");

    // Latency tripled: gradient 0.5, the limit moves to ¾ of itself + ½.
    window(&lim, ms(60)).await;
    let after = lim.limit();
    assert!(after < before, "{after} < {before}");
    assert_eq!(lim.inflight(), before, "nothing cancelled");

    // Releases above the new limit free their slots; the waiters still wait.
    while lim.inflight() > after {
        drop(held.pop());
        assert_pending!(high);
        assert_pending!(low);
    }
    // At the limit, a release hands its slot to the best waiter.
    drop(held.pop());
    let h = assert_ready!(high).expect("handed over");
    assert_pending!(low);
    assert_eq!((lim.inflight(), lim.queue_depth()), (after, 1));
    drop(held.pop());
    let l = assert_ready!(low).expect("handed over");
    drop((held, h, l));
    assert_idle(&lim);
}

/// A fixed cap ignores samples, and so does a shadow permit of an adaptive cap; the limit of a
/// fixed cap is `max_inflight`.
#[tokio::test(start_paused = true)]
async fn samples_move_only_enforced_adaptive_caps() {
    let fixed = limit(3, 0, HOUR);
    let mut p = assert_ready!(Box::pin(fixed.acquire(Normal))).expect("free");
    p.record(Sample::Dropped);
    assert_eq!(fixed.limit(), 3);
    drop(p);
    assert_idle(&fixed);

    let lim = adaptive(2, 64, 0);
    let before = lim.shared.lock().adaptive.as_ref().map(Adaptive::epoch);
    for _ in 0..100 {
        let (mut permit, verdict) = lim.admit_shadow();
        assert!(verdict.is_ok());
        permit.record(Sample::Answered(ms(20)));
        advance(ms(10)).await;
    }
    assert_eq!(lim.limit(), 2);
    assert_eq!(
        lim.shared.lock().adaptive.as_ref().map(Adaptive::epoch),
        before
    );
    // An enforced permit records once, however often it is told.
    let mut p = assert_ready!(Box::pin(lim.acquire(Normal))).expect("free");
    for _ in 0..20 {
        p.record(Sample::Answered(ms(20)));
        advance(ms(10)).await;
    }
    assert_eq!(lim.limit(), 2, "one sample, no window");
    drop(p);
    assert_idle(&lim);
}

/// A shadow verdict counts against the limit in force, not `max_inflight`.
#[tokio::test(start_paused = true)]
async fn shadow_verdicts_use_the_adaptive_limit() {
    let lim = adaptive(2, 64, 1);
    let (a, va) = lim.admit_shadow();
    let (b, vb) = lim.admit_shadow();
    let (c, vc) = lim.admit_shadow();
    let (d, vd) = lim.admit_shadow();
    assert!(va.is_ok() && vb.is_ok() && vc.is_ok(), "2 slots + 1 queued");
    assert_eq!(vd.map_err(|r| r.reason()), Err("queue-full"));
    drop((a, b, c, d));
    assert_idle(&lim);
}

// === fair_by: turns across keys ===

/// A waiter of `key`, polled once and found queued.
async fn queued_as(lim: &ConcurrencyLimit, priority: Priority, key: u64) -> Waiter<'_> {
    let mut waiter: Waiter<'_> = Box::pin(lim.acquire_as(priority, key));
    assert_pending!(waiter);
    waiter
}

/// Serves the queue one slot at a time, starting from `hold`: the keys of `waiters` in the
/// order they got the slot.
async fn service_order(hold: Permit, mut waiters: Vec<(u64, Waiter<'_>)>) -> Vec<u64> {
    let mut order = Vec::new();
    drop(hold);
    while !waiters.is_empty() {
        let mut served = None;
        for (i, (key, w)) in waiters.iter_mut().enumerate() {
            if let Poll::Ready(got) = poll_once(w).await {
                served = Some((i, *key, got.expect("a slot")));
                break;
            }
        }
        let (i, key, permit) = served.expect("one waiter has the slot");
        order.push(key);
        drop(waiters.remove(i));
        drop(permit);
    }
    order
}

/// A heavy key queued 6 waiters before a light key's 2: the light key's come second and
/// fourth (turns), not seventh and eighth (arrival order). Within a key, oldest first.
#[tokio::test(start_paused = true)]
async fn keys_take_turns_within_a_priority() {
    let (lim, hold) = busy(16, HOUR).await;
    let mut waiters = Vec::new();
    for _ in 0..6 {
        waiters.push((1, queued_as(&lim, Normal, 1).await));
    }
    for _ in 0..2 {
        waiters.push((2, queued_as(&lim, Normal, 2).await));
    }
    let order = service_order(hold, waiters).await;
    assert_eq!(order, vec![1, 2, 1, 2, 1, 1, 1, 1]);
    assert_idle(&lim);
}

/// Priorities still come first: a critical waiter of the heavy key goes before a normal one
/// of the light key.
#[tokio::test(start_paused = true)]
async fn priority_before_turns() {
    let (lim, hold) = busy(16, HOUR).await;
    let waiters = vec![
        (1, queued_as(&lim, Normal, 1).await),
        (2, queued_as(&lim, Normal, 2).await),
        (3, queued_as(&lim, Critical, 1).await),
    ];
    assert_eq!(service_order(hold, waiters).await, vec![3, 1, 2]);
    assert_idle(&lim);
}

/// A key whose waiters gave up loses its turn, and a new waiter of it later gets one turn, not
/// two: the line never serves a key twice in a row while another waits.
#[tokio::test(start_paused = true)]
async fn a_key_that_left_and_came_back_has_one_turn() {
    let (lim, hold) = busy(16, HOUR).await;
    let gone = queued_as(&lim, Normal, 1).await;
    let mut waiters = vec![(2, queued_as(&lim, Normal, 2).await)];
    drop(gone);
    waiters.push((1, queued_as(&lim, Normal, 1).await));
    waiters.push((1, queued_as(&lim, Normal, 1).await));
    waiters.push((2, queued_as(&lim, Normal, 2).await));
    assert_eq!(service_order(hold, waiters).await, vec![2, 1, 2, 1]);
    assert_idle(&lim);
}

/// Thousands of keys queueing and giving up leave no memory behind (the stale turns are
/// compacted away), and a full queue sheds the heaviest key's newest waiter.
#[tokio::test(start_paused = true)]
async fn cancelled_keys_leave_nothing_and_the_heaviest_key_is_shed() {
    let (lim, hold) = busy(4, HOUR).await;
    for key in 0..5_000u64 {
        drop(queued_as(&lim, Low, key).await);
    }
    {
        let state = lim.shared.lock();
        assert_eq!(state.queue.len, 0);
        assert!(
            state.queue.line_len(0) <= 16 + 2,
            "{}",
            state.queue.line_len(0)
        );
    }
    let mut heavy1 = queued_as(&lim, Low, 7).await;
    let mut heavy2 = queued_as(&lim, Low, 7).await;
    let mut light = queued_as(&lim, Low, 8).await;
    let mut heavy3 = queued_as(&lim, Low, 7).await;
    // Full (4): a normal arrival sheds key 7's newest.
    let critical = queued_as(&lim, Normal, 9).await;
    assert!(matches!(assert_ready!(heavy3), Err(Rejected::Shed { .. })));
    assert_pending!(light);
    assert_pending!(heavy1);
    assert_pending!(heavy2);
    drop((critical, heavy1, heavy2, light, hold));
    assert_idle(&lim);
}

/// `max_queued_per_key`: a key with that many waiters gets `QueueFull` at once; another key
/// still queues.
#[tokio::test(start_paused = true)]
async fn max_queued_per_key_refuses_the_key_not_the_others() {
    let lim = ConcurrencyLimit::new(ConcurrencyConfig {
        size: CapSize::Fixed(NonZeroUsize::MIN),
        queue: 16,
        queue_timeout: HOUR,
        fair_by: Some(crate::config::KeySpec::ClientIp),
        max_queued_per_key: NonZeroUsize::new(2),
    });
    let hold = lim.acquire_as(Normal, 1).await.expect("a free slot");
    let a = queued_as(&lim, Normal, 1).await;
    let b = queued_as(&lim, Normal, 1).await;
    let third = assert_ready!(Box::pin(lim.acquire_as(High, 1)));
    assert!(
        matches!(third, Err(Rejected::QueueFull { .. })),
        "{third:?}"
    );
    let other = queued_as(&lim, Normal, 2).await;
    drop(a);
    let again = queued_as(&lim, Normal, 1).await;
    drop((b, other, again, hold));
    assert_idle(&lim);
}
