//! The pushback header fields: `RateLimit-Policy`, `RateLimit` and `Retry-After`.
//!
//! Sits at the end of the rate limit stage: once every limit of a route has decided, these
//! functions turn the decisions into field values for the response (200s and 429s alike, see the
//! contract's "How sluice pushes back"). The format is draft-ietf-httpapi-ratelimit-headers-10:
//! RFC 9651 lists with one item per limit, named by the limit's name (an sf-string):
//!
//! ```text
//! RateLimit-Policy: "per-client";q=200;w=2, "total";q=1000;w=1
//! RateLimit: "per-client";r=0;t=3
//! ```
//!
//! `RateLimit-Policy` is constant per route: [`policy_value`] computes it once when the route is
//! built. `RateLimit` changes with every response: [`RateLimitField`] formats it with no
//! allocation but the returned `HeaderValue`'s own buffer (one allocation per response).

use std::fmt;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use crate::clock::ceil_secs;
use crate::config::RateLimitConfig;

/// `RateLimit-Policy`: the quota of each limit of the route.
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// `RateLimit`: the state of each limit's bucket after this request.
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The largest sf-integer (RFC 9651 §3.3.1: at most 15 digits). Seconds beyond it (31 million
/// years) cannot come from a valid config, but the output must stay parseable regardless.
const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

/// Bytes kept on the stack by [`RateLimitField`]: four items with 20-character names fit.
const INLINE_CAPACITY: usize = 256;

/// Builds a `RateLimit` field value, one item per limit, in a buffer that lives on the stack
/// unless the items outgrow `INLINE_CAPACITY` bytes.
///
/// ```ignore
/// let mut field = RateLimitField::new();
/// field.push("per-client", 199, Duration::from_millis(10));
/// field.push("total", 999, Duration::from_millis(1));
/// response.headers_mut().insert(RATELIMIT, field.finish());
/// ```
///
/// [`finish`](Self::finish) empties the builder, so one can be reused; the only allocation per
/// response is the `HeaderValue`'s buffer (plus one if the items spill to the heap).
pub struct RateLimitField {
    /// The items so far while they fit: most routes have one to three limits with short names,
    /// so the common case needs no heap buffer of its own.
    inline: [u8; INLINE_CAPACITY],
    /// Bytes used in `inline`; meaningless once `spill` is in use.
    len: usize,
    /// The items once they no longer fit in `inline` (non-empty ⇔ in use). Kept across
    /// [`finish`](Self::finish) so a reused builder spills into the same allocation.
    spill: Vec<u8>,
}

/// `RateLimit-Policy` for a route with these limits, in this order:
/// `"<name>";q=<burst>;w=<seconds>` per limit, where `w` is the time an empty bucket takes to
/// fill up again (burst × emission interval), in whole seconds rounded up, at least 1.
///
/// An empty `limits` gives an empty value; a route without limits sends neither field.
/// Called once per route when the route is built; allocates.
pub fn policy_value(limits: &[&RateLimitConfig]) -> HeaderValue {
    let mut buf = Vec::with_capacity(limits.iter().map(|l| l.name.len() + 32).sum());
    for (i, limit) in limits.iter().enumerate() {
        if i > 0 {
            buf.put(b", ");
        }
        put_sf_string(&mut buf, &limit.name);
        buf.put(b";q=");
        put_uint(&mut buf, u64::from(limit.burst.get()));
        buf.put(b";w=");
        put_uint(&mut buf, refill_secs(limit));
    }
    into_header_value(&buf)
}

/// `Retry-After` (delay-seconds) for a request that will be admitted after `d`: whole seconds,
/// rounded up, at least 1 (`0.2 s → 1`, `1.0 s → 1`, `1.7 s → 2`). A client that waits this long
/// is not rejected again by the same bucket (unless others drain it first).
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    ceil_secs(d).max(1)
}

/// Seconds an empty bucket of `limit` takes to fill up: burst × emission interval, rounded up,
/// at least 1. The `w` parameter of `RateLimit-Policy`.
pub(crate) fn refill_secs(limit: &RateLimitConfig) -> u64 {
    let nanos = limit.rate.emission_interval().as_nanos() * u128::from(limit.burst.get());
    let secs = nanos.div_ceil(1_000_000_000).max(1);
    u64::try_from(secs).unwrap_or(u64::MAX)
}

