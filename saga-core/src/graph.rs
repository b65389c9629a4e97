//! A saga definition as a state graph ([`SagaGraph`]), rendered in Mermaid or Graphviz DOT,
//! bare or with one instance's path drawn on it ([`SagaPath`]).
//!
//! Both renderings are deterministic text (fit for snapshot tests and READMEs) and show the
//! same facts: each step with its kind and action, the pivot, forward edges, conditional
//! skips, failure edges into the compensation chain, the compensation chain itself, retry
//! loops, and the terminal states `completed`, `compensated` and `failed`. The graph is plain
//! data (serde), so tools that do not have the saga's Rust types — the `saga` CLI, the
//! console — can render it from what the orchestrator stored.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::definition::{Action, SagaDefinition, StepDefinition, StepKind};
use crate::engine::{Direction, HistoryEvent, SagaState, SagaStatus};

/// A definition's nodes and edges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaGraph {
    /// The saga type.
    pub name: String,
    /// Start, steps, compensations and terminal states, top to bottom.
    pub nodes: Vec<GraphNode>,
    /// Transitions between them.
    pub edges: Vec<GraphEdge>,
}

/// What a node stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// `start`, `completed`, `compensated`, `failed`.
    Terminal,
    /// A compensatable step.
    Compensatable,
    /// The pivot.
    Pivot,
    /// A retriable step.
    Retriable,
    /// A step's compensation.
    Compensation,
    /// Where the steps of a parallel group start together.
    Fork,
    /// Where the saga waits for every step of a parallel group.
    Join,
}

/// A node of a [`SagaGraph`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphNode {
    /// `start`, `step_<name>`, `undo_<name>`, `completed`, `compensated` or `failed`.
    pub id: String,
    /// What to show first (the step's name).
    pub title: String,
    /// Kind, action and condition.
    pub detail: String,
    /// What it stands for.
    pub shape: Shape,
}

/// What kind of transition an edge is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    /// Going forward (or skipping a step).
    Forward,
    /// A failure: turning back, retrying, parking.
    Failure,
    /// One compensation to the next.
    Compensation,
}

/// An edge of a [`SagaGraph`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphEdge {
    /// The node it leaves.
    pub from: String,
    /// The node it enters.
    pub to: String,
    /// `success`, `failure`, `skip <step>`, …
    pub label: Option<String>,
    /// What kind of transition.
    pub style: Style,
}

type Graph = SagaGraph;
type Node = GraphNode;
type Edge = GraphEdge;

const START: &str = "start";
const COMPLETED: &str = "completed";
const COMPENSATED: &str = "compensated";
const FAILED: &str = "failed";

/// The node id of a step.
pub fn step_id(name: &str) -> String {
    format!("step_{name}")
}

/// The node id of a step's compensation.
pub fn undo_id(name: &str) -> String {
    format!("undo_{name}")
}

/// The node id of the fork of the parallel group whose first step is `first`.
pub fn fork_id(first: &str) -> String {
    format!("fork_{first}")
}

/// The node id of the join of the parallel group whose first step is `first`.
pub fn join_id(first: &str) -> String {
    format!("join_{first}")
}

fn describe(action: &Action<impl Sized>) -> String {
    action.describe()
}

