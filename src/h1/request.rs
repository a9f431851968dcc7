//! Request heads: parsed with `httparse` in place, the framing decided, every RFC 9112
//! ambiguity refused (see the parent module's docs for the lists).

use bytes::{Bytes, BytesMut};

use super::fields::{is, list, scratch, slice, span, trim, Fields};
use super::Framing;

/// The longest request target accepted: `http::Uri`'s bound, which hyper answers with 414.
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// The first line of the HTTP/2 prior-knowledge preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// A parsed request head, holding its bytes (split off the read buffer, not copied) and the
/// positions of its parts in them.
#[derive(Debug, Clone)]
pub struct RequestHead {
    bytes: Bytes,
    method: (u32, u32),
    target: (u32, u32),
    /// Length of the path within the target (the query, if any, follows a `?`).
    path_len: u32,
    fields: Fields,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
}

/// What [`RequestHead::parse`] made of the buffer.
#[derive(Debug)]
// A head is returned by value into the connection's state, where it lives anyway; the small
// variants are the rare returns, and boxing would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// No complete head yet: read more, then call again with the whole buffer.
    Partial,
    /// A head, split off the front of the buffer (which now holds what follows it).
    Head(RequestHead),
    /// Not for the fast path: hand the connection, with the buffer untouched, to hyper.
    Decline(Decline),
}

/// Why a request is handed to hyper rather than refused or served by the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decline {
    /// HTTP/1.0: keep-alive only on request and no chunked bodies. Rare; hyper's handling is
    /// the reference and is kept.
    Http10,
    /// An absolute-form target (`GET http://host/path`): its authority must agree with
    /// `Host`, which today's canonical stage decides on `http::Uri`'s parse of it.
    AbsoluteForm,
    /// The HTTP/2 prior-knowledge preface (`PRI * HTTP/2.0`): h2c is hyper's.
    H2Preface,
}

/// Why a request head is refused. Each is answered with [`status`](RequestError::status)
/// (400 unless said otherwise) and the connection is closed: after a broken head, where the
/// next request starts is unknowable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The head is over the caller's size bound (431).
    #[error("the request head is larger than the limit")]
    HeadTooLarge,
    /// More than [`super::MAX_FIELDS`] field lines (431).
    #[error("the request head has too many fields")]
    TooManyFields,
    /// A target over 65534 bytes (414).
    #[error("the request target is too long")]
    TargetTooLong,
    /// Not `method SP target SP version CRLF`: a bad method token or target byte, or extra
    /// spaces.
    #[error("the request line is malformed")]
    BadRequestLine,
    /// Not `HTTP/1.0` or `HTTP/1.1`.
    #[error("the HTTP version is not 1.0 or 1.1")]
    BadVersion,
    /// A field name that is not a token.
    #[error("a field name is not a token")]
    BadFieldName,
    /// A field value with a control character.
    #[error("a field value has a control character")]
    BadFieldValue,
    /// A line starting with a space or tab: obs-fold (RFC 9112 §5.2).
    #[error("the head has a folded line (obs-fold)")]
    ObsFold,
    /// Whitespace between a field name and its colon (RFC 9112 §5.1).
    #[error("a field has whitespace before its colon")]
    SpaceBeforeColon,
    /// A CR not followed by LF (RFC 9112 §2.2).
    #[error("the head has a bare CR")]
    BareCr,
    /// A NUL byte in the head.
    #[error("the head has a NUL byte")]
    Nul,
    /// A target with a byte a URI may not contain, a fragment, or invalid UTF-8.
    #[error("the request target has a character a URI may not contain, or a fragment")]
    BadTarget,
    /// The authority form (`CONNECT host:port`), `*` with a method other than `OPTIONS`, or
    /// anything else that is neither a path nor an absolute URI.
    #[error("the request target is neither a path nor * with OPTIONS")]
    TargetForm,
    /// Both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1: request smuggling).
    #[error("the request has both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    /// More than one `Content-Length` line or list element, even if equal.
    #[error("the request has more than one Content-Length")]
    SeveralLengths,
    /// A `Content-Length` that is not digits, or over 2^64 - 1.
    #[error("the Content-Length is not a number")]
    BadLength,
    /// A `Transfer-Encoding` other than exactly `chunked`.
    #[error("the Transfer-Encoding is not chunked alone")]
    NotChunked,
    /// `Transfer-Encoding` on an HTTP/1.0 request (RFC 9112 §6.1: faulty framing).
    #[error("an HTTP/1.0 request has Transfer-Encoding")]
    ChunkedHttp10,
}

