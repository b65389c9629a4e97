//! A saga's timeline in brief: which steps ran, how they ended, and what was undone — what
//! a demo, a log line or a test assertion wants from a list of [`HistoryEvent`]s.
//!
//! ```
//! use saga_core::engine::HistoryEvent;
//! use saga_core::timeline::TimelineSummary;
//!
//! let events = [
//!     HistoryEvent::StepSucceeded { step: "create_order".into() },
//!     HistoryEvent::StepFailed { step: "authorize_card".into(), reason: "declined".into() },
//!     HistoryEvent::StepCompensated { step: "create_order".into() },
//! ];
//! let summary = TimelineSummary::of(&events);
//! assert_eq!(summary.forward_line(), "create_order → authorize_card ✗ (declined)");
//! assert_eq!(summary.compensated_line(), "create_order");
//! ```

use std::fmt;

use crate::engine::HistoryEvent;

/// One forward step that ran: its name, and why it failed if it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRun {
    /// The step.
    pub step: String,
    /// The failure reason, if the step failed.
    pub failure: Option<String>,
}

/// The forward steps a saga ran and the compensations it applied, in timeline order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimelineSummary {
    /// Forward steps that ended (succeeded or failed); skipped steps are left out.
    pub forward: Vec<StepRun>,
    /// Steps that were undone, in the order they were undone (the reverse of `forward`'s).
    pub compensated: Vec<String>,
    /// Why the saga parked in `failed`, if it did (the last park).
    pub parked: Option<String>,
}

impl TimelineSummary {
    /// Summarises `events` (a saga's history, oldest first).
    pub fn of<'a>(events: impl IntoIterator<Item = &'a HistoryEvent>) -> Self {
        let mut summary = Self::default();
        for event in events {
            match event {
                HistoryEvent::StepSucceeded { step } => summary.forward.push(StepRun {
                    step: step.clone(),
                    failure: None,
                }),
                HistoryEvent::StepFailed { step, reason } => summary.forward.push(StepRun {
                    step: step.clone(),
                    failure: Some(reason.clone()),
                }),
                HistoryEvent::StepCompensated { step } => summary.compensated.push(step.clone()),
                HistoryEvent::Parked { step, reason } => {
                    summary.parked = Some(format!("{step}: {reason}"));
                }
                _ => {}
            }
        }
        summary
    }

    /// `step → step ✗ (reason)`: the forward steps.
    pub fn forward_line(&self) -> String {
        let steps: Vec<String> = self
            .forward
            .iter()
            .map(|run| match &run.failure {
                None => run.step.clone(),
                Some(reason) => format!("{} ✗ ({reason})", run.step),
            })
            .collect();
        steps.join(" → ")
    }

    /// `step → step`: the compensations, in the order they ran.
    pub fn compensated_line(&self) -> String {
        self.compensated.join(" → ")
    }
}

impl fmt::Display for TimelineSummary {
    /// `steps: a → b ✗ (reason); compensated: a; parked: b: reason` (empty parts left out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "steps: {}", self.forward_line())?;
        if !self.compensated.is_empty() {
            write!(f, "; compensated: {}", self.compensated_line())?;
        }
        if let Some(parked) = &self.parked {
            write!(f, "; parked: {parked}")?;
        }
        Ok(())
    }
}
