//! No client can hold sluice's capacity: each attack of the "hold capacity" issue, tried as an
//! attacker would with real sockets, and a legitimate client that must still be served.
//!
//! Every test asserts bounds: the legitimate client is served within a deadline and the slots
//! return to 0, never exact timings.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Deadline for anything the tests wait for (generous: a debug build on a loaded machine).
const PATIENCE: Duration = Duration::from_secs(15);

/// A proxy with an admin listener, `server` lines added, and upstream `api` at `endpoint`
/// capped at `cap` in flight with no queue: one request too many gets 503 at once.
fn capped(endpoint: &str, server: &str, cap: usize) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n{server}admin:\n  listen: 127.0.0.1:0\nupstreams:\n  api:\n    endpoints: [{endpoint}]\n    concurrency: {{max_inflight: {cap}, queue: 0}}\nroutes:\n  - name: all\n    upstream: api\n"
    )
}

/// An upstream answering GET /big with `size` bytes, anything else with "ok".
async fn sized_upstream(size: u64) -> Upstream {
    upstream(move |req: Request<Incoming>| async move {
        if req.uri().path() == "/big" {
            Response::new(TestBody::Generated {
                remaining: size,
                chunk: 16 << 10,
            })
        } else {
            Response::new(TestBody::text("ok"))
        }
    })
    .await
}

/// Waits until a normal client gets 200 from `url` and the upstream's slots are all free but
/// `busy` — the legitimate client's view of an attack.
async fn served_while_attacked(proxy: &Proxy, busy: f64) {
    until("a legitimate request to be served", PATIENCE, || async {
        get(&proxy.url("/")).await.status == StatusCode::OK
    })
    .await;
    until("the upstream's slots to come back", PATIENCE, || async {
        proxy.metric("sluice_inflight{upstream=\"api\"}").await <= busy
    })
    .await;
}

/// A raw HTTP/1 connection whose kernel receive buffer is tiny: it sends `request` and never
/// reads, as a client behind a stalled link would.
async fn never_reading(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    tcp
}

/// Four clients that ask `/big` of the 4-slot upstream and never read, once all four requests
/// have reached the upstream (so each holds a slot, as far as the upstream can tell).
async fn four_that_never_read(proxy: &Proxy, up: &Upstream) -> Vec<TcpStream> {
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let tcp = never_reading(proxy.addr, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await;
        attackers.push(tcp);
    }
    until("the 4 requests to reach the upstream", PATIENCE, || {
        up.requests() >= 4
    })
    .await;
    attackers
}

