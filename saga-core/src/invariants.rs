//! The rules a saga's timeline keeps, whoever checks them: exploration ([`crate::explore`])
//! on every path of one saga, simulation ([`crate::simulation`]) on every saga of a run.

use std::collections::BTreeSet;

use crate::definition::{SagaDefinition, StepKind};
use crate::engine::{HistoryEvent, SagaStatus};
use crate::graph::{SagaGraph, Shape};

/// A saga's steps in definition order, with their kinds.
#[derive(Clone, Debug, Default)]
pub(crate) struct StepKinds(Vec<(String, StepKind)>);

impl StepKinds {
    pub(crate) fn of_definition<D>(definition: &SagaDefinition<D>) -> Self {
        Self(
            definition
                .steps()
                .iter()
                .map(|s| (s.name().to_owned(), s.kind()))
                .collect(),
        )
    }

    /// From a drawn graph: its step nodes, top to bottom.
    pub(crate) fn of_graph(graph: &SagaGraph) -> Self {
        Self(
            graph
                .nodes
                .iter()
                .filter_map(|node| {
                    let kind = match node.shape {
                        Shape::Compensatable => StepKind::Compensatable,
                        Shape::Pivot => StepKind::Pivot,
                        Shape::Retriable => StepKind::Retriable,
                        _ => return None,
                    };
                    let name = node.id.strip_prefix("step_")?;
                    Some((name.to_owned(), kind))
                })
                .collect(),
        )
    }

    fn position(&self, step: &str) -> usize {
        self.0
            .iter()
            .position(|(name, _)| name == step)
            .unwrap_or(usize::MAX)
    }

    fn kind(&self, step: &str) -> Option<StepKind> {
        self.0
            .iter()
            .find(|(name, _)| name == step)
            .map(|(_, kind)| *kind)
    }

    fn pivot(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, kind)| *kind == StepKind::Pivot)
            .map(|(name, _)| name.as_str())
    }
}

/// Once the pivot succeeded, a compensation or a compensatable step sent is a violation.
pub(crate) fn after_pivot_problem(steps: &StepKinds, history: &[HistoryEvent]) -> Option<String> {
    let pivot = steps.pivot()?;
    let succeeded = history
        .iter()
        .position(|e| matches!(e, HistoryEvent::StepSucceeded { step } if step == pivot))?;
    history[succeeded..].iter().find_map(|event| {
        let HistoryEvent::CommandSent {
            step, compensation, ..
        } = event
        else {
            return None;
        };
        let compensatable = steps.kind(step) == Some(StepKind::Compensatable);
        (*compensation || compensatable).then(|| {
            format!(
                "step `{step}` {} after the pivot `{pivot}` succeeded",
                if *compensation {
                    "was compensated"
                } else {
                    "ran"
                }
            )
        })
    })
}

/// The compensations recorded in `history`, in the order they completed.
pub(crate) fn compensated(history: &[HistoryEvent]) -> Vec<&str> {
    history
        .iter()
        .filter_map(|e| match e {
            HistoryEvent::StepCompensated { step } => Some(step.as_str()),
            _ => None,
        })
        .collect()
}

/// The rules of a saga's whole timeline: each compensation once, in reverse definition
/// order, only of a step that ran (`ran`) and was not skipped by its condition; a completed
/// saga undid nothing; a parked one says why.
pub(crate) fn timeline_problem(
    steps: &StepKinds,
    history: &[HistoryEvent],
    status: SagaStatus,
    last_error: Option<&str>,
    ran: &dyn Fn(&str) -> bool,
) -> Option<String> {
    let compensated = compensated(history);
    let mut seen = BTreeSet::new();
    if let Some(twice) = compensated.iter().find(|s| !seen.insert(**s)) {
        return Some(format!("step `{twice}` was compensated twice"));
    }
    if compensated
        .windows(2)
        .any(|w| steps.position(w[0]) < steps.position(w[1]))
    {
        return Some(format!(
            "compensations ran in {compensated:?}, not in reverse order"
        ));
    }
    let skipped: BTreeSet<&str> = history
        .iter()
        .filter_map(|e| match e {
            HistoryEvent::StepSkipped { step } => Some(step.as_str()),
            _ => None,
        })
        .collect();
    for step in &compensated {
        if skipped.contains(step) || !ran(step) {
            return Some(format!(
                "step `{step}` was compensated but never ran{}",
                if skipped.contains(step) {
                    " (its condition skipped it)"
                } else {
                    ""
                }
            ));
        }
    }
    if let Some(problem) = after_pivot_problem(steps, history) {
        return Some(problem);
    }
    match status {
        SagaStatus::Completed if !compensated.is_empty() => Some(format!(
            "the saga completed but compensated {compensated:?}"
        )),
        SagaStatus::Failed if last_error.unwrap_or("").is_empty() => {
            Some("the saga parked without a reason".to_owned())
        }
        _ => None,
    }
}

/// Whether a forward step ran according to `history`: its command was sent, or it ran
/// locally and succeeded.
pub(crate) fn ran_in(history: &[HistoryEvent], step: &str) -> bool {
    history.iter().any(|e| match e {
        HistoryEvent::CommandSent {
            step: sent,
            compensation: false,
            ..
        } => sent == step,
        HistoryEvent::StepSucceeded { step: done } => done == step,
        _ => false,
    })
}
