//! Issue 13, items 1–5: no client can dodge a limit. Each test is a row of the issue's attack
//! table, sent to a running sluice: a `login` route (`path_prefix: /login`, `client_ip` 1/m,
//! burst 1) ahead of a catch-all (1000/s), plus routes keyed by header and by host.
//! On the code before the issue every one of them got through (200 under the catch-all's
//! policy, or the upstream saw what the client wrote).

use std::time::Duration;

use crate::support::{
    admin_config, echo_upstream, get, h2c_client, ok_upstream, send, start_proxy,
};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The issue's routes: `admin` by host, `login`, `keys` (per API key, at most 100 keys),
/// `both` (client IP first, then API key), and a catch-all.
const ROUTES: &str = r#"  - name: admin
    match: { host: admin.example.com }
    upstream: api
    rate_limits: [{ name: per-client, key: client_ip, rate: 1/m, burst: 1 }]
  - name: login
    match: { path_prefix: /login }
    upstream: api
    rate_limits: [{ name: per-client, key: client_ip, rate: 1/m, burst: 1 }]
  - name: keys
    match: { path_prefix: /keys }
    upstream: api
    rate_limits: [{ name: per-key, key: "header:X-Api-Key", rate: 1/h, burst: 1, max_keys: 100 }]
  - name: both
    match: { path_prefix: /both }
    upstream: api
    rate_limits:
      - { name: per-client, key: client_ip, rate: 1/m, burst: 1 }
      - { name: per-key, key: "header:X-Api-Key", rate: 1/m, burst: 1 }
  - name: catch-all
    upstream: api
    rate_limits: [{ key: client_ip, rate: 1000/s }]
"#;

async fn proxy_for(endpoint: &str) -> crate::support::Proxy {
    start_proxy(&admin_config(endpoint, ROUTES)).await
}

