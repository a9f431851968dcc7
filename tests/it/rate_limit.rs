//! Per-route token buckets through a real listener: the 429 and its problem JSON, Retry-After,
//! the RateLimit-Policy / RateLimit fields, bucket keys, several limits on one route, shadow
//! mode, and the order of checks against the concurrency cap.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// A config with one route `r` (all paths) to `endpoint`; `route_extra` is appended to the route
/// (indented 4), `server_extra` to `server:` (indented 2).
fn config(endpoint: &str, server_extra: &str, route_extra: &str) -> String {
    format!(
        r#"
server:
  listen: 127.0.0.1:0
{server_extra}
upstreams:
  api:
    endpoints: [{endpoint}]
routes:
  - name: r
    upstream: api
{route_extra}
"#
    )
}

/// GET `path` with extra request headers, on a fresh connection.
async fn get_with(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::get(proxy.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(&client(), req.body(Full::new(Bytes::new())).unwrap()).await
}

/// One item of an RFC 9651 list as sluice sends it: `"name";k=v;k=v`.
#[derive(Debug, PartialEq)]
struct Item {
    name: String,
    params: BTreeMap<String, u64>,
}

impl Item {
    fn param(&self, key: &str) -> u64 {
        *self
            .params
            .get(key)
            .unwrap_or_else(|| panic!("item {self:?} has no parameter {key}"))
    }
}

/// Parses a `RateLimit` / `RateLimit-Policy` value (names in the tests hold no `,` or `;`).
fn items(value: &str) -> Vec<Item> {
    value
        .split(',')
        .map(|item| {
            let mut parts = item.trim().split(';');
            let name = parts.next().unwrap();
            assert!(
                name.len() >= 2 && name.starts_with('"') && name.ends_with('"'),
                "not an sf-string: {value:?}"
            );
            let params = parts
                .map(|p| {
                    let (k, v) = p
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad parameter in {value:?}"));
                    (
                        k.to_owned(),
                        v.parse()
                            .unwrap_or_else(|_| panic!("not an integer in {value:?}")),
                    )
                })
                .collect();
            Item {
                name: name[1..name.len() - 1].to_owned(),
                params,
            }
        })
        .collect()
}

/// The `RateLimit` items of a response (panics when absent).
fn ratelimit(got: &Got) -> Vec<Item> {
    items(
        got.header("ratelimit")
            .unwrap_or_else(|| panic!("no RateLimit field: {:?}", got.headers)),
    )
}

/// `Retry-After` as whole seconds (panics when absent or not delay-seconds).
fn retry_after(got: &Got) -> u64 {
    got.header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", got.headers))
        .parse()
        .expect("Retry-After is delay-seconds")
}

/// After the burst the next request gets 429 with Retry-After and the contract's problem JSON
/// (type, title, status, reason, route, retry_after equal to the header, detail naming the limit).
#[tokio::test]
async fn answers_429_with_problem_json_after_the_burst() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "",
        "    rate_limits: [{ name: per-client, key: global, rate: 1/m, burst: 3 }]",
    ))
    .await;
    for i in 0..3 {
        assert_eq!(
            get(&proxy.url("/x")).await.status,
            StatusCode::OK,
            "request {i} within the burst"
        );
    }
    let got = get(&proxy.url("/x")).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("content-type"), Some("application/problem+json"));
    // One token per 60 s, and the bucket was emptied moments ago: the wait is just under 60 s.
    let secs = retry_after(&got);
    assert!(
        (50..=60).contains(&secs),
        "Retry-After {secs} is not the time to the next token"
    );
    let p = got.json();
    assert_eq!(p["type"], QUOTA_EXCEEDED);
    assert_eq!(p["title"], "Too Many Requests");
    assert_eq!(p["status"], 429);
    assert_eq!(p["reason"], "rate-limited");
    assert_eq!(p["route"], "r");
    assert_eq!(
        p["retry_after"], secs,
        "retry_after member differs from the header: {p}"
    );
    let detail = p["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail: {p}"));
    for part in ["per-client", "route r", "1/m", "burst 3"] {
        assert!(
            detail.contains(part),
            "detail {detail:?} does not name {part:?}"
        );
    }
    proxy.stop().await;
}

