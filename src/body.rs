//! The body of every response sluice sends: either a small body sluice made itself, or the
//! upstream's body streamed frame by frame, carrying the concurrency slots the request holds
//! so they are released exactly when the body ends or the client goes away.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

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
    /// The upstream's body, streamed.
    Upstream {
        body: Incoming,
        /// Released when the body has been sent whole, fails, or is dropped (client gone).
        slots: Option<Slots>,
        /// The upstream connection, back to its pool once the body has been read whole.
        conn: Option<Conn>,
    },
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

    /// Streams an upstream body, holding `slots` until it ends; `conn` returns to its pool
    /// when the body has been read whole (at once if it is empty).
    pub(crate) fn upstream(body: Incoming, slots: Option<Slots>, conn: Conn) -> Self {
        let conn = if body.is_end_stream() {
            conn.release();
            None
        } else {
            Some(conn)
        };
        ProxyBody {
            kind: Kind::Upstream { body, slots, conn },
            stream: None,
        }
    }
}

impl ProxyBody {
    /// Keeps `guard` until this body is done or dropped.
    pub(crate) fn with_stream_guard(mut self, guard: StreamGuard) -> Self {
        self.stream = Some(guard);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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
            Kind::Upstream { body, slots, conn } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => {
                        // The response is complete: the request is no longer in flight, and its
                        // connection can serve the next one.
                        slots.take();
                        if let Some(conn) = conn.take() {
                            conn.release();
                        }
                    }
                    Poll::Ready(Some(Ok(frame))) if body.is_end_stream() && frame.is_data() => {
                        // Last frame of a sized body: done without waiting for one more poll.
                        slots.take();
                        if let Some(conn) = conn.take() {
                            conn.release();
                        }
                    }
                    // Broken: the connection is not reusable; dropping it closes it.
                    Poll::Ready(Some(Err(_))) => {
                        slots.take();
                        conn.take();
                    }
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { parts, next } => parts.iter().skip(*next).all(Bytes::is_empty),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { parts, next } => {
                SizeHint::with_exact(parts.iter().skip(*next).map(|p| p.len() as u64).sum())
            }
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}
