//! Renders a saga definition as a state graph, in Mermaid or Graphviz DOT.
//!
//! Both renderings are deterministic text (fit for snapshot tests and READMEs) and show the
//! same facts: each step with its kind and action, the pivot, forward edges, conditional
//! skips, failure edges into the compensation chain, the compensation chain itself, retry
//! loops, and the terminal states `completed`, `compensated` and `failed`.

use std::fmt::Write as _;

use crate::definition::{Action, SagaDefinition, StepDefinition, StepKind};

/// A node-and-edge view of a definition, shared by both renderers.
struct Graph {
    nodes: Vec<Node>,
    edges: Vec<Edge>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Terminal,
    Compensatable,
    Pivot,
    Retriable,
    Compensation,
}

struct Node {
    id: String,
    title: String,
    detail: String,
    shape: Shape,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Forward,
    Failure,
    Compensation,
}

struct Edge {
    from: String,
    to: String,
    label: Option<String>,
    style: Style,
}

const START: &str = "start";
const COMPLETED: &str = "completed";
const COMPENSATED: &str = "compensated";
const FAILED: &str = "failed";

fn step_id(name: &str) -> String {
    format!("step_{name}")
}

fn undo_id(name: &str) -> String {
    format!("undo_{name}")
}

fn describe(action: &Action<impl Sized>) -> String {
    action.describe()
}

impl Graph {
    fn of<D>(definition: &SagaDefinition<D>) -> Self {
        let steps = definition.steps();
        let mut graph = Graph {
            nodes: Vec::new(),
            edges: Vec::new(),
        };
        graph.node(START, "start", "", Shape::Terminal);
        for step in steps {
            let shape = match step.kind() {
                StepKind::Compensatable => Shape::Compensatable,
                StepKind::Pivot => Shape::Pivot,
                StepKind::Retriable => Shape::Retriable,
            };
            let mut detail = format!("{} · {}", step.kind().as_str(), describe(step.action()));
            if step.is_conditional() {
                detail.push_str(" · conditional");
            }
            graph.node(&step_id(step.name()), step.name(), &detail, shape);
        }
        for step in steps.iter().rev() {
            if let Some(compensation) = step.compensation() {
                let detail = if step.is_conditional() {
                    format!("{} · if it ran", describe(compensation))
                } else {
                    describe(compensation)
                };
                graph.node(
                    &undo_id(step.name()),
                    &format!("undo {}", step.name()),
                    &detail,
                    Shape::Compensation,
                );
            }
        }
        graph.node(COMPLETED, "completed", "", Shape::Terminal);
        graph.node(COMPENSATED, "compensated", "", Shape::Terminal);
        if steps
            .iter()
            .any(|s| (s.kind() == StepKind::Retriable && can_fail(s)) || s.compensation().is_some())
        {
            graph.node(FAILED, "failed", "parked for an operator", Shape::Terminal);
        }

        // Forward edges, with skips around conditional steps.
        let target = |index: usize| -> String {
            steps
                .get(index)
                .map(|s| step_id(s.name()))
                .unwrap_or_else(|| COMPLETED.to_owned())
        };
        graph.edge(START, &target(0), None, Style::Forward);
        for (index, step) in steps.iter().enumerate() {
            let label = match step.action() {
                Action::Command(_) => Some("success"),
                _ => None,
            };
            graph.edge(
                &step_id(step.name()),
                &target(index + 1),
                label,
                Style::Forward,
            );
        }
        for (index, step) in steps.iter().enumerate() {
            if step.is_conditional() {
                let from = if index == 0 {
                    START.to_owned()
                } else {
                    step_id(steps[index - 1].name())
                };
                graph.edge(
                    &from,
                    &target(index + 1),
                    Some(&format!("skip {}", step.name())),
                    Style::Forward,
                );
            }
        }

        // Failure edges: a failing compensatable step or pivot turns the saga back to the
        // nearest earlier compensation; a retriable step retries, then parks.
        let undo_before = |index: usize| -> String {
            steps[..index]
                .iter()
                .rev()
                .find(|s| s.compensation().is_some())
                .map(|s| undo_id(s.name()))
                .unwrap_or_else(|| COMPENSATED.to_owned())
        };
        for (index, step) in steps.iter().enumerate() {
            let id = step_id(step.name());
            match step.kind() {
                StepKind::Compensatable | StepKind::Pivot => {
                    if can_fail(step) {
                        graph.edge(&id, &undo_before(index), Some("failure"), Style::Failure);
                    }
                }
                StepKind::Retriable if can_fail(step) => {
                    graph.edge(&id, &id, Some("failure: retry"), Style::Failure);
                    graph.edge(&id, FAILED, Some("retries exhausted"), Style::Failure);
                }
                StepKind::Retriable => {}
            }
        }

        // The compensation chain, in reverse order.
        for (index, step) in steps.iter().enumerate().rev() {
            if step.compensation().is_some() {
                let id = undo_id(step.name());
                graph.edge(&id, &undo_before(index), None, Style::Compensation);
                graph.edge(&id, FAILED, Some("retries exhausted"), Style::Failure);
            }
        }
        graph
    }

