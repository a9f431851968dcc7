//! Every response sluice makes itself: RFC 9457 problem JSON, with `Retry-After` where the
//! client should come back later.
//!
//! The pipeline never builds a response of its own: a stage that refuses a request returns a
//! `Rejection` — small, `Copy`, made without allocating — and this module turns it into the
//! status, headers and body the contract fixes. `Rejection::outcome` is the one mapping from
//! a rejection to its metric outcome: an exhaustive `match`, so a new rejection cannot be
//! mislabelled silently.
//!
//! Under overload the rejection path is the hot path, so nothing here formats per request. Every
//! problem body of a route is rendered when the route is built (`RouteProblems`); a body
//! that carries `retry_after` is rendered up to that member, and a rejection sends that shared
//! buffer, the seconds (a static string up to a minute) and the closing brace as three chunks
//! of one body: reference counts are taken, no byte is copied, nothing is allocated but the
//! response's own header map.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::LOCATION;
use http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;
use crate::canonical;
use crate::config::ByteSize;
use crate::defer::TaskId;
use crate::limit::headers::{retry_after_secs, RateLimitField, RATELIMIT, RATELIMIT_POLICY};
use crate::limit::Rejected;
use crate::metrics::Outcome;
use crate::proxy::request_body::BodyFault;
use crate::proxy::UpstreamError;

mod spread;
pub(crate) use spread::Spread;

/// Why sluice answered a request itself instead of forwarding it. Indices refer to the route's
/// rate limits in config order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// No route matches: 404 `no-route`.
    NoRoute,
    /// Rate limit `limit` of the route is exhausted: 429 `rate-limited`.
    RateLimited {
        /// Which limit.
        limit: usize,
        /// Time until its bucket admits this request.
        retry_after: Duration,
    },
    /// Rate limit `limit` is `scope: global`, Redis did not answer and `on_error` is `deny`:
    /// 503 `store-unavailable`.
    StoreUnavailable {
        /// Which limit.
        limit: usize,
    },
    /// A concurrency cap refused the request: 503 `queue-full`, `queue-timeout` or `shed`.
    Capacity {
        /// The route's cap or the upstream's.
        cap: Cap,
        /// What happened, with its `Retry-After`.
        rejected: Rejected,
    },
    /// Every endpoint of the upstream asked to wait (503 with `Retry-After`): 503
    /// `upstream-pushback`, nothing sent.
    UpstreamPushback {
        /// Until the first endpoint may be asked again.
        retry_after: Duration,
    },
    /// No endpoint of the upstream accepted a connection: 502 `upstream-unavailable`.
    UpstreamUnreachable,
    /// The upstream closed or broke the exchange after the request was sent: 502
    /// `upstream-unavailable`.
    UpstreamBroken,
    /// The upstream did not answer within its `timeout`: 504 `upstream-timeout`.
    UpstreamTimeout,
    /// The request is malformed: 400 `bad-request`.
    BadRequest(BadRequest),
    /// The body is larger than `max_request_body`: 413 `body-too-large`.
    BodyTooLarge,
    /// The body did not arrive within `request_body_timeout`: 408 `body-timeout`.
    BodyTimeout,
    /// The route defers this request but Redis did not take it: 503 `store-unavailable`
    /// (never a 202 for work that is not stored).
    DeferUnavailable,
    /// The route defers this request and the outcome of its write is unknown: 503
    /// `store-unavailable` naming the task (`"task"`, `Location`), whose status tells.
    DeferUnknown(TaskId),
    /// The route holds `defer.max_tasks` tasks: 503 `queue-full`, `Retry-After` its backoff.
    DeferFull,
    /// The `Idempotency-Key` names a task of the route with another body: 422
    /// `idempotency-key-reused`.
    KeyReused,
    /// The body of a request the route defers is larger than `defer.max_body`: 413
    /// `body-too-large`.
    DeferBodyTooLarge,
    /// The route has `max_upgraded` upgraded connections open (handshakes included): 503
    /// `queue-full`, `Retry-After` [`UPGRADED_FULL_RETRY_SECS`].
    UpgradedFull,
}

/// The `Retry-After` of the 503 past `max_upgraded` (before `retry_after_spread`): the
/// longest wait a cap's 503 tells. An upgraded connection lasts minutes or hours, so no drain
/// rate tells when a place frees up, and a WebSocket client told 1 s would knock again at once.
pub(crate) const UPGRADED_FULL_RETRY_SECS: u64 = 60;

/// What was malformed about a request (the `detail` of its 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadRequest {
    /// The body's framing (chunked encoding) is broken, or the client left mid-body.
    MalformedBody,
    /// The path or the host has no canonical form: refused before routing.
    Canonical(canonical::NotCanonical),
    /// The `Idempotency-Key` of a request to a deferring route cannot name a task.
    IdempotencyKey(crate::defer::BadIdempotencyKey),
    /// The header that rate limit `limit` of the route keys on came more than once: refused
    /// before any bucket is charged.
    RepeatedKey {
        /// Which limit.
        limit: usize,
    },
    /// An HTTP/2 extended CONNECT (RFC 8441) for another protocol than `websocket`.
    ConnectProtocol,
}

/// Whose concurrency cap refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cap {
    /// The route's own `concurrency`.
    Route,
    /// The upstream's, shared by every route to it.
    Upstream,
}

const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";
const REDUCED_CAPACITY: &str =
    "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity";