// === impl RequestHead ===

impl RequestHead {
    /// Parses the head at the front of `buf`, a connection's read buffer. On
    /// [`Parsed::Head`] the head's bytes are split off `buf`; otherwise `buf` is untouched.
    /// `max_head`: the most bytes a head may take (`max_header_bytes`).
    ///
    /// # Errors
    /// A [`RequestError`]: the request is refused and the connection closed.
    pub fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Parsed, RequestError> {
        // hyper serves h2c; the preface's first line would otherwise be a bad version.
        if buf.starts_with(H2_PREFACE) {
            return Ok(Parsed::Decline(Decline::H2Preface));
        }
        let Some(parts) = parse_parts(buf, max_head)? else {
            return Ok(Parsed::Partial);
        };
        // Framing first: an ambiguous body is refused even on a request hyper would serve.
        let framing = framing(&buf[..parts.len], &parts.fields)?;
        if parts.version == 0 {
            // RFC 9112 §6.1: chunked in HTTP/1.0 is faulty framing (hyper refuses it too).
            if framing == Framing::Chunked {
                return Err(RequestError::ChunkedHttp10);
            }
            return Ok(Parsed::Decline(Decline::Http10));
        }
        let target = slice(&buf[..parts.len], parts.target.0, parts.target.1);
        let method = slice(&buf[..parts.len], parts.method.0, parts.method.1);
        let path_len = match target_form(method, target)? {
            Form::Origin(path_len) => path_len,
            Form::Absolute => return Ok(Parsed::Decline(Decline::AbsoluteForm)),
        };
        let facts = facts(&buf[..parts.len], &parts.fields);
        let bytes = buf.split_to(parts.len).freeze();
        Ok(Parsed::Head(RequestHead {
            bytes,
            method: parts.method,
            target: parts.target,
            path_len,
            fields: parts.fields,
            framing,
            keep_alive: !facts.close,
            expect_continue: facts.expect_continue,
            upgrade: facts.upgrade,
        }))
    }

    /// The method, as sent (a token: case matters).
    pub fn method(&self) -> &str {
        text(slice(&self.bytes, self.method.0, self.method.1))
    }

    /// The target as sent: origin form (`/path?query`) or `*` (with `OPTIONS`).
    pub fn target(&self) -> &str {
        text(self.target_bytes())
    }

    /// The path of the target (`*` for `OPTIONS *`), not yet canonical.
    pub fn path(&self) -> &str {
        let target = self.target();
        target.get(..self.path_len as usize).unwrap_or(target)
    }

    /// The query, without its `?`, if the target has one.
    pub fn query(&self) -> Option<&str> {
        self.target()
            .get(self.path_len as usize..)?
            .strip_prefix('?')
    }

    /// How the body is delimited.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The client did not ask to close (`Connection: close`) after this request.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// `Expect: 100-continue`: the client waits for `100 Continue` before sending its body.
    pub fn expect_continue(&self) -> bool {
        self.expect_continue
    }

    /// The request carries `Upgrade`. It is served as a plain request, as hyper serves it
    /// today: `Upgrade` is hop-by-hop, removed upstream, and sluice does not tunnel.
    pub fn upgrade(&self) -> bool {
        self.upgrade
    }

    /// The value of the first field named `name` (ASCII case ignored).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields.first(&self.bytes, name)
    }

    /// The values of every field named `name`, in order.
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields.all(&self.bytes, name)
    }

    /// Every field `(name, value)` in the order received, names as sent.
    pub fn fields(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> {
        self.fields.iter(&self.bytes)
    }

    /// The head's bytes as received, request line to the empty line.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The target's bytes.
    pub(crate) fn target_bytes(&self) -> &[u8] {
        slice(&self.bytes, self.target.0, self.target.1)
    }

    /// The method's bytes.
    pub(crate) fn method_bytes(&self) -> &[u8] {
        slice(&self.bytes, self.method.0, self.method.1)
    }
}

