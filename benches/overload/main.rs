//! Overload goodput, side by side: `cargo bench --bench overload` (needs nginx and haproxy on
//! the PATH; a missing one is skipped; about 3 minutes once built). See docs/performance.md, "Overload:
//! goodput against NGINX and HAProxy".
//!
//! An upstream of 8 workers × 20 ms (400 req/s, [`upstream`]) is offered 1×, 2×, 5× and 10× its
//! capacity by an open-loop generator ([`load`]), 10% of the requests to `/critical` and 90% to
//! `/batch`, through each proxy in turn ([`targets`]): sluice with a fixed cap of 8 + a
//! priority queue, sluice with an adaptive cap, NGINX (`limit_req` at 400 r/s + `limit_conn`
//! 8; no priorities) and HAProxy (server `maxconn` 8 + its queue ordered by
//! `set-priority-class`). Levels are run one after the other; within a level the targets take
//! turns (in a rotated order), so that drift of the shared machine hits them alike.
//!
//! For every level and target it measures goodput (2xx within the SLO, 100 ms, per second),
//! the share of critical and of low-priority requests served within the SLO, the latency of
//! admitted requests (p50, p99) and of rejections (how fast the excess is told to back off).
//! It prints a Markdown table, writes `results.tsv`, `table.md`, the configs and logs to
//! `target/overload/<UTC time>/`, and three figures (goodput, critical success, rejection
//! latency against the offered load) to `docs/overload-{goodput,critical,backoff}.svg` and the
//! run's directory.
//!
//! Everything listens on 127.0.0.1. Each step is bounded (`OVERLOAD_DURATION` s of load, every
//! request at most 2 s), the proxies are stopped at the end and live at most 20 minutes even if
//! the bench is killed. Knobs: [`Settings::from_env`].

#[path = "../support/harness.rs"]
mod harness;
mod load;
mod plot;
#[path = "../support/svg.rs"]
mod svg;
mod targets;
#[path = "../support/upstream.rs"]
mod upstream;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use harness::{utc_now, write};
use load::{quantile, Answer, Load, Outcome, Pool};
use plot::{Chart, Marker, Reference, Series};
use svg::number;
use targets::{Kind, Policy, Target};
use upstream::Upstream;

/// How long the upstream gets to drain a step's leftovers.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// Idle time between steps, after the drain.
const PAUSE: Duration = Duration::from_millis(500);
/// A step whose generator sent its requests later than this (p99) ran on a stalled machine:
/// it is measured once more.
const STALLED: Duration = Duration::from_millis(20);
/// Unrecorded load at 1× per target before the first level: connections, the adaptive cap's
/// first probe.
const WARM_UP: Duration = Duration::from_secs(2);

/// What the run does; every field has an environment variable.
#[derive(Clone, Debug)]
struct Settings {
    levels: Vec<f64>,
    duration: Duration,
    workers: usize,
    service: Duration,
    critical: f64,
    slo: Duration,
    queue: usize,
    queue_timeout: Duration,
    adaptive: (usize, usize),
    connections: usize,
    kinds: Vec<Kind>,
    seed: u64,
    out: Option<PathBuf>,
    figures: PathBuf,
    sluice: PathBuf,
}

/// One step: a target at a level.
#[derive(Debug)]
struct Measured {
    kind: Kind,
    level: f64,
    /// Offered req/s.
    rate: f64,
    seconds: f64,
    critical: Counts,
    low: Counts,
    /// 2xx latencies, sorted.
    admitted: Vec<Duration>,
    /// Critical 2xx latencies, sorted.
    admitted_critical: Vec<Duration>,
    /// 429 and 503 latencies, sorted.
    rejections: Vec<Duration>,
    upstream_served: usize,
    upstream_peak: usize,
    lateness_p99: Duration,
    lateness_max: Duration,
    /// sluice's `sluice_concurrency_limit` after the step.
    cap: Option<f64>,
    /// sluice's `sluice_requests_total` during the step, by (route, outcome).
    reasons: BTreeMap<(String, String), f64>,
}

