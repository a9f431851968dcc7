//! sluice's own answers to gRPC requests (`content-type: application/grpc` or
//! `application/grpc+…`): a gRPC client library reads the status from `grpc-status`, not from
//! the HTTP status, and would turn a 429 or 503 into an opaque UNAVAILABLE or UNKNOWN. So a
//! problem answered to a gRPC request is HTTP 200, `content-type: application/grpc`,
//! trailers-only (one HEADERS frame that ends the stream, no body) with:
//! - `grpc-status`: 400/413/422/431 → 3 INVALID_ARGUMENT, 404 → 12 UNIMPLEMENTED, 408/504 → 4
//!   DEADLINE_EXCEEDED, 429 → 8 RESOURCE_EXHAUSTED, 502/503 → 14 UNAVAILABLE (other statuses,
//!   which sluice does not answer today, → 2 UNKNOWN);
//! - `grpc-message`: the problem's reason (`rate-limited`, `queue-full`, …);
//! - `grpc-retry-pushback-ms` (gRFC A6) where the client should wait: the exact wait of a rate
//!   limit, else `Retry-After` × 1000;
//! - the problem's other fields (`RateLimit-Policy`, `RateLimit`) as on any answer.
//!
//! Metrics count the problem's HTTP status, as for any request: the caller reads it first.

use std::time::Duration;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::Rejection;
use crate::body::ProxyBody;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// True for a gRPC request: `content-type` `application/grpc` or `application/grpc+…`
/// (`+proto`, `+json`), case-insensitively.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.as_bytes();
            ct.len() >= 16
                && ct[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(ct.get(16), None | Some(b'+' | b';'))
        })
}

/// The gRPC status code of an HTTP status sluice answers with.
fn code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 | 422 | 431 => "3",
        404 => "12",
        408 | 504 => "4",
        429 => "8",
        502 | 503 => "14",
        _ => "2",
    }
}

/// `problem`, the response sluice made for `rejection`, as a gRPC answer (see the module docs).
pub(crate) fn answer(problem: Response<ProxyBody>, rejection: &Rejection) -> Response<ProxyBody> {
    let (mut parts, _) = problem.into_parts();
    let headers = &mut parts.headers;
    let pushback = match rejection {
        // Exact where sluice knows it (not spread): the limit's own wait.
        Rejection::RateLimited { retry_after, .. } => Some(*retry_after),
        _ => headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map(Duration::from_secs),
    };
    headers.insert(GRPC_STATUS, HeaderValue::from_static(code(parts.status)));
    headers.insert(GRPC_MESSAGE, HeaderValue::from_static(rejection.reason()));
    if let Some(wait) = pushback {
        headers.insert(GRPC_PUSHBACK, HeaderValue::from(wait.as_millis() as u64));
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.remove(CONTENT_LENGTH);
    parts.status = StatusCode::OK;
    Response::from_parts(parts, ProxyBody::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `application/grpc` and its `+format` variants are gRPC; look-alikes are not.
    #[test]
    fn grpc_content_types() {
        let of = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            is_grpc(&h)
        };
        assert!(of("application/grpc"));
        assert!(of("application/grpc+proto"));
        assert!(of("Application/GRPC+json"));
        assert!(!of("application/grpc-web"));
        assert!(!of("application/json"));
        assert!(!of("application/grp"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    /// The mapping of "Decisions after review".
    #[test]
    fn statuses_map_to_grpc_codes() {
        let cases = [
            (400, "3"),
            (404, "12"),
            (408, "4"),
            (413, "3"),
            (422, "3"),
            (429, "8"),
            (431, "3"),
            (502, "14"),
            (503, "14"),
            (504, "4"),
        ];
        for (status, want) in cases {
            assert_eq!(
                code(StatusCode::from_u16(status).unwrap()),
                want,
                "{status}"
            );
        }
    }
}
