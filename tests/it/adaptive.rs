//! Adaptive caps through real sockets: against an upstream that serves K requests at once
//! (20 ms each) and queues the rest inside itself, under a steady overload, the cap settles
//! near K, admitted requests stay within a few service times, and the cap follows when K drops;
//! a client whose requests the upstream answers at once with 404 or 503 does not drag it down,
//! while 503s with `Retry-After` do; `sluice_concurrency_limit` shows the cap in force, fixed or
//! adaptive.

#[path = "../../benches/support/capacity.rs"]
mod capacity;

use std::time::Duration;

use crate::support::*;
use capacity::{
    drive, quantile, Load, Phase, Trace, Workers, FAST_NOT_FOUND, FAST_RETRY_AFTER,
    FAST_UNAVAILABLE,
};
use http::Request;
use http_body_util::Full;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The upstream's service time.
const SERVICE: Duration = Duration::from_millis(20);

/// sluice in front of `endpoint` as upstream `api`, with `concurrency` (a YAML flow mapping).
fn config(endpoint: &str, concurrency: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         upstreams:\n  api:\n    endpoints: [{endpoint}]\n    concurrency: {concurrency}\n\
         routes: [{{ name: all, upstream: api }}]\n"
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// An upstream of 8 workers behind sluice, whose cap is adaptive (2..=64, queue 2); and a
/// reading of the cap in force, for [`drive`].
async fn adaptive_in_front_of_workers() -> (Workers, Proxy, impl Fn() -> usize) {
    let workers = Workers::start(8, SERVICE).await;
    let yaml = config(
        &workers.endpoint(),
        "{ adaptive: { min_inflight: 2, max_inflight: 64 }, queue: 2, queue_timeout: 1s }",
    );
    let proxy = start_proxy(&yaml).await;
    let shared = proxy.shared.clone();
    let cap = move || {
        shared
            .runtime()
            .upstream_cap("api")
            .map_or(0, |c| c.limit())
    };
    (workers, proxy, cap)
}

/// What one phase of a run looked like, once settled.
#[derive(Debug)]
struct Seen {
    /// The cap in force: 10th percentile, median and 90th percentile of the samples.
    cap: (usize, usize, usize),
    /// The 90th percentile of admitted requests' latency (queueing at sluice included), ms, per
    /// half second.
    p90_ms: Vec<f64>,
    /// The most a timer of the test process was late, ms, per half second.
    late_ms: Vec<f64>,
    /// Admitted requests per second.
    rate: f64,
}

/// The phase `from..to` of `trace`, printed for the log.
fn seen(trace: &Trace, name: &str, from: Duration, to: Duration) -> Seen {
    let caps = trace.caps_in(from, to);
    let q = |q| quantile(&caps, q).unwrap_or(0);
    let seen = Seen {
        cap: (q(0.1), q(0.5), q(0.9)),
        p90_ms: trace
            .p90s(from, to, Duration::from_millis(500))
            .into_iter()
            .map(ms)
            .collect(),
        late_ms: (0..)
            .map(|i| from + Duration::from_millis(500) * i)
            .take_while(|&t| t + Duration::from_millis(500) <= to)
            .map(|t| ms(trace.lateness_in(t, t + Duration::from_millis(500))))
            .collect(),
        rate: trace.latencies_in(from, to).len() as f64 / (to - from).as_secs_f64(),
    };
    eprintln!("{name}: {seen:?}");
    seen
}

/// Checks a settled phase against an upstream of `k` workers:
///
/// - the cap's median in `k - 1..=2k + 2`, its 10th percentile at least `k / 2` and its 90th
///   at most `2k + 4`;
/// - admitted p90 within 4 service times, plus twice what the test process itself was late
///   (a request passes through the client, sluice and the upstream, all in this process: when
///   the shared machine starves it of CPU, every hop is late by about as much, whatever the
///   cap does), in at least two thirds of the half seconds;
/// - at least 40% of the upstream's capacity admitted (a cap pinned at `min_inflight` would
///   admit 2 / k of it).
fn check(seen: &Seen, k: usize) {
    let (p10, p50, p90) = seen.cap;
    assert!(
        p10 >= k / 2 && (k - 1..=2 * k + 2).contains(&p50) && p90 <= 2 * k + 4,
        "K = {k}: {seen:?}"
    );
    let within = seen
        .p90_ms
        .iter()
        .zip(&seen.late_ms)
        .filter(|&(&p90, &late)| p90 <= 4.0 * ms(SERVICE) + 2.0 * late)
        .count();
    assert!(
        !seen.p90_ms.is_empty() && within * 3 >= seen.p90_ms.len() * 2,
        "K = {k}: admitted p90 above 4 service times (+ 2 × lateness) too often: {seen:?}"
    );
    let capacity = k as f64 / SERVICE.as_secs_f64();
    assert!(
        seen.rate >= 0.4 * capacity,
        "K = {k}: the cap starves the upstream: {seen:?}"
    );
}

/// K = 8 for 5 s, then K = 2 for 6 s, under 32 clients: always more than the cap and its
/// queue of 2 can take, so the cap is always full (a 503 makes a client wait 50 ms before it
/// tries again, so that the excess does not burn the test machine's CPU).
///
/// The band: the algorithm settles where the upstream's latency is 1.2 × its no-load latency
/// plus one queued request, at about 1.2 × K + 1 (10.6 for K = 8, 3.4 for K = 2), and moves
/// around it by a growth step (√cap) and a halved excess; on this machine, in a debug build,
/// the measured no-load latency is a few ms above 20 ms, which moves it up by 1 or 2. The test
/// allows the median K − 1 ..= 2K + 2 (below K the upstream would idle, above 2K its latency
/// would double), and 80% of the samples within K / 2 ..= 2K + 4: room for a loaded 2-core
/// machine, where scheduling delays read as latency (typically the samples stay within ±2).
///
/// Latency: an admitted request takes the upstream's time (≈ 1.2–1.5 service times) plus its
/// wait in sluice's queue of 2 (2 answers of the upstream: 5 ms at K = 8, 20 ms at K = 2);
/// typically 2–2.5 service times at K = 8 and 3.5 at K = 2 at the 90th percentile, where a
/// fixed cap of 8 would give 5.5–7 at K = 2. The bound is 4, per half second, allowing for
/// the test machine's stalls (see [`check`]).
///
/// The cap must be at most 6 within 3 s of the drop (typically 0.4–0.8 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_settles_near_the_upstreams_capacity_and_follows_it() {
    // Measures the cap and latencies against the clock: one load test at a time.
    let _alone = alone().await;
    let (workers, proxy, cap) = adaptive_in_front_of_workers().await;
    let phases = [
        Phase {
            length: Duration::from_secs(5),
            workers: 8,
        },
        Phase {
            length: Duration::from_secs(6),
            workers: 2,
        },
    ];
    let load = Load {
        clients: 32,
        backoff: Duration::from_millis(50),
    };
    let trace = drive(&proxy.url("/"), &workers, load, &phases, cap).await;
    eprintln!(
        "{} admitted, {} rejected, {} errors; the upstream held {} at most",
        trace.admitted.len(),
        trace.rejected.len(),
        trace.errors,
        workers.peak_inside()
    );
    assert_eq!(trace.errors, 0, "only 200s and 503s");
    eprintln!("{:?}", proxy.shared.runtime().upstream_cap("api"));
    let switch = trace.phase_starts[1];

    // K = 8, after 2 s of learning (a probe, then growth from 2).
    check(&seen(&trace, "K = 8", Duration::from_secs(2), switch), 8);
    // K = 2: the cap follows within seconds, then settles.
    let followed = trace
        .first_at_most(switch, 2 * 2 + 2)
        .map(|t| t - switch)
        .unwrap_or_else(|| panic!("the cap never fell to 6 after K dropped: {:?}", trace.caps));
    eprintln!("the cap was at most 6 within {followed:?} of K = 2");
    assert!(followed <= Duration::from_secs(3), "took {followed:?}");
    let settled = switch + Duration::from_secs(3);
    let end = switch + phases[1].length;
    check(&seen(&trace, "K = 2", settled, end), 2);
    proxy.stop().await;
}