/// How the requests of one priority ended.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    due: usize,
    ok: usize,
    /// 2xx within the SLO.
    good: usize,
    s429: usize,
    s503: usize,
    /// Other statuses (502, 504, …).
    other: usize,
    timeouts: usize,
    failed: usize,
    unsent: usize,
}

fn main() -> ExitCode {
    if !harness::benched("overload", " (see README)") {
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overload: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let settings = Settings::from_env()?;
    let (started, stamp) = utc_now();
    let dir = settings
        .out
        .clone()
        .unwrap_or_else(|| harness::report_dir("overload", &stamp));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the generator's runtime: {e}"))?;

    let upstream = Upstream::start(settings.workers, settings.service)?;
    let capacity = settings.capacity();
    let policy = Policy {
        upstream: upstream.addr,
        workers: settings.workers,
        capacity: capacity.round() as u32,
        queue: settings.queue,
        queue_timeout: settings.queue_timeout,
        adaptive: settings.adaptive,
    };
    let load_before = loadavg();
    println!(
        "overload: upstream {} ({} workers × {} ms = {capacity:.0} req/s); levels {:?}× for {} s \
         each; {:.0}% critical; SLO {} ms; load average {load_before}",
        upstream.addr,
        settings.workers,
        settings.service.as_millis(),
        settings.levels,
        settings.duration.as_secs(),
        settings.critical * 100.0,
        settings.slo.as_millis(),
    );

    let mut running = Vec::new();
    for &kind in &settings.kinds {
        if let Some(program) = kind.program() {
            if !on_path(program) {
                eprintln!(
                    "overload: skipping {}: {program} is not installed",
                    kind.label()
                );
                continue;
            }
        }
        let target = Target::start(kind, &policy, &dir, &settings.sluice)?;
        let ready = runtime.block_on(load::ready(target.addr, Duration::from_secs(10)));
        if !ready {
            return Err(format!(
                "{} did not answer 200 within 10 s; see {}",
                kind.label(),
                dir.join(format!("{}.log", kind.key())).display()
            ));
        }
        println!(
            "  {:<22} {} ({})",
            kind.label(),
            target.addr,
            target.config.display()
        );
        let pool = runtime
            .block_on(Pool::connect(target.addr, settings.connections))
            .map_err(|e| format!("{}: {e}", kind.label()))?;
        running.push((target, pool));
    }
    if running.is_empty() {
        return Err("no target to measure".into());
    }

    for (_, pool) in &running {
        let warm = Load {
            rate: capacity,
            duration: WARM_UP,
            critical_share: settings.critical,
            seed: settings.seed ^ 0xFFFF,
        };
        runtime.block_on(pool.run(&warm))?;
        upstream.wait_idle(DRAIN_LIMIT);
    }

    let mut results = Vec::new();
    let mut retried = 0;
    for (i, &level) in settings.levels.iter().enumerate() {
        let n = running.len();
        for k in 0..n {
            let (target, pool) = &mut running[(k + i) % n];
            let mut measured = step(&runtime, &settings, &upstream, target, pool, level, i)?;
            println!("{}", progress(&measured, &settings));
            if measured.lateness_p99 > STALLED {
                // The machine stalled the generator (and so probably the proxy and the
                // upstream too): measure once more, and keep the less disturbed of the two.
                let again = step(&runtime, &settings, &upstream, target, pool, level, i)?;
                println!(
                    "{} (again: the first was stalled)",
                    progress(&again, &settings)
                );
                retried += 1;
                if again.lateness_p99 < measured.lateness_p99 {
                    measured = again;
                }
            }
            results.push(measured);
        }
    }
    drop(running);
    let load_after = loadavg();

    let table = table(&results, &settings);
    let headline = headline(&results, &settings);
    let meta = format!(
        "{started}; {}; {}; load average {load_before} before, {load_after} after; \
         {retried} of {} steps measured twice (generator late p99 > {} ms)",
        machine(),
        versions(),
        results.len(),
        STALLED.as_millis()
    );
    println!("\n{meta}\n\n{table}\n{headline}");
    write(
        &dir.join("table.md"),
        &format!("{meta}\n\n{table}\n{headline}"),
    )?;
    write(&dir.join("results.tsv"), &tsv(&results))?;
    for (name, svg) in figures(&results, &settings) {
        write(&dir.join(name), &svg)?;
        let path = settings.figures.join(name);
        write(&path, &svg)?;
        println!("overload: wrote {}", path.display());
    }
    println!("overload: results in {}", dir.display());
    Ok(())
}

/// One target at one level, after the upstream has drained the previous step.
fn step(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
    upstream: &Upstream,
    target: &mut Target,
    pool: &Pool,
    level: f64,
    index: usize,
) -> Result<Measured, String> {
    if !upstream.wait_idle(DRAIN_LIMIT) {
        eprintln!("overload: the upstream is still busy after {DRAIN_LIMIT:?}; measuring anyway");
    }
    std::thread::sleep(PAUSE);
    if let Err(e) = runtime.block_on(pool.wait_open(Duration::from_secs(5))) {
        eprintln!("overload: {}: {e}; measuring anyway", target.kind.label());
    }
    upstream.take_peak();
    upstream.take_served();
    let rate = level * settings.capacity();
    let load = Load {
        rate,
        duration: settings.duration,
        critical_share: settings.critical,
        // The same sequence of priorities for every target at a level.
        seed: settings.seed.wrapping_add(index as u64),
    };
    let metrics = || {
        target
            .admin
            .and_then(|admin| runtime.block_on(load::text(admin, "/metrics")))
    };
    let before = metrics();
    let outcome = runtime.block_on(pool.run(&load))?;
    let after = metrics();
    let cap = after.as_deref().and_then(|metrics| {
        metrics
            .lines()
            .find(|l| l.starts_with("sluice_concurrency_limit{") && l.contains("upstream=\"api\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    });
    let mut reasons = outcomes(after.as_deref().unwrap_or(""));
    for (key, count) in outcomes(before.as_deref().unwrap_or("")) {
        if let Some(now) = reasons.get_mut(&key) {
            *now -= count;
        }
    }
    reasons.retain(|_, n| *n > 0.0);
    if !target.alive() {
        return Err(format!("{} exited during the run", target.kind.label()));
    }
    let mut measured = Measured::new(
        target.kind,
        level,
        rate,
        settings,
        outcome,
        upstream.take_served(),
        upstream.take_peak(),
        cap,
    );
    measured.reasons = reasons;
    Ok(measured)
}

/// `sluice_requests_total` by (route, outcome), shadow series left out.
fn outcomes(metrics: &str) -> BTreeMap<(String, String), f64> {
    let label = |line: &str, name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let end = start + line[start..].find('"')?;
        Some(line[start..end].to_owned())
    };
    metrics
        .lines()
        .filter(|l| l.starts_with("sluice_requests_total{") && !l.contains("shadow="))
        .filter_map(|l| {
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some(((label(l, "route")?, label(l, "outcome")?), count))
        })
        .collect()
}

// === impl Settings ===

impl Settings {
    /// Reads the knobs:
    ///
    /// | variable | default | meaning |
    /// |---|---|---|
    /// | `OVERLOAD_LEVELS` | `1 2 5 10` | offered load, multiples of the upstream's capacity |
    /// | `OVERLOAD_DURATION` | `8` | seconds of load per level and target (1..=60) |
    /// | `OVERLOAD_WORKERS` | `8` | upstream: requests served at once |
    /// | `OVERLOAD_SERVICE_MS` | `20` | upstream: ms per request |
    /// | `OVERLOAD_CRITICAL` | `0.1` | share of critical requests |
    /// | `OVERLOAD_SLO_MS` | `100` | a 2xx counts as goodput within this |
    /// | `OVERLOAD_QUEUE` | `16` | sluice `queue`, NGINX `limit_req` burst |
    /// | `OVERLOAD_QUEUE_TIMEOUT_MS` | `50` | sluice `queue_timeout`, HAProxy `timeout queue` |
    /// | `OVERLOAD_ADAPTIVE` | `2 64` | the adaptive cap's `min_inflight` and `max_inflight` |
    /// | `OVERLOAD_CONNECTIONS` | `512` | the generator's keep-alive connections per target |
    /// | `OVERLOAD_TARGETS` | `sluice sluice-adaptive nginx haproxy` | which, in this order |
    /// | `OVERLOAD_SEED` | `1` | seeds the priority draw |
    /// | `OVERLOAD_OUT` | `target/overload/<UTC time>` | the run's directory |
    /// | `OVERLOAD_FIGURES` | `docs` | where the two SVGs are (over)written |
    /// | `SLUICE_BIN` | the bench's own build of `sluice` | the sluice executable |
    fn from_env() -> Result<Settings, String> {
        let levels = match std::env::var("OVERLOAD_LEVELS") {
            Ok(text) => numbers(&text, "OVERLOAD_LEVELS")?,
            Err(_) => vec![1.0, 2.0, 5.0, 10.0],
        };
        let adaptive = match std::env::var("OVERLOAD_ADAPTIVE") {
            Ok(text) => match numbers(&text, "OVERLOAD_ADAPTIVE")?[..] {
                [min, max] if min >= 1.0 && max >= min => (min as usize, max as usize),
                _ => {
                    return Err(format!(
                        "OVERLOAD_ADAPTIVE must be two numbers like \"2 64\", found {text:?}"
                    ))
                }
            },
            Err(_) => (2, 64),
        };
        let kinds = match std::env::var("OVERLOAD_TARGETS") {
            Ok(text) => text
                .split_whitespace()
                .map(|k| {
                    Kind::from_key(k).ok_or_else(|| {
                        format!("OVERLOAD_TARGETS: unknown target {k:?} (sluice, sluice-adaptive, nginx, haproxy)")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            Err(_) => Kind::ALL.to_vec(),
        };
        let critical: f64 = env_or("OVERLOAD_CRITICAL", 0.1)?;
        if !(0.0..=1.0).contains(&critical) {
            return Err(format!(
                "OVERLOAD_CRITICAL must be in 0..=1, found {critical}"
            ));
        }
        let duration: u64 = env_or("OVERLOAD_DURATION", 8)?;
        if !(1..=60).contains(&duration) {
            return Err(format!(
                "OVERLOAD_DURATION must be 1..=60 s, found {duration}"
            ));
        }
        let positive = |name: &str, v: u64| {
            if v == 0 {
                Err(format!("{name} must be at least 1"))
            } else {
                Ok(v)
            }
        };
        Ok(Settings {
            levels,
            duration: Duration::from_secs(duration),
            workers: positive("OVERLOAD_WORKERS", env_or("OVERLOAD_WORKERS", 8)?)? as usize,
            service: Duration::from_millis(positive(
                "OVERLOAD_SERVICE_MS",
                env_or("OVERLOAD_SERVICE_MS", 20)?,
            )?),
            critical,
            slo: Duration::from_millis(positive(
                "OVERLOAD_SLO_MS",
                env_or("OVERLOAD_SLO_MS", 100)?,
            )?),
            queue: env_or("OVERLOAD_QUEUE", 16)?,
            queue_timeout: Duration::from_millis(positive(
                "OVERLOAD_QUEUE_TIMEOUT_MS",
                env_or("OVERLOAD_QUEUE_TIMEOUT_MS", 50)?,
            )?),
            adaptive,
            connections: positive("OVERLOAD_CONNECTIONS", env_or("OVERLOAD_CONNECTIONS", 512)?)?
                as usize,
            kinds,
            seed: env_or("OVERLOAD_SEED", 1)?,
            out: std::env::var_os("OVERLOAD_OUT").map(PathBuf::from),
            figures: std::env::var_os("OVERLOAD_FIGURES").map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"),
                PathBuf::from,
            ),
            sluice: std::env::var_os("SLUICE_BIN").map_or_else(
                || PathBuf::from(env!("CARGO_BIN_EXE_sluice")),
                PathBuf::from,
            ),
        })
    }

    /// The upstream's capacity, req/s.
    fn capacity(&self) -> f64 {
        self.workers as f64 / self.service.as_secs_f64()
    }
}

fn env_or<T: FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("{name}: cannot read {text:?}")),
        Err(_) => Ok(default),
    }
}

fn numbers(text: &str, name: &str) -> Result<Vec<f64>, String> {
    let values: Vec<f64> = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok().filter(|v: &f64| v.is_finite() && *v > 0.0))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("{name} must be positive numbers, found {text:?}"))?;
    if values.is_empty() {
        return Err(format!("{name} is empty"));
    }
    Ok(values)
}

// === impl Measured ===

impl Measured {
    #[allow(clippy::too_many_arguments)]
    fn new(
        kind: Kind,
        level: f64,
        rate: f64,
        settings: &Settings,
        outcome: Outcome,
        upstream_served: usize,
        upstream_peak: usize,
        cap: Option<f64>,
    ) -> Measured {
        let (mut critical, mut low) = (Counts::default(), Counts::default());
        let (mut admitted, mut admitted_critical, mut rejections) =
            (Vec::new(), Vec::new(), Vec::new());
        for r in &outcome.records {
            let counts = if r.critical { &mut critical } else { &mut low };
            counts.due += 1;
            match r.answer {
                Answer::Status(s) if (200..300).contains(&s) => {
                    counts.ok += 1;
                    if r.latency <= settings.slo {
                        counts.good += 1;
                    }
                    admitted.push(r.latency);
                    if r.critical {
                        admitted_critical.push(r.latency);
                    }
                }
                Answer::Status(429) => {
                    counts.s429 += 1;
                    rejections.push(r.latency);
                }
                Answer::Status(503) => {
                    counts.s503 += 1;
                    rejections.push(r.latency);
                }
                Answer::Status(_) => counts.other += 1,
                Answer::Timeout => counts.timeouts += 1,
                Answer::Failed => counts.failed += 1,
                Answer::Unsent => counts.unsent += 1,
            }
        }
        admitted.sort_unstable();
        admitted_critical.sort_unstable();
        rejections.sort_unstable();
        Measured {
            kind,
            level,
            rate,
            seconds: settings.duration.as_secs_f64(),
            critical,
            low,
            admitted,
            admitted_critical,
            rejections,
            upstream_served,
            upstream_peak,
            lateness_p99: outcome.lateness_p99,
            lateness_max: outcome.lateness_max,
            cap,
            reasons: BTreeMap::new(),
        }
    }

    /// 2xx within the SLO per second.
    fn goodput(&self) -> f64 {
        (self.critical.good + self.low.good) as f64 / self.seconds
    }

    fn rejected_per_s(&self) -> f64 {
        self.rejections.len() as f64 / self.seconds
    }

    fn errors(&self) -> usize {
        self.critical.errors() + self.low.errors()
    }
}

impl Counts {
    /// The share served within the SLO, %.
    fn success(&self) -> f64 {
        if self.due == 0 {
            return f64::NAN;
        }
        self.good as f64 / self.due as f64 * 100.0
    }

    fn errors(&self) -> usize {
        self.other + self.timeouts + self.failed + self.unsent
    }
}

fn ms(d: Option<Duration>) -> String {
    match d {
        None => "–".into(),
        Some(d) if d < Duration::from_millis(10) => format!("{:.1}", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.0}", d.as_secs_f64() * 1e3),
    }
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v >= 99.95 || v == 0.0 {
        format!("{v:.0}%")
    } else {
        format!("{v:.1}%")
    }
}

/// One line per step while the run goes.
fn progress(m: &Measured, s: &Settings) -> String {
    let mut cap = m.cap.map(|c| format!(", cap {c:.0}")).unwrap_or_default();
    for ((route, outcome), n) in &m.reasons {
        let _ = write!(cap, ", {route} {outcome} {n}");
    }
    format!(
        "  {:>4}× {:<22} goodput {:>4.0}/s ({:>5.1}% of capacity), critical {:>6}, low {:>6}, \
         admitted p99 {:>4} ms, rejections p50 {:>4} ms, errors {}, upstream peak {}{cap}; \
         generator late p99 {} / max {} ms",
        m.level,
        m.kind.label(),
        m.goodput(),
        m.goodput() / s.capacity() * 100.0,
        pct(m.critical.success()),
        pct(m.low.success()),
        ms(quantile(&m.admitted, 0.99)),
        ms(quantile(&m.rejections, 0.5)),
        m.errors(),
        m.upstream_peak,
        ms(Some(m.lateness_p99)),
        ms(Some(m.lateness_max)),
    )
}

/// The Markdown table of every step, levels in order, targets in `OVERLOAD_TARGETS` order.
fn table(results: &[Measured], s: &Settings) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| offered | target | priorities | goodput (2xx ≤ {slo} ms) | critical ≤ {slo} ms | low ≤ {slo} ms | admitted p50 / p99 | critical p99 | rejected | rejection p50 / p99 | errors | max at upstream | generator late p99 |",
        slo = s.slo.as_millis()
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &level in &s.levels {
        for &kind in &s.kinds {
            let Some(m) = results.iter().find(|m| m.level == level && m.kind == kind) else {
                continue;
            };
            let _ = writeln!(
                t,
                "| {}× ({:.0}/s) | {} | {} | {:.0}/s ({:.0}%) | {} | {} | {} / {} ms | {} ms | {:.0}/s | {} / {} ms | {} | {} | {} ms |",
                number(level),
                m.rate,
                kind.label(),
                if kind.has_priority() { "yes" } else { "**none**" },
                m.goodput(),
                m.goodput() / s.capacity() * 100.0,
                pct(m.critical.success()),
                pct(m.low.success()),
                ms(quantile(&m.admitted, 0.5)),
                ms(quantile(&m.admitted, 0.99)),
                ms(quantile(&m.admitted_critical, 0.99)),
                m.rejected_per_s(),
                ms(quantile(&m.rejections, 0.5)),
                ms(quantile(&m.rejections, 0.99)),
                m.errors(),
                m.upstream_peak,
                ms(Some(m.lateness_p99)),
            );
        }
    }
    t
}

/// At the highest level: the targets, and sluice's ratios to each peer.
fn headline(results: &[Measured], s: &Settings) -> String {
    let Some(&top) = s.levels.iter().max_by(|a, b| a.total_cmp(b)) else {
        return String::new();
    };
    let at = |kind| results.iter().find(|m| m.level == top && m.kind == kind);
    let mut h = String::new();
    let service3 = s.service * 3;
    for sluice in [Kind::SluiceFixed, Kind::SluiceAdaptive] {
        let Some(m) = at(sluice) else { continue };
        let p99 = quantile(&m.admitted, 0.99);
        let _ = writeln!(
            h,
            "At {}×, {}: critical {} (target ≥ 99%: {}), admitted p99 {} ms (target ≤ 3 × {} ms: {}).",
            number(top),
            sluice.label(),
            pct(m.critical.success()),
            if m.critical.success() >= 99.0 { "met" } else { "missed" },
            ms(p99),
            s.service.as_millis(),
            if p99.is_some_and(|p| p <= service3) { "met" } else { "missed" },
        );
        for peer in [Kind::Nginx, Kind::Haproxy] {
            let Some(p) = at(peer) else { continue };
            let _ = writeln!(
                h,
                "  vs {}: goodput {:.2}×, critical success {:+.1} points, rejection p50 {} vs {} ms.",
                peer.label(),
                m.goodput() / p.goodput().max(1e-9),
                m.critical.success() - p.critical.success(),
                ms(quantile(&m.rejections, 0.5)),
                ms(quantile(&p.rejections, 0.5)),
            );
        }
    }
    h
}

fn tsv(results: &[Measured]) -> String {
    let mut t = String::from(
        "target\tlevel\toffered_rps\tseconds\tcrit_due\tcrit_ok\tcrit_good\tlow_due\tlow_ok\tlow_good\ts429\ts503\tother\ttimeouts\tfailed\tunsent\tgoodput_rps\tcrit_success_pct\tlow_success_pct\tadm_p50_ms\tadm_p90_ms\tadm_p99_ms\tadm_max_ms\tcrit_p99_ms\trej_p50_ms\trej_p99_ms\tupstream_served\tupstream_peak\tlate_p99_ms\tlate_max_ms\tcap\tsluice_outcomes\n",
    );
    let f = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1e3);
    for m in results {
        let both = |f: fn(&Counts) -> usize| f(&m.critical) + f(&m.low);
        let _ = writeln!(
            t,
            "{}\t{}\t{:.0}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.1}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{:.3}\t{:.3}\t{}\t{}\t{:.2}\t{:.2}\t{}\t{}",
            m.kind.key(),
            m.level,
            m.rate,
            m.seconds,
            m.critical.due,
            m.critical.ok,
            m.critical.good,
            m.low.due,
            m.low.ok,
            m.low.good,
            both(|c| c.s429),
            both(|c| c.s503),
            both(|c| c.other),
            both(|c| c.timeouts),
            both(|c| c.failed),
            both(|c| c.unsent),
            m.goodput(),
            m.critical.success(),
            m.low.success(),
            f(quantile(&m.admitted, 0.5)),
            f(quantile(&m.admitted, 0.9)),
            f(quantile(&m.admitted, 0.99)),
            f(m.admitted.last().copied()),
            f(quantile(&m.admitted_critical, 0.99)),
            f(quantile(&m.rejections, 0.5)),
            f(quantile(&m.rejections, 0.99)),
            m.upstream_served,
            m.upstream_peak,
            m.lateness_p99.as_secs_f64() * 1e3,
            m.lateness_max.as_secs_f64() * 1e3,
            m.cap.map_or_else(|| "-".into(), |c| format!("{c:.0}")),
            if m.reasons.is_empty() {
                "-".to_owned()
            } else {
                m.reasons
                    .iter()
                    .map(|((route, outcome), n)| format!("{route}:{outcome}={n}"))
                    .collect::<Vec<_>>()
                    .join(",")
            },
        );
    }
    t
}