const ABOUT_BLANK: &str = "about:blank";
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The 404 body: the same for every request, so rendered at compile time.
const NO_ROUTE_BODY: &str = concat!(
    r#"{"type":"about:blank","title":"Not Found","status":404,"reason":"no-route","#,
    r#""detail":"no route matches this request"}"#
);

/// A 400 body, rendered at compile time; `$detail` is the cause's `Display` (a test checks).
macro_rules! bad_request_body {
    ($detail:literal) => {
        concat!(
            r#"{"type":"about:blank","title":"Bad Request","status":400,"reason":"bad-request","detail":""#,
            $detail,
            r#""}"#
        )
    };
}

/// The body of a 400 before routing: one per cause, none formatted per request.
fn bad_request_body(cause: canonical::NotCanonical) -> &'static str {
    use canonical::NotCanonical;
    match cause {
        NotCanonical::PercentEncoding => {
            bad_request_body!("the path has a % that is not followed by two hex digits")
        }
        NotCanonical::Nul => bad_request_body!("the path contains %00"),
        NotCanonical::EscapedSlash => {
            bad_request_body!(r"the path contains an escaped slash or a backslash (%2F, %5C or \\)")
        }
        NotCanonical::AboveRoot => {
            bad_request_body!("the path has a .. segment that climbs above the root")
        }
        NotCanonical::DotParameters => {
            bad_request_body!("the path has a . or .. segment with ; parameters")
        }
        NotCanonical::NotAPath => bad_request_body!("the request target is not a path"),
        NotCanonical::PathTooLong => bad_request_body!("the path is too long once normalised"),
        NotCanonical::HostMissing => bad_request_body!("the request has no Host"),
        NotCanonical::HostRepeated => bad_request_body!("the request has more than one Host"),
        NotCanonical::HostInvalid => {
            bad_request_body!("the Host is not a valid host name or address")
        }
        NotCanonical::HostMismatch => {
            bad_request_body!("the Host differs from the authority of the request target")
        }
    }
}

/// What a rejection is answered with: its status, its `reason`, how it is counted, and where its
/// body comes from. [`Rejection::problem`] is the table, one arm per rejection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Problem {
    /// The status.
    pub(crate) status: StatusCode,
    /// The `reason` member: tells the cases apart for scripts.
    pub(crate) reason: &'static str,
    /// How a request that got it is counted in `sluice_requests_total`.
    pub(crate) outcome: Outcome,
    /// Its body (and the fields that go with it).
    body: Body,
}

/// Where a problem's body comes from.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// The same for every route, rendered at compile time.
    Static(&'static str),
    /// One of the route's plain bodies, rendered when the route is built.
    Plain(Plain),
    /// Rate limit `limit`'s 429, and the wait until its bucket admits the request.
    Limited { limit: usize, retry_after: Duration },
    /// Global limit `limit`'s 503 (Redis failed, `on_error: deny`).
    LimitStore(usize),
    /// The 400 of a repeated header that limit `limit` keys on.
    RepeatedKey(usize),
    /// A cap's 503, with its `Retry-After`.
    Cap(Cap, Rejected),
    /// The upstream's pushback 503, with the wait its endpoints asked for.
    Pushback(Duration),
    /// The 503 of a route at `defer.max_tasks`, with `Retry-After` its backoff.
    DeferFull,
    /// The 503 of a task write whose outcome is unknown, naming the task.
    DeferUnknown(TaskId),
    /// The 503 past `max_upgraded`.
    UpgradedFull,
}

/// A route's plain bodies (see [`RouteProblems::plain`]), by what they answer.
#[derive(Debug, Clone, Copy)]
enum Plain {
    Unreachable,
    Broken,
    Timeout,
    MalformedBody,
    TooLarge,
    BodyTimeout,
    DeferUnavailable,
    DeferTooLarge,
    KeyReused,
}

/// How many [`Plain`] bodies a route has.
const PLAIN: usize = 9;

// === impl Rejection ===

