//! Driving wrk: one bounded run per load step, paced by `pace.lua`, summarised by its one
//! `LOADTEST key=value …` line.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The wrk script, written into the report directory so the run can be repeated by hand.
pub(crate) const SCRIPT: &str = include_str!("pace.lua");

/// One wrk run.
#[derive(Clone, Debug)]
pub(crate) struct Load {
    /// The URL to load.
    pub(crate) url: String,
    /// The offered rate, requests per second (split evenly over the threads).
    pub(crate) rate: f64,
    /// wrk's connection pool.
    pub(crate) connections: usize,
    /// wrk's threads (at most `connections`).
    pub(crate) threads: usize,
    /// How long wrk sends.
    pub(crate) duration: Duration,
}

/// What wrk measured in one run. Latencies in milliseconds.
#[derive(Clone, Debug, Default)]
pub(crate) struct WrkStats {
    /// Responses received.
    pub(crate) requests: u64,
    /// How long wrk ran, seconds.
    pub(crate) duration_s: f64,
    /// 2xx responses.
    pub s2xx: u64,
    /// 429 responses.
    pub s429: u64,
    /// 503 responses.
    pub s503: u64,
    /// Other statuses (502, 504, …).
    pub(crate) other: u64,
    /// Socket errors: connect, read, write and timeouts.
    pub(crate) errors: u64,
    /// Percentiles of every response (wrk's histogram): p50, p90, p99.
    pub(crate) all_ms: [f64; 3],
    /// Percentiles of the 2xx responses alone; `None` when there were none.
    pub(crate) ok_ms: Option<[f64; 3]>,
}

/// wrk's name and version, or `None` when wrk is not installed.
pub(crate) fn version() -> Result<Option<String>, String> {
    match Command::new("wrk").arg("--version").output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            // "wrk 4.1.0 [epoll] Copyright (C) 2012 Will Glozer": keep "wrk 4.1.0".
            let first = text.lines().next().unwrap_or("wrk");
            let words: Vec<&str> = first.split_whitespace().take(2).collect();
            Ok(Some(words.join(" ")))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot run wrk: {e}")),
    }
}

/// The command line of one run (also quoted in the report).
pub(crate) fn args(load: &Load, script: &Path) -> Vec<String> {
    let per_thread = load.rate / load.threads as f64;
    vec![
        format!("-t{}", load.threads),
        format!("-c{}", load.connections),
        format!("-d{}s", load.duration.as_secs()),
        // Long enough that a slow upstream shows up as latency, not as wrk timeouts.
        "--timeout".into(),
        "10s".into(),
        "-s".into(),
        script.display().to_string(),
        load.url.clone(),
        "--".into(),
        format!("{per_thread:.3}"),
    ]
}

/// Runs wrk once (bounded by `load.duration`) and parses its summary line.
pub(crate) fn run(load: &Load, script: &Path) -> Result<WrkStats, String> {
    let out = Command::new("wrk")
        .args(args(load, script))
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fail = |why: &str| {
        format!(
            "wrk {why} (exit status {}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    };
    if !out.status.success() {
        return Err(fail("failed"));
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LOADTEST "))
        .ok_or_else(|| fail("printed no LOADTEST line; is it built with LuaJIT?"))?;
    parse(line).map_err(|e| fail(&e))
}

/// Parses `key=value …` (the part after `LOADTEST `).
fn parse(line: &str) -> Result<WrkStats, String> {
    let fields: HashMap<&str, f64> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            v.parse()
                .map(|v| (k, v))
                .map_err(|_| format!("bad field {k}={v}"))
        })
        .collect::<Result<_, _>>()?;
    let get = |key: &str| {
        fields
            .get(key)
            .copied()
            .ok_or_else(|| format!("the LOADTEST line has no {key}"))
    };
    let count = |key: &str| get(key).map(|v| v as u64);
    let ms = |key: &str| get(key).map(|us| us / 1000.0);
    let ok_ms = if count("ok_n")? > 0 {
        Some([ms("ok_p50_us")?, ms("ok_p90_us")?, ms("ok_p99_us")?])
    } else {
        None
    };
    Ok(WrkStats {
        requests: count("requests")?,
        duration_s: get("duration_us")? / 1e6,
        s2xx: count("s2xx")?,
        s429: count("s429")?,
        s503: count("s503")?,
        other: count("sother")?,
        errors: count("err_connect")?
            + count("err_read")?
            + count("err_write")?
            + count("err_timeout")?,
        all_ms: [ms("all_p50_us")?, ms("all_p90_us")?, ms("all_p99_us")?],
        ok_ms,
    })
}
