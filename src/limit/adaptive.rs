//! Adaptive concurrency: the size of a cap that follows the upstream's latency
//! (`concurrency.adaptive: {min_inflight, max_inflight}`).
//!
//! Where it sits: inside a [`ConcurrencyLimit`](super::ConcurrencyLimit), under its lock. The
//! limit asks [`Adaptive::limit`] for the cap in force, and feeds it one [`Sample`] per forwarded
//! request (the class of the upstream's answer and the time from sending the request until its
//! head, or that no answer came), which `pipeline` hands to the request's permit. Nothing here
//! runs on its own: no task, no timer; every decision is made when a sample arrives, so an idle
//! cap costs nothing.
//!
//! # The algorithm: a gradient controller with a measured no-load latency
//!
//! Little's law links the three numbers: an upstream that serves `K` requests at once, each in
//! `T` when it does not queue, answers `L` requests in flight (`L > K`) in `T × L / K`. So the
//! *gradient* `T / latency` times `L` is `K`: one window of samples tells how many requests the
//! upstream really serves at once, and the cap jumps there instead of creeping (as Vegas' fixed
//! steps would). Per window:
//!
//! - `gradient = clamp(TOLERANCE × no_load / latency, 0.5, 1)`;
//! - gradient 1 (latency within [`TOLERANCE`] of no-load): **grow** by `√limit` — but only if
//!   the window was busy (in flight reached half the limit at least once), so that a lightly
//!   loaded upstream does not drift the cap up to `max_inflight` untested;
//! - gradient < 1 (queueing): **shrink** towards `limit × gradient + 1`, smoothed
//!   (`limit ← ½ limit + ½ target`). The `+ 1` keeps one request waiting inside the upstream so
//!   it never idles between answers; the 0.5 floor halves the target at most, so one noisy
//!   window cannot collapse the cap.
//!
//! With the tolerance, the cap settles at about `1.2 × K + 1`, where the upstream's latency is
//! about 1.2 × its no-load latency (plus one service time / K).
//!
//! A window's latency and the no-load latency are the same statistic, a **trimmed mean**: the
//! mean of the fastest nine tenths of the latencies. The mean is what Little's law speaks of, and
//! it sees queueing even when only some requests wait (a median is blind until half of them
//! do); leaving out the slowest tenth keeps a few stalled requests (a GC pause, a busy core)
//! from reading as queueing or from inflating the yardstick. Using one statistic for both
//! matters: a median no-load latency against mean window latencies would read a skewed latency
//! distribution as permanent queueing.
//!
//! # The no-load latency: measured, not guessed
//!
//! A minimum of the latencies seen under load creeps up with the load itself (every request
//! queues a little, so the "minimum" is a loaded latency, so the cap grows, so it queues more),
//! the trap Envoy's filter avoids by measuring it. So does this module: a **probe** pins the cap
//! at `min_inflight`, waits for the requests already in flight to drain, and takes the trimmed
//! mean of the first [`PROBE_SAMPLES`] latencies of requests admitted during the probe (or of
//! those it has after [`PROBE_MAX`], if at least one). Then the cap returns to where it was. A
//! probe runs:
//!
//! - when the cap is created;
//! - every [`PROBE_INTERVAL`] plus a random jitter of up to a tenth of it (so that instances in
//!   front of one upstream do not probe in step);
//! - when the cap has sat at `min_inflight` for [`AT_MIN_WINDOWS`] windows in a row: the
//!   upstream may have become slower for good (a slow dependency), which the old no-load
//!   latency reads as endless queueing;
//! - when [`STALE_WINDOWS`] windows in a row were faster than the no-load latency divided by
//!   [`STALE_FACTOR`]: the last probe met a stall (of the machine, or of the upstream), or the
//!   upstream became faster; either way its yardstick would let the cap grow to `max_inflight`.
//!
//! # Windows
//!
//! A window closes with the first latency or drop after it has lasted `max(100 ms, 2 ×
//! no-load)` and holds at least [`WINDOW_SAMPLES`] of them (answers that tell nothing, below,
//! do not count), so every window spans a few round trips of the requests it judges. Its
//! latency is the trimmed mean of its last [`WINDOW_KEEP`] latencies (the freshest: they
//! reflect the limit set by the previous window best). A window in which at least 1 in 20 is a
//! drop is treated as maximal queueing (gradient 0.5).
//!
//! # Which answers teach the cap
//!
//! The cap is shared by every client of the route or upstream, so no client may steer it with
//! requests it chooses: a fast 404 or a fast 503 costs the upstream nothing, and says nothing
//! about its capacity. [`judge`] makes each [`Sample`] one of three things, when it arrives
//! (only the cap knows its no-load latency):
//!
//! - a **latency**: an answer of 1xx, 2xx or 3xx, the upstream doing its work;
//! - a **drop**, overload without a usable latency (a timeout's is the configured timeout, a
//!   refused connection's is nothing): no answer at all (timeout, connection failure, broken
//!   exchange), or a 5xx that carries `Retry-After` (the upstream says it is overloaded) or took
//!   at least the no-load latency (it did the work, or waited for it, and failed);
//! - **nothing**: a 4xx (the client's doing: a wrong path, a bad request, its own rate limit),
//!   and a 5xx without `Retry-After` faster than the no-load latency (an error the upstream
//!   answers without working: overload makes answers slower, not faster).
//!
//! A probe takes latencies only: a drop has no latency to give it, and answers that tell
//! nothing cannot shrink its yardstick (a probe that took mostly fast 404s would set a no-load
//! latency under which every normal answer reads as queueing).

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::config::AdaptiveConfig;

