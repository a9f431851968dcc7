//! Keep-alive behaviour of an upstream against a real server on a socket: reuse, the retry of
//! a request a closing connection gave back, and idle connections closed by housekeeping.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::Upstream;
use crate::proxy::pool::{Conn, KeepAlive, MAX_IDLE};
use crate::proxy::test_util::{get, text, TestUpstream};

/// Polls `f` once, without a waker: to stop a future at its first await on purpose.
fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// One `GET /` through `upstream`, body read whole; the connection is not released yet.
async fn exchange(upstream: &Upstream) -> Conn {
    let (res, conn) = upstream
        .send(get())
        .await
        .expect("the test upstream answers");
    assert_eq!(res.status(), http::StatusCode::OK);
    assert_eq!(text(res).await, "ok");
    conn
}

/// The stale-connection retry: a request checked out on a kept-alive connection that closes
/// before writing it comes back from hyper and is sent again on a fresh connection, so it
/// succeeds and the upstream sees it once.
///
/// Deterministic: the stale connection is an in-memory one whose task the test holds; it is
/// dropped once the request is queued on it, which is what hyper does with a connection that
/// reads the upstream's close before it has written the queued request.
#[tokio::test]
async fn request_given_back_by_a_closing_connection_is_sent_on_a_fresh_one() {
    let server = TestUpstream::start().await;
    let upstream = Upstream::new(&server.config());

    let (ours, mut far) = tokio::io::duplex(4096);
    let (sender, connection) = http1::handshake(TokioIo::new(ours))
        .await
        .expect("an HTTP/1 handshake does no I/O");
    let mut connection = Box::pin(connection);
    // One poll and the connection waits for a request: it passes checkout's readiness check.
    assert!(poll_once(connection.as_mut()).is_pending());
    upstream.fleet().endpoints()[0].pool.put(sender);
    assert_eq!(upstream.idle(), 1);

    let mut send = pin!(upstream.send(get()));
    assert!(
        poll_once(send.as_mut()).is_pending(),
        "the request waits on the stale connection"
    );
    assert_eq!(upstream.idle(), 0, "the stale connection was checked out");
    drop(connection);

    let (res, conn) = send.await.expect("sent again on a fresh connection");
    assert!(!conn.reused);
    assert_eq!(text(res).await, "ok");
    assert_eq!(server.requests(), 1, "the upstream sees the request once");
    assert_eq!(server.connections(), 1);
    let mut written = Vec::new();
    far.read_to_end(&mut written)
        .await
        .expect("an in-memory pipe reads");
    assert!(
        written.is_empty(),
        "bytes reached the stale connection: {:?}",
        String::from_utf8_lossy(&written)
    );
}

/// A released connection serves the next request; once idle for `idle_timeout`, housekeeping
/// closes it (the upstream sees the close) without any request coming.
#[tokio::test]
async fn idle_connection_is_closed_by_housekeeping_after_idle_timeout() {
    let server = TestUpstream::start().await;
    let idle_timeout = Duration::from_millis(500);
    let upstream = Upstream::with_keep_alive(
        &server.config(),
        KeepAlive {
            idle_timeout,
            max_idle: MAX_IDLE,
        },
    );

    exchange(&upstream).await.release();
    let conn = exchange(&upstream).await;
    assert!(conn.reused);
    assert_eq!(
        server.connections(),
        1,
        "the kept-alive connection is reused"
    );
    // Taken before the release, so that the connection's idle time is at least this old.
    let released = Instant::now();
    conn.release();
    assert_eq!(upstream.idle(), 1);

    upstream.housekeeping();
    assert_eq!(upstream.idle(), 1, "closed before idle_timeout");

    // The runtime's housekeeping pass, more often than its 5 s so the test is short.
    let reaper = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            upstream.housekeeping();
        }
    };
    let closed = tokio::select! {
        () = reaper => unreachable!("the reaper loops for ever"),
        closed = server.wait_closed(1, Duration::from_secs(10)) => closed,
    };
    let took = released.elapsed();
    assert!(closed, "idle connection still open after {took:?}");
    assert!(
        took >= idle_timeout,
        "closed after {took:?}, before idle_timeout"
    );
    assert!(
        took < idle_timeout + Duration::from_secs(5),
        "closed late: {took:?}"
    );
    assert_eq!(upstream.idle(), 0);
    assert_eq!(server.closed(), 1);
}

/// `grpc-timeout` in each unit; malformed values (no unit, 9 digits, a sign) are ignored.
#[test]
fn grpc_timeouts_parse() {
    let of = |v: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", v.parse().unwrap());
        super::grpc_timeout(&h)
    };
    assert_eq!(of("2H"), Some(Duration::from_secs(7200)));
    assert_eq!(of("3M"), Some(Duration::from_secs(180)));
    assert_eq!(of("1S"), Some(Duration::from_secs(1)));
    assert_eq!(of("250m"), Some(Duration::from_millis(250)));
    assert_eq!(of("99999999u"), Some(Duration::from_micros(99_999_999)));
    assert_eq!(of("5n"), Some(Duration::from_nanos(5)));
    for bad in ["", "S", "100", "123456789S", "-1S", "1s", "1.5S"] {
        assert_eq!(of(bad), None, "{bad:?}");
    }
}