/// The most of the upstream's requests the attacker of [`attack`] sends: the contract's bound.
const ATTACK_SHARE: f64 = 0.3;

/// Issue 22, item 6 ("Controls no client steers"): with 16 legitimate clients holding the cap
/// at C (K = 8, overloaded as above), one more client that sends 30% of the upstream's requests
/// to a path it answers at once with 404, then to one it answers at once with 503 (no
/// `Retry-After`), leaves the cap's median at least 0.7 × C: neither answer is a sample of the
/// upstream's capacity. Before the fix every 503 was a drop, and 1 in 20 samples halved the
/// cap. The flip side: the same client on a path answered 503 with `Retry-After` (the upstream
/// saying it is overloaded) brings the cap down (and, since issue 25, the endpoint into
/// pushback).
///
/// One run of four phases (7 s legitimate load alone, 7 s with the 404s, 7 s with the 503s,
/// 4 s with the 503s with `Retry-After`), each judged after its first second (C after 2 s of
/// learning); the attacker paces itself on what reaches the upstream (see [`attack`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_answered_fast_with_404_or_503_does_not_drag_the_cap_down() {
    // Measures the cap and latencies against the clock: one load test at a time.
    let _alone = alone().await;
    let (workers, proxy, cap) = adaptive_in_front_of_workers().await;
    let attacks = [
        (Duration::from_secs(7), None),
        (Duration::from_secs(7), Some(FAST_NOT_FOUND)),
        (Duration::from_secs(7), Some(FAST_UNAVAILABLE)),
        (Duration::from_secs(4), Some(FAST_RETRY_AFTER)),
    ];
    let phases = attacks.map(|(length, _)| Phase { length, workers: 8 });
    let load = Load {
        clients: 16,
        backoff: Duration::from_millis(50),
    };
    let attacker = async {
        let mut shares = Vec::new();
        for (length, path) in attacks {
            shares.push(match path {
                Some(path) => attack(&proxy.url(path), &workers, length).await,
                None => {
                    tokio::time::sleep(length).await;
                    0.0
                }
            });
        }
        shares
    };
    let url = proxy.url("/");
    let (trace, shares) = tokio::join!(drive(&url, &workers, load, &phases, cap), attacker);
    eprintln!("the attacker's share of the upstream's requests, per phase: {shares:?}");
    assert_eq!(trace.errors, 0, "legitimate clients get only 200s and 503s");
    // The pacing is checked where the attacker must not steer (404s, 503s without
    // `Retry-After`). A 503 with `Retry-After` is the endpoint's pushback (issue 25): the only
    // endpoint then waits a second and the legitimate load is answered at the edge, so what
    // reaches the upstream in that phase is mostly the attacker's by design.
    for (&share, (_, path)) in shares.iter().zip(attacks).skip(1).take(2) {
        assert!(
            (0.2..=ATTACK_SHARE + 0.01).contains(&share),
            "{path:?}: the attacker sent {share:.2} of the upstream's requests"
        );
    }
    let starts = &trace.phase_starts;
    let phase = |i: usize, skip: Duration| {
        let end = starts
            .get(i + 1)
            .copied()
            .unwrap_or(starts[i] + phases[i].length);
        seen(
            &trace,
            attacks[i].1.unwrap_or("legitimate load alone"),
            starts[i] + skip,
            end,
        )
    };
    let alone = phase(0, Duration::from_secs(2)).cap.1;
    let second = Duration::from_secs(1);
    let not_found = phase(1, second).cap.1;
    let unavailable = phase(2, second).cap.1;
    let retry_after = phase(3, second).cap.1;
    eprintln!(
        "cap median: {alone} alone, {not_found} with fast 404s, {unavailable} with fast 503s, \
         {retry_after} with 503s with Retry-After"
    );
    assert!(
        alone >= 7,
        "the legitimate load holds the cap near 1.2 × 8 + 1: {alone}"
    );
    let bound = 0.7 * alone as f64;
    assert!(
        not_found as f64 >= bound,
        "fast 404s: {not_found} < 0.7 × {alone}"
    );
    assert!(
        unavailable as f64 >= bound,
        "fast 503s: {unavailable} < 0.7 × {alone}"
    );
    // Overload all the same, but since issue 25 each such 503 also puts the only endpoint in
    // pushback for its second: the legitimate load is answered at the edge meanwhile and
    // teaches the cap nothing, so the cap falls less far than the half it fell before.
    assert!(
        retry_after < alone,
        "503s with Retry-After are overload: {retry_after} ≥ {alone}"
    );
    proxy.stop().await;
}