/// What one forwarded request tells an adaptive cap: the upstream's answer, or that it gave
/// none. Made with [`Sample::answer`] from what the upstream answered, or [`Sample::Dropped`];
/// the cap judges it when it arrives ([`judge`], see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sample {
    /// An answer of 1xx, 2xx or 3xx, this long after the request was sent: a latency.
    Answered(Duration),
    /// An answer of 5xx, this long after the request was sent: a drop if it took at least the
    /// no-load latency or carried `Retry-After`, else nothing.
    ServerError {
        /// From sending the request to the answer's head.
        took: Duration,
        /// The answer carried `Retry-After`: the upstream says it is overloaded.
        retry_after: bool,
    },
    /// An answer of 4xx (or of a status no RFC defines, 600–999): the client's doing, nothing
    /// about the upstream's capacity.
    ClientError,
    /// No answer: the upstream timed out, could not be reached, or broke the exchange. A drop.
    Dropped,
}

/// What a cap makes of a [`Sample`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// The upstream's latency for a request it served.
    Latency(Duration),
    /// A sign of overload, without a usable latency.
    Drop,
    /// Nothing either way.
    Ignore,
}

/// The state of one adaptive cap. Not synchronised: it lives under its limit's lock.
pub(crate) struct Adaptive {
    /// The bounds the cap stays within.
    config: AdaptiveConfig,
    /// The cap between probes, unrounded so that small steps accumulate; always within the
    /// bounds.
    limit: f64,
    /// The upstream's latency without queueing: the trimmed mean of the last probe. Zero until
    /// the first probe has ended (and unused until then).
    no_load: Duration,
    /// Probing or tracking.
    phase: Phase,
    /// The latencies of the current probe's answers, in `..probe_answers`.
    probe: [Duration; PROBE_SAMPLES],
    /// How many answers the current probe has.
    probe_answers: usize,
    /// Changes when a probe starts and when it ends. A permit carries the epoch it was admitted
    /// in, so that a probe counts only requests admitted under its low cap.
    epoch: u64,
    /// The window being filled (while tracking).
    window: Window,
    /// Consecutive windows that ended with the cap at `min_inflight`.
    at_min: u32,
    /// Consecutive windows much faster than the no-load latency (see [`STALE_FACTOR`]).
    faster: u32,
    /// When the next periodic probe is due.
    next_probe: Instant,
    /// Source of the probe interval's jitter.
    jitter: RandomState,
}