impl Graph {
    fn of<D>(definition: &SagaDefinition<D>) -> Self {
        let steps = definition.steps();
        let mut graph = Graph {
            name: definition.name().to_owned(),
            nodes: Vec::new(),
            edges: Vec::new(),
        };
        graph.node(START, "start", "", Shape::Terminal);
        for (index, step) in steps.iter().enumerate() {
            let group = definition.group_of(index);
            if step.group().is_some() && group.start == index {
                let names: Vec<&str> = steps[group.clone()].iter().map(|s| s.name()).collect();
                graph.node(
                    &fork_id(step.name()),
                    "parallel",
                    &names.join(" ‖ "),
                    Shape::Fork,
                );
            }
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
            if step.group().is_some() && group.end == index + 1 {
                let first = steps[group.start].name();
                graph.node(&join_id(first), "join", "all answered", Shape::Join);
            }
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

        // Forward edges, with skips around conditional steps. A parallel group is entered
        // at its fork and left at its join.
        let first_of = |index: usize| steps[definition.group_of(index).start].name();
        let entry = |index: usize| -> String {
            match steps.get(index) {
                Some(step) if step.group().is_some() => fork_id(first_of(index)),
                Some(step) => step_id(step.name()),
                None => COMPLETED.to_owned(),
            }
        };
        let exit = |index: usize| -> String {
            match steps[index].group() {
                Some(_) => join_id(first_of(index)),
                None => step_id(steps[index].name()),
            }
        };
        graph.edge(START, &entry(0), None, Style::Forward);
        for (index, step) in steps.iter().enumerate() {
            let label = match step.action() {
                Action::Command(_) => Some("success"),
                _ => None,
            };
            let id = step_id(step.name());
            if step.group().is_none() {
                graph.edge(&id, &entry(index + 1), label, Style::Forward);
                continue;
            }
            let group = definition.group_of(index);
            graph.edge(&fork_id(first_of(index)), &id, None, Style::Forward);
            graph.edge(&id, &exit(index), label, Style::Forward);
            if group.end == index + 1 {
                graph.edge(&exit(index), &entry(group.end), None, Style::Forward);
            }
        }
        for (index, step) in steps.iter().enumerate() {
            if !step.is_conditional() {
                continue;
            }
            let (from, to) = match step.group() {
                Some(_) => (fork_id(first_of(index)), exit(index)),
                None if index == 0 => (START.to_owned(), entry(index + 1)),
                None => (exit(index - 1), entry(index + 1)),
            };
            graph.edge(
                &from,
                &to,
                Some(&format!("skip {}", step.name())),
                Style::Forward,
            );
        }

        // Failure edges: a failing compensatable step or pivot turns the saga back to the
        // nearest earlier compensation; a retriable step retries, then parks. A failing step
        // of a parallel group waits at the join for the others, and the saga turns back from
        // there, through the group's compensations.
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
                StepKind::Compensatable | StepKind::Pivot if can_fail(step) => match step.group() {
                    Some(_) => graph.edge(&id, &exit(index), Some("failure"), Style::Failure),
                    None => graph.edge(&id, &undo_before(index), Some("failure"), Style::Failure),
                },
                StepKind::Retriable if can_fail(step) => {
                    graph.edge(&id, &id, Some("failure: retry"), Style::Failure);
                    graph.edge(&id, FAILED, Some("retries exhausted"), Style::Failure);
                }
                _ => {}
            }
            let group = definition.group_of(index);
            let group_can_fail = steps[group.clone()]
                .iter()
                .any(|s| s.kind() == StepKind::Compensatable && can_fail(s));
            if step.group().is_some() && group.end == index + 1 && group_can_fail {
                graph.edge(
                    &exit(index),
                    &undo_before(group.end),
                    Some("a step failed"),
                    Style::Failure,
                );
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
    /// The state graph, as data.
    pub fn graph(&self) -> SagaGraph {
        Graph::of(self)
    }

    /// The state graph as a Mermaid flowchart.
    pub fn to_mermaid(&self) -> String {
        self.graph().to_mermaid(None)
    }

    /// The state graph in Graphviz DOT.
    pub fn to_dot(&self) -> String {
        self.graph().to_dot(None)
    }
}

impl SagaGraph {
    /// The graph as a Mermaid flowchart, with `path` (one instance's) drawn on it when given.
    pub fn to_mermaid(&self, path: Option<&SagaPath>) -> String {
        let graph = self;
        let mut out = String::new();
        let _ = writeln!(out, "---\ntitle: {}\n---", mermaid_text(&self.name));
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
                Shape::Fork | Shape::Join => ("[[", "]]"),
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
        if graph
            .nodes
            .iter()
            .any(|n| matches!(n.shape, Shape::Fork | Shape::Join))
        {
            out.push_str("    classDef parallel fill:#e0e7ff,stroke:#4338ca,stroke-width:2px\n");
        }
        for (class, shapes) in [
            ("pivot", &[Shape::Pivot][..]),
            ("retriable", &[Shape::Retriable]),
            ("undo", &[Shape::Compensation]),
            ("terminal", &[Shape::Terminal]),
            ("parallel", &[Shape::Fork, Shape::Join]),
        ] {
            let ids: Vec<&str> = graph
                .nodes
                .iter()
                .filter(|n| shapes.contains(&n.shape))
                .map(|n| n.id.as_str())
                .collect();
            if !ids.is_empty() {
                let _ = writeln!(out, "    class {} {class}", ids.join(","));
            }
        }
        if let Some(path) = path {
            out.push_str("    classDef visited stroke:#1d4ed8,stroke-width:3px\n");
            out.push_str("    classDef current fill:#bfdbfe,stroke:#1d4ed8,stroke-width:4px\n");
            out.push_str(
                "    classDef skipped stroke:#9ca3af,stroke-dasharray:2 2,color:#6b7280\n",
            );
            for (class, ids) in [
                ("visited", path.visited_nodes()),
                ("skipped", path.skipped_nodes()),
                ("current", path.current.iter().cloned().collect()),
            ] {
                let ids: Vec<String> = ids
                    .into_iter()
                    .filter(|id| graph.nodes.iter().any(|n| &n.id == id))
                    .collect();
                if !ids.is_empty() {
                    let _ = writeln!(out, "    class {} {class}", ids.join(","));
                }
            }
            let taken: Vec<String> = graph
                .edges
                .iter()
                .enumerate()
                .filter(|(_, e)| path.took(e))
                .map(|(i, _)| i.to_string())
                .collect();
            if !taken.is_empty() {
                let _ = writeln!(
                    out,
                    "    linkStyle {} stroke:#1d4ed8,stroke-width:3px",
                    taken.join(",")
                );
            }
        }
        out
    }

    /// The graph in Graphviz DOT, with `path` (one instance's) drawn on it when given.
    pub fn to_dot(&self, path: Option<&SagaPath>) -> String {
        let graph = self;
        let mut out = String::new();
        let _ = writeln!(out, "digraph \"{}\" {{", dot_text(&self.name));
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
                Shape::Fork | Shape::Join => {
                    "shape=box, style=\"filled,bold\", fillcolor=\"#e0e7ff\", color=\"#4338ca\""
                }
            };
            let marks = path.map(|p| p.dot_node_marks(&node.id)).unwrap_or_default();
            let _ = writeln!(out, "    {} [label=\"{label}\", {attrs}{marks}];", node.id);
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
            if path.is_some_and(|p| p.took(edge)) {
                attrs.push("penwidth=3, color=\"#1d4ed8\"".to_owned());
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

/// One instance's way through its graph, read from its timeline: the nodes it went through
/// in order, the steps its conditions skipped, and where it is now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaPath {
    /// Node ids in the order the saga went through them (no node twice in a row).
    pub visits: Vec<String>,
    /// Steps skipped by their condition.
    pub skipped: Vec<String>,
    /// Steps whose retry loop it went round.
    pub retried: Vec<String>,
    /// Forward steps that failed (to tell which edge a parallel step took into its join).
    #[serde(default)]
    pub failed: Vec<String>,
    /// The node it is at, while it is not finished.
    pub current: Option<String>,
}

impl SagaPath {
    /// The path of the saga whose timeline is `events` and whose state is `state`.
    pub fn from_timeline<'e>(
        events: impl IntoIterator<Item = &'e HistoryEvent>,
        state: &SagaState,
    ) -> Self {
        let mut path = SagaPath::default();
        let mut direction = Direction::Forward;
        let node = |direction: Direction, step: &str| match direction {
            Direction::Forward => step_id(step),
            Direction::Backward => undo_id(step),
        };
        for event in events {
            let visit = match event {
                HistoryEvent::Started => Some(START.to_owned()),
                HistoryEvent::CommandSent {
                    step, compensation, ..
                } => Some(match compensation {
                    true => undo_id(step),
                    false => step_id(step),
                }),
                HistoryEvent::StepSucceeded { step } => Some(step_id(step)),
                HistoryEvent::StepFailed { step, .. } => {
                    path.failed.push(step.clone());
                    Some(step_id(step))
                }
                HistoryEvent::StepSkipped { step } => {
                    path.skipped.push(step.clone());
                    None
                }
                HistoryEvent::RetryScheduled { step, .. } => {
                    if direction == Direction::Forward && !path.retried.contains(step) {
                        path.retried.push(step.clone());
                    }
                    None
                }
                HistoryEvent::CompensationStarted { .. } => {
                    direction = Direction::Backward;
                    None
                }
                HistoryEvent::StepCompensated { step }
                | HistoryEvent::CompensationFailed { step, .. } => Some(undo_id(step)),
                HistoryEvent::Parked { .. } => Some(FAILED.to_owned()),
                HistoryEvent::Operator { step, .. } => Some(node(direction, step)),
                HistoryEvent::Finished { status } => Some(match status {
                    SagaStatus::Compensated => COMPENSATED.to_owned(),
                    _ => COMPLETED.to_owned(),
                }),
                HistoryEvent::Forked { group, .. } => Some(fork_id(group)),
                HistoryEvent::Joined { group, .. } => Some(join_id(group)),
                HistoryEvent::TimedOut { .. }
                | HistoryEvent::OperatorRefused { .. }
                | HistoryEvent::Migrated { .. } => None,
            };
            if let Some(visit) = visit
                && path.visits.last() != Some(&visit)
            {
                path.visits.push(visit);
            }
        }
        if !state.status.is_terminal() {
            path.current = state
                .current_step
                .as_deref()
                .map(|step| node(state.direction, step));
        }
        path
    }

    /// The nodes it went through, each once.
    pub fn visited_nodes(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.visits
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .cloned()
            .collect()
    }

    /// The node ids of the skipped steps.
    pub fn skipped_nodes(&self) -> Vec<String> {
        self.skipped.iter().map(|s| step_id(s)).collect()
    }

    /// Whether the saga went along `edge`.
    pub fn took(&self, edge: &GraphEdge) -> bool {
        if edge.from == edge.to {
            return self.retried.iter().any(|step| step_id(step) == edge.from);
        }
        // The steps of a group interleave, so out of a fork and into a join count when both
        // ends were visited — into the join by its success edge or its failure edge.
        if edge.to.starts_with("join_") || edge.from.starts_with("fork_") {
            if let Some(skipped) = edge.label.as_deref().and_then(|l| l.strip_prefix("skip ")) {
                return self.skipped.iter().any(|s| s == skipped);
            }
            let visited = |id: &str| self.visits.iter().any(|v| v == id);
            let failed = edge
                .from
                .strip_prefix("step_")
                .is_some_and(|step| self.failed.iter().any(|f| f == step));
            let way = match edge.style {
                Style::Failure => failed,
                _ => !failed || edge.from.starts_with("fork_"),
            };
            return visited(&edge.from) && visited(&edge.to) && way;
        }
        self.visits
            .windows(2)
            .any(|pair| pair[0] == edge.from && pair[1] == edge.to)
    }

    fn dot_node_marks(&self, id: &str) -> String {
        if self.current.as_deref() == Some(id) {
            ", penwidth=4, color=\"#1d4ed8\", peripheries=2".to_owned()
        } else if self.visits.iter().any(|v| v == id) {
            ", penwidth=3, color=\"#1d4ed8\"".to_owned()
        } else if self.skipped_nodes().iter().any(|v| v == id) {
            ", color=\"#9ca3af\", fontcolor=\"#6b7280\"".to_owned()
        } else {
            String::new()
        }
    }
}
