//! Line charts on log-log axes (the ramp is geometric, latencies span decades): 1-2-5 ticks and
//! a grid, series drawn as lines with markers, dashed reference lines, a legend, a title; drawn
//! with [`svg`](crate::svg). Values ≤ 0 are not drawn.

use std::fmt::Write;

use crate::svg;
pub(crate) use crate::svg::Marker;

/// Width and height of a chart, px.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 460.0;
/// The plot area's margins: room for the title, tick labels and axis labels.
const LEFT: f64 = 74.0;
const RIGHT: f64 = 22.0;
/// Above the plot area: the title and one line per subtitle line.
const TOP: f64 = 44.0;
const BOTTOM: f64 = 58.0;
/// A marker's radius, px.
const MARKER: f64 = 4.0;

/// A data series. A dashed series gets hollow markers, so p50/p99 pairs read apart in grey too.
#[derive(Clone, Debug)]
pub(crate) struct Series {
    pub(crate) label: String,
    pub(crate) color: &'static str,
    pub(crate) dashed: bool,
    pub(crate) marker: Marker,
    pub(crate) points: Vec<(f64, f64)>,
}

/// A reference line: thin, dashed, named in the legend.
#[derive(Clone, Debug)]
pub(crate) struct Reference {
    pub(crate) label: String,
    pub(crate) color: &'static str,
    /// SVG `stroke-dasharray`.
    pub(crate) dash: &'static str,
    pub(crate) guide: Guide,
}

/// Where a reference line runs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Guide {
    /// y = this value.
    Horizontal(f64),
    /// y = x.
    Diagonal,
}

/// A chart.
#[derive(Clone, Debug)]
pub(crate) struct Chart {
    /// Prefix of the element ids, unique per chart so several can be inlined in one page.
    pub(crate) id: &'static str,
    pub(crate) title: String,
    /// Lines under the title (what was measured, with what).
    pub(crate) subtitle: Vec<String>,
    pub(crate) x_label: String,
    pub(crate) y_label: String,
    /// The y axis starts at or below this even when the data goes lower; lower points are cut
    /// off at the frame (a rate of 0.3/s would otherwise stretch a req/s axis over decades).
    pub(crate) y_floor: Option<f64>,
    pub(crate) series: Vec<Series>,
    pub(crate) references: Vec<Reference>,
}

/// One log axis: its range and ticks, in data units.
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Axis {
    /// An axis spanning the positive `values` with a little room, from 1-2-5 value to 1-2-5
    /// value, and starting no higher than `floor`'s round value if the data goes lower.
    fn new(values: impl Iterator<Item = f64>, floor: Option<f64>) -> Axis {
        let (mut min, max) = values
            .filter(|v| v.is_finite() && *v > 0.0)
            .fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if let Some(floor) = floor {
            min = min.max(floor);
        }
        if max <= 0.0 {
            return Axis {
                lo: 1.0,
                hi: 10.0,
                ticks: log_ticks(1.0, 10.0),
            };
        }
        let lo = round_down_125(min / 1.1);
        let hi = svg::round_up_125(max * 1.1);
        Axis {
            lo,
            hi,
            ticks: log_ticks(lo, hi),
        }
    }

    /// Where `v` falls between the ends: 0 at `lo`, 1 at `hi`.
    fn fraction(&self, v: f64) -> f64 {
        (v.ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
    }
}

fn drawable(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

fn round_down_125(v: f64) -> f64 {
    let base = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0]
        .into_iter()
        .map(|m| m * base)
        .find(|c| *c <= v * (1.0 + 1e-9))
        .unwrap_or(base)
}

/// 1, 2, 5 × 10^k between `lo` and `hi`; only the powers of ten when that would be crowded.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades = lo.log10().floor() as i32..=hi.log10().ceil() as i32;
    let within = |t: &f64| *t >= lo * (1.0 - 1e-9) && *t <= hi * (1.0 + 1e-9);
    let all: Vec<f64> = decades
        .clone()
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
        .filter(within)
        .collect();
    if all.len() <= 12 {
        return all;
    }
    decades.map(|e| 10f64.powi(e)).filter(within).collect()
}

/// A tick label: no trailing zeros, thousands as `k`.
fn tick_label(v: f64) -> String {
    if v >= 1000.0 && (v / 1000.0).fract() == 0.0 {
        return format!("{}k", v / 1000.0);
    }
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// One line of the legend.
struct LegendEntry<'a> {
    label: &'a str,
    color: &'a str,
    dash: &'a str,
    /// The series' marker and whether it is hollow; `None` for reference lines.
    marker: Option<(Marker, bool)>,
}

/// The plot area in px.
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn px(&self, x: &Axis, y: &Axis, (vx, vy): (f64, f64)) -> (f64, f64) {
        (
            self.x0 + x.fraction(vx) * (self.x1 - self.x0),
            self.y1 - y.fraction(vy) * (self.y1 - self.y0),
        )
    }
}

