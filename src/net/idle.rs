//! The HTTP/2 idle watchdog: open streams of one connection and when the last one ended.
//!
//! HTTP/1 connections are cut by hyper's header timeout when idle; HTTP/2 has no such timer, so
//! [`crate::net::server`] closes a connection that has had no open stream for
//! `header_read_timeout` (NGINX's `keepalive_timeout` for HTTP/2). A [`StreamGuard`] rides in
//! each response body, so a stream counts as open until its body is done.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{nanos, Epoch};

/// Open streams of one connection and when the last one ended.
#[derive(Debug)]
pub(crate) struct Activity {
    open: AtomicUsize,
    /// When a stream last ended (or the connection started), on `epoch`.
    last: AtomicU64,
    epoch: Epoch,
}

/// Counts an HTTP/2 stream as open until dropped (it rides in the response body).
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<Activity>);

// === impl Activity ===

impl Activity {
    pub(crate) fn new() -> Self {
        let epoch = Epoch::new();
        Activity {
            open: AtomicUsize::new(0),
            last: AtomicU64::new(epoch.now()),
            epoch,
        }
    }

    /// Resolves once no stream has been open for `timeout`. Checks a few times per timeout:
    /// a timer per connection, not per stream.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        let step = (timeout / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(step).await;
            let idle = self.open.load(Ordering::Acquire) == 0
                && self
                    .epoch
                    .now()
                    .saturating_sub(self.last.load(Ordering::Acquire))
                    >= nanos(timeout);
            if idle {
                return;
            }
        }
    }
}

// === impl StreamGuard ===

impl StreamGuard {
    /// Counts a stream of `activity` as open until the guard is dropped.
    pub(crate) fn enter(activity: &Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(activity.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.last.store(self.0.epoch.now(), Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}
