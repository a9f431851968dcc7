//! The report: `results.tsv`, `offered-vs-admitted.svg`, `latency-vs-offered.svg` and a
//! self-contained `report.html` (the plots inline, the table, the setup), plus the summary
//! table printed to stdout (Markdown, ready to paste).

use std::fmt::Write as _;
use std::path::Path;

use crate::chart::{Chart, Guide, Marker, Reference, Series};
use crate::{Mode, Outcome, Run};

const SLUICE: &str = "#1f6fb4";
const DIRECT: &str = "#e8710a";
const REJECTED: &str = "#c0392b";
const GUIDE: &str = "#777";

/// Writes every file of the report into `dir`.
pub(crate) fn write(dir: &Path, run: &Run) -> Result<(), String> {
    let rates = rate_chart(run).render();
    let latency = latency_chart(run).render();
    let files = [
        ("results.tsv", tsv(run)),
        ("offered-vs-admitted.svg", rates.clone()),
        ("latency-vs-offered.svg", latency.clone()),
        ("report.html", html(run, &rates, &latency)),
    ];
    for (name, text) in files {
        crate::write(&dir.join(name), &text)?;
    }
    Ok(())
}

fn by_mode(run: &Run, mode: Mode) -> impl Iterator<Item = &Outcome> {
    run.outcomes.iter().filter(move |o| o.mode == mode)
}

fn min_target(run: &Run) -> f64 {
    run.outcomes
        .iter()
        .map(|o| o.step.target)
        .fold(f64::INFINITY, f64::min)
}

fn capacity_line(run: &Run) -> String {
    format!(
        "sample upstream: {} workers × {} ms = {:.0} req/s",
        run.settings.workers,
        run.settings.service.as_millis(),
        run.settings.capacity()
    )
}

/// (a) Offered vs admitted rate, with and without sluice; the limit and capacity as guides.
fn rate_chart(run: &Run) -> Chart {
    let points = |mode, rate: fn(&Outcome) -> f64| -> Vec<(f64, f64)> {
        by_mode(run, mode)
            .map(|o| (o.step.target, rate(o)))
            .collect()
    };
    Chart {
        id: "rates",
        title: "Offered load vs admitted rate".into(),
        subtitle: vec![capacity_line(run), format!("sluice: {}", run.policy)],
        x_label: "offered load, req/s (log scale)".into(),
        y_label: "responses per second (log scale)".into(),
        y_floor: Some(0.5 * min_target(run)),
        series: vec![
            Series {
                label: "with sluice: admitted (2xx)".into(),
                color: SLUICE,
                dashed: false,
                marker: Marker::Circle,
                points: points(Mode::Sluice, Outcome::admitted),
            },
            Series {
                label: "with sluice: rejected at once (429 + 503)".into(),
                color: REJECTED,
                dashed: false,
                marker: Marker::Triangle,
                points: points(Mode::Sluice, |o| o.per_second(o.wrk.s429 + o.wrk.s503)),
            },
            Series {
                label: "without sluice: admitted (2xx)".into(),
                color: DIRECT,
                dashed: false,
                marker: Marker::Square,
                points: points(Mode::Direct, Outcome::admitted),
            },
        ],
        references: vec![
            Reference {
                label: "offered (y = x)".into(),
                color: "#aaa",
                dash: "2 3",
                guide: Guide::Diagonal,
            },
            Reference {
                label: run.limit_label.clone(),
                color: GUIDE,
                dash: "9 4",
                guide: Guide::Horizontal(run.limit),
            },
            Reference {
                label: format!(
                    "upstream capacity {:.0} req/s (nominal)",
                    run.settings.capacity()
                ),
                color: "#333",
                dash: "3 3",
                guide: Guide::Horizontal(run.settings.capacity()),
            },
        ],
    }
}

