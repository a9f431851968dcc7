//! Tests of the adaptive limit. Time is paused (`start_paused`) and moved with `advance`; the
//! algorithm reads no clock of its own, so every test is exact.

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use http::StatusCode;
use tokio::time::advance;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn bounds(min: usize, max: usize) -> AdaptiveConfig {
    AdaptiveConfig {
        min_inflight: NonZeroUsize::new(min).expect("tests use min >= 1"),
        max_inflight: NonZeroUsize::new(max).expect("tests use max >= 1"),
    }
}

/// Feeds `n` answers of `latency` admitted in the current epoch, at the current time.
fn answers(a: &mut Adaptive, n: u32, latency: Duration, inflight: usize) {
    for _ in 0..n {
        let epoch = a.epoch();
        a.on_sample(Instant::now(), Sample::Answered(latency), epoch, inflight);
    }
}

/// A cap in bounds `min..=max` whose first probe measured `no_load`.
fn tracking(min: usize, max: usize, no_load: Duration) -> Adaptive {
    let mut a = Adaptive::new(bounds(min, max), Instant::now());
    answers(&mut a, PROBE_SAMPLES as u32, no_load, min);
    assert!(!a.probing(), "the probe ends after {PROBE_SAMPLES} answers");
    a
}

/// One whole window: `WINDOW_SAMPLES - 1` answers now, 100 ms later the last one, which closes
/// it. `inflight` is the in-flight count seen at each sample.
async fn window(a: &mut Adaptive, latency: Duration, inflight: usize) {
    answers(a, WINDOW_SAMPLES - 1, latency, inflight);
    advance(WINDOW_MIN).await;
    answers(a, 1, latency, inflight);
}

/// Windows of `latency` at full use until the limit stops changing or `max` windows passed;
/// returns the limit.
async fn windows(a: &mut Adaptive, latency: Duration, max: usize) -> usize {
    for _ in 0..max {
        let inflight = a.limit();
        window(a, latency, inflight).await;
    }
    a.limit()
}

/// A new cap starts at `min_inflight` and probes: the mean of the fastest 29 of the first 32
/// answers is the no-load latency (3 stalled answers do not move it), and then the cap tracks,
/// from where it was: `min_inflight`.
#[tokio::test(start_paused = true)]
async fn starts_at_min_inflight_and_learns_no_load_from_a_probe() {
    let mut a = Adaptive::new(bounds(3, 100), Instant::now());
    assert!(a.probing());
    assert_eq!(a.limit(), 3);
    answers(&mut a, 3, Duration::from_secs(2), 3);
    answers(&mut a, 14, ms(19), 3);
    answers(&mut a, 14, ms(21), 3);
    assert!(a.probing(), "one answer short");
    answers(&mut a, 1, ms(20), 3);
    assert!(!a.probing());
    assert_eq!(a.no_load(), ms(20));
    assert_eq!(a.limit(), 3);
}

/// Answers to requests admitted before a probe began, and drops, do not count for it: the
/// former were admitted under the high cap and queued at the upstream.
#[tokio::test(start_paused = true)]
async fn a_probe_counts_only_answers_to_requests_admitted_under_it() {
    let mut a = Adaptive::new(bounds(2, 100), Instant::now());
    let before = a.epoch().wrapping_sub(1);
    for _ in 0..100 {
        a.on_sample(Instant::now(), Sample::Answered(ms(500)), before, 50);
        a.on_sample(Instant::now(), Sample::Dropped, a.epoch(), 50);
    }
    assert!(a.probing(), "nothing counted");
    answers(&mut a, PROBE_SAMPLES as u32, ms(20), 2);
    assert_eq!(a.no_load(), ms(20));
}

