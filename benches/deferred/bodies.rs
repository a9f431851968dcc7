//! 5. **Big bodies** (issue 22's figures): the latency of a 202 by body size (1 KiB, 1 MiB,
//!    8 MiB; one client, one request at a time), and the latency of requests through a
//!    `scope: global` limit on the same Redis server — alone, then while two other clients store
//!    8 MiB bodies back to back. Deliveries are held (the deferring route's upstream never
//!    answers), so the figures are of accepting alone. `DEFERRED_ONLY=bodies` runs this step
//!    alone.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{silent, Counting, Proxy, RedisProc};

/// Body sizes and how many of each are sent.
const SIZES: [(&str, usize, usize); 3] = [
    ("1 KiB", 1 << 10, 300),
    ("1 MiB", 1 << 20, 60),
    ("8 MiB", 8 << 20, 20),
];

/// Requests through the global limit, alone and beside the big writes.
const LIMIT_CHECKS: usize = 400;

/// The step (see the module docs).
pub(super) async fn run(fast: &Counting) -> Result<(), String> {
    let redis = RedisProc::start(&["--appendonly", "no"]).await?;
    let (silent, _held) = silent().await;
    let yaml = config(&redis.url(), &format!("http://{silent}"), &fast.endpoint());
    let proxy = Proxy::from_yaml(&yaml, "deferred.yaml").await?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

    println!("\n| body | 202s | p50 | p99 | max |\n|---|---:|---:|---:|---:|");
    for (name, size, count) in SIZES {
        let body = Bytes::from(vec![b'x'; size]);
        let mut took = Vec::with_capacity(count);
        for _ in 0..count {
            let started = Instant::now();
            let status = post(&client, &proxy.url("/hooks/big"), body.clone()).await?;
            if status != 202 {
                return Err(format!("{name}: answered {status}, not 202"));
            }
            took.push(started.elapsed());
        }
        let (p50, p99, max) = quantiles(&mut took);
        println!("| {name} | {count} | {p50:.2} ms | {p99:.2} ms | {max:.2} ms |");
    }

    println!("\n| global limit checks | requests | p50 | p99 | max | not 200 |\n|---|---:|---:|---:|---:|---:|");
    let alone = checks(&client, &proxy).await?;
    print_checks("alone", &alone);
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), proxy.url("/hooks/big"));
            tokio::spawn(async move {
                let body = Bytes::from(vec![b'y'; 8 << 20]);
                let mut stored = 0u32;
                loop {
                    if post(&client, &url, body.clone()).await == Ok(202) {
                        stored += 1;
                    }
                    tokio::task::yield_now().await;
                    if stored > 1000 {
                        return stored;
                    }
                }
            })
        })
        .collect();
    // Let the writers get going.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let beside = checks(&client, &proxy).await?;
    for writer in &writers {
        writer.abort();
    }
    print_checks("while 8 MiB bodies are stored", &beside);
    proxy.stop().await;
    Ok(())
}

/// The config: `/hooks` defers (bodies up to 16 MiB, read whole before the 202) to an
/// upstream that never answers; `/limited` goes through a global limit that admits everything
/// to an upstream answering at once. Both on one Redis server, calls bounded by 2 s.
fn config(redis: &str, silent: &str, fast: &str) -> String {
    format!(
        "server: {{listen: 127.0.0.1:0, workers: 2, request_buffer: 16MiB, max_request_body: 16MiB}}\n\
         store: {{redis: {{url: \"{redis}\", timeout: 2s}}}}\n\
         upstreams:\n  stuck: {{endpoints: [{silent}], timeout: 60s}}\n  fast: {{endpoints: [{fast}]}}\n\
         routes:\n\
         \x20 - {{name: hooks, match: {{path_prefix: /hooks}}, upstream: stuck, defer: {{when: always, max_body: 16MiB}}}}\n\
         \x20 - {{name: limited, match: {{path_prefix: /limited}}, upstream: fast, rate_limits: [{{key: global, rate: 1000000/s, scope: global}}]}}\n"
    )
}

/// POSTs `body` to `url`; the answer's status.
async fn post(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
    body: Bytes,
) -> Result<u16, String> {
    let req = Request::post(url)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let res = client.request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let _ = res.into_body().collect().await;
    Ok(status)
}

/// [`LIMIT_CHECKS`] GETs through the limit, one at a time: their latencies and how many were
/// not 200.
async fn checks(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    proxy: &Proxy,
) -> Result<(Vec<Duration>, usize), String> {
    let url = proxy.url("/limited");
    let mut took = Vec::with_capacity(LIMIT_CHECKS);
    let mut other = 0;
    for _ in 0..LIMIT_CHECKS {
        let started = Instant::now();
        let req = Request::get(&url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let res = client.request(req).await.map_err(|e| e.to_string())?;
        if res.status() != 200 {
            other += 1;
        }
        let _ = res.into_body().collect().await;
        took.push(started.elapsed());
    }
    Ok((took, other))
}

fn print_checks(what: &str, (took, other): &(Vec<Duration>, usize)) {
    let mut took = took.clone();
    let (p50, p99, max) = quantiles(&mut took);
    println!(
        "| {what} | {} | {p50:.2} ms | {p99:.2} ms | {max:.2} ms | {other} |",
        took.len()
    );
}

/// p50, p99 and max of `took`, in ms.
fn quantiles(took: &mut [Duration]) -> (f64, f64, f64) {
    took.sort();
    let at = |q: f64| {
        let i = ((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1;
        took[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99), at(1.0))
}
