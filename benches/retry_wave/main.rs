//! The retry wave, with and without `server.retry_after_spread`: `cargo bench --bench
//! retry_wave` (about 30 s once built). Writes `docs/retry-wave.svg` and prints a table
//! (README, docs/reference.md "Retry-After").
//!
//! A route's cap of [`SLOTS`] is taken by requests the upstream holds for [`HOLD`]; then
//! [`CLIENTS`] clients send at the same moment, are all rejected (503, `queue: 0`), each waits
//! exactly the `Retry-After` it was told — as a well-behaved client does — and sends again.
//! What is counted is when those second requests arrive, per 100 ms: once with the spread off,
//! once with the default 0.5. Everything runs in this process on 127.0.0.1.

#[path = "../support/harness.rs"]
mod harness;
#[path = "../support/proxy.rs"]
mod proxy;
#[path = "../support/svg.rs"]
mod svg;
#[path = "../support/timeline.rs"]
mod timeline;

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::Proxy;
use timeline::{Line, Panel};
use tokio::net::TcpListener;

/// Slots of the route's cap, and how long the upstream holds each request.
const SLOTS: usize = 20;
const HOLD: Duration = Duration::from_secs(12);
/// Clients rejected at once.
const CLIENTS: usize = 500;
/// The cap's `queue_timeout`: the `Retry-After` of a cap that has not drained anything yet.
const QUEUE_TIMEOUT_SECS: u64 = 4;
/// The width of a bucket of the count, and how long after the rejection it is counted.
const BUCKET: Duration = Duration::from_millis(100);
const WINDOW: Duration = Duration::from_secs(8);
/// Where the figure goes, relative to Cargo.toml.
const FIGURE: &str = "docs/retry-wave.svg";

/// The two runs.
const SPREADS: [(&str, f64); 2] = [("spread off (0)", 0.0), ("spread 0.5 (default)", 0.5)];

fn main() -> ExitCode {
    if !harness::benched("retry_wave", "") {
        return ExitCode::SUCCESS;
    }
    let runtime = match harness::runtime(2) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("retry_wave: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut runs = Vec::new();
    for (name, spread) in SPREADS {
        eprintln!("retry_wave: {name}");
        match runtime.block_on(run(spread)) {
            Ok(returns) => runs.push((name, returns)),
            Err(e) => {
                eprintln!("retry_wave: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    print_table(&runs);
    let path = harness::in_repo(FIGURE);
    if let Err(e) = harness::write(&path, &figure(&runs)) {
        eprintln!("retry_wave: {e}");
        return ExitCode::FAILURE;
    }
    println!("retry_wave: wrote {}", path.display());
    ExitCode::SUCCESS
}

/// An upstream that holds every request for [`HOLD`].
async fn holding_upstream() -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("{e}"))?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    tokio::time::sleep(HOLD).await;
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}

/// One run: when (since the mass rejection) each rejected client came back.
async fn run(spread: f64) -> Result<Vec<Duration>, String> {
    let upstream = holding_upstream().await?;
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0, retry_after_spread: {spread} }}\n\
         upstreams: {{ api: {{ endpoints: ['{upstream}'], timeout: 30s }} }}\n\
         routes: [{{ name: all, upstream: api, concurrency: \
         {{ max_inflight: {SLOTS}, queue: 0, queue_timeout: {QUEUE_TIMEOUT_SECS}s }} }}]\n"
    );
    let proxy = Proxy::from_yaml(&yaml, "retry_wave.yaml").await?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CLIENTS + SLOTS)
        .build_http();
    let uri: http::Uri = proxy.url("/").parse().map_err(|e| format!("{e}"))?;
    for _ in 0..SLOTS {
        let (client, uri) = (client.clone(), uri.clone());
        tokio::spawn(async move { client.get(uri).await });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rejected_at = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, uri) = (client.clone(), uri.clone());
            tokio::spawn(async move { come_back(client, uri, rejected_at).await })
        })
        .collect();
    let mut returns = Vec::new();
    for c in clients {
        if let Ok(Some(at)) = c.await {
            returns.push(at);
        }
    }
    proxy.stop().await;
    if returns.len() < CLIENTS * 9 / 10 {
        return Err(format!(
            "only {} of {CLIENTS} clients were rejected and came back",
            returns.len()
        ));
    }
    Ok(returns)
}

/// Sends once; on a 503 waits its `Retry-After` and says when it would send again.
async fn come_back(
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    uri: http::Uri,
    rejected_at: Instant,
) -> Option<Duration> {
    let res = client.get(uri).await.ok()?;
    let secs: u64 = res
        .headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let _ = res.into_body().collect().await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    Some(rejected_at.elapsed())
}

/// Returns per [`BUCKET`] over [`WINDOW`].
fn per_bucket(returns: &[Duration]) -> Vec<usize> {
    let n = (WINDOW.as_millis() / BUCKET.as_millis()) as usize;
    let mut counts = vec![0; n];
    for at in returns {
        let i = (at.as_millis() / BUCKET.as_millis()) as usize;
        if let Some(c) = counts.get_mut(i) {
            *c += 1;
        }
    }
    counts
}

/// Per run: the busiest 100 ms, and how many came back in each whole second.
fn print_table(runs: &[(&str, Vec<Duration>)]) {
    println!("| run | clients back | busiest 100 ms | back in second 4 / 5 / 6 / 7 |");
    println!("|---|---|---|---|");
    for (name, returns) in runs {
        let busiest = per_bucket(returns).into_iter().max().unwrap_or(0);
        let in_second = |s: u64| {
            returns
                .iter()
                .filter(|d| d.as_secs() == s)
                .count()
                .to_string()
        };
        println!(
            "| {name} | {} | {busiest} | {} |",
            returns.len(),
            [4, 5, 6, 7].map(in_second).join(" / ")
        );
    }
}

/// One panel: requests per 100 ms after the mass rejection, a line per run.
fn figure(runs: &[(&str, Vec<Duration>)]) -> String {
    const COLORS: [&str; 2] = ["#d62728", "#1f77b4"];
    let lines = runs
        .iter()
        .zip(COLORS)
        .map(|((name, returns), color)| Line {
            label: (*name).to_owned(),
            color,
            dash: "none",
            width: 2.0,
            points: per_bucket(returns)
                .into_iter()
                .enumerate()
                .map(|(i, n)| ((BUCKET * i as u32).as_secs_f64(), n as f64))
                .collect(),
        })
        .collect();
    timeline::render(
        "The retry wave: rejected clients coming back, with and without the spread",
        &[
            format!(
                "{CLIENTS} clients rejected at once (503, a full cap with no queue: Retry-After {QUEUE_TIMEOUT_SECS} s), each waiting exactly what it was told."
            ),
            format!(
                "sluice ({} build), server.retry_after_spread 0 vs 0.5. benches/retry_wave",
                if cfg!(debug_assertions) { "debug" } else { "release" }
            ),
        ],
        "seconds after the rejection",
        WINDOW.as_secs_f64(),
        &[Panel {
            title: format!("Requests coming back per {} ms", BUCKET.as_millis()),
            y_label: "requests".into(),
            lines,
        }],
    )
}
