//! A saga graph drawn as SVG, server-side (no script, no assets): forward steps down the
//! left, each compensation beside its step, the compensation chain running back up to
//! `compensated`, `failed` on the right. With a [`SagaPath`], the nodes and edges the
//! instance went through are drawn heavier in blue, its current node filled, skipped steps
//! greyed.

use std::collections::HashMap;
use std::fmt::Write as _;

use saga_core::graph::{GraphEdge, SagaGraph, SagaPath, Shape, Style};

const NODE_W: f64 = 290.0;
const NODE_H: f64 = 44.0;
const ROW: f64 = 78.0;
const COLUMNS: [f64; 3] = [110.0, 480.0, 840.0];
const TOP: f64 = 20.0;

#[derive(Clone, Copy)]
struct Place {
    x: f64,
    y: f64,
}

impl Place {
    fn center(self) -> (f64, f64) {
        (self.x + NODE_W / 2.0, self.y + NODE_H / 2.0)
    }
}

/// Where each node goes: `(column, row)`.
fn layout(graph: &SagaGraph) -> HashMap<&str, Place> {
    let mut places = HashMap::new();
    let mut row = 0usize;
    let place = |column: usize, row: usize| Place {
        x: COLUMNS[column],
        y: TOP + row as f64 * ROW,
    };
    let steps: Vec<&str> = graph
        .nodes
        .iter()
        .filter(|n| {
            ["step_", "fork_", "join_"]
                .iter()
                .any(|p| n.id.starts_with(p))
        })
        .map(|n| n.id.as_str())
        .collect();
    places.insert("start", place(0, 0));
    for id in &steps {
        row += 1;
        places.insert(*id, place(0, row));
        if let Some(undo) = graph.nodes.iter().find(|n| {
            n.shape == Shape::Compensation && n.id.strip_prefix("undo_") == id.strip_prefix("step_")
        }) {
            places.insert(undo.id.as_str(), place(1, row));
        }
    }
    places.insert("completed", place(0, row + 1));
    places.insert("compensated", place(1, 0));
    places.insert("failed", place(2, row.div_ceil(2).max(1)));
    places
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Where the segment from the center of `from` towards `to` leaves `from`'s box.
fn border(from: (f64, f64), to: (f64, f64)) -> (f64, f64) {
    let (dx, dy) = (to.0 - from.0, to.1 - from.1);
    let tx = if dx.abs() > f64::EPSILON {
        (NODE_W / 2.0) / dx.abs()
    } else {
        f64::INFINITY
    };
    let ty = if dy.abs() > f64::EPSILON {
        (NODE_H / 2.0) / dy.abs()
    } else {
        f64::INFINITY
    };
    let t = tx.min(ty).min(1.0);
    (from.0 + dx * t, from.1 + dy * t)
}

fn edge_path(edge: &GraphEdge, from: Place, to: Place) -> (String, (f64, f64)) {
    if edge.from == edge.to {
        // A retry loop, on the left of the node.
        let (x, y) = (from.x, from.y + NODE_H / 2.0);
        let d = format!(
            "M {:.0} {:.0} C {:.0} {:.0}, {:.0} {:.0}, {:.0} {:.0}",
            x,
            y - 10.0,
            x - 40.0,
            y - 30.0,
            x - 40.0,
            y + 30.0,
            x,
            y + 10.0
        );
        return (d, (x - 44.0, y + 3.0));
    }
    let (a, b) = (from.center(), to.center());
    let same_column = (from.x - to.x).abs() < 1.0;
    let rows_apart = ((to.y - from.y) / ROW).abs();
    if same_column && rows_apart > 1.5 {
        // Around the nodes in between, bulging out of the column.
        let side = if from.x < COLUMNS[1] { -1.0 } else { 1.0 };
        let start = (a.0 + side * NODE_W / 2.0, a.1);
        let end = (b.0 + side * NODE_W / 2.0, b.1);
        let bulge = start.0 + side * 38.0;
        let d = format!(
            "M {:.0} {:.0} C {:.0} {:.0}, {:.0} {:.0}, {:.0} {:.0}",
            start.0, start.1, bulge, start.1, bulge, end.1, end.0, end.1
        );
        return (d, (bulge + side * 4.0, (start.1 + end.1) / 2.0));
    }
    let start = border(a, b);
    let end = border(b, a);
    let d = format!(
        "M {:.0} {:.0} L {:.0} {:.0}",
        start.0, start.1, end.0, end.1
    );
    (
        d,
        ((start.0 + end.0) / 2.0 + 4.0, (start.1 + end.1) / 2.0 - 4.0),
    )
}

/// `graph` as an SVG document fragment, with `path` drawn on it when given.
pub fn render(graph: &SagaGraph, path: Option<&SagaPath>) -> String {
    let places = layout(graph);
    let rows = places.values().map(|p| p.y).fold(0.0_f64, f64::max);
    let (width, height) = (COLUMNS[2] + NODE_W + 30.0, rows + NODE_H + TOP + 10.0);
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="saga-graph" viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" height="{height:.0}" role="img" aria-label="{}">"##,
        escape(&format!("state graph of {}", graph.name))
    );
    out.push_str(concat!(
        r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#6b7280"/></marker>"##,
        r##"<marker id="arrow-taken" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#1d4ed8"/></marker></defs>"##
    ));
    for edge in &graph.edges {
        let (Some(from), Some(to)) = (places.get(edge.from.as_str()), places.get(edge.to.as_str()))
        else {
            continue;
        };
        let taken = path.is_some_and(|p| p.took(edge));
        let (d, label_at) = edge_path(edge, *from, *to);
        let (stroke, width, dash) = match (taken, edge.style) {
            (true, _) => ("#1d4ed8", 3.0, ""),
            (false, Style::Forward) => ("#6b7280", 1.3, ""),
            (false, Style::Failure) => ("#b91c1c", 1.2, r#" stroke-dasharray="5 4""#),
            (false, Style::Compensation) => ("#b91c1c", 1.3, ""),
        };
        let marker = if taken { "arrow-taken" } else { "arrow" };
        let class = if taken { "edge taken" } else { "edge" };
        let _ = write!(
            out,
            r#"<path class="{class}" d="{d}" fill="none" stroke="{stroke}" stroke-width="{width}"{dash} marker-end="url(#{marker})"/>"#
        );
        if let Some(label) = &edge.label {
            let anchor = if edge.from == edge.to { "end" } else { "start" };
            let _ = write!(
                out,
                r##"<text x="{:.0}" y="{:.0}" font-size="10" fill="#374151" text-anchor="{anchor}">{}</text>"##,
                label_at.0,
                label_at.1,
                escape(label)
            );
        }
    }
    let visited = path.map(|p| p.visited_nodes()).unwrap_or_default();
    let skipped = path.map(|p| p.skipped_nodes()).unwrap_or_default();
    let current = path.and_then(|p| p.current.clone());
    for node in &graph.nodes {
        let Some(place) = places.get(node.id.as_str()) else {
            continue;
        };
        let (fill, stroke, rx, dash) = match node.shape {
            Shape::Terminal => ("#e5e7eb", "#374151", 22.0, ""),
            Shape::Compensatable => ("#ffffff", "#374151", 3.0, ""),
            Shape::Pivot => ("#fde68a", "#b45309", 3.0, ""),
            Shape::Retriable => ("#dcfce7", "#15803d", 14.0, ""),
            Shape::Compensation => ("#fee2e2", "#b91c1c", 3.0, r#" stroke-dasharray="4 3""#),
            Shape::Fork | Shape::Join => ("#e0e7ff", "#4338ca", 8.0, ""),
        };
        let is_current = current.as_deref() == Some(node.id.as_str());
        let is_visited = visited.contains(&node.id);
        let is_skipped = skipped.contains(&node.id);
        let (fill, stroke, width, class) = if is_current {
            ("#bfdbfe", "#1d4ed8", 4.0, "node current")
        } else if is_visited {
            (fill, "#1d4ed8", 3.0, "node visited")
        } else if is_skipped {
            ("#f3f4f6", "#9ca3af", 1.0, "node skipped")
        } else {
            (fill, stroke, 1.3, "node")
        };
        let _ = write!(
            out,
            r#"<g class="{class}" data-node="{id}"><rect x="{x:.0}" y="{y:.0}" width="{NODE_W:.0}" height="{NODE_H:.0}" rx="{rx:.0}" fill="{fill}" stroke="{stroke}" stroke-width="{width}"{dash}/>"#,
            id = escape(&node.id),
            x = place.x,
            y = place.y,
        );
        let (cx, cy) = place.center();
        let title_y = if node.detail.is_empty() {
            cy + 4.0
        } else {
            cy - 3.0
        };
        let _ = write!(
            out,
            r##"<text x="{cx:.0}" y="{title_y:.0}" text-anchor="middle" font-size="13" font-weight="600" fill="#111827">{}</text>"##,
            escape(&node.title)
        );
        if !node.detail.is_empty() {
            let _ = write!(
                out,
                r##"<text x="{cx:.0}" y="{:.0}" text-anchor="middle" font-size="10" fill="#4b5563">{}</text>"##,
                cy + 12.0,
                escape(&node.detail)
            );
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>");
    out
}
