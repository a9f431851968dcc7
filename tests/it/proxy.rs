//! The proxy core through a real listener: routing, forwarding, header rewriting, upstream
//! failures, streaming, slow clients, HTTP/2 and graceful shutdown.

use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one_route(endpoints: &str, extra_upstream: &str) -> String {
    format!(
        r#"
server:
  listen: 127.0.0.1:0
  header_read_timeout: 500ms
upstreams:
  api:
    endpoints: [{endpoints}]
{extra_upstream}
routes:
  - name: all
    upstream: api
"#
    )
}

/// The upstream sees the client's path, query and Host, the X-Forwarded-* fields, and no
/// hop-by-hop headers.
#[tokio::test]
async fn forwards_with_rewritten_headers() {
    let up = echo_upstream().await;
    let proxy = start_proxy(&one_route(&up.endpoint(), "")).await;
    let req = Request::get(proxy.url("/orders/1?x=2"))
        .header("host", "api.example.com")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = send(&client(), req).await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = got.json();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["uri"], "/orders/1?x=2");
    assert_eq!(seen["version"], "HTTP/1.1");
    let h = &seen["headers"];
    assert_eq!(h["host"], "api.example.com");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
    assert_eq!(h["x-custom"], "kept");
    assert!(
        h.get("x-private").is_none(),
        "header named in Connection leaked: {h}"
    );
    proxy.stop().await;
}

/// Hop-by-hop headers of the upstream's response do not reach the client.
#[tokio::test]
async fn strips_hop_by_hop_from_responses() {
    let up = upstream(|_| async {
        Response::builder()
            .header("connection", "x-up-private")
            .header("x-up-private", "1")
            .header("x-up-public", "1")
            .body(TestBody::text("ok"))
            .unwrap()
    })
    .await;
    let proxy = start_proxy(&one_route(&up.endpoint(), "")).await;
    let got = get(&proxy.url("/")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.header("x-up-private").is_none());
    assert_eq!(got.header("x-up-public"), Some("1"));
    proxy.stop().await;
}

/// No matching route: 404 problem JSON with reason no-route.
#[tokio::test]
async fn no_route_is_404_problem_json() {
    let up = ok_upstream().await;
    let yaml = format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
upstreams: {{ api: {{ endpoints: [{}] }} }}
routes:
  - name: only-orders
    match: {{ path_prefix: /orders }}
    upstream: api
"#,
        up.endpoint()
    );
    let proxy = start_proxy(&yaml).await;
    let got = get(&proxy.url("/ordersfoo")).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.header("content-type"), Some("application/problem+json"));
    let p = got.json();
    assert_eq!(p["status"], 404);
    assert_eq!(p["reason"], "no-route");
    assert_eq!(p["type"], "about:blank");
    assert_eq!(get(&proxy.url("/orders/7")).await.status, StatusCode::OK);
    assert_eq!(
        up.requests(),
        1,
        "the unmatched request must not reach the upstream"
    );
    proxy.stop().await;
}

/// Host (exact and wildcard, any case, port ignored), path_exact, path_prefix and methods pick
/// the first matching route in file order.
#[tokio::test]
async fn routes_by_host_path_and_method() {
    let a = upstream(|_| async { Response::new(TestBody::text("a")) }).await;
    let b = upstream(|_| async { Response::new(TestBody::text("b")) }).await;
    let c = upstream(|_| async { Response::new(TestBody::text("c")) }).await;
    let d = upstream(|_| async { Response::new(TestBody::text("d")) }).await;
    let yaml = format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
upstreams:
  a: {{ endpoints: [{}] }}
  b: {{ endpoints: [{}] }}
  c: {{ endpoints: [{}] }}
  d: {{ endpoints: [{}] }}
routes:
  - name: new-order
    match: {{ path_exact: /orders/new, methods: [POST] }}
    upstream: a
  - name: api-host
    match: {{ host: api.example.com, path_prefix: /orders }}
    upstream: b
  - name: wildcard
    match: {{ host: "*.example.com" }}
    upstream: c
  - name: rest
    upstream: d
"#,
        a.endpoint(),
        b.endpoint(),
        c.endpoint(),
        d.endpoint()
    );
    let proxy = start_proxy(&yaml).await;
    let cl = client();
    let req = |method: &str, host: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(proxy.url(path))
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        send(&cl, req("POST", "x.test", "/orders/new")).await.text(),
        "a"
    );
    assert_eq!(
        send(&cl, req("GET", "API.Example.COM:8080", "/orders/new"))
            .await
            .text(),
        "b"
    );
    assert_eq!(
        send(&cl, req("GET", "api.example.com", "/orders"))
            .await
            .text(),
        "b"
    );
    assert_eq!(
        send(&cl, req("GET", "api.example.com", "/ordersfoo"))
            .await
            .text(),
        "c"
    );
    assert_eq!(
        send(&cl, req("GET", "www.example.com", "/")).await.text(),
        "c"
    );
    assert_eq!(send(&cl, req("GET", "example.com", "/")).await.text(), "d");
    proxy.stop().await;
}