impl Rejection {
    /// The problem this rejection is answered with: the one table of them (a row per
    /// rejection, kept on one line each).
    #[rustfmt::skip]
    pub(crate) fn problem(&self) -> Problem {
        use Outcome as O;
        use StatusCode as S;
        let (status, reason, outcome, body) = match *self {
            Rejection::NoRoute => (S::NOT_FOUND, "no-route", O::NoRoute, Body::Static(NO_ROUTE_BODY)),
            Rejection::RateLimited { limit, retry_after } => (S::TOO_MANY_REQUESTS, "rate-limited", O::RateLimited, Body::Limited { limit, retry_after }),
            Rejection::StoreUnavailable { limit } => (S::SERVICE_UNAVAILABLE, "store-unavailable", O::StoreUnavailable, Body::LimitStore(limit)),
            Rejection::Capacity { cap, rejected } => (S::SERVICE_UNAVAILABLE, rejected.reason(), capacity_outcome(rejected), Body::Cap(cap, rejected)),
            Rejection::UpstreamPushback { retry_after } => (S::SERVICE_UNAVAILABLE, "upstream-pushback", O::UpstreamPushback, Body::Pushback(retry_after)),
            Rejection::UpstreamUnreachable => (S::BAD_GATEWAY, "upstream-unavailable", O::UpstreamError, Body::Plain(Plain::Unreachable)),
            Rejection::UpstreamBroken => (S::BAD_GATEWAY, "upstream-unavailable", O::UpstreamError, Body::Plain(Plain::Broken)),
            Rejection::UpstreamTimeout => (S::GATEWAY_TIMEOUT, "upstream-timeout", O::UpstreamTimeout, Body::Plain(Plain::Timeout)),
            Rejection::BadRequest(BadRequest::MalformedBody) => (S::BAD_REQUEST, "bad-request", O::BadRequest, Body::Plain(Plain::MalformedBody)),
            Rejection::BadRequest(BadRequest::Canonical(cause)) => (S::BAD_REQUEST, "bad-request", O::BadRequest, Body::Static(bad_request_body(cause))),
            Rejection::BadRequest(BadRequest::IdempotencyKey(bad)) => (S::BAD_REQUEST, "bad-request", O::BadRequest, Body::Static(bad_idempotency_key(bad))),
            Rejection::BadRequest(BadRequest::RepeatedKey { limit }) => (S::BAD_REQUEST, "bad-request", O::BadRequest, Body::RepeatedKey(limit)),
            Rejection::BadRequest(BadRequest::ConnectProtocol) => (S::BAD_REQUEST, "bad-request", O::BadRequest, Body::Static(bad_request_body!("an HTTP/2 CONNECT may ask for the websocket protocol only"))),
            Rejection::BodyTooLarge => (S::PAYLOAD_TOO_LARGE, "body-too-large", O::BodyTooLarge, Body::Plain(Plain::TooLarge)),
            Rejection::BodyTimeout => (S::REQUEST_TIMEOUT, "body-timeout", O::BodyTimeout, Body::Plain(Plain::BodyTimeout)),
            Rejection::DeferUnavailable => (S::SERVICE_UNAVAILABLE, "store-unavailable", O::StoreUnavailable, Body::Plain(Plain::DeferUnavailable)),
            Rejection::DeferUnknown(id) => (S::SERVICE_UNAVAILABLE, "store-unavailable", O::StoreUnavailable, Body::DeferUnknown(id)),
            Rejection::DeferFull => (S::SERVICE_UNAVAILABLE, "queue-full", O::QueueFull, Body::DeferFull),
            Rejection::KeyReused => (S::UNPROCESSABLE_ENTITY, "idempotency-key-reused", O::BadRequest, Body::Plain(Plain::KeyReused)),
            Rejection::DeferBodyTooLarge => (S::PAYLOAD_TOO_LARGE, "body-too-large", O::BodyTooLarge, Body::Plain(Plain::DeferTooLarge)),
            Rejection::UpgradedFull => (S::SERVICE_UNAVAILABLE, "queue-full", O::QueueFull, Body::UpgradedFull),
        };
        Problem { status, reason, outcome, body }
    }

    /// The `reason` member: tells the cases apart for scripts.
    pub(crate) fn reason(&self) -> &'static str {
        self.problem().reason
    }

    /// How a request that got this answer is counted in `sluice_requests_total`.
    pub(crate) fn outcome(&self) -> Outcome {
        self.problem().outcome
    }
}

/// The outcome of a cap's refusal.
fn capacity_outcome(rejected: Rejected) -> Outcome {
    match rejected {
        Rejected::QueueFull { .. } => Outcome::QueueFull,
        Rejected::QueueTimeout { .. } => Outcome::QueueTimeout,
        Rejected::Shed { .. } => Outcome::Shed,
    }
}

impl From<BodyFault> for Rejection {
    fn from(fault: BodyFault) -> Self {
        match fault {
            BodyFault::TooLarge => Rejection::BodyTooLarge,
            BodyFault::Timeout => Rejection::BodyTimeout,
            BodyFault::Client => Rejection::BadRequest(BadRequest::MalformedBody),
        }
    }
}

impl From<&UpstreamError> for Rejection {
    fn from(err: &UpstreamError) -> Self {
        match err {
            UpstreamError::Pushback { retry_after, .. } => Rejection::UpstreamPushback {
                retry_after: *retry_after,
            },
            UpstreamError::Connect { .. } => Rejection::UpstreamUnreachable,
            UpstreamError::Failed { .. } => Rejection::UpstreamBroken,
            UpstreamError::Timeout { .. } => Rejection::UpstreamTimeout,
        }
    }
}

/// The response to a request rejected before it had a route: 400 (no canonical form) or 404.
/// Its body names no route, so it is the same for every request of a cause: rendered at
/// compile time.
pub(crate) fn unrouted(rejection: Rejection) -> Response<ProxyBody> {
    let p = rejection.problem();
    match p.body {
        Body::Static(text) => problem(
            p.status,
            ProxyBody::full(Bytes::from_static(text.as_bytes())),
        ),
        _ => {
            debug_assert!(
                false,
                "only canonicalisation and routing reject before a route"
            );
            not_found()
        }
    }
}

/// The 404 of a request no route matches.
fn not_found() -> Response<ProxyBody> {
    problem(
        StatusCode::NOT_FOUND,
        ProxyBody::full(Bytes::from_static(NO_ROUTE_BODY.as_bytes())),
    )
}

/// Where the state of deferred tasks is answered, on the proxy listener, before routing.
pub(crate) const TASKS_PATH: &str = "/_sluice/tasks/";

/// The 404 of `GET /_sluice/tasks/<id>` for an id Redis does not know.
const UNKNOWN_TASK_BODY: &str = concat!(
    r#"{"type":"about:blank","title":"Not Found","status":404,"reason":"unknown-task","#,
    r#""detail":"no deferred task has this id (never accepted, or past its ttl)"}"#
);

