//! sluice's own HTTP/1.1 codec: the fast path of issue 23 for client → sluice → upstream over
//! HTTP/1.1. Not wired into the server yet (that follows the layering refactor); hyper serves
//! every connection today, and will keep serving HTTP/2, TLS-terminated h2 and whatever this
//! codec declines.
//!
//! # Design
//! - **Zero-copy heads.** [`RequestHead::parse`] and [`ResponseHead::parse`] run `httparse` over
//!   the connection's read buffer, split the head off it (`BytesMut::split_to` + `freeze`, no
//!   copy) and keep each field as two `u32` ranges into those bytes, at most [`MAX_FIELDS`]:
//!   inline up to 24 (no allocation for a head, none ever per field; a head with more fields
//!   spills to one allocation), so a parsed head is under 0.5 KiB to move. Lookups by name
//!   compare lengths first, then bytes ignoring ASCII case; a head has a handful of fields, so a
//!   scan beats hashing.
//! - **Decisions on that form.** The framing ([`Framing`]), keep-alive, `Expect: 100-continue`
//!   and `Upgrade` are decided while parsing, from the recorded fields; the path, query and
//!   `Host` are there for the canonical, routing and limit stages as `&str` / `&[u8]`.
//! - **Bodies** ([`BodyReader`]): by `Content-Length`, chunked or (responses) until close, read
//!   incrementally from the same buffer with a maximum size. A chunked body is relayed as the
//!   client framed it — the bytes forwarded are the bytes read, minus chunk extensions and
//!   trailer fields — and its payload counted for the limits; or decoded, for buffering.
//! - **Writing** ([`write_request`], [`write_response`]): the upstream head is the client's
//!   bytes, field by field, minus hop-by-hop fields, plus the `X-Forwarded-*` fields that
//!   `proxy::forward` sets today, into one buffer.
//!
//! # Rejected (a [`RequestError`]: 400 unless it says otherwise, and the connection closed)
//! Every RFC 9112 framing ambiguity: `Content-Length` with `Transfer-Encoding`; more than one
//! `Content-Length` (lines or list elements, even equal); a `Content-Length` that is not
//! digits or overflows; `Transfer-Encoding` other than exactly `chunked`, or on HTTP/1.0;
//! obs-fold; whitespace between a field name and its colon; a bare CR; NUL anywhere in the
//! head; a fragment (`#`) or a character `http::Uri` refuses in the target; the authority
//! form (`CONNECT`) and `*` with any method but `OPTIONS`; what `httparse` refuses (bad method
//! token, version, field name or value). A head over the caller's size bound or with more than
//! [`MAX_FIELDS`] fields gets 431, a target over 65534 bytes 414 (hyper's bounds). In bodies
//! ([`BodyError`]): a bad chunk size, a size that overflows 64 bits, a chunk extension that is
//! not `;name[=value]`, whitespace after a chunk size, a chunk not followed by CRLF, bare LF
//! in chunk framing, malformed or oversized chunk lines and trailers, and a body over the
//! caller's maximum (413).
//!
//! # Declined (handed to hyper with the bytes read so far, see [`Decline`])
//! HTTP/1.0 requests (keep-alive by opt-in, no chunked: hyper's rules are the reference),
//! absolute-form targets (`GET http://host/path`: the authority must agree with `Host`, which
//! `http::Uri`'s authority parser decides today), and the HTTP/2 prior-knowledge preface.
//!
//! # Accepted
//! Everything else `httparse` accepts: HTTP/1.1, origin-form targets (and `OPTIONS *`), bare
//! LF line ends in the head (as hyper; the written head always uses CRLF), obs-text in values.
//! `Upgrade` is accepted as a plain request, as hyper serves it today: the header is
//! hop-by-hop and removed upstream, and sluice does not tunnel.

mod body;
mod chunked;
mod error;
mod fields;
mod request;
mod response;
mod write;

pub use body::{BodyReader, Decoded, Relayed};
pub use error::BodyError;
pub use fields::MAX_FIELDS;
pub use request::{Decline, Parsed, RequestError, RequestHead};
pub use response::{ResponseError, ResponseHead};
pub use write::{write_request, write_response, RequestEdits};

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: no `Content-Length` nor `Transfer-Encoding` on a request; a response to `HEAD`,
    /// or a 1xx, 204 or 304.
    None,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Responses only: everything until the upstream closes the connection.
    Close,
}