/// Whether the no-load latency is being measured.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// The cap is pinned at `min_inflight` until enough answers are in.
    Probe {
        /// When the probe started (for [`PROBE_MAX`]).
        since: Instant,
        /// The cap to return to afterwards.
        resume: f64,
    },
    /// The cap follows the gradient window by window.
    Track,
}

/// Samples gathered since the last update.
#[derive(Clone)]
struct Window {
    /// When the window opened.
    start: Instant,
    /// The latencies of the last [`WINDOW_KEEP`] answers, a ring: answer `n` is at
    /// `n % WINDOW_KEEP`.
    recent: [Duration; WINDOW_KEEP],
    /// Latencies.
    answers: u32,
    /// Drops.
    drops: u32,
    /// The most requests in flight seen at a sample: was the cap used at all?
    peak_inflight: usize,
}

/// The latency, relative to no-load, still counted as "no queueing": natural variance and the
/// proxy's own overhead must not read as overload. Envoy's filter uses a 25% buffer, Netflix's
/// Gradient2 a 1.5 tolerance; 1.2 keeps the upstream's queue short while ignoring noise.
pub(crate) const TOLERANCE: f64 = 1.2;
/// The lowest gradient: a window can at most halve the target.
const GRADIENT_MIN: f64 = 0.5;
/// Weight of the new target when the cap shrinks (see the module docs).
const SMOOTHING: f64 = 0.5;
/// The shortest window.
pub(crate) const WINDOW_MIN: Duration = Duration::from_millis(100);
/// The longest window, however slow the upstream.
const WINDOW_MAX: Duration = Duration::from_secs(10);
/// The fewest samples a window is judged on.
pub(crate) const WINDOW_SAMPLES: u32 = 10;
/// The answers of a window whose trimmed mean is its latency: the last ones.
pub(crate) const WINDOW_KEEP: usize = 64;
/// A window with at least one drop in this many samples counts as maximal queueing.
const DROP_ONE_IN: u32 = 20;
/// Answers a probe takes the trimmed mean of.
pub(crate) const PROBE_SAMPLES: usize = 32;
/// A probe that has lasted this long ends with the answers it has, if any.
pub(crate) const PROBE_MAX: Duration = Duration::from_secs(1);
/// Time between the end of one probe and the next periodic one (plus up to a tenth of jitter).
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(60);
/// Windows in a row at `min_inflight` after which the no-load latency is measured again.
pub(crate) const AT_MIN_WINDOWS: u32 = 5;
/// A window whose latency is below the no-load latency divided by this is much faster than
/// "no load" can be; noise rarely makes one, and never [`STALE_WINDOWS`] in a row.
const STALE_FACTOR: f64 = 1.5;
/// Windows in a row much faster than the no-load latency after which it is measured again.
pub(crate) const STALE_WINDOWS: u32 = 3;

// === impl Sample ===

impl Sample {
    /// What an answer with `status` tells a cap: `retry_after` when it carried `Retry-After`,
    /// `took` from sending the request to the answer's head. For the pipeline, and for the
    /// deliverer of deferred tasks, which send requests through the same caps.
    pub fn answer(status: StatusCode, retry_after: bool, took: Duration) -> Sample {
        if status.is_server_error() {
            Sample::ServerError { took, retry_after }
        } else if status.is_informational() || status.is_success() || status.is_redirection() {
            Sample::Answered(took)
        } else {
            Sample::ClientError
        }
    }
}

/// What a cap whose no-load latency is `no_load` makes of `sample` (see the module docs).
fn judge(sample: Sample, no_load: Duration) -> Verdict {
    match sample {
        Sample::Answered(latency) => Verdict::Latency(latency),
        Sample::ServerError { took, retry_after } if retry_after || took >= no_load => {
            Verdict::Drop
        }
        // Faster than the upstream answers when it works without queueing: it did not work.
        Sample::ServerError { .. } | Sample::ClientError => Verdict::Ignore,
        Sample::Dropped => Verdict::Drop,
    }
}

// === impl Adaptive ===