    fn node(&mut self, id: &str, title: &str, detail: &str, shape: Shape) {
        self.nodes.push(Node {
            id: id.to_owned(),
            title: title.to_owned(),
            detail: detail.to_owned(),
            shape,
        });
    }

    fn edge(&mut self, from: &str, to: &str, label: Option<&str>, style: Style) {
        self.edges.push(Edge {
            from: from.to_owned(),
            to: to.to_owned(),
            label: label.map(str::to_owned),
            style,
        });
    }
}

/// Whether a forward step can fail: commands and local steps can; no-ops and notifications
/// cannot.
fn can_fail<D>(step: &StepDefinition<D>) -> bool {
    matches!(step.action(), Action::Command(_) | Action::Local(_))
}

fn mermaid_text(text: &str) -> String {
    text.replace('"', "#quot;")
}

fn dot_text(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

impl<D> SagaDefinition<D> {
    /// The state graph as a Mermaid flowchart.
    pub fn to_mermaid(&self) -> String {
        let graph = Graph::of(self);
        let mut out = String::new();
        let _ = writeln!(out, "---\ntitle: {}\n---", mermaid_text(self.name()));
        out.push_str("flowchart TD\n");
        for node in &graph.nodes {
            let label = if node.detail.is_empty() {
                mermaid_text(&node.title)
            } else {
                format!(
                    "{}<br/><small>{}</small>",
                    mermaid_text(&node.title),
                    mermaid_text(&node.detail)
                )
            };
            let (open, close) = match node.shape {
                Shape::Terminal => ("([", "])"),
                Shape::Compensatable | Shape::Compensation => ("[", "]"),
                Shape::Pivot => ("{{", "}}"),
                Shape::Retriable => ("(", ")"),
            };
            let _ = writeln!(out, "    {}{open}\"{label}\"{close}", node.id);
        }
        for edge in &graph.edges {
            let arrow = match edge.style {
                Style::Forward | Style::Compensation => "-->",
                Style::Failure => "-.->",
            };
            match &edge.label {
                Some(label) => {
                    let _ = writeln!(
                        out,
                        "    {} {arrow}|{}| {}",
                        edge.from,
                        mermaid_text(label),
                        edge.to
                    );
                }
                None => {
                    let _ = writeln!(out, "    {} {arrow} {}", edge.from, edge.to);
                }
            }
        }
        out.push_str("    classDef pivot fill:#fde68a,stroke:#b45309,stroke-width:2px\n");
        out.push_str("    classDef retriable fill:#dcfce7,stroke:#15803d\n");
        out.push_str("    classDef undo fill:#fee2e2,stroke:#b91c1c,stroke-dasharray:4 3\n");
        out.push_str("    classDef terminal fill:#e5e7eb,stroke:#374151\n");
        for (class, shape) in [
            ("pivot", Shape::Pivot),
            ("retriable", Shape::Retriable),
            ("undo", Shape::Compensation),
            ("terminal", Shape::Terminal),
        ] {
            let ids: Vec<&str> = graph
                .nodes
                .iter()
                .filter(|n| n.shape == shape)
                .map(|n| n.id.as_str())
                .collect();
            if !ids.is_empty() {
                let _ = writeln!(out, "    class {} {class}", ids.join(","));
            }
        }
        out
    }

    /// The state graph in Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let graph = Graph::of(self);
        let mut out = String::new();
        let _ = writeln!(out, "digraph \"{}\" {{", dot_text(self.name()));
        out.push_str("    rankdir=TB;\n    node [fontname=\"Helvetica\"];\n");
        out.push_str("    edge [fontname=\"Helvetica\", fontsize=10];\n");
        for node in &graph.nodes {
            let label = if node.detail.is_empty() {
                dot_text(&node.title)
            } else {
                format!("{}\\n{}", dot_text(&node.title), dot_text(&node.detail))
            };
            let attrs = match node.shape {
                Shape::Terminal => "shape=oval, style=filled, fillcolor=\"#e5e7eb\"",
                Shape::Compensatable => "shape=box",
                Shape::Pivot => "shape=diamond, style=filled, fillcolor=\"#fde68a\", penwidth=2",
                Shape::Retriable => "shape=box, style=\"rounded,filled\", fillcolor=\"#dcfce7\"",
                Shape::Compensation => "shape=box, style=\"dashed,filled\", fillcolor=\"#fee2e2\"",
            };
            let _ = writeln!(out, "    {} [label=\"{label}\", {attrs}];", node.id);
        }
        for edge in &graph.edges {
            let mut attrs = Vec::new();
            if let Some(label) = &edge.label {
                attrs.push(format!("label=\"{}\"", dot_text(label)));
            }
            match edge.style {
                Style::Forward => {}
                Style::Failure => attrs.push("style=dashed, color=\"#b91c1c\"".to_owned()),
                Style::Compensation => attrs.push("color=\"#b91c1c\"".to_owned()),
            }
            if attrs.is_empty() {
                let _ = writeln!(out, "    {} -> {};", edge.from, edge.to);
            } else {
                let _ = writeln!(
                    out,
                    "    {} -> {} [{}];",
                    edge.from,
                    edge.to,
                    attrs.join(", ")
                );
            }
        }
        out.push_str("}\n");
        out
    }
}
