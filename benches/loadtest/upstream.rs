//! The sample upstream: an API of limited capacity, like `sluice demo`'s, but parameterised and
//! instrumented.
//!
//! It works on `workers` requests at once for `service` each; more wait inside it (a FIFO
//! semaphore, as a real backend's thread pool), so without sluice in front its latency grows
//! with the load. It echoes the `X-Loadtest-Start` request header (see `pace.lua`) and records
//! how long each request spent inside it, waiting included: the upstream latency of the report.
//! It runs on its own thread and single-threaded runtime, apart from sluice's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The header `pace.lua` stamps on each request and the upstream sends back.
const START: HeaderName = HeaderName::from_static("x-loadtest-start");

/// A running sample upstream.
pub(crate) struct SampleUpstream {
    /// Where it listens (127.0.0.1, a free port).
    pub(crate) addr: SocketAddr,
    stats: Arc<Stats>,
}

/// What the upstream saw, shared with its request handlers.
#[derive(Default)]
struct Stats {
    /// Requests inside the upstream (working or waiting for a worker).
    inflight: AtomicUsize,
    /// Time each request finished since the last [`SampleUpstream::take_times`] spent inside.
    times: Mutex<Vec<Duration>>,
}

/// Decrements `inflight` when a request leaves the upstream, however it leaves.
struct Inside<'a>(&'a AtomicUsize);

impl<'a> Inside<'a> {
    fn enter(inflight: &'a AtomicUsize) -> Self {
        inflight.fetch_add(1, Ordering::Relaxed);
        Inside(inflight)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SampleUpstream {
    /// Binds 127.0.0.1:0 and serves on a new thread.
    pub(crate) fn start(workers: usize, service: Duration) -> Result<SampleUpstream, String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("cannot bind the sample upstream on 127.0.0.1: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the sample upstream's address: {e}"))?;
        let stats = Arc::new(Stats::default());
        let shared = stats.clone();
        std::thread::Builder::new()
            .name("sample-upstream".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the sample upstream needs a tokio runtime");
                runtime.block_on(serve(listener, workers, service, shared));
            })
            .map_err(|e| format!("cannot start the sample upstream's thread: {e}"))?;
        Ok(SampleUpstream { addr, stats })
    }

    /// Waits until no request is inside the upstream (a load step's leftovers drained), for at
    /// most `limit`. True if it is idle.
    pub(crate) fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.stats.inflight.load(Ordering::Relaxed) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// The time each request spent inside since the last call, in completion order.
    pub(crate) fn take_times(&self) -> Vec<Duration> {
        let mut times = self
            .stats
            .times
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *times)
    }
}

async fn serve(
    listener: std::net::TcpListener,
    workers: usize,
    service: Duration,
    stats: Arc<Stats>,
) {
    let listener = TcpListener::from_std(listener)
        .expect("the sample upstream's listener must register with tokio");
    let workers = Arc::new(Semaphore::new(workers));
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            // Out of file descriptors and the like: back off instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (workers, stats) = (workers.clone(), stats.clone());
        tokio::spawn(async move {
            let handler = service_fn(move |req: Request<Incoming>| {
                let (workers, stats) = (workers.clone(), stats.clone());
                async move { Ok::<_, Infallible>(handle(req, &workers, service, &stats).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), handler)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    workers: &Semaphore,
    service: Duration,
    stats: &Stats,
) -> Response<Full<Bytes>> {
    let arrived = Instant::now();
    let _inside = Inside::enter(&stats.inflight);
    {
        // The semaphore is never closed, so acquiring only waits.
        let _worker = workers.acquire().await;
        tokio::time::sleep(service).await;
    }
    stats
        .times
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(arrived.elapsed());
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    if let Some(start) = req.headers().get(&START) {
        response.headers_mut().insert(START, start.clone());
    }
    response
}
