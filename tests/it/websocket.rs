//! WebSocket and other HTTP/1.1 upgrades through sluice (issue 26, item 4): a real WebSocket
//! client (tokio-tungstenite) against an upstream written here that answers plain requests
//! and upgrades on the same port, echoing every WebSocket message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{self, admin_config, get, start_proxy, until, Proxy};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An upstream that upgrades `Upgrade: websocket` requests (101, then echoes every text and
/// binary message) unless told to refuse them, and answers plain requests 200 `plain`.
pub(crate) struct WsUpstream {
    addr: SocketAddr,
    /// Upgrade requests received (answered 101 or refused).
    handshakes: Arc<AtomicUsize>,
    /// The headers of every plain request, in order.
    plain: Arc<Mutex<Vec<HeaderMap>>>,
    task: JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsUpstream {
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts a [`WsUpstream`]; `refuse`: the status every upgrade is answered with instead of 101.
pub(crate) async fn ws_upstream(refuse: Option<StatusCode>) -> WsUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let plain = Arc::new(Mutex::new(Vec::new()));
    let (h, p) = (handshakes.clone(), plain.clone());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (h, p) = (h.clone(), p.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (h, p) = (h.clone(), p.clone());
                    async move { Ok::<_, std::convert::Infallible>(answer(req, refuse, &h, &p)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    WsUpstream {
        addr,
        handshakes,
        plain,
        task,
    }
}

/// What [`WsUpstream`] answers `req`.
fn answer(
    mut req: Request<Incoming>,
    refuse: Option<StatusCode>,
    handshakes: &AtomicUsize,
    plain: &Mutex<Vec<HeaderMap>>,
) -> Response<Full<Bytes>> {
    if !req.headers().contains_key("upgrade") {
        plain.lock().unwrap().push(req.headers().clone());
        return Response::new(Full::new(Bytes::from_static(b"plain")));
    }
    handshakes.fetch_add(1, Ordering::SeqCst);
    let key = req.headers()["sec-websocket-key"].clone();
    if let Some(status) = refuse {
        let mut res = Response::new(Full::new(Bytes::from_static(b"refused here")));
        *res.status_mut() = status;
        return res;
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        // What a limit with `charge_header: X-Cost` charges (tests/it/cost.rs); ignored else.
        .header("x-cost", "7")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Opens a WebSocket to `path` through `proxy` (10 s at most).
async fn connect(proxy: &Proxy, path: &str) -> Result<Client, WsError> {
    let url = format!("ws://{}{path}", proxy.addr);
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("handshake answered within 10 s")
    .map(|(ws, _)| ws)
}

/// The status and body of a refused handshake.
fn refused(result: Result<Client, WsError>) -> (StatusCode, String) {
    match result {
        Err(WsError::Http(res)) => {
            let body = res.body().clone().unwrap_or_default();
            (res.status(), String::from_utf8_lossy(&body).into_owned())
        }
        Err(other) => panic!("expected an HTTP answer, got {other}"),
        Ok(_) => panic!("expected the upgrade to be refused, it was accepted"),
    }
}

/// Sends `text` and reads the echo (5 s at most).
async fn echo(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo within 5 s")
        .expect("the connection is open")
        .expect("a message");
    assert_eq!(got.into_text().unwrap().as_str(), text);
}

/// The gauge of route `ws`.
async fn upgraded(proxy: &Proxy) -> f64 {
    proxy
        .metric("sluice_upgraded_connections{route=\"ws\"}")
        .await
}

/// Waits (10 s at most) until the gauge of route `ws` reads `want`.
async fn until_upgraded(proxy: &Proxy, want: f64) {
    until(
        &format!("sluice_upgraded_connections{{route=\"ws\"}} == {want}"),
        Duration::from_secs(10),
        || async move { upgraded(proxy).await == want },
    )
    .await;
}

/// A proxy with route `ws` (with `extra` route fields, indented 4) to `upstream`.
async fn proxy_for(upstream: &WsUpstream, extra: &str) -> Proxy {
    let routes = format!("  - name: ws\n    upstream: api\n{extra}");
    start_proxy(&admin_config(&upstream.endpoint(), &routes)).await
}

/// 1,000 messages each way through one upgraded connection, a 200 KB binary message among
/// them (frames larger than sluice's buffer); the gauge counts the connection while it is open
/// and goes back to 0 when the client closes; the handshake counts as `forwarded` with 101.
#[tokio::test]
async fn thousand_messages_both_ways() {
    let up = ws_upstream(None).await;
    let proxy = proxy_for(&up, "").await;
    assert_eq!(
        upgraded(&proxy).await,
        0.0,
        "the series exists from the start"
    );
    let mut ws = connect(&proxy, "/chat").await.expect("upgraded");
    assert_eq!(upgraded(&proxy).await, 1.0);
    let through = Instant::now();
    for i in 0..1000 {
        echo(&mut ws, &format!("message {i}")).await;
    }
    let through = through.elapsed();
    // The same round trips straight to the upstream: what sluice adds (printed, not asserted:
    // a loaded test machine says little about latency).
    let (mut direct, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", up.addr))
        .await
        .unwrap();
    let straight = Instant::now();
    for i in 0..1000 {
        echo(&mut direct, &format!("message {i}")).await;
    }
    let straight = straight.elapsed();
    eprintln!("1000 WebSocket round trips: {through:?} through sluice, {straight:?} direct");
    drop(direct);
    let big = Bytes::from(vec![7u8; 200_000]);
    ws.send(Message::binary(big.clone())).await.unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_data(), big);
    ws.close(None).await.unwrap();
    // The close handshake completes through sluice: the upstream's close frame comes back.
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            break;
        }
    }
    // The upstream has closed its side; the client closes its own (a half-closed tunnel
    // stays open until both sides are closed, or idle).
    drop(ws);
    until_upgraded(&proxy, 0.0).await;
    assert_eq!(
        up.handshakes.load(Ordering::SeqCst),
        2,
        "one through sluice, one direct"
    );
    let forwarded = "sluice_requests_total{route=\"ws\",outcome=\"forwarded\"}";
    assert_eq!(proxy.metric(forwarded).await, 1.0);
    let code = "sluice_responses_total{route=\"ws\",code=\"101\"}";
    assert_eq!(proxy.metric(code).await, 1.0);
    proxy.stop().await;
}

/// A reload keeps upgraded connections open and their count: lowered to `max_upgraded: 1`
/// with one open, the next upgrade is refused while the open one still echoes.
#[tokio::test]
async fn a_reload_keeps_upgraded_connections_and_their_count() {
    let up = ws_upstream(None).await;
    let yaml = |extra: &str| {
        admin_config(
            &up.endpoint(),
            &format!("  - name: ws\n    upstream: api\n{extra}"),
        )
    };
    let file = support::ConfigFile::new(&yaml(""));
    let proxy = support::start_proxy_file(&file).await;
    let mut open = connect(&proxy, "/ws").await.unwrap();
    file.write(&yaml("    max_upgraded: 1\n"));
    assert_eq!(proxy.reload().await.status, StatusCode::OK);
    let (status, _) = refused(connect(&proxy, "/ws").await);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    echo(&mut open, "across the reload").await;
    assert_eq!(upgraded(&proxy).await, 1.0);
    drop(open);
    until_upgraded(&proxy, 0.0).await;
    connect(&proxy, "/ws")
        .await
        .expect("its place is free again");
    proxy.stop().await;
}

/// A route cap of 1 admits the handshakes one at a time and is free again after each 101:
/// three upgraded connections stay open while plain requests still pass, none queued.
#[tokio::test]
async fn a_cap_of_one_does_not_block_plain_requests() {
    let up = ws_upstream(None).await;
    let cap = "    concurrency: { max_inflight: 1, queue: 0 }\n";
    let proxy = proxy_for(&up, cap).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            connect(&proxy, "/ws")
                .await
                .expect("upgraded under a cap of 1"),
        );
    }
    for _ in 0..5 {
        let got = get(&proxy.url("/plain")).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        assert_eq!(got.text(), "plain");
    }
    assert_eq!(upgraded(&proxy).await, 3.0);
    assert_eq!(
        proxy.metric("sluice_inflight{route=\"ws\"}").await,
        0.0,
        "upgraded connections hold no slot"
    );
    for (i, ws) in open.iter_mut().enumerate() {
        echo(ws, &format!("still open {i}")).await;
    }
    drop(open);
    until_upgraded(&proxy, 0.0).await;
    proxy.stop().await;
}

/// Past `max_upgraded` an upgrade gets 503 `queue-full` with `Retry-After` and never reaches
/// the upstream, while plain requests pass; a closed connection frees its place.
#[tokio::test]
async fn max_upgraded_refuses_the_next_upgrade() {
    let up = ws_upstream(None).await;
    let proxy = proxy_for(&up, "    max_upgraded: 2\n").await;
    let first = connect(&proxy, "/ws").await.expect("first");
    let _second = connect(&proxy, "/ws").await.expect("second");
    let (status, body) = refused(connect(&proxy, "/ws").await);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["reason"], "queue-full");
    // 60 s, spread by the default `retry_after_spread` (0.5) over 60 ..= 90.
    let retry_after = problem["retry_after"].as_u64().unwrap();
    assert!((60..=90).contains(&retry_after), "{retry_after}");
    assert_eq!(up.handshakes.load(Ordering::SeqCst), 2);
    assert_eq!(get(&proxy.url("/plain")).await.status, StatusCode::OK);
    let queue_full = "sluice_requests_total{route=\"ws\",outcome=\"queue_full\"}";
    assert_eq!(proxy.metric(queue_full).await, 1.0);
    assert_eq!(
        upgraded(&proxy).await,
        2.0,
        "the refused one gave its place back"
    );
    drop(first);
    until_upgraded(&proxy, 1.0).await;
    connect(&proxy, "/ws").await.expect("a place freed up");
    proxy.stop().await;
}

/// A connection with no byte either way for `upgraded_idle_timeout` is closed, with a close
/// frame 1001 to the client; one that keeps talking is not.
#[tokio::test]
async fn idle_upgraded_connections_are_closed() {
    let _alone = support::alone().await;
    let up = ws_upstream(None).await;
    let proxy = proxy_for(&up, "    upgraded_idle_timeout: 800ms\n").await;
    let mut quiet = connect(&proxy, "/ws").await.unwrap();
    let mut talking = connect(&proxy, "/ws").await.unwrap();
    // Taken before the last byte: the connection is idle from a moment after it.
    let since = Instant::now();
    echo(&mut quiet, "hello").await;
    // The talking one exchanges a message every 200 ms for 1.6 s: never idle 800 ms.
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        echo(&mut talking, &format!("tick {i}")).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), quiet.next())
        .await
        .expect("the quiet connection is closed within 10 s");
    let took = since.elapsed();
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame 1001, got {other:?}"),
    }
    // (Milliseconds are rounded down where the last byte is noted.)
    assert!(
        took >= Duration::from_millis(790),
        "closed after {took:?}, before the idle timeout"
    );
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");
    // The talking one still echoes, after twice the idle timeout.
    echo(&mut talking, "still here").await;
    until_upgraded(&proxy, 1.0).await;
    proxy.stop().await;
}

