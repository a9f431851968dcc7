//! A workload for adaptive caps, shared by `tests/it/adaptive.rs` and the adaptive and deferred
//! benches: an
//! upstream that serves `k` requests at once (each takes `service`) and queues the rest inside
//! itself, whose `k` the caller changes mid-run, and answers a few paths at once without work
//! ([`FAST_NOT_FOUND`] …); closed-loop clients that keep it overloaded through sluice; and a
//! trace of the cap in force and of every admitted request's latency.
//!
//! Everything runs on 127.0.0.1 in the calling process. Every wait is bounded: a request
//! longer than [`REQUEST_DEADLINE`] counts as an error, and the clients stop at the end of the
//! last phase.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The longest a client waits for one answer before it counts the request as an error.
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How often the cap in force is sampled.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How often the stall monitor's timer is set.
pub(crate) const MONITOR_EVERY: Duration = Duration::from_millis(5);
/// A path [`Workers`] answers with 404 at once, without a worker.
pub(crate) const FAST_NOT_FOUND: &str = "/fast/404";
/// A path [`Workers`] answers with 503 (no `Retry-After`) at once, without a worker.
pub(crate) const FAST_UNAVAILABLE: &str = "/fast/503";
/// A path [`Workers`] answers with 503 and `Retry-After: 1` at once, without a worker.
pub(crate) const FAST_RETRY_AFTER: &str = "/fast/503-retry-after";

/// An upstream of `k` workers: each request takes a worker for `service`, in arrival order;
/// requests beyond `k` wait inside it (a FIFO semaphore), as a thread pool's queue would.
/// Requests to [`FAST_NOT_FOUND`], [`FAST_UNAVAILABLE`] and [`FAST_RETRY_AFTER`] are answered
/// at once instead, as an application answers a path it does not know or an error it does not
/// work for.
pub(crate) struct Workers {
    pub(crate) addr: SocketAddr,
    /// One permit per worker.
    workers: Arc<Semaphore>,
    /// Workers now (after the last `set`).
    k: AtomicUsize,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

/// What the upstream has seen, shared by its connections.
#[derive(Default)]
struct Counts {
    /// Requests waiting for or holding a worker now, and the most seen.
    inside: AtomicUsize,
    peak_inside: AtomicUsize,
    /// Requests that arrived for a worker, and for an answer at once, since the start.
    worked: AtomicUsize,
    fast: AtomicUsize,
}

impl Workers {
    /// Starts the upstream on 127.0.0.1:0.
    pub(crate) async fn start(k: usize, service: Duration) -> Workers {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Workers::serve(listener, k, service)
    }

    /// Starts the upstream on `addr`, if it is free.
    pub(crate) async fn start_on(
        addr: SocketAddr,
        k: usize,
        service: Duration,
    ) -> std::io::Result<Workers> {
        Ok(Workers::serve(TcpListener::bind(addr).await?, k, service))
    }