/// The style of each target's line: colour, dashes, width, marker. sluice's fixed cap is drawn
/// first and widest, so that it shows around a peer's line that lies on it.
fn style(kind: Kind) -> (&'static str, &'static str, f64, Marker) {
    match kind {
        Kind::SluiceFixed => ("#1f77b4", "none", 4.5, Marker::Circle),
        Kind::SluiceAdaptive => ("#17becf", "6 3", 2.0, Marker::Diamond),
        Kind::Nginx => ("#2ca02c", "none", 2.0, Marker::Square),
        Kind::Haproxy => ("#d62728", "none", 2.0, Marker::Triangle),
    }
}

/// The figures: goodput, critical success and rejection latency against the offered load.
fn figures(results: &[Measured], s: &Settings) -> [(&'static str, String); 3] {
    let series = |value: fn(&Measured) -> f64| -> Vec<Series> {
        s.kinds
            .iter()
            .filter_map(|&kind| {
                let points: Vec<(f64, f64)> = results
                    .iter()
                    .filter(|m| m.kind == kind)
                    .map(|m| (m.level, value(m)))
                    .filter(|(_, v)| v.is_finite())
                    .collect();
                let (color, dash, width, marker) = style(kind);
                (!points.is_empty()).then(|| Series {
                    label: if kind.has_priority() {
                        kind.label().to_owned()
                    } else {
                        format!("{} (no priorities)", kind.label())
                    },
                    color,
                    dash,
                    width,
                    marker,
                    points,
                })
            })
            .collect()
    };
    let subtitle = vec![
        format!(
            "Upstream: {} workers × {} ms ({:.0} req/s). Open-loop load: {:.0}% /critical, {:.0}% /batch,",
            s.workers,
            s.service.as_millis(),
            s.capacity(),
            s.critical * 100.0,
            100.0 - s.critical * 100.0,
        ),
        format!(
            "{} s per level and target. sluice: cap {} (or adaptive {}..{}), queue {}, queue_timeout {} ms.",
            s.duration.as_secs(),
            s.workers,
            s.adaptive.0,
            s.adaptive.1,
            s.queue,
            s.queue_timeout.as_millis(),
        ),
        format!(
            "HAProxy: maxconn {}, timeout queue {} ms. NGINX: limit_req {:.0} r/s burst {}, limit_conn {}.",
            s.workers,
            s.queue_timeout.as_millis(),
            s.capacity(),
            s.queue,
            s.workers
        ),
        "One worker each; shared 2-core VM. benches/overload".to_owned(),
    ];
    let capacity = s.capacity();
    let goodput = Chart {
        title: format!(
            "Goodput: 2xx answered within {} ms, per second",
            s.slo.as_millis()
        ),
        subtitle: subtitle.clone(),
        y_label: "goodput (req/s)".into(),
        y_max: (capacity * 1.25 / 50.0).ceil() * 50.0,
        y_step: if capacity > 400.0 { 100.0 } else { 50.0 },
        levels: s.levels.clone(),
        series: series(Measured::goodput),
        references: vec![Reference {
            label: format!("upstream capacity ({capacity:.0} req/s)"),
            y: capacity,
        }],
    };
    let critical = Chart {
        title: format!(
            "Critical requests answered 2xx within {} ms",
            s.slo.as_millis()
        ),
        subtitle: subtitle.clone(),
        y_label: "critical success (%)".into(),
        y_max: 100.0,
        y_step: 10.0,
        levels: s.levels.clone(),
        series: series(|m| m.critical.success()),
        references: vec![Reference {
            label: "99%".into(),
            y: 99.0,
        }],
    };
    let rejection_p50 =
        |m: &Measured| quantile(&m.rejections, 0.5).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    let slowest = results
        .iter()
        .map(rejection_p50)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let backoff = Chart {
        title: "How fast the excess is told to back off: median time to a 429/503".into(),
        subtitle: critical.subtitle.clone(),
        y_label: "rejection p50 (ms)".into(),
        y_max: ((slowest * 1.15 / 10.0).ceil() * 10.0).max(10.0),
        y_step: if slowest > 50.0 { 10.0 } else { 5.0 },
        levels: s.levels.clone(),
        series: series(rejection_p50),
        references: Vec::new(),
    };
    [
        ("overload-goodput.svg", plot::render(&goodput)),
        ("overload-critical.svg", plot::render(&critical)),
        ("overload-backoff.svg", plot::render(&backoff)),
    ]
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The peers' versions, as they print them.
fn versions() -> String {
    let first_line = |program: &str, arg: &str| {
        let out = std::process::Command::new(program).arg(arg).output().ok()?;
        // nginx prints its version on stderr, HAProxy on stdout.
        let text = [out.stdout, out.stderr].concat();
        String::from_utf8_lossy(&text)
            .lines()
            .next()
            .map(str::to_owned)
    };
    let nginx = first_line("nginx", "-v")
        .and_then(|l| l.rsplit('/').next().map(|v| format!("nginx {v}")))
        .unwrap_or_else(|| "no nginx".into());
    let haproxy = first_line("haproxy", "-v")
        .and_then(|l| l.split_whitespace().nth(2).map(|v| format!("HAProxy {v}")))
        .unwrap_or_else(|| "no HAProxy".into());
    format!("{nginx}, {haproxy}")
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPUs and CPU model, as far as /proc tells.
fn machine() -> String {
    format!(
        "{}, loopback; generator, upstream and proxy share them",
        harness::cpus()
    )
}