/// Requests alternate between endpoints with `balance: round_robin` (no longer the default).
#[tokio::test]
async fn round_robin_over_endpoints() {
    let a = upstream(|_| async { Response::new(TestBody::text("a")) }).await;
    let b = upstream(|_| async { Response::new(TestBody::text("b")) }).await;
    let proxy = start_proxy(&one_route(
        &format!("{}, {}", a.endpoint(), b.endpoint()),
        "    balance: round_robin",
    ))
    .await;
    let cl = client();
    for _ in 0..10 {
        send(
            &cl,
            Request::get(proxy.url("/"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    }
    assert_eq!(a.requests(), 5);
    assert_eq!(b.requests(), 5);
    proxy.stop().await;
}

/// A refused connection is retried on the next endpoint (GET and POST with a body), and the
/// refusing endpoint is then skipped.
#[tokio::test]
async fn refused_endpoint_is_retried_and_skipped() {
    let dead = refused_port().await;
    let up = upstream(|req: Request<Incoming>| async move {
        let n = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        Response::new(TestBody::text(format!("got {n}")))
    })
    .await;
    let proxy = start_proxy(&one_route(&format!("http://{dead}, {}", up.endpoint()), "")).await;
    let cl = client();
    for i in 0..6 {
        let got = send(
            &cl,
            Request::post(proxy.url("/"))
                .body(Full::new(Bytes::from(vec![b'z'; 1000 + i])))
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "request {i}: {}", got.text());
        assert_eq!(got.text(), format!("got {}", 1000 + i));
    }
    for _ in 0..4 {
        assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
    }
    assert_eq!(up.requests(), 10);
    proxy.stop().await;
}

/// An upstream that refuses connections gives 502 upstream-unavailable; the proxy keeps serving.
#[tokio::test]
async fn refused_upstream_is_502() {
    let dead = refused_port().await;
    let proxy = start_proxy(&one_route(&format!("http://{dead}"), "")).await;
    let got = get(&proxy.url("/x")).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.header("content-type"), Some("application/problem+json"));
    assert_eq!(got.json()["reason"], "upstream-unavailable");
    assert_eq!(got.json()["route"], "all");
    assert_eq!(get(&proxy.url("/x")).await.status, StatusCode::BAD_GATEWAY);
    proxy.stop().await;
}

/// An upstream that accepts but never answers gives 504 upstream-timeout after `timeout`.
#[tokio::test]
async fn silent_upstream_is_504_after_timeout() {
    let (addr, _task) = silent_server().await;
    let proxy = start_proxy(&one_route(&format!("http://{addr}"), "    timeout: 300ms")).await;
    let started = Instant::now();
    let got = get(&proxy.url("/")).await;
    let took = started.elapsed();
    got.assert_problem(StatusCode::GATEWAY_TIMEOUT, "upstream-timeout");
    assert!(
        took >= Duration::from_millis(300),
        "answered before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "timeout far too late: {took:?}"
    );
    proxy.stop().await;
}

/// An upstream whose accept backlog is full (connect hangs) gives 502 after connect_timeout.
#[tokio::test]
async fn connect_timeout_is_502() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the backlog; later SYNs are dropped by the kernel, so connects hang.
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let proxy = start_proxy(&one_route(
        &format!("http://{addr}"),
        "    connect_timeout: 300ms\n    timeout: 20s",
    ))
    .await;
    let started = Instant::now();
    let got = get(&proxy.url("/")).await;
    got.assert_problem(StatusCode::BAD_GATEWAY, "upstream-unavailable");
    assert!(started.elapsed() < Duration::from_secs(15));
    drop(listener);
    proxy.stop().await;
}

/// Bodies stream in both directions: a request and a response far larger than any buffer pass
/// whole.
#[tokio::test]
async fn large_bodies_stream_both_ways() {
    const UP: usize = 48 << 20;
    const DOWN: u64 = 64 << 20;
    let up = upstream(|req: Request<Incoming>| async move {
        if req.method() == http::Method::POST {
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map(|f| f.into_data()) {
                    n += data.map(|d| d.len()).unwrap_or(0);
                }
            }
            Response::new(TestBody::text(n.to_string()))
        } else {
            Response::new(TestBody::Generated {
                remaining: DOWN,
                chunk: 64 << 10,
            })
        }
    })
    .await;
    let yaml = one_route(&up.endpoint(), "").replace(
        "  listen: 127.0.0.1:0\n",
        "  listen: 127.0.0.1:0\n  max_request_body: 64MiB\n",
    );
    let proxy = start_proxy(&yaml).await;
    let cl = client();
    let got = send(
        &cl,
        Request::post(proxy.url("/up"))
            .body(Full::new(Bytes::from(vec![7u8; UP])))
            .unwrap(),
    )
    .await;
    assert_eq!(got.text(), UP.to_string());
    // Counted frame by frame rather than collected; bounded as a whole (generous: a debug build
    // on a loaded machine).
    let download = async {
        let res = cl
            .request(
                Request::get(proxy.url("/down"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let mut body = res.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            n += frame
                .unwrap()
                .into_data()
                .map(|d| d.len() as u64)
                .unwrap_or(0);
        }
        n
    };
    let n = tokio::time::timeout(Duration::from_secs(60), download)
        .await
        .expect("the 64 MiB response within 60 s");
    assert_eq!(n, DOWN);
    proxy.stop().await;
}

/// A client that dribbles its request head is disconnected after header_read_timeout, and so is
/// one that connects and says nothing; other clients are served meanwhile.
#[tokio::test]
async fn slow_clients_are_disconnected() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&one_route(&up.endpoint(), "")).await;
    let mut dribbler = TcpStream::connect(proxy.addr).await.unwrap();
    dribbler
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
    for conn in [&mut dribbler, &mut silent] {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue, // hyper may answer 408 before closing
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "slow connection was not closed");
    }
    assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
    proxy.stop().await;
}

