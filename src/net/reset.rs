//! Resetting one HTTP/2 stream from outside hyper: `RST_STREAM` (CANCEL) at the moment sluice
//! gives up on it — a response body the client accepted nothing of for `send_timeout`.
//!
//! hyper offers no handle on a stream, and an error from the response body is not enough: while
//! the client's window is zero, hyper holds one chunk and waits for capacity without polling the
//! body again, so the error would only be seen once the client reads (and would be reset as
//! INTERNAL_ERROR). What hyper does let us choose is the executor that runs each stream as a task
//! of its own. [`StreamExecutor`] runs every such task beside a [`StreamReset`], which code
//! running on the stream's task (the service's future: the pipeline) finds with
//! [`StreamReset::current`]. Pulling it drops the stream's task, and with it the stream's last
//! handles; h2 resets a stream that is still open when its last handle goes with CANCEL
//! (`maybe_cancel` in h2's `streams.rs`), discarding the DATA it had queued for it.

use std::future::Future;
use std::sync::Arc;

use hyper::rt::Executor;
use tokio::sync::Notify;

tokio::task_local! {
    /// The reset switch of the stream whose task is running.
    static RESET: StreamReset;
}

/// Spawns hyper's tasks (one per HTTP/2 stream) on tokio, each beside its [`StreamReset`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StreamExecutor;

/// Resets one HTTP/2 stream (CANCEL) when pulled, by dropping its task. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct StreamReset(Arc<Notify>);

// === impl StreamExecutor ===

impl<F> Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let reset = StreamReset::default();
        let pulled = reset.0.clone();
        tokio::spawn(RESET.scope(reset, async move {
            tokio::select! {
                _ = fut => {}
                // Dropping `fut` is the reset (see the module docs).
                () = pulled.notified() => {}
            }
        }));
    }
}

// === impl StreamReset ===

impl StreamReset {
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