/// RateLimit-Policy is on 200s and 429s; RateLimit counts down r=2, 1, 0 on the 200s, and on the
/// 429 carries only the rejecting limit with r=0 and t equal to Retry-After.
#[tokio::test]
async fn ratelimit_fields_count_down_then_match_retry_after() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "",
        "    rate_limits: [{ name: per-client, key: client_ip, rate: 1/m, burst: 3 }]",
    ))
    .await;
    let cl = client();
    let req = || {
        Request::get(proxy.url("/x"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for expected in [2, 1, 0] {
        let got = send(&cl, req()).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(
            got.header("ratelimit-policy"),
            Some("\"per-client\";q=3;w=180")
        );
        let items = ratelimit(&got);
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0].name, "per-client");
        assert_eq!(items[0].param("r"), expected, "{items:?}");
        let t = items[0].param("t");
        assert!(
            (1..=60).contains(&t),
            "t={t}: a token comes back within 60 s, and the bucket is not full"
        );
    }
    let got = send(&cl, req()).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        got.header("ratelimit-policy"),
        Some("\"per-client\";q=3;w=180")
    );
    let secs = retry_after(&got);
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    let items = ratelimit(&got);
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].name, "per-client");
    assert_eq!(items[0].param("r"), 0);
    assert_eq!(items[0].param("t"), secs, "t differs from Retry-After");
    proxy.stop().await;
}

fn two_limits(endpoint: &str) -> String {
    config(
        endpoint,
        "",
        "    rate_limits:\n\
         \x20     - { name: per-client, key: client_ip, rate: 1/m, burst: 5 }\n\
         \x20     - { name: global, key: global, rate: 1/m, burst: 2 }",
    )
}

/// With two limits the policy lists both, and every 200 carries one RateLimit item per limit, in
/// config order.
#[tokio::test]
async fn two_limits_give_two_items_in_order() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&two_limits(&up.endpoint())).await;
    for (per_client, global) in [(4, 1), (3, 0)] {
        let got = get(&proxy.url("/")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(
            got.header("ratelimit-policy"),
            Some("\"per-client\";q=5;w=300, \"global\";q=2;w=120")
        );
        let items = ratelimit(&got);
        let names: Vec<_> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["per-client", "global"]);
        assert_eq!(
            (items[0].param("r"), items[1].param("r")),
            (per_client, global),
            "{items:?}"
        );
        assert!(
            items.iter().all(|i| (1..=60).contains(&i.param("t"))),
            "{items:?}"
        );
    }
    proxy.stop().await;
}

/// The stricter of two limits binds: per-client burst 5 and global burst 2 reject the third
/// request, and the 429 names the global limit in `detail` and in RateLimit.
#[tokio::test]
async fn stricter_limit_binds() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&two_limits(&up.endpoint())).await;
    assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
    assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
    let got = get(&proxy.url("/")).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    let p = got.json();
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("global") && !detail.contains("per-client"),
        "detail {detail:?} must name the global limit"
    );
    let items = ratelimit(&got);
    assert_eq!(
        items.len(),
        1,
        "a 429 carries only the rejecting limit: {items:?}"
    );
    assert_eq!(items[0].name, "global");
    assert_eq!(items[0].param("r"), 0);
    assert_eq!(items[0].param("t"), retry_after(&got));
    assert_eq!(up.requests(), 2);
    proxy.stop().await;
}

/// `server.rate_limit_headers: false`: neither field on 200s or 429s; Retry-After stays.
#[tokio::test]
async fn rate_limit_headers_can_be_turned_off() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "  rate_limit_headers: false",
        "    rate_limits: [{ name: per-client, key: client_ip, rate: 1/m, burst: 1 }]",
    ))
    .await;
    let ok = get(&proxy.url("/")).await;
    assert_eq!(ok.status, StatusCode::OK);
    let limited = get(&proxy.url("/")).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    for got in [&ok, &limited] {
        assert!(
            got.header("ratelimit-policy").is_none(),
            "{:?}",
            got.headers
        );
        assert!(got.header("ratelimit").is_none(), "{:?}", got.headers);
    }
    let secs = retry_after(&limited);
    assert!((1..=60).contains(&secs));
    assert_eq!(limited.json()["retry_after"], secs);
    proxy.stop().await;
}

