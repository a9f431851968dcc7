//! The open-loop load generator of the overload bench, written here rather than driving wrk:
//! every request is a critical or a low-priority one, and its latency is judged against the
//! SLO by priority, which is simple with the requests in hand.
//!
//! Open loop: request `i` is due at `i / rate` seconds, whatever happened to the earlier ones —
//! as users or independent producers send, and unlike wrk's closed loop, whose connections stop
//! sending while they wait, so that a proxy that holds requests is offered less load. Each
//! request is `/critical` with probability `critical_share` and `/batch` otherwise, drawn from
//! a seeded generator: every target gets the same sequence.
//!
//! Requests go out over a [`Pool`] of keep-alive connections opened before the load starts
//! (like wrk's, and wrk2's for the same reason: opening thousands of connections in the first
//! second of a 10× step measures the accept loop, not overload handling). A due request waits
//! for a free connection in a FIFO queue; a connection the server closes is opened again.
//!
//! Latency is measured from the time a request was *due*, not from when it went out: waiting
//! for a connection, and a late generator (a stall of the shared machine), show as latency
//! instead of as a gap in the load, the same for every target. A request still waiting for a
//! connection [`DEADLINE`] after it was due is not sent (`Unsent`); a sent one gets at most
//! [`DEADLINE`] from its due time (`Timeout`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest a request may take, from its due time, before it counts as timed out.
pub(crate) const DEADLINE: Duration = Duration::from_secs(2);

/// One step of load.
#[derive(Clone, Debug)]
pub(crate) struct Load {
    /// Requests per second.
    pub(crate) rate: f64,
    /// How long requests are sent.
    pub(crate) duration: Duration,
    /// The share of critical requests, 0..=1.
    pub(crate) critical_share: f64,
    /// Seeds the priority draw.
    pub(crate) seed: u64,
}

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A whole response with this status.
    Status(u16),
    /// No whole response within [`DEADLINE`] of its due time.
    Timeout,
    /// Connection refused or broken, or a malformed response.
    Failed,
    /// No connection was free within [`DEADLINE`]: not sent.
    Unsent,
}

/// One request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    pub(crate) critical: bool,
    pub(crate) answer: Answer,
    /// From the time it was due to its whole response.
    pub(crate) latency: Duration,
}

/// What one step produced.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Every request due, in the order they ended.
    pub(crate) records: Vec<Record>,
    /// How late the generator put requests in the queue (queued − due): p99 and max.
    pub lateness_p99: Duration,
    pub(crate) lateness_max: Duration,
}

/// Keep-alive connections to one target, and the tasks that send over them.
pub(crate) struct Pool {
    jobs: mpsc::UnboundedSender<Job>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    size: usize,
    workers: Vec<JoinHandle<()>>,
}

/// A request to send.
struct Job {
    due: Instant,
    critical: bool,
    records: Arc<Mutex<Vec<Record>>>,
}

/// The paths and `Host` header of the target.
struct Requests {
    addr: SocketAddr,
    host: HeaderValue,
    critical: Uri,
    batch: Uri,
}

/// SplitMix64: a tiny seeded generator, enough to draw priorities.
struct SplitMix(u64);

// === impl Pool ===

impl Pool {
    /// Starts `size` connections to `addr` and waits (at most 10 s) until they are open.
    pub(crate) async fn connect(addr: SocketAddr, size: usize) -> Result<Pool, String> {
        let requests = Arc::new(Requests {
            addr,
            host: HeaderValue::from_str(&addr.to_string())
                .map_err(|e| format!("bad host {addr}: {e}"))?,
            critical: Uri::from_static("/critical"),
            batch: Uri::from_static("/batch"),
        });
        let (jobs, queue) = mpsc::unbounded_channel::<Job>();
        // One receiver shared by the connections: the oldest due request goes out on the first
        // free connection.
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let open = Arc::new(AtomicUsize::new(0));
        let workers = (0..size)
            .map(|_| {
                let (queue, requests, open) = (queue.clone(), requests.clone(), open.clone());
                tokio::spawn(async move { connection(&queue, &requests, &open).await })
            })
            .collect();
        let pool = Pool {
            jobs,
            open,
            size,
            workers,
        };
        pool.wait_open(Duration::from_secs(10)).await?;
        Ok(pool)
    }