/// The route's rate limit applies to the handshake: the second upgrade within the burst gets
/// 429 with `Retry-After` and never reaches the upstream.
#[tokio::test]
async fn rate_limits_apply_to_upgrades() {
    let up = ws_upstream(None).await;
    let limit = "    rate_limits: [{ key: client_ip, rate: 1/m, burst: 1 }]\n";
    let proxy = proxy_for(&up, limit).await;
    let _open = connect(&proxy, "/ws").await.expect("within the burst");
    let (status, body) = refused(connect(&proxy, "/ws").await);
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["reason"], "rate-limited");
    assert_eq!(up.handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(upgraded(&proxy).await, 1.0);
    proxy.stop().await;
}

/// A limit's `charge_header` on the upstream's 101: removed before the client sees it, and
/// charged (7 reported, 1 taken: 6 more), as on any response.
#[tokio::test]
async fn a_charge_header_on_a_101_is_charged_and_removed() {
    let up = ws_upstream(None).await;
    let limit = "    rate_limits: [{ name: c, key: client_ip, rate: 1/m, burst: 10, charge_header: X-Cost }]\n";
    let proxy = proxy_for(&up, limit).await;
    let url = format!("ws://{}/ws", proxy.addr);
    let (_open, res) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgraded");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(res.headers().get("x-cost").is_none(), "{:?}", res.headers());
    let plain = get(&proxy.url("/plain")).await;
    assert_eq!(
        plain.header("ratelimit"),
        Some("\"c\";r=2;t=60"),
        "10 − 1 − 6 − 1"
    );
    proxy.stop().await;
}