/// The 503 of `GET /_sluice/tasks/<id>` when Redis did not answer.
const TASK_STORE_UNAVAILABLE_BODY: &str = concat!(
    r#"{"type":"about:blank","title":"Service Unavailable","status":503,"#,
    r#""reason":"store-unavailable","detail":"Redis, where deferred tasks are kept, did not answer in time"}"#
);

/// The 503 of `GET /_sluice/tasks/<id>` while the task's write may still be stored.
const TASK_WRITING_BODY: &str = concat!(
    r#"{"type":"about:blank","title":"Service Unavailable","status":503,"#,
    r#""reason":"store-unavailable","detail":"the task is still being written: whether it is stored is not known yet; ask again"}"#
);

/// The 405 of `/_sluice/tasks/<id>` with a method other than GET or HEAD.
const TASK_METHOD_BODY: &str = concat!(
    r#"{"type":"about:blank","title":"Method Not Allowed","status":405,"#,
    r#""reason":"method-not-allowed","detail":"the state of a deferred task is read with GET"}"#
);

/// `GET /_sluice/tasks/<id>`: the task's state (JSON, see `crate::defer`).
pub(crate) fn task_status(json: String) -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::full(json));
    res.headers_mut().insert(CONTENT_TYPE, JSON);
    res
}

/// `GET /_sluice/tasks/<id>` for an id that names no task (or is not an id).
pub(crate) fn task_unknown() -> Response<ProxyBody> {
    problem(
        StatusCode::NOT_FOUND,
        ProxyBody::full(Bytes::from_static(UNKNOWN_TASK_BODY.as_bytes())),
    )
}

/// `GET /_sluice/tasks/<id>` while Redis does not answer.
pub(crate) fn task_store_unavailable() -> Response<ProxyBody> {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        ProxyBody::full(Bytes::from_static(TASK_STORE_UNAVAILABLE_BODY.as_bytes())),
    )
}

/// `GET /_sluice/tasks/<id>` for a task whose write's outcome is not known yet: 503 with
/// `Retry-After: 1`.
pub(crate) fn task_writing() -> Response<ProxyBody> {
    let mut res = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        ProxyBody::full(Bytes::from_static(TASK_WRITING_BODY.as_bytes())),
    );
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

/// `/_sluice/tasks/<id>` with another method than GET or HEAD: 405 with `Allow`.
pub(crate) fn task_method_not_allowed() -> Response<ProxyBody> {
    let mut res = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        ProxyBody::full(Bytes::from_static(TASK_METHOD_BODY.as_bytes())),
    );
    res.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    res
}

/// The 202 of a deferred request: `Location: /_sluice/tasks/<id>` and
/// `{"id": "<id>", "status": "queued"}`. Formatted per request: the request has just made a
/// Redis round trip, which costs far more.
pub(crate) fn accepted(id: &TaskId) -> Response<ProxyBody> {
    accepted_with(id, crate::defer::accepted_json(id))
}

/// The 202 of a request whose `Idempotency-Key` names a task stored before: that task's
/// `Location` and its current state (the JSON of `GET /_sluice/tasks/<id>`).
pub(crate) fn duplicate(status: &crate::defer::TaskStatus) -> Response<ProxyBody> {
    accepted_with(&status.id, status.to_json())
}

/// A 202 for task `id` with `json`.
fn accepted_with(id: &TaskId, json: String) -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::full(json));
    *res.status_mut() = StatusCode::ACCEPTED;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, JSON);
    if let Ok(location) = HeaderValue::from_str(&format!("{TASKS_PATH}{id}")) {
        headers.insert(LOCATION, location);
    }
    res
}

/// Every problem body of one route, rendered when the route is built. The `detail` members
/// name the route, the limit or cap and its parameters; the error behind a 502 (addresses, OS
/// errors) goes to the log, not to the client.
#[derive(Debug)]
pub(crate) struct RouteProblems {
    /// Per rate limit, in config order: its 429 and its `store-unavailable` 503.
    limits: Vec<(RateLimitedTemplate, Bytes)>,
    /// Per rate limit, in config order: the 400 of a request whose key header it keys on came
    /// more than once (rendered for `header:` limits only; empty for the others).
    repeated_keys: Vec<Bytes>,
    /// The 503s of the route's cap.
    route_cap: CapTemplate,
    /// The 503s of the upstream's cap.
    upstream_cap: CapTemplate,
    /// 503 `upstream-pushback`: every endpoint asked to wait.
    pushback: WithRetry,
    /// The bodies that are the same for every request of the route, by [`Plain`]: 502
    /// (unreachable, broken), 504, 400 (malformed body), 413, 408, and the deferral's 503, 413
    /// and 422.
    plain: [Bytes; PLAIN],
    /// 503 `queue-full` of a route at `defer.max_tasks`, and its `Retry-After` (the backoff).
    defer_full: (WithRetry, u64),
    /// The `Retry-After` of the 503 of an unknown outcome, in seconds.
    unknown_secs: u64,
    /// 503 `queue-full` past `max_upgraded`.
    upgraded_full: WithRetry,
    /// `server.retry_after_spread`, for every 503 and the 429s of limits keyed `global`.
    spread: Spread,
    /// Per rate limit, in config order: whether it is keyed `global` (its 429s are spread).
    spread_limits: Vec<bool>,
}

