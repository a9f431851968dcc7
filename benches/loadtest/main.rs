//! The load-test report: `cargo bench --bench loadtest` (see docs/loadtest.md).
//!
//! Starts a sample upstream of limited capacity ([`upstream`], shared with the overload bench) and sluice in front of it
//! (in-process, with `benches/loadtest/sluice.yaml`), then drives wrk ([`wrk`], paced by
//! `pace.lua`) at a ramp of offered loads — multiples of the configured rate limit — twice:
//! through sluice, and straight to the upstream. Each step records the rate really sent, the
//! admitted (2xx), 429 and 503 rates, latency percentiles of the admitted requests and of
//! everything, and the time requests spent inside the upstream. [`report`] writes
//! `report.html`, two SVG plots ([`chart`]) and `results.tsv` to `target/loadtest/<UTC time>/`
//! and prints a summary table.
//!
//! Everything listens on 127.0.0.1; each wrk run is bounded by `LOADTEST_DURATION`.
//! Knobs (environment variables) are listed in [`Settings::from_env`].

mod chart;
#[path = "../support/harness.rs"]
mod harness;
#[path = "../support/proxy.rs"]
mod proxy;
mod report;
#[path = "../support/svg.rs"]
mod svg;
#[path = "../support/upstream.rs"]
mod upstream;
mod wrk;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use sluice::config::Config;

use crate::harness::{utc_now, write};
use crate::proxy::Proxy;
use crate::upstream::Upstream;
use crate::wrk::{Load, WrkStats};

/// The config used unless `LOADTEST_CONFIG` names another.
const DEFAULT_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/loadtest/sluice.yaml");
/// Pause between steps, after the upstream has drained: lets token buckets refill.
const PAUSE: Duration = Duration::from_secs(1);
/// How long to wait for the upstream to drain a step's leftovers.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);

/// What the run does; every field has an environment variable.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// `LOADTEST_CONFIG`: the sluice config.
    pub(crate) config: PathBuf,
    /// `LOADTEST_PATH`: the request path.
    pub(crate) path: String,
    /// `LOADTEST_DURATION`: seconds per step.
    pub(crate) duration: Duration,
    /// `LOADTEST_STEPS`: offered load as multiples of the limit.
    pub(crate) steps: Vec<f64>,
    /// `LOADTEST_LIMIT`: the limit the steps multiply, req/s; default: the config's smallest.
    pub(crate) limit: Option<f64>,
    /// `LOADTEST_WORKERS`: requests the sample upstream works on at once.
    pub(crate) workers: usize,
    /// `LOADTEST_SERVICE_MS`: time per request in the sample upstream.
    pub(crate) service: Duration,
    /// `LOADTEST_THREADS`: wrk threads.
    pub(crate) threads: usize,
    /// `LOADTEST_POOL_MS`: wrk opens offered rate × this many connections (at least `threads`).
    pub(crate) pool: Duration,
    /// `LOADTEST_OUT`: the report directory.
    pub(crate) out: Option<PathBuf>,
}

impl Settings {
    /// Reads the knobs:
    ///
    /// | variable | default | meaning |
    /// |---|---|---|
    /// | `LOADTEST_DURATION` | 8 | seconds per step |
    /// | `LOADTEST_STEPS` | `0.5 1 2 5 10` | offered load, as multiples of the limit |
    /// | `LOADTEST_LIMIT` | the config's smallest rate limit | req/s the steps multiply |
    /// | `LOADTEST_WORKERS` | 8 | sample upstream: requests worked on at once |
    /// | `LOADTEST_SERVICE_MS` | 20 | sample upstream: ms per request |
    /// | `LOADTEST_CONFIG` | `benches/loadtest/sluice.yaml` | sluice config |
    /// | `LOADTEST_PATH` | `/api/work` | request path |
    /// | `LOADTEST_THREADS` | 2 | wrk threads |
    /// | `LOADTEST_POOL_MS` | 100 | wrk connections = offered req/s × this |
    /// | `LOADTEST_OUT` | `target/loadtest/<UTC time>` | report directory |
    pub(crate) fn from_env() -> Result<Settings, String> {
        let steps = match std::env::var("LOADTEST_STEPS") {
            Ok(text) => parse_steps(&text)?,
            Err(_) => vec![0.5, 1.0, 2.0, 5.0, 10.0],
        };
        let limit = match std::env::var("LOADTEST_LIMIT") {
            Ok(text) => Some(
                text.trim()
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| {
                        format!("LOADTEST_LIMIT must be a rate in req/s, found {text:?}")
                    })?,
            ),
            Err(_) => None,
        };
        Ok(Settings {
            config: std::env::var_os("LOADTEST_CONFIG")
                .map_or_else(|| PathBuf::from(DEFAULT_CONFIG), PathBuf::from),
            path: std::env::var("LOADTEST_PATH").unwrap_or_else(|_| "/api/work".into()),
            duration: Duration::from_secs(env_or("LOADTEST_DURATION", 8, "whole seconds ≥ 1")?),
            steps,
            limit,
            workers: env_or("LOADTEST_WORKERS", 8, "a number ≥ 1")?,
            service: Duration::from_millis(env_or("LOADTEST_SERVICE_MS", 20, "milliseconds ≥ 1")?),
            threads: env_or("LOADTEST_THREADS", 2, "a number ≥ 1")?,
            pool: Duration::from_millis(env_or("LOADTEST_POOL_MS", 100, "milliseconds ≥ 1")?),
            out: std::env::var_os("LOADTEST_OUT").map(PathBuf::from),
        })
    }

    /// The sample upstream's capacity, req/s.
    pub(crate) fn capacity(&self) -> f64 {
        self.workers as f64 / self.service.as_secs_f64()
    }
}