/// An upstream that answers an upgrade with 400 has its answer relayed as it is; nothing stays
/// counted.
#[tokio::test]
async fn a_refused_upgrade_is_relayed() {
    let up = ws_upstream(Some(StatusCode::BAD_REQUEST)).await;
    let proxy = proxy_for(&up, "").await;
    let (status, body) = refused(connect(&proxy, "/ws").await);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, "refused here");
    assert_eq!(up.handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(upgraded(&proxy).await, 0.0);
    assert_eq!(
        proxy
            .metric("sluice_responses_total{route=\"ws\",code=\"400\"}")
            .await,
        1.0
    );
    proxy.stop().await;
}

/// Sends raw bytes on a new connection to `addr` and reads the answer's status code (the
/// connection may then be closed); 10 s at most.
async fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a response head: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response head within 10 s");
    let head = String::from_utf8_lossy(&got);
    head.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

/// As an attacker: an `Upgrade` with a body (by length or chunked), `Connection: upgrade`
/// without `Upgrade`, `Upgrade` without `Connection: upgrade`, and `Upgrade: h2c` are plain
/// requests: forwarded without `Upgrade` or `Connection`, answered by the upstream, never 101,
/// never a 5xx, and sluice goes on serving.
#[tokio::test]
async fn malformed_upgrades_are_plain_requests() {
    let up = ws_upstream(None).await;
    let proxy = proxy_for(&up, "").await;
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let cases = [
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 5\r\n\r\nhello",
        "POST /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ];
    for case in &cases {
        // Each head carries a real handshake's key and version: only sluice's choice makes
        // it a plain request.
        let request = case.replacen("\r\n\r\n", &format!("\r\n{key}\r\n"), 1);
        let status = raw_status(proxy.addr, request.as_bytes()).await;
        assert!(status < 500 && status != 101, "{case:?} answered {status}");
    }
    assert_eq!(
        up.handshakes.load(Ordering::SeqCst),
        0,
        "no upgrade forwarded"
    );
    // Each one reached the upstream as a plain request, without Upgrade and Connection.
    let plain = up.plain.lock().unwrap().clone();
    assert_eq!(plain.len(), cases.len());
    for headers in &plain {
        assert!(!headers.contains_key("upgrade"), "{headers:?}");
        assert!(!headers.contains_key("connection"), "{headers:?}");
    }
    assert_eq!(upgraded(&proxy).await, 0.0);
    connect(&proxy, "/ws").await.expect("sluice still upgrades");
    proxy.stop().await;
}

/// Upgraded connections count in `max_connections_per_ip`: with 2 WebSockets open from
/// 127.0.0.1 and a share of 2, a third connection is closed at accept.
#[tokio::test]
async fn upgraded_connections_count_per_ip() {
    let up = ws_upstream(None).await;
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0, max_connections_per_ip: 2 }}\nadmin: {{ listen: 127.0.0.1:0 }}\nupstreams: {{ api: {{ endpoints: [{}] }} }}\nroutes:\n  - name: ws\n    upstream: api\n",
        up.endpoint()
    );
    let proxy = start_proxy(&yaml).await;
    let _a = connect(&proxy, "/ws").await.unwrap();
    let _b = connect(&proxy, "/ws").await.unwrap();
    let third = connect(&proxy, "/ws").await;
    assert!(third.is_err(), "a third connection from the same address");
    let refused = "sluice_connections_refused_total{reason=\"per_ip\"}";
    assert!(proxy.metric(refused).await >= 1.0);
    proxy.stop().await;
}

