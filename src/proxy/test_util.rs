//! An upstream on a real socket for the pool and upstream tests: counts the requests it
//! answers and the connections it accepts.

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
use tokio::task::JoinHandle;

use crate::config::UpstreamConfig;
use crate::proxy::UpstreamBody;

/// An HTTP/1.1 server on 127.0.0.1 answering 200 `ok`, keeping connections alive.
#[derive(Debug)]
pub(crate) struct TestUpstream {
    pub(crate) addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
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
        let (r, c) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        r.fetch_add(1, Ordering::SeqCst);
                        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        TestUpstream {
            addr,
            requests,
            connections,
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

    /// An upstream config with this server as its only endpoint.
    pub(crate) fn config(&self) -> UpstreamConfig {
        UpstreamConfig {
            name: "test".into(),
            endpoints: vec![Authority::try_from(self.addr.to_string().as_str())
                .expect("an address is an authority")],
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            concurrency: None,
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
