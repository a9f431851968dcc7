//! The body of every request sent upstream.
//!
//! The pipeline's body stage reads a client's body before the request waits for a slot (see
//! `pipeline/read_body.rs`): a body of up to `server.request_buffer` is read whole, so a slow upload
//! costs a connection, not upstream capacity; a longer one has its first bytes read ahead and
//! the rest streams, each pause bounded by `server.request_body_timeout` and the whole by
//! `server.max_request_body`. A streamed body that breaks one of those rules fails the upstream
//! exchange and records why in its [`Fault`], so the pipeline answers the client's fault (400,
//! 408, 413), not an upstream error.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::budget::Reservation;

/// The body of every request sent upstream.
#[derive(Debug)]
pub(crate) enum UpstreamBody {
    /// No body.
    Empty,
    /// The client's body: read ahead, then (if longer) streamed.
    Client(ClientBody),
}

/// A client's body as sluice forwards it.
#[derive(Debug)]
pub(crate) struct ClientBody {
    /// Bytes read ahead, sent first.
    ahead: VecDeque<Bytes>,
    /// The budget the bytes ahead take; shrinks as they are sent.
    held: Option<Reservation>,
    /// The rest of the body, still with the client; `None` when it was read whole.
    rest: Option<Rest>,
}

/// The part of a body that streams from the client.
#[derive(Debug)]
pub(crate) struct Rest {
    incoming: Incoming,
    /// Bytes that may still come before the body exceeds `max_request_body`.
    left: u64,
    /// `request_body_timeout`: the longest pause allowed.
    pause: Duration,
    /// Armed while the client sends nothing; reset in place, never re-boxed.
    timer: Pin<Box<Sleep>>,
    /// Whether `timer` runs for the current pause.
    armed: bool,
    /// Where a broken rule is recorded for the pipeline.
    fault: Arc<Fault>,
}

/// Why a streamed body failed — or that it reached its end — shared with the pipeline: the
/// upstream exchange only says that the body broke.
#[derive(Debug, Default)]
pub(crate) struct Fault(AtomicU8);

/// The rules a streamed body can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// More than `max_request_body` bytes.
    TooLarge,
    /// A pause longer than `request_body_timeout`.
    Timeout,
    /// The client's framing was malformed, or it went away mid-body.
    Client,
}

/// Why [`ClientBody::into_whole`] could not hold a body whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unheld {
    /// It is longer than the maximum asked for.
    TooLarge,
    /// The buffering budget (`server.max_buffered_bytes`) is spent.
    OverBudget,
    /// It broke one of the streaming rules (or the client's framing).
    Fault(BodyFault),
}

/// The error a [`ClientBody`] fails with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// A rule of sluice's was broken.
    #[error("request body: {0:?}")]
    Rule(BodyFault),
    /// Reading from the client failed.
    #[error("request body: {0}")]
    Client(#[from] hyper::Error),
}

// === impl ClientBody ===

impl ClientBody {
    /// A body read whole.
    pub(crate) fn whole(chunks: VecDeque<Bytes>, held: Option<Reservation>) -> Self {
        ClientBody {
            ahead: chunks,
            held,
            rest: None,
        }
    }

    /// A body whose first `ahead` chunks were read; the rest streams from `incoming`, at most
    /// `left` more bytes, pauses of at most `pause`.
    pub(crate) fn streamed(
        ahead: VecDeque<Bytes>,
        held: Option<Reservation>,
        incoming: Incoming,
        left: u64,
        pause: Duration,
    ) -> Self {
        ClientBody {
            ahead,
            held,
            rest: Some(Rest {
                incoming,
                left,
                pause,
                timer: Box::pin(tokio::time::sleep(pause)),
                armed: false,
                fault: Arc::default(),
            }),
        }
    }

    /// A copy to send again (the same bytes, shared), when the body was read whole; `None`
    /// for one that streams from the client (it can be sent once only).
    pub(crate) fn copy(&self) -> Option<ClientBody> {
        match self.rest {
            Some(_) => None,
            None => Some(ClientBody::whole(self.ahead.clone(), None)),
        }
    }

    /// Where a streamed body records why it failed; `None` for a body read whole.
    pub(crate) fn fault(&self) -> Option<Arc<Fault>> {
        self.rest.as_ref().map(|rest| rest.fault.clone())
    }