/// A malformed request gets 400 and the process keeps serving.
#[tokio::test]
async fn malformed_request_is_400() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&one_route(&up.endpoint(), "")).await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(b"GET /\x01bad HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "got {text:?}");
    assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
    assert_eq!(up.requests(), 1);
    proxy.stop().await;
}

/// HTTP/2 with prior knowledge is served on the plain listener; upstreams get HTTP/1.1.
#[tokio::test]
async fn h2c_prior_knowledge() {
    let up = echo_upstream().await;
    let proxy = start_proxy(&one_route(&up.endpoint(), "")).await;
    let got = send(
        &h2c_client(),
        Request::get(proxy.url("/h2"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = got.json();
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["headers"]["host"], proxy.addr.to_string());
    proxy.stop().await;
}

/// On shutdown, a request in flight finishes; afterwards the listener is closed.
#[tokio::test]
async fn graceful_shutdown_finishes_in_flight() {
    let up = slow_upstream(Duration::from_millis(800)).await;
    let proxy = start_proxy(&one_route(&up.endpoint(), "")).await;
    let url = proxy.url("/");
    let in_flight = tokio::spawn(async move { get(&url).await });
    until(
        "the request in flight at the upstream",
        Duration::from_secs(10),
        || up.inflight.load(std::sync::atomic::Ordering::SeqCst) > 0,
    )
    .await;
    let addr = proxy.addr;
    let shared = proxy.shared.clone();
    proxy.shutdown.trigger();
    let got = in_flight.await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), "slow ok");
    assert!(!shared.is_ready());
    tokio::time::timeout(Duration::from_secs(10), proxy.task)
        .await
        .expect("stops")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still open after shutdown"
    );
}