/// A slow upstream cannot hold the cap at `min_inflight` for long: after 1 s, a probe ends
/// with the answers it has (and not with none).
#[tokio::test(start_paused = true)]
async fn a_probe_ends_after_a_second_with_the_answers_it_has() {
    let mut a = Adaptive::new(bounds(2, 100), Instant::now());
    advance(PROBE_MAX).await;
    a.on_sample(Instant::now(), Sample::Dropped, a.epoch(), 2);
    assert!(a.probing(), "no answer yet");
    answers(&mut a, 1, ms(900), 2);
    assert!(!a.probing());
    assert_eq!(a.no_load(), ms(900));
}

/// While latency stays near no-load and the cap is in use, each window grows the cap by
/// √limit: 4 → 6 → 8.4 → 11.3 …, within `max_inflight`.
#[tokio::test(start_paused = true)]
async fn grows_by_its_square_root_while_latency_stays_near_no_load() {
    let mut a = tracking(4, 20, ms(20));
    window(&mut a, ms(20), 4).await;
    assert_eq!(a.limit(), 6);
    window(&mut a, ms(23), 6).await; // 15% above no-load: within the tolerance
    assert_eq!(a.limit(), 8); // 6 + √6 = 8.45
    window(&mut a, ms(20), 8).await;
    assert_eq!(a.limit(), 11); // 8.45 + 2.9 = 11.35
    assert_eq!(
        windows(&mut a, ms(20), 10).await,
        20,
        "held at max_inflight"
    );
}

/// A cap that is mostly idle (in flight never reached half of it) learns nothing about the
/// upstream's capacity and does not grow.
#[tokio::test(start_paused = true)]
async fn does_not_grow_while_the_cap_is_mostly_unused() {
    let mut a = tracking(4, 100, ms(20));
    window(&mut a, ms(20), 1).await;
    assert_eq!(a.limit(), 4);
    window(&mut a, ms(20), 2).await;
    assert_eq!(a.limit(), 6, "half the limit in use is enough");
    for _ in 0..20 {
        window(&mut a, ms(20), 2).await;
    }
    assert_eq!(a.limit(), 6);
}

/// When latency rises above the tolerance, the cap moves halfway to `limit × gradient + 1`,
/// gradient = 1.2 × no-load / latency, at least 0.5.
#[tokio::test(start_paused = true)]
async fn shrinks_by_the_gradient_when_latency_rises() {
    let mut a = tracking(2, 100, ms(20));
    windows(&mut a, ms(20), 9).await;
    let l0 = a.limit;
    assert!(l0 > 30.0, "grown first: {l0}");
    // 60 ms: gradient 1.2 × 20 / 60 = 0.4 → 0.5. Target l0 / 2 + 1; halfway there.
    window(&mut a, ms(60), l0 as usize).await;
    let l1 = (l0 + l0 * 0.5 + 1.0) / 2.0;
    assert!((a.limit - l1).abs() < 1e-9, "{} != {l1}", a.limit);
    // 30 ms: gradient 0.8.
    window(&mut a, ms(30), l1 as usize).await;
    let l2 = (l1 + l1 * 0.8 + 1.0) / 2.0;
    assert!((a.limit - l2).abs() < 1e-9, "{} != {l2}", a.limit);
}

/// A window closes only after 100 ms (or twice the no-load latency, if longer) *and* 10
/// samples: a burst of samples in an instant, or a trickle, decides nothing.
#[tokio::test(start_paused = true)]
async fn a_window_needs_its_time_and_its_samples() {
    let mut a = tracking(4, 100, ms(20));
    answers(&mut a, 1000, ms(20), 4);
    assert_eq!(a.limit(), 4, "no time has passed");
    advance(ms(99)).await;
    answers(&mut a, 1, ms(20), 4);
    assert_eq!(a.limit(), 4, "99 ms");
    advance(ms(1)).await;
    answers(&mut a, 1, ms(20), 4);
    assert_eq!(a.limit(), 6, "100 ms and 1002 samples");

    advance(Duration::from_secs(5)).await;
    answers(&mut a, WINDOW_SAMPLES - 1, ms(20), 6);
    assert_eq!(a.limit(), 6, "9 samples in 5 s");
    answers(&mut a, 1, ms(20), 6);
    assert_eq!(a.limit(), 8);

    // A slow upstream (no-load 200 ms): windows of 400 ms.
    let mut a = tracking(4, 100, ms(200));
    answers(&mut a, 20, ms(200), 4);
    advance(ms(399)).await;
    answers(&mut a, 1, ms(200), 4);
    assert_eq!(a.limit(), 4);
    advance(ms(1)).await;
    answers(&mut a, 1, ms(200), 4);
    assert_eq!(a.limit(), 6);
}

