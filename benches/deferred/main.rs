//! Deferred delivery under load: `cargo bench --bench deferred` (about 2 minutes once built;
//! needs `redis-server` and `wrk` on the PATH). Prints Markdown tables and writes
//! `docs/deferred-spike.svg`; docs/loadtest.md ("Deferred delivery") has a run's results.
//!
//! Everything runs on 127.0.0.1: a redis-server child process (restarted per persistence
//! setting), sluice in this process (`App::bind`, on this process's 2-thread runtime), the
//! upstreams written here, and wrk as a child process.
//!
//! 1. **Accept rate**: wrk POSTs 100-byte bodies to a `when: always` route for 8 s (2 threads,
//!    32 connections), for each Redis persistence setting (none, `appendfsync everysec`,
//!    `appendfsync always`). The route's upstream never answers, so its deliverers are stuck and
//!    the run measures accepting alone.
//! 2. **Delivery rate**: the backlog left by step 1 (no persistence) is drained by a fresh
//!    sluice whose upstream answers at once: tasks delivered per second, with 8 deliverers (no
//!    cap) and with 32 (an upstream cap of 32).
//! 3. **Latency of a 202 vs a forwarded request**: wrk with one connection, 5 s each, POSTing to
//!    a route that forwards and to one that defers (`when: always`; its deliveries run at the
//!    same time), both to the same upstream answering at once.
//! 4. **The spike**: an upstream of capacity 800/s (8 workers × 10 ms), a `when: overflow` route
//!    behind an upstream cap of 8 with a queue of 16; an open-loop producer sends 300/s, then 2,000/s for 3 s, then
//!    300/s again. Sampled every 100 ms: offered, forwarded (200), deferred (202) and delivered
//!    per second, and tasks queued in Redis. Written to `docs/deferred-spike.svg`.
//! 5. **Big bodies**: the latency of a 202 by body size, and of global limit checks while
//!    8 MiB bodies are stored (see `bodies`; `DEFERRED_ONLY=bodies` runs it alone).

mod bodies;
#[path = "../support/capacity.rs"]
mod capacity;
#[path = "../support/harness.rs"]
mod harness;
#[path = "../support/proxy.rs"]
mod proxy;
#[path = "../support/svg.rs"]
mod svg;
#[path = "../support/timeline.rs"]
mod timeline;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use proxy::Proxy;
use timeline::{Line, Panel};
use tokio::net::TcpListener;

