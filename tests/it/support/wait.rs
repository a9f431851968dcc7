//! Bounded waiting: poll a condition until it holds, and fail — saying what was awaited and for
//! how long — once a deadline has passed, instead of hanging the test run.
//!
//! A condition is a closure, plain or async, returning `bool` (holds or not) or `Option<T>`
//! (`Some` holds, and its value is handed back). Time is real time (`std::time::Instant`):
//! these wait for other tasks, sockets and processes, which paused tokio time does not drive.

use std::future::{self, Future};
use std::time::{Duration, Instant};

/// How often a condition that does not hold yet is polled again.
const POLL: Duration = Duration::from_millis(5);

/// Polls `condition` every few ms until it holds; returns what it returned (`()` for a `bool`).
/// An async condition that is itself still pending at the deadline counts as not holding.
///
/// # Panics
/// When `deadline` has passed and `condition` still does not hold, with `what` and the time
/// waited.
pub(crate) async fn until<M, C: Condition<M>>(
    what: &str,
    deadline: Duration,
    condition: C,
) -> C::Value {
    match within(deadline, condition).await {
        Ok(value) => value,
        Err(waited) => {
            panic!("timed out after {waited:?} (deadline {deadline:?}) waiting for {what}")
        }
    }
}

/// Like [`until`] but without the panic: `Err` with the time waited when `deadline` passes, so
/// that the caller can fail with its own diagnostics.
pub(crate) async fn within<M, C: Condition<M>>(
    deadline: Duration,
    mut condition: C,
) -> Result<C::Value, Duration> {
    let started = Instant::now();
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        // Polled at least once however little time is left (`timeout` polls before it checks).
        if let Ok(Some(value)) = tokio::time::timeout(left, condition.check()).await {
            return Ok(value);
        }
        let waited = started.elapsed();
        if waited >= deadline {
            // Whole milliseconds: the nanoseconds say nothing in a failure message.
            return Err(Duration::from_millis(waited.as_millis() as u64));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What a condition returns: whether it holds, and the value to hand back when it does.
pub(crate) trait Outcome {
    /// What [`until`] returns.
    type Value;
    /// `Some` when the condition holds.
    fn holds(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn holds(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn holds(self) -> Option<T> {
        self
    }
}

/// A closure [`until`] can poll: `FnMut() -> impl Outcome` or `FnMut() -> impl Future<Output =
/// impl Outcome>`. `M` only keeps the two implementations apart; it is always inferred.
pub(crate) trait Condition<M> {
    /// What [`until`] returns.
    type Value;
    /// Evaluates the condition once.
    fn check(&mut self) -> impl Future<Output = Option<Self::Value>>;
}

/// Marker of a plain closure ([`Condition`]'s `M`).
pub(crate) struct Plain<R>(R);

/// Marker of a closure returning a future ([`Condition`]'s `M`).
pub(crate) struct Awaited<Fut>(Fut);

impl<F, R> Condition<Plain<R>> for F
where
    F: FnMut() -> R,
    R: Outcome,
{
    type Value = R::Value;
    fn check(&mut self) -> impl Future<Output = Option<R::Value>> {
        future::ready(self().holds())
    }
}

impl<F, Fut> Condition<Awaited<Fut>> for F
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome,
{
    type Value = <Fut::Output as Outcome>::Value;
    fn check(&mut self) -> impl Future<Output = Option<Self::Value>> {
        let pending = self();
        async move { pending.await.holds() }
    }
}