/// A window's latency is the mean of the fastest nine tenths of its last 64 answers: a stalled
/// answer in ten does not make it queueing, and answers from early in the window (admitted
/// under the limit before) are forgotten once 64 newer ones are in.
#[tokio::test(start_paused = true)]
async fn a_window_is_judged_on_its_last_answers_without_the_slowest_tenth() {
    let mut a = tracking(4, 100, ms(20));
    answers(&mut a, 1, Duration::from_secs(10), 4);
    answers(&mut a, 8, ms(20), 4);
    advance(WINDOW_MIN).await;
    answers(&mut a, 1, ms(20), 4);
    assert_eq!(a.limit(), 6, "grown despite a stall in 10");

    answers(&mut a, 200, ms(60), 6);
    answers(&mut a, WINDOW_KEEP as u32 - 1, ms(20), 6);
    advance(WINDOW_MIN).await;
    answers(&mut a, 1, ms(20), 6);
    assert_eq!(a.limit(), 8, "the last 64 answers were fast");

    // A third of the last 64 queued for a service time: the mean sees it (a median would not)
    // and the cap does not grow (it would have to 11).
    let before = a.limit;
    answers(&mut a, 200, ms(20), 8);
    answers(&mut a, 42, ms(20), 8);
    answers(&mut a, 21, ms(40), 8);
    advance(WINDOW_MIN).await;
    answers(&mut a, 1, ms(40), 8);
    assert!(a.limit < before + 1.0, "{} after {before}", a.limit);
}

/// A probe that met a stall (here: every answer 400 ms) sets a yardstick under which any
/// latency looks fine; three windows much faster than it (below no-load / 1.5) and the cap
/// measures again, before its growth has gone far.
#[tokio::test(start_paused = true)]
async fn a_no_load_latency_far_above_what_windows_see_is_measured_again() {
    let mut a = tracking(2, 256, ms(400));
    for _ in 0..STALE_WINDOWS {
        assert!(!a.probing());
        // Windows last twice the no-load latency: 800 ms.
        let inflight = a.limit();
        answers(&mut a, WINDOW_SAMPLES - 1, ms(20), inflight);
        advance(ms(800)).await;
        answers(&mut a, 1, ms(20), inflight);
    }
    assert!(a.probing(), "3 windows at 20 ms against 400 ms");
    assert!(a.limit < 12.0, "grew to {}", a.limit);
    answers(&mut a, PROBE_SAMPLES as u32, ms(20), 2);
    assert_eq!(a.no_load(), ms(20));

    // Windows a little faster than no-load (noise) do not trigger it.
    let mut a = tracking(2, 256, ms(20));
    for _ in 0..20 {
        let inflight = a.limit();
        window(&mut a, ms(14), inflight).await;
        assert!(!a.probing());
    }
}