/// (b) p50 and p99 latency of the admitted requests, with and without sluice.
fn latency_chart(run: &Run) -> Chart {
    let points = |mode, index: usize| -> Vec<(f64, f64)> {
        by_mode(run, mode)
            .filter_map(|o| o.wrk.ok_ms.map(|ms| (o.step.target, ms[index])))
            .collect()
    };
    let series = |label: &str, color, dashed, marker, mode, index| Series {
        label: label.into(),
        color,
        dashed,
        marker,
        points: points(mode, index),
    };
    Chart {
        id: "latency",
        title: "Latency of admitted requests vs offered load".into(),
        subtitle: vec![
            capacity_line(run),
            "latency of 2xx responses as the client sees them, rejections left out".into(),
        ],
        x_label: "offered load, req/s (log scale)".into(),
        y_label: "latency, ms (log scale)".into(),
        y_floor: None,
        series: vec![
            series(
                "with sluice: p50",
                SLUICE,
                false,
                Marker::Circle,
                Mode::Sluice,
                0,
            ),
            series(
                "with sluice: p99",
                SLUICE,
                true,
                Marker::Circle,
                Mode::Sluice,
                2,
            ),
            series(
                "without sluice: p50",
                DIRECT,
                false,
                Marker::Square,
                Mode::Direct,
                0,
            ),
            series(
                "without sluice: p99",
                DIRECT,
                true,
                Marker::Square,
                Mode::Direct,
                2,
            ),
        ],
        references: vec![Reference {
            label: format!("service time {} ms", run.settings.service.as_millis()),
            color: GUIDE,
            dash: "9 4",
            guide: Guide::Horizontal(run.settings.service.as_secs_f64() * 1000.0),
        }],
    }
}

