//! A sample upstream of limited capacity for `benches/caps.sh`: `workers` requests are worked on
//! at once, each for `service` ms; the rest wait inside it, first come first served (a backend's
//! thread pool). Without a cap in front, its latency grows with the load; with sluice's cap in
//! front, no request waits inside it.
//!
//! Not a benchmark: a server the script starts and stops (`harness = false`; `cargo bench
//! --bench slow_upstream --no-run` builds it, caps.sh runs the executable).
//!
//! ```text
//! slow_upstream [--listen 127.0.0.1:18190] [--workers 8] [--service-ms 20] [--max-seconds 600]
//! ```
//!
//! - Any path but `/__stats`: 200 `ok` after the service time; the `X-Bench-Start` request header
//!   is echoed, so a wrk script can time each 2xx response on its own (benches/status_latency.lua).
//! - `GET /__stats`: one JSON line about the requests finished since the last `/__stats`:
//!   `{"n":…,"p50_us":…,"p90_us":…,"p99_us":…,"max_us":…,"max_inside":…}`; the times are from the
//!   request head's arrival to the response (waiting for a worker included), `max_inside` the most
//!   requests inside at once (working or waiting). Then resets.
//! - Exits by itself after `--max-seconds`, so a script that dies cannot leave it running.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const START: HeaderName = HeaderName::from_static("x-bench-start");

#[derive(Default)]
struct Stats {
    inside: AtomicUsize,
    max_inside: AtomicUsize,
    /// Time inside of each request finished since the last `/__stats`, µs.
    times: Mutex<Vec<u64>>,
}

struct Args {
    listen: SocketAddr,
    workers: usize,
    service: Duration,
    max_seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        listen: "127.0.0.1:18190".parse().unwrap(),
        workers: 8,
        service: Duration::from_millis(20),
        max_seconds: 600,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => a.listen = value().parse().expect("--listen IP:PORT"),
            "--workers" => a.workers = value().parse().expect("--workers N"),
            "--service-ms" => {
                a.service = Duration::from_millis(value().parse().expect("--service-ms N"))
            }
            "--max-seconds" => a.max_seconds = value().parse().expect("--max-seconds N"),
            "--bench" => {} // added by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * p / 100.0).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn stats_json(stats: &Stats) -> String {
    let mut times =
        std::mem::take(&mut *stats.times.lock().unwrap_or_else(PoisonError::into_inner));
    times.sort_unstable();
    let max_inside = stats
        .max_inside
        .swap(stats.inside.load(Ordering::Relaxed), Ordering::Relaxed);
    format!(
        "{{\"n\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{},\"max_inside\":{}}}\n",
        times.len(),
        percentile(&times, 50.0),
        percentile(&times, 90.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or(0),
        max_inside
    )
}

async fn serve(
    req: Request<Incoming>,
    workers: Arc<Semaphore>,
    service: Duration,
    stats: Arc<Stats>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/__stats" {
        return Ok(Response::new(Full::new(Bytes::from(stats_json(&stats)))));
    }
    let arrived = Instant::now();
    let now_inside = stats.inside.fetch_add(1, Ordering::Relaxed) + 1;
    stats.max_inside.fetch_max(now_inside, Ordering::Relaxed);
    // Leaves `inside` even if the client goes away while this request waits or works.
    struct Leave<'a>(&'a AtomicUsize);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _leave = Leave(&stats.inside);
    {
        let _worker = workers.acquire().await.expect("never closed");
        tokio::time::sleep(service).await;
    }
    let mut res = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    *res.status_mut() = StatusCode::OK;
    if let Some(start) = req.headers().get(START) {
        res.headers_mut().insert(START, start.clone());
    }
    let took = arrived.elapsed().as_micros() as u64;
    stats
        .times
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(took);
    Ok(res)
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .unwrap_or_else(|e| panic!("bind {}: {e}", args.listen));
        eprintln!(
            "slow_upstream on {}: {} workers x {} ms ({:.0} req/s at most), exits after {} s",
            args.listen,
            args.workers,
            args.service.as_millis(),
            args.workers as f64 / args.service.as_secs_f64(),
            args.max_seconds
        );
        let workers = Arc::new(Semaphore::new(args.workers));
        let stats = Arc::new(Stats::default());
        let deadline = tokio::time::sleep(Duration::from_secs(args.max_seconds));
        tokio::pin!(deadline);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        eprintln!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = &mut deadline => {
                    eprintln!("slow_upstream: --max-seconds reached, exiting");
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            let (workers, stats) = (workers.clone(), stats.clone());
            let service = args.service;
            tokio::spawn(async move {
                let svc =
                    service_fn(move |req| serve(req, workers.clone(), service, stats.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
