use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use http_body::Body as _;

use super::*;

/// The whole body of a response sluice made (they are always ready).
fn body_of(res: Response<ProxyBody>) -> Bytes {
    let mut body = res.into_body();
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                out.extend_from_slice(&frame.into_data().expect("a data frame"))
            }
            Poll::Ready(None) => return Bytes::from(out),
            other => panic!("a made body is ready at once: {other:?}"),
        }
    }
}

fn problems() -> RouteProblems {
    RouteProblems::new(&ProblemSource {
        route: "orders",
        upstream: "api",
        upstream_timeout: Duration::from_secs(30),
        limits: vec![
            (Arc::from("per-client"), "100/s, burst 200".to_owned()),
            (Arc::from("per-key"), "10/s, burst 10".to_owned()),
        ],
        key_headers: vec![None, Some("x-api-key".to_owned())],
        global_keyed: vec![false, false],
        spread: 0.0,
        policy: Some(HeaderValue::from_static(
            "\"per-client\";q=200;w=2, \"per-key\";q=10;w=1",
        )),
        max_request_body: ByteSize(16 << 20),
        request_body_timeout: Duration::from_secs(30),
        defer: None,
        defer_unknown_for: Duration::from_secs(7),
        max_upgraded: 1000,
    })
}

fn rejected(kind: fn(Duration) -> Rejected, secs: u64) -> Rejected {
    kind(Duration::from_secs(secs))
}

/// Pins the contract's table: every rejection gets its status, `reason`, problem `type`,
/// `Retry-After` (equal to the body's `retry_after`) and outcome, and the body is valid JSON
/// with the content length it announces.
#[test]
fn every_rejection_has_its_status_reason_type_and_outcome() {
    let p = problems();
    let full = |d| Rejected::QueueFull { retry_after: d };
    let timeout = |d| Rejected::QueueTimeout { retry_after: d };
    let shed = |d| Rejected::Shed { retry_after: d };
    #[allow(unused_mut)]
    let mut cases = vec![
        (
            Rejection::BadRequest(BadRequest::RepeatedKey { limit: 1 }),
            400,
            "bad-request",
            ABOUT_BLANK,
            None,
            Outcome::BadRequest,
        ),
        (
            Rejection::NoRoute,
            404,
            "no-route",
            ABOUT_BLANK,
            None,
            Outcome::NoRoute,
        ),
        (
            Rejection::RateLimited {
                limit: 0,
                retry_after: Duration::from_millis(2500),
            },
            429,
            "rate-limited",
            QUOTA_EXCEEDED,
            Some(3),
            Outcome::RateLimited,
        ),
        (
            Rejection::StoreUnavailable { limit: 0 },
            503,
            "store-unavailable",
            ABOUT_BLANK,
            None,
            Outcome::StoreUnavailable,
        ),
        (
            Rejection::Capacity {
                cap: Cap::Route,
                rejected: rejected(full, 7),
            },
            503,
            "queue-full",
            REDUCED_CAPACITY,
            Some(7),
            Outcome::QueueFull,
        ),
        (
            Rejection::Capacity {
                cap: Cap::Upstream,
                rejected: rejected(timeout, 0),
            },
            503,
            "queue-timeout",
            REDUCED_CAPACITY,
            Some(1),
            Outcome::QueueTimeout,
        ),
        (
            Rejection::Capacity {
                cap: Cap::Upstream,
                rejected: rejected(shed, 90),
            },
            503,
            "shed",
            REDUCED_CAPACITY,
            Some(60),
            Outcome::Shed,
        ),
        (
            Rejection::UpstreamUnreachable,
            502,
            "upstream-unavailable",
            ABOUT_BLANK,
            None,
            Outcome::UpstreamError,
        ),
        (
            Rejection::UpstreamBroken,
            502,
            "upstream-unavailable",
            ABOUT_BLANK,
            None,
            Outcome::UpstreamError,
        ),
        (
            Rejection::UpstreamTimeout,
            504,
            "upstream-timeout",
            ABOUT_BLANK,
            None,
            Outcome::UpstreamTimeout,
        ),
    ];
    cases.extend([
        (
            Rejection::UpstreamPushback {
                retry_after: Duration::from_millis(4200),
            },
            503,
            "upstream-pushback",
            REDUCED_CAPACITY,
            Some(5),
            Outcome::UpstreamPushback,
        ),
        (
            Rejection::DeferUnavailable,
            503,
            "store-unavailable",
            ABOUT_BLANK,
            None,
            Outcome::StoreUnavailable,
        ),
        (
            Rejection::DeferBodyTooLarge,
            413,
            "body-too-large",
            ABOUT_BLANK,
            None,
            Outcome::BodyTooLarge,
        ),
        (
            Rejection::UpgradedFull,
            503,
            "queue-full",
            REDUCED_CAPACITY,
            Some(60),
            Outcome::QueueFull,
        ),
    ]);
    for (rejection, status, reason, kind, retry_after, outcome) in cases {
        let res = p.respond(rejection);
        assert_eq!(res.status().as_u16(), status, "{rejection:?}");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(rejection.reason(), reason);
        assert_eq!(rejection.outcome(), outcome);
        let header = res
            .headers()
            .get(RETRY_AFTER)
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        assert_eq!(header, retry_after, "{rejection:?}");
        let announced = res.body().size_hint().exact();
        let body = body_of(res);
        assert_eq!(announced, Some(body.len() as u64));
        let v: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{rejection:?}: {e}: {body:?}"));
        assert_eq!(v["type"], kind);
        assert_eq!(v["status"], status);
        assert_eq!(v["reason"], reason);
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(v["retry_after"].as_u64(), retry_after);
        if rejection != Rejection::NoRoute {
            assert_eq!(v["route"], "orders");
        }
    }
}