/// A positive integer from `name`, or `default` when unset.
fn env_or<T: FromStr + PartialOrd + From<u8>>(
    name: &str,
    default: T,
    what: &str,
) -> Result<T, String> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .ok()
            .filter(|v| *v >= T::from(1))
            .ok_or_else(|| format!("{name} must be {what}, found {text:?}")),
        Err(_) => Ok(default),
    }
}

fn parse_steps(text: &str) -> Result<Vec<f64>, String> {
    let steps: Vec<f64> = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok().filter(|v: &f64| v.is_finite() && *v > 0.0))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            format!("LOADTEST_STEPS must be positive numbers like \"0.5 1 2 5 10\", found {text:?}")
        })?;
    if steps.is_empty() {
        return Err("LOADTEST_STEPS is empty".into());
    }
    Ok(steps)
}

/// Where the load goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// wrk → sluice → sample upstream.
    Sluice,
    /// wrk → sample upstream.
    Direct,
}

impl Mode {
    /// The name in tables and the TSV.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Sluice => "sluice",
            Mode::Direct => "direct",
        }
    }
}

/// One step of the ramp.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    /// Offered load as a multiple of the limit.
    pub(crate) factor: f64,
    /// Offered load, req/s.
    pub(crate) target: f64,
    /// wrk's connections.
    pub(crate) connections: usize,
    /// wrk's threads.
    pub(crate) threads: usize,
}

/// What the sample upstream saw during a step.
#[derive(Clone, Debug, Default)]
pub(crate) struct UpstreamStats {
    /// Requests it answered.
    pub(crate) served: usize,
    /// p50 and p99 of the time requests spent inside it (waiting for a worker included), ms.
    pub(crate) ms: Option<[f64; 2]>,
}

impl UpstreamStats {
    fn from_times(mut times: Vec<Duration>) -> UpstreamStats {
        times.sort_unstable();
        let at = |p: f64| {
            let rank = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len());
            times[rank - 1].as_secs_f64() * 1000.0
        };
        let ms = (!times.is_empty()).then(|| [at(0.50), at(0.99)]);
        UpstreamStats {
            served: times.len(),
            ms,
        }
    }
}

/// One measured step.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) mode: Mode,
    pub(crate) step: Step,
    pub(crate) wrk: WrkStats,
    pub(crate) upstream: UpstreamStats,
}

impl Outcome {
    /// `n` responses per second of the step.
    pub(crate) fn per_second(&self, n: u64) -> f64 {
        n as f64 / self.wrk.duration_s.max(1e-9)
    }

    /// The rate really sent (wrk's requests/s).
    pub(crate) fn sent(&self) -> f64 {
        self.per_second(self.wrk.requests)
    }

    /// The admitted (2xx) rate.
    pub(crate) fn admitted(&self) -> f64 {
        self.per_second(self.wrk.s2xx)
    }
}