/// What a route's problems are rendered from.
#[derive(Debug)]
pub(crate) struct ProblemSource<'a> {
    /// The route's name.
    pub route: &'a str,
    /// The upstream's name.
    pub upstream: &'a str,
    /// The upstream's `timeout`, for the 504's detail.
    pub upstream_timeout: Duration,
    /// Per rate limit: its name and what its 429 says about it (`100/s, burst 200`).
    pub limits: Vec<(Arc<str>, String)>,
    /// Per rate limit: the header it keys on, for `key: header:<Name>` limits.
    pub key_headers: Vec<Option<String>>,
    /// Per rate limit: whether it is keyed `global` (its 429s' `Retry-After` is spread).
    pub global_keyed: Vec<bool>,
    /// `server.retry_after_spread`.
    pub spread: f64,
    /// The route's `RateLimit-Policy`, which its 429s carry; `None` when the route sends no
    /// `RateLimit` fields.
    pub policy: Option<HeaderValue>,
    /// `server.max_request_body`, for the 413's detail.
    pub max_request_body: ByteSize,
    /// `server.request_body_timeout`, for the 408's detail.
    pub request_body_timeout: Duration,
    /// `defer:` of a deferring route, for its 413's and 503's details.
    pub defer: Option<crate::config::DeferConfig>,
    /// How long the outcome of a task write may stay unknown: the `Retry-After` of the 503
    /// that says so.
    pub defer_unknown_for: Duration,
    /// The route's `max_upgraded`, for the detail of the 503 past it.
    pub max_upgraded: usize,
}

// === impl RouteProblems ===

impl RouteProblems {
    /// Renders every problem of a route.
    pub(crate) fn new(source: &ProblemSource<'_>) -> Self {
        let route = source.route;
        let upstream = source.upstream;
        let DeferProblems {
            unavailable: defer_unavailable,
            too_large: defer_too_large,
            full: defer_full,
            key_reused,
        } = defer_problems(source);
        RouteProblems {
            limits: limit_problems(source),
            repeated_keys: repeated_keys(source),
            route_cap: CapTemplate::new(route, "route", route),
            upstream_cap: CapTemplate::new(route, "upstream", upstream),
            pushback: WithRetry::new(
                REDUCED_CAPACITY,
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream-pushback",
                &format!(
                    "every endpoint of upstream {upstream} asked to wait (503 with Retry-After)"
                ),
                route,
            ),
            plain: plain_bodies(source, defer_unavailable, defer_too_large, key_reused),
            defer_full,
            unknown_secs: retry_after_secs(source.defer_unknown_for).max(1),
            upgraded_full: WithRetry::new(
                REDUCED_CAPACITY,
                StatusCode::SERVICE_UNAVAILABLE,
                "queue-full",
                &format!(
                    "route {route} has {} upgraded connections open (max_upgraded)",
                    source.max_upgraded
                ),
                route,
            ),
            spread: Spread::new(source.spread),
            spread_limits: source.global_keyed.clone(),
        }
    }

    /// The response for `rejection` of a request on this route.
    pub(crate) fn respond(&self, rejection: Rejection) -> Response<ProxyBody> {
        let p = rejection.problem();
        let full = |body: &Bytes| problem(p.status, ProxyBody::full(body.clone()));
        match p.body {
            Body::Static(text) => problem(
                p.status,
                ProxyBody::full(Bytes::from_static(text.as_bytes())),
            ),
            Body::Plain(which) => full(&self.plain[which as usize]),
            Body::Limited { limit, retry_after } => match self.limits.get(limit) {
                Some((template, _)) if self.spread_limits.get(limit) == Some(&true) => {
                    template.respond_spread(retry_after, &self.spread)
                }
                Some((template, _)) => template.respond(retry_after),
                None => self.missing(limit),
            },
            Body::LimitStore(limit) => match self.limits.get(limit) {
                Some((_, body)) => full(body),
                None => self.missing(limit),
            },
            Body::RepeatedKey(limit) => match self.repeated_keys.get(limit) {
                Some(body) if !body.is_empty() => full(body),
                _ => self.missing(limit),
            },
            Body::Cap(Cap::Route, rejected) => {
                self.route_cap.respond_spread(rejected, &self.spread)
            }
            Body::Cap(Cap::Upstream, rejected) => {
                self.upstream_cap.respond_spread(rejected, &self.spread)
            }
            Body::Pushback(wait) => self.pushback.respond(
                p.status,
                self.spread.apply(retry_after_secs(wait).clamp(1, 60)),
            ),
            Body::DeferFull => {
                let (template, secs) = &self.defer_full;
                template.respond(p.status, self.spread.apply(*secs))
            }
            Body::UpgradedFull => self
                .upgraded_full
                .respond(p.status, self.spread.apply(UPGRADED_FULL_RETRY_SECS)),
            Body::DeferUnknown(id) => defer_unknown(
                &self.plain[Plain::DeferUnavailable as usize],
                &id,
                self.spread.apply(self.unknown_secs),
            ),
        }
    }

    /// A limit index the route does not have: a bug in the pipeline, answered as a plain 500
    /// rather than a panic.
    fn missing(&self, limit: usize) -> Response<ProxyBody> {
        debug_assert!(false, "rate limit {limit} is not one of the route's");
        let mut res = Response::new(ProxyBody::empty());
        *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        res
    }
}