impl Adaptive {
    /// A cap at `min_inflight`, starting with a probe.
    pub(crate) fn new(config: AdaptiveConfig, now: Instant) -> Self {
        let min = config.min_inflight.get() as f64;
        Adaptive {
            config,
            limit: min,
            no_load: Duration::ZERO,
            phase: Phase::Probe {
                since: now,
                resume: min,
            },
            probe: [Duration::ZERO; PROBE_SAMPLES],
            probe_answers: 0,
            epoch: 0,
            window: Window::new(now),
            at_min: 0,
            faster: 0,
            next_probe: now,
            jitter: RandomState::new(),
        }
    }

    /// The cap in force: `min_inflight` while probing, else the current estimate rounded down.
    pub(crate) fn limit(&self) -> usize {
        let (min, max) = self.bounds();
        match self.phase {
            Phase::Probe { .. } => min,
            // `as` saturates; the estimate is within the bounds anyway.
            Phase::Track => (self.limit as usize).clamp(min, max),
        }
    }

    /// The epoch a request admitted now belongs to.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The no-load latency learnt by the last probe; zero before the first has ended.
    #[cfg(test)]
    pub(crate) fn no_load(&self) -> Duration {
        self.no_load
    }

    /// True while a probe pins the cap at `min_inflight`.
    #[cfg(test)]
    pub(crate) fn probing(&self) -> bool {
        matches!(self.phase, Phase::Probe { .. })
    }

    /// Learns from one forwarded request: admitted in epoch `admitted`, with `inflight`
    /// requests holding a slot of the cap now (itself included). May change [`Self::limit`].
    pub(crate) fn on_sample(
        &mut self,
        now: Instant,
        sample: Sample,
        admitted: u64,
        inflight: usize,
    ) {
        let verdict = judge(sample, self.no_load);
        match self.phase {
            Phase::Probe { .. } => self.probe_sample(now, verdict, admitted),
            Phase::Track => {
                // Not even a reason to close the window.
                if verdict == Verdict::Ignore {
                    return;
                }
                self.window.add(verdict, inflight);
                if self.window.is_due(now, self.no_load) {
                    self.update(now);
                }
            }
        }
    }

    /// A sample while probing: only latencies of requests admitted under the probe's cap count.
    fn probe_sample(&mut self, now: Instant, verdict: Verdict, admitted: u64) {
        let Phase::Probe { since, resume } = self.phase else {
            return;
        };
        if let (Verdict::Latency(latency), true) = (verdict, admitted == self.epoch) {
            if let Some(slot) = self.probe.get_mut(self.probe_answers) {
                *slot = latency;
                self.probe_answers += 1;
            }
        }
        let answers = self.probe_answers;
        let done = answers >= PROBE_SAMPLES
            || (answers > 0 && now.saturating_duration_since(since) >= PROBE_MAX);
        if !done {
            return;
        }
        // Trimmed: a stalled request or two (a GC pause, a busy core) must not set the
        // yardstick of the next minute.
        if let Some(latency) = trimmed_mean(&mut self.probe[..answers]) {
            self.no_load = latency;
        }
        self.limit = resume;
        self.phase = Phase::Track;
        self.epoch = self.epoch.wrapping_add(1);
        self.window = Window::new(now);
        self.at_min = 0;
        self.faster = 0;
        // Up to a tenth of the interval later, at random.
        let jitter_ms = self.jitter.hash_one(self.epoch) % (PROBE_INTERVAL.as_millis() as u64 / 10);
        self.next_probe = now + PROBE_INTERVAL + Duration::from_millis(jitter_ms);
    }

