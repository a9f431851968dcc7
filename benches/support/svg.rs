//! The drawing vocabulary of the benches' hand-written SVG figures: the document, a heading, a
//! plot frame, axis labels, lines and markers. The charts built with it lay out their own axes
//! (`benches/loadtest/svg.rs` log-log, `benches/overload/plot.rs` log x, `benches/support/
//! timeline.rs` time panels). No fonts or crates: the text is left to the viewer's sans-serif
//! font.
#![allow(dead_code)]

use std::fmt::Write;

/// The marker drawn at each point of a series.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
}

/// Opens a `width` × `height` document on a white background; close it with [`end`].
pub(crate) fn begin(svg: &mut String, width: f64, height: f64) {
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
}

pub(crate) fn end(svg: &mut String) {
    svg.push_str("</svg>\n");
}

/// A bold title of `size` px at (x, y), and the subtitle's lines under it from `first`, 17 px
/// apart.
pub(crate) fn heading(
    svg: &mut String,
    (x, y): (f64, f64),
    size: u32,
    title: &str,
    subtitle: &[String],
    first: f64,
) {
    let _ = writeln!(
        svg,
        r##"<text x="{x}" y="{y}" font-size="{size}" font-weight="bold" fill="#222">{}</text>"##,
        escape(title)
    );
    for (i, line) in subtitle.iter().enumerate() {
        let _ = writeln!(
            svg,
            r##"<text x="{x}" y="{}" fill="#555">{}</text>"##,
            first + 17.0 * i as f64,
            escape(line)
        );
    }
}

/// The plot area's outline.
pub(crate) fn frame(svg: &mut String, (x0, y0): (f64, f64), (x1, y1): (f64, f64)) {
    let _ = writeln!(
        svg,
        r##"<rect x="{x0}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#888"/>"##,
        x1 - x0,
        y1 - y0
    );
}

/// A vertical grid line from `y0` to `y1` at `x`, labelled below at `label_y`.
pub(crate) fn x_tick(svg: &mut String, x: f64, (y0, y1): (f64, f64), label_y: f64, label: &str) {
    let _ = writeln!(
        svg,
        r##"<line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{y1:.1}" stroke="#e6e6e6"/><text x="{x:.1}" y="{label_y:.1}" text-anchor="middle" fill="#444">{label}</text>"##
    );
}

/// A horizontal grid line from `x0` to `x1` at `y`, labelled left of the frame at `label_x`.
pub(crate) fn y_tick(svg: &mut String, y: f64, (x0, x1): (f64, f64), label_x: f64, label: &str) {
    let _ = writeln!(
        svg,
        r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{label_x:.1}" y="{y:.1}" dy="0.35em" text-anchor="end" fill="#444">{label}</text>"##
    );
}

/// The x axis' label, centred at (x, y).
pub(crate) fn x_label(svg: &mut String, (x, y): (f64, f64), text: &str) {
    let _ = writeln!(
        svg,
        r##"<text x="{x:.1}" y="{y:.1}" text-anchor="middle" fill="#222">{}</text>"##,
        escape(text)
    );
}

/// The y axis' label, rotated, centred at (x, y).
pub(crate) fn y_label(svg: &mut String, (x, y): (f64, f64), text: &str) {
    let _ = writeln!(
        svg,
        r##"<text transform="translate({x} {y:.1}) rotate(-90)" text-anchor="middle" fill="#222">{}</text>"##,
        escape(text)
    );
}

/// A line through `points` (px).
pub(crate) fn polyline(
    svg: &mut String,
    points: impl IntoIterator<Item = (f64, f64)>,
    color: &str,
    width: f64,
    dash: &str,
) {
    let points: Vec<String> = points
        .into_iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="{width}" stroke-dasharray="{dash}" stroke-linejoin="round"/>"#,
        points.join(" ")
    );
}

/// A straight line segment (a legend's sample, a reference line).
pub(crate) fn segment(
    svg: &mut String,
    (ax, ay): (f64, f64),
    (bx, by): (f64, f64),
    color: &str,
    width: f64,
    dash: &str,
) {
    let _ = writeln!(
        svg,
        r#"<line x1="{ax:.1}" y1="{ay:.1}" x2="{bx:.1}" y2="{by:.1}" stroke="{color}" stroke-width="{width}" stroke-dasharray="{dash}"/>"#
    );
}

/// Text at (x, y), vertically centred on y (a legend's entry).
pub(crate) fn label(svg: &mut String, (x, y): (f64, f64), text: &str) {
    let _ = writeln!(
        svg,
        r##"<text x="{x:.1}" y="{y:.1}" dy="0.35em" fill="#222">{}</text>"##,
        escape(text)
    );
}

/// A white, slightly transparent box behind a legend.
pub(crate) fn legend_box(svg: &mut String, (x, y): (f64, f64), width: f64, height: f64) {
    let _ = writeln!(
        svg,
        r##"<rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{height:.1}" fill="white" fill-opacity="0.9" stroke="#bbb"/>"##
    );
}

/// A marker of radius `r` centred at (cx, cy); `hollow` ones are white inside.
pub(crate) fn marker(
    svg: &mut String,
    marker: Marker,
    (cx, cy): (f64, f64),
    r: f64,
    color: &str,
    hollow: bool,
) {
    let fill = if hollow { "white" } else { color };
    let style = format!(r#"fill="{fill}" stroke="{color}" stroke-width="1.5""#);
    let _ = match marker {
        Marker::Circle => writeln!(
            svg,
            r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="{r:.1}" {style}/>"#
        ),
        Marker::Square => writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" {style}/>"#,
            cx - 0.9 * r,
            cy - 0.9 * r,
            1.8 * r,
            1.8 * r
        ),
        Marker::Triangle => writeln!(
            svg,
            r#"<polygon points="{cx:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" {style}/>"#,
            cy - 1.1 * r,
            cx - 1.1 * r,
            cy + 0.9 * r,
            cx + 1.1 * r,
            cy + 0.9 * r
        ),
        Marker::Diamond => writeln!(
            svg,
            r#"<polygon points="{cx:.1},{:.1} {:.1},{cy:.1} {cx:.1},{:.1} {:.1},{cy:.1}" {style}/>"#,
            cy - 1.25 * r,
            cx + 1.25 * r,
            cy + 1.25 * r,
            cx - 1.25 * r
        ),
    };
}

/// A number without trailing zeros (at most two decimals).
pub(crate) fn number(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The smallest 1-2-5 × 10^k at or above `v`.
pub(crate) fn round_up_125(v: f64) -> f64 {
    let base = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|c| *c >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * base)
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