/// The plain bodies of the route of `source`, in [`Plain`]'s order; the deferral's given.
fn plain_bodies(
    source: &ProblemSource<'_>,
    defer_unavailable: Bytes,
    defer_too_large: Bytes,
    key_reused: Bytes,
) -> [Bytes; PLAIN] {
    let (route, upstream) = (source.route, source.upstream);
    let plain = |status, reason, detail: &str| about_blank(route, status, reason, detail);
    [
        plain(
            StatusCode::BAD_GATEWAY,
            "upstream-unavailable",
            &format!("upstream {upstream} could not be reached"),
        ),
        plain(
            StatusCode::BAD_GATEWAY,
            "upstream-unavailable",
            &format!("upstream {upstream} closed or broke the exchange"),
        ),
        plain(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream-timeout",
            &format!(
                "upstream {upstream} did not answer within {}",
                humantime::format_duration(source.upstream_timeout)
            ),
        ),
        plain(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "the request body is malformed (broken chunked framing) or ended early",
        ),
        plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            &format!(
                "the request body is larger than {} (server.max_request_body)",
                source.max_request_body
            ),
        ),
        plain(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            &format!(
                "the request body did not arrive within {} (server.request_body_timeout)",
                humantime::format_duration(source.request_body_timeout)
            ),
        ),
        defer_unavailable,
        defer_too_large,
        key_reused,
    ]
}

/// The problems only a deferring route has.
struct DeferProblems {
    /// 503 `store-unavailable`: Redis did not take the request.
    unavailable: Bytes,
    /// 413: the body is over `defer.max_body`.
    too_large: Bytes,
    /// 503 `queue-full` at `defer.max_tasks`, and its `Retry-After` in seconds.
    full: (WithRetry, u64),
    /// 422: the `Idempotency-Key` names a task with another body.
    key_reused: Bytes,
}

/// Renders [`DeferProblems`] for the route of `source`.
fn defer_problems(source: &ProblemSource<'_>) -> DeferProblems {
    let route = source.route;
    let unavailable = problem_json(
        ABOUT_BLANK,
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
        &format!("route {route} defers requests to Redis, which could not take this one now"),
        Some(route),
    );
    let max_body = source.defer.map_or(source.max_request_body, |d| {
        d.max_body.min(source.max_request_body)
    });
    let too_large = problem_json(
        ABOUT_BLANK,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        &format!("the request body is larger than {max_body} (defer.max_body of route {route})"),
        Some(route),
    );
    let (max_tasks, backoff) = source
        .defer
        .map_or((0, Duration::from_secs(1)), |d| (d.max_tasks, d.backoff));
    let full = WithRetry::new(
        REDUCED_CAPACITY,
        StatusCode::SERVICE_UNAVAILABLE,
        "queue-full",
        &format!("route {route} holds {max_tasks} deferred tasks (defer.max_tasks)"),
        route,
    );
    let key_reused = problem_json(
        ABOUT_BLANK,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        &format!("this Idempotency-Key names a task of route {route} with another body"),
        Some(route),
    );
    DeferProblems {
        unavailable: Bytes::from(unavailable),
        too_large: Bytes::from(too_large),
        full: (full, retry_after_secs(backoff).clamp(1, 60)),
        key_reused: Bytes::from(key_reused),
    }
}

/// The 503 of a write whose outcome is unknown: the route's `store-unavailable` body with
/// `"task"` added, `Location`, and `Retry-After` the time after which the task's status is
/// certain (`secs`). Formatted per request: a rare answer.
fn defer_unknown(unavailable: &Bytes, id: &TaskId, secs: u64) -> Response<ProxyBody> {
    let text = String::from_utf8_lossy(unavailable);
    let mut body = text.trim_end_matches('}').to_owned();
    let _ = write!(body, ",\"task\":\"{id}\"}}");
    let mut res = problem(StatusCode::SERVICE_UNAVAILABLE, ProxyBody::full(body));
    if let Ok(location) = HeaderValue::from_str(&format!("{TASKS_PATH}{id}")) {
        res.headers_mut().insert(LOCATION, location);
    }
    res.headers_mut()
        .insert(RETRY_AFTER, retry_after_value(secs));
    res
}

/// The 400 of a request to a deferring route whose `Idempotency-Key` cannot name a task.
fn bad_idempotency_key(bad: crate::defer::BadIdempotencyKey) -> &'static str {
    use crate::defer::BadIdempotencyKey;
    match bad {
        BadIdempotencyKey::Repeated => {
            bad_request_body!("the request has more than one Idempotency-Key")
        }
        BadIdempotencyKey::Malformed => {
            bad_request_body!("the Idempotency-Key must be 1 to 255 visible ASCII characters")
        }
    }
}

/// The 429 of one rate limit: status, `Retry-After`, the route's `RateLimit-Policy` and this
/// limit's `RateLimit` item (`r=0`, `t` = `Retry-After`), and the problem JSON, all rendered
/// ahead but for the seconds.
#[derive(Debug, Clone)]
pub struct RateLimitedTemplate {
    /// The body up to `"retry_after":`.
    body: WithRetry,
    /// The route's `RateLimit-Policy`; `None` when the route sends no `RateLimit` fields.
    policy: Option<HeaderValue>,
    /// `"<limit>";r=0;t=<secs>` for secs 0..=60, when `policy` is set.
    fields: Option<Arc<[HeaderValue]>>,
    /// The limit's name, for `RateLimit` items beyond a minute.
    limit: Arc<str>,
}

/// Waits up to this many seconds have pre-rendered header values.
const PRERENDERED_SECS: u64 = 60;

// === impl RateLimitedTemplate ===

