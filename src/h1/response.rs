//! Response heads from an upstream, parsed the same way as request heads, with the framing of
//! RFC 9112 §6.3: no body for 1xx, 204, 304 and answers to `HEAD`; else chunked, a length, or
//! until the upstream closes.

use bytes::{Bytes, BytesMut};

use super::fields::{list, scratch, slice, span, Fields};
use super::request::{classify, length_fields, RequestError};
use super::Framing;

/// A parsed response head, holding its bytes and the positions of its parts in them.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    bytes: Bytes,
    status: u16,
    reason: (u32, u32),
    fields: Fields,
    framing: Framing,
    keep_alive: bool,
}

/// Why an upstream's response head is refused: sluice answers the client 502 and closes the
/// upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The head is over the caller's size bound.
    #[error("the response head is larger than the limit")]
    HeadTooLarge,
    /// More than [`super::MAX_FIELDS`] field lines.
    #[error("the response head has too many fields")]
    TooManyFields,
    /// Not a status line and fields as RFC 9112 writes them (obs-fold, bare CR, NUL and
    /// whitespace before a colon included).
    #[error("the response head is malformed")]
    Malformed,
    /// Both `Content-Length` and `Transfer-Encoding`.
    #[error("the response has both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    /// More than one `Content-Length`, or one that is not a number.
    #[error("the response has more than one Content-Length, or a bad one")]
    BadLength,
    /// A `Transfer-Encoding` other than exactly `chunked`.
    #[error("the response's Transfer-Encoding is not chunked alone")]
    NotChunked,
}

// === impl ResponseHead ===

impl ResponseHead {
    /// Parses the head at the front of `buf`, an upstream connection's read buffer; on
    /// `Some` its bytes are split off `buf`. `to_head`: the request was `HEAD` (the response
    /// has no body, whatever its fields say).
    ///
    /// # Errors
    /// A [`ResponseError`]: the response cannot be relayed.
    pub fn parse(
        buf: &mut BytesMut,
        max_head: usize,
        to_head: bool,
    ) -> Result<Option<ResponseHead>, ResponseError> {
        let mut headers = scratch();
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(len)) if len <= max_head => len,
            Ok(httparse::Status::Complete(_)) => return Err(ResponseError::HeadTooLarge),
            Ok(httparse::Status::Partial) if buf.len() >= max_head => {
                return Err(ResponseError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(err) => return Err(classify(buf, err).into()),
        };
        let head = &buf[..len];
        let (Some(version), Some(status)) = (res.version, res.code) else {
            return Err(ResponseError::Malformed);
        };
        let reason = span(head, res.reason.unwrap_or_default().as_bytes());
        let fields = Fields::record(head, res.headers);
        let no_body = to_head || (100..200).contains(&status) || status == 204 || status == 304;
        let framing = match length_fields(head, &fields) {
            _ if no_body => Framing::None,
            Ok(framing) => framing.unwrap_or(Framing::Close),
            Err(err) => return Err(err.into()),
        };
        let keep_alive = framing != Framing::Close && keep_alive(head, &fields, version);
        let bytes = buf.split_to(len).freeze();
        Ok(Some(ResponseHead {
            bytes,
            status,
            reason,
            fields,
            framing,
            keep_alive,
        }))
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason phrase as sent; empty if it was, or if it had obs-text.
    pub fn reason(&self) -> &[u8] {
        slice(&self.bytes, self.reason.0, self.reason.1)
    }

    /// A 1xx: another head follows before the final one.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// How the body is delimited.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The upstream connection may carry another request after this response.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// The value of the first field named `name` (ASCII case ignored).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields.first(&self.bytes, name)
    }

    /// Every field `(name, value)` in the order received.
    pub fn fields(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> {
        self.fields.iter(&self.bytes)
    }

    /// The head's bytes as received.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 only with
/// `Connection: keep-alive`.
fn keep_alive(head: &[u8], fields: &Fields, version: u8) -> bool {
    let mut keep = version >= 1;
    for value in fields.all(head, "connection") {
        for token in list(value) {
            if token.eq_ignore_ascii_case(b"close") {
                return false;
            }
            keep |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    keep
}

// === impl ResponseError ===

impl From<RequestError> for ResponseError {
    fn from(err: RequestError) -> ResponseError {
        match err {
            RequestError::HeadTooLarge => ResponseError::HeadTooLarge,
            RequestError::TooManyFields => ResponseError::TooManyFields,
            RequestError::LengthAndChunked => ResponseError::LengthAndChunked,
            RequestError::SeveralLengths | RequestError::BadLength => ResponseError::BadLength,
            RequestError::NotChunked => ResponseError::NotChunked,
            _ => ResponseError::Malformed,
        }
    }
}

#[cfg(test)]
mod tests;