/// A 429 carries the route's policy and only the rejecting limit's item, `r=0` and
/// `t` = `Retry-After`, also beyond the pre-rendered minute.
#[test]
fn rate_limited_carries_its_fields() {
    let p = problems();
    for ms in [1, 999, 1000, 1001, 59_500, 60_001, 123_456_789] {
        let retry_after = Duration::from_millis(ms);
        let res = p.respond(Rejection::RateLimited {
            limit: 0,
            retry_after,
        });
        let secs = retry_after_secs(retry_after);
        assert_eq!(res.headers()[RETRY_AFTER], secs.to_string().as_str());
        assert_eq!(
            res.headers()[RATELIMIT_POLICY],
            "\"per-client\";q=200;w=2, \"per-key\";q=10;w=1"
        );
        assert_eq!(
            res.headers()[RATELIMIT],
            format!("\"per-client\";r=0;t={secs}").as_str()
        );
        let v: serde_json::Value = serde_json::from_slice(&body_of(res)).unwrap();
        assert_eq!(v["retry_after"], secs);
        assert_eq!(
            v["detail"],
            "limit per-client of route orders: 100/s, burst 200"
        );
    }
}

/// Without `RateLimit` fields (`rate_limit_headers: false`) a 429 has neither field.
#[test]
fn rate_limited_without_fields() {
    let t = RateLimitedTemplate::new(
        "r",
        &Arc::from("a"),
        "limit a of route r: 1/s, burst 1",
        None,
    );
    let res = t.respond(Duration::from_secs(2));
    assert!(res.headers().get(RATELIMIT).is_none());
    assert!(res.headers().get(RATELIMIT_POLICY).is_none());
    assert_eq!(res.headers()[RETRY_AFTER], "2");
}

/// Every 400 before routing: valid problem JSON whose `detail` is the cause's message, with no
/// route; counted as `bad_request` (the bodies are hand-written constants).
#[test]
fn bad_request_bodies_match_their_causes() {
    for cause in canonical::NotCanonical::ALL {
        let rejection = Rejection::BadRequest(BadRequest::Canonical(cause));
        assert_eq!(rejection.reason(), "bad-request");
        assert_eq!(rejection.outcome(), Outcome::BadRequest);
        for res in [unrouted(rejection), problems().respond(rejection)] {
            assert_eq!(res.status(), StatusCode::BAD_REQUEST);
            assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
            assert!(res.headers().get(RETRY_AFTER).is_none());
            let v: serde_json::Value =
                serde_json::from_slice(&body_of(res)).unwrap_or_else(|e| panic!("{cause:?}: {e}"));
            assert_eq!(v["type"], ABOUT_BLANK);
            assert_eq!(v["title"], "Bad Request");
            assert_eq!(v["status"], 400);
            assert_eq!(v["reason"], "bad-request");
            assert_eq!(v["detail"], cause.to_string(), "{cause:?}");
            assert!(v.get("route").is_none());
        }
    }
}

