//! Monotonic timestamps that fit in an `AtomicU64`, for state read and written without a lock
//! on the request path (an endpoint's "down until", a connection's last activity, Redis' next
//! probe).
//!
//! Readings come from tokio's clock, so paused-time tests move them.

use std::time::Duration;

use tokio::time::Instant;

/// A time base: readings are nanoseconds since it was made, plus one, so that a stored 0 can
/// mean "never" or "not set".
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch {
    start: Instant,
}

// === impl Epoch ===

impl Epoch {
    /// A time base starting now.
    pub(crate) fn new() -> Self {
        Epoch {
            start: Instant::now(),
        }
    }

    /// The reading for now: at least 1.
    pub(crate) fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    /// The reading for `t` (1 for any time before the epoch).
    pub(crate) fn at(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.start)).saturating_add(1)
    }
}

impl Default for Epoch {
    fn default() -> Self {
        Self::new()
    }
}

/// `d` in nanoseconds, saturating at `u64::MAX` (584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whole seconds in `d`, rounded up; zero only for a zero duration.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Readings move with tokio's clock and never read 0.
    #[tokio::test(start_paused = true)]
    async fn readings_follow_tokio_time() {
        let epoch = Epoch::new();
        let first = epoch.now();
        assert!(first >= 1);
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(epoch.now() - first, 5_000_000);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::from_secs(1)), 1);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }
}