/// `bytes` as text. Callers pass only what parsing checked (a token, a validated target),
/// so the fallback is never taken.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

// === impl RequestError ===

impl RequestError {
    /// The status sluice answers with.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::HeadTooLarge | RequestError::TooManyFields => 431,
            RequestError::TargetTooLong => 414,
            _ => 400,
        }
    }
}

/// The request line and fields of a complete head, as positions in the buffer.
struct Parts {
    /// The head's length, its final empty line included.
    len: usize,
    method: (u32, u32),
    target: (u32, u32),
    /// The minor version: 0 or 1.
    version: u8,
    fields: Fields,
}

/// Runs `httparse` over `buf`. `None`: not complete yet.
fn parse_parts(buf: &BytesMut, max_head: usize) -> Result<Option<Parts>, RequestError> {
    let mut headers = scratch();
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Complete(_)) => return Err(RequestError::HeadTooLarge),
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(RequestError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(classify(buf, err)),
    };
    let head = &buf[..len];
    // `httparse` fills every part of a complete request.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(RequestError::BadRequestLine);
    };
    if target.len() > MAX_TARGET {
        return Err(RequestError::TargetTooLong);
    }
    Ok(Some(Parts {
        len,
        method: span(head, method.as_bytes()),
        target: span(head, target.as_bytes()),
        version,
        fields: Fields::record(head, req.headers),
    }))
}

/// Which form a target has (RFC 9112 §3.2).
enum Form {
    /// A path (or `*` with `OPTIONS`), and the length of its path part.
    Origin(u32),
    /// `scheme://…`.
    Absolute,
}

/// The form of `target`, checked byte by byte as `http::Uri` checks it, minus the fragment
/// `http::Uri` silently drops (a target has none: RFC 9112 §3.2.1).
fn target_form(method: &[u8], target: &[u8]) -> Result<Form, RequestError> {
    match target.first() {
        Some(b'/') => {}
        Some(b'*') if target.len() == 1 && method == b"OPTIONS" => return Ok(Form::Origin(1)),
        _ if is_absolute(target) => return Ok(Form::Absolute),
        _ => return Err(RequestError::TargetForm),
    }
    let mut path_len = target.len();
    let mut high = false;
    for (i, &b) in target.iter().enumerate() {
        let in_query = i >= path_len;
        let ok = match b {
            b'?' if !in_query => {
                path_len = i;
                true
            }
            0x80..=0xff => {
                high = true;
                true
            }
            _ if in_query => is_query_byte(b),
            _ => is_path_byte(b),
        };
        if !ok {
            return Err(RequestError::BadTarget);
        }
    }
    if high && std::str::from_utf8(target).is_err() {
        return Err(RequestError::BadTarget);
    }
    // The target is at most MAX_TARGET bytes, so its path's length fits.
    Ok(Form::Origin(u32::try_from(path_len).unwrap_or(u32::MAX)))
}

/// `http::Uri`'s path bytes (WHATWG path state, plus `"`, `{` and `}` as it accepts them);
/// `?` and bytes over 0x7f are handled by the caller.
fn is_path_byte(b: u8) -> bool {
    matches!(b, 0x21 | 0x22 | 0x24..=0x3b | 0x3d | 0x40..=0x5f | 0x61..=0x7e)
}

/// `http::Uri`'s query bytes.
fn is_query_byte(b: u8) -> bool {
    matches!(b, 0x21 | 0x24..=0x3b | 0x3d | 0x3f..=0x7e)
}

/// `scheme "://"` with `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_absolute(target: &[u8]) -> bool {
    let Some(colon) = target.iter().position(|&b| b == b':') else {
        return false;
    };
    let scheme = &target[..colon];
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && target[colon..].starts_with(b"://")
}

/// The body's framing from the fields of a request (RFC 9112 §6.1–6.3), refusing every
/// ambiguity.
fn framing(head: &[u8], fields: &Fields) -> Result<Framing, RequestError> {
    Ok(length_fields(head, fields)?.unwrap_or(Framing::None))
}

