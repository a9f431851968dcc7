//! Keep-alive behaviour of an upstream against a real server on a socket: the retry of a
//! request a closing connection gave back.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;

use super::Upstream;
use crate::proxy::test_util::{get, text, TestUpstream};

/// Polls `f` once, without a waker: to stop a future at its first await on purpose.
fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
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
    upstream.endpoints[0].pool.put(sender);
    assert_eq!(upstream.idle(), 1);

    let mut send = pin!(upstream.send_upstream(get()));
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