/// Graceful shutdown finishes the request in flight first, then closes the upgraded
/// connection with a close frame 1001.
#[tokio::test]
async fn shutdown_closes_upgraded_connections_last() {
    let _alone = support::alone().await;
    let ws_up = ws_upstream(None).await;
    let slow = support::slow_upstream(Duration::from_millis(800)).await;
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0, shutdown_grace: 10s }}\nupstreams: {{ api: {{ endpoints: [{}] }}, slow: {{ endpoints: [{}] }} }}\nroutes:\n  - name: slow\n    match: {{ path_prefix: /slow }}\n    upstream: slow\n  - name: ws\n    upstream: api\n",
        ws_up.endpoint(),
        slow.endpoint()
    );
    let proxy = start_proxy(&yaml).await;
    let mut ws = connect(&proxy, "/ws").await.unwrap();
    echo(&mut ws, "before").await;
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move {
        let got = get(&url).await;
        (got.status, Instant::now())
    });
    // Let the slow request reach the upstream before shutdown begins.
    until(
        "the slow request in flight",
        Duration::from_secs(10),
        || async { slow.requests() == 1 },
    )
    .await;
    // The upstream answers 800 ms after it has the request: from here, most of that (closed
    // at once, the upgraded connection would be closed within milliseconds).
    let seen = Instant::now();
    let stopping = tokio::spawn(proxy.stop());
    let closed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the upgraded connection is closed within 10 s of shutdown");
    let closed_at = Instant::now();
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame 1001, got {other:?}"),
    }
    let (status, _) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the request in flight was finished");
    let waited = closed_at.duration_since(seen);
    assert!(
        waited >= Duration::from_millis(400),
        "the upgraded connection was closed {waited:?} after shutdown began, before the request in flight could be answered"
    );
    stopping.await.unwrap();
}

