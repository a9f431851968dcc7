//! Writing heads: the upstream request from the client's, the client's response from the
//! upstream's, each into one buffer, field lines copied as received.
//!
//! What changes is what `proxy::forward` changes on today's hyper path (see its docs for why):
//! hop-by-hop fields and those `Connection` names are removed in both directions; on requests,
//! `Forwarded`, `X-Real-IP`, `X-Original-URL` and `X-Rewrite-URL` from an untrusted peer are
//! removed, `X-Forwarded-For` gets the peer appended (all lines folded into the first),
//! `X-Forwarded-Proto` is set and `X-Forwarded-Host` is set to `Host` (removed without one).
//!
//! Where the bytes differ from hyper's (same fields, same values, so the same meaning):
//! - field names keep the sender's case (hyper writes them lower-case), and each kept line is
//!   copied as received (`Name:value` stays so; hyper writes `name: value`);
//! - fields keep the sender's order. hyper's `HeaderMap` groups repeated names at the first
//!   one's place, and a removal moves the last name into the gap (`swap_remove`);
//! - a replaced field (`X-Forwarded-*`, added response fields) takes the place of its first
//!   line, as `HeaderMap::insert` does; new ones go last, with lower-case names;
//! - the body keeps its framing (a chunked body stays chunked, so `Transfer-Encoding:
//!   chunked` is written last), where hyper re-frames it (and sends a small buffered chunked
//!   request with `content-length`);
//! - responses get no `Date` unless the caller adds one (hyper adds one when the upstream
//!   sent none), and keep the upstream's reason phrase (hyper writes the standard one unless
//!   the upstream's differs, so the bytes are the same except for an empty phrase).

use std::io::Write as _;
use std::net::IpAddr;

use bytes::{BufMut, BytesMut};

use super::fields::{is, is_tchar, list, span, trim};
use super::{Framing, RequestHead, ResponseHead};

/// Fields that describe one hop and are never forwarded (RFC 9110 §7.6.1, and the ones
/// NGINX and Envoy add).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request fields only a trusted proxy may send: they name the client or the path.
const FROM_TRUSTED_ONLY: [&str; 4] = ["forwarded", "x-real-ip", "x-original-url", "x-rewrite-url"];

/// What [`write_request`] changes besides the hop-by-hop fields.
#[derive(Debug, Clone, Copy)]
pub struct RequestEdits<'a> {
    /// The client's address, appended to `X-Forwarded-For`.
    pub peer: IpAddr,
    /// The client spoke TLS to sluice (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// The peer is in `trusted_proxies`: its `Forwarded`, `X-Real-IP`, `X-Original-URL` and
    /// `X-Rewrite-URL` are kept.
    pub trusted: bool,
    /// The target to send (origin form: the canonical path and the query as sent), when it
    /// differs from the one received.
    pub target: Option<&'a [u8]>,
}

/// Writes the upstream request head for `head` into `out` (see the module docs): HTTP/1.1, the
/// client's fields in order minus hop-by-hop ones, the `X-Forwarded-*` fields, and the framing
/// of the body as the client sent it.
pub fn write_request(head: &RequestHead, edits: &RequestEdits<'_>, out: &mut BytesMut) {
    let raw = head.as_bytes();
    let removed = Removed::of(head.fields());
    let kept = |name: &[u8]| {
        !removed.removes(name) && (edits.trusted || !FROM_TRUSTED_ONLY.iter().any(|t| is(name, t)))
    };
    out.reserve(raw.len() + 96);
    out.put_slice(head.method_bytes());
    out.put_u8(b' ');
    out.put_slice(edits.target.unwrap_or(head.target_bytes()));
    out.put_slice(b" HTTP/1.1\r\n");
    let host = head
        .fields()
        .find(|(name, _)| is(name, "host") && kept(name))
        .map(|(_, value)| value);
    let proto: &[u8] = if edits.https { b"https" } else { b"http" };
    let (mut xff, mut xfp, mut xfh, mut length) = (false, false, false, false);
    for (name, value) in head.fields() {
        if !kept(name) {
            continue;
        }
        if is(name, "x-forwarded-for") {
            if !xff {
                put_name(out, name);
                forwarded_for(head, edits.peer, out);
                out.put_slice(b"\r\n");
            }
            xff = true;
        } else if is(name, "x-forwarded-proto") {
            if !xfp {
                put_field(out, name, proto);
            }
            xfp = true;
        } else if is(name, "x-forwarded-host") {
            if let (false, Some(host)) = (xfh, host) {
                put_field(out, name, host);
            }
            xfh = true;
        } else {
            length |= is(name, "content-length");
            put_line(out, raw, name, value);
        }
    }
    if !xff {
        out.put_slice(b"x-forwarded-for: ");
        put_ip(out, edits.peer);
        out.put_slice(b"\r\n");
    }
    if !xfp {
        put_field(out, b"x-forwarded-proto", proto);
    }
    if let (false, Some(host)) = (xfh, host) {
        put_field(out, b"x-forwarded-host", host);
    }
    put_framing(out, head.framing(), length);
    out.put_slice(b"\r\n");
}

