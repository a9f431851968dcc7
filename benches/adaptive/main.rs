//! Adaptive vs fixed cap when the upstream's capacity changes: `cargo bench --bench adaptive`
//! (about 45 s once built; `--profile dev` runs a debug build, as the committed figure was).
//! Writes `docs/adaptive-capacity-change.svg` and prints a table.
//!
//! The upstream serves K requests at once, 20 ms each, and queues the rest inside itself
//! (`benches/support/capacity.rs`); K is 8 for 6 s, 2 for 8 s, then 8 again for 6 s. 32
//! closed-loop clients keep it overloaded through sluice (a 503 makes a client wait 50 ms). The
//! same run is made twice, with `max_inflight: 8` (right for K = 8) and with
//! `adaptive: {min_inflight: 2, max_inflight: 64}`, both with `queue: 2, queue_timeout: 1s`.
//! Everything runs in this process on 127.0.0.1.

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

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use capacity::{drive, quantile, Load, Phase, Trace, Workers};
use proxy::Proxy;
use timeline::{Line, Panel};

/// The upstream's service time.
const SERVICE: Duration = Duration::from_millis(20);
/// Width of the buckets the admitted p90 is computed over.
const BUCKET: Duration = Duration::from_millis(500);
/// Where the figure goes, relative to Cargo.toml.
const FIGURE: &str = "docs/adaptive-capacity-change.svg";

const PHASES: [Phase; 3] = [
    Phase {
        length: Duration::from_secs(6),
        workers: 8,
    },
    Phase {
        length: Duration::from_secs(8),
        workers: 2,
    },
    Phase {
        length: Duration::from_secs(6),
        workers: 8,
    },
];

const LOAD: Load = Load {
    clients: 32,
    backoff: Duration::from_millis(50),
};

/// The two caps compared.
const CAPS: [(&str, &str); 2] = [
    (
        "adaptive 2..64",
        "{ adaptive: { min_inflight: 2, max_inflight: 64 }, queue: 2, queue_timeout: 1s }",
    ),
    (
        "fixed 8",
        "{ max_inflight: 8, queue: 2, queue_timeout: 1s }",
    ),
];