/// The framing the fields give (`None`: neither `Content-Length` nor `Transfer-Encoding`),
/// refusing every ambiguity. Shared with responses.
pub(crate) fn length_fields(head: &[u8], fields: &Fields) -> Result<Option<Framing>, RequestError> {
    // Over all lines: `chunked`, once. `gzip, chunked` would reach the upstream still
    // gzip-coded, with no field saying so, once `Transfer-Encoding` is removed.
    let (mut te_lines, mut codings, mut all_chunked) = (0usize, 0usize, true);
    let mut lengths = 0usize;
    let mut length = None;
    for (name, value) in fields.iter(head) {
        if is(name, "transfer-encoding") {
            te_lines += 1;
            // A line with no coding at all counts as a bad one (hyper refuses it too).
            all_chunked &= list(value).next().is_some();
            for coding in list(value) {
                codings += 1;
                all_chunked &= coding.eq_ignore_ascii_case(b"chunked");
            }
        } else if is(name, "content-length") {
            lengths += 1;
            let value = trim(value);
            if value.contains(&b',') {
                lengths += 1;
            }
            length = digits(value);
        }
    }
    let te = te_lines > 0;
    let te_chunked_alone = codings == 1 && all_chunked;
    match (te, lengths, length) {
        (true, 0, _) if te_chunked_alone => Ok(Some(Framing::Chunked)),
        (true, 0, _) => Err(RequestError::NotChunked),
        (true, _, _) => Err(RequestError::LengthAndChunked),
        (false, 0, _) => Ok(None),
        (false, 1, Some(n)) => Ok(Some(Framing::Length(n))),
        (false, 1, None) => Err(RequestError::BadLength),
        (false, _, _) => Err(RequestError::SeveralLengths),
    }
}

/// `1*DIGIT` as a `u64`, or `None` (no sign, no spaces, no overflow).
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// The connection facts of a head.
#[derive(Default)]
struct Facts {
    close: bool,
    expect_continue: bool,
    upgrade: bool,
}

/// `Connection: close`, `Expect: 100-continue`, `Upgrade`.
fn facts(head: &[u8], fields: &Fields) -> Facts {
    let mut facts = Facts::default();
    for (name, value) in fields.iter(head) {
        if is(name, "connection") {
            facts.close |= list(value).any(|token| token.eq_ignore_ascii_case(b"close"));
        } else if is(name, "expect") {
            facts.expect_continue |= trim(value).eq_ignore_ascii_case(b"100-continue");
        } else if is(name, "upgrade") {
            facts.upgrade = true;
        }
    }
    facts
}

/// Names the cause of an `httparse` error, looking at the head itself for the cases RFC 9112
/// names (only on this error path, so the cost does not matter).
pub(crate) fn classify(buf: &[u8], err: httparse::Error) -> RequestError {
    if let Some(cause) = named_cause(buf) {
        return cause;
    }
    match err {
        httparse::Error::HeaderName => RequestError::BadFieldName,
        httparse::Error::HeaderValue => RequestError::BadFieldValue,
        httparse::Error::Version => RequestError::BadVersion,
        httparse::Error::TooManyHeaders => RequestError::TooManyFields,
        httparse::Error::Token | httparse::Error::NewLine | httparse::Error::Status => {
            RequestError::BadRequestLine
        }
    }
}

/// The RFC 9112 case a broken head shows, if any: NUL, bare CR, obs-fold, whitespace before a
/// colon. Looks at the head only (up to its first empty line), not at a body behind it.
fn named_cause(buf: &[u8]) -> Option<RequestError> {
    let end = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .or_else(|| buf.windows(3).position(|w| w == b"\n\r\n"))
        .map_or(buf.len(), |i| i + 1);
    let head = &buf[..end];
    if head.contains(&0) {
        return Some(RequestError::Nul);
    }
    let bare_cr = head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && head.get(i + 1).is_some_and(|&next| next != b'\n'));
    if bare_cr {
        return Some(RequestError::BareCr);
    }
    let mut lines = head
        .split(|&b| b == b'\n')
        .skip_while(|line| line.is_empty() || *line == b"\r")
        .skip(1);
    lines.find_map(|line| {
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return Some(RequestError::ObsFold);
        }
        let name = &line[..line.iter().position(|&b| b == b':')?];
        name.iter()
            .any(|&b| b == b' ' || b == b'\t')
            .then_some(RequestError::SpaceBeforeColon)
    })
}

#[cfg(test)]
mod tests;