fn ms(value: Option<f64>) -> String {
    match value {
        None => "–".into(),
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) if v < 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

/// A column of the summary table: its header, and how to fill its cell for an outcome.
type Column = (&'static str, fn(&Outcome) -> String);

/// The columns of the summary table.
fn columns() -> Vec<Column> {
    vec![
        ("mode", |o| o.mode.name().into()),
        ("× limit", |o| format!("{}", o.step.factor)),
        ("offered req/s", |o| format!("{:.0}", o.step.target)),
        ("sent req/s", |o| format!("{:.0}", o.sent())),
        ("2xx/s", |o| format!("{:.0}", o.admitted())),
        ("429/s", |o| format!("{:.0}", o.per_second(o.wrk.s429))),
        ("503/s", |o| format!("{:.0}", o.per_second(o.wrk.s503))),
        ("other", |o| format!("{}", o.wrk.other + o.wrk.errors)),
        ("2xx p50 ms", |o| ms(o.wrk.ok_ms.map(|m| m[0]))),
        ("2xx p99 ms", |o| ms(o.wrk.ok_ms.map(|m| m[2]))),
        ("all p99 ms", |o| ms(Some(o.wrk.all_ms[2]))),
        ("upstream p99 ms", |o| ms(o.upstream.ms.map(|m| m[1]))),
    ]
}

/// The summary as a Markdown table.
pub(crate) fn table(run: &Run) -> String {
    let columns = columns();
    let mut rows: Vec<Vec<String>> = vec![columns.iter().map(|c| c.0.to_owned()).collect()];
    rows.extend(
        run.outcomes
            .iter()
            .map(|o| columns.iter().map(|c| c.1(o)).collect()),
    );
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = line(&rows[0]);
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| match i {
            0 => "-".repeat(w + 2),
            _ => format!("{}:", "-".repeat(w + 1)),
        })
        .collect();
    out.push_str(&format!("|{}|\n", rule.join("|")));
    for row in &rows[1..] {
        out.push_str(&line(row));
    }
    out
}

/// Every measurement, one row per step, tab-separated.
fn tsv(run: &Run) -> String {
    let mut out = String::from(
        "mode\tfactor\toffered_rps\tconnections\tthreads\tduration_s\tresponses\tsent_rps\t\
         ok_rps\tr429_rps\tr503_rps\tother_status\tsocket_errors\tok_p50_ms\tok_p90_ms\t\
         ok_p99_ms\tall_p50_ms\tall_p90_ms\tall_p99_ms\tupstream_served\tupstream_p50_ms\t\
         upstream_p99_ms\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    for o in &run.outcomes {
        let w = &o.wrk;
        let ok = |i: usize| opt(w.ok_ms.map(|m| m[i]));
        let up = |i: usize| opt(o.upstream.ms.map(|m| m[i]));
        let _ = writeln!(
            out,
            "{}\t{}\t{:.1}\t{}\t{}\t{:.3}\t{}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{}\t{}\t{}\t{}\t{}\t{:.3}\t{:.3}\t{:.3}\t{}\t{}\t{}",
            o.mode.name(),
            o.step.factor,
            o.step.target,
            o.step.connections,
            o.step.threads,
            w.duration_s,
            w.requests,
            o.sent(),
            o.admitted(),
            o.per_second(w.s429),
            o.per_second(w.s503),
            w.other,
            w.errors,
            ok(0),
            ok(1),
            ok(2),
            w.all_ms[0],
            w.all_ms[1],
            w.all_ms[2],
            o.upstream.served,
            up(0),
            up(1),
        );
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html_table(run: &Run) -> String {
    let columns = columns();
    let mut out = String::from("<table>\n<tr>");
    for (name, _) in &columns {
        let _ = write!(out, "<th>{}</th>", escape(name));
    }
    out.push_str("</tr>\n");
    for o in &run.outcomes {
        let _ = write!(out, r#"<tr class="{}">"#, o.mode.name());
        for (_, cell) in &columns {
            let _ = write!(out, "<td>{}</td>", escape(&cell(o)));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

fn html(run: &Run, rates: &str, latency: &str) -> String {
    let s = &run.settings;
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sluice load test, {started}</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }}
h1 {{ margin-bottom: 0.2em; }}
.meta {{ color: #555; margin-top: 0; }}
svg {{ max-width: 100%; height: auto; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
th {{ background: #f3f3f3; }}
td:first-child, th:first-child {{ text-align: left; }}
tr.sluice td:first-child {{ color: {SLUICE}; font-weight: bold; }}
tr.direct td:first-child {{ color: {DIRECT}; font-weight: bold; }}
pre {{ background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 12px; }}
</style>
</head>
<body>
<h1>sluice load test</h1>
<p class="meta">{started} · {machine} · {wrk}</p>

<p>The same ramp of offered load — {steps} × {limit:.0} req/s, {secs} s per step — was sent
twice by wrk: through sluice to a sample upstream of limited capacity ({capacity}), and
straight to that upstream. What to look for: without sluice the upstream takes everything,
the excess waits inside it and the latency of every request grows with the load; with sluice
the admitted rate stays at the limit, the excess is answered at once with 429 (rate limit) or
503 (concurrency cap), which tell the producer to back off, and admitted requests keep the
upstream's normal latency.</p>

<h2>Offered vs admitted rate</h2>
{rates}
<p>Admitted = 2xx responses per second. The dotted diagonal is what was offered; red is what
sluice turned away, each in well under a millisecond.</p>

<h2>Latency of admitted requests</h2>
{latency}
<p>Client-side latency of 2xx responses only (wrk's own histogram mixes in the fast rejections;
see <code>all p99</code> in the table). p50 solid, p99 dashed.</p>

<h2>Results</h2>
{table}
<p><b>offered</b>: the rate wrk was paced at; <b>sent</b>: what it really sent (wrk is
closed-loop: when every connection is waiting for a slow response, fewer requests go out —
without sluice, the producer is slowed down by latency instead of being told to back off);
<b>other</b>: other statuses and socket errors; <b>all p99</b>: every response, rejections
included; <b>upstream p99</b>: time requests spent inside the sample upstream, waiting for a
worker included. Raw numbers: <code>results.tsv</code>.</p>

<h2>Setup</h2>
<ul>
<li>Sample upstream: {capacity}; more requests wait inside it (FIFO).</li>
<li>sluice (in-process, its own runtime): {policy}.</li>
<li>wrk: {threads} threads; connections = offered req/s × {pool} ms; paced by
<code>pace.lua</code> (beside this file). The first step's command:
<code>{example}</code></li>
</ul>
<p>The sluice config as run (<code>sluice.yaml</code> beside this file):</p>
<pre>{config}</pre>
<p>Repeat: <code>cargo bench --bench loadtest</code> (knobs: docs/loadtest.md).</p>
</body>
</html>
"#,
        started = escape(&run.started),
        machine = escape(&run.machine),
        wrk = escape(&run.wrk_version),
        steps = s
            .steps
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        limit = run.limit,
        secs = s.duration.as_secs(),
        capacity = escape(&capacity_line(run).replace("sample upstream: ", "")),
        table = html_table(run),
        policy = escape(&run.policy),
        threads = s.threads,
        pool = s.pool.as_millis(),
        example = escape(&run.wrk_example),
        config = escape(&run.config_text),
    )
}
