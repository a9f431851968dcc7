//! The canonical request: one spelling of a request's path and host, fixed before routing.
//!
//! A limit on `/login` protects nothing if `/%6cogin`, `//login` or `/x/../login` reach the
//! same handler upstream under another route's policy: the upstream decodes and collapses
//! what sluice matched literally. So the first stage of the pipeline (`pipeline/canonical.rs`)
//! puts every path into one form, routes on that form and sends that form upstream, and
//! refuses what has no single meaning. This module holds the pure functions it uses; they
//! are also what `config` applies to the paths of `match`, so that a route and a request are
//! compared in the same form.
//!
//! # The path (RFC 3986 §6.2.2)
//!
//! [`path`] returns the path unchanged (borrowed: no allocation) when it is already canonical,
//! which nearly every request's is, else a rebuilt copy:
//!
//! - percent-encoded unreserved characters (`A–Z a–z 0–9 - . _ ~`) are decoded (`%6c` → `l`,
//!   `%2e` → `.`); every other percent-encoding stays, with upper-case hex digits (`%c3` →
//!   `%C3`);
//! - bytes that RFC 3986 does not allow in a path are percent-encoded: non-ASCII bytes (hyper
//!   passes valid UTF-8 only), `"`, `{`, `}`, `[`, `]`, `^`, `|` and `\`. So `/café` and
//!   `/caf%C3%A9` are one path, as they are to every upstream that decodes;
//! - dot segments are removed (RFC 3986 §5.2.4) once the segment is decoded, so `/%2e/login`
//!   is `/login`; runs of `/` are merged (`//login` → `/login`). A trailing slash stays.
//!
//! Refused ([`NotCanonical`], 400): bad percent-encoding, `%00`, a `..` that would climb above the
//! root, a `.` or `..` segment carrying `;` parameters (`/..;/`, which Tomcat and Spring read as
//! `..`), and — unless `server.escaped_slashes: keep` — `%2F`, `%5C` and a raw `\`: many
//! upstreams turn them into `/` after sluice has split the segments. A raw `\` is treated as
//! its encoding `%5C` (RFC 3986 does not allow it in a path; WHATWG URL parsers read it as `/`).
//! With `keep`, they are forwarded encoded (`%2F`, `%5C`) and never split a segment.
//!
//! Case stays significant, as in NGINX and Envoy. `;` path parameters (`/login;jsessionid=1`)
//! stay in the path sent upstream; [`match_path`] drops them for routing only, since servlet
//! containers and Spring strip them before matching: `/login;x` takes the `/login` route.
//!
//! # The host
//!
//! [`host`] checks one `Host` value or HTTP/2 `:authority`: a DNS name (letters, digits, `-`,
//! `_`, dot-separated labels of at most 63 bytes, one optional trailing dot), an IPv4 address
//! or a bracketed IPv6 address, with an optional port. Narrower than RFC 3986's `reg-name` on
//! purpose: percent-encoding and sub-delimiters appear in no DNS name, and an upstream that
//! decoded `admin%2eexample%2ecom` would serve a host that no route saw.

use std::borrow::Cow;
use std::net::Ipv6Addr;

use serde::Serialize;

/// `server.escaped_slashes`: what happens to a path holding `%2F`, `%5C` or a raw `\`.
///
/// `/a%2Fb` is one segment to sluice and to RFC 3986, but many upstreams decode it before
/// routing and see `/a/b`: a route boundary is then crossed with a spelling sluice does not
/// split on. `reject` closes that door; `keep` is for APIs whose identifiers really hold a slash
/// (`/files/a%2Fb.txt`) and whose upstream does not decode it before routing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// 400 `bad-request`.
    #[default]
    Reject,
    /// Forwarded, encoded (`%2F`, `%5C`): they never split segments.
    Keep,
}

/// Why a request has no single meaning: 400 `bad-request`. The message is the `detail` of the
/// problem JSON (`rescue` renders one body per cause at compile time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum NotCanonical {
    /// `%` not followed by two hex digits.
    #[error("the path has a % that is not followed by two hex digits")]
    PercentEncoding,
    /// `%00` (or a NUL byte).
    #[error("the path contains %00")]
    Nul,
    /// `%2F`, `%5C` or a raw `\` with `escaped_slashes: reject`.
    #[error("the path contains an escaped slash or a backslash (%2F, %5C or \\)")]
    EscapedSlash,
    /// A `..` segment with nothing left to remove.
    #[error("the path has a .. segment that climbs above the root")]
    AboveRoot,
    /// `.;…` or `..;…`.
    #[error("the path has a . or .. segment with ; parameters")]
    DotParameters,
    /// Neither `/…` nor `*`.
    #[error("the request target is not a path")]
    NotAPath,
    /// The canonical path is longer than a URI may be.
    #[error("the path is too long once normalised")]
    PathTooLong,
    /// No `Host` and no `:authority`, on HTTP/1.1 or HTTP/2.
    #[error("the request has no Host")]
    HostMissing,
    /// More than one `Host` line.
    #[error("the request has more than one Host")]
    HostRepeated,
    /// A `Host` or `:authority` that is not a host name or address with an optional port.
    #[error("the Host is not a valid host name or address")]
    HostInvalid,
    /// `:authority` (or an absolute-form target) and `Host` name different hosts.
    #[error("the Host differs from the authority of the request target")]
    HostMismatch,
}

