//! The fleet growing under load — the scaling loop's last step, measured: `cargo bench --bench
//! fleet` (about a minute once built). Needs root: it gives a name of its own addresses in
//! `/etc/hosts` and removes its lines at the end. Writes `docs/fleet-scaling.svg` and prints a
//! table (docs/loadtest.md, "The fleet growing under load").
//!
//! Six "pods" listen on 127.0.0.2 … .7 with one port, each [`WORKERS`] workers × [`SERVICE`]
//! (100 req/s), queueing the rest inside themselves (`benches/support/capacity.rs`). The name
//! stands for the first two, then one more every [`STEP`], up to six. An open-loop load of
//! [`RATE`] req/s — what 4.5 pods serve — goes through sluice, whose upstream is that name with
//! `per_endpoint: 4` (the pods' own concurrency), a 512-deep queue and `resolve_interval: 1s`.
//! A request is *lost* when its answer is neither 200 nor sluice's own 503 (the backpressure it
//! is there to give while the fleet is too small): the target is 0.

#[path = "../support/capacity.rs"]
mod capacity;
#[path = "../support/harness.rs"]
mod harness;
#[path = "../../tests/it/support/hosts.rs"]
mod hosts;
#[path = "../support/proxy.rs"]
mod proxy;
#[path = "../support/svg.rs"]
mod svg;
#[path = "../support/timeline.rs"]
mod timeline;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use capacity::{quantile, Workers, REQUEST_DEADLINE};
use hosts::Hosts;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proxy::Proxy;
use timeline::{Line, Panel};
use tokio::sync::mpsc;

/// Workers per pod, and the time each request takes one.
const WORKERS: usize = 4;
const SERVICE: Duration = Duration::from_millis(40);
/// The pods there are, and how many the name stands for at the start.
const PODS: usize = 6;
const FIRST: usize = 2;
/// How long the name keeps each size (the last, six pods, three times as long: the queue drains).
const STEP: Duration = Duration::from_secs(8);
/// Offered load, requests per second (4.5 pods' worth).
const RATE: f64 = 450.0;
/// How often the cap and the queue are sampled; the width of a p99 bucket.
const SAMPLE: Duration = Duration::from_millis(250);
const BUCKET: Duration = Duration::from_secs(1);
/// Where the figure goes, relative to Cargo.toml.
const FIGURE: &str = "docs/fleet-scaling.svg";

/// One request's fate.
struct Outcome {
    /// When it was sent and how long its answer took, from the start of the run.
    sent: Duration,
    took: Duration,
    /// The status, `None` for a failure or a request over [`REQUEST_DEADLINE`].
    status: Option<u16>,
}

/// What sluice's upstream cap looked like at one moment.
struct Sample {
    at: Duration,
    limit: usize,
    queued: usize,
}

/// A whole run.
struct Run {
    outcomes: Vec<Outcome>,
    samples: Vec<Sample>,
    /// When the name grew to 3, 4, … pods.
    grew: Vec<Duration>,
}

