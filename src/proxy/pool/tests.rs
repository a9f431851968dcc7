//! The idle stack's bounds on paused time. Connections run over in-memory pipes: the pool only
//! sees `SendRequest`s, and the far end of each pipe tells whether sluice closed it.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio::time::{self, Instant};

use super::{EndpointPool, KeepAlive, IDLE_TIMEOUT, MAX_IDLE};
use crate::proxy::request_body::UpstreamBody;

/// An idle connection as the pool holds it, the upstream's end of its pipe, and its task.
struct TestConn {
    sender: SendRequest<UpstreamBody>,
    upstream: DuplexStream,
    task: JoinHandle<()>,
}

/// A connection ready for a request (its task has run and waits for one).
async fn conn() -> TestConn {
    let (ours, upstream) = tokio::io::duplex(1024);
    let (mut sender, connection) = http1::handshake(TokioIo::new(ours))
        .await
        .expect("an HTTP/1 handshake does no I/O");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.ready().await.expect("a fresh connection is ready");
    TestConn {
        sender,
        upstream,
        task,
    }
}

fn pool(keep_alive: KeepAlive) -> Arc<EndpointPool> {
    // Nothing here connects: every connection is handed to the pool by the test.
    Arc::new(EndpointPool::new(
        Authority::from_static("127.0.0.1:9"),
        Duration::from_secs(1),
        keep_alive,
        Arc::new(crate::proxy::connect::Connector::plain()),
    ))
}

/// True once sluice has closed its end: the upstream reads end-of-file.
async fn closed(upstream: &mut DuplexStream) -> bool {
    let mut buf = [0u8; 64];
    // Paused time: this timeout only fires once every task is idle, i.e. when no close is
    // on its way.
    matches!(
        time::timeout(Duration::from_secs(1), upstream.read(&mut buf)).await,
        Ok(Ok(0))
    )
}

/// The defaults are the documented ones (docs/guide.md "Forwarding"): 256 idle connections per
/// endpoint, closed after 60 s idle.
#[test]
fn defaults_are_256_connections_and_60_s() {
    assert_eq!(MAX_IDLE, 256);
    assert_eq!(IDLE_TIMEOUT, Duration::from_secs(60));
    assert_eq!(
        KeepAlive::default(),
        KeepAlive {
            idle_timeout: IDLE_TIMEOUT,
            max_idle: MAX_IDLE
        }
    );
}

/// Checkout reuses an idle connection until it has been idle for `idle_timeout`, and closes it
/// from then on instead of handing it out.
#[tokio::test(start_paused = true)]
async fn checkout_skips_and_closes_expired_connections() {
    let pool = pool(KeepAlive::default());
    let mut c = conn().await;
    pool.put(c.sender);

    time::advance(IDLE_TIMEOUT - Duration::from_millis(1)).await;
    let sender = pool.take_idle().expect("reused just before the timeout");
    pool.put(sender);

    // Returned again: its idle time starts over.
    time::advance(IDLE_TIMEOUT - Duration::from_millis(1)).await;
    assert_eq!(pool.idle(), 1);
    time::advance(Duration::from_millis(1)).await;
    assert!(pool.take_idle().is_none(), "handed out after idle_timeout");
    assert_eq!(pool.idle(), 0);
    assert!(
        closed(&mut c.upstream).await,
        "expired connection left open"
    );
}

/// The reaper closes connections idle for `idle_timeout` without any request, and keeps the
/// younger ones (the fix for "idle connections are closed after 60 s" only holding at checkout).
#[tokio::test(start_paused = true)]
async fn reap_closes_expired_connections_and_keeps_younger_ones() {
    let pool = pool(KeepAlive::default());
    let mut old = conn().await;
    let mut young = conn().await;
    pool.put(old.sender);
    time::advance(Duration::from_secs(40)).await;
    pool.put(young.sender);
    time::advance(Duration::from_secs(20)).await;

    pool.reap(Instant::now());
    assert_eq!(pool.idle(), 1, "only the connection idle for 60 s goes");
    assert!(
        closed(&mut old.upstream).await,
        "expired connection left open"
    );
    assert!(
        !closed(&mut young.upstream).await,
        "a young connection was closed"
    );

    time::advance(Duration::from_secs(40)).await;
    pool.reap(Instant::now());
    assert_eq!(pool.idle(), 0);
    assert!(closed(&mut young.upstream).await);
}

/// The reaper also forgets connections the upstream closed, before they expire.
#[tokio::test(start_paused = true)]
async fn reap_forgets_connections_the_upstream_closed() {
    let pool = pool(KeepAlive::default());
    let c = conn().await;
    pool.put(c.sender);
    drop(c.upstream);
    c.task.await.expect("connection task");

    pool.reap(Instant::now());
    assert_eq!(pool.idle(), 0);
}

/// More connections returned than `max_idle`: only `max_idle` are kept, the others are closed.
#[tokio::test(start_paused = true)]
async fn idle_stack_keeps_at_most_max_idle() {
    let pool = pool(KeepAlive {
        idle_timeout: IDLE_TIMEOUT,
        max_idle: 2,
    });
    let mut conns = Vec::new();
    for _ in 0..4 {
        let c = conn().await;
        conns.push(c.upstream);
        pool.put(c.sender);
    }
    assert_eq!(pool.idle(), 2);
    let mut open = 0;
    for upstream in &mut conns {
        if !closed(upstream).await {
            open += 1;
        }
    }
    assert_eq!(open, 2, "connections beyond max_idle must be closed");
}
