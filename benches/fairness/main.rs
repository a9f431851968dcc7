//! A light tenant's latency while a heavy tenant floods, with and without `fair_by`: `cargo
//! bench --bench fairness` (about 30 s once built). Prints a table (docs/benchmarks.md §12).
//!
//! The upstream serves [`WORKERS`] requests at once, [`SERVICE`] each (`capacity.rs`). The route
//! caps it at the same, with a queue of [`QUEUE`]. The heavy tenant runs [`HEAVY_CLIENTS`]
//! closed-loop clients (a 503 makes one wait 50 ms), enough to keep the queue full; the light
//! tenant sends [`LIGHT_RATE`] requests a second, open loop, for [`RUN`]. Both name themselves
//! in `X-Tenant`. Everything runs in this process on 127.0.0.1.

#[path = "../support/capacity.rs"]
mod capacity;
#[path = "../support/harness.rs"]
mod harness;
#[path = "../support/proxy.rs"]
mod proxy;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use capacity::{quantile, Workers};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proxy::Proxy;

const WORKERS: usize = 4;
const SERVICE: Duration = Duration::from_millis(20);
const QUEUE: usize = 200;
const HEAVY_CLIENTS: usize = 64;
const LIGHT_RATE: f64 = 5.0;
const RUN: Duration = Duration::from_secs(12);

/// What one tenant saw: every answer's status and time.
#[derive(Default)]
struct Seen {
    ok: Vec<Duration>,
    rejected: usize,
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn main() -> ExitCode {
    if !harness::benched("fairness", "") {
        return ExitCode::SUCCESS;
    }
    let runtime = match harness::runtime(2) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fairness: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("| queue | light tenant: answered 200 / 503 | light p50 / p99 | heavy tenant: 200/s | heavy p50 / p99 |");
    println!("|---|---|---|---|---|");
    for (name, fair) in [
        ("arrival order", ""),
        ("fair_by: header:X-Tenant", ", fair_by: 'header:X-Tenant'"),
    ] {
        eprintln!("fairness: {name}");
        match runtime.block_on(run(fair)) {
            Ok((light, heavy)) => print_row(name, &light, &heavy),
            Err(e) => {
                eprintln!("fairness: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// One run with `fair` added to the route's cap: what the light and the heavy tenant saw.
async fn run(fair: &str) -> Result<(Seen, Seen), String> {
    let workers = Workers::start(WORKERS, SERVICE).await;
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         upstreams: {{ api: {{ endpoints: ['{}'] }} }}\n\
         routes: [{{ name: all, upstream: api, concurrency: \
         {{ max_inflight: {WORKERS}, queue: {QUEUE}, queue_timeout: 10s {fair} }} }}]\n",
        workers.endpoint()
    );
    let proxy = Proxy::from_yaml(&yaml, "fairness.yaml").await?;
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(HEAVY_CLIENTS * 2)
        .build_http();
    let url = proxy.url("/");
    let started = Instant::now();
    let heavy = Arc::new(Mutex::new(Seen::default()));
    let flood: Vec<_> = (0..HEAVY_CLIENTS)
        .map(|_| {
            let (client, url, heavy) = (client.clone(), url.clone(), heavy.clone());
            tokio::spawn(async move {
                while started.elapsed() < RUN {
                    let ok = one(&client, &url, "heavy", &heavy).await;
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    // The flood fills the queue first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let light = Arc::new(Mutex::new(Seen::default()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / LIGHT_RATE));
    let mut sent = Vec::new();
    while started.elapsed() < RUN - Duration::from_secs(1) {
        tick.tick().await;
        let (client, url, light) = (client.clone(), url.clone(), light.clone());
        sent.push(tokio::spawn(async move {
            one(&client, &url, "light", &light).await;
        }));
    }
    for task in sent.into_iter().chain(flood) {
        let _ = task.await;
    }
    proxy.stop().await;
    let take = |seen: Arc<Mutex<Seen>>| {
        std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()))
    };
    Ok((take(light), take(heavy)))
}

/// One GET as `tenant`, recorded in `seen`; true when it was answered 200.
async fn one(client: &HttpClient, url: &str, tenant: &'static str, seen: &Mutex<Seen>) -> bool {
    let Ok(req) = http::Request::get(url)
        .header("x-tenant", tenant)
        .body(Empty::new())
    else {
        return false;
    };
    let start = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(15), client.request(req)).await;
    let status = match answer {
        Ok(Ok(res)) => {
            let status = res.status();
            let _ = res.into_body().collect().await;
            Some(status)
        }
        _ => None,
    };
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    match status {
        Some(s) if s.is_success() => {
            seen.ok.push(start.elapsed());
            true
        }
        _ => {
            seen.rejected += 1;
            false
        }
    }
}

fn print_row(name: &str, light: &Seen, heavy: &Seen) {
    let ms = |seen: &Seen, q| {
        let mut ok = seen.ok.clone();
        ok.sort_unstable();
        quantile(&ok, q).map_or(f64::NAN, |d: Duration| d.as_secs_f64() * 1e3)
    };
    println!(
        "| {name} | {} / {} | {:.0} / {:.0} ms | {:.0} | {:.0} / {:.0} ms |",
        light.ok.len(),
        light.rejected,
        ms(light, 0.5),
        ms(light, 0.99),
        heavy.ok.len() as f64 / RUN.as_secs_f64(),
        ms(heavy, 0.5),
        ms(heavy, 0.99),
    );
}