fn main() -> ExitCode {
    if !harness::benched("adaptive", "") {
        return ExitCode::SUCCESS;
    }
    let runtime = match harness::runtime(2) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("adaptive: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut traces = Vec::new();
    for (name, cap) in CAPS {
        eprintln!("adaptive: running {name} ({:?})", total());
        match runtime.block_on(run(cap)) {
            Ok(trace) => traces.push((name, trace)),
            Err(e) => {
                eprintln!("adaptive: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    print_table(&traces);
    let path = harness::in_repo(FIGURE);
    if let Err(e) = harness::write(&path, &figure(&traces)) {
        eprintln!("adaptive: {e}");
        return ExitCode::FAILURE;
    }
    println!("adaptive: wrote {}", path.display());
    ExitCode::SUCCESS
}

fn total() -> Duration {
    PHASES.iter().map(|p| p.length).sum()
}

/// One run with `concurrency` on the upstream.
async fn run(concurrency: &str) -> Result<Trace, String> {
    let workers = Workers::start(PHASES[0].workers, SERVICE).await;
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0 }}\n\
         upstreams:\n  api:\n    endpoints: [{}]\n    concurrency: {concurrency}\n\
         routes: [{{ name: all, upstream: api }}]\n",
        workers.endpoint()
    );
    let proxy = Proxy::from_yaml(&yaml, "adaptive.yaml").await?;
    let cap = cap_of(proxy.shared.clone());
    let trace = drive(&proxy.url("/"), &workers, LOAD, &PHASES, cap).await;
    proxy.stop().await;
    Ok(trace)
}

/// Reads the upstream cap in force.
fn cap_of(shared: Arc<sluice::runtime::Shared>) -> impl Fn() -> usize {
    move || {
        shared
            .runtime()
            .upstream_cap("api")
            .map_or(0, |c| c.limit())
    }
}

/// The settled part of each phase (its first 2 s left out), per run, as a Markdown table.
fn print_table(traces: &[(&str, Trace)]) {
    println!(
        "| cap | phase | cap in force (median) | admitted p50 / p90 | admitted | 503s | process stalls (max timer lateness) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, trace) in traces {
        for (i, phase) in PHASES.iter().enumerate() {
            let start = trace.phase_starts[i];
            let (from, to) = (start + Duration::from_secs(2), start + phase.length);
            let caps = trace.caps_in(from, to);
            let latencies = trace.latencies_in(from, to);
            let ms =
                |q| quantile(&latencies, q).map_or(f64::NAN, |d: Duration| d.as_secs_f64() * 1e3);
            let seconds = (to - from).as_secs_f64();
            println!(
                "| {name} | K = {} | {} | {:.0} / {:.0} ms | {:.0}/s (capacity {:.0}/s) | {:.0}/s | {:.0} ms |",
                phase.workers,
                quantile(&caps, 0.5).unwrap_or(0),
                ms(0.5),
                ms(0.9),
                latencies.len() as f64 / seconds,
                phase.workers as f64 / SERVICE.as_secs_f64(),
                trace.rejected_in(from, to) as f64 / seconds,
                trace.lateness_in(from, to).as_secs_f64() * 1e3,
            );
        }
    }
}

/// The two panels: the cap in force over time (with the upstream's K), and the admitted p90
/// per half second.
fn figure(traces: &[(&str, Trace)]) -> String {
    const COLORS: [&str; 2] = ["#1f77b4", "#d62728"];
    let mut k = Vec::new();
    let mut at = 0.0;
    for phase in PHASES {
        let end = at + phase.length.as_secs_f64();
        k.push((at, phase.workers as f64));
        k.push((end, phase.workers as f64));
        at = end;
    }
    let mut caps = vec![Line {
        label: "upstream capacity K".into(),
        color: "#777",
        dash: "5 4",
        width: 1.5,
        points: k,
    }];
    let mut p90 = vec![Line {
        label: "service time (20 ms)".into(),
        color: "#777",
        dash: "5 4",
        width: 1.5,
        points: vec![(0.0, ms(SERVICE)), (at, ms(SERVICE))],
    }];
    for ((name, trace), color) in traces.iter().zip(COLORS) {
        caps.push(Line {
            label: format!("{name}: cap in force"),
            color,
            dash: "none",
            width: 2.0,
            points: trace
                .caps
                .iter()
                .map(|&(t, c)| (t.as_secs_f64(), c as f64))
                .collect(),
        });
        p90.push(Line {
            label: format!("{name}: admitted p90"),
            color,
            dash: "none",
            width: 2.0,
            points: p90_per_bucket(trace),
        });
    }
    timeline::render(
        "Adaptive vs fixed cap when the upstream loses capacity",
        &[
            format!(
                "Upstream: K workers × {} ms, FIFO queue inside; K = 8 → 2 → 8. {} closed-loop clients (50 ms after a 503).",
                SERVICE.as_millis(),
                LOAD.clients
            ),
            format!(
                "sluice ({} build): upstream cap, queue 2, queue_timeout 1s. benches/adaptive",
                if cfg!(debug_assertions) { "debug" } else { "release" }
            ),
        ],
        "time (s)",
        at,
        &[
            Panel {
                title: "Cap in force (sluice_concurrency_limit)".into(),
                y_label: "requests in flight".into(),
                lines: caps,
            },
            Panel {
                title: format!("Admitted requests: p90 latency per {} ms", BUCKET.as_millis()),
                y_label: "p90 (ms)".into(),
                lines: p90,
            },
        ],
    )
}

/// (bucket middle in s, p90 in ms) of the requests answered in each bucket.
fn p90_per_bucket(trace: &Trace) -> Vec<(f64, f64)> {
    trace
        .p90s(Duration::ZERO, total(), BUCKET)
        .into_iter()
        .enumerate()
        .map(|(i, p90)| ((BUCKET * i as u32 + BUCKET / 2).as_secs_f64(), ms(p90)))
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