/// `key: client_ip` behind a trusted proxy: each X-Forwarded-For client has its own bucket.
#[tokio::test]
async fn client_ip_buckets_are_per_client_behind_a_trusted_proxy() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "  trusted_proxies: [127.0.0.1/32]",
        "    rate_limits: [{ name: per-client, key: client_ip, rate: 1/m, burst: 2 }]",
    ))
    .await;
    let a = [("x-forwarded-for", "203.0.113.1")];
    let b = [("x-forwarded-for", "203.0.113.2")];
    assert_eq!(get_with(&proxy, "/", &a).await.status, StatusCode::OK);
    assert_eq!(get_with(&proxy, "/", &a).await.status, StatusCode::OK);
    assert_eq!(
        get_with(&proxy, "/", &a).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Client b is untouched by a's exhausted bucket.
    let first_b = get_with(&proxy, "/", &b).await;
    assert_eq!(first_b.status, StatusCode::OK);
    assert_eq!(
        ratelimit(&first_b)[0].param("r"),
        1,
        "b's bucket must be fresh"
    );
    assert_eq!(get_with(&proxy, "/", &b).await.status, StatusCode::OK);
    assert_eq!(
        get_with(&proxy, "/", &b).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The proxy itself (no X-Forwarded-For) is a third client.
    assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
    assert_eq!(up.requests(), 5);
    proxy.stop().await;
}

/// X-Forwarded-For from a peer that is not a trusted proxy is ignored: whatever it claims, every
/// request counts against the peer's one bucket.
#[tokio::test]
async fn xff_from_an_untrusted_peer_is_ignored() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "  trusted_proxies: [10.0.0.0/8]",
        "    rate_limits: [{ name: per-client, key: client_ip, rate: 1/m, burst: 2 }]",
    ))
    .await;
    assert_eq!(
        get_with(&proxy, "/", &[("x-forwarded-for", "203.0.113.1")])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get_with(&proxy, "/", &[("x-forwarded-for", "203.0.113.2")])
            .await
            .status,
        StatusCode::OK
    );
    let third = get_with(&proxy, "/", &[("x-forwarded-for", "203.0.113.3")]).await;
    assert_eq!(
        third.status,
        StatusCode::TOO_MANY_REQUESTS,
        "a spoofed X-Forwarded-For escaped the limit"
    );
    assert_eq!(
        get(&proxy.url("/")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(up.requests(), 2);
    proxy.stop().await;
}

/// `key: header:X-Api-Key`: one bucket per key value, shared by every request with that value;
/// a request without the header counts against its client IP.
#[tokio::test]
async fn header_key_buckets_per_value_and_falls_back_to_client_ip() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "  trusted_proxies: [127.0.0.1/32]",
        "    rate_limits: [{ name: per-key, key: \"header:X-Api-Key\", rate: 1/m, burst: 1 }]",
    ))
    .await;
    let ip1 = ("x-forwarded-for", "203.0.113.1");
    let ip2 = ("x-forwarded-for", "203.0.113.2");
    // Same key from two clients: one bucket.
    assert_eq!(
        get_with(&proxy, "/", &[("x-api-key", "k1"), ip1])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get_with(&proxy, "/", &[("x-api-key", "k1"), ip2])
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another key from the same client: its own bucket.
    assert_eq!(
        get_with(&proxy, "/", &[("x-api-key", "k2"), ip1])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get_with(&proxy, "/", &[("x-api-key", "k2"), ip1])
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // No key: per client IP (ip1's IP bucket is still full: the keyed requests did not use it).
    assert_eq!(get_with(&proxy, "/", &[ip1]).await.status, StatusCode::OK);
    assert_eq!(
        get_with(&proxy, "/", &[ip1]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(get_with(&proxy, "/", &[ip2]).await.status, StatusCode::OK);
    assert_eq!(
        get_with(&proxy, "/", &[ip2]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(up.requests(), 4);
    proxy.stop().await;
}

/// `mode: shadow`: nothing is rejected beyond the burst, the upstream sees every request, and
/// RateLimit reports r=0 for the exhausted limit.
#[tokio::test]
async fn shadow_mode_rejects_nothing_but_reports_exhaustion() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "",
        "    mode: shadow\n    rate_limits: [{ name: per-client, key: client_ip, rate: 1/m, burst: 2 }]",
    ))
    .await;
    for expected in [1, 0, 0, 0, 0] {
        let got = get(&proxy.url("/")).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "shadow mode rejected: {}",
            got.text()
        );
        assert!(got.header("retry-after").is_none());
        assert_eq!(
            got.header("ratelimit-policy"),
            Some("\"per-client\";q=2;w=120")
        );
        let items = ratelimit(&got);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].param("r"), expected, "{items:?}");
        assert!((1..=60).contains(&items[0].param("t")), "{items:?}");
    }
    assert_eq!(up.requests(), 5);
    proxy.stop().await;
}