/// Regression (a connection that had not sent a byte held graceful shutdown until its
/// header_read_timeout ran out): shutdown is not delayed by an idle TCP connection that never
/// sent a byte.
#[tokio::test]
async fn shutdown_is_not_delayed_by_a_silent_connection() {
    let up = ok_upstream().await;
    let yaml = one_route(&up.endpoint(), "")
        .replace("header_read_timeout: 500ms", "header_read_timeout: 10s");
    let proxy = start_proxy(&yaml).await;
    let silent = TcpStream::connect(proxy.addr).await.unwrap();
    // Connections are accepted in order: once a later one has been served, the silent one has
    // been accepted (and is waiting for its first byte).
    assert_eq!(get(&proxy.url("/")).await.status, StatusCode::OK);
    proxy.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), proxy.task)
        .await
        .expect("shutdown waited for a connection that never sent a byte")
        .unwrap();
    drop(silent);
}

/// Regression (HTTP/2 connections had no idle timeout, so an idle h2c client held its
/// connection, and a `max_connections` slot, for ever): an h2c connection with no open stream
/// is closed by sluice after header_read_timeout (1 s here), while a stream that outlasts the
/// timeout is not cut.
#[tokio::test]
async fn idle_h2c_connections_are_closed() {
    let up = upstream(|req: Request<Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Response::new(TestBody::text("ok"))
    })
    .await;
    let yaml = one_route(&up.endpoint(), "")
        .replace("header_read_timeout: 500ms", "header_read_timeout: 1s");
    let proxy = start_proxy(&yaml).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = |path: &str| {
        Request::get(format!("http://{}{path}", proxy.addr))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    // A stream open for 2 s: the connection is busy, not idle.
    h2.ready().await.unwrap();
    let res = tokio::time::timeout(Duration::from_secs(30), h2.send_request(req("/slow")))
        .await
        .expect("response within 30 s")
        .expect("the slow stream was cut");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");

    // Now idle: sluice closes the connection within a few seconds.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "an idle HTTP/2 connection was still open after 10 s"
    );
    assert!(
        h2.send_request(req("/after")).await.is_err(),
        "a request went through on a connection sluice closed"
    );
    proxy.stop().await;
}

/// With max_connections 1, a second connection is not served until the first closes.
#[tokio::test]
async fn max_connections_bounds_open_connections() {
    let up = ok_upstream().await;
    let yaml =
        one_route(&up.endpoint(), "").replace("header_read_timeout: 500ms", "max_connections: 1");
    let proxy = start_proxy(&yaml).await;
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    first.write_all(request).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), first.read(&mut buf))
        .await
        .expect("the first connection served within 10 s")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    second.write_all(request).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "second connection served while the first was open"
    );
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf))
        .await
        .expect("served")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    proxy.stop().await;
}

/// An upstream that closes its kept-alive connections right after each response (without
/// `Connection: close`, as a keep-alive timeout would): every request through sluice still
/// succeeds, and the upstream sees each exactly once, each on its own connection — sluice never
/// sends a request on a connection it had seen closed.
#[tokio::test]
async fn upstream_closing_kept_alive_connections_is_not_an_error() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (r, c) = (requests.clone(), connections.clone());
    let server = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                // One request head (GETs: no body), one response, then close.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                r.fetch_add(1, Ordering::SeqCst);
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let proxy = start_proxy(&one_route(&format!("http://{addr}"), "")).await;
    let cl = client();
    for i in 0..5 {
        let got = send(
            &cl,
            Request::get(proxy.url("/"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "request {i}: {}", got.text());
        assert_eq!(got.text(), "ok");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 5, "each request seen once");
    assert_eq!(connections.load(Ordering::SeqCst), 5);
    server.abort();
    proxy.stop().await;
}
