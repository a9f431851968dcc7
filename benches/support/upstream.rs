//! The benches' upstream: an API of `workers` threads, each serving one request at a time for a
//! fixed service time, with a FIFO queue in front of them — a thread-pool backend. Without
//! sluice in front its latency grows with the load, as a real backend's does. Used by the
//! loadtest and overload benches (`#[path = "../support/upstream.rs"]`).
//!
//! Why threads and not a tokio semaphore and `sleep`: tokio's timers have millisecond
//! resolution and round up, so a 20 ms sleep takes about 21 ms and the capacity would be 5–7%
//! under `workers / service`. Here a worker sleeps with `std::thread::sleep` (accurate to about
//! 0.1 ms), so the capacity the load levels multiply is the capacity the upstream really has.
//! At 10× with 10% critical requests the critical ones alone are 1× that capacity: 7% too much
//! would decide the outcome on its own.
//!
//! Connections are accepted and parsed by a current-thread tokio runtime on its own thread,
//! apart from sluice's; a request waits inside the upstream (queued for a worker) as long as it
//! has to. Nothing in it knows about priorities: whatever the proxy in front lets through is
//! served in arrival order. It echoes the [`START`] request header (see `pace.lua`) and records
//! how long each request spent inside it, waiting included.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
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
use tokio::sync::oneshot;

/// The header a wrk script stamps on each request (its send time) and the upstream sends back,
/// so that the script can time the admitted responses alone.
pub(crate) const START: HeaderName = HeaderName::from_static("x-loadtest-start");

/// A running upstream.
pub(crate) struct Upstream {
    /// Where it listens (127.0.0.1, a free port).
    pub(crate) addr: SocketAddr,
    stats: Arc<Stats>,
}

/// What the upstream saw, shared with its request handlers.
#[derive(Default)]
struct Stats {
    /// Requests inside now: being served or queued for a worker.
    inside: AtomicUsize,
    /// The most requests inside at once since the last [`Upstream::take_peak`].
    peak: AtomicUsize,
    /// Requests served since the last [`Upstream::take_served`].
    served: AtomicUsize,
    /// The time each request served since the last [`Upstream::take_times`] spent inside.
    /// A `std` mutex: held for a push or a swap, never across an `.await`.
    times: Mutex<Vec<Duration>>,
}

/// Decrements `inside` when a request leaves, however it leaves.
struct Inside<'a>(&'a Stats);

impl<'a> Inside<'a> {
    fn enter(stats: &'a Stats) -> Self {
        let now = stats.inside.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak.fetch_max(now, Ordering::Relaxed);
        Inside(stats)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    /// Binds 127.0.0.1:0, starts `workers` worker threads and the accepting thread.
    pub(crate) fn start(workers: usize, service: Duration) -> Result<Upstream, String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("cannot bind the upstream on 127.0.0.1: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the upstream's address: {e}"))?;
        let (jobs, queue) = mpsc::channel::<oneshot::Sender<()>>();
        // One receiver shared by the workers: whoever holds the lock takes the oldest job, so
        // the queue stays FIFO. The lock is held only while waiting for a job.
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..workers {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("upstream-worker-{i}"))
                .spawn(move || work(&queue, service))
                .map_err(|e| format!("cannot start an upstream worker: {e}"))?;
        }
        let stats = Arc::new(Stats::default());
        let shared = stats.clone();
        std::thread::Builder::new()
            .name("upstream-accept".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the upstream needs a tokio runtime");
                runtime.block_on(serve(listener, jobs, shared));
            })
            .map_err(|e| format!("cannot start the upstream's thread: {e}"))?;
        Ok(Upstream { addr, stats })
    }

    /// Waits until no request is inside the upstream (a load step's leftovers drained), for at
    /// most `limit`. True if it is idle.
    pub(crate) fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.stats.inside.load(Ordering::Relaxed) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// The most requests inside at once since the last call.
    pub(crate) fn take_peak(&self) -> usize {
        self.stats.peak.swap(0, Ordering::Relaxed)
    }

    /// Requests served since the last call.
    pub(crate) fn take_served(&self) -> usize {
        self.stats.served.swap(0, Ordering::Relaxed)
    }

    /// The time each request served since the last call spent inside, in completion order.
    pub(crate) fn take_times(&self) -> Vec<Duration> {
        let mut times = self
            .stats
            .times
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *times)
    }
}

/// One worker: takes the oldest job, holds it for `service`, answers, and so on until the
/// accepting side is gone.
fn work(queue: &Mutex<mpsc::Receiver<oneshot::Sender<()>>>, service: Duration) {
    loop {
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(done) = job else { return };
        std::thread::sleep(service);
        // The request's handler may be gone (its client left); the work was done anyway, as
        // in a real backend that does not notice.
        let _ = done.send(());
    }
}

async fn serve(
    listener: std::net::TcpListener,
    jobs: mpsc::Sender<oneshot::Sender<()>>,
    stats: Arc<Stats>,
) {
    let listener =
        TcpListener::from_std(listener).expect("the upstream's listener must register with tokio");
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
        let (jobs, stats) = (jobs.clone(), stats.clone());
        tokio::spawn(async move {
            let handler = service_fn(move |req: Request<Incoming>| {
                let (jobs, stats) = (jobs.clone(), stats.clone());
                async move { Ok::<_, Infallible>(handle(&req, &jobs, &stats).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), handler)
                .await;
        });
    }
}

async fn handle(
    req: &Request<Incoming>,
    jobs: &mpsc::Sender<oneshot::Sender<()>>,
    stats: &Stats,
) -> Response<Full<Bytes>> {
    let arrived = Instant::now();
    let _inside = Inside::enter(stats);
    let (done, served) = oneshot::channel();
    // The workers outlive the accepting thread, so sending and waiting only fail if a worker
    // panicked; the request then gets a 500, which the benches count as an error.
    if jobs.send(done).is_err() || served.await.is_err() {
        let mut failed = Response::new(Full::new(Bytes::from_static(b"no worker\n")));
        *failed.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        return failed;
    }
    stats.served.fetch_add(1, Ordering::Relaxed);
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
