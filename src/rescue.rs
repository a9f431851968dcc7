//! Every response sluice makes itself: RFC 9457 problem JSON, with `Retry-After` where the
//! client should come back later.
//!
//! The pipeline never builds error responses; it returns a [`Rejection`], and [`respond`] turns
//! it into the status, headers and body the contract fixes. One place, so every 4xx/5xx of
//! sluice looks the same.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;
use crate::limit::headers::{decimal, retry_after_secs, RateLimitField};
use crate::limit::Rejected;

/// Why sluice answered a request itself instead of forwarding it.
#[derive(Debug, Clone)]
pub enum Rejection {
    /// No route matches: 404.
    NoRoute,
    /// A rate limit is exhausted: 429.
    RateLimited {
        /// The route's name.
        route: std::sync::Arc<str>,
        /// Which limit, with its rate and burst: `limit per-client of route x: 100/s, burst 200`.
        detail: String,
        /// Time until the bucket admits this request.
        retry_after: Duration,
    },
    /// A concurrency cap refused the request (queue full, queue timeout, shed): 503.
    Capacity {
        /// The route's name.
        route: std::sync::Arc<str>,
        /// `route x` or `upstream y`: whose cap.
        cap: String,
        /// What happened.
        rejected: Rejected,
    },
    /// The upstream refused or could not be reached: 502.
    UpstreamUnavailable {
        /// The route's name.
        route: std::sync::Arc<str>,
        /// What failed, for the `detail` member.
        detail: String,
    },
    /// The upstream did not answer within its `timeout`: 504.
    UpstreamTimeout {
        /// The route's name.
        route: std::sync::Arc<str>,
        /// The upstream's name and timeout.
        detail: String,
    },
    /// A `scope: global` limit could not ask Redis and `store.redis.on_error` is `deny`: 503
    /// with reason `store-unavailable` (an extension of the contract's reasons).
    StoreUnavailable {
        /// The route's name.
        route: std::sync::Arc<str>,
        /// Which limit, and why: built once per limit.
        detail: std::sync::Arc<str>,
    },
}

const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";
const REDUCED_CAPACITY: &str =
    "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity";
const ABOUT_BLANK: &str = "about:blank";

// === impl Rejection ===

impl Rejection {
    /// The `reason` member: tells the cases apart for scripts.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::NoRoute => "no-route",
            Rejection::RateLimited { .. } => "rate-limited",
            Rejection::Capacity { rejected, .. } => rejected.reason(),
            Rejection::UpstreamUnavailable { .. } => "upstream-unavailable",
            Rejection::UpstreamTimeout { .. } => "upstream-timeout",
            Rejection::StoreUnavailable { .. } => "store-unavailable",
        }
    }

    /// The status the contract assigns.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NoRoute => StatusCode::NOT_FOUND,
            Rejection::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Capacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            Rejection::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Rejection::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// `Retry-After` in whole seconds, where the contract sends one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Rejection::RateLimited { retry_after, .. } => Some(retry_after_secs(*retry_after)),
            // The cap's estimate is already whole seconds in 1..=60.
            Rejection::Capacity { rejected, .. } => {
                Some(retry_after_secs(rejected.retry_after()).clamp(1, 60))
            }
            _ => None,
        }
    }
}

