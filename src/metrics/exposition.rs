//! The two text formats `GET /metrics` speaks, which one a scraper asked for, and the
//! conversion from the one prometheus-client writes to the other.
//!
//! prometheus-client writes OpenMetrics 1.0 only. Scrapers that read only the Prometheus text
//! format 0.0.4 (older Prometheus servers, many agents, `promtool check metrics`) misread it:
//! a counter's `# TYPE` and `# HELP` lines name the family (`sluice_requests`) while its samples
//! are `sluice_requests_total`, so they see untyped samples without help. 0.0.4 is therefore
//! the default, and is derived from prometheus-client's output by [`prometheus_text`], which
//! differs from it in exactly these points:
//!
//! | OpenMetrics 1.0 | text format 0.0.4 |
//! |---|---|
//! | counter metadata names the family: `# TYPE x counter`, samples `x_total` | metadata names the sample: `# TYPE x_total counter` |
//! | `info` family `x`, sample `x_info` | a gauge named `x_info` |
//! | `stateset`, `unknown` and other types | `gauge` (stateset), `untyped` (the rest) |
//! | `# UNIT` lines | none (dropped) |
//! | `# EOF` ends the exposition | the body ends it (dropped) |
//! | `_created` samples of counters, histograms and summaries | none (dropped) |
//! | exemplars after a sample (`… # {trace_id="…"} 1`) | none (dropped) |
//! | timestamps in seconds (float) | timestamps in milliseconds (integer) |
//! | `# HELP` escapes `\\`, `\n` and `\"` | escapes `\\` and `\n` only |
//!
//! Label sets, values (`+Inf`, `NaN`, …) and the histogram samples (`_bucket` with `le`, `_sum`,
//! `_count`) are written the same in both and copied as they are.

use std::collections::HashMap;
use std::fmt::Write as _;

use http::header::ACCEPT;
use http::HeaderMap;

/// A text exposition format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text format 0.0.4: the default.
    Prometheus,
    /// OpenMetrics 1.0 text, when the scraper's `Accept` asks for it.
    OpenMetrics,
}

// === impl Format ===

impl Format {
    /// The format a request's `Accept` fields ask for: OpenMetrics when they name
    /// `application/openmetrics-text` with a quality above 0 and at least that of `text/plain`
    /// (Prometheus sends `application/openmetrics-text;version=1.0.0,…,text/plain;version=0.0.4;
    /// q=0.5,*/*;q=0.1`); 0.0.4 otherwise, including without `Accept` and for `*/*`. The
    /// `version` parameter is not compared: 1.0.0 is the OpenMetrics there is.
    pub(crate) fn negotiate(headers: &HeaderMap) -> Format {
        let mut openmetrics = 0.0_f32;
        let mut text = 0.0_f32;
        let ranges = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','));
        for range in ranges {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let quality = parts
                .filter_map(|p| p.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                // An unreadable weight counts as 0: the range is not acceptable.
                .map_or(1.0, |(_, q)| q.trim().parse::<f32>().unwrap_or(0.0));
            if media.eq_ignore_ascii_case("application/openmetrics-text") {
                openmetrics = openmetrics.max(quality);
            } else if media.eq_ignore_ascii_case("text/plain") {
                text = text.max(quality);
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics 1.0 text exposition (see the module docs
/// for what changes). Lines it cannot read are copied as they are.
pub(crate) fn prometheus_text(openmetrics: &str) -> String {
    // prometheus-client writes `# HELP` before `# TYPE`, and the name in `# HELP` depends on
    // the type: look the types up first.
    let types: HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + openmetrics.len() / 8);
    // The family whose samples follow: its name and OpenMetrics type.
    let mut family: (&str, &str) = ("", "unknown");
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = types.get(name).copied().unwrap_or("unknown");
            out.push_str("# HELP ");
            push_name(&mut out, name, kind);
            out.push(' ');
            push_help(&mut out, help);
            out.push('\n');
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            family = (name, kind);
            out.push_str("# TYPE ");
            push_name(&mut out, name, kind);
            out.push(' ');
            out.push_str(prometheus_type(kind));
            out.push('\n');
        } else if line.starts_with('#') || line.is_empty() {
            // `# UNIT` has no 0.0.4 equivalent; `# EOF`: a 0.0.4 body ends where it ends.
            continue;
        } else {
            push_sample(&mut out, line, family);
        }
    }
    out
}

/// The 0.0.4 name of the family `name` of OpenMetrics type `kind`: the name its samples have.
fn push_name(out: &mut String, name: &str, kind: &str) {
    out.push_str(name);
    match kind {
        "counter" => out.push_str("_total"),
        "info" => out.push_str("_info"),
        _ => {}
    }
}

/// The 0.0.4 type of an OpenMetrics type.
fn prometheus_type(kind: &str) -> &'static str {
    match kind {
        "counter" => "counter",
        "gauge" | "info" | "stateset" => "gauge",
        "histogram" => "histogram",
        "summary" => "summary",
        _ => "untyped",
    }
}

/// A `# HELP` text with OpenMetrics' `\"` unescaped (0.0.4 knows only `\\` and `\n`).
fn push_help(out: &mut String, help: &str) {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('"')) => {
                out.push('"');
                chars.next();
            }
            ('\\', Some(next)) => {
                out.push('\\');
                out.push(next);
                chars.next();
            }
            _ => out.push(c),
        }
    }
}

/// A sample line in 0.0.4: without `_created` samples, exemplars and second timestamps.
fn push_sample(out: &mut String, line: &str, (family, kind): (&str, &str)) {
    let Some((series, rest)) = split_series(line) else {
        out.push_str(line);
        out.push('\n');
        return;
    };
    let name = series.split('{').next().unwrap_or(series);
    let created = name.strip_prefix(family) == Some("_created");
    if created && matches!(kind, "counter" | "histogram" | "summary") {
        return;
    }
    // What follows the series: ` value [timestamp] [# exemplar]`. Values and timestamps hold no
    // `#`, so the first one starts the exemplar.
    let rest = rest.split('#').next().unwrap_or("");
    let mut fields = rest.split_whitespace();
    out.push_str(series);
    if let Some(value) = fields.next() {
        out.push(' ');
        out.push_str(value);
    }
    if let Some(seconds) = fields.next() {
        match seconds.parse::<f64>() {
            Ok(s) if s.is_finite() => {
                // Writing into a String cannot fail.
                let _ = write!(out, " {}", (s * 1000.0).round() as i64);
            }
            // Not a timestamp sluice can read: left out rather than misread.
            _ => {}
        }
    }
    out.push('\n');
}

/// Splits a sample line after its series (the name and, if any, the label set, whose quoted
/// values may hold `}`, `#`, spaces and escaped quotes). `None` when the label set never ends.
fn split_series(line: &str) -> Option<(&str, &str)> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    if !line[name_end..].starts_with('{') {
        return Some(line.split_at(name_end));
    }
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices().skip_while(|(i, _)| *i <= name_end) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(line.split_at(i + 1)),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests;