/// Where the figure goes, relative to Cargo.toml.
const FIGURE: &str = "docs/deferred-spike.svg";
/// The body every producer sends: 100 bytes.
const BODY: &str = "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";
/// The spike: (from s, to s, offered per s).
const SPIKE: [(f64, f64, u64); 3] = [(0.0, 1.0, 300), (1.0, 4.0, 2000), (4.0, 14.0, 300)];
/// Sampling period of the spike figure.
const SAMPLE: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    if !harness::benched("deferred", "") {
        return ExitCode::SUCCESS;
    }
    let runtime = match harness::runtime(2) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("deferred: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deferred: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let script = std::env::temp_dir().join(format!("sluice-deferred-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!("wrk.method = \"POST\"\nwrk.body = \"{BODY}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"),
    )
    .map_err(|e| format!("cannot write the wrk script: {e}"))?;
    let fast = Counting::start(Duration::ZERO).await;
    if std::env::var("DEFERRED_ONLY").as_deref() == Ok("bodies") {
        return bodies::run(&fast).await;
    }

    // 1. Accept rate, per persistence setting.
    println!("| Redis persistence | 202/s | p50 | p99 | non-202 |\n|---|---:|---:|---:|---:|");
    let settings: [(&str, &[&str]); 3] = [
        ("none (no RDB, no AOF)", &["--appendonly", "no"]),
        (
            "appendonly, appendfsync everysec",
            &["--appendonly", "yes", "--appendfsync", "everysec"],
        ),
        (
            "appendonly, appendfsync always",
            &["--appendonly", "yes", "--appendfsync", "always"],
        ),
    ];
    let mut backlog_redis = None;
    for (i, (name, args)) in settings.iter().enumerate() {
        let redis = RedisProc::start(args).await?;
        let (silent, _held) = silent().await;
        let yaml = config(
            &redis.url(),
            &format!("http://{silent}"),
            ", timeout: 1s",
            "",
        );
        let proxy = Proxy::from_yaml(&yaml, "deferred.yaml").await?;
        let wrk = wrk(&script, 2, 32, 8, &proxy.url("/hooks/e"))?;
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {} |",
            wrk.rate, wrk.p50_ms, wrk.p99_ms, wrk.non_2xx
        );
        proxy.stop().await;
        if i == 0 {
            backlog_redis = Some(redis);
        }
    }
    let redis = backlog_redis.ok_or("no backlog")?;

    // 2. Delivery rate, draining the backlog.
    println!("\n| deliverers | backlog | delivered/s |\n|---:|---:|---:|");
    for (deliverers, cap) in [(8, ""), (32, ", concurrency: {max_inflight: 32}")] {
        let backlog = queued(&redis).await?;
        let before = fast.deliveries();
        let yaml = config(&redis.url(), &fast.endpoint(), cap, "");
        let started = Instant::now();
        let proxy = Proxy::from_yaml(&yaml, "deferred.yaml").await?;
        // Until the backlog is gone, or 8 s.
        while started.elapsed() < Duration::from_secs(8) && queued(&redis).await? > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let delivered = fast.deliveries() - before;
        let took = started.elapsed().as_secs_f64();
        proxy.stop().await;
        println!(
            "| {deliverers} | {backlog} | {:.0} ({delivered} in {took:.1} s) |",
            delivered as f64 / took
        );
    }

    // 3. Latency of a 202 vs a forwarded request.
    let idle = RedisProc::start(&["--appendonly", "no"]).await?;
    let yaml = config(&idle.url(), &fast.endpoint(), "", "");
    let proxy = Proxy::from_yaml(&yaml, "deferred.yaml").await?;
    println!("\n| route | answer | req/s (1 connection) | p50 | p90 | p99 |\n|---|---|---:|---:|---:|---:|");
    for (route, answer) in [("/fwd/e", "forwarded 200"), ("/hooks/e", "202 Accepted")] {
        let wrk = wrk(&script, 1, 1, 5, &proxy.url(route))?;
        println!(
            "| {route} | {answer} | {:.0} | {:.3} ms | {:.3} ms | {:.3} ms |",
            wrk.rate, wrk.p50_ms, wrk.p90_ms, wrk.p99_ms
        );
    }
    proxy.stop().await;

    // 4. The spike.
    let spike_redis = RedisProc::start(&["--appendonly", "no"]).await?;
    let workers = capacity::Workers::start(8, Duration::from_millis(10)).await;
    let yaml = spike_config(&spike_redis.url(), &workers.endpoint());
    let proxy = Proxy::from_yaml(&yaml, "deferred.yaml").await?;
    let samples = spike(&proxy, &spike_redis).await?;
    proxy.stop().await;
    print_spike(&samples);
    let path = harness::in_repo(FIGURE);
    harness::write(&path, &figure(&samples))?;
    println!("deferred: wrote {}", path.display());
    let _ = std::fs::remove_file(&script);

    // 5. Big bodies.
    bodies::run(&fast).await
}

/// A config with routes `/fwd` (forwards) and `/hooks` (`when: always`, attempts 100) to
/// upstream `api` at `endpoint` with `upstream_extra` fields; `route_extra` on `/hooks`.
fn config(redis: &str, endpoint: &str, upstream_extra: &str, route_extra: &str) -> String {
    format!(
        "server: {{listen: 127.0.0.1:0, workers: 2}}\n\
         store: {{redis: {{url: \"{redis}\", timeout: 1s}}}}\n\
         upstreams:\n  api: {{endpoints: [{endpoint}]{upstream_extra}}}\n\
         routes:\n\
         \x20 - {{name: fwd, match: {{path_prefix: /fwd}}, upstream: api}}\n\
         \x20 - {{name: hooks, match: {{path_prefix: /hooks}}, upstream: api, {route_extra} defer: {{when: always, attempts: 100, backoff: 1s}}}}\n"
    )
}

/// The spike's config: `/events` with `when: overflow` behind an upstream cap of 8 with a queue
/// of 16 (200 ms): live requests wait there at `normal` priority ahead of deliveries (`low`),
/// which then only take slots live traffic leaves idle.
fn spike_config(redis: &str, endpoint: &str) -> String {
    format!(
        "server: {{listen: 127.0.0.1:0, workers: 2}}\n\
         store: {{redis: {{url: \"{redis}\", timeout: 1s}}}}\n\
         upstreams:\n  api: {{endpoints: [{endpoint}], concurrency: {{max_inflight: 8, queue: 16, queue_timeout: 200ms}}}}\n\
         routes:\n\
         \x20 - {{name: events, match: {{path_prefix: /events}}, upstream: api, defer: {{when: overflow}}}}\n"
    )
}

/// One 100 ms sample of the spike.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    at: f64,
    offered: u64,
    forwarded: u64,
    deferred: u64,
    refused: u64,
    delivered: u64,
    queued: u64,
}