/// A client told `Retry-After: N` is admitted once it has waited N seconds.
#[tokio::test]
async fn waiting_retry_after_is_enough() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "",
        "    rate_limits: [{ name: per-client, key: client_ip, rate: 1/s, burst: 1 }]",
    ))
    .await;
    let cl = client();
    let req = || {
        Request::get(proxy.url("/"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // Until the first 429: on a loaded machine a second may pass between two requests and
    // refill the bucket, and then the next one is admitted too (bounded).
    let mut admitted = 0;
    let limited = loop {
        let got = send(&cl, req()).await;
        match got.status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => break got,
            other => panic!("unexpected {other}: {}", got.text()),
        }
        assert!(admitted <= 10, "never rate-limited");
    };
    assert!(admitted >= 1, "the first request was rejected");
    let secs = retry_after(&limited);
    assert_eq!(secs, 1, "one token per second: the wait rounds up to 1 s");
    // Waiting is the behaviour under test here, not synchronisation.
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let again = send(&cl, req()).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "rejected after waiting Retry-After: {}",
        again.text()
    );
    assert_eq!(up.requests(), admitted + 1);
    proxy.stop().await;
}

/// A 429 never reaches the upstream.
#[tokio::test]
async fn rejected_requests_never_reach_the_upstream() {
    let up = echo_upstream().await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "",
        "    rate_limits: [{ name: per-client, key: client_ip, rate: 1/h, burst: 2 }]",
    ))
    .await;
    let cl = client();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let got = send(
            &cl,
            Request::post(proxy.url("/p"))
                .body(Full::new(Bytes::from_static(b"body")))
                .unwrap(),
        )
        .await;
        statuses.push(got.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429, 429, 429, 429, 429]);
    assert_eq!(up.requests(), 2, "a rate-limited request was forwarded");
    proxy.stop().await;
}

