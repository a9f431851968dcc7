//! Retries: which requests may be sent again, a copy to send, and the budget that bounds them.
//!
//! - A connect failure is retried on each other endpoint for any method (nothing reached the
//!   upstream), as before; those retries count in the budget but are not refused by it.
//! - An idempotent request (GET, HEAD, OPTIONS, PUT, DELETE, or any with an `Idempotency-Key`)
//!   is also sent to another endpoint after a reset before any response byte or a 503 with
//!   `Retry-After`, up to `retry.attempts` tries in all, when the budget allows.
//! - A retry needs the request again: only a body read whole (within the buffer) can be sent
//!   twice; a body streamed past it never is.
//! - The budget: retries a second ≤ `budget` × requests a second over the last 10 s, plus
//!   [`RetryConfig::FLOOR_PER_SEC`] (so 3 retries a second are allowed from the start). Counted
//!   in ten one-second buckets of atomics, no lock: exact enough for a bound.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{Method, Request};

use crate::clock::Epoch;
use crate::config::RetryConfig;
use crate::proxy::request_body::UpstreamBody;

/// Seconds the budget looks back.
const WINDOW_SECS: u64 = 10;

/// The retry budget of one upstream.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Percent of requests that may be retries.
    percent: u64,
    /// One bucket per second of the window, by second modulo [`WINDOW_SECS`].
    buckets: [Bucket; WINDOW_SECS as usize],
    /// Time base of the buckets' seconds.
    epoch: Epoch,
}

/// Requests and retries of one second.
#[derive(Debug, Default)]
struct Bucket {
    /// The second (since the epoch, plus 1) these counts are of; 0 = none yet.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

// === impl Budget ===

impl Budget {
    /// A budget of `config.budget_percent`, empty.
    pub(crate) fn new(config: &RetryConfig) -> Self {
        Budget {
            percent: u64::from(config.budget_percent),
            buckets: Default::default(),
            epoch: Epoch::new(),
        }
    }

    /// Counts a request (its first try).
    pub(crate) fn request(&self) {
        self.bucket().requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a retry the budget must allow; false (and nothing counted) when it is spent.
    pub(crate) fn try_retry(&self) -> bool {
        let (requests, retries) = self.window();
        let floor = u64::from(RetryConfig::FLOOR_PER_SEC) * WINDOW_SECS;
        if retries * 100 >= requests * self.percent + floor * 100 {
            return false;
        }
        self.retried();
        true
    }

    /// Counts a retry that happens anyway (after a connect failure).
    pub(crate) fn retried(&self) {
        self.bucket().retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests and retries over the window.
    fn window(&self) -> (u64, u64) {
        let now = self.second();
        let live = |b: &&Bucket| now - b.second.load(Ordering::Relaxed).min(now) < WINDOW_SECS;
        self.buckets.iter().filter(live).fold((0, 0), |(q, r), b| {
            (
                q + b.requests.load(Ordering::Relaxed),
                r + b.retries.load(Ordering::Relaxed),
            )
        })
    }

    /// The bucket of this second, emptied first when it last counted an older second (two
    /// threads may both empty it: a count or two lost, which a bound can bear).
    fn bucket(&self) -> &Bucket {
        let now = self.second();
        let bucket = &self.buckets[(now % WINDOW_SECS) as usize];
        let was = bucket.second.load(Ordering::Relaxed);
        if was != now
            && bucket
                .second
                .compare_exchange(was, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.retries.store(0, Ordering::Relaxed);
        }
        bucket
    }

    /// Seconds since the epoch, plus 1.
    fn second(&self) -> u64 {
        self.epoch.now() / 1_000_000_000 + 1
    }
}

/// True when `req` may be sent twice: its method is idempotent or it has an
/// `Idempotency-Key`.
pub(crate) fn idempotent<B>(req: &Request<B>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || req.headers().contains_key("idempotency-key")
}

/// A copy of `req` to send again, when its body allows (empty, or read whole).
pub(crate) fn copy(req: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    let body = match req.body() {
        UpstreamBody::Empty => UpstreamBody::Empty,
        UpstreamBody::Client(body) => UpstreamBody::Client(body.copy()?),
    };
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Pins: 3 retries a second from the start; then `budget` of the requests of the last
    /// 10 s; old seconds leave the window.
    #[tokio::test(start_paused = true)]
    async fn the_budget_is_a_rate_over_ten_seconds_plus_three_a_second() {
        let budget = Budget::new(&RetryConfig {
            attempts: 2,
            budget_percent: 20,
        });
        let allowed = (0..100).filter(|_| budget.try_retry()).count();
        assert_eq!(allowed, 30, "3/s over the 10 s window, with no request yet");
        for _ in 0..100 {
            budget.request();
        }
        let more = (0..100).filter(|_| budget.try_retry()).count();
        assert_eq!(more, 20, "20% of 100 requests");
        tokio::time::advance(Duration::from_secs(11)).await;
        let after = (0..100).filter(|_| budget.try_retry()).count();
        assert_eq!(after, 30, "the old second left the window");
    }

    /// Which requests are idempotent.
    #[test]
    fn idempotent_methods_or_a_key() {
        let req = |m: &str| Request::builder().method(m).body(()).unwrap();
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"] {
            assert!(idempotent(&req(m)), "{m}");
        }
        assert!(!idempotent(&req("POST")));
        let keyed = Request::post("/")
            .header("idempotency-key", "k")
            .body(())
            .unwrap();
        assert!(idempotent(&keyed));
    }
}