/// One client sending GETs to `url` for `length`, paced so that they make [`ATTACK_SHARE`] of
/// the requests that reach `workers` meanwhile: it sends while they are fewer (those sluice
/// refuses with 503 never reach it, and are made up for), at most 4 at once. Returns the share
/// they made.
async fn attack(url: &str, workers: &Workers, length: Duration) -> f64 {
    let client = client();
    let (worked_before, fast_before) = workers.arrived();
    let reached = || {
        let (worked, fast) = workers.arrived();
        let fast = fast - fast_before;
        (fast, worked - worked_before + fast)
    };
    let end = Instant::now() + length;
    let mut sending = JoinSet::new();
    while Instant::now() < end {
        let (fast, all) = reached();
        if sending.len() < 4 && (fast as f64) < ATTACK_SHARE * all as f64 {
            let (client, url) = (client.clone(), url.to_owned());
            sending.spawn(async move {
                let req = Request::get(url)
                    .body(Full::default())
                    .expect("a valid request");
                // 404, 503, or sluice's own 503: all the same to the attacker.
                send(&client, req).await;
            });
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        while let Some(done) = sending.try_join_next() {
            done.expect("attacker request");
        }
    }
    sending.join_all().await;
    let (fast, all) = reached();
    fast as f64 / all.max(1) as f64
}

/// `sluice_concurrency_limit` is the cap in force of every route and upstream cap: a fixed
/// cap's `max_inflight`, an adaptive cap's current limit (`min_inflight` while it first measures
/// the upstream); `sluice_utilization` is in flight over that limit.
#[tokio::test]
async fn the_limit_gauge_shows_the_cap_in_force() {
    let workers = Workers::start(4, SERVICE).await;
    let yaml = config(
        &workers.endpoint(),
        "{ adaptive: { min_inflight: 3, max_inflight: 50 }, queue: 10 }",
    )
    .replace(
        "routes: [{ name: all, upstream: api }]",
        "routes:\n  - { name: fixed, upstream: api, match: { path_prefix: /fixed }, concurrency: { max_inflight: 5 } }\n  - { name: learning, upstream: api, concurrency: { adaptive: {}, queue: 10 } }\n",
    );
    let proxy = start_proxy(&yaml).await;
    let series = |scope: &str| format!("sluice_concurrency_limit{{{scope}}}");
    assert_eq!(proxy.metric(&series("route=\"fixed\"")).await, 5.0);
    assert_eq!(proxy.metric(&series("route=\"learning\"")).await, 2.0);
    assert_eq!(proxy.metric(&series("upstream=\"api\"")).await, 3.0);
    assert_eq!(
        proxy.metric("sluice_utilization{upstream=\"api\"}").await,
        0.0
    );

    // Load the upstream until its adaptive cap has learnt and grown past min_inflight; the
    // gauge then reads what the cap says.
    let url = proxy.url("/");
    let rt = proxy.shared.clone();
    until(
        "the upstream cap grows past 3",
        Duration::from_secs(10),
        || {
            let (url, rt) = (url.clone(), rt.clone());
            async move {
                let burst: Vec<_> = (0..6)
                    .map(|_| {
                        let url = url.clone();
                        tokio::spawn(async move { get(&url).await })
                    })
                    .collect();
                for request in burst {
                    assert_eq!(request.await.expect("request task").status, 200);
                }
                rt.runtime()
                    .upstream_cap("api")
                    .is_some_and(|c| c.limit() > 3)
            }
        },
    )
    .await;
    let limit = proxy
        .shared
        .runtime()
        .upstream_cap("api")
        .map(|c| c.limit());
    let gauge = proxy.metric(&series("upstream=\"api\"")).await;
    // No traffic between the two reads: nothing can move the cap.
    assert_eq!(Some(gauge as usize), limit);
    proxy.stop().await;
}