/// Writes the client's response head for the upstream's `head` into `out`: HTTP/1.1, the
/// upstream's fields in order minus hop-by-hop ones, `added` fields (each replacing the field
/// of its name in the place of its first line, else last; names and values already valid,
/// such as `RateLimit-Policy` and `RateLimit`), the body's framing as the upstream sent it,
/// and `Connection: close` when `close` (the client asked, or the body ends with the
/// connection).
pub fn write_response(
    head: &ResponseHead,
    added: &[(&str, &[u8])],
    close: bool,
    out: &mut BytesMut,
) {
    let raw = head.as_bytes();
    let removed = Removed::of(head.fields());
    out.reserve(raw.len() + 64);
    out.put_slice(b"HTTP/1.1 ");
    let _ = write!(out.writer(), "{:03} ", head.status());
    match head.reason() {
        b"" => out.put_slice(reason(head.status()).as_bytes()),
        reason => out.put_slice(reason),
    }
    out.put_slice(b"\r\n");
    // Which of `added` are written: at most a few, so a bit each.
    let mut written = 0u64;
    let mut length = false;
    for (name, value) in head.fields() {
        if removed.removes(name) {
            continue;
        }
        match added.iter().position(|(a, _)| is(name, a)) {
            Some(i) if i < 64 => {
                if written & (1 << i) == 0 {
                    put_field(out, name, added[i].1);
                }
                written |= 1 << i;
            }
            _ => {
                length |= is(name, "content-length");
                put_line(out, raw, name, value);
            }
        }
    }
    for (i, (name, value)) in added.iter().enumerate() {
        if i >= 64 || written & (1 << i) == 0 {
            put_field(out, name.as_bytes(), value);
        }
    }
    put_framing(out, head.framing(), length);
    if close {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
}

/// The framing field of a body relayed as framed: `Transfer-Encoding` was removed with the
/// hop-by-hop fields, and `Content-Length` is written again if `Connection` named it (`kept`:
/// it was not), so the peer always learns where the body ends.
fn put_framing(out: &mut BytesMut, framing: Framing, kept: bool) {
    match framing {
        Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) if !kept => {
            let _ = write!(out.writer(), "content-length: {n}\r\n");
        }
        Framing::Length(_) | Framing::None | Framing::Close => {}
    }
}

/// The standard reason phrase of `status`, or none.
fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// `X-Forwarded-For`'s value: the text of every line (empty and non-text ones skipped),
/// joined by `, `, then the peer (as `proxy::forward` folds them).
fn forwarded_for(head: &RequestHead, peer: IpAddr, out: &mut BytesMut) {
    for line in head.headers("x-forwarded-for") {
        let line = trim(line);
        if !line.is_empty() && line.iter().all(|&b| is_text(b)) {
            out.put_slice(line);
            out.put_slice(b", ");
        }
    }
    put_ip(out, peer);
}

/// `peer` as `Display` writes it.
fn put_ip(out: &mut BytesMut, peer: IpAddr) {
    let _ = write!(out.writer(), "{peer}");
}

/// `b` may be in a `HeaderValue::to_str` (visible ASCII, space, tab).
fn is_text(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b)
}

/// `name: value` CRLF.
fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    put_name(out, name);
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// `name: `.
fn put_name(out: &mut BytesMut, name: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
}

/// The field line of `name` and `value` (slices of `raw`) as received, from the name to the
/// end of the value: one copy. Written afresh if the value is not behind the name in `raw`
/// (an empty value `httparse` did not point into the head).
fn put_line(out: &mut BytesMut, raw: &[u8], name: &[u8], value: &[u8]) {
    let (start, _) = span(raw, name);
    let (value_start, value_len) = span(raw, value);
    let (start, end) = (start as usize, value_start as usize + value_len as usize);
    match raw.get(start..end) {
        Some(line) if !value.is_empty() && value_start as usize >= start + name.len() => {
            out.put_slice(line);
            out.put_slice(b"\r\n");
        }
        _ => put_field(out, name, value),
    }
}

/// Which fields of a head are hop-by-hop: the fixed list, and those `Connection` names.
struct Removed<'a> {
    /// The `Connection` lines that name fields beyond the fixed list. Most heads have none
    /// (`keep-alive` and `close` name nothing else), and an empty `Vec` does not allocate.
    named: Vec<&'a [u8]>,
}

impl<'a> Removed<'a> {
    /// The `Connection` lines of `fields` that name other fields.
    fn of(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Removed<'a> {
        let named = fields
            .filter(|(name, value)| {
                is(name, "connection") && connection_names(value).next().is_some()
            })
            .map(|(_, value)| value)
            .collect();
        Removed { named }
    }

    /// `name` is hop-by-hop.
    fn removes(&self, name: &[u8]) -> bool {
        HOP_BY_HOP.iter().any(|h| is(name, h))
            || self
                .named
                .iter()
                .any(|line| connection_names(line).any(|token| token.eq_ignore_ascii_case(name)))
    }
}

/// The field names a `Connection` value names beyond `close` and the fixed hop-by-hop list,
/// read as `proxy::forward` reads them: a line that is not text names nothing, and a token
/// that is not a valid field name is skipped.
fn connection_names(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let text = value.iter().all(|&b| is_text(b));
    list(value).filter(move |token| {
        text && token.iter().all(|&b| is_tchar(b))
            && !token.eq_ignore_ascii_case(b"close")
            && !HOP_BY_HOP.iter().any(|h| is(token, h))
    })
}

#[cfg(test)]
mod tests;
