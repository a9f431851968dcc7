//! A hand-written SVG of stacked time-series panels sharing one linear time axis (the approach
//! of `benches/loadtest/svg.rs`, on linear axes): lines, step lines, a legend per panel, a
//! title. No fonts or crates: the text is left to the viewer's sans-serif font.

use std::fmt::Write;

/// Width of the figure and height of one panel, px.
const WIDTH: f64 = 760.0;
const PANEL: f64 = 250.0;
/// Margins around each panel's plot area.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const PANEL_TOP: f64 = 30.0;
const PANEL_BOTTOM: f64 = 34.0;

/// A line of a panel.
pub(crate) struct Line {
    pub(crate) label: String,
    pub(crate) color: &'static str,
    /// SVG `stroke-dasharray`, `none` for a solid line.
    pub(crate) dash: &'static str,
    pub(crate) width: f64,
    /// (seconds, value), in time order.
    pub(crate) points: Vec<(f64, f64)>,
}

/// One panel: its own y axis, sharing the figure's time axis.
pub(crate) struct Panel {
    pub(crate) title: String,
    pub(crate) y_label: String,
    pub(crate) lines: Vec<Line>,
}

/// The whole figure as a standalone SVG document.
pub(crate) fn render(
    title: &str,
    subtitle: &[String],
    x_label: &str,
    x_max: f64,
    panels: &[Panel],
) -> String {
    let head = 40.0 + 17.0 * subtitle.len() as f64;
    let height = head + PANEL * panels.len() as f64 + 20.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="24" font-size="16" font-weight="bold" fill="#222">{}</text>"##,
        escape(title)
    );
    for (i, line) in subtitle.iter().enumerate() {
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="{}" fill="#555">{}</text>"##,
            44 + 17 * i,
            escape(line)
        );
    }
    for (i, panel) in panels.iter().enumerate() {
        let top = head + PANEL * i as f64;
        draw_panel(&mut svg, panel, top, x_label, x_max, i);
    }
    svg.push_str("</svg>\n");
    svg
}

/// One panel's frame, grid, ticks, lines and legend, its top at `top`.
fn draw_panel(svg: &mut String, panel: &Panel, top: f64, x_label: &str, x_max: f64, index: usize) {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (top + PANEL_TOP, top + PANEL - PANEL_BOTTOM);
    let y_max = nice_ceiling(
        panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(0.0, f64::max)
            * 1.08,
    );
    let px = |(x, y): (f64, f64)| {
        (
            x0 + x / x_max * (x1 - x0),
            y1 - (y / y_max).min(1.0) * (y1 - y0),
        )
    };
    let _ = writeln!(
        svg,
        r##"<text x="{x0}" y="{:.1}" font-size="13" font-weight="bold" fill="#222">{}</text>"##,
        top + 20.0,
        escape(&panel.title)
    );
    for t in ticks(x_max) {
        let (x, _) = px((t, 0.0));
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{y1:.1}" stroke="#e6e6e6"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}</text>"##,
            y1 + 15.0,
            label(t)
        );
    }
    for v in ticks(y_max) {
        let (_, y) = px((0.0, v));
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{:.1}" y="{y:.1}" dy="0.35em" text-anchor="end" fill="#444">{}</text>"##,
            x0 - 6.0,
            label(v)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{x0}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#888"/>"##,
        x1 - x0,
        y1 - y0
    );
    let _ = writeln!(
        svg,
        r##"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle" fill="#222">{}</text>"##,
        (y0 + y1) / 2.0,
        escape(&panel.y_label)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#222">{}</text>"##,
        (x0 + x1) / 2.0,
        y1 + 30.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<clipPath id="panel{index}"><rect x="{x0}" y="{y0:.1}" width="{:.1}" height="{:.1}"/></clipPath><g clip-path="url(#panel{index})">"#,
        x1 - x0,
        y1 - y0
    );
    for line in &panel.lines {
        let points: Vec<String> = line
            .points
            .iter()
            .map(|&p| {
                let (x, y) = px(p);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="{}" stroke-dasharray="{}" stroke-linejoin="round"/>"#,
            points.join(" "),
            line.color,
            line.width,
            line.dash
        );
    }
    svg.push_str("</g>\n");
    legend(svg, panel, x1, y0);
}

/// A boxed legend in the panel's top-right corner.
fn legend(svg: &mut String, panel: &Panel, right: f64, top: f64) {
    let longest = panel
        .lines
        .iter()
        .map(|l| l.label.chars().count())
        .max()
        .unwrap_or(0);
    let width = 46.0 + longest as f64 * 6.3;
    let (x, row) = (right - width - 8.0, 17.0);
    let _ = writeln!(
        svg,
        r##"<rect x="{x:.1}" y="{:.1}" width="{width:.1}" height="{:.1}" fill="white" fill-opacity="0.9" stroke="#bbb"/>"##,
        top + 6.0,
        8.0 + panel.lines.len() as f64 * row
    );
    for (i, line) in panel.lines.iter().enumerate() {
        let cy = top + 18.0 + i as f64 * row;
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{cy:.1}" x2="{:.1}" y2="{cy:.1}" stroke="{}" stroke-width="{}" stroke-dasharray="{}"/><text x="{:.1}" y="{cy:.1}" dy="0.35em" fill="#222">{}</text>"##,
            x + 8.0,
            x + 34.0,
            line.color,
            line.width,
            line.dash,
            x + 40.0,
            escape(&line.label)
        );
    }
}

/// The smallest 1-2-5 × 10^k at or above `v` (at least 1).
fn nice_ceiling(v: f64) -> f64 {
    let v = v.max(1.0);
    let base = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|c| *c >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * base)
}

/// Ticks from 0 to `max` at a 1-2-5 step giving 4 to 10 of them.
fn ticks(max: f64) -> Vec<f64> {
    let step = [1.0, 2.0, 5.0]
        .into_iter()
        .flat_map(|m| (-2..6).map(move |e| m * 10f64.powi(e)))
        .filter(|s| max / s <= 10.0)
        .fold(f64::INFINITY, f64::min);
    let n = (max / step + 1e-9).floor() as usize;
    (0..=n).map(|i| i as f64 * step).collect()
}

/// A tick label without trailing zeros.
fn label(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
