//! One trace drawn as a waterfall (SVG): a row per span in tree order, indented by depth,
//! its bar placed on the trace's time line and coloured by the process that sent it.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use super::collector::CollectedSpan;

const ROW: usize = 22;
const LABEL: usize = 430;
const BARS: usize = 640;
const TOP: usize = 48;
const COLOURS: &[&str] = &[
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The spans in tree order (each after its parent, siblings by start), with their depth.
/// A span whose parent is not among `spans` is a root.
fn tree_order(spans: &[CollectedSpan]) -> Vec<(usize, &CollectedSpan)> {
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<Option<&str>, Vec<&CollectedSpan>> = HashMap::new();
    for span in spans {
        let parent = span
            .parent_span_id
            .as_deref()
            .filter(|parent| ids.contains(parent));
        children.entry(parent).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_unix_nanos);
    }
    let mut ordered = Vec::with_capacity(spans.len());
    let mut stack: Vec<(usize, &CollectedSpan)> = children
        .get(&None)
        .map(|roots| roots.iter().rev().map(|s| (0, *s)).collect())
        .unwrap_or_default();
    while let Some((depth, span)) = stack.pop() {
        ordered.push((depth, span));
        if let Some(kids) = children.get(&Some(span.span_id.as_str())) {
            stack.extend(kids.iter().rev().map(|kid| (depth + 1, *kid)));
        }
    }
    ordered
}

/// An SVG waterfall of `spans` (one trace), titled `title`.
pub fn waterfall_svg(title: &str, spans: &[CollectedSpan]) -> String {
    let rows = tree_order(spans);
    let start = spans.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.end_unix_nanos)
        .max()
        .unwrap_or(start);
    let total = end.saturating_sub(start).max(1) as f64;
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    let colour = |service: &str| {
        let index = services.iter().position(|s| *s == service).unwrap_or(0);
        COLOURS[index % COLOURS.len()]
    };
    let width = LABEL + BARS + 20;
    let height = TOP + rows.len() * ROW + 40;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r##"<rect width="100%" height="100%" fill="#fff"/><text x="10" y="20" font-size="15" font-weight="bold">{}</text>"##,
        escape(title)
    );
    let _ = write!(
        svg,
        r##"<text x="10" y="38" fill="#555">{} spans from {} processes, {:.1} ms</text>"##,
        spans.len(),
        services.len(),
        total / 1e6
    );
    for (i, (depth, span)) in rows.iter().enumerate() {
        let y = TOP + i * ROW;
        if i % 2 == 0 {
            let _ = write!(
                svg,
                r##"<rect x="0" y="{y}" width="{width}" height="{ROW}" fill="#f5f5f5"/>"##
            );
        }
        let x0 = LABEL as f64
            + (span.start_unix_nanos.saturating_sub(start)) as f64 / total * BARS as f64;
        let w = ((span.end_unix_nanos.saturating_sub(span.start_unix_nanos)) as f64 / total
            * BARS as f64)
            .max(1.5);
        let label = format!("{}: {}", span.service, span.name);
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}">{}</text>"#,
            10 + depth * 12,
            y + 15,
            escape(&label)
        );
        let fill = colour(&span.service);
        let stroke = if span.error { "#c00" } else { "none" };
        let _ = write!(
            svg,
            r#"<rect x="{x0:.1}" y="{}" width="{w:.1}" height="{}" rx="2" fill="{fill}" stroke="{stroke}"><title>{} ({:.2} ms)</title></rect>"#,
            y + 4,
            ROW - 8,
            escape(&label),
            (span.end_unix_nanos.saturating_sub(span.start_unix_nanos)) as f64 / 1e6
        );
    }
    let legend_y = TOP + rows.len() * ROW + 24;
    for (i, service) in services.iter().enumerate() {
        let x = 10 + i * 150;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{legend_y}">{}</text>"#,
            legend_y - 10,
            colour(service),
            x + 16,
            escape(service)
        );
    }
    svg.push_str("</svg>\n");
    svg
}