/// Drops (timeouts, failed connections) are left out of the mean; a window with at least
/// 1 drop in 20 samples counts as maximal queueing (gradient 0.5), fewer are ignored.
#[tokio::test(start_paused = true)]
async fn drops_count_as_maximal_queueing() {
    let mut a = tracking(2, 100, ms(20));
    windows(&mut a, ms(20), 6).await;
    let l0 = a.limit;
    // 1 drop in 21 samples: below 1 in 20, and the answers are fast: still growing.
    for _ in 0..20 {
        a.on_sample(Instant::now(), Sample::Answered(ms(20)), a.epoch(), 40);
    }
    advance(WINDOW_MIN).await;
    a.on_sample(Instant::now(), Sample::Dropped, a.epoch(), 40);
    assert!(a.limit > l0, "{} after {l0}", a.limit);
    let l1 = a.limit;
    // 1 in 20: target l1 / 2 + 1, halfway there.
    for _ in 0..19 {
        a.on_sample(Instant::now(), Sample::Answered(ms(20)), a.epoch(), 40);
    }
    advance(WINDOW_MIN).await;
    a.on_sample(Instant::now(), Sample::Dropped, a.epoch(), 40);
    let l2 = (l1 + l1 * 0.5 + 1.0) / 2.0;
    assert!((a.limit - l2).abs() < 1e-9, "{} != {l2}", a.limit);
    // Only drops (the upstream is down or stuck): the same.
    for _ in 0..WINDOW_SAMPLES {
        a.on_sample(Instant::now(), Sample::Dropped, a.epoch(), 40);
        advance(ms(10)).await;
    }
    assert!((a.limit - l2).abs() < 1e-9, "a window of 90 ms");
    a.on_sample(Instant::now(), Sample::Dropped, a.epoch(), 40);
    let l3 = (l2 + l2 * 0.5 + 1.0) / 2.0;
    assert!((a.limit - l3).abs() < 1e-9, "{} != {l3}", a.limit);
}

/// Which answers are latencies, which are drops and which tell nothing (issue 22, item 6: a
/// client's own requests must not steer the cap). Against a no-load latency of 20 ms: 1xx–3xx
/// are latencies, however fast; 4xx tell nothing, however slow; a 5xx is a drop when it carries
/// `Retry-After` or took at least 20 ms, and tells nothing when it was faster without one.
#[test]
fn an_answer_is_judged_by_its_status_retry_after_and_latency() {
    let no_load = ms(20);
    let status = |code| StatusCode::from_u16(code).expect("a valid status");
    let cases = [
        // (status, Retry-After, took) → verdict
        ((200, false, ms(1)), Verdict::Latency(ms(1))),
        ((200, false, ms(900)), Verdict::Latency(ms(900))),
        ((201, true, ms(30)), Verdict::Latency(ms(30))),
        ((101, false, ms(2)), Verdict::Latency(ms(2))),
        ((301, false, ms(1)), Verdict::Latency(ms(1))),
        ((304, false, ms(1)), Verdict::Latency(ms(1))),
        ((404, false, ms(1)), Verdict::Ignore),
        ((404, false, ms(900)), Verdict::Ignore),
        ((400, false, ms(20)), Verdict::Ignore),
        ((408, false, ms(20)), Verdict::Ignore),
        ((429, true, ms(1)), Verdict::Ignore),
        ((503, false, ms(1)), Verdict::Ignore),
        ((503, false, ms(19)), Verdict::Ignore),
        ((500, false, ms(1)), Verdict::Ignore),
        ((503, false, ms(20)), Verdict::Drop),
        ((503, false, ms(900)), Verdict::Drop),
        ((500, false, ms(25)), Verdict::Drop),
        ((502, false, ms(20)), Verdict::Drop),
        ((504, false, Duration::from_secs(30)), Verdict::Drop),
        ((503, true, ms(1)), Verdict::Drop),
        ((500, true, Duration::ZERO), Verdict::Drop),
        ((599, false, ms(1)), Verdict::Ignore),
        ((600, false, ms(20)), Verdict::Ignore),
        ((999, false, ms(1)), Verdict::Ignore),
    ];
    for ((code, retry_after, took), want) in cases {
        let sample = Sample::answer(status(code), retry_after, took);
        assert_eq!(
            judge(sample, no_load),
            want,
            "{code} {retry_after} {took:?}"
        );
    }
    assert_eq!(judge(Sample::Dropped, no_load), Verdict::Drop, "no answer");
}