impl NotCanonical {
    /// Every cause, for tests and pre-rendering.
    pub const ALL: [NotCanonical; 11] = [
        NotCanonical::PercentEncoding,
        NotCanonical::Nul,
        NotCanonical::EscapedSlash,
        NotCanonical::AboveRoot,
        NotCanonical::DotParameters,
        NotCanonical::NotAPath,
        NotCanonical::PathTooLong,
        NotCanonical::HostMissing,
        NotCanonical::HostRepeated,
        NotCanonical::HostInvalid,
        NotCanonical::HostMismatch,
    ];
}

/// A checked `Host` value: the name without port and without its trailing dot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host<'a> {
    /// The host name or address (IPv6 with its brackets), case as sent.
    pub name: &'a str,
    /// The port, when one was given.
    pub port: Option<u16>,
}

// === path ===

/// The canonical form of `raw`, a request path without its query (see the module docs).
/// Borrowed — no allocation — when `raw` is already canonical. `*` (`OPTIONS *`) is returned
/// as is. An empty path is refused: `http` gives one only for an authority-form target
/// (`CONNECT host:port`), which sluice does not tunnel (an absolute-form target without a path
/// already reads as `/`).
///
/// # Errors
/// [`NotCanonical`] for a path with no single meaning.
pub fn path(raw: &str, escaped: EscapedSlashes) -> Result<Cow<'_, str>, NotCanonical> {
    match raw {
        "*" => return Ok(Cow::Borrowed(raw)),
        _ if !raw.starts_with('/') => return Err(NotCanonical::NotAPath),
        _ => {}
    }
    if is_canonical(raw.as_bytes(), escaped) {
        return Ok(Cow::Borrowed(raw));
    }
    rebuild(raw.as_bytes(), escaped).map(Cow::Owned)
}

/// The path routes are matched against: `path` (canonical) without its `;` parameters, a
/// segment left empty by that merged away (`/a;x/b;y` → `/a/b`, `/;x/b` → `/b`). Borrowed when
/// there is no `;`.
pub fn match_path(path: &str) -> Cow<'_, str> {
    let Some(rest) = path.strip_prefix('/').filter(|_| path.contains(';')) else {
        return Cow::Borrowed(path);
    };
    let mut out = String::with_capacity(path.len());
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let name = segment.split(';').next().unwrap_or_default();
        if name.is_empty() && segments.peek().is_some() {
            continue;
        }
        out.push('/');
        out.push_str(name);
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// True when [`rebuild`] would return `path` unchanged. Conservative: anything it is unsure of
/// (including every error) goes to `rebuild`, which decides.
fn is_canonical(path: &[u8], escaped: EscapedSlashes) -> bool {
    let mut segments = path[1..].split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            b"" if !last => return false,
            b"." | b".." => return false,
            s if s.starts_with(b".;") || s.starts_with(b"..;") => return false,
            _ => {}
        }
        let mut i = 0;
        while i < segment.len() {
            match segment[i] {
                b'%' => {
                    let (Some(&hi), Some(&lo)) = (segment.get(i + 1), segment.get(i + 2)) else {
                        return false;
                    };
                    let (Some(h), Some(l)) = (upper_hex(hi), upper_hex(lo)) else {
                        return false;
                    };
                    match h << 4 | l {
                        0 => return false,
                        b'/' | b'\\' if escaped == EscapedSlashes::Reject => return false,
                        v if is_unreserved(v) => return false,
                        _ => {}
                    }
                    i += 3;
                }
                b if is_pchar(b) => i += 1,
                _ => return false,
            }
        }
    }
    true
}

