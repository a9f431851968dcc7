//! Hand-written SVG charts of a value against the offered load (the approach of
//! `benches/loadtest/svg.rs`): a log x axis ticked at the measured levels (1×, 2×, 5×, 10×), a
//! linear y axis from 0, one line with markers per target, dashed reference lines, the legend
//! under the plot. No fonts or crates: the text is left to the viewer's sans-serif font.

use std::fmt::Write;

/// Width of a chart, and height of its plot area, px.
const WIDTH: f64 = 720.0;
const PLOT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 24.0;
/// One legend row.
const ROW: f64 = 18.0;

/// The marker of a series.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
}

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
        r##"<text x="{x0}" y="22" font-size="15" font-weight="bold" fill="#222">{}</text>"##,
        escape(&chart.title)
    );
    for (i, line) in chart.subtitle.iter().enumerate() {
        let _ = writeln!(
            svg,
            r##"<text x="{x0}" y="{}" fill="#555">{}</text>"##,
            40 + 17 * i,
            escape(line)
        );
    }
    // Grid and ticks.
    for &level in &chart.levels {
        let x = px(level);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{y1:.1}" stroke="#e6e6e6"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}×</text>"##,
            y1 + 16.0,
            number(level)
        );
    }
    let mut v = 0.0;
    while v <= chart.y_max + 1e-9 {
        let y = py(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{:.1}" y="{y:.1}" dy="0.35em" text-anchor="end" fill="#444">{}</text>"##,
            x0 - 6.0,
            number(v)
        );
        v += chart.y_step;
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
        escape(&chart.y_label)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#222">offered load, multiple of the upstream's capacity (log scale)</text>"##,
        (x0 + x1) / 2.0,
        y1 + 34.0
    );
    // References, then the series on top.
    for r in &chart.references {
        let y = py(r.y);
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#777" stroke-width="1.2" stroke-dasharray="5 4"/>"##
        );
    }
    // In order: a wide first line stays visible around the narrower ones drawn over it where
    // they overlap.
    for s in &chart.series {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="{}" stroke-dasharray="{}" stroke-linejoin="round"/>"#,
            points.join(" "),
            s.color,
            s.width,
            s.dash
        );
        for &(x, y) in &s.points {
            marker(&mut svg, s.marker, px(x), py(y), s.color, s.width / 2.0);
        }
    }
    // The legend, two columns under the axis label.
    let column = (x1 - x0) / 2.0;
    let legend_top = y1 + 52.0;
    let mut entry = 0;
    let mut place = |svg: &mut String, draw: &dyn Fn(&mut String, f64, f64), label: &str| {
        let x = x0 + column * (entry % 2) as f64;
        let y = legend_top + ROW * (entry / 2) as f64;
        draw(svg, x, y);
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{y:.1}" dy="0.35em" fill="#222">{}</text>"##,
            x + 36.0,
            escape(label)
        );
        entry += 1;
    };
    for s in &chart.series {
        let draw = |svg: &mut String, x: f64, y: f64| {
            let _ = writeln!(
                svg,
                r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="{}" stroke-dasharray="{}"/>"#,
                x + 28.0,
                s.color,
                s.width,
                s.dash
            );
            marker(svg, s.marker, x + 14.0, y, s.color, s.width / 2.0);
        };
        place(&mut svg, &draw, &s.label);
    }
    for r in &chart.references {
        let draw = |svg: &mut String, x: f64, y: f64| {
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#777" stroke-width="1.2" stroke-dasharray="5 4"/>"##,
                x + 28.0
            );
        };
        place(&mut svg, &draw, &r.label);
    }
    svg.push_str("</svg>\n");
    svg
}

/// A marker at (x, y), `scale` 1 for a 2 px line.
fn marker(svg: &mut String, marker: Marker, x: f64, y: f64, color: &str, scale: f64) {
    let r = 4.0 * scale;
    let _ = match marker {
        Marker::Circle => writeln!(
            svg,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="{r:.1}" fill="{color}"/>"#
        ),
        Marker::Square => writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
            x - 0.9 * r,
            y - 0.9 * r,
            1.8 * r,
            1.8 * r
        ),
        Marker::Triangle => writeln!(
            svg,
            r#"<polygon points="{x:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="{color}"/>"#,
            y - 1.1 * r,
            x - 1.1 * r,
            y + 0.9 * r,
            x + 1.1 * r,
            y + 0.9 * r
        ),
        Marker::Diamond => writeln!(
            svg,
            r#"<polygon points="{x:.1},{:.1} {:.1},{y:.1} {x:.1},{:.1} {:.1},{y:.1}" fill="{color}"/>"#,
            y - 1.25 * r,
            x + 1.25 * r,
            y + 1.25 * r,
            x - 1.25 * r
        ),
    };
}

/// A number without trailing zeros.
fn number(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