/// A fast 404 or a fast 503 (no `Retry-After`) leaves no trace: a cap that also sees them,
/// one for every legitimate answer and at any moment of its windows (even the one that would
/// close a window), moves exactly as a cap that sees only the legitimate answers — growing,
/// then shrinking under queueing. Today's bug: every 503 was a drop, and 1 in 20 halved the cap.
#[tokio::test(start_paused = true)]
async fn fast_errors_and_client_errors_do_not_move_the_cap() {
    let not_found = Sample::answer(StatusCode::NOT_FOUND, false, ms(1));
    let unavailable = Sample::answer(StatusCode::SERVICE_UNAVAILABLE, false, ms(1));
    let mut alone = tracking(2, 100, ms(20));
    let mut steered = tracking(2, 100, ms(20));
    let latencies = [20, 20, 20, 20, 20, 20, 40, 40, 30, 60, 20, 20];
    for latency in latencies.map(ms) {
        for i in 0..WINDOW_SAMPLES {
            if i + 1 == WINDOW_SAMPLES {
                advance(WINDOW_MIN).await;
            }
            let inflight = alone.limit();
            for a in [&mut alone, &mut steered] {
                a.on_sample(
                    Instant::now(),
                    Sample::Answered(latency),
                    a.epoch(),
                    inflight,
                );
            }
            for attack in [not_found, unavailable] {
                steered.on_sample(Instant::now(), attack, steered.epoch(), inflight + 2);
            }
        }
        assert_eq!(alone.limit, steered.limit, "after a window of {latency:?}");
    }
    assert!(alone.limit > 10.0, "it grew: {}", alone.limit);
}

/// A probe takes latencies only: fast 404s, fast 503s, drops and 503s with `Retry-After` among
/// its answers do not count, so an attacker's fast answers cannot set a tiny yardstick (under
/// which every normal answer would read as queueing), nor end a probe without a latency.
#[tokio::test(start_paused = true)]
async fn a_probe_is_not_poisoned_by_answers_that_are_not_latencies() {
    let fast = [
        Sample::answer(StatusCode::NOT_FOUND, false, ms(1)),
        Sample::answer(StatusCode::SERVICE_UNAVAILABLE, false, ms(1)),
        Sample::answer(StatusCode::SERVICE_UNAVAILABLE, true, ms(1)),
        Sample::Dropped,
    ];
    let mut a = Adaptive::new(bounds(2, 100), Instant::now());
    for _ in 0..PROBE_SAMPLES {
        for attack in fast {
            a.on_sample(Instant::now(), attack, a.epoch(), 2);
        }
    }
    advance(PROBE_MAX).await;
    for attack in fast {
        a.on_sample(Instant::now(), attack, a.epoch(), 2);
    }
    assert!(a.probing(), "no latency yet, after {PROBE_MAX:?}");

    // The first probe, then a periodic one (which knows a no-load latency to judge 5xx by).
    let mut a = Adaptive::new(bounds(2, 100), Instant::now());
    for probe in 0..2 {
        assert!(a.probing());
        for _ in 0..PROBE_SAMPLES {
            answers(&mut a, 1, ms(20), 2);
            for attack in fast {
                a.on_sample(Instant::now(), attack, a.epoch(), 2);
            }
        }
        assert!(!a.probing(), "probe {probe}: ended on its 32 latencies");
        assert_eq!(a.no_load(), ms(20), "probe {probe}");
        advance(PROBE_INTERVAL + PROBE_INTERVAL / 10).await;
        answers(&mut a, WINDOW_SAMPLES, ms(20), 2);
    }
}

