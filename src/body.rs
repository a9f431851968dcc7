//! The body of every response sluice sends: a body sluice made itself, or the upstream's.
//!
//! An upstream's body is taken off the upstream as fast as the upstream sends it, up to
//! `server.response_buffer`, whatever the client does (NGINX's `proxy_buffering`): the request's
//! concurrency slots and its upstream connection are freed as soon as the whole body is in, so a
//! client that reads slowly — or not at all — holds no upstream capacity. Nothing waits for the
//! body before the first byte goes to the client: frames are passed on as they arrive, so
//! streaming responses (server-sent events) still stream.
//!
//! - A body that is complete when its head arrives (most small responses) is collected at once
//!   ([`Collected`]) and the slots and connection are freed before the response is sent.
//! - Any other body goes through a [`pipe`]: a task drains the upstream into a bounded buffer
//!   that the client side reads from; past `response_buffer` (or when `max_buffered_bytes` is
//!   spent) the drain waits for the client, holding the slots, as a streaming proxy does. A
//!   client that accepts no bytes for `server.send_timeout` while data waits for it is cut off:
//!   the slots, the upstream connection and the buffered bytes are freed at once, and an HTTP/2
//!   stream is reset (CANCEL) then too.

mod pipe;
pub(crate) mod stream;

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub(crate) use self::pipe::Drain;
pub use self::pipe::PipeError;
use self::pipe::{Pipe, Reader};
use self::stream::{StreamGuard, StreamReset};
use crate::budget::Reservation;
use crate::limit::Slots;
use crate::proxy::pool::Conn;

/// The body of every response sluice sends.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    /// Marks an HTTP/2 stream as active until the body is done (see `crate::body::stream`).
    stream: Option<StreamGuard>,
}

#[derive(Debug)]
enum Kind {
    /// A body sluice made (problem JSON, admin answers): up to three chunks, sent in order, so a
    /// rendered body can be completed with a few bytes without copying it. Empty chunks are
    /// skipped; `next` is the first chunk not sent yet.
    Full { parts: [Bytes; 3], next: usize },
    /// An upstream body that was complete when its head arrived, and the budget it takes until
    /// the client has it.
    Collected(Frames, Reservation),
    /// An upstream body being drained by a task.
    Piped(Reader),
}

/// Frames taken off an upstream body, in order: the first data frame apart, so that a body of
/// one frame (most small responses) needs no queue.
#[derive(Debug, Default)]
struct Frames {
    /// The first frame, when it is data (empty: none).
    first: Bytes,
    rest: VecDeque<Frame<Bytes>>,
    /// Bytes of data in all of them.
    bytes: u64,
}

/// What the upstream's body was when its head arrived.
enum Ready {
    /// Complete: these frames are all of it.
    Whole(Frames),
    /// These frames so far; more to come.
    Partly(Frames),
    /// Broken already.
    Broken,
}

// === impl ProxyBody ===

impl ProxyBody {
    /// A body sent in one frame.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::parts([bytes.into(), Bytes::new(), Bytes::new()])
    }

    /// A body made of these chunks, in order.
    pub fn parts(parts: [Bytes; 3]) -> Self {
        ProxyBody {
            kind: Kind::Full { parts, next: 0 },
            stream: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::parts([Bytes::new(), Bytes::new(), Bytes::new()])
    }

    /// The body of an upstream response: what has arrived is taken now; if that is all of it,
    /// `slots` are freed and `conn` goes back to its pool before the response is sent, else a
    /// drain task takes over (see the module docs). Must be called on a tokio runtime.
    pub(crate) fn upstream(mut body: Incoming, slots: Slots, conn: Conn, drain: Drain) -> Self {
        let kind = match ready_frames(&mut body, drain.window()) {
            Ready::Whole(frames) => {
                conn.release();
                drop(slots);
                let held = drain.account(frames.bytes);
                Kind::Collected(frames, held)
            }
            // Nothing reusable: dropping the connection closes it; the client sees the body end
            // early (hyper aborts the message).
            Ready::Broken => {
                drop((conn, slots));
                Kind::Piped(Pipe::broken())
            }
            Ready::Partly(frames) => {
                let bytes = frames.bytes;
                Kind::Piped(drain.start(body, frames.into_queue(), bytes, slots, conn))
            }
        };
        ProxyBody { kind, stream: None }
    }

    /// Keeps `guard` until this body is done or dropped — or, for a drained body, until the
    /// drain gives up on the client, so that an HTTP/2 connection whose streams are all stuck
    /// can be closed as idle; the drain then resets the stream too. Called on the stream's own
    /// task (the service's future runs there), where its [`StreamReset`] is found.
    pub(crate) fn with_stream_guard(mut self, guard: StreamGuard) -> Self {
        match &self.kind {
            Kind::Piped(pipe) => pipe.hold(guard, StreamReset::current()),
            _ => self.stream = Some(guard),
        }
        self
    }
}