// === impl RateLimitField ===

impl RateLimitField {
    /// An empty field. Does not allocate.
    pub fn new() -> Self {
        RateLimitField {
            inline: [0; INLINE_CAPACITY],
            len: 0,
            spill: Vec::new(),
        }
    }

    /// Appends `"<name>";r=<remaining>;t=<seconds>` for a limit that admitted the request:
    /// `remaining` whole tokens left, `reset` the time until the bucket holds one more token
    /// (sent in whole seconds rounded up; 0 only when `reset` is zero, i.e. the bucket is full).
    pub fn push(&mut self, name: &str, remaining: u32, reset: Duration) -> &mut Self {
        self.push_item(name, remaining, ceil_secs(reset))
    }

    /// Appends the item of the limit that rejected a request (the only item a 429 carries):
    /// `r=0` and `t` equal to `Retry-After`, i.e. [`retry_after_secs`]`(retry_after)`.
    pub(crate) fn push_denied(&mut self, name: &str, retry_after: Duration) -> &mut Self {
        self.push_item(name, 0, retry_after_secs(retry_after))
    }

    /// No item pushed since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// The field value of the items pushed so far; empties the builder for reuse.
    pub fn finish(&mut self) -> HeaderValue {
        let value = into_header_value(self.bytes());
        self.len = 0;
        self.spill.clear();
        value
    }

    fn push_item(&mut self, name: &str, remaining: u32, secs: u64) -> &mut Self {
        if !self.is_empty() {
            self.put(b", ");
        }
        put_sf_string(self, name);
        self.put(b";r=");
        put_uint(self, u64::from(remaining));
        self.put(b";t=");
        put_uint(self, secs);
        self
    }

    fn bytes(&self) -> &[u8] {
        if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }
}

impl Default for RateLimitField {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RateLimitField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RateLimitField")
            .field(&String::from_utf8_lossy(self.bytes()))
            .finish()
    }
}

/// Where the formatting helpers write: a `Vec` at build time, a [`RateLimitField`] per response.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for RateLimitField {
    fn put(&mut self, bytes: &[u8]) {
        if self.spill.is_empty() {
            if let Some(dst) = self.inline.get_mut(self.len..self.len + bytes.len()) {
                dst.copy_from_slice(bytes);
                self.len += bytes.len();
                return;
            }
            // Outgrown the stack buffer: move to the heap for the rest of this value.
            self.spill.reserve(2 * INLINE_CAPACITY);
            self.spill.extend_from_slice(&self.inline[..self.len]);
        }
        self.spill.extend_from_slice(bytes);
    }
}

/// An RFC 9651 sf-string: `"…"` with `"` and `\` escaped. Characters an sf-string cannot hold
/// (controls, non-ASCII) become `?`; config validation keeps them out of names, this only keeps
/// the field parseable and the code panic-free whatever the input.
fn put_sf_string(out: &mut impl Sink, s: &str) {
    out.put(b"\"");
    let mut rest = s;
    while !rest.is_empty() {
        // Copy the longest run that needs no escaping in one go.
        let clean = rest
            .bytes()
            .position(|b| !(0x20..=0x7e).contains(&b) || b == b'"' || b == b'\\')
            .unwrap_or(rest.len());
        out.put(&rest.as_bytes()[..clean]);
        rest = &rest[clean..];
        let Some(c) = rest.chars().next() else { break };
        match c {
            '"' => out.put(b"\\\""),
            '\\' => out.put(b"\\\\"),
            _ => out.put(b"?"),
        }
        rest = &rest[c.len_utf8()..];
    }
    out.put(b"\"");
}

/// A non-negative sf-integer, clamped to its 15-digit maximum, in decimal without allocating.
fn put_uint(out: &mut impl Sink, n: u64) {
    let mut digits = [0u8; 20];
    out.put(decimal(n.min(SF_INTEGER_MAX), &mut digits));
}

/// `n` in decimal, written at the end of `buf`; the digits are returned. No allocation.
pub(crate) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

fn into_header_value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes)
        .expect("the fields are built from printable ASCII only (names are sanitised)")
}

#[cfg(test)]
mod tests;
