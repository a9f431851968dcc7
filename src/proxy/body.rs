//! Body types that stream in both directions.
//!
//! [`ProxyBody`] is what clients receive: either a small body sluice made itself, or the
//! upstream's body streamed frame by frame, carrying the concurrency slots the request holds
//! so they are released exactly when the body ends or the client goes away.
//!
//! [`UpstreamBody`] is what upstreams receive. Its `Deferred` form lets a request be retried on
//! another endpoint when the connection was refused: the client body is only handed over when
//! the upstream connection asks for the first frame, so a refused connect leaves it untouched.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::limit::Slots;

/// The body of every response sluice sends.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A body sluice made (problem JSON, demo answers): sent in one frame.
    Full(Option<Bytes>),
    /// The upstream's body, streamed.
    Upstream {
        body: Incoming,
        /// Released when the body has been sent whole, fails, or is dropped (client gone).
        slots: Option<Slots>,
    },
}

// === impl ProxyBody ===

impl ProxyBody {
    /// A body sent in one frame.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody {
            kind: Kind::Full(Some(bytes.into())),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody {
            kind: Kind::Full(None),
        }
    }

    /// Streams an upstream body, holding `slots` until it ends.
    pub fn upstream(body: Incoming, slots: Option<Slots>) -> Self {
        ProxyBody {
            kind: Kind::Upstream { body, slots },
        }
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
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { body, slots } => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(None | Some(Err(_))) = &polled {
                    // The response is complete (or broken): the request is no longer in flight.
                    slots.take();
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

/// The body of every request sent upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// No body (GET, or a body that is already known to be empty).
    Empty,
    /// The client's body, streamed.
    Stream(Incoming),
    /// The client's body, taken from the shared slot on the first poll; until then the
    /// caller can take it back for a retry.
    Deferred(DeferredBody),
}

/// A client body parked in a slot until the upstream connection wants it.
#[derive(Debug)]
pub struct DeferredBody {
    slot: Arc<Mutex<Option<Incoming>>>,
    hint: SizeHint,
    taken: Option<Incoming>,
}

// === impl UpstreamBody ===

impl UpstreamBody {
    /// Wraps `body` so that it can be recovered if it is never polled; returns the handle that
    /// recovers it.
    pub fn deferred(body: Incoming) -> (Self, BodySlot) {
        let hint = body.size_hint();
        let slot = Arc::new(Mutex::new(Some(body)));
        (
            UpstreamBody::Deferred(DeferredBody {
                slot: slot.clone(),
                hint,
                taken: None,
            }),
            BodySlot(slot),
        )
    }
}

/// Gives back a deferred body that the upstream never started to read.
#[derive(Debug)]
pub struct BodySlot(Arc<Mutex<Option<Incoming>>>);

impl BodySlot {
    /// The body, if no upstream connection has taken it.
    pub fn take(&self) -> Option<Incoming> {
        // std Mutex: held for a pointer move, never across an await.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Stream(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::Deferred(d) => {
                if d.taken.is_none() {
                    d.taken = d.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                }
                match &mut d.taken {
                    Some(body) => Pin::new(body).poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Stream(body) => body.is_end_stream(),
            UpstreamBody::Deferred(d) => d.taken.as_ref().is_some_and(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Stream(body) => body.size_hint(),
            UpstreamBody::Deferred(d) => d.taken.as_ref().map_or(d.hint, Body::size_hint),
        }
    }
}