/// Drives the spike open-loop and samples it until the backlog is gone (at most 30 s).
async fn spike(proxy: &Proxy, redis: &RedisProc) -> Result<Vec<Sample>, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let url = proxy.url("/events/e");
    let start = Instant::now();
    let end = SPIKE[SPIKE.len() - 1].1;
    let producer = {
        let (client, counts, url) = (client.clone(), counts.clone(), url.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut sent = 0u64;
            loop {
                tick.tick().await;
                let t = start.elapsed().as_secs_f64();
                if t >= end {
                    return;
                }
                // Requests due by now at the piecewise rate, sent at once.
                let due: f64 = SPIKE
                    .iter()
                    .map(|&(from, to, rate)| (t.min(to) - from).max(0.0) * rate as f64)
                    .sum();
                while (sent as f64) < due {
                    sent += 1;
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    let (client, counts, url) = (client.clone(), counts.clone(), url.clone());
                    tokio::spawn(async move {
                        let req = Request::post(url.as_str())
                            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                            .expect("a request");
                        let status = match tokio::time::timeout(
                            Duration::from_secs(10),
                            client.request(req),
                        )
                        .await
                        {
                            Ok(Ok(res)) => {
                                let status = res.status();
                                let _ = res.into_body().collect().await;
                                status
                            }
                            _ => StatusCode::BAD_GATEWAY,
                        };
                        let slot = match status {
                            StatusCode::OK => 1,
                            StatusCode::ACCEPTED => 2,
                            _ => 3,
                        };
                        counts[slot].fetch_add(1, Ordering::Relaxed);
                    });
                }
            }
        })
    };
    let mut samples = Vec::new();
    let mut last = [0u64; 4];
    let (mut last_delivered, mut delivered, mut queued_now) = (0u64, 0u64, 0u64);
    let mut conn = redis.conn().await?;
    let mut tick = tokio::time::interval(SAMPLE);
    loop {
        tick.tick().await;
        let at = start.elapsed().as_secs_f64();
        let now: [u64; 4] = std::array::from_fn(|i| counts[i].load(Ordering::Relaxed));
        // A reading that fails (Redis busy under the spike) keeps the previous one.
        if let Ok(n) = delivered_count(&mut conn).await {
            delivered = n;
        }
        if let Ok(n) = queued_on(&mut conn).await {
            queued_now = n;
        }
        let per_s = 1.0 / SAMPLE.as_secs_f64();
        samples.push(Sample {
            at,
            offered: ((now[0] - last[0]) as f64 * per_s) as u64,
            forwarded: ((now[1] - last[1]) as f64 * per_s) as u64,
            deferred: ((now[2] - last[2]) as f64 * per_s) as u64,
            refused: ((now[3] - last[3]) as f64 * per_s) as u64,
            delivered: ((delivered - last_delivered) as f64 * per_s) as u64,
            queued: queued_now,
        });
        last = now;
        last_delivered = delivered;
        if (at > end && queued_now == 0) || at > 30.0 {
            break;
        }
    }
    producer.abort();
    Ok(samples)
}

/// Tasks of route `events` delivered so far (from the `delivered` counter in Redis: the set of
/// delivered tasks kept for an hour).
async fn delivered_count(conn: &mut redis::aio::MultiplexedConnection) -> Result<u64, String> {
    redis::cmd("ZCARD")
        .arg("sluice:defer:{events}:delivered")
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())
}

/// Tasks waiting (stream entries and retries) of the routes `hooks` and `events`.
async fn queued(redis: &RedisProc) -> Result<u64, String> {
    queued_on(&mut redis.conn().await?).await
}

/// [`queued`] on an open connection.
async fn queued_on(conn: &mut redis::aio::MultiplexedConnection) -> Result<u64, String> {
    let mut total = 0;
    for route in ["hooks", "events"] {
        let (len, retries): (u64, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(format!("sluice:defer:{{{route}}}:s"))
            .cmd("ZCARD")
            .arg(format!("sluice:defer:{{{route}}}:r"))
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        total += len + retries;
    }
    Ok(total)
}

fn print_spike(samples: &[Sample]) {
    let phase = |from: f64, to: f64| {
        let inside: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at > from && s.at <= to)
            .collect();
        let n = inside.len().max(1) as f64;
        let mean = |f: fn(&Sample) -> u64| inside.iter().map(|s| f(s) as f64).sum::<f64>() / n;
        (
            mean(|s| s.offered),
            mean(|s| s.forwarded),
            mean(|s| s.deferred),
            mean(|s| s.refused),
            mean(|s| s.delivered),
            inside.iter().map(|s| s.queued).max().unwrap_or(0),
        )
    };
    println!("\n| phase | offered/s | forwarded/s | deferred (202)/s | other/s | delivered/s | most queued |\n|---|---:|---:|---:|---:|---:|---:|");
    let last = samples.last().map_or(0.0, |s| s.at);
    for (name, from, to) in [
        ("before (0–1 s)", 0.0, 1.0),
        ("spike (1–4 s)", 1.0, 4.0),
        ("after (4 s – drained)", 4.0, last),
    ] {
        let (o, f, d, r, del, q) = phase(from, to);
        println!("| {name} | {o:.0} | {f:.0} | {d:.0} | {r:.0} | {del:.0} | {q} |");
    }
    let drained = samples
        .iter()
        .find(|s| s.at > 4.0 && s.queued == 0)
        .map_or(f64::NAN, |s| s.at);
    println!("backlog gone at {drained:.1} s");
}