/// The 400 of a repeated key header names the header, the limit and the route.
#[test]
fn repeated_key_names_header_and_limit() {
    let v: serde_json::Value = serde_json::from_slice(&body_of(
        problems().respond(Rejection::BadRequest(BadRequest::RepeatedKey { limit: 1 })),
    ))
    .unwrap();
    assert_eq!(
        v["detail"],
        "header x-api-key, the key of limit per-key of route orders, came more than once"
    );
    assert_eq!(v["route"], "orders");
}

/// The 404 body is valid JSON (it is a hand-written constant).
#[test]
fn not_found_is_valid_problem_json() {
    let v: serde_json::Value = serde_json::from_slice(&body_of(not_found())).unwrap();
    assert_eq!(v["status"], 404);
    assert_eq!(v["reason"], "no-route");
    assert!(v.get("route").is_none());
}

/// Upstream errors map to the right rejection.
#[test]
fn upstream_errors_map_to_rejections() {
    let upstream: Arc<str> = Arc::from("api");
    let timeout = UpstreamError::Timeout {
        upstream: upstream.clone(),
        timeout: Duration::from_secs(1),
    };
    assert_eq!(Rejection::from(&timeout), Rejection::UpstreamTimeout);
}

/// Control characters and quotes are escaped, so any name yields valid JSON.
#[test]
fn escapes_control_characters() {
    let mut s = String::new();
    push_json_str(&mut s, "a\u{1}b\n\"\\");
    assert_eq!(s, "\"a\\u0001b\\n\\\"\\\\\"");
    let body = problem_json(
        ABOUT_BLANK,
        StatusCode::BAD_GATEWAY,
        "x",
        "d\"e",
        Some("r\u{7}"),
    );
    let _: serde_json::Value = serde_json::from_str(&body).unwrap();
}

/// Pins: a deferred request gets 202, `Location: /_sluice/tasks/<id>` and JSON `{"id",
/// "status": "queued"}`; a write whose outcome is unknown gets 503 `store-unavailable` naming
/// the task (`task`, `Location`); the task endpoint's own answers are problem JSON with their
/// status (405 with `Allow`).
#[test]
fn deferred_and_task_answers() {
    let id = crate::defer::TaskId::parse("00112233445566778899aabbccddeeff").unwrap();
    let unknown = problems().respond(Rejection::DeferUnknown(id));
    assert_eq!(unknown.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        unknown.headers()[LOCATION],
        format!("/_sluice/tasks/{id}").as_str()
    );
    let v: serde_json::Value = serde_json::from_slice(&body_of(unknown)).unwrap();
    assert_eq!(
        (&v["reason"], &v["task"]),
        (
            &serde_json::json!("store-unavailable"),
            &serde_json::json!(id.to_string())
        )
    );
    assert_eq!(
        Rejection::DeferUnknown(id).outcome(),
        Outcome::StoreUnavailable
    );
    let res = accepted(&id);
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    assert_eq!(
        res.headers()[LOCATION],
        format!("/_sluice/tasks/{id}").as_str()
    );
    let v: serde_json::Value = serde_json::from_slice(&body_of(res)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"id": id.to_string(), "status": "queued"})
    );
    for (res, status, reason) in [
        (task_unknown(), 404, "unknown-task"),
        (task_store_unavailable(), 503, "store-unavailable"),
        (task_method_not_allowed(), 405, "method-not-allowed"),
    ] {
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        if status == 405 {
            assert_eq!(res.headers()[ALLOW], "GET, HEAD");
        }
        let v: serde_json::Value = serde_json::from_slice(&body_of(res)).unwrap();
        assert_eq!(v["reason"], reason);
        assert_eq!(v["status"], status);
    }
}
