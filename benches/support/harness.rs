//! What every bench binary does around its measurement: the `--bench` gate, a report
//! directory stamped with the time, the description of the machine it ran on, writing files
//! with the path in the error. Shared by the loadtest, overload, adaptive and deferred benches
//! (`#[path = "../support/harness.rs"]`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// True when `cargo bench` runs the binary (it passes `--bench`). `cargo test --benches` does
/// not, and must not start a run of minutes: then it prints how to run `name` and is false.
pub(crate) fn benched(name: &str, how: &str) -> bool {
    let benched = std::env::args().any(|a| a == "--bench");
    if !benched {
        println!("{name}: run it with `cargo bench --bench {name}`{how}");
    }
    benched
}

/// A multi-threaded runtime of `threads` workers for a bench that runs sluice, its upstreams
/// and its clients in one process.
pub(crate) fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}

pub(crate) fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `path` relative to Cargo.toml (where the benches write their committed figures).
pub(crate) fn in_repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `$CARGO_TARGET_DIR/<bench>/<stamp>`, or `target/` beside Cargo.toml in its place: where a
/// run's report goes unless told otherwise.
pub(crate) fn report_dir(bench: &str, stamp: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| in_repo("target"), PathBuf::from)
        .join(bench)
        .join(stamp)
}

/// CPUs and CPU model, as far as /proc tells: `2 CPUs (…)`.
pub(crate) fn cpus() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs ({model})")
}

/// The time now, as `2025-01-31 12:00:00 UTC` and as `20250131-120000` (for a directory).
pub(crate) fn utc_now() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    let (y, mo, d) = civil_from_days(days as i64);
    (
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02} UTC"),
        format!("{y:04}{mo:02}{d:02}-{h:02}{m:02}{s:02}"),
    )
}

/// Year, month, day of a count of days since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