/// Takes the frames of `body` that are ready now, without waiting: all of them if the body is
/// complete, else up to `limit` bytes. Polled with a waker that does nothing: whoever reads the
/// rest (the drain task) polls again with its own.
fn ready_frames(body: &mut Incoming, limit: u64) -> Ready {
    let mut cx = Context::from_waker(Waker::noop());
    let mut frames = Frames::default();
    loop {
        if body.is_end_stream() {
            return Ready::Whole(frames);
        }
        if frames.bytes > limit {
            return Ready::Partly(frames);
        }
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frames.push(frame),
            Poll::Ready(None) => return Ready::Whole(frames),
            Poll::Ready(Some(Err(_))) => return Ready::Broken,
            Poll::Pending => return Ready::Partly(frames),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = PipeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PipeError>>> {
        match &mut self.get_mut().kind {
            Kind::Full { parts, next } => {
                while let Some(part) = parts.get_mut(*next) {
                    *next += 1;
                    if !part.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(std::mem::take(part)))));
                    }
                }
                Poll::Ready(None)
            }
            Kind::Collected(frames, held) => {
                let frame = frames.pop();
                if let Some(data) = frame.as_ref().and_then(Frame::data_ref) {
                    held.shrink(data.len() as u64);
                }
                Poll::Ready(frame.map(Ok))
            }
            Kind::Piped(pipe) => pipe.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { parts, next } => parts.iter().skip(*next).all(Bytes::is_empty),
            Kind::Collected(frames, _) => frames.first.is_empty() && frames.rest.is_empty(),
            Kind::Piped(pipe) => pipe.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { parts, next } => {
                SizeHint::with_exact(parts.iter().skip(*next).map(|p| p.len() as u64).sum())
            }
            Kind::Collected(frames, _) => SizeHint::with_exact(
                frames.first.len() as u64
                    + frames
                        .rest
                        .iter()
                        .map(|f| f.data_ref().map_or(0, |d| d.len() as u64))
                        .sum::<u64>(),
            ),
            Kind::Piped(pipe) => pipe.size_hint(),
        }
    }
}

// === impl Frames ===

impl Frames {
    fn push(&mut self, frame: Frame<Bytes>) {
        let frame = match frame.into_data() {
            Ok(data) => {
                self.bytes += data.len() as u64;
                if self.first.is_empty() && self.rest.is_empty() {
                    self.first = data;
                    return;
                }
                Frame::data(data)
            }
            Err(frame) => frame,
        };
        self.rest.push_back(frame);
    }

    fn pop(&mut self) -> Option<Frame<Bytes>> {
        if self.first.is_empty() {
            self.rest.pop_front()
        } else {
            Some(Frame::data(std::mem::take(&mut self.first)))
        }
    }

    /// All of them in one queue, for the drain.
    fn into_queue(self) -> VecDeque<Frame<Bytes>> {
        let mut queue = self.rest;
        if !self.first.is_empty() {
            queue.push_front(Frame::data(self.first));
        }
        queue
    }
}