/// An HTTP/2 (h2c) connection to `addr` advertising a zero window for every stream and never
/// releasing any, so no response DATA can reach it; the task drives the connection.
async fn zero_window_h2(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (h2, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2c handshake");
    let driver = tokio::spawn(connection);
    (h2.ready().await.unwrap(), driver)
}

/// Reads a raw response's head (up to the blank line) from `tcp`.
async fn response_head(tcp: &mut TcpStream) -> String {
    let read = async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("a response head")
}

/// Pins the first attack: an HTTP/2 client advertising `SETTINGS_INITIAL_WINDOW_SIZE = 0` with
/// 4 streams for a 200 KB response used to hold all 4 slots of the upstream (every other request
/// got 503 until it left). The responses are now drained whole at once and the slots freed.
#[tokio::test]
async fn zero_window_http2_client_holds_no_slot() {
    let up = sized_upstream(200_000).await;
    let proxy = start_proxy(&capped(&up.endpoint(), "", 4)).await;
    let (mut h2, driver) = zero_window_h2(proxy.addr).await;
    let mut heads = Vec::new();
    for _ in 0..4 {
        let req = Request::get(proxy.url("/big")).body(()).unwrap();
        let (response, _) = h2.send_request(req, true).unwrap();
        heads.push(response);
        h2 = h2.ready().await.unwrap();
    }
    for response in heads.iter_mut() {
        let head = tokio::time::timeout(PATIENCE, response)
            .await
            .expect("a head");
        assert_eq!(head.unwrap().status(), StatusCode::OK);
    }
    // The attacker is still connected and reads nothing.
    served_while_attacked(&proxy, 0.0).await;
    drop((heads, h2));
    driver.abort();
    proxy.stop().await;
}

/// Pins the second attack: 4 HTTP/1 clients with a 4 KiB receive buffer asking for 8 MB and
/// never reading held the upstream's slots for as long as they liked (the kernel's buffers hold
/// far less than 8 MB). A response that fits `response_buffer` is taken off the upstream at once.
#[tokio::test]
async fn clients_that_never_read_hold_no_slot() {
    let up = sized_upstream(8 << 20).await;
    let server = "  response_buffer: 16MiB\n";
    let proxy = start_proxy(&capped(&up.endpoint(), server, 4)).await;
    let attackers = four_that_never_read(&proxy, &up).await;
    served_while_attacked(&proxy, 0.0).await;
    drop(attackers);
    proxy.stop().await;
}

/// Pins `send_timeout`: a response larger than `response_buffer` to clients that never read
/// holds the slots only until the clients have accepted nothing for `send_timeout`.
#[tokio::test]
async fn large_response_to_a_reader_that_stops_is_cut_after_send_timeout() {
    let up = sized_upstream(8 << 20).await;
    let server = "  send_timeout: 1s\n  response_buffer: 256KiB\n";
    let proxy = start_proxy(&capped(&up.endpoint(), server, 4)).await;
    let attackers = four_that_never_read(&proxy, &up).await;
    served_while_attacked(&proxy, 0.0).await;
    // The attackers' connections were closed by sluice: reading them ends (after what the
    // kernel buffered).
    for mut tcp in attackers {
        let drained = async {
            let mut sink = vec![0u8; 64 << 10];
            while tcp.read(&mut sink).await.unwrap_or(0) > 0 {}
        };
        tokio::time::timeout(PATIENCE, drained)
            .await
            .expect("sluice closed the connection");
    }
    proxy.stop().await;
}

/// Regression (issue 22): an HTTP/2 stream whose client kept its window at zero had its slot
/// given back at `send_timeout`, but was never reset — hyper held a chunk waiting for a window
/// and never polled the body again, so the stream stayed open at the client. It now gets
/// `RST_STREAM` (CANCEL) at that moment, and the connection goes on serving other streams.
#[tokio::test]
async fn http2_stream_stalled_past_send_timeout_is_reset_with_cancel() {
    let up = sized_upstream(8 << 20).await;
    let send_timeout = Duration::from_secs(1);
    let server = "  send_timeout: 1s\n  response_buffer: 256KiB\n";
    let proxy = start_proxy(&capped(&up.endpoint(), server, 4)).await;
    let (mut h2, driver) = zero_window_h2(proxy.addr).await;
    let sent = std::time::Instant::now();
    let req = Request::get(proxy.url("/big")).body(()).unwrap();
    let (response, _) = h2.send_request(req, true).unwrap();
    let head = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("a head")
        .expect("a response");
    assert_eq!(head.status(), StatusCode::OK);
    // No capacity is ever released: the window stays at zero, so no DATA can come, only a reset.
    let mut body = head.into_body();
    let bound = send_timeout + Duration::from_secs(5);
    let end = tokio::time::timeout(bound, body.data())
        .await
        .expect("RST_STREAM within send_timeout + 5 s");
    let reset = match end {
        Some(Err(err)) => err,
        other => panic!("a reset, not {other:?}"),
    };
    assert_eq!(reset.reason(), Some(h2::Reason::CANCEL), "{reset}");
    assert!(
        sent.elapsed() >= send_timeout,
        "reset after {:?}, before send_timeout",
        sent.elapsed()
    );
    // Only the stream was reset: the same connection serves another request.
    let mut h2 = h2.ready().await.expect("the connection is open");
    let (response, _) = h2
        .send_request(Request::get(proxy.url("/")).body(()).unwrap(), true)
        .unwrap();
    let head = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("a head")
        .expect("a response");
    assert_eq!(head.status(), StatusCode::OK);
    served_while_attacked(&proxy, 0.0).await;
    driver.abort();
    proxy.stop().await;
}

/// Pins the third attack: POSTs announcing 1,000,000 bytes and sending one byte at a time held
/// their slots until the upstream's `timeout`. Their bodies are now read before they may take a
/// slot, so they hold none, and they get 408 `body-timeout` after `request_body_timeout`.
#[tokio::test]
async fn dribbled_uploads_hold_no_slot_and_time_out() {
    let up = ok_upstream().await;
    let server = "  request_body_timeout: 2s\n";
    let proxy = start_proxy(&capped(&up.endpoint(), server, 4)).await;
    let mut dribblers = Vec::new();
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nx")
            .await
            .unwrap();
        dribblers.push(tcp);
    }
    let drip = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for tcp in dribblers.iter_mut() {
                let _ = tcp.write_all(b"x").await;
            }
        }
    };
    tokio::select! {
        () = served_while_attacked(&proxy, 0.0) => {}
        () = drip => unreachable!(),
    }
    assert_eq!(
        up.requests(),
        1,
        "only the legitimate request reached the upstream"
    );
    for tcp in dribblers.iter_mut() {
        let head = response_head(tcp).await;
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    }
    let timed_out = proxy
        .metric("sluice_requests_total{route=\"all\",outcome=\"body_timeout\"}")
        .await;
    assert_eq!(timed_out, 4.0);
    proxy.stop().await;
}