    /// Serves `listener` with `k` workers.
    fn serve(listener: TcpListener, k: usize, service: Duration) -> Workers {
        let addr = listener.local_addr().expect("local addr");
        let workers = Arc::new(Semaphore::new(k));
        let counts = Arc::new(Counts::default());
        let (w, c) = (workers.clone(), counts.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (w, c) = (w.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (w, c) = (w.clone(), c.clone());
                        async move {
                            if let Some(res) = fast_answer(req.uri().path()) {
                                c.fast.fetch_add(1, Ordering::SeqCst);
                                return Ok::<_, Infallible>(res);
                            }
                            c.worked.fetch_add(1, Ordering::SeqCst);
                            let now = c.inside.fetch_add(1, Ordering::SeqCst) + 1;
                            c.peak_inside.fetch_max(now, Ordering::SeqCst);
                            // The semaphore is never closed, so acquiring only waits.
                            if let Ok(_worker) = w.acquire().await {
                                tokio::time::sleep(service).await;
                            }
                            c.inside.fetch_sub(1, Ordering::SeqCst);
                            Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Workers {
            addr,
            workers,
            k: AtomicUsize::new(k),
            counts,
            task,
        }
    }

    /// `http://addr`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the number of workers. More take effect at once; fewer as soon as enough
    /// workers are done with what they serve (the requests queued before the change are not
    /// overtaken).
    pub(crate) fn set(&self, k: usize) {
        let was = self.k.swap(k, Ordering::SeqCst);
        if k > was {
            self.workers.add_permits(k - was);
        } else if k < was {
            let workers = self.workers.clone();
            let fewer = u32::try_from(was - k).expect("a test's worker count");
            tokio::spawn(async move {
                if let Ok(taken) = workers.acquire_many_owned(fewer).await {
                    taken.forget();
                }
            });
        }
    }

    /// The most requests that were inside the upstream at once.
    pub(crate) fn peak_inside(&self) -> usize {
        self.counts.peak_inside.load(Ordering::SeqCst)
    }

    /// Requests that have arrived since the start: for a worker, and for an answer at once.
    pub(crate) fn arrived(&self) -> (usize, usize) {
        (
            self.counts.worked.load(Ordering::SeqCst),
            self.counts.fast.load(Ordering::SeqCst),
        )
    }
}

/// The answer to a request for `path` if it is one of the fast paths.
fn fast_answer(path: &str) -> Option<Response<Full<Bytes>>> {
    let (status, retry_after) = match path {
        FAST_NOT_FOUND => (StatusCode::NOT_FOUND, false),
        FAST_UNAVAILABLE => (StatusCode::SERVICE_UNAVAILABLE, false),
        FAST_RETRY_AFTER => (StatusCode::SERVICE_UNAVAILABLE, true),
        _ => return None,
    };
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = status;
    if retry_after {
        res.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    Some(res)
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One phase of a run: this long with this many workers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Phase {
    pub(crate) length: Duration,
    pub(crate) workers: usize,
}

/// The load: how many clients, and how long one waits after a 503 before it tries again (a
/// client that retried at once would only burn the test machine's CPU).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Load {
    pub(crate) clients: usize,
    pub(crate) backoff: Duration,
}

/// What a run saw. Times are since the start of the run.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    /// The cap in force, every [`SAMPLE_EVERY`].
    pub(crate) caps: Vec<(Duration, usize)>,
    /// Every admitted (200) request: when its answer was complete, and how long it took the
    /// client (queueing at sluice included).
    pub(crate) admitted: Vec<(Duration, Duration)>,
    /// When each 503 arrived.
    pub(crate) rejected: Vec<Duration>,
    /// Other statuses, failures and requests over the deadline.
    pub(crate) errors: usize,
    /// When each phase began.
    pub(crate) phase_starts: Vec<Duration>,
    /// How late a timer of this process fired, every [`MONITOR_EVERY`]: when the machine gives
    /// the process too little CPU, everything in it — clients, sluice, the upstream — is late
    /// by about as much, whatever the cap does.
    pub(crate) lateness: Vec<(Duration, Duration)>,
}

/// Runs `phases` against `workers` through the proxy at `url` with `load`, sampling the cap in
/// force with `cap` (e.g. `Runtime::upstream_cap(..).limit()`).
pub(crate) async fn drive(
    url: &str,
    workers: &Workers,
    load: Load,
    phases: &[Phase],
    cap: impl Fn() -> usize,
) -> Trace {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(load.clients)
        .build_http();
    let started = Instant::now();
    let total: Duration = phases.iter().map(|p| p.length).sum();
    let end = started + total;
    let shared = Arc::new(Mutex::new(Trace::default()));
    let clients: Vec<JoinHandle<()>> = (0..load.clients)
        .map(|_| {
            let (client, url, shared) = (client.clone(), url.to_owned(), shared.clone());
            tokio::spawn(async move { client_loop(client, url, started, end, load, shared).await })
        })
        .collect();

    let monitor = tokio::spawn(async move {
        let mut lateness = Vec::new();
        while Instant::now() < end {
            let before = Instant::now();
            tokio::time::sleep(MONITOR_EVERY).await;
            let late = before.elapsed().saturating_sub(MONITOR_EVERY);
            lateness.push((before.duration_since(started), late));
        }
        lateness
    });
    let mut phase_starts = Vec::new();
    let mut caps = Vec::new();
    for phase in phases {
        phase_starts.push(started.elapsed());
        workers.set(phase.workers);
        let phase_end = Instant::now() + phase.length;
        while Instant::now() < phase_end {
            caps.push((started.elapsed(), cap()));
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }
    for client in clients {
        // A client ends within REQUEST_DEADLINE of `end`; a panic in one is the run's failure.
        client.await.expect("client task");
    }
    let mut trace = std::mem::take(&mut *shared.lock().expect("trace lock"));
    trace.lateness = monitor.await.expect("monitor task");
    trace.caps = caps;
    trace.phase_starts = phase_starts;
    trace
}

/// One client: a request, then the next one, until `end`.
async fn client_loop(
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: String,
    started: Instant,
    end: Instant,
    load: Load,
    trace: Arc<Mutex<Trace>>,
) {
    while Instant::now() < end {
        let sent = Instant::now();
        let req = Request::get(&url)
            .body(Empty::new())
            .expect("a valid request");
        let answer = tokio::time::timeout(REQUEST_DEADLINE, async {
            let res = client.request(req).await.ok()?;
            let status = res.status();
            res.into_body().collect().await.ok()?;
            Some(status)
        })
        .await;
        let done = Instant::now();
        let backoff = {
            let mut t = trace.lock().expect("trace lock");
            match answer {
                Ok(Some(StatusCode::OK)) => {
                    t.admitted.push((done - started, done - sent));
                    false
                }
                Ok(Some(StatusCode::SERVICE_UNAVAILABLE)) => {
                    t.rejected.push(done - started);
                    true
                }
                _ => {
                    t.errors += 1;
                    false
                }
            }
        };
        if backoff {
            tokio::time::sleep(load.backoff).await;
        }
    }
}

impl Trace {
    /// The caps sampled in `from..to`, sorted.
    pub(crate) fn caps_in(&self, from: Duration, to: Duration) -> Vec<usize> {
        let mut caps: Vec<usize> = self
            .caps
            .iter()
            .filter(|(t, _)| (from..to).contains(t))
            .map(|&(_, c)| c)
            .collect();
        caps.sort_unstable();
        caps
    }

    /// The latencies of requests admitted (answered) in `from..to`, sorted.
    pub(crate) fn latencies_in(&self, from: Duration, to: Duration) -> Vec<Duration> {
        let mut l: Vec<Duration> = self
            .admitted
            .iter()
            .filter(|(t, _)| (from..to).contains(t))
            .map(|&(_, l)| l)
            .collect();
        l.sort_unstable();
        l
    }

    /// The p90 latency of the requests admitted in each `bucket` of `from..to` (buckets with
    /// no admitted request are left out).
    pub(crate) fn p90s(&self, from: Duration, to: Duration, bucket: Duration) -> Vec<Duration> {
        let mut p90s = Vec::new();
        let mut start = from;
        while start + bucket <= to {
            let latencies = self.latencies_in(start, start + bucket);
            p90s.extend(quantile(&latencies, 0.9));
            start += bucket;
        }
        p90s
    }

    /// The most a timer of the process was late in `from..to` (see [`Trace::lateness`]).
    pub(crate) fn lateness_in(&self, from: Duration, to: Duration) -> Duration {
        self.lateness
            .iter()
            .filter(|(t, _)| (from..to).contains(t))
            .map(|&(_, late)| late)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// The 503s that arrived in `from..to`.
    pub(crate) fn rejected_in(&self, from: Duration, to: Duration) -> usize {
        self.rejected
            .iter()
            .filter(|&&t| (from..to).contains(&t))
            .count()
    }

    /// The first time at or after `from` at which the cap was at most `cap`.
    pub(crate) fn first_at_most(&self, from: Duration, cap: usize) -> Option<Duration> {
        self.caps
            .iter()
            .find(|&&(t, c)| t >= from && c <= cap)
            .map(|&(t, _)| t)
    }
}

/// The `q`-quantile (0..=1) of sorted values; `None` when empty.
pub(crate) fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied()
}
