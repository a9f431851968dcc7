//! The body stage: between the rate limits and the caps, the client's body is read before the
//! request may wait for a slot (NGINX's `proxy_request_buffering`, HAProxy's
//! `option http-buffer-request`). A client that uploads slowly then spends its own connection's
//! time, not a slot of the upstream's.
//!
//! - A body announced (`Content-Length`) larger than `max_request_body`: 413 at once, nothing
//!   read or forwarded.
//! - A body of up to `request_buffer` bytes (announced, or found so while reading): read whole
//!   within `request_body_timeout` (else 408), then forwarded from memory.
//! - A longer one, or one met when `max_buffered_bytes` is spent: what was read goes first and
//!   the rest streams, each pause bounded by `request_body_timeout` and the total by
//!   `max_request_body` (see [`crate::proxy::request_body`]).
//! - Malformed framing (bad chunked encoding): 400 `bad-request`, never a 502.
//! - A gRPC request's body is never read ahead: it streams from the first byte, as a longer
//!   body does. It is a stream of messages the upstream may answer one at a time (the client
//!   of a bidirectional call may wait for a reply before it sends the next message, or end its
//!   stream only at the end of the call): held until it ends or fills the buffer, it would
//!   never reach the upstream, and the call would end in 408 `body-timeout`.

use std::collections::VecDeque;

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::budget::Reservation;
use crate::proxy::request_body::{ClientBody, UpstreamBody};
use crate::rescue::{BadRequest, Rejection};
use crate::runtime::Runtime;

/// Reads what the rules say to read of `body`; the rest is left to stream. `grpc`: the body of
/// a gRPC request, which streams from the first byte (see the module docs).
pub(super) async fn read(
    rt: &Runtime,
    body: Incoming,
    grpc: bool,
) -> Result<UpstreamBody, Rejection> {
    if body.is_end_stream() {
        return Ok(UpstreamBody::Empty);
    }
    let limits = &rt.config.server.client;
    let max = limits.max_request_body.0;
    let hint = body.size_hint();
    if hint.lower() > max {
        return Err(Rejection::BodyTooLarge);
    }
    let buffer = limits.request_buffer.0;
    let pause = limits.request_body_timeout;
    if hint.lower() > buffer || grpc {
        // Announced longer than the buffer, or gRPC: streams from the first byte.
        return Ok(UpstreamBody::Client(ClientBody::streamed(
            VecDeque::new(),
            None,
            body,
            max,
            pause,
        )));
    }
    let mut ahead = Ahead::new(rt, buffer);
    let mut body = body;
    match tokio::time::timeout(pause, ahead.fill(&mut body)).await {
        Err(_elapsed) => Err(Rejection::BodyTimeout),
        Ok(Err(_)) => Err(Rejection::BadRequest(BadRequest::MalformedBody)),
        Ok(Ok(Filled::Whole)) => Ok(UpstreamBody::Client(ClientBody::whole(
            ahead.chunks,
            ahead.held,
        ))),
        Ok(Ok(Filled::Partly)) => {
            let left = max.saturating_sub(ahead.bytes);
            Ok(UpstreamBody::Client(ClientBody::streamed(
                ahead.chunks,
                ahead.held,
                body,
                left,
                pause,
            )))
        }
        Ok(Ok(Filled::TooLarge)) => Err(Rejection::BodyTooLarge),
    }
}

/// The chunks read ahead of the upstream, and the budget they take.
struct Ahead {
    chunks: VecDeque<Bytes>,
    bytes: u64,
    /// Up to this many bytes are read whole.
    buffer: u64,
    /// `max_request_body`.
    max: u64,
    held: Option<Reservation>,
}

/// How far [`Ahead::fill`] got.
enum Filled {
    /// The body ended within the buffer.
    Whole,
    /// The buffer (or the budget) is full; the rest streams.
    Partly,
    /// The body is longer than `max_request_body` (found within the buffer's reach).
    TooLarge,
}

impl Ahead {
    fn new(rt: &Runtime, buffer: u64) -> Self {
        Ahead {
            chunks: VecDeque::new(),
            bytes: 0,
            buffer,
            max: rt.config.server.client.max_request_body.0,
            held: Some(rt.budget.account(0)),
        }
    }

    /// Reads frames until the body ends, the buffer is full, or the budget is spent.
    async fn fill(&mut self, body: &mut Incoming) -> Result<Filled, hyper::Error> {
        while self.bytes < self.buffer {
            let Some(frame) = body.frame().await.transpose()? else {
                return Ok(Filled::Whole);
            };
            // Trailers are dropped: requests to upstreams are sent without them.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = data.len() as u64;
            if self.bytes + len > self.max {
                return Ok(Filled::TooLarge);
            }
            // Counted even past the maximum: the chunk is in memory.
            let within_budget = self.held.as_mut().is_some_and(|held| held.grow_past(len));
            self.bytes += len;
            self.chunks.push_back(data);
            if !within_budget {
                // Keep what was read (it is in memory anyway) but stop reading ahead.
                return Ok(Filled::Partly);
            }
        }
        Ok(if body.is_end_stream() {
            Filled::Whole
        } else {
            Filled::Partly
        })
    }
}