/// Builds the response for a rejection: status, `Content-Type: application/problem+json`,
/// `Retry-After` when there is one, and the problem JSON body.
pub fn respond(rejection: &Rejection) -> Response<ProxyBody> {
    let status = rejection.status();
    let retry_after = rejection.retry_after();
    let (kind, route, detail): (&str, Option<&str>, Option<&str>) = match rejection {
        Rejection::NoRoute => (ABOUT_BLANK, None, Some("no route matches this request")),
        Rejection::RateLimited { route, detail, .. } => (QUOTA_EXCEEDED, Some(route), Some(detail)),
        Rejection::Capacity { route, cap, .. } => (REDUCED_CAPACITY, Some(route), Some(cap)),
        Rejection::UpstreamUnavailable { route, detail }
        | Rejection::UpstreamTimeout { route, detail } => (ABOUT_BLANK, Some(route), Some(detail)),
        // Not a capacity decision (that type is for queue-full, queue-timeout, shed): Redis
        // being unreachable says nothing about the upstream.
        Rejection::StoreUnavailable { route, detail } => (ABOUT_BLANK, Some(route), Some(detail)),
    };
    let body = problem_json(kind, status, rejection.reason(), detail, route, retry_after);
    let mut res = Response::new(ProxyBody::full(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(secs) = retry_after {
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

/// The 429 of one rate limit, rendered when the route is built: every member but `retry_after`
/// is fixed, and the bodies (and `RateLimit` fields) for a `Retry-After` of up to a minute —
/// nearly all of them — are rendered ahead too, so a rejection clones a reference-counted buffer
/// instead of formatting. Under overload the rejection path is the hot path.
#[derive(Debug, Clone)]
pub struct RateLimitedTemplate {
    /// The body up to and including `"retry_after":`, for longer waits.
    head: Bytes,
    /// Whole bodies for `retry_after` 0..=60, by seconds.
    bodies: Arc<[Bytes]>,
    /// `"<limit>";r=0;t=<secs>` for secs 0..=60, when the route sends `RateLimit` fields.
    fields: Option<Arc<[HeaderValue]>>,
    /// The limit's name, for `RateLimit` items beyond a minute.
    limit: Arc<str>,
}

/// Waits up to this many seconds have pre-rendered 429s.
const PRERENDERED_SECS: u64 = 60;

impl RateLimitedTemplate {
    /// The template for `limit` of `route`; `detail` names the limit; `fields`: the route
    /// sends `RateLimit` fields.
    pub fn new(route: &str, limit: &Arc<str>, detail: &str, fields: bool) -> Self {
        let mut body = problem_json(
            QUOTA_EXCEEDED,
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            Some(detail),
            Some(route),
            None,
        );
        body.pop(); // the closing brace
        body.push_str(",\"retry_after\":");
        let head = Bytes::from(body);
        let bodies = (0..=PRERENDERED_SECS)
            .map(|secs| body_with(&head, secs))
            .collect();
        let fields = fields.then(|| {
            (0..=PRERENDERED_SECS)
                .map(|secs| {
                    let mut f = RateLimitField::new();
                    f.push_denied(limit, Duration::from_secs(secs.max(1)));
                    f.finish()
                })
                .collect()
        });
        RateLimitedTemplate {
            head,
            bodies,
            fields,
            limit: limit.clone(),
        }
    }

    /// The 429 response: what [`respond`] makes for [`Rejection::RateLimited`], byte for byte.
    pub fn respond(&self, retry_after: Duration) -> Response<ProxyBody> {
        let secs = retry_after_secs(retry_after);
        let body = match self.bodies.get(secs as usize) {
            Some(body) => body.clone(),
            None => body_with(&self.head, secs),
        };
        let mut res = Response::new(ProxyBody::full(body));
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let headers = res.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(RETRY_AFTER, retry_after_value(secs));
        res
    }

    /// The `RateLimit` field of this limit's 429: its item alone, `r=0`, `t` = `Retry-After`.
    pub fn ratelimit_field(&self, retry_after: Duration) -> HeaderValue {
        let secs = retry_after_secs(retry_after);
        match self.fields.as_ref().and_then(|f| f.get(secs as usize)) {
            Some(value) => value.clone(),
            None => {
                let mut f = RateLimitField::new();
                f.push_denied(&self.limit, retry_after);
                f.finish()
            }
        }
    }
}

/// `head` + the decimal `secs` + `}`, in a buffer of exactly that size (so `Bytes` takes it
/// over without another allocation).
fn body_with(head: &Bytes, secs: u64) -> Bytes {
    let mut buf = [0u8; 20];
    let digits = decimal(secs, &mut buf);
    let mut body = Vec::with_capacity(head.len() + digits.len() + 1);
    body.extend_from_slice(head);
    body.extend_from_slice(digits);
    body.push(b'}');
    Bytes::from(body)
}

/// `Retry-After` values of up to a minute — nearly all of them — come from a static table:
/// no allocation on the rejection path.
fn retry_after_value(secs: u64) -> HeaderValue {
    const SMALL: [&str; 61] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
        "32", "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46",
        "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60",
    ];
    match SMALL.get(secs as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(secs),
    }
}

/// The RFC 9457 body. Written by hand: the members are few and fixed, and this runs on the
/// rejection path, which must stay cheap under overload.
fn problem_json(
    kind: &str,
    status: StatusCode,
    reason: &str,
    detail: Option<&str>,
    route: Option<&str>,
    retry_after: Option<u64>,
) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"type\":");
    push_json_str(&mut out, kind);
    out.push_str(",\"title\":");
    push_json_str(&mut out, status.canonical_reason().unwrap_or("Error"));
    let _ = write!(out, ",\"status\":{},\"reason\":", status.as_u16());
    push_json_str(&mut out, reason);
    if let Some(detail) = detail {
        out.push_str(",\"detail\":");
        push_json_str(&mut out, detail);
    }
    if let Some(route) = route {
        out.push_str(",\"route\":");
        push_json_str(&mut out, route);
    }
    if let Some(secs) = retry_after {
        let _ = write!(out, ",\"retry_after\":{secs}");
    }
    out.push('}');
    out
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    // Names and details rarely need escaping: copy them whole when they do not.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body is valid JSON with exactly the contract's members.
    #[test]
    fn problem_json_is_valid_and_complete() {
        let body = problem_json(
            QUOTA_EXCEEDED,
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            Some("limit \"a\" of route b: 1/s, burst 1"),
            Some("b"),
            Some(3),
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], QUOTA_EXCEEDED);
        assert_eq!(v["title"], "Too Many Requests");
        assert_eq!(v["status"], 429);
        assert_eq!(v["reason"], "rate-limited");
        assert_eq!(v["detail"], "limit \"a\" of route b: 1/s, burst 1");
        assert_eq!(v["route"], "b");
        assert_eq!(v["retry_after"], 3);
    }

    /// The precomputed 429 is byte-identical to the generic one.
    #[test]
    fn rate_limited_template_matches_respond() {
        let t = RateLimitedTemplate::new(
            "r\"1",
            &Arc::from("a"),
            "limit a of route r: 1/s, burst 1",
            true,
        );
        for ms in [1, 999, 1000, 1001, 59_500, 60_001, 123_456_789] {
            let d = Duration::from_millis(ms);
            let fast = t.respond(d);
            let slow = respond(&Rejection::RateLimited {
                route: "r\"1".into(),
                detail: "limit a of route r: 1/s, burst 1".into(),
                retry_after: d,
            });
            let mut field = RateLimitField::new();
            field.push_denied("a", d);
            assert_eq!(t.ratelimit_field(d), field.finish());
            assert_eq!(fast.status(), slow.status());
            assert_eq!(fast.headers(), slow.headers());
            let body = |r: Response<ProxyBody>| {
                use http_body::Body as _;
                let mut b = r.into_body();
                let waker = std::task::Waker::noop();
                let mut cx = std::task::Context::from_waker(waker);
                match std::pin::Pin::new(&mut b).poll_frame(&mut cx) {
                    std::task::Poll::Ready(Some(Ok(f))) => f.into_data().unwrap(),
                    _ => panic!("no body"),
                }
            };
            assert_eq!(body(fast), body(slow));
        }
    }

    /// Control characters are escaped, so any name yields valid JSON.
    #[test]
    fn escapes_control_characters() {
        let mut s = String::new();
        push_json_str(&mut s, "a\u{1}b\n");
        assert_eq!(s, "\"a\\u0001b\\n\"");
    }
}