/// Everything the report needs.
#[derive(Debug)]
pub(crate) struct Run {
    /// When the run started, e.g. `2025-01-31 12:00:00 UTC`.
    pub(crate) started: String,
    /// CPUs, model, kernel.
    pub(crate) machine: String,
    /// `wrk --version`'s first line.
    pub(crate) wrk_version: String,
    pub(crate) settings: Settings,
    /// The limit the steps multiply, req/s.
    pub(crate) limit: f64,
    /// What `limit` is, for the legend: `rate limit 300 req/s`.
    pub(crate) limit_label: String,
    /// What sluice enforces, one line (limits and caps of the config).
    pub(crate) policy: String,
    /// The config sluice ran with (ports filled in).
    pub(crate) config_text: String,
    /// An example wrk command line of the run.
    pub(crate) wrk_example: String,
    pub(crate) outcomes: Vec<Outcome>,
}

fn main() -> ExitCode {
    if !harness::benched("loadtest", " (see docs/loadtest.md)") {
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadtest: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let settings = Settings::from_env()?;
    let Some(wrk_version) = wrk::version()? else {
        return Err("wrk is not installed: apt-get install -y wrk".into());
    };
    let (started, stamp) = utc_now();
    let dir = settings
        .out
        .clone()
        .unwrap_or_else(|| harness::report_dir("loadtest", &stamp));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let script = dir.join("pace.lua");
    write(&script, wrk::SCRIPT)?;

    let upstream = Upstream::start(settings.workers, settings.service)?;
    let config_text = prepare_config(&settings.config, upstream.addr)?;
    let config_path = dir.join("sluice.yaml");
    write(&config_path, &config_text)?;
    let config =
        sluice::config::from_yaml(&config_text, &config_path).map_err(|e| e.to_string())?;
    let (limit, limit_label) = match (settings.limit, smallest_limit(&config)) {
        (Some(limit), _) => (limit, format!("LOADTEST_LIMIT {limit:.0} req/s")),
        (None, Some(limit)) => (limit, format!("rate limit {limit:.0} req/s")),
        (None, None) => (
            settings.capacity(),
            "no rate limit: steps × capacity".into(),
        ),
    };
    let policy = policy(&config);
    let sluice_runtime = sluice_runtime(&config)?;
    let proxy = sluice_runtime.block_on(Proxy::start(config))?;
    let sluice_addr = proxy.addr;

    println!(
        "loadtest: sample upstream {} ({} × {} ms = {:.0} req/s), sluice {sluice_addr} ({policy})",
        upstream.addr,
        settings.workers,
        settings.service.as_millis(),
        settings.capacity()
    );
    let steps: Vec<Step> = settings
        .steps
        .iter()
        .map(|&f| step(&settings, f, limit))
        .collect();
    let mut outcomes = Vec::new();
    for (mode, addr) in [(Mode::Sluice, sluice_addr), (Mode::Direct, upstream.addr)] {
        let url = format!("http://{addr}{}", settings.path);
        for step in &steps {
            outcomes.push(measure(&settings, &upstream, &script, mode, &url, step)?);
        }
    }
    sluice_runtime.block_on(proxy.stop());
    sluice_runtime.shutdown_timeout(Duration::from_secs(2));

    let wrk_example = {
        let load = load(
            &settings,
            &format!("http://{sluice_addr}{}", settings.path),
            &steps[0],
        );
        format!("wrk {}", wrk::args(&load, Path::new("pace.lua")).join(" "))
    };
    let run = Run {
        started,
        machine: machine(),
        wrk_version,
        settings,
        limit,
        limit_label,
        policy,
        config_text,
        wrk_example,
        outcomes,
    };
    report::write(&dir, &run)?;
    println!("\n{}", report::table(&run));
    println!("report: {}", dir.join("report.html").display());
    Ok(())
}

/// Connections and threads for an offered load of `factor` × `limit`.
fn step(settings: &Settings, factor: f64, limit: f64) -> Step {
    let target = factor * limit;
    let pool = (target * settings.pool.as_secs_f64()).ceil() as usize;
    let connections = pool.max(settings.threads);
    Step {
        factor,
        target,
        connections,
        threads: settings.threads.min(connections),
    }
}

fn load(settings: &Settings, url: &str, step: &Step) -> Load {
    Load {
        url: url.to_owned(),
        rate: step.target,
        connections: step.connections,
        threads: step.threads,
        duration: settings.duration,
    }
}

/// One wrk run, after the upstream has drained the previous one.
fn measure(
    settings: &Settings,
    upstream: &Upstream,
    script: &Path,
    mode: Mode,
    url: &str,
    step: &Step,
) -> Result<Outcome, String> {
    if !upstream.wait_idle(DRAIN_LIMIT) {
        eprintln!(
            "loadtest: the sample upstream is still busy after {DRAIN_LIMIT:?}; measuring anyway"
        );
    }
    std::thread::sleep(PAUSE);
    upstream.take_times();
    println!(
        "  {:<6} {:>4}× limit = {:>6.0} req/s offered, {} connections, {} s …",
        mode.name(),
        step.factor,
        step.target,
        step.connections,
        settings.duration.as_secs()
    );
    let wrk = wrk::run(&load(settings, url, step), script)?;
    let upstream = UpstreamStats::from_times(upstream.take_times());
    Ok(Outcome {
        mode,
        step: step.clone(),
        wrk,
        upstream,
    })
}

/// The config file with `server.listen` on a free loopback port and every upstream pointed at
/// the sample upstream.
fn prepare_config(path: &Path, upstream: SocketAddr) -> Result<String, String> {
    use serde_yaml::{Mapping, Value};
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut doc: Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let root = doc
        .as_mapping_mut()
        .ok_or_else(|| format!("{}: expected a YAML mapping", path.display()))?;
    let server = root
        .entry("server".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if let Some(server) = server.as_mapping_mut() {
        server.insert("listen".into(), "127.0.0.1:0".into());
    }
    let endpoint = Value::Sequence(vec![format!("http://{upstream}").into()]);
    if let Some(upstreams) = root.get_mut("upstreams").and_then(Value::as_mapping_mut) {
        for (_, upstream) in upstreams.iter_mut() {
            if let Some(upstream) = upstream.as_mapping_mut() {
                upstream.insert("endpoints".into(), endpoint.clone());
            }
        }
    }
    let header = format!(
        "# {} as the load test ran it: listen and endpoints filled in.\n",
        path.display()
    );
    serde_yaml::to_string(&doc)
        .map(|yaml| header + &yaml)
        .map_err(|e| format!("cannot write the config back as YAML: {e}"))
}

/// The smallest rate limit of the config, req/s.
fn smallest_limit(config: &Config) -> Option<f64> {
    config
        .routes
        .iter()
        .flat_map(|r| &r.rate_limits)
        .map(|l| f64::from(l.rate.count.get()) / l.rate.per.duration().as_secs_f64())
        .min_by(f64::total_cmp)
}

/// The config's limits and caps in one line, e.g.
/// `api: 300/s burst 50; sample: 8 in flight + 16 queued (500ms)`.
fn policy(config: &Config) -> String {
    let cap = |c: &sluice::config::ConcurrencyConfig| {
        let size = match c.size {
            sluice::config::CapSize::Fixed(max) => max.to_string(),
            sluice::config::CapSize::Adaptive(a) => {
                format!("adaptive {}..{}", a.min_inflight, a.max_inflight)
            }
            sluice::config::CapSize::PerEndpoint(n) => format!("{n} per endpoint"),
        };
        format!(
            "{size} in flight + {} queued ({})",
            c.queue,
            humantime::format_duration(c.queue_timeout)
        )
    };
    let routes = config.routes.iter().flat_map(|r| {
        let limits = r
            .rate_limits
            .iter()
            .map(move |l| format!("{}: {} burst {}", r.name, l.rate, l.burst));
        limits.chain(
            r.concurrency
                .as_ref()
                .map(|c| format!("{}: {}", r.name, cap(c))),
        )
    });
    let upstreams = config.upstreams.iter().filter_map(|u| {
        u.concurrency
            .as_ref()
            .map(|c| format!("{}: {}", u.name, cap(c)))
    });
    let parts: Vec<String> = routes.chain(upstreams).collect();
    if parts.is_empty() {
        "no limits".into()
    } else {
        parts.join("; ")
    }
}

/// sluice's own runtime, of `server.workers` threads (apart from wrk's and the upstream's).
fn sluice_runtime(config: &Config) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = config.server.workers {
        builder.worker_threads(workers.get());
    }
    builder
        .thread_name("sluice")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start sluice's runtime: {e}"))
}

/// CPUs, CPU model and kernel, as far as /proc tells.
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| format!(", Linux {}", k.trim()))
        .unwrap_or_default();
    format!(
        "{}{kernel}, loopback; wrk, sluice and the sample upstream share the CPUs",
        harness::cpus()
    )
}