/// Rate limits are checked before the concurrency cap, and a 429 takes no slot: with the route's
/// only slot held, a request over its limit gets 429 (not 503); once the slot is free again a
/// request within its limit gets it (the 429s leaked nothing).
#[tokio::test]
async fn rate_limited_requests_take_no_concurrency_slot() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let up = upstream(move |req: Request<Incoming>| {
        let g = g.clone();
        async move {
            if req.uri().path() == "/hold" {
                g.acquire().await.unwrap().forget();
            }
            http::Response::new(TestBody::text("ok"))
        }
    })
    .await;
    let proxy = start_proxy(&config(
        &up.endpoint(),
        "",
        "    rate_limits: [{ name: per-key, key: \"header:X-Api-Key\", rate: 1/h, burst: 1 }]\n\
         \x20   concurrency: { max_inflight: 1, queue: 0, queue_timeout: 10s }",
    ))
    .await;
    let held = tokio::spawn({
        let url = proxy.url("/hold");
        async move {
            let req = Request::get(url)
                .header("x-api-key", "k1")
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(&client(), req).await
        }
    });
    until(
        "the held request at the upstream",
        Duration::from_secs(10),
        || up.inflight.load(Ordering::SeqCst) > 0,
    )
    .await;
    // k1 is out of tokens: 429, although the cap is full too.
    for _ in 0..3 {
        let got = get_with(&proxy, "/", &[("x-api-key", "k1")]).await;
        assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS, "{}", got.text());
    }
    // k2 has a token, so it meets the full cap: 503 (the cap is really in force).
    let got = get_with(&proxy, "/", &[("x-api-key", "k2")]).await;
    got.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "queue-full");
    gate.add_permits(1);
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    // The slot comes back when the held response is done (bounded retry: release is asynchronous
    // to the client's read). Each attempt uses a fresh key, so only the cap can refuse it.
    let proxy_ref = &proxy;
    let mut n = 0;
    until_ok_past_503s("the slot to come back after the 429s", || {
        n += 1;
        let key = format!("fresh-{n}");
        async move { get_with(proxy_ref, "/", &[("x-api-key", &key)]).await }
    })
    .await;
    assert_eq!(
        up.requests(),
        2,
        "only the held request and the final one may reach the upstream"
    );
    proxy.stop().await;
}

/// Metrics (admin listener): rate-limited requests are counted as `rate_limited`, and in shadow
/// mode as `rate_limited` with `shadow="true"` while being forwarded.
#[tokio::test]
async fn rate_limited_outcomes_are_counted() {
    let up = ok_upstream().await;
    let routes = r#"  - name: enforced
    match: { path_prefix: /e }
    upstream: api
    rate_limits: [{ name: l, key: global, rate: 1/h, burst: 1 }]
  - name: shadowed
    match: { path_prefix: /s }
    upstream: api
    mode: shadow
    rate_limits: [{ name: l, key: global, rate: 1/h, burst: 1 }]
"#;
    let yaml = admin_config(&up.endpoint(), routes);
    let proxy = start_proxy(&yaml).await;
    for path in ["/e", "/e", "/e", "/s", "/s", "/s"] {
        get(&proxy.url(path)).await;
    }
    let m = get(&proxy.admin_url("/metrics")).await.text();
    let v = |s: &str| expect_metric(&m, s);
    assert_eq!(
        v("sluice_requests_total{route=\"enforced\",outcome=\"forwarded\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        v("sluice_requests_total{route=\"enforced\",outcome=\"rate_limited\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        v("sluice_responses_total{route=\"enforced\",code=\"429\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        v("sluice_requests_total{route=\"shadowed\",outcome=\"forwarded\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(
        v("sluice_requests_total{route=\"shadowed\",outcome=\"rate_limited\",shadow=\"true\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        v("sluice_requests_total{route=\"shadowed\",outcome=\"rate_limited\"}"),
        0.0,
        "{m}"
    );
    assert_eq!(
        v("sluice_responses_total{route=\"shadowed\",code=\"200\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(up.requests(), 4);
    proxy.stop().await;
}

/// Pins: `sluice_rate_limited_total{route, limit, plan=""}` counts the 429s of the limit that
/// answered — here the second of two — and stays at 0 for the other.
#[tokio::test]
async fn rate_limited_total_names_the_limit_that_answered() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         upstreams: {{ api: {{ endpoints: ['{}'] }} }}\n\
         routes: [{{ name: r, upstream: api, rate_limits: [\
         {{ name: roomy, key: client_ip, rate: 100/m, burst: 100 }}, \
         {{ name: tight, key: global, rate: 1/m, burst: 2 }}] }}]\n",
        up.endpoint()
    ))
    .await;
    let mut limited = 0;
    for _ in 0..5 {
        limited += usize::from(get(&proxy.url("/")).await.status == StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(limited, 3);
    let series = |limit: &str| {
        format!("sluice_rate_limited_total{{route=\"r\",limit=\"{limit}\",plan=\"\"}}")
    };
    assert_eq!(proxy.metric(&series("tight")).await, 3.0);
    assert_eq!(proxy.metric(&series("roomy")).await, 0.0);
    proxy.stop().await;
}