impl RateLimitedTemplate {
    /// The 429 of `limit` of `route`, whose `detail` is `detail`; `policy` is the route's
    /// `RateLimit-Policy` when it sends `RateLimit` fields.
    pub fn new(route: &str, limit: &Arc<str>, detail: &str, policy: Option<HeaderValue>) -> Self {
        Self::of(Some(route), limit, detail, policy)
    }

    /// As [`new`](Self::new), for a limit of no route (`/_sluice/tasks/` lookups): the body has
    /// no `route` member.
    pub(crate) fn unrouted(limit: &Arc<str>, detail: &str, policy: Option<HeaderValue>) -> Self {
        Self::of(None, limit, detail, policy)
    }

    fn of(
        route: Option<&str>,
        limit: &Arc<str>,
        detail: &str,
        policy: Option<HeaderValue>,
    ) -> Self {
        let fields = policy.is_some().then(|| {
            (0..=PRERENDERED_SECS)
                .map(|secs| {
                    let mut f = RateLimitField::new();
                    f.push_denied(limit, Duration::from_secs(secs.max(1)));
                    f.finish()
                })
                .collect()
        });
        RateLimitedTemplate {
            body: WithRetry::of(
                QUOTA_EXCEEDED,
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                detail,
                route,
            ),
            policy,
            fields,
            limit: limit.clone(),
        }
    }

    /// The body alone of [`respond`](Self::respond)'s 429: allocates nothing for a wait of up
    /// to a minute.
    pub fn body(&self, retry_after: Duration) -> ProxyBody {
        self.body.body(retry_after_secs(retry_after))
    }

    /// The 429 for a request its bucket admits after `retry_after`.
    pub fn respond(&self, retry_after: Duration) -> Response<ProxyBody> {
        self.respond_telling(retry_after, retry_after_secs(retry_after))
    }

    /// As [`respond`](Self::respond), its `Retry-After` (and the body's `retry_after`) spread
    /// by `spread`; the `RateLimit` field's `t` stays exact.
    pub(crate) fn respond_spread(
        &self,
        retry_after: Duration,
        spread: &Spread,
    ) -> Response<ProxyBody> {
        self.respond_telling(retry_after, spread.apply(retry_after_secs(retry_after)))
    }

    /// The 429 of a wait of `retry_after`, telling the client to come back in `told` seconds.
    fn respond_telling(&self, retry_after: Duration, told: u64) -> Response<ProxyBody> {
        let secs = retry_after_secs(retry_after);
        let mut res = self.body.respond(StatusCode::TOO_MANY_REQUESTS, told);
        if let Some(policy) = &self.policy {
            let field = match self.fields.as_ref().and_then(|f| f.get(secs as usize)) {
                Some(value) => value.clone(),
                None => {
                    let mut f = RateLimitField::new();
                    f.push_denied(&self.limit, retry_after);
                    f.finish()
                }
            };
            let headers = res.headers_mut();
            headers.insert(RATELIMIT_POLICY, policy.clone());
            headers.insert(RATELIMIT, field);
        }
        res
    }
}

/// The three 503s of one concurrency cap (queue-full, queue-timeout, shed).
#[derive(Debug, Clone)]
pub struct CapTemplate {
    queue_full: WithRetry,
    queue_timeout: WithRetry,
    shed: WithRetry,
}

// === impl CapTemplate ===

impl CapTemplate {
    /// The 503s of `whose` (`route` or `upstream`) cap `name`, for requests of `route`.
    pub fn new(route: &str, whose: &str, name: &str) -> Self {
        let rendered = |reason, detail: String| {
            WithRetry::new(
                REDUCED_CAPACITY,
                StatusCode::SERVICE_UNAVAILABLE,
                reason,
                &detail,
                route,
            )
        };
        CapTemplate {
            queue_full: rendered(
                "queue-full",
                format!("concurrency cap of {whose} {name} is full and so is its queue"),
            ),
            queue_timeout: rendered(
                "queue-timeout",
                format!("waited too long in the queue of {whose} {name}"),
            ),
            shed: rendered(
                "shed",
                format!(
                    "shed from the queue of {whose} {name} to make room for higher-priority work"
                ),
            ),
        }
    }

    /// The 503 for `rejected`, with its `Retry-After` (whole seconds in 1..=60).
    pub fn respond(&self, rejected: Rejected) -> Response<ProxyBody> {
        let (template, secs) = self.pick(rejected);
        template.respond(StatusCode::SERVICE_UNAVAILABLE, secs)
    }

    /// As [`respond`](Self::respond), the `Retry-After` (and the body's `retry_after`) spread
    /// by `spread`.
    pub(crate) fn respond_spread(
        &self,
        rejected: Rejected,
        spread: &Spread,
    ) -> Response<ProxyBody> {
        let (template, secs) = self.pick(rejected);
        template.respond(StatusCode::SERVICE_UNAVAILABLE, spread.apply(secs))
    }

    /// The body alone of [`respond`](Self::respond)'s 503: allocates nothing.
    pub fn body(&self, rejected: Rejected) -> ProxyBody {
        let (template, secs) = self.pick(rejected);
        template.body(secs)
    }

    fn pick(&self, rejected: Rejected) -> (&WithRetry, u64) {
        let template = match rejected {
            Rejected::QueueFull { .. } => &self.queue_full,
            Rejected::QueueTimeout { .. } => &self.queue_timeout,
            Rejected::Shed { .. } => &self.shed,
        };
        (
            template,
            retry_after_secs(rejected.retry_after()).clamp(1, 60),
        )
    }
}