/// Sends raw bytes on a new connection and returns the status and the body of the answer
/// (the request should say `Connection: close`; reading stops at EOF, within 10 s).
async fn raw(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("answer within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

fn reason(body: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    json["reason"].as_str().map(str::to_owned)
}

/// Issue 13 row 1: every spelling of `/login` counts against the `login` bucket (429 once the
/// burst of 1 is spent), and `/login%2f` is refused. Before: all 200 under the catch-all.
#[tokio::test]
async fn spellings_of_login_share_its_bucket() {
    let up = ok_upstream().await;
    let p = proxy_for(&up.endpoint()).await;
    assert_eq!(get(&p.url("/login")).await.status, StatusCode::OK);
    // The issue's spellings, then two the review found (a `;` parameter, a format suffix).
    for spelling in [
        "/%6cogin",
        "//login",
        "/./login",
        "/x/../login",
        "/%2e/login",
        "/login;jsessionid=1",
        "/login.json",
    ] {
        for _ in 0..3 {
            let got = get(&p.url(spelling)).await;
            assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS, "{spelling}");
            assert_eq!(got.json()["route"], "login", "{spelling}");
        }
    }
    let got = get(&p.url("/login%2f")).await;
    got.assert_problem(StatusCode::BAD_REQUEST, "bad-request");
    assert!(got.json().get("route").is_none());
    assert_eq!(
        p.metric(r#"sluice_requests_total{route="",outcome="bad_request"}"#)
            .await,
        1.0
    );
    assert_eq!(
        p.metric(r#"sluice_responses_total{route="",code="400"}"#)
            .await,
        1.0
    );
    assert_eq!(
        p.metric(r#"sluice_requests_total{route="login",outcome="rate_limited"}"#)
            .await,
        21.0
    );
    assert_eq!(
        up.requests(),
        1,
        "only the first /login reached the upstream"
    );
}

/// The same over HTTP/2 (`:path`) and in absolute form (`GET http://host/%6cogin`).
#[tokio::test]
async fn h2_path_and_absolute_form_are_canonical_too() {
    let up = ok_upstream().await;
    let p = proxy_for(&up.endpoint()).await;
    assert_eq!(get(&p.url("/login")).await.status, StatusCode::OK);
    let h2 = h2c_client();
    for spelling in ["/%6cogin", "//login", "/a/%2e%2e/login"] {
        let req = Request::get(p.url(spelling))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let got = send(&h2, req).await;
        assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS, "h2 {spelling}");
    }
    let host = p.addr.to_string();
    for target in [
        format!("http://{host}/%6cogin"),
        format!("http://{host}//login"),
    ] {
        let (status, _) = raw(
            p.addr,
            &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 429, "{target}");
    }
    // An absolute-form target naming another host than `Host`.
    let (status, body) = raw(
        p.addr,
        "GET http://decoy.invalid/ HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        (status, reason(&body).as_deref()),
        (400, Some("bad-request"))
    );
}

/// The upstream receives the canonical path; the query is passed as sent.
#[tokio::test]
async fn upstream_receives_the_canonical_path() {
    let up = echo_upstream().await;
    let p = proxy_for(&up.endpoint()).await;
    let got = get(&p.url("/%6cogin/./a//b/../c%3f?x=%6c&y=/../")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.json()["uri"], "/login/a/c%3F?x=%6c&y=/../");
}

/// The other refusals: `..` above the root, bad escapes, `%00`, a backslash, a `CONNECT`
/// target; each a 400 with problem JSON, none reaching the upstream.
#[tokio::test]
async fn paths_without_one_meaning_are_refused() {
    let up = ok_upstream().await;
    let p = proxy_for(&up.endpoint()).await;
    for target in [
        "/../login",
        "/a/%2e%2e/..",
        "/%zz",
        "/a%00",
        "/a%5Cb",
        "/x/..;/login",
    ] {
        let got = get(&p.url(target)).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{target}");
        assert_eq!(got.json()["reason"], "bad-request", "{target}");
        assert!(got.json()["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let host = p.addr.to_string();
    let (status, body) = raw(
        p.addr,
        &format!("GET /a\\b HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(
        (status, reason(&body).as_deref()),
        (400, Some("bad-request"))
    );
    // An authority-form target (`CONNECT`) has no path: refused, not routed as `/` and sent
    // upstream as `CONNECT /` (sluice does not tunnel).
    let (status, body) = raw(
        p.addr,
        &format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(
        (status, reason(&body).as_deref()),
        (400, Some("bad-request")),
        "CONNECT"
    );
    assert_eq!(up.requests(), 0);
}

/// With `escaped_slashes: keep`, `%2F` and `%5C` are forwarded encoded and split nothing.
#[tokio::test]
async fn escaped_slashes_keep_forwards_them_encoded() {
    let up = echo_upstream().await;
    let yaml = admin_config(&up.endpoint(), ROUTES).replace(
        "listen: 127.0.0.1:0 }\nadmin",
        "listen: 127.0.0.1:0, escaped_slashes: keep }\nadmin",
    );
    assert!(yaml.contains("escaped_slashes: keep"));
    let p = start_proxy(&yaml).await;
    let got = get(&p.url("/files/a%2fb%5cc")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.json()["uri"], "/files/a%2Fb%5Cc");
    assert_eq!(get(&p.url("/a%00")).await.status, StatusCode::BAD_REQUEST);
}

/// Issue 13 row 2: a second `X-Api-Key` line on a `header:X-Api-Key` limit is refused — before,
/// the key hashed both lines, so a random second line meant a fresh bucket each time.
#[tokio::test]
async fn repeated_key_header_is_refused() {
    let up = ok_upstream().await;
    let p = proxy_for(&up.endpoint()).await;
    let client = crate::support::client();
    let req = |keys: &[&str]| {
        let mut b = Request::get(p.url("/keys/me"));
        for k in keys {
            b = b.header("x-api-key", *k);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    assert_eq!(
        send(&client, req(&["valid-key-123"])).await.status,
        StatusCode::OK
    );
    for i in 0..5 {
        let got = send(&client, req(&["valid-key-123", &format!("r{i}")])).await;
        got.assert_problem(StatusCode::BAD_REQUEST, "bad-request");
        assert_eq!(got.json()["route"], "keys");
        assert!(got.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("x-api-key")));
    }
    assert_eq!(
        send(&client, req(&["valid-key-123"])).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        p.metric(r#"sluice_requests_total{route="keys",outcome="bad_request"}"#)
            .await,
        5.0
    );
}

/// The 400 comes before any bucket is charged: a repeated key does not spend the client-IP
/// limit listed before the header limit.
#[tokio::test]
async fn repeated_key_charges_no_bucket() {
    let up = ok_upstream().await;
    let p = proxy_for(&up.endpoint()).await;
    let client = crate::support::client();
    let twice = Request::get(p.url("/both"))
        .header("x-api-key", "a")
        .header("x-api-key", "b")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client, twice).await.status, StatusCode::BAD_REQUEST);
    let once = || {
        Request::get(p.url("/both"))
            .header("x-api-key", "a")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(send(&client, once()).await.status, StatusCode::OK);
    assert_eq!(
        send(&client, once()).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Issue 13 row 3: two `Host` lines, or `Host: admin.example.com..`, get 400 — before, the
/// first line routed (to the catch-all) and both were forwarded, and the two dots escaped the
/// host route. One trailing dot is ignored: `admin.example.com.` takes the `admin` route.
#[tokio::test]
async fn one_valid_host() {
    let up = ok_upstream().await;
    let p = proxy_for(&up.endpoint()).await;
    for hosts in [
        "Host: decoy.invalid\r\nHost: admin.example.com\r\n",
        "Host: admin.example.com..\r\n",
        "Host: admin%2eexample.com\r\n",
        "Host: user@admin.example.com\r\n",
        "Host: \r\n",
    ] {
        let (status, body) = raw(
            p.addr,
            &format!("GET / HTTP/1.1\r\n{hosts}Connection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 400, "{hosts:?}");
        assert_eq!(reason(&body).as_deref(), Some("bad-request"), "{hosts:?}");
    }
    assert_eq!(up.requests(), 0);
    for expected in [200, 429] {
        let (status, body) = raw(
            p.addr,
            "GET / HTTP/1.1\r\nHost: admin.example.com.\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, expected, "{body}");
    }
    assert_eq!(
        p.metric(r#"sluice_requests_total{route="admin",outcome="rate_limited"}"#)
            .await,
        1.0
    );
}

/// RFC 9112 §3.2: HTTP/1.1 without `Host` is a 400 (sluice's: hyper does not check);
/// HTTP/1.0 without one is forwarded.
#[tokio::test]
async fn missing_host_only_on_http10() {
    let up = ok_upstream().await;
    let p = proxy_for(&up.endpoint()).await;
    let (status, body) = raw(p.addr, "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(
        (status, reason(&body).as_deref()),
        (400, Some("bad-request"))
    );
    let (status, _) = raw(p.addr, "GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200);
}

/// HTTP/2: `:authority` and a `Host` header naming another host get 400 (RFC 9113 §8.3.1).
#[tokio::test]
async fn h2_authority_and_host_must_agree() {
    let up = ok_upstream().await;
    let p = proxy_for(&up.endpoint()).await;
    let h2 = h2c_client();
    let req = Request::get(p.url("/x"))
        .header("host", "admin.example.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = send(&h2, req).await;
    got.assert_problem(StatusCode::BAD_REQUEST, "bad-request");
}

/// Issue 13 row 4: `Forwarded` and `X-Real-IP` from a peer outside `trusted_proxies` do not
/// reach the upstream; from a trusted one they do. Likewise `X-Original-URL` (the review found
/// it: upstreams that route by it would see `/login` under the catch-all's policy).
#[tokio::test]
async fn spoofed_origin_headers_removed() {
    let up = echo_upstream().await;
    for trusted in [false, true] {
        let mut yaml = admin_config(&up.endpoint(), ROUTES);
        if trusted {
            yaml = yaml.replace(
                "listen: 127.0.0.1:0 }\nadmin",
                "listen: 127.0.0.1:0, trusted_proxies: [127.0.0.1] }\nadmin",
            );
            assert!(yaml.contains("trusted_proxies"));
        }
        let p = start_proxy(&yaml).await;
        let req = Request::get(p.url("/anything"))
            .header("forwarded", "for=1.2.3.4")
            .header("x-real-ip", "1.2.3.4")
            .header("x-original-url", "/login")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let got = send(&crate::support::client(), req).await;
        let headers = &got.json()["headers"];
        for name in ["forwarded", "x-real-ip", "x-original-url"] {
            assert_eq!(headers.get(name).is_some(), trusted, "{name}: {headers}");
        }
        p.stop().await;
    }
}

/// Issue 13 row 5 (scaled down: 1,200 keys for `max_keys: 100`): distinct `X-Api-Key` values
/// keep the key gauge at the bound, and every key past it is an eviction.
#[tokio::test]
async fn key_table_stays_at_max_keys() {
    let up = ok_upstream().await;
    let p = proxy_for(&up.endpoint()).await;
    let client = crate::support::client();
    let url = p.url("/keys/x");
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            for i in 0..150 {
                let req = Request::get(&url)
                    .header("x-api-key", format!("k{worker}-{i}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                assert_eq!(send(&client, req).await.status, StatusCode::OK);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("sender task");
    }
    assert_eq!(
        p.metric(r#"sluice_rate_limit_keys{route="keys",limit="per-key"}"#)
            .await,
        100.0
    );
    assert_eq!(
        p.metric(r#"sluice_rate_limit_evictions_total{route="keys",limit="per-key"}"#)
            .await,
        1100.0
    );
    assert_eq!(
        p.metric(r#"sluice_rate_limit_evictions_total{route="login",limit="per-client"}"#)
            .await,
        0.0
    );
}
