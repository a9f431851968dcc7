//! An upstream on a real socket for the pool and upstream tests: counts the requests it
//! answers, the connections it accepts and the connections sluice closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Balance, UpstreamConfig};
use crate::proxy::request_body::UpstreamBody;

/// An HTTP/1.1 server on 127.0.0.1 answering 200 `ok`, keeping connections alive.
#[derive(Debug)]
pub(crate) struct TestUpstream {
    pub(crate) addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    /// Connections that ended (sluice closed them), counted when the server sees the close.
    closed: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl TestUpstream {
    pub(crate) async fn start() -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed) = watch::channel(0);
        let closed_tx = Arc::new(closed_tx);
        let (r, c) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (r, closed_tx) = (r.clone(), closed_tx.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        r.fetch_add(1, Ordering::SeqCst);
                        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                    closed_tx.send_modify(|n| *n += 1);
                });
            }
        });
        TestUpstream {
            addr,
            requests,
            connections,
            closed,
            task,
        }
    }

    /// Requests answered.
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections that have ended so far.
    pub(crate) fn closed(&self) -> usize {
        *self.closed.borrow()
    }

    /// Waits until `n` connections have ended; false after `limit`.
    pub(crate) async fn wait_closed(&self, n: usize, limit: Duration) -> bool {
        let mut closed = self.closed.clone();
        let waited = tokio::time::timeout(limit, closed.wait_for(|c| *c >= n)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// An upstream config with this server as its only endpoint.
    pub(crate) fn config(&self) -> UpstreamConfig {
        UpstreamConfig {
            name: "test".into(),
            endpoints: vec![Authority::try_from(self.addr.to_string().as_str())
                .expect("an address is an authority")],
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            concurrency: None,
            resolve_interval: UpstreamConfig::DEFAULT_RESOLVE_INTERVAL,
            balance: Balance::RoundRobin,
            health_check: None,
            outlier: Default::default(),
            retry: Default::default(),
            protocol: Default::default(),
            https: false,
            tls: None,
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `GET /` in upstream form.
pub(crate) fn get() -> Request<UpstreamBody> {
    Request::get("/")
        .header("host", "test")
        .body(UpstreamBody::Empty)
        .expect("a valid request")
}

/// The whole body of `res`, as text.
pub(crate) async fn text(res: Response<Incoming>) -> String {
    let body = res
        .into_body()
        .collect()
        .await
        .expect("the test upstream sends whole bodies")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}
