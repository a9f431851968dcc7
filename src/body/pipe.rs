//! The drain of an upstream body: a task reads the upstream as fast as it sends, into a bounded
//! buffer the client side reads from (see [`super`] for why).
//!
//! One std `Mutex` guards the buffer: the drain pushes a frame, the client side pops one, each a
//! few field updates with no `.await` inside. The drain waits on a `Notify` for room; the client
//! side parks its waker in the state. The drain task owns the upstream body, the request's slots
//! and the upstream connection, so they are freed exactly when the drain says: the body read
//! whole (slots freed, connection back to its pool), broken, the client gone, or the client
//! stalled for `send_timeout` with data waiting (then an HTTP/2 stream is reset at once).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::stream::{StreamGuard, StreamReset};
use crate::budget::{Budget, Reservation};
use crate::limit::Slots;
use crate::proxy::pool::Conn;

/// How responses are drained: `server.response_buffer`, `server.send_timeout`, and the budget of
/// `server.max_buffered_bytes`.
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    window: u64,
    send_timeout: Duration,
    budget: Arc<Budget>,
}

/// The buffer between the drain task and the client side.
#[derive(Debug)]
pub(crate) struct Pipe {
    state: Mutex<State>,
    /// Wakes the drain when the client took a frame or went away.
    room: Notify,
}

#[derive(Debug)]
struct State {
    frames: VecDeque<Frame<Bytes>>,
    /// Data bytes in `frames`.
    bytes: u64,
    end: End,
    /// The client side's waker, while it waits for a frame.
    reader: Option<Waker>,
    /// The client side is gone (the response was dropped).
    closed: bool,
    /// When the client last took a frame (or the pipe started): `send_timeout` runs from here
    /// while data waits.
    last_taken: Instant,
    /// The budget the waiting bytes take.
    held: Option<Reservation>,
    /// Data bytes still to come out of the pipe, when the upstream announced its length.
    remaining: Option<u64>,
    /// An HTTP/2 stream's presence for the idle watchdog; let go when the drain gives up.
    stream: Option<StreamGuard>,
    /// Resets the HTTP/2 stream when the drain gives up: hyper, waiting for a window that does
    /// not come, would not poll the body to see the error.
    reset: Option<StreamReset>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// More may come.
    Open,
    /// The upstream body ended.
    Ended,
    /// The upstream broke off.
    Broken,
    /// The client accepted nothing for `send_timeout`: cut off.
    Aborted,
}

/// The client side's handle on a pipe: dropping it (the response is gone) stops the drain.
#[derive(Debug)]
pub(crate) struct Reader(Arc<Pipe>);

impl std::ops::Deref for Reader {
    type Target = Pipe;

    fn deref(&self) -> &Pipe {
        &self.0
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Why a drained body ends before its end: the client side gets this error, and hyper closes
/// the HTTP/1 connection. (An HTTP/2 stream cut for `send_timeout` is reset with CANCEL before
/// hyper sees the error: see [`StreamReset`].)
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum PipeError {
    /// The upstream broke off the response.
    #[error("the upstream broke off the response body")]
    Upstream,
    /// The client accepted no bytes for `send_timeout`.
    #[error("the client accepted no bytes within send_timeout")]
    SendTimeout,
}

/// What a wait of the drain ended with.
enum Waited {
    /// Go on.
    Ready,
    /// The client side is gone.
    Closed,
    /// The client took nothing for `send_timeout` while data waited.
    Stalled,
}

// === impl Drain ===

impl Drain {
    pub(crate) fn new(window: u64, send_timeout: Duration, budget: Arc<Budget>) -> Self {
        Drain {
            window,
            send_timeout,
            budget,
        }
    }

    /// `response_buffer`.
    pub(super) fn window(&self) -> u64 {
        self.window
    }

    /// Counts `bytes` of a body read whole in the buffering budget (past it if need be: they are
    /// read already), until the reservation is dropped or shrunk.
    pub(super) fn account(&self, bytes: u64) -> Reservation {
        self.budget.account(bytes)
    }

    /// Starts draining `body`, of which `frames` (`bytes` of data) were read already.
    pub(super) fn start(
        self,
        body: Incoming,
        frames: VecDeque<Frame<Bytes>>,
        bytes: u64,
        slots: Slots,
        conn: Conn,
    ) -> Reader {
        let held = self.budget.reserve(bytes);
        let within_budget = held.is_some();
        let remaining = body.size_hint().exact().map(|more| more + bytes);
        let pipe = Arc::new(Pipe {
            state: Mutex::new(State {
                frames,
                bytes,
                end: End::Open,
                reader: None,
                closed: false,
                last_taken: Instant::now(),
                // Read already: counted even past the maximum.
                held: Some(held.unwrap_or_else(|| self.budget.account(bytes))),
                remaining,
                stream: None,
                reset: None,
            }),
            room: Notify::new(),
        });
        tokio::spawn(self.run(pipe.clone(), body, slots, conn, !within_budget));
        Reader(pipe)
    }

    /// The drain task. `held_up`: the budget is spent, so it reads ahead only into an empty
    /// pipe (streaming, as without buffering).
    async fn run(
        self,
        pipe: Arc<Pipe>,
        mut body: Incoming,
        slots: Slots,
        conn: Conn,
        mut held_up: bool,
    ) {
        loop {
            let limit = if held_up { 0 } else { self.window };
            match pipe.wait(limit, self.send_timeout).await {
                Waited::Ready => {}
                Waited::Closed => return,
                Waited::Stalled => return pipe.abort(),
            }
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = pipe.closed() => return,
            };
            match frame {
                Some(Ok(frame)) => held_up = !pipe.push(frame),
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "upstream broke off a response body");
                    return pipe.finish(End::Broken);
                }
                None => break,
            }
        }
        // All in: the request is no longer in flight upstream.
        conn.release();
        drop(slots);
        pipe.finish(End::Ended);
        // Buffered bytes stay until the client takes them, or stalls for `send_timeout`.
        if let Waited::Stalled = pipe.wait(0, self.send_timeout).await {
            pipe.abort();
        }
    }
}