    /// Waits until every connection is open (the server may have closed some), at most `limit`.
    pub(crate) async fn wait_open(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while self.open.load(Ordering::Relaxed) < self.size {
            if Instant::now() >= deadline {
                return Err(format!(
                    "only {} of {} connections open after {limit:?}",
                    self.open.load(Ordering::Relaxed),
                    self.size
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Sends `load` and waits for every answer (at most [`DEADLINE`] after the last one was
    /// due, plus a margin for a stalled machine).
    pub(crate) async fn run(&self, load: &Load) -> Result<Outcome, String> {
        let count = (load.rate * load.duration.as_secs_f64()).round() as usize;
        let mut rng = SplitMix(load.seed);
        let records = Arc::new(Mutex::new(Vec::with_capacity(count)));
        let mut lateness = Vec::with_capacity(count);
        let start = Instant::now() + Duration::from_millis(20);
        for i in 0..count {
            let critical = rng.unit() < load.critical_share;
            let due = start + Duration::from_secs_f64(i as f64 / load.rate);
            tokio::time::sleep_until(due).await;
            lateness.push(Instant::now().saturating_duration_since(due));
            let job = Job {
                due,
                critical,
                records: records.clone(),
            };
            self.jobs
                .send(job)
                .map_err(|_| "the connections are gone".to_owned())?;
        }
        let last = start + load.duration;
        let ended = || records.lock().unwrap_or_else(PoisonError::into_inner).len();
        while ended() < count {
            if Instant::now() > last + DEADLINE + Duration::from_secs(3) {
                return Err(format!(
                    "{} requests unanswered after their deadline",
                    count - ended()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lateness.sort_unstable();
        let records = std::mem::take(&mut *records.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(Outcome {
            records,
            lateness_p99: quantile(&lateness, 0.99).unwrap_or_default(),
            lateness_max: lateness.last().copied().unwrap_or_default(),
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.abort();
        }
    }
}

/// One connection: opens it, then sends the queue's requests over it one at a time, opening it
/// again whenever the server closed it.
async fn connection(
    queue: &tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>,
    requests: &Requests,
    open: &AtomicUsize,
) {
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    loop {
        // Open (again) before taking a request, so that a request does not wait for it.
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            close(&mut sender, open);
            match handshake(requests.addr).await {
                Some(s) => {
                    open.fetch_add(1, Ordering::Relaxed);
                    sender = Some(s);
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let Some(job) = queue.lock().await.recv().await else {
            close(&mut sender, open);
            return;
        };
        let answer = if Instant::now() > job.due + DEADLINE {
            Answer::Unsent
        } else {
            let sent = send(&mut sender, requests, open, job.critical);
            match tokio::time::timeout_at(job.due + DEADLINE, sent).await {
                Ok(answer) => answer,
                Err(_) => Answer::Timeout,
            }
        };
        if matches!(answer, Answer::Timeout | Answer::Failed) {
            // A timed-out or broken exchange leaves the connection unusable.
            close(&mut sender, open);
        }
        let record = Record {
            critical: job.critical,
            answer,
            latency: Instant::now().saturating_duration_since(job.due),
        };
        job.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }
}

/// Forgets the connection, if any.
fn close(sender: &mut Option<SendRequest<Empty<Bytes>>>, open: &AtomicUsize) {
    if sender.take().is_some() {
        open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends one request, on a new connection if the server closed this one since its last answer
/// (hyper may learn of a `Connection: close` only when asked for the next request).
async fn send(
    sender: &mut Option<SendRequest<Empty<Bytes>>>,
    requests: &Requests,
    open: &AtomicUsize,
    critical: bool,
) -> Answer {
    let usable = match sender.as_mut() {
        Some(s) => s.ready().await.is_ok(),
        None => false,
    };
    if !usable {
        close(sender, open);
        let Some(s) = handshake(requests.addr).await else {
            return Answer::Failed;
        };
        open.fetch_add(1, Ordering::Relaxed);
        *sender = Some(s);
    }
    let Some(s) = sender.as_mut() else {
        return Answer::Failed;
    };
    let uri = if critical {
        &requests.critical
    } else {
        &requests.batch
    };
    exchange(s, uri, &requests.host).await
}

async fn handshake(addr: SocketAddr) -> Option<SendRequest<Empty<Bytes>>> {
    let tcp = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}

/// One request: its status once the whole body is in.
async fn exchange(sender: &mut SendRequest<Empty<Bytes>>, uri: &Uri, host: &HeaderValue) -> Answer {
    if sender.ready().await.is_err() {
        return Answer::Failed;
    }
    let Ok(request) = Request::get(uri.clone())
        .header(HOST, host.clone())
        .body(Empty::new())
    else {
        return Answer::Failed;
    };
    let Ok(response) = sender.send_request(request).await else {
        return Answer::Failed;
    };
    let status = response.status().as_u16();
    match response.into_body().collect().await {
        Ok(_) => Answer::Status(status),
        Err(_) => Answer::Failed,
    }
}

// === impl SplitMix ===

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// GETs `http://addr/critical` until it answers 200, for at most `limit`. True if it did.
pub(crate) async fn ready(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let Ok(host) = HeaderValue::from_str(&addr.to_string()) else {
        return false;
    };
    while Instant::now() < deadline {
        if let Some(mut sender) = handshake(addr).await {
            let uri = Uri::from_static("/critical");
            let answer =
                tokio::time::timeout(Duration::from_secs(1), exchange(&mut sender, &uri, &host))
                    .await
                    .unwrap_or(Answer::Timeout);
            if answer == Answer::Status(200) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The body of `GET http://addr/path` if it answers 200 within a second.
pub(crate) async fn text(addr: SocketAddr, path: &'static str) -> Option<String> {
    let mut sender = handshake(addr).await?;
    let request = Request::get(path)
        .header(HOST, HeaderValue::from_str(&addr.to_string()).ok()?)
        .body(Empty::new())
        .ok()?;
    let body = tokio::time::timeout(Duration::from_secs(1), async {
        let response = sender.send_request(request).await.ok()?;
        if response.status() != http::StatusCode::OK {
            return None;
        }
        response.into_body().collect().await.ok()
    })
    .await
    .ok()??;
    String::from_utf8(body.to_bytes().to_vec()).ok()
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank; `None` when empty.
pub(crate) fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}