fn figure(samples: &[Sample]) -> String {
    let series = |f: fn(&Sample) -> u64| samples.iter().map(|s| (s.at, f(s) as f64)).collect();
    let x_max = samples.last().map_or(1.0, |s| s.at);
    timeline::render(
        "Deferred delivery absorbs a spike",
        &[
            "Upstream: 8 workers × 10 ms (800/s); upstream cap 8, queue 16 (200 ms); route defer: {when: overflow}.".into(),
            format!(
                "Open-loop producer: 300/s, 2,000/s for 3 s, 300/s; Redis without persistence; {} build.",
                if cfg!(debug_assertions) { "debug" } else { "release" }
            ),
        ],
        "time (s)",
        x_max,
        &[
            Panel {
                title: format!("Requests per second (per {} ms)", SAMPLE.as_millis()),
                y_label: "per second".into(),
                lines: vec![
                    Line { label: "offered".into(), color: "#777", dash: "5 4", width: 1.5, points: series(|s| s.offered) },
                    Line { label: "forwarded at once (200)".into(), color: "#2ca02c", dash: "none", width: 2.0, points: series(|s| s.forwarded) },
                    Line { label: "deferred (202)".into(), color: "#ff7f0e", dash: "none", width: 2.0, points: series(|s| s.deferred) },
                    Line { label: "deferred tasks delivered".into(), color: "#1f77b4", dash: "none", width: 2.0, points: series(|s| s.delivered) },
                    Line { label: "other answers (503, errors)".into(), color: "#d62728", dash: "none", width: 1.5, points: series(|s| s.refused) },
                ],
            },
            Panel {
                title: "Tasks queued in Redis".into(),
                y_label: "tasks".into(),
                lines: vec![Line { label: "queued".into(), color: "#9467bd", dash: "none", width: 2.0, points: series(|s| s.queued) }],
            },
        ],
    )
}

/// A redis-server child on a free port, its files in a directory of its own; killed on drop.
struct RedisProc {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl RedisProc {
    async fn start(args: &[&str]) -> Result<RedisProc, String> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "sluice-deferred-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start redis-server ({e}); install it: apt-get install -y redis-server"
                )
            })?;
        let redis = RedisProc { port, child, dir };
        for _ in 0..200 {
            if redis.conn().await.is_ok() {
                return Ok(redis);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err("redis-server did not answer within 5 s".into())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(conn)
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

/// An upstream answering 200 after `delay`, counting the requests that carry an
/// `Idempotency-Key` (deliveries).
struct Counting {
    addr: SocketAddr,
    deliveries: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Counting {
    async fn start(delay: Duration) -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let deliveries = Arc::new(AtomicU64::new(0));
        let counted = deliveries.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let counted = counted.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let counted = counted.clone();
                        async move {
                            if req.headers().contains_key("idempotency-key") {
                                counted.fetch_add(1, Ordering::Relaxed);
                            }
                            let _ = req.into_body().collect().await;
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Counting {
            addr,
            deliveries,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server that accepts connections and never answers; the connections are held by the
/// returned task.
async fn silent() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    (addr, task)
}

/// What one wrk run measured.
struct Wrk {
    rate: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

/// Runs wrk with `script` for `secs` seconds and parses its summary.
fn wrk(script: &Path, threads: u32, connections: u32, secs: u32, url: &str) -> Result<Wrk, String> {
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run wrk ({e}); install it: apt-get install -y wrk"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
    };
    let percentile = |p: &str| field(p).and_then(|v| millis(&v)).unwrap_or(f64::NAN);
    Ok(Wrk {
        rate: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50_ms: percentile("50%"),
        p90_ms: percentile("90%"),
        p99_ms: percentile("99%"),
        non_2xx: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

/// wrk's `1.23ms`, `456.00us`, `1.20s` in milliseconds.
fn millis(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}