/// An HTTP/2 client's WebSocket (RFC 8441) on an h2c connection, opened with an extended
/// CONNECT for `protocol`: the answer, and the stream to send on (dropping it resets the
/// stream).
async fn h2_websocket(
    proxy: &Proxy,
    protocol: &'static str,
) -> (Response<h2::RecvStream>, h2::SendStream<Bytes>) {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    // The server's SETTINGS (SETTINGS_ENABLE_CONNECT_PROTOCOL) arrive on the connection's task.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !send.is_extended_connect_protocol_enabled() {
        assert!(Instant::now() < deadline, "sluice enables extended CONNECT");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let req = Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}/ws", proxy.addr))
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from_static(protocol))
        .body(())
        .unwrap();
    let (response, stream) = send.send_request(req, false).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("an answer within 10 s")
        .expect("a response");
    (res, stream)
}

/// A masked text frame, as a client sends it.
fn client_frame(text: &str) -> Bytes {
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
    Bytes::from(frame)
}

/// Reads one whole server frame (unmasked, payload under 126 bytes) from `rx`: its opcode
/// byte and payload; `None` when the stream ends first.
async fn server_frame(rx: &mut h2::RecvStream, buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    loop {
        if buf.len() >= 2 && buf.len() >= 2 + usize::from(buf[1] & 0x7F) {
            let len = usize::from(buf[1] & 0x7F);
            let frame: Vec<u8> = buf.drain(..2 + len).collect();
            return Some((frame[0], frame[2..].to_vec()));
        }
        let data = tokio::time::timeout(Duration::from_secs(10), rx.data())
            .await
            .expect("data within 10 s")?
            .ok()?;
        let _ = rx.flow_control().release_capacity(data.len());
        buf.extend_from_slice(&data);
    }
}