// === impl Pipe ===

impl Pipe {
    /// A pipe for a body that broke before anything could be drained.
    pub(super) fn broken() -> Reader {
        Reader(Arc::new(Pipe {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                end: End::Broken,
                reader: None,
                closed: false,
                last_taken: Instant::now(),
                held: None,
                remaining: None,
                stream: None,
                reset: None,
            }),
            room: Notify::new(),
        }))
    }

    /// Locks the state; a poisoned lock (a panic elsewhere while holding it) is recovered: the
    /// state is a queue and flags, always consistent between statements.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps an HTTP/2 stream's guard until the drain is done with the client, and its reset
    /// switch to pull if the drain gives up on it.
    pub(super) fn hold(&self, guard: StreamGuard, reset: Option<StreamReset>) {
        let mut state = self.lock();
        if state.end == End::Aborted {
            drop(state);
            if let Some(reset) = reset {
                reset.pull();
            }
            return;
        }
        state.stream = Some(guard);
        state.reset = reset;
    }

    /// The client side takes the next frame.
    pub(super) fn poll_frame(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PipeError>>> {
        let mut state = self.lock();
        if let Some(frame) = state.frames.pop_front() {
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            state.bytes -= len;
            if let Some(held) = &mut state.held {
                held.shrink(len);
            }
            if let Some(remaining) = &mut state.remaining {
                *remaining = remaining.saturating_sub(len);
            }
            state.last_taken = Instant::now();
            drop(state);
            self.room.notify_one();
            return Poll::Ready(Some(Ok(frame)));
        }
        match state.end {
            End::Ended => Poll::Ready(None),
            End::Broken => Poll::Ready(Some(Err(PipeError::Upstream))),
            End::Aborted => Poll::Ready(Some(Err(PipeError::SendTimeout))),
            End::Open => {
                match &mut state.reader {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    reader => *reader = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        let state = self.lock();
        state.frames.is_empty() && state.end == End::Ended
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        match self.lock().remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }

    /// The client side is gone (the response was dropped): the drain stops.
    fn close(&self) {
        self.lock().closed = true;
        self.room.notify_one();
    }

    /// Adds a frame; `false` when its bytes did not fit the budget (they are kept, and counted,
    /// anyway: they were read already).
    fn push(&self, frame: Frame<Bytes>) -> bool {
        let len = frame.data_ref().map_or(0, |d| d.len() as u64);
        let mut state = self.lock();
        let within = state.held.as_mut().is_some_and(|held| held.grow_past(len));
        state.frames.push_back(frame);
        state.bytes += len;
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
        within
    }

    fn finish(&self, end: End) {
        let mut state = self.lock();
        state.end = end;
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    /// Cuts the client off: drops what waits for it, lets go of its stream and resets it
    /// (HTTP/2).
    fn abort(&self) {
        let mut state = self.lock();
        state.frames.clear();
        state.bytes = 0;
        state.held = None;
        state.end = End::Aborted;
        let stream = state.stream.take();
        let reset = state.reset.take();
        let reader = state.reader.take();
        drop(state);
        drop(stream);
        tracing::debug!("client accepted no bytes within send_timeout; response aborted");
        if let Some(reset) = reset {
            reset.pull();
        }
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    /// Waits until at most `limit` bytes wait for the client (0: none), the client is gone,
    /// or it has taken nothing for `send_timeout` while data waited.
    async fn wait(&self, limit: u64, send_timeout: Duration) -> Waited {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let deadline = {
                let state = self.lock();
                if state.closed {
                    return Waited::Closed;
                }
                let waiting = state.bytes > 0 || !state.frames.is_empty();
                if !waiting || (limit > 0 && state.bytes < limit) {
                    return Waited::Ready;
                }
                state.last_taken + send_timeout
            };
            tokio::select! {
                () = &mut room => {}
                () = tokio::time::sleep_until(deadline) => {
                    let state = self.lock();
                    let waiting = state.bytes > 0 || !state.frames.is_empty();
                    if waiting && !state.closed && state.last_taken + send_timeout <= Instant::now() {
                        return Waited::Stalled;
                    }
                }
            }
        }
    }

    /// Resolves once the client side is gone.
    async fn closed(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.lock().closed {
                return;
            }
            room.await;
        }
    }
}
