//! Chaos run of deferred delivery (issue 30, "Deferred tasks outlive an outage"):
//! `cargo bench --bench chaos` (needs redis-server; about 35 s once built). docs/chaos.md
//! explains it and has a run's report.
//!
//! Two sluice instances, A and B — child processes of this build's binary (`SLUICE_BIN`
//! overrides it) — share one redis-server (append-only, `appendfsync always`) and deliver the
//! route `hooks` (`defer: {when: always, attempts: 5, backoff: 200ms, ttl: 10m}`) to one
//! upstream (`timeout: 2s`: a dead instance's tasks are taken over 7 s after its last sign of
//! life). An open-loop client sends 3,000 POSTs at 100/s, each with an `Idempotency-Key` of its
//! own, to A and B in turn (to the other when one refuses the connection). During the traffic
//! (of length T):
//!
//! - at 0.2 T, A is killed (SIGKILL) and started again 1 s later;
//! - at 0.45 T, Redis is killed (SIGKILL) and started again 3 s later, same port, same data;
//! - at 0.7 T, the upstream stops (refuses connections, after finishing what it has) for 5 s.
//!
//! Then it waits (at most [`DRAIN_LIMIT`]) until every accepted task is delivered, and checks:
//! every request answered 202 ended `delivered` (none `dead`, none lost) and reached the
//! upstream; every delivery carried its client's `Idempotency-Key`; no key answered 503 without
//! `"task"` (not stored) was delivered; a key was delivered twice only if its task was in A's
//! hands (in the stream's pending list under A's consumer) when A was killed. It prints a
//! report, writes the configs and logs to `target/chaos/<time>/`, and exits non-zero if a
//! check failed.
//!
//! `CHAOS_SCALE` (default 1, from 0.35 to 10) scales the number of requests and so T: 0.5 is
//! 1,500 requests over 15 s, about 20 s in all.

#[path = "chaos/client.rs"]
mod client;
#[path = "chaos/procs.rs"]
mod procs;
#[path = "chaos/upstream.rs"]
mod upstream;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use client::{Answer, Sent};
use procs::{free_port, wait_gone, Redis, Sluice};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamPendingCountReply, StreamRangeReply};
use upstream::Upstream;

/// Requests of a run at scale 1, and their rate per second.
const REQUESTS: f64 = 3000.0;
const RATE: f64 = 100.0;
/// The longest wait after the traffic for every accepted task to be delivered.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// The route's stream, dead set and retry set in Redis (see `src/defer.rs`).
const STREAM: &str = "sluice:defer:{hooks}:s";
const DEAD: &str = "sluice:defer:{hooks}:dead";
const RETRY: &str = "sluice:defer:{hooks}:r";

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!("chaos: run it with `cargo bench --bench chaos`");
        return ExitCode::SUCCESS;
    }
    bench()
}

/// The run, on two worker threads: non-zero when a check failed or the run could not be done.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn bench() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("chaos: a check failed (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("chaos: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What happened during the run, for the report.
#[derive(Default)]
struct Timeline {
    events: Vec<(f64, String)>,
    /// Keys of the tasks A held when it was killed.
    held_by_a: HashSet<String>,
}