/// A WebSocket over HTTP/2 (extended CONNECT, RFC 8441) reaches the HTTP/1.1 upstream as an
/// upgrade: 200 to the client (without the upstream's `Sec-WebSocket-Accept`), 100 messages
/// echoed on the stream, counted in the gauge; another `:protocol` gets 400; at shutdown the
/// WebSocket is closed with a close frame 1001 once the connection carries no request, without
/// waiting for `shutdown_grace` (30 s).
#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    let up = ws_upstream(None).await;
    let proxy = proxy_for(&up, "").await;
    let (res, mut tx) = h2_websocket(&proxy, "websocket").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(!res.headers().contains_key("sec-websocket-accept"));
    assert_eq!(up.handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(upgraded(&proxy).await, 1.0);
    let mut rx = res.into_body();
    let mut buf = Vec::new();
    for i in 0..100 {
        let text = format!("h2 message {i}");
        tx.send_data(client_frame(&text), false).unwrap();
        let (opcode, payload) = server_frame(&mut rx, &mut buf).await.expect("an echo");
        assert_eq!((opcode, payload), (0x81, text.into_bytes()));
    }
    let (other, _other_tx) = h2_websocket(&proxy, "connect-udp").await;
    assert_eq!(other.status(), StatusCode::BAD_REQUEST);
    let stopped = Instant::now();
    let stopping = tokio::spawn(proxy.stop());
    let (opcode, payload) = server_frame(&mut rx, &mut buf)
        .await
        .expect("a close frame");
    assert_eq!((opcode, payload), (0x88, vec![0x03, 0xE9]));
    stopping.await.unwrap();
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    drop(tx);
}

/// An HTTP/2 WebSocket keeps its connection open: the watchdog that closes an HTTP/2
/// connection without open streams after `header_read_timeout` (300 ms here) counts it as one.
#[tokio::test]
async fn an_http2_websocket_keeps_its_connection_open() {
    let up = ws_upstream(None).await;
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0, header_read_timeout: 300ms }}\nadmin: {{ listen: 127.0.0.1:0 }}\nupstreams: {{ api: {{ endpoints: [{}] }} }}\nroutes:\n  - name: ws\n    upstream: api\n",
        up.endpoint()
    );
    let proxy = start_proxy(&yaml).await;
    let (res, mut tx) = h2_websocket(&proxy, "websocket").await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut rx = res.into_body();
    let mut buf = Vec::new();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    tx.send_data(client_frame("after a quiet second"), false)
        .unwrap();
    let (_, payload) = server_frame(&mut rx, &mut buf).await.expect("an echo");
    assert_eq!(payload, b"after a quiet second");
    drop((tx, rx));
    until_upgraded(&proxy, 0.0).await;
    proxy.stop().await;
}

/// An upgrade on a route that defers every request (`when: always`) is not deferred: a client
/// waiting for its 101 could not use a 202. Plain requests of the route still are.
#[cfg(feature = "redis")]
#[tokio::test]
async fn upgrades_are_never_deferred() {
    let redis = support::redis_server::RedisServer::start().await;
    let up = ws_upstream(None).await;
    let yaml = support::deferred::config(&redis.url(), &up.endpoint(), "", "{when: always}");
    let proxy = start_proxy(&yaml).await;
    let mut ws = connect(&proxy, "/hooks/ws")
        .await
        .expect("upgraded, not deferred");
    echo(&mut ws, "live, not a task").await;
    assert_eq!(up.handshakes.load(Ordering::SeqCst), 1);
    let got = support::deferred::post(&proxy.url("/hooks/plain"), "a task").await;
    assert_eq!(got.status, StatusCode::ACCEPTED, "{}", got.text());
    drop(ws);
    proxy.stop().await;
}

/// An upstream that switches protocols on a request that asked for no upgrade breaks the
/// exchange: 502, never a 101 passed to a client that did not ask for one.
#[tokio::test]
async fn an_unasked_101_is_a_broken_exchange() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    let routes = "  - name: ws\n    upstream: api\n";
    let proxy = start_proxy(&admin_config(&format!("http://{addr}"), routes)).await;
    let got = get(&proxy.url("/plain")).await;
    got.assert_problem(StatusCode::BAD_GATEWAY, "upstream-unavailable");
    server.abort();
    proxy.stop().await;
}