/// Pins `max_request_body`: an announced body over it is refused at once without reaching the
/// upstream; a chunked one that grows past it while streaming is refused too.
#[tokio::test]
async fn bodies_over_max_request_body_get_413() {
    let up = upstream(|req: Request<Incoming>| async move {
        let n = match req.into_body().collect().await {
            Ok(body) => body.to_bytes().len(),
            Err(_) => 0,
        };
        Response::new(TestBody::text(n.to_string()))
    })
    .await;
    let server = "  max_request_body: 1MiB\n  request_buffer: 64KiB\n";
    let proxy = start_proxy(&capped(&up.endpoint(), server, 4)).await;

    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n")
        .await
        .unwrap();
    let head = response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(up.requests(), 0, "nothing was forwarded");

    // 2 MiB in 64 KiB chunks, no length announced (chunked): it streams past the buffer, then
    // past the limit.
    let body = TestBody::Generated {
        remaining: 2 << 20,
        chunk: 64 << 10,
    };
    let res = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<TestBody>()
        .request(Request::post(proxy.url("/")).body(body).unwrap());
    let res = tokio::time::timeout(PATIENCE, res)
        .await
        .expect("an answer");
    // sluice may close the connection while the client still writes; then the status is lost
    // to the client, but the outcome below is still counted.
    if let Ok(res) = res {
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    let too_large = proxy
        .metric("sluice_requests_total{route=\"all\",outcome=\"body_too_large\"}")
        .await;
    assert_eq!(too_large, 2.0);
    proxy.stop().await;
}

/// Pins the eighth attack: bad chunked framing in a client's body was a 502
/// `upstream-unavailable` counted as `upstream_error`, so any client could fire an operator's
/// upstream alerts. It is a 400 `bad-request` counted as `bad_request`.
#[tokio::test]
async fn malformed_body_is_a_client_fault() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&capped(&up.endpoint(), "", 4)).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nZZ-not-hex\r\n\r\n",
    )
    .await
    .unwrap();
    let head = response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let bad = proxy
        .metric("sluice_requests_total{route=\"all\",outcome=\"bad_request\"}")
        .await;
    assert_eq!(bad, 1.0);
    let upstream_errors = proxy
        .metric("sluice_requests_total{route=\"all\",outcome=\"upstream_error\"}")
        .await;
    assert_eq!(upstream_errors, 0.0);
    proxy.stop().await;
}

/// Pins the fifth attack: a 380 KB request head was accepted and forwarded. Past
/// `max_header_bytes` it gets 431.
#[tokio::test]
async fn oversized_head_gets_431() {
    let up = ok_upstream().await;
    let proxy = start_proxy(&capped(&up.endpoint(), "", 4)).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    // 38 fields of 10 KB: few enough fields for any parser, 380 KB in all.
    for i in 0..38 {
        request.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "f".repeat(10_000)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    // Written in the background: sluice may answer and close before it has read it all.
    let (mut reader, mut writer) = tcp.split();
    let write = writer.write_all(&request);
    let read = async {
        let mut response = Vec::new();
        let _ = reader.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    };
    let (_, response) = tokio::time::timeout(PATIENCE, async { tokio::join!(write, read) })
        .await
        .expect("an answer");
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert_eq!(up.requests(), 0);
    proxy.stop().await;
}

/// Pins the ninth attack: `GET /x HTTP/1.0` without Host was forwarded with no Host at all. The
/// upstream endpoint's authority is sent instead.
#[tokio::test]
async fn http10_without_host_gets_the_endpoints_authority() {
    let up = echo_upstream().await;
    let proxy = start_proxy(&capped(&up.endpoint(), "", 4)).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET /x HTTP/1.0\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut response))
        .await
        .expect("an answer")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    let echoed: serde_json::Value = serde_json::from_str(body).expect("the echo");
    assert_eq!(echoed["headers"]["host"], up.addr.to_string());
    proxy.stop().await;
}