/// The upstream's own overload signals still shrink the cap: a 5xx with `Retry-After`, however
/// fast, or one that took at least the no-load latency is a drop, and 1 in 20 samples counts as
/// maximal queueing; a 5xx just faster than no-load without `Retry-After` is not.
#[tokio::test(start_paused = true)]
async fn slow_server_errors_and_retry_after_count_as_drops() {
    let unavailable =
        |retry_after, took| Sample::answer(StatusCode::SERVICE_UNAVAILABLE, retry_after, took);
    let cases = [
        (unavailable(false, ms(20)), true),
        (unavailable(false, ms(300)), true),
        (unavailable(true, ms(1)), true),
        (
            Sample::answer(StatusCode::INTERNAL_SERVER_ERROR, false, ms(25)),
            true,
        ),
        (unavailable(false, ms(19)), false),
    ];
    for (sample, drop) in cases {
        let mut a = tracking(2, 100, ms(20));
        windows(&mut a, ms(20), 6).await;
        let l0 = a.limit;
        answers(&mut a, WINDOW_SAMPLES + 9, ms(20), l0 as usize);
        advance(WINDOW_MIN).await;
        a.on_sample(Instant::now(), sample, a.epoch(), l0 as usize);
        if drop {
            let l1 = (l0 + l0 * 0.5 + 1.0) / 2.0;
            assert!(
                (a.limit - l1).abs() < 1e-9,
                "{sample:?}: {} != {l1}",
                a.limit
            );
        } else {
            assert_eq!(a.limit, l0, "{sample:?}: the window is still open");
            answers(&mut a, 1, ms(20), l0 as usize);
            assert!(a.limit > l0, "{sample:?}: grew on its 20 latencies");
        }
    }
}

/// However high the latency, the cap never goes below `min_inflight`, and however fast, never
/// above `max_inflight`.
#[tokio::test(start_paused = true)]
async fn stays_within_its_bounds() {
    let mut a = tracking(3, 12, ms(20));
    assert_eq!(windows(&mut a, ms(20), 20).await, 12);
    for _ in 0..(AT_MIN_WINDOWS * 3) {
        window(&mut a, Duration::from_secs(10), 12).await;
        assert!(a.limit() >= 3);
    }
    assert_eq!(a.limit(), 3);
}

/// Every 60 s (plus a jitter below 6 s) the cap pins itself at `min_inflight` to measure the
/// no-load latency again, then returns to where it was, with the new no-load latency.
#[tokio::test(start_paused = true)]
async fn probes_again_every_minute_and_resumes_where_it_was() {
    let mut a = tracking(2, 50, ms(20));
    let l0 = windows(&mut a, ms(20), 30).await;
    assert_eq!(l0, 50);
    // Up to 60 s after the first probe: no probe.
    let steps = (PROBE_INTERVAL.as_millis() / WINDOW_MIN.as_millis()) as usize - 31;
    for _ in 0..steps {
        window(&mut a, ms(20), 50).await;
        assert!(!a.probing());
    }
    // Within the next 6 s (the jitter), it probes.
    let mut waited = 0;
    while !a.probing() {
        window(&mut a, ms(20), 50).await;
        waited += 1;
        assert!(waited <= 61, "no probe within 66 s");
    }
    assert_eq!(a.limit(), 2, "pinned at min_inflight");
    answers(&mut a, PROBE_SAMPLES as u32, ms(24), 2);
    assert_eq!(a.no_load(), ms(24));
    assert_eq!(a.limit(), 50, "resumed");
}

/// A slow dependency: the upstream's no-load latency triples for good. The cap first reads it
/// as queueing and falls to `min_inflight`; after 5 windows there it measures again, learns the
/// new no-load latency and grows back.
#[tokio::test(start_paused = true)]
async fn a_cap_stuck_at_min_inflight_measures_no_load_again() {
    let mut a = tracking(2, 64, ms(20));
    windows(&mut a, ms(20), 10).await;
    let mut windows_to_probe = 0;
    while !a.probing() {
        let inflight = a.limit();
        window(&mut a, ms(60), inflight).await;
        windows_to_probe += 1;
        assert!(
            windows_to_probe < 30,
            "no probe after {windows_to_probe} windows"
        );
    }
    answers(&mut a, PROBE_SAMPLES as u32, ms(60), 2);
    assert_eq!(a.no_load(), ms(60));
    assert!(windows(&mut a, ms(60), 20).await > 30);
}