fn main() -> ExitCode {
    if !harness::benched("fleet", " (as root: it edits /etc/hosts)") {
        return ExitCode::SUCCESS;
    }
    let result = harness::runtime(2).and_then(|runtime| runtime.block_on(run()));
    let run = match result {
        Ok(run) => run,
        Err(e) => {
            eprintln!("fleet: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_table(&run);
    let path = harness::in_repo(FIGURE);
    if let Err(e) = harness::write(&path, &figure(&run)) {
        eprintln!("fleet: {e}");
        return ExitCode::FAILURE;
    }
    println!("fleet: wrote {}", path.display());
    ExitCode::SUCCESS
}

/// The run's length: a [`STEP`] per size, the last three.
fn total() -> Duration {
    STEP * (PODS - FIRST + 3) as u32
}

fn ip(i: usize) -> String {
    format!("127.0.0.{}", i + 2)
}

/// Six pods on one port (tries ports until one is free on all six addresses).
async fn pods() -> Result<Vec<Workers>, String> {
    'port: for _ in 0..50 {
        let first = Workers::start_on(addr(0, 0)?, WORKERS, SERVICE)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", ip(0)))?;
        let port = first.addr.port();
        let mut pods = vec![first];
        for i in 1..PODS {
            match Workers::start_on(addr(i, port)?, WORKERS, SERVICE).await {
                Ok(pod) => pods.push(pod),
                Err(_) => continue 'port,
            }
        }
        return Ok(pods);
    }
    Err("no port free on 127.0.0.2 … .7".into())
}

fn addr(i: usize, port: u16) -> Result<SocketAddr, String> {
    format!("{}:{port}", ip(i))
        .parse()
        .map_err(|e| format!("{e}"))
}

async fn run() -> Result<Run, String> {
    let pods = pods().await?;
    let ips: Vec<String> = (0..PODS).map(ip).collect();
    let names: Vec<&str> = ips.iter().map(String::as_str).collect();
    let hosts = Hosts::new("bench", &names[..FIRST]);
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         upstreams:\n  api:\n    endpoints: ['http://{}:{}']\n    resolve_interval: 1s\n    \
         concurrency: {{ per_endpoint: {WORKERS}, queue: 512, queue_timeout: 3s }}\n\
         routes: [{{ name: all, upstream: api }}]\n",
        hosts.name,
        pods[0].addr.port()
    );
    let proxy = Proxy::from_yaml(&yaml, "fleet.yaml").await?;
    let started = Instant::now();
    let load = tokio::spawn(offer(proxy.url("/"), started));
    let sampler = tokio::spawn(sample(proxy.shared.clone(), started));
    let mut grew = Vec::new();
    for n in FIRST + 1..=PODS {
        tokio::time::sleep_until((started + STEP * (n - FIRST) as u32).into()).await;
        hosts.set(&names[..n]);
        grew.push(started.elapsed());
        eprintln!(
            "fleet: {n} pods at {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let outcomes = load.await.map_err(|e| format!("load: {e}"))?;
    let samples = sampler.await.map_err(|e| format!("sampler: {e}"))?;
    proxy.stop().await;
    drop(hosts);
    Ok(Run {
        outcomes,
        samples,
        grew,
    })
}

/// Sends [`RATE`] requests a second to `url` until the run ends, whatever the answers take;
/// every request's fate once all are answered.
async fn offer(url: String, started: Instant) -> Vec<Outcome> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(2048)
        .build_http();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while started.elapsed() < total() {
        tick.tick().await;
        let (client, tx) = (client.clone(), tx.clone());
        let Ok(uri) = url.parse::<http::Uri>() else {
            break;
        };
        tokio::spawn(async move {
            let sent = started.elapsed();
            let answer = tokio::time::timeout(REQUEST_DEADLINE, client.get(uri)).await;
            let status = match answer {
                Ok(Ok(res)) => Some(res.status().as_u16()),
                _ => None,
            };
            let took = started.elapsed() - sent;
            let _ = tx.send(Outcome { sent, took, status });
        });
    }
    drop(tx);
    let mut outcomes = Vec::new();
    while let Some(outcome) = rx.recv().await {
        outcomes.push(outcome);
    }
    outcomes.sort_by_key(|o| o.sent);
    outcomes
}

/// The upstream cap's limit and queue depth every [`SAMPLE`] until the run ends.
async fn sample(shared: Arc<sluice::runtime::Shared>, started: Instant) -> Vec<Sample> {
    let mut samples = Vec::new();
    while started.elapsed() < total() {
        if let Some(cap) = shared.runtime().upstream_cap("api") {
            samples.push(Sample {
                at: started.elapsed(),
                limit: cap.limit(),
                queued: cap.queue_depth(),
            });
        }
        tokio::time::sleep(SAMPLE).await;
    }
    samples
}

/// One row per fleet size: the cap, the queue, admitted latency, sluice's 503s and lost
/// requests, by when requests were sent.
fn print_table(run: &Run) {
    println!("| pods | from (s) | cap (median) | queue depth median / max | admitted p50 / p99 | 503/s | lost |");
    println!("|---|---|---|---|---|---|---|");
    let mut starts = vec![Duration::ZERO];
    starts.extend(&run.grew);
    for (i, &from) in starts.iter().enumerate() {
        let to = starts.get(i + 1).copied().unwrap_or_else(total);
        let samples: Vec<&Sample> = run
            .samples
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .collect();
        let mut caps: Vec<usize> = samples.iter().map(|s| s.limit).collect();
        let mut queued: Vec<usize> = samples.iter().map(|s| s.queued).collect();
        caps.sort_unstable();
        queued.sort_unstable();
        let sent: Vec<&Outcome> = run
            .outcomes
            .iter()
            .filter(|o| o.sent >= from && o.sent < to)
            .collect();
        let mut admitted: Vec<Duration> = sent
            .iter()
            .filter(|o| o.status == Some(200))
            .map(|o| o.took)
            .collect();
        admitted.sort_unstable();
        let rejected = sent.iter().filter(|o| o.status == Some(503)).count();
        let ms = |q| quantile(&admitted, q).map_or(f64::NAN, |d: Duration| d.as_secs_f64() * 1e3);
        println!(
            "| {} | {:.1} | {} | {} / {} | {:.0} / {:.0} ms | {:.0} | {} |",
            FIRST + i,
            from.as_secs_f64(),
            quantile(&caps, 0.5).unwrap_or(0),
            quantile(&queued, 0.5).unwrap_or(0),
            queued.last().copied().unwrap_or(0),
            ms(0.5),
            ms(0.99),
            rejected as f64 / (to - from).as_secs_f64(),
            lost(&sent),
        );
    }
    let all: Vec<&Outcome> = run.outcomes.iter().collect();
    println!(
        "fleet: {} requests sent, {} lost (neither 200 nor sluice's 503)",
        all.len(),
        lost(&all)
    );
}

fn lost(outcomes: &[&Outcome]) -> usize {
    outcomes
        .iter()
        .filter(|o| !matches!(o.status, Some(200 | 503)))
        .count()
}

/// Three panels on one time axis: the cap in force and the cap the load needs; the queue
/// depth; the admitted p99 per second.
fn figure(run: &Run) -> String {
    let secs = |d: Duration| d.as_secs_f64();
    let end = secs(total());
    let needed = RATE * secs(SERVICE);
    let cap = vec![
        Line {
            label: "cap in force (4 × endpoints)".into(),
            color: "#1f77b4",
            dash: "none",
            width: 2.0,
            points: run
                .samples
                .iter()
                .map(|s| (secs(s.at), s.limit as f64))
                .collect(),
        },
        Line {
            label: format!(
                "in flight the load needs ({RATE} req/s × {} ms)",
                SERVICE.as_millis()
            ),
            color: "#777",
            dash: "5 4",
            width: 1.5,
            points: vec![(0.0, needed), (end, needed)],
        },
    ];
    let queue = vec![Line {
        label: "queue depth".into(),
        color: "#d62728",
        dash: "none",
        width: 2.0,
        points: run
            .samples
            .iter()
            .map(|s| (secs(s.at), s.queued as f64))
            .collect(),
    }];
    let p99 = vec![Line {
        label: "admitted p99 (by send time)".into(),
        color: "#2ca02c",
        dash: "none",
        width: 2.0,
        points: p99_per_bucket(run),
    }];
    let growth: Vec<String> = run
        .grew
        .iter()
        .map(|t| format!("{:.0}", secs(*t)))
        .collect();
    timeline::render(
        "The fleet growing under load: 2 → 6 pods, a load that needs 4.5",
        &[
            format!(
                "Pods: {WORKERS} workers × {} ms (100 req/s each). Open-loop {RATE} req/s. Pods: 2, one more at {} s.",
                SERVICE.as_millis(),
                growth.join(", ")
            ),
            format!(
                "sluice ({} build): per_endpoint {WORKERS}, queue 512, queue_timeout 3s, resolve_interval 1s. benches/fleet",
                if cfg!(debug_assertions) { "debug" } else { "release" }
            ),
        ],
        "time (s)",
        end,
        &[
            Panel {
                title: "Upstream cap (sluice_concurrency_limit)".into(),
                y_label: "requests in flight".into(),
                lines: cap,
            },
            Panel {
                title: "Queue depth (sluice_queue_depth)".into(),
                y_label: "requests waiting".into(),
                lines: queue,
            },
            Panel {
                title: format!("Admitted requests: p99 latency per {} s", BUCKET.as_secs()),
                y_label: "p99 (ms)".into(),
                lines: p99,
            },
        ],
    )
}

/// (bucket middle in s, p99 in ms) of the admitted requests sent in each bucket.
fn p99_per_bucket(run: &Run) -> Vec<(f64, f64)> {
    let buckets = (total().as_secs_f64() / BUCKET.as_secs_f64()).ceil() as usize;
    (0..buckets)
        .filter_map(|i| {
            let (from, to) = (BUCKET * i as u32, BUCKET * (i as u32 + 1));
            let mut took: Vec<Duration> = run
                .outcomes
                .iter()
                .filter(|o| o.sent >= from && o.sent < to && o.status == Some(200))
                .map(|o| o.took)
                .collect();
            took.sort_unstable();
            let p99 = quantile(&took, 0.99)?;
            Some(((from + BUCKET / 2).as_secs_f64(), p99.as_secs_f64() * 1e3))
        })
        .collect()
}
