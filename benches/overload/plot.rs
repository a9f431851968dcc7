//! Charts of a value against the offered load: a log x axis ticked at the measured levels (1×,
//! 2×, 5×, 10×), a linear y axis from 0, one line with markers per target, dashed reference
//! lines, the legend under the plot; drawn with [`svg`](crate::svg).

pub(crate) use crate::svg::Marker;
use crate::svg::{self, number};

/// Width of a chart, and height of its plot area, px.
const WIDTH: f64 = 720.0;
const PLOT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 24.0;
/// One legend row.
const ROW: f64 = 18.0;
/// Reference lines: thin, grey, dashed.
const REFERENCE: &str = "#777";
const DASHED: &str = "5 4";

/// One target's line.
#[derive(Clone, Debug)]
pub(crate) struct Series {
    pub(crate) label: String,
    pub(crate) color: &'static str,
    /// SVG `stroke-dasharray`, `none` for a solid line.
    pub(crate) dash: &'static str,
    /// Line width, px; the marker grows with it.
    pub(crate) width: f64,
    pub(crate) marker: Marker,
    /// (offered load as a multiple of capacity, value).
    pub(crate) points: Vec<(f64, f64)>,
}

/// A horizontal reference line.
#[derive(Clone, Debug)]
pub(crate) struct Reference {
    pub(crate) label: String,
    pub(crate) y: f64,
}

/// A chart.
#[derive(Clone, Debug)]
pub(crate) struct Chart {
    pub(crate) title: String,
    /// Lines under the title: what was measured, with what.
    pub(crate) subtitle: Vec<String>,
    pub(crate) y_label: String,
    /// The top of the y axis (a share: 100; a rate: a little above the capacity).
    pub(crate) y_max: f64,
    /// The y tick step.
    pub(crate) y_step: f64,
    /// The x ticks: the offered levels.
    pub(crate) levels: Vec<f64>,
    pub(crate) series: Vec<Series>,
    pub(crate) references: Vec<Reference>,
}

/// The chart as a standalone SVG document.
pub(crate) fn render(chart: &Chart) -> String {
    let top = 38.0 + 17.0 * chart.subtitle.len() as f64;
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, top, top + PLOT);
    let entries = chart.series.len() + chart.references.len();
    let legend_rows = entries.div_ceil(2) as f64;
    let height = y1 + 52.0 + legend_rows * ROW + 10.0;
    let lo = chart.levels.iter().copied().fold(f64::INFINITY, f64::min) / 1.25;
    let hi = chart.levels.iter().copied().fold(0.0, f64::max) * 1.25;
    let px = |x: f64| x0 + (x.ln() - lo.ln()) / (hi.ln() - lo.ln()) * (x1 - x0);
    let py = |y: f64| y1 - (y / chart.y_max).clamp(0.0, 1.0) * (y1 - y0);

    let mut svg = String::new();
    svg::begin(&mut svg, WIDTH, height);
    svg::heading(
        &mut svg,
        (x0, 22.0),
        15,
        &chart.title,
        &chart.subtitle,
        40.0,
    );
    // Grid and ticks.
    for &level in &chart.levels {
        let label = format!("{}×", number(level));
        svg::x_tick(&mut svg, px(level), (y0, y1), y1 + 16.0, &label);
    }
    let mut v = 0.0;
    while v <= chart.y_max + 1e-9 {
        svg::y_tick(&mut svg, py(v), (x0, x1), x0 - 6.0, &number(v));
        v += chart.y_step;
    }
    svg::frame(&mut svg, (x0, y0), (x1, y1));
    svg::y_label(&mut svg, (18.0, (y0 + y1) / 2.0), &chart.y_label);
    svg::x_label(
        &mut svg,
        ((x0 + x1) / 2.0, y1 + 34.0),
        "offered load, multiple of the upstream's capacity (log scale)",
    );
    // References, then the series on top.
    for r in &chart.references {
        let y = py(r.y);
        svg::segment(&mut svg, (x0, y), (x1, y), REFERENCE, 1.2, DASHED);
    }
    // In order: a wide first line stays visible around the narrower ones drawn over it where
    // they overlap.
    for s in &chart.series {
        let points = s.points.iter().map(|&(x, y)| (px(x), py(y)));
        svg::polyline(&mut svg, points, s.color, s.width, s.dash);
        for &(x, y) in &s.points {
            svg::marker(
                &mut svg,
                s.marker,
                (px(x), py(y)),
                2.0 * s.width,
                s.color,
                false,
            );
        }
    }
    // The legend, two columns under the axis label.
    let column = (x1 - x0) / 2.0;
    let legend_top = y1 + 52.0;
    let entries = chart
        .series
        .iter()
        .map(|s| (s.label.as_str(), s.color, s.width, s.dash, Some(s.marker)));
    let references = chart
        .references
        .iter()
        .map(|r| (r.label.as_str(), REFERENCE, 1.2, DASHED, None));
    for (i, (label, color, width, dash, marker)) in entries.chain(references).enumerate() {
        let x = x0 + column * (i % 2) as f64;
        let y = legend_top + ROW * (i / 2) as f64;
        svg::segment(&mut svg, (x, y), (x + 28.0, y), color, width, dash);
        if let Some(marker) = marker {
            svg::marker(&mut svg, marker, (x + 14.0, y), 2.0 * width, color, false);
        }
        svg::label(&mut svg, (x + 36.0, y), label);
    }
    svg::end(&mut svg);
    svg
}
