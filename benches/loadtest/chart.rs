//! Hand-written SVG line charts on log-log axes (the ramp is geometric, latencies span decades):
//! 1-2-5 ticks and a grid, series drawn as lines with markers, dashed reference lines, a
//! legend, a title. No fonts or crates needed: the text is left to the viewer's sans-serif
//! font. Values ≤ 0 are not drawn.

use std::fmt::Write;

/// Width and height of a chart, px.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 460.0;
/// The plot area's margins: room for the title, tick labels and axis labels.
const LEFT: f64 = 74.0;
const RIGHT: f64 = 22.0;
/// Above the plot area: the title and one line per subtitle line.
const TOP: f64 = 44.0;
const BOTTOM: f64 = 58.0;

/// The marker drawn at each point of a series.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Marker {
    Circle,
    Square,
    Triangle,
}

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
        let hi = round_up_125(max * 1.1);
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

fn round_up_125(v: f64) -> f64 {
    let base = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|c| *c >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * base)
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

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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
        svg.push_str("</svg>\n");
        svg
    }

    /// Document, background, clip path, title, axis labels.
    fn head(&self, svg: &mut String, f: &Frame) {
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            svg,
            r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<defs><clipPath id="{}-clip"><rect x="{}" y="{}" width="{}" height="{}"/></clipPath></defs>"#,
            self.id,
            f.x0,
            f.y0,
            f.x1 - f.x0,
            f.y1 - f.y0
        );
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="26" font-size="16" font-weight="bold" fill="#222">{}</text>"##,
            f.x0,
            escape(&self.title)
        );
        for (i, line) in self.subtitle.iter().enumerate() {
            let _ = writeln!(
                svg,
                r##"<text x="{}" y="{}" fill="#555">{}</text>"##,
                f.x0,
                46 + 17 * i,
                escape(line)
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{}" text-anchor="middle" font-size="13" fill="#222">{}</text>"##,
            (f.x0 + f.x1) / 2.0,
            HEIGHT - 14.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            svg,
            r##"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle" font-size="13" fill="#222">{}</text>"##,
            (f.y0 + f.y1) / 2.0,
            escape(&self.y_label)
        );
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
        let _ = writeln!(
            svg,
            r##"<rect x="{x}" y="{y}" width="{:.1}" height="{:.1}" fill="white" fill-opacity="0.9" stroke="#bbb"/>"##,
            48.0 + longest as f64 * 6.4,
            10.0 + entries.len() as f64 * row
        );
        for (
            i,
            LegendEntry {
                label,
                color,
                dash,
                marker,
            },
        ) in entries.into_iter().enumerate()
        {
            let cy = y + 14.0 + i as f64 * row;
            let width = if marker.is_some() { 2.0 } else { 1.5 };
            let _ = writeln!(
                svg,
                r#"<line x1="{:.1}" y1="{cy:.1}" x2="{:.1}" y2="{cy:.1}" stroke="{color}" stroke-width="{width}" stroke-dasharray="{dash}"/>"#,
                x + 8.0,
                x + 36.0
            );
            if let Some((marker, hollow)) = marker {
                draw_marker(svg, marker, hollow, color, (x + 22.0, cy));
            }
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{cy:.1}" dy="0.35em" fill="#222">{}</text>"##,
                x + 44.0,
                escape(label)
            );
        }
    }
}

/// Grid lines, the frame, tick labels.
fn grid(svg: &mut String, f: &Frame, x: &Axis, y: &Axis) {
    for &t in &x.ticks {
        let (px, _) = f.px(x, y, (t, y.lo));
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#e6e6e6"/><text x="{px:.1}" y="{}" text-anchor="middle" fill="#444">{}</text>"##,
            f.y0,
            f.y1,
            f.y1 + 18.0,
            tick_label(t)
        );
    }
    for &t in &y.ticks {
        let (_, py) = f.px(x, y, (x.lo, t));
        let _ = writeln!(
            svg,
            r##"<line x1="{}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#e6e6e6"/><text x="{}" y="{py:.1}" dy="0.35em" text-anchor="end" fill="#444">{}</text>"##,
            f.x0,
            f.x1,
            f.x0 - 8.0,
            tick_label(t)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        f.x0,
        f.y0,
        f.x1 - f.x0,
        f.y1 - f.y0
    );
}

fn draw_reference(svg: &mut String, f: &Frame, x: &Axis, y: &Axis, r: &Reference) {
    let ends = match r.guide {
        Guide::Horizontal(v) if drawable(v) => [(x.lo, v), (x.hi, v)],
        Guide::Diagonal => [(x.lo, x.lo), (x.hi, x.hi)],
        Guide::Horizontal(_) => return,
    };
    let [(ax, ay), (bx, by)] = ends.map(|p| f.px(x, y, p));
    let _ = writeln!(
        svg,
        r#"<line x1="{ax:.1}" y1="{ay:.1}" x2="{bx:.1}" y2="{by:.1}" stroke="{}" stroke-width="1.5" stroke-dasharray="{}"/>"#,
        r.color, r.dash
    );
}

fn draw_series(svg: &mut String, f: &Frame, x: &Axis, y: &Axis, s: &Series) {
    let points: Vec<(f64, f64)> = s
        .points
        .iter()
        .filter(|p| drawable(p.0) && drawable(p.1))
        .map(|&p| f.px(x, y, p))
        .collect();
    let path: Vec<String> = points
        .iter()
        .map(|(px, py)| format!("{px:.1},{py:.1}"))
        .collect();
    let dash = if s.dashed { "6 4" } else { "none" };
    let _ = writeln!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2" stroke-dasharray="{dash}" stroke-linejoin="round"/>"#,
        path.join(" "),
        s.color
    );
    for p in points {
        draw_marker(svg, s.marker, s.dashed, s.color, p);
    }
}

fn draw_marker(svg: &mut String, marker: Marker, hollow: bool, color: &str, (cx, cy): (f64, f64)) {
    let fill = if hollow { "white" } else { color };
    let style = format!(r#"fill="{fill}" stroke="{color}" stroke-width="1.5""#);
    let _ = match marker {
        Marker::Circle => writeln!(svg, r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="4" {style}/>"#),
        Marker::Square => writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="7.5" height="7.5" {style}/>"#,
            cx - 3.75,
            cy - 3.75
        ),
        Marker::Triangle => writeln!(
            svg,
            r#"<path d="M{cx:.1},{:.1} L{:.1},{:.1} L{:.1},{:.1} Z" {style}/>"#,
            cy - 5.0,
            cx + 4.5,
            cy + 3.5,
            cx - 4.5,
            cy + 3.5
        ),
    };
}