/// A problem body rendered whole but for its last member, `retry_after`.
#[derive(Debug, Clone)]
struct WithRetry {
    /// The body up to and including `"retry_after":`.
    head: Bytes,
    /// Whole bodies by `retry_after` up to a minute, each rendered the first time it is sent
    /// (so at most 61 per template, and only those used): one chunk costs hyper less to write
    /// than three. Shared by the clones of a template.
    whole: Arc<[OnceLock<Bytes>; SMALL.len()]>,
}

// === impl WithRetry ===

impl WithRetry {
    fn new(kind: &str, status: StatusCode, reason: &str, detail: &str, route: &str) -> Self {
        Self::of(kind, status, reason, detail, Some(route))
    }

    /// As [`new`](Self::new), with no `route` member when `route` is `None`.
    fn of(kind: &str, status: StatusCode, reason: &str, detail: &str, route: Option<&str>) -> Self {
        let mut body = problem_json(kind, status, reason, detail, route);
        body.pop(); // the closing brace
        body.push_str(",\"retry_after\":");
        WithRetry {
            head: Bytes::from(body),
            whole: Arc::new(std::array::from_fn(|_| OnceLock::new())),
        }
    }

    /// The body completed with `secs`: one chunk, allocated once per template and wait of up
    /// to a minute; past a minute three chunks (no copy).
    fn body(&self, secs: u64) -> ProxyBody {
        let tail = Bytes::from_static(b"}");
        match self.whole.get(secs as usize) {
            Some(cell) => ProxyBody::full(
                cell.get_or_init(|| {
                    [&self.head, &seconds(secs), &tail]
                        .map(|b| &b[..])
                        .concat()
                        .into()
                })
                .clone(),
            ),
            None => ProxyBody::parts([self.head.clone(), seconds(secs), tail]),
        }
    }

    /// The response: `Retry-After: secs` and the body completed with `secs`.
    fn respond(&self, status: StatusCode, secs: u64) -> Response<ProxyBody> {
        let mut res = problem(status, self.body(secs));
        res.headers_mut()
            .insert(RETRY_AFTER, retry_after_value(secs));
        res
    }
}

/// Per rate limit of a route: its 429 and its `store-unavailable` 503.
fn limit_problems(source: &ProblemSource<'_>) -> Vec<(RateLimitedTemplate, Bytes)> {
    let route = source.route;
    source
        .limits
        .iter()
        .map(|(name, quota)| {
            let rate_limited = RateLimitedTemplate::new(
                route,
                name,
                &format!("limit {name} of route {route}: {quota}"),
                source.policy.clone(),
            );
            let unavailable = about_blank(
                route,
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                &format!(
                    "limit {name} of route {route} is shared through Redis, which did not answer in time (store.redis.on_error: deny)"
                ),
            );
            (rate_limited, unavailable)
        })
        .collect()
}

/// Per rate limit of a route: the 400 for its key header sent twice (empty for a limit that
/// keys on no header).
fn repeated_keys(source: &ProblemSource<'_>) -> Vec<Bytes> {
    let route = source.route;
    source
        .limits
        .iter()
        .zip(&source.key_headers)
        .map(|((name, _), header)| match header {
            Some(header) => about_blank(
                route,
                StatusCode::BAD_REQUEST,
                "bad-request",
                &format!(
                    "header {header}, the key of limit {name} of route {route}, came more than once"
                ),
            ),
            None => Bytes::new(),
        })
        .collect()
}

/// A problem body of type `about:blank` for a request of `route`.
fn about_blank(route: &str, status: StatusCode, reason: &str, detail: &str) -> Bytes {
    Bytes::from(problem_json(
        ABOUT_BLANK,
        status,
        reason,
        detail,
        Some(route),
    ))
}

/// A response with `status`, `Content-Type: application/problem+json` and `body`.
fn problem(status: StatusCode, body: ProxyBody) -> Response<ProxyBody> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
    res
}

/// Decimal numbers 0..=60, which nearly every `Retry-After` is: no formatting, no allocation.
const SMALL: [&str; 61] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32",
    "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46", "47", "48",
    "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60",
];

/// `secs` in decimal, as a body chunk.
fn seconds(secs: u64) -> Bytes {
    match SMALL.get(secs as usize) {
        Some(s) => Bytes::from_static(s.as_bytes()),
        None => Bytes::from(secs.to_string()),
    }
}

/// `secs` as a `Retry-After` value.
fn retry_after_value(secs: u64) -> HeaderValue {
    match SMALL.get(secs as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(secs),
    }
}

/// The RFC 9457 body, without `retry_after`. Written by hand: the members are few and fixed.
fn problem_json(
    kind: &str,
    status: StatusCode,
    reason: &str,
    detail: &str,
    route: Option<&str>,
) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"type\":");
    push_json_str(&mut out, kind);
    out.push_str(",\"title\":");
    push_json_str(&mut out, status.canonical_reason().unwrap_or("Error"));
    let _ = write!(out, ",\"status\":{},\"reason\":", status.as_u16());
    push_json_str(&mut out, reason);
    out.push_str(",\"detail\":");
    push_json_str(&mut out, detail);
    if let Some(route) = route {
        out.push_str(",\"route\":");
        push_json_str(&mut out, route);
    }
    out.push('}');
    out
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
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

pub(crate) mod grpc;

#[cfg(test)]
mod tests;