/// Pins the sixth attack: one address holding 40 partial heads took every connection slot, so
/// other clients waited about `header_read_timeout`. With `max_connections_per_ip` its excess
/// connections are closed at accept and a client from another address is served at once.
#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let up = ok_upstream().await;
    let server =
        "  max_connections: 20\n  max_connections_per_ip: 10\n  header_read_timeout: 10s\n";
    let proxy = start_proxy(&capped(&up.endpoint(), server, 4)).await;
    let mut partial = Vec::new();
    for _ in 0..40 {
        let Ok(mut tcp) = TcpStream::connect(proxy.addr).await else {
            continue;
        };
        let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        partial.push(tcp);
    }
    // Another client, from 127.0.0.2.
    let started = std::time::Instant::now();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut tcp = socket.connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let head = response_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "served in {:?}, not after the partial heads' timeout",
        started.elapsed()
    );
    let refused = proxy
        .metric("sluice_connections_refused_total{reason=\"per_ip\"}")
        .await;
    assert!(refused >= 10.0, "{refused} refused");
    drop(partial);
    proxy.stop().await;
}

/// Pins the fourth attack's bound: request bodies waiting for a slot are buffered only up to
/// `max_buffered_bytes` all together (past it they stream; one chunk per body over, counted), and one HTTP/2 stream may send at
/// most a 256 KiB window before sluice reads.
#[tokio::test]
async fn buffered_bodies_stay_within_max_buffered_bytes() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let up = upstream(move |_| {
        let g = g.clone();
        async move {
            let _ = g.acquire().await;
            Response::new(TestBody::text("ok"))
        }
    })
    .await;
    let server = "  max_buffered_bytes: 1MiB\n";
    let yaml =
        capped(&up.endpoint(), server, 1).replace("queue: 0", "queue: 40, queue_timeout: 30s");
    let proxy = start_proxy(&yaml).await;
    let cl = h2c_client();
    let mut uploads = Vec::new();
    for _ in 0..12 {
        let req = Request::post(proxy.url("/"))
            .body(http_body_util::Full::new(Bytes::from(vec![
                b'u';
                256 << 10
            ])))
            .unwrap();
        uploads.push(tokio::spawn(cl.request(req)));
    }
    until("requests to queue", PATIENCE, || async {
        proxy.metric("sluice_queue_depth{upstream=\"api\"}").await >= 4.0
    })
    .await;
    // Everything read is counted, the chunk that found the budget spent included: the gauge
    // may pass the maximum by one HTTP/2 DATA frame (16 KiB) per upload, no more.
    let buffered = proxy.metric("sluice_buffered_bytes").await;
    assert!(
        buffered <= f64::from((1u32 << 20) + 12 * (16 << 10)),
        "{buffered} bytes buffered, over max_buffered_bytes and a frame per upload"
    );
    gate.add_permits(100);
    for upload in uploads {
        let res = tokio::time::timeout(PATIENCE, upload).await.expect("done");
        assert_eq!(res.unwrap().unwrap().status(), StatusCode::OK);
    }
    until("the buffers to be given back", PATIENCE, || async {
        proxy.metric("sluice_buffered_bytes").await == 0.0
    })
    .await;

    // An HTTP/2 stream's window: what a client may send before sluice reads.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.expect("h2c");
    let driver = tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let (_response, mut stream) = h2
        .send_request(Request::post(proxy.url("/")).body(()).unwrap(), false)
        .unwrap();
    stream.reserve_capacity(4 << 20);
    let capacity = tokio::time::timeout(
        PATIENCE,
        std::future::poll_fn(|cx| stream.poll_capacity(cx)),
    )
    .await
    .expect("a window")
    .expect("open")
    .expect("capacity");
    assert!(capacity <= 256 << 10, "stream window {capacity}");
    driver.abort();
    proxy.stop().await;
}
