//! A figure of stacked time-series panels sharing one linear time axis: lines, step lines, a
//! legend per panel, a title; drawn with [`svg`](super::svg). Shared by the adaptive and
//! deferred benches (`#[path = "../support/timeline.rs"]`, beside `svg.rs`).

use std::fmt::Write;

use crate::svg;

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
    svg::begin(&mut svg, WIDTH, height);
    svg::heading(&mut svg, (LEFT, 24.0), 16, title, subtitle, 44.0);
    for (i, panel) in panels.iter().enumerate() {
        let top = head + PANEL * i as f64;
        draw_panel(&mut svg, panel, top, x_label, x_max, i);
    }
    svg::end(&mut svg);
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
    svg::heading(svg, (x0, top + 20.0), 13, &panel.title, &[], 0.0);
    for t in ticks(x_max) {
        svg::x_tick(svg, px((t, 0.0)).0, (y0, y1), y1 + 15.0, &svg::number(t));
    }
    for v in ticks(y_max) {
        svg::y_tick(svg, px((0.0, v)).1, (x0, x1), x0 - 6.0, &svg::number(v));
    }
    svg::frame(svg, (x0, y0), (x1, y1));
    svg::y_label(svg, (18.0, (y0 + y1) / 2.0), &panel.y_label);
    svg::x_label(svg, ((x0 + x1) / 2.0, y1 + 30.0), x_label);
    let _ = writeln!(
        svg,
        r#"<clipPath id="panel{index}"><rect x="{x0}" y="{y0:.1}" width="{:.1}" height="{:.1}"/></clipPath><g clip-path="url(#panel{index})">"#,
        x1 - x0,
        y1 - y0
    );
    for line in &panel.lines {
        let points = line.points.iter().map(|&p| px(p));
        svg::polyline(svg, points, line.color, line.width, line.dash);
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
    let height = 8.0 + panel.lines.len() as f64 * row;
    svg::legend_box(svg, (x, top + 6.0), width, height);
    for (i, line) in panel.lines.iter().enumerate() {
        let cy = top + 18.0 + i as f64 * row;
        let (from, to) = ((x + 8.0, cy), (x + 34.0, cy));
        svg::segment(svg, from, to, line.color, line.width, line.dash);
        svg::label(svg, (x + 40.0, cy), &line.label);
    }
}

/// The smallest 1-2-5 × 10^k at or above `v` (at least 1).
fn nice_ceiling(v: f64) -> f64 {
    svg::round_up_125(v.max(1.0))
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