/// The run; `Ok(false)` when a check failed.
async fn run() -> Result<bool, String> {
    let scale: f64 = match std::env::var("CHAOS_SCALE") {
        Ok(text) => text
            .trim()
            .parse()
            .ok()
            .filter(|s| (0.35..=10.0).contains(s))
            .ok_or_else(|| format!("CHAOS_SCALE must be from 0.35 to 10, not {text:?}"))?,
        Err(_) => 1.0,
    };
    let count = (REQUESTS * scale).round() as usize;
    let traffic = Duration::from_secs_f64(count as f64 / RATE);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = run_dir(stamp)?;
    let binary = std::env::var_os("SLUICE_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_sluice")),
        PathBuf::from,
    );
    println!(
        "chaos: {count} requests at {RATE}/s over {:.0} s; logs in {}",
        traffic.as_secs_f64(),
        dir.display()
    );

    let mut redis = Redis::start(&dir).await?;
    let mut upstream = Upstream::start().await?;
    let yaml = |http: SocketAddr| sluice_yaml(http, &redis.url(), upstream.addr);
    let (http_a, http_b) = (addr(free_port()?), addr(free_port()?));
    let mut a = Sluice::start("a", &binary, &dir, http_a, &yaml(http_a)).await?;
    let b = Sluice::start("b", &binary, &dir, http_b, &yaml(http_b)).await?;

    let start = Instant::now();
    let load = tokio::spawn({
        let run = stamp.to_string();
        async move {
            let sent = client::run([http_a, http_b], count, RATE, &run).await;
            (sent, Instant::now())
        }
    });
    let timeline = chaos(start, traffic, (&mut a, &mut redis, &mut upstream)).await?;
    let (sent, last_answer) = load.await.map_err(|e| format!("the client failed: {e}"))?;

    let accepted: Vec<(&str, &str)> = sent
        .iter()
        .filter_map(|s| match &s.answer {
            Answer::Accepted(id) => Some((s.key.as_str(), id.as_str())),
            _ => None,
        })
        .collect();
    let unknown: Vec<&str> = sent
        .iter()
        .filter_map(|s| match &s.answer {
            Answer::Unknown(id) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let mut conn = connect(&redis.url()).await?;
    let drained = drain(&mut conn, &upstream, &accepted, &unknown).await;
    let drain_time = drained.map(|at| at.saturating_duration_since(last_answer));

    let verdict = check(&mut conn, &upstream, &sent, &timeline).await?;
    let mut report = verdict.table;
    let _ = writeln!(
        report,
        "| time to drain (from the last answer to the last task delivered) | {} |",
        drain_time.map_or_else(
            || format!("not drained within {DRAIN_LIMIT:?}"),
            |d| format!("{:.1} s", d.as_secs_f64())
        )
    );
    report.push_str(&verdict.checks);
    let mut events = timeline.events.clone();
    events.push(((last_answer - start).as_secs_f64(), "last answer".into()));
    if let Some(at) = drained {
        let what = "every accepted task delivered".into();
        events.push(((at - start).as_secs_f64(), what));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let _ = writeln!(report, "\nEvents (s from the first request):");
    for (at, what) in &events {
        let _ = writeln!(report, "- {at:.1} s: {what}");
    }
    println!("\n{report}");
    let _ = std::fs::write(dir.join("report.md"), &report);
    drop((a, b));
    Ok(verdict.passed && drained.is_some())
}

/// `target/chaos/<stamp>/`.
fn run_dir(stamp: u64) -> Result<PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    let dir = target.join("chaos").join(stamp.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An instance's config: the route `hooks` of the issue, one worker thread.
fn sluice_yaml(http: SocketAddr, redis: &str, upstream: SocketAddr) -> String {
    format!(
        "# The chaos run's instance (benches/deferred/chaos.rs).\n\
         server: {{listen: {http}, workers: 1, shutdown_grace: 1s}}\n\
         store: {{redis: {{url: \"{redis}\", timeout: 100ms}}}}\n\
         upstreams:\n  api: {{endpoints: [http://{upstream}], timeout: 2s}}\n\
         routes:\n\
         \x20 - name: hooks\n    match: {{path_prefix: /hooks}}\n    upstream: api\n\
         \x20   defer: {{when: always, attempts: 5, backoff: 200ms, ttl: 10m}}\n"
    )
}

/// The three faults, at their times during `traffic` from `start`.
async fn chaos(
    start: Instant,
    traffic: Duration,
    (a, redis, upstream): (&mut Sluice, &mut Redis, &mut Upstream),
) -> Result<Timeline, String> {
    let mut timeline = Timeline::default();
    let at = |share: f64| tokio::time::sleep_until((start + traffic.mul_f64(share)).into());
    let now = |start: Instant| start.elapsed().as_secs_f64();

    at(0.2).await;
    let pid = a.pid();
    a.kill();
    if let Some(pid) = pid {
        wait_gone(pid).await;
    }
    let mut conn = connect(&redis.url()).await?;
    timeline.held_by_a = held_by(&mut conn, &a.consumer).await?;
    drop(conn);
    timeline.events.push((
        now(start),
        format!(
            "instance A killed (SIGKILL) holding {} tasks",
            timeline.held_by_a.len()
        ),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.restart().await?;
    timeline
        .events
        .push((now(start), "instance A started again".into()));

    at(0.45).await;
    redis.kill();
    timeline
        .events
        .push((now(start), "Redis killed (SIGKILL)".into()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.restart().await?;
    timeline.events.push((
        now(start),
        "Redis started again (same port, same data)".into(),
    ));

    at(0.7).await;
    upstream.stop().await;
    timeline
        .events
        .push((now(start), "upstream stopped (drained, refusing)".into()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    upstream.restart().await?;
    timeline
        .events
        .push((now(start), "upstream serving again".into()));
    Ok(timeline)
}

async fn connect(url: &str) -> Result<MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot connect to Redis: {e}"))
}

/// The `Idempotency-Key`s of the tasks whose stream entries `consumer` holds.
async fn held_by(
    conn: &mut MultiplexedConnection,
    consumer: &str,
) -> Result<HashSet<String>, String> {
    let pending: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg("sluice")
        .arg("-")
        .arg("+")
        .arg(100_000)
        .query_async(conn)
        .await
        .map_err(|e| format!("XPENDING: {e}"))?;
    let mut keys = HashSet::new();
    for entry in pending.ids.iter().filter(|p| p.consumer == consumer) {
        let range: StreamRangeReply = redis::cmd("XRANGE")
            .arg(STREAM)
            .arg(&entry.id)
            .arg(&entry.id)
            .query_async(conn)
            .await
            .map_err(|e| format!("XRANGE: {e}"))?;
        for task in range.ids.iter().filter_map(|e| e.get::<String>("id")) {
            let key: Option<String> = redis::cmd("HGET")
                .arg(format!("sluice:defer:{{hooks}}:t:{task}"))
                .arg("ikey")
                .query_async(conn)
                .await
                .map_err(|e| format!("HGET: {e}"))?;
            keys.extend(key);
        }
    }
    Ok(keys)
}

/// Fields `names` of tasks `ids` (`None`: Redis has no such task, or it no such field).
async fn fields(
    conn: &mut MultiplexedConnection,
    ids: &[&str],
    names: &[&str],
) -> Result<Vec<Vec<Option<String>>>, String> {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HMGET")
            .arg(format!("sluice:defer:{{hooks}}:t:{id}"))
            .arg(names);
    }
    pipe.query_async(conn)
        .await
        .map_err(|e| format!("reading tasks: {e}"))
}

/// The statuses of tasks `ids` (`None`: Redis has no such task).
async fn statuses(
    conn: &mut MultiplexedConnection,
    ids: &[&str],
) -> Result<Vec<Option<String>>, String> {
    let read = fields(conn, ids, &["status"]).await?;
    Ok(read.into_iter().map(|mut f| f.swap_remove(0)).collect())
}

/// Waits until every accepted task is delivered and has reached the upstream, every task a 503
/// named is delivered or was never stored, and nothing is left in the stream or waiting for a
/// retry; when it was so, `None` after [`DRAIN_LIMIT`].
async fn drain(
    conn: &mut MultiplexedConnection,
    upstream: &Upstream,
    accepted: &[(&str, &str)],
    unknown: &[&str],
) -> Option<Instant> {
    let started = Instant::now();
    let ids: Vec<&str> = accepted.iter().map(|(_, id)| *id).collect();
    while started.elapsed() < DRAIN_LIMIT {
        let all_seen = {
            let seen = upstream
                .seen()
                .keys
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            accepted.iter().all(|(key, _)| seen.contains_key(*key))
        };
        // Redis may be busy or restarting: a failed reading is taken as "not yet".
        let done = all_seen
            && statuses(conn, &ids)
                .await
                .is_ok_and(|s| s.iter().all(|s| s.as_deref() == Some("delivered")))
            && statuses(conn, unknown).await.is_ok_and(|s| {
                s.iter()
                    .all(|s| matches!(s.as_deref(), None | Some("delivered")))
            })
            && left(conn).await.is_ok_and(|n| n == 0);
        if done {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Stream entries plus tasks waiting for a retry.
async fn left(conn: &mut MultiplexedConnection) -> Result<u64, String> {
    let (entries, retries): (u64, u64) = redis::pipe()
        .cmd("XLEN")
        .arg(STREAM)
        .cmd("ZCARD")
        .arg(RETRY)
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(entries + retries)
}

/// The checks' outcome, the report's table and the list of checks.
struct Verdict {
    passed: bool,
    table: String,
    checks: String,
}

/// Checks what the run must guarantee (see the module docs) and writes the report's table.
async fn check(
    conn: &mut MultiplexedConnection,
    upstream: &Upstream,
    sent: &[Sent],
    timeline: &Timeline,
) -> Result<Verdict, String> {
    let seen: BTreeMap<String, u32> = upstream
        .seen()
        .keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    let mismatched = upstream
        .seen()
        .mismatched
        .load(std::sync::atomic::Ordering::Relaxed);
    let delivered = |key: &str| seen.get(key).copied().unwrap_or(0);
    let of = |f: fn(&Answer) -> bool| sent.iter().filter(|s| f(&s.answer)).collect::<Vec<_>>();
    let accepted = of(|a| matches!(a, Answer::Accepted(_)));
    let not_stored = of(|a| *a == Answer::NotStored);
    let unknown = of(|a| matches!(a, Answer::Unknown(_)));
    let lost = of(|a| *a == Answer::Lost);
    let other = of(|a| matches!(a, Answer::Other(_)));

    let ids: Vec<&str> = accepted
        .iter()
        .filter_map(|s| match &s.answer {
            Answer::Accepted(id) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let mut ended: BTreeMap<String, usize> = BTreeMap::new();
    let (mut most_tries, mut most_attempts) = (0u32, 0u32);
    for task in fields(conn, &ids, &["status", "attempts", "tries"]).await? {
        let number = |i: usize| task[i].as_deref().and_then(|n| n.parse().ok()).unwrap_or(0);
        most_attempts = most_attempts.max(number(1));
        most_tries = most_tries.max(number(2));
        *ended
            .entry(task[0].clone().unwrap_or_else(|| "(gone)".into()))
            .or_default() += 1;
    }
    let unknown_ids: Vec<&str> = unknown
        .iter()
        .filter_map(|s| match &s.answer {
            Answer::Unknown(id) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let unknown_ended = statuses(conn, &unknown_ids).await?;
    let unknown_stuck = unknown_ended
        .iter()
        .filter(|s| !matches!(s.as_deref(), None | Some("delivered")))
        .count();
    let dead: u64 = redis::cmd("ZCARD")
        .arg(DEAD)
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;

    let sent_keys: HashSet<&str> = sent.iter().map(|s| s.key.as_str()).collect();
    let never_delivered = accepted.iter().filter(|s| delivered(&s.key) == 0).count();
    let not_delivered = accepted.len() - ended.get("delivered").copied().unwrap_or(0);
    let stored_anyway = not_stored.iter().filter(|s| delivered(&s.key) > 0).count();
    let foreign = seen
        .keys()
        .filter(|k| !sent_keys.contains(k.as_str()))
        .count();
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    let twice_unexplained = twice
        .iter()
        .filter(|k| !timeline.held_by_a.contains(k.as_str()))
        .count();
    let deliveries: u32 = seen.values().sum();

    let rules = [
        ("every 202 ended `delivered`", not_delivered == 0),
        ("every 202 reached the upstream", never_delivered == 0),
        ("no task dead", dead == 0),
        (
            "every delivery carried its client's key",
            mismatched == 0 && foreign == 0,
        ),
        (
            "no key answered 503 without a task was delivered",
            stored_anyway == 0,
        ),
        (
            "every task a 503 named is delivered or was never stored",
            unknown_stuck == 0,
        ),
        (
            "a key delivered twice was in A's hands at its SIGKILL",
            twice_unexplained == 0,
        ),
    ];
    let mut table = String::new();
    let _ = writeln!(table, "| | |\n|---|---:|");
    let rows: [(&str, String); 13] = [
        ("requests", sent.len().to_string()),
        ("answered 202 (accepted)", accepted.len().to_string()),
        ("accepted, ended", format!("{ended:?}")),
        (
            "503 without a task (not stored)",
            not_stored.len().to_string(),
        ),
        (
            "503 naming a task (outcome unknown): delivered / never stored",
            format!(
                "{}: {} / {}",
                unknown.len(),
                unknown_ended
                    .iter()
                    .filter(|s| s.as_deref() == Some("delivered"))
                    .count(),
                unknown_ended.iter().filter(|s| s.is_none()).count()
            ),
        ),
        (
            "no answer (connection broken): of which delivered",
            format!(
                "{}: {}",
                lost.len(),
                lost.iter().filter(|s| delivered(&s.key) > 0).count()
            ),
        ),
        ("other answers", other.len().to_string()),
        ("keys delivered (distinct)", seen.len().to_string()),
        ("deliveries in all", deliveries.to_string()),
        (
            "tasks in A's hands at its SIGKILL",
            timeline.held_by_a.len().to_string(),
        ),
        (
            "keys delivered twice (all in A's hands at its SIGKILL?)",
            format!("{} ({} not)", twice.len(), twice_unexplained),
        ),
        ("dead tasks", dead.to_string()),
        (
            "most failed tries before a delivery (refusals included) / most attempts",
            format!("{most_tries} / {most_attempts}"),
        ),
    ];
    for (what, value) in rows {
        let _ = writeln!(table, "| {what} | {value} |");
    }
    let mut passed = true;
    let mut checks = String::from("\nChecks:\n");
    for (rule, held) in rules {
        passed &= held;
        let _ = writeln!(checks, "- [{}] {rule}", if held { "x" } else { " " });
    }
    Ok(Verdict {
        passed,
        table,
        checks,
    })
}