    /// The whole body in one buffer: the bytes read ahead and, for a streamed body, the rest
    /// read now (each pause bounded as when streaming) — at most `max` bytes in all, every byte
    /// held within `budget` (the buffer is sized by the announced length when there is one, so
    /// a body sent with `Content-Length` is copied once). The reservation that accounts for the
    /// bytes comes with them.
    ///
    /// # Errors
    /// [`Unheld`]: longer than `max`, the budget is spent, or the body broke a rule.
    pub(crate) async fn into_whole(
        mut self,
        max: u64,
        budget: &std::sync::Arc<crate::budget::Budget>,
    ) -> Result<(Bytes, Option<Reservation>), Unheld> {
        let ahead: u64 = self.ahead.iter().map(|c| c.len() as u64).sum();
        if ahead > max {
            return Err(Unheld::TooLarge);
        }
        let mut held = self.held.take().unwrap_or_else(|| budget.account(0));
        let rest = self.rest.take();
        if rest.is_none() && self.ahead.len() <= 1 {
            return Ok((self.ahead.pop_front().unwrap_or_default(), Some(held)));
        }
        // One buffer for all of it, counted before it is filled.
        let announced = rest.as_ref().map_or(0, |r| r.incoming.size_hint().lower());
        let mut counted = ahead.saturating_add(announced).min(max);
        if !held.grow(counted) {
            return Err(Unheld::OverBudget);
        }
        let mut whole = bytes::BytesMut::with_capacity(usize::try_from(counted).unwrap_or(0));
        for chunk in self.ahead.drain(..) {
            whole.extend_from_slice(&chunk);
            // That chunk is freed: its bytes are counted in the buffer now.
            held.shrink(chunk.len() as u64);
        }
        if let Some(mut rest) = rest {
            while let Some(frame) = std::future::poll_fn(|cx| rest.poll_frame(cx)).await {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(BodyError::Rule(fault)) => return Err(Unheld::Fault(fault)),
                    Err(BodyError::Client(_)) => return Err(Unheld::Fault(BodyFault::Client)),
                };
                // Trailers are dropped, as when forwarding.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let total = (whole.len() + data.len()) as u64;
                if total > max {
                    return Err(Unheld::TooLarge);
                }
                if total > counted {
                    if !held.grow(total - counted) {
                        return Err(Unheld::OverBudget);
                    }
                    counted = total;
                }
                whole.extend_from_slice(&data);
            }
        }
        Ok((whole.freeze(), Some(held)))
    }
}

// === impl Rest ===

impl Rest {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.armed = false;
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                match self.left.checked_sub(len) {
                    Some(left) => {
                        self.left = left;
                        Poll::Ready(Some(Ok(frame)))
                    }
                    None => Poll::Ready(Some(Err(self.fault.record(BodyFault::TooLarge)))),
                }
            }
            Poll::Ready(Some(Err(err))) => {
                self.fault.set(BodyFault::Client);
                Poll::Ready(Some(Err(BodyError::Client(err))))
            }
            Poll::Ready(None) => {
                self.fault.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !self.armed {
                    self.armed = true;
                    self.timer.as_mut().reset(Instant::now() + self.pause);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(self.fault.record(BodyFault::Timeout))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

// === impl Fault ===

/// [`Fault`]'s code for a body that reached its end.
const COMPLETE: u8 = 4;

impl Fault {
    /// The rule broken, if any.
    pub(crate) fn get(&self) -> Option<BodyFault> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(BodyFault::TooLarge),
            2 => Some(BodyFault::Timeout),
            3 => Some(BodyFault::Client),
            _ => None,
        }
    }

    /// Whether the body reached its end: all of it was passed on.
    pub(crate) fn complete(&self) -> bool {
        self.0.load(Ordering::Acquire) == COMPLETE
    }

    /// Marks the body as passed on whole (unless it broke a rule first).
    fn finish(&self) {
        let _ = self
            .0
            .compare_exchange(0, COMPLETE, Ordering::AcqRel, Ordering::Acquire);
    }

    fn set(&self, fault: BodyFault) {
        let code = match fault {
            BodyFault::TooLarge => 1,
            BodyFault::Timeout => 2,
            BodyFault::Client => 3,
        };
        self.0.store(code, Ordering::Release);
    }

    fn record(&self, fault: BodyFault) -> BodyError {
        self.set(fault);
        BodyError::Rule(fault)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let UpstreamBody::Client(body) = self.get_mut() else {
            return Poll::Ready(None);
        };
        if let Some(chunk) = body.ahead.pop_front() {
            if let Some(held) = &mut body.held {
                held.shrink(chunk.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match &mut body.rest {
            Some(rest) => rest.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Client(body) => {
                let end = body.ahead.is_empty()
                    && body
                        .rest
                        .as_ref()
                        .is_none_or(|r| r.incoming.is_end_stream());
                // hyper may stop at this answer without polling for the end.
                if end {
                    if let Some(rest) = &body.rest {
                        rest.fault.finish();
                    }
                }
                end
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Client(body) => {
                let ahead: u64 = body.ahead.iter().map(|c| c.len() as u64).sum();
                match &body.rest {
                    None => SizeHint::with_exact(ahead),
                    Some(rest) => {
                        let more = rest.incoming.size_hint();
                        let mut hint = SizeHint::new();
                        hint.set_lower(ahead + more.lower());
                        if let Some(upper) = more.upper() {
                            hint.set_upper(ahead + upper);
                        }
                        hint
                    }
                }
            }
        }
    }
}