/// The canonical path, rebuilt: segments decoded and re-encoded one by one, dot segments and
/// empty segments resolved as they come.
fn rebuild(path: &[u8], escaped: EscapedSlashes) -> Result<String, NotCanonical> {
    let mut out = String::with_capacity(path.len() + 8);
    // The last segment was empty or a dot segment: the path ends with `/`.
    let mut trailing = false;
    for segment in path[1..].split(|&b| b == b'/') {
        let start = out.len();
        out.push('/');
        decode_segment(segment, escaped, &mut out)?;
        match &out[start + 1..] {
            "" | "." => {
                out.truncate(start);
                trailing = true;
            }
            ".." => {
                out.truncate(start);
                let parent = out.rfind('/').ok_or(NotCanonical::AboveRoot)?;
                out.truncate(parent);
                trailing = true;
            }
            s if s.starts_with(".;") || s.starts_with("..;") => {
                return Err(NotCanonical::DotParameters)
            }
            _ => trailing = false,
        }
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

/// Appends `segment` in canonical form: unreserved escapes decoded, other escapes upper-cased,
/// bytes not allowed in a path encoded.
fn decode_segment(
    segment: &[u8],
    escaped: EscapedSlashes,
    out: &mut String,
) -> Result<(), NotCanonical> {
    let mut i = 0;
    while i < segment.len() {
        let b = segment[i];
        let byte = if b == b'%' {
            let hex = |at: usize| segment.get(at).and_then(|&c| any_hex(c));
            let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) else {
                return Err(NotCanonical::PercentEncoding);
            };
            i += 3;
            match h << 4 | l {
                v if is_unreserved(v) => {
                    out.push(char::from(v));
                    continue;
                }
                v => v,
            }
        } else {
            i += 1;
            if is_pchar(b) {
                out.push(char::from(b));
                continue;
            }
            b
        };
        match byte {
            0 => return Err(NotCanonical::Nul),
            b'/' | b'\\' if escaped == EscapedSlashes::Reject => {
                return Err(NotCanonical::EscapedSlash)
            }
            _ => push_encoded(out, byte),
        }
    }
    Ok(())
}

fn push_encoded(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xf)]));
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// A byte RFC 3986 allows unencoded in a path segment: `unreserved`, `sub-delims`, `:`, `@`.
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// A hex digit of either case.
fn any_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A hex digit in canonical (upper) case.
fn upper_hex(c: u8) -> Option<u8> {
    if c.is_ascii_lowercase() {
        None
    } else {
        any_hex(c)
    }
}

// === host ===

/// Checks one `Host` value or `:authority` (see the module docs). One pass over the bytes
/// with a class table, no `str` pattern searches: it runs for every request.
///
/// # Errors
/// [`NotCanonical::HostInvalid`] when it is anything else (user info, an empty or repeated dot,
/// a bad port, bytes that are not ASCII).
pub fn host(value: &str) -> Result<Host<'_>, NotCanonical> {
    let bytes = value.as_bytes();
    let (name_end, rest) = if bytes.first() == Some(&b'[') {
        let end = bytes
            .iter()
            .position(|&b| b == b']')
            .ok_or(NotCanonical::HostInvalid)?;
        value[1..end]
            .parse::<Ipv6Addr>()
            .map_err(|_| NotCanonical::HostInvalid)?;
        (end + 1, end + 1)
    } else {
        let end = dns_name(bytes).ok_or(NotCanonical::HostInvalid)?;
        let name_end = if end > 0 && bytes[end - 1] == b'.' {
            end - 1
        } else {
            end
        };
        (name_end, end)
    };
    let port = match &bytes[rest..] {
        [] | [b':'] => None,
        [b':', digits @ ..] => Some(port_number(digits).ok_or(NotCanonical::HostInvalid)?),
        _ => return Err(NotCanonical::HostInvalid),
    };
    // `name_end` is at an ASCII byte or the end: a char boundary.
    let name = value.get(..name_end).ok_or(NotCanonical::HostInvalid)?;
    Ok(Host { name, port })
}

/// What a byte may be in a DNS name (see [`dns_name`]).
const LABEL: u8 = 1;
const DOT: u8 = 2;
const COLON: u8 = 3;
static HOST_BYTE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
            LABEL
        } else if c == b'.' {
            DOT
        } else if c == b':' {
            COLON
        } else {
            0
        };
        b += 1;
    }
    table
};

/// Where the DNS name (or dotted IPv4 address, which has the same shape) at the start of
/// `value` ends — at its `:` or at the end — if it is one: labels of 1 to 63 letters, digits,
/// `-` or `_`, one optional trailing dot, at most 253 bytes without it.
fn dns_name(value: &[u8]) -> Option<usize> {
    let mut label = 0;
    let mut end = value.len();
    for (i, &b) in value.iter().enumerate() {
        match HOST_BYTE[usize::from(b)] {
            LABEL if label < 63 => label += 1,
            DOT if label > 0 => label = 0,
            COLON => {
                end = i;
                break;
            }
            _ => return None,
        }
    }
    // Ends with a label, or with one dot after a label (checked as the dot came).
    let name = if label == 0 { end.checked_sub(1)? } else { end };
    (name > 0 && name <= 253).then_some(end)
}

/// A port: 1 to 5 ASCII digits, at most 65535.
fn port_number(digits: &[u8]) -> Option<u16> {
    if digits.len() > 5 {
        return None;
    }
    let mut port: u32 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        port = port * 10 + u32::from(b - b'0');
    }
    u16::try_from(port).ok()
}

// === impl Host ===

impl Host<'_> {
    /// True when `self` and `other` name the same host: names equal but for case, and the
    /// same port when both give one (`example.com` and `example.com:443` agree: the port left
    /// out is the scheme's).
    pub fn agrees(&self, other: &Host<'_>) -> bool {
        self.name.eq_ignore_ascii_case(other.name)
            && match (self.port, other.port) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

#[cfg(test)]
mod tests;