impl Chart {
    /// The chart as a standalone SVG document.
    pub(crate) fn render(&self) -> String {
        let x = Axis::new(
            self.series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0)),
            None,
        );
        let horizontal = self.references.iter().filter_map(|r| match r.guide {
            Guide::Horizontal(v) => Some(v),
            Guide::Diagonal => None,
        });
        let y = Axis::new(
            self.series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
                .chain(horizontal),
            self.y_floor,
        );
        let frame = Frame {
            x0: LEFT,
            x1: WIDTH - RIGHT,
            y0: TOP + 18.0 * self.subtitle.len() as f64,
            y1: HEIGHT - BOTTOM,
        };
        let mut svg = String::new();
        self.head(&mut svg, &frame);
        grid(&mut svg, &frame, &x, &y);
        let _ = writeln!(svg, r#"<g clip-path="url(#{}-clip)">"#, self.id);
        for reference in &self.references {
            draw_reference(&mut svg, &frame, &x, &y, reference);
        }
        for series in &self.series {
            draw_series(&mut svg, &frame, &x, &y, series);
        }
        svg.push_str("</g>\n");
        self.legend(&mut svg, &frame);
        svg::end(&mut svg);
        svg
    }

    /// Document, background, clip path, title, axis labels.
    fn head(&self, svg: &mut String, f: &Frame) {
        svg::begin(svg, WIDTH, HEIGHT);
        let _ = writeln!(
            svg,
            r#"<defs><clipPath id="{}-clip"><rect x="{}" y="{}" width="{}" height="{}"/></clipPath></defs>"#,
            self.id,
            f.x0,
            f.y0,
            f.x1 - f.x0,
            f.y1 - f.y0
        );
        svg::heading(svg, (f.x0, 26.0), 16, &self.title, &self.subtitle, 46.0);
        svg::x_label(svg, ((f.x0 + f.x1) / 2.0, HEIGHT - 14.0), &self.x_label);
        svg::y_label(svg, (20.0, (f.y0 + f.y1) / 2.0), &self.y_label);
    }

    /// A boxed legend in the plot's top-left corner: series, then reference lines.
    fn legend(&self, svg: &mut String, f: &Frame) {
        let series = self.series.iter().map(|s| LegendEntry {
            label: &s.label,
            color: s.color,
            dash: if s.dashed { "6 4" } else { "none" },
            marker: Some((s.marker, s.dashed)),
        });
        let references = self.references.iter().map(|r| LegendEntry {
            label: &r.label,
            color: r.color,
            dash: r.dash,
            marker: None,
        });
        let entries: Vec<LegendEntry<'_>> = series.chain(references).collect();
        let longest = entries
            .iter()
            .map(|e| e.label.chars().count())
            .max()
            .unwrap_or(0);
        let (x, y, row) = (f.x0 + 10.0, f.y0 + 10.0, 18.0);
        let height = 10.0 + entries.len() as f64 * row;
        svg::legend_box(svg, (x, y), 48.0 + longest as f64 * 6.4, height);
        for (i, entry) in entries.into_iter().enumerate() {
            let cy = y + 14.0 + i as f64 * row;
            let width = if entry.marker.is_some() { 2.0 } else { 1.5 };
            let (from, to) = ((x + 8.0, cy), (x + 36.0, cy));
            svg::segment(svg, from, to, entry.color, width, entry.dash);
            if let Some((marker, hollow)) = entry.marker {
                svg::marker(svg, marker, (x + 22.0, cy), MARKER, entry.color, hollow);
            }
            svg::label(svg, (x + 44.0, cy), entry.label);
        }
    }
}

/// Grid lines, the frame, tick labels.
fn grid(svg: &mut String, f: &Frame, x: &Axis, y: &Axis) {
    for &t in &x.ticks {
        let (px, _) = f.px(x, y, (t, y.lo));
        svg::x_tick(svg, px, (f.y0, f.y1), f.y1 + 18.0, &tick_label(t));
    }
    for &t in &y.ticks {
        let (_, py) = f.px(x, y, (x.lo, t));
        svg::y_tick(svg, py, (f.x0, f.x1), f.x0 - 8.0, &tick_label(t));
    }
    svg::frame(svg, (f.x0, f.y0), (f.x1, f.y1));
}

fn draw_reference(svg: &mut String, f: &Frame, x: &Axis, y: &Axis, r: &Reference) {
    let ends = match r.guide {
        Guide::Horizontal(v) if drawable(v) => [(x.lo, v), (x.hi, v)],
        Guide::Diagonal => [(x.lo, x.lo), (x.hi, x.hi)],
        Guide::Horizontal(_) => return,
    };
    let [a, b] = ends.map(|p| f.px(x, y, p));
    svg::segment(svg, a, b, r.color, 1.5, r.dash);
}

fn draw_series(svg: &mut String, f: &Frame, x: &Axis, y: &Axis, s: &Series) {
    let points: Vec<(f64, f64)> = s
        .points
        .iter()
        .filter(|p| drawable(p.0) && drawable(p.1))
        .map(|&p| f.px(x, y, p))
        .collect();
    let dash = if s.dashed { "6 4" } else { "none" };
    svg::polyline(svg, points.iter().copied(), s.color, 2.0, dash);
    for p in points {
        svg::marker(svg, s.marker, p, MARKER, s.color, s.dashed);
    }
}
