//! What a response body holds for its HTTP/2 stream: a mark that the stream is open (so that
//! the connection's idle watchdog in `crate::net::server` does not close it), and the switch
//! that resets the stream (`RST_STREAM` CANCEL) when sluice gives up on it.
//!
//! **Activity.** HTTP/1 connections are cut by hyper's header timeout when idle; HTTP/2 has no
//! such timer, so the server closes a connection that has had no open stream for
//! `header_read_timeout` (NGINX's `keepalive_timeout` for HTTP/2). A [`StreamGuard`] rides in
//! each response body, so a stream counts as open until its body is done.
//!
//! **Reset.** hyper offers no handle on a stream, and an error from the response body is not
//! enough: while the client's window is zero, hyper holds one chunk and waits for capacity without
//! polling the body again, so the error would only be seen once the client reads (and would be
//! reset as INTERNAL_ERROR). What hyper does let us choose is the executor that runs each stream
//! as a task of its own: the server's executor runs every such task inside [`StreamReset::scope`],
//! beside a [`StreamReset`] that code running on the stream's task (the pipeline) finds with
//! [`StreamReset::current`]. Pulling it drops the stream's task, and with it the stream's last
//! handles; h2 resets a stream that is still open when its last handle goes with CANCEL
//! (`maybe_cancel` in h2's `streams.rs`), discarding the DATA it had queued for it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::rt::Executor;
use tokio::sync::Notify;

use crate::clock::{nanos, Epoch};

/// Spawns hyper's tasks (one per HTTP/2 stream) on tokio, each inside [`StreamReset::scope`]:
/// the executor of the server's HTTP settings.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StreamExecutor;

tokio::task_local! {
    /// The reset switch of the stream whose task is running.
    static RESET: StreamReset;
}

/// Open streams of one connection and when the last one ended.
#[derive(Debug)]
pub(crate) struct Activity {
    open: AtomicUsize,
    /// Of the open streams, those upgraded (an HTTP/2 WebSocket, RFC 8441): they keep the
    /// connection open, but are no request in flight.
    tunnels: AtomicUsize,
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
            tunnels: AtomicUsize::new(0),
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

    /// The guard of a stream that now carries an upgraded connection (HTTP/2 WebSocket).
    pub(crate) fn into_tunnel(self) -> TunnelGuard {
        self.0.tunnels.fetch_add(1, Ordering::AcqRel);
        TunnelGuard(self)
    }
}

/// A [`StreamGuard`] of a stream upgraded to a tunnel: still an open stream (the idle
/// watchdog leaves the connection open), counted apart from requests.
#[derive(Debug)]
pub(crate) struct TunnelGuard(StreamGuard);

impl TunnelGuard {
    /// Resolves once every open stream of the connection is a tunnel: no request is in flight
    /// on it any more (checked every 50 ms: only waited for at shutdown).
    pub(crate) async fn only_tunnels(&self) {
        let activity = &(self.0).0;
        loop {
            let open = activity.open.load(Ordering::Acquire);
            if open <= activity.tunnels.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        (self.0).0.tunnels.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.last.store(self.0.epoch.now(), Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resets one HTTP/2 stream (CANCEL) when pulled, by dropping its task. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct StreamReset(Arc<Notify>);

// === impl StreamReset ===

impl StreamReset {
    /// Runs `fut` (an HTTP/2 stream's task) so that pulling the returned switch drops it: the
    /// stream is reset (see the module docs).
    pub(crate) fn scope<F: Future>(fut: F) -> impl Future<Output = ()> {
        let reset = StreamReset::default();
        let pulled = reset.0.clone();
        RESET.scope(reset, async move {
            tokio::select! {
                _ = fut => {}
                // Dropping `fut` is the reset.
                () = pulled.notified() => {}
            }
        })
    }

    /// The switch of the HTTP/2 stream whose task runs the caller; `None` elsewhere (an HTTP/1
    /// request runs on its connection's task).
    pub(crate) fn current() -> Option<StreamReset> {
        RESET.try_with(StreamReset::clone).ok()
    }

    /// Resets the stream now: its task is woken and drops it. Pulling again changes nothing.
    pub(crate) fn pull(&self) {
        // `notify_one` keeps a permit when the task is not waiting yet: the pull is not lost.
        self.0.notify_one();
    }
}

// === impl StreamExecutor ===

impl<F> Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(StreamReset::scope(fut));
    }
}
