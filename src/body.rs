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
//!   the slots, the upstream connection and the buffered bytes are freed at once.

mod pipe;

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub(crate) use self::pipe::Drain;
pub use self::pipe::PipeError;
use self::pipe::{Pipe, Reader};
use crate::budget::Reservation;
use crate::limit::Slots;
use crate::net::idle::StreamGuard;
use crate::proxy::pool::Conn;

/// The body of every response sluice sends.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    /// Marks an HTTP/2 stream as active until the body is done (see [`crate::net::idle`]).
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
    Collected(VecDeque<Frame<Bytes>>, Reservation),
    /// An upstream body being drained by a task.
    Piped(Reader),
}

/// What the upstream's body was when its head arrived.
enum Ready {
    /// Complete: these frames (`bytes` of data) are all of it.
    Whole(VecDeque<Frame<Bytes>>, u64),
    /// These frames so far; more to come.
    Partly(VecDeque<Frame<Bytes>>, u64),
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
    pub(crate) async fn upstream(
        mut body: Incoming,
        slots: Slots,
        conn: Conn,
        drain: Drain,
    ) -> Self {
        let kind = match ready_frames(&mut body, drain.window()).await {
            Ready::Whole(frames, bytes) => {
                conn.release();
                drop(slots);
                Kind::Collected(frames, drain.account(bytes))
            }
            // Nothing reusable: dropping the connection closes it; the client sees the body end
            // early (hyper aborts the message).
            Ready::Broken => {
                drop((conn, slots));
                Kind::Piped(Pipe::broken())
            }
            Ready::Partly(frames, bytes) => {
                Kind::Piped(drain.start(body, frames, bytes, slots, conn))
            }
        };
        ProxyBody { kind, stream: None }
    }

    /// Keeps `guard` until this body is done or dropped — or, for a drained body, until the
    /// drain gives up on the client, so that an HTTP/2 connection whose streams are all stuck
    /// can be closed as idle.
    pub(crate) fn with_stream_guard(mut self, guard: StreamGuard) -> Self {
        match &self.kind {
            Kind::Piped(pipe) => pipe.hold(guard),
            _ => self.stream = Some(guard),
        }
        self
    }
}

/// Takes the frames of `body` that are ready now, without waiting: all of them if the body is
/// complete, else up to `limit` bytes.
async fn ready_frames(body: &mut Incoming, limit: u64) -> Ready {
    std::future::poll_fn(|cx| {
        let mut frames = VecDeque::new();
        let mut bytes = 0u64;
        loop {
            if body.is_end_stream() {
                return Poll::Ready(Ready::Whole(frames, bytes));
            }
            if bytes > limit {
                return Poll::Ready(Ready::Partly(frames, bytes));
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                    frames.push_back(frame);
                }
                Poll::Ready(None) => return Poll::Ready(Ready::Whole(frames, bytes)),
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Ready::Broken),
                Poll::Pending => return Poll::Ready(Ready::Partly(frames, bytes)),
            }
        }
    })
    .await
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
                let frame = frames.pop_front();
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
            Kind::Collected(frames, _) => frames.is_empty(),
            Kind::Piped(pipe) => pipe.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { parts, next } => {
                SizeHint::with_exact(parts.iter().skip(*next).map(|p| p.len() as u64).sum())
            }
            Kind::Collected(frames, _) => SizeHint::with_exact(
                frames
                    .iter()
                    .map(|f| f.data_ref().map_or(0, |d| d.len() as u64))
                    .sum(),
            ),
            Kind::Piped(pipe) => pipe.size_hint(),
        }
    }
}