    /// Closes the window: moves the cap by the gradient, and starts a probe when one is due.
    fn update(&mut self, now: Instant) {
        let mut window = std::mem::replace(&mut self.window, Window::new(now));
        let latency = window.latency();
        let gradient = match latency {
            Some(latency) if window.drops * DROP_ONE_IN < window.samples() => {
                let ratio =
                    TOLERANCE * self.no_load.as_secs_f64() / latency.as_secs_f64().max(1e-9);
                ratio.clamp(GRADIENT_MIN, 1.0)
            }
            // Drops (or nothing but drops): treated as maximal queueing.
            _ => GRADIENT_MIN,
        };
        let limit = self.limit;
        if gradient >= 1.0 {
            // No queueing: probe for more capacity, if the cap is in use at all.
            if window.peak_inflight as f64 >= limit / 2.0 {
                self.limit = limit + limit.sqrt();
            }
        } else {
            let target = limit * gradient + 1.0;
            self.limit = (1.0 - SMOOTHING) * limit + SMOOTHING * target;
        }
        let (min, max) = self.bounds();
        self.limit = self.limit.clamp(min as f64, max as f64);

        self.at_min = if self.limit() <= min {
            self.at_min + 1
        } else {
            0
        };
        let much_faster =
            latency.is_some_and(|l| l.as_secs_f64() * STALE_FACTOR < self.no_load.as_secs_f64());
        self.faster = if much_faster { self.faster + 1 } else { 0 };
        if self.at_min >= AT_MIN_WINDOWS || self.faster >= STALE_WINDOWS || now >= self.next_probe {
            self.start_probe(now);
        }
    }

    /// Pins the cap at `min_inflight` and measures the no-load latency again.
    fn start_probe(&mut self, now: Instant) {
        self.phase = Phase::Probe {
            since: now,
            resume: self.limit,
        };
        self.probe_answers = 0;
        self.epoch = self.epoch.wrapping_add(1);
        self.at_min = 0;
        self.faster = 0;
    }

    fn bounds(&self) -> (usize, usize) {
        (
            self.config.min_inflight.get(),
            self.config.max_inflight.get(),
        )
    }
}

impl fmt::Debug for Adaptive {
    /// What it has learnt, without the sample buffers.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adaptive")
            .field("limit", &self.limit)
            .field("no_load", &self.no_load)
            .field("phase", &self.phase)
            .field("epoch", &self.epoch)
            .field("window_samples", &self.window.samples())
            .field("at_min", &self.at_min)
            .field("faster", &self.faster)
            .finish()
    }
}

// === impl Window ===

impl Window {
    fn new(start: Instant) -> Self {
        Window {
            start,
            recent: [Duration::ZERO; WINDOW_KEEP],
            answers: 0,
            drops: 0,
            peak_inflight: 0,
        }
    }

    fn add(&mut self, verdict: Verdict, inflight: usize) {
        match verdict {
            Verdict::Latency(latency) => {
                self.recent[self.answers as usize % WINDOW_KEEP] = latency;
                self.answers = self.answers.saturating_add(1);
            }
            Verdict::Drop => self.drops = self.drops.saturating_add(1),
            // Leaves no trace, not even in `peak_inflight`.
            Verdict::Ignore => return,
        }
        self.peak_inflight = self.peak_inflight.max(inflight);
    }

    fn samples(&self) -> u32 {
        self.answers.saturating_add(self.drops)
    }

    /// The trimmed mean of the last answers; `None` without any.
    fn latency(&mut self) -> Option<Duration> {
        let kept = (self.answers as usize).min(WINDOW_KEEP);
        trimmed_mean(&mut self.recent[..kept])
    }

    /// Long enough (a few round trips) and with enough samples to be judged.
    fn is_due(&self, now: Instant, no_load: Duration) -> bool {
        let length = no_load.saturating_mul(2).clamp(WINDOW_MIN, WINDOW_MAX);
        self.samples() >= WINDOW_SAMPLES && now.saturating_duration_since(self.start) >= length
    }
}

/// The mean of the fastest nine tenths (rounded up) of `latencies`, which it sorts; `None`
/// when empty.
fn trimmed_mean(latencies: &mut [Duration]) -> Option<Duration> {
    latencies.sort_unstable();
    let kept = latencies.len().saturating_mul(9).div_ceil(10);
    let total: Duration = latencies.get(..kept)?.iter().sum();
    // `kept` ≤ 64: the conversion cannot fail.
    Some(total / u32::try_from(kept).ok().filter(|&n| n > 0)?)
}

#[cfg(test)]
mod tests;