/// An upstream with `k` workers of 20 ms each and its own FIFO queue, under more load than it
/// can take, driven in 1 ms steps of paused time.
struct Model {
    /// Workers now.
    k: usize,
    /// Requests being served: (done at, epoch at admission, sent at).
    serving: Vec<(Instant, u64, Instant)>,
    /// Requests queued inside the upstream: (epoch at admission, sent at).
    queued: VecDeque<(u64, Instant)>,
}

impl Model {
    const SERVICE: Duration = Duration::from_millis(20);

    fn inflight(&self) -> usize {
        self.serving.len() + self.queued.len()
    }

    /// One millisecond: answers what is done (feeding `a`), starts queued requests on free
    /// workers, and admits new requests up to the cap (the load never lets up).
    async fn step(&mut self, a: &mut Adaptive) {
        advance(ms(1)).await;
        let now = Instant::now();
        let mut i = 0;
        while i < self.serving.len() {
            if self.serving[i].0 <= now {
                let (_, epoch, sent) = self.serving.swap_remove(i);
                let inflight = self.inflight() + 1;
                a.on_sample(now, Sample::Answered(now - sent), epoch, inflight);
            } else {
                i += 1;
            }
        }
        while self.serving.len() < self.k {
            let Some((epoch, sent)) = self.queued.pop_front() else {
                break;
            };
            self.serving.push((now + Self::SERVICE, epoch, sent));
        }
        while self.inflight() < a.limit() {
            self.queued.push_back((a.epoch(), now));
            if self.serving.len() < self.k {
                let (epoch, sent) = self.queued.pop_back().expect("just pushed");
                self.serving.push((now + Self::SERVICE, epoch, sent));
            }
        }
    }

    /// Runs for `steps` ms; returns the smallest and largest cap of the last half.
    async fn run(&mut self, a: &mut Adaptive, steps: usize) -> (usize, usize) {
        let (mut low, mut high) = (usize::MAX, 0);
        for i in 0..steps {
            self.step(a).await;
            if i >= steps / 2 {
                low = low.min(a.limit());
                high = high.max(a.limit());
            }
        }
        (low, high)
    }
}

/// Against an upstream that serves 8 at once, the cap settles near 1.2 × 8 + 1 (the tolerance
/// and the one request kept waiting); when the upstream drops to 2 workers it follows within a
/// second, near 1.2 × 2 + 1; and when the workers come back, so does the cap.
#[tokio::test(start_paused = true)]
async fn follows_an_upstreams_capacity() {
    let mut a = Adaptive::new(bounds(2, 256), Instant::now());
    let mut up = Model {
        k: 8,
        serving: Vec::new(),
        queued: VecDeque::new(),
    };
    let (low, high) = up.run(&mut a, 3000).await;
    assert!(a.no_load() == Model::SERVICE, "{:?}", a.no_load());
    assert!(
        (8..=12).contains(&low) && high <= 12,
        "k = 8: {low}..={high}"
    );

    up.k = 2;
    let mut took = 0;
    while a.limit() > 4 {
        up.step(&mut a).await;
        took += 1;
        assert!(took < 1000, "still {} after 1 s", a.limit());
    }
    let (low, high) = up.run(&mut a, 3000).await;
    assert!((2..=4).contains(&low) && high <= 4, "k = 2: {low}..={high}");

    up.k = 8;
    let (low, high) = up.run(&mut a, 3000).await;
    assert!(
        (8..=12).contains(&low) && high <= 12,
        "k = 8 again: {low}..={high}"
    );
}
