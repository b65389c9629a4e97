//! Parallel groups: steps that run at once.
//!
//! Entering a group starts every member whose condition holds, each as a [`Branch`] with its
//! own request, attempts and deadline. The saga-wide `current_step`, `pending`, `deadline`
//! and `attempt` then mirror the branch whose deadline comes first, so a store keeps one
//! timer per saga as before; an event for a branch first *focuses* it (copies its fields
//! into the saga-wide ones), runs the single-step logic, and saves it back.
//!
//! The group joins when no branch waits any more: all done, the saga goes on after the
//! group; one failed, it turns back and compensates what took effect — the group's members
//! in definition order, then the steps before them — in reverse. A member that fails does
//! not stop the others: their answers (or timeouts) are waited for, so that what they did is
//! known and undone.

use serde::{Deserialize, Serialize};

use super::{
    Direction, EngineError, HistoryEvent, Ignored, Machine, Pending, Progress, SagaStatus,
    SagaTimer,
};
use crate::definition::{IncomingReply, SagaData, StepDefinition};
use crate::engine::{OperatorCommand, OperatorRequest};
use crate::ids::{RequestId, Timestamp};

/// A step of the parallel group in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    /// The step.
    pub step: String,
    /// Where it is.
    #[serde(flatten)]
    pub state: BranchState,
    /// Attempts made at it.
    pub attempt: u32,
    /// When its reply times out or its retry is due.
    pub deadline: Option<Timestamp>,
}

/// Where a [`Branch`] is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BranchState {
    /// Not started yet (only while the group starts).
    Starting,
    /// Waiting for its reply or its retry.
    Waiting {
        /// What it waits for.
        pending: Pending,
    },
    /// It succeeded.
    Done,
    /// It failed; the saga turns back once no other branch waits.
    Failed {
        /// Why.
        reason: String,
    },
    /// The saga parked before it finished: an operator `retry` runs it again, `skip` counts
    /// it done.
    Halted,
}

impl Branch {
    fn new(step: &str) -> Self {
        Self {
            step: step.to_owned(),
            state: BranchState::Starting,
            attempt: 0,
            deadline: None,
        }
    }

    /// Still to answer: starting or waiting.
    pub fn is_unfinished(&self) -> bool {
        matches!(
            self.state,
            BranchState::Starting | BranchState::Waiting { .. }
        )
    }

    fn waits_for_reply(&self, request_id: RequestId) -> bool {
        matches!(self.state, BranchState::Waiting { pending: Pending::Reply { request_id: r } } if r == request_id)
    }
}

impl<'d, D: SagaData> Machine<'d, D> {
    /// Whether a parallel group is in flight.
    pub(super) fn in_group(&self) -> bool {
        !self.instance.state.branches.is_empty()
    }

    /// Starts the group of step `from` (the first of its members whose condition holds):
    /// every member from there whose condition holds.
    pub(super) fn start_group(&mut self, from: usize) -> Result<(), EngineError> {
        let definition = self.definition;
        let end = definition.group_of(from).end;
        let mut members: Vec<(usize, &'d StepDefinition<D>)> = Vec::new();
        for (index, step) in definition.steps().iter().enumerate().take(end).skip(from) {
            // The first was checked by the caller, which found it runs.
            if index == from || self.runs(step) {
                members.push((index, step));
            }
        }
        let names: Vec<String> = members.iter().map(|(_, s)| s.name().to_owned()).collect();
        self.history.push(HistoryEvent::Forked {
            group: self.group_name(from),
            steps: names.clone(),
        });
        self.instance.state.branches = names.iter().map(|name| Branch::new(name)).collect();
        self.run_members(members, false)
    }

    /// Attempts each of `members` — or, for an operator's `skip`, counts it done — holding
    /// the group's decisions until all have started; once one fails at once, the rest are
    /// not started. Then the group goes on (unless the saga parked).
    fn run_members(
        &mut self,
        members: Vec<(usize, &'d StepDefinition<D>)>,
        skip: bool,
    ) -> Result<(), EngineError> {
        self.forking = true;
        for (index, step) in members {
            if self.failed_branch().is_some() {
                self.instance
                    .state
                    .branches
                    .retain(|b| b.step != step.name());
                continue;
            }
            self.enter(step);
            let progress = match skip {
                true => Progress::Done,
                false => self.attempt(step, None)?,
            };
            self.after_attempt((index, step), progress, false)?;
            if self.instance.state.status == SagaStatus::Failed {
                break;
            }
        }
        self.forking = false;
        match self.instance.state.status {
            SagaStatus::Failed => Ok(()),
            _ => self.group_progress(),
        }
    }

    /// What an attempt at a member going forward did.
    pub(super) fn after_branch_attempt(
        &mut self,
        step: &'d StepDefinition<D>,
        progress: Progress,
        uncertain: bool,
    ) -> Result<(), EngineError> {
        match progress {
            Progress::Waiting => {
                self.save_branch(step.name());
                self.group_progress()
            }
            Progress::Done => {
                self.step_succeeded(step);
                self.set_branch(step.name(), BranchState::Done);
                self.group_progress()
            }
            Progress::Failed(reason) => self.forward_failed(step, reason, uncertain),
        }
    }

    /// A member failed (after its retries, for a timed-out one): it waits for the others.
    /// The first to fail goes first among the branches, so its reason is the saga's.
    pub(super) fn branch_failed(
        &mut self,
        step: &StepDefinition<D>,
        reason: String,
    ) -> Result<(), EngineError> {
        let first = self.failed_branch().is_none();
        self.set_branch(step.name(), BranchState::Failed { reason });
        let branches = &mut self.instance.state.branches;
        if first && let Some(at) = branches.iter().position(|b| b.step == step.name()) {
            let failed = branches.remove(at);
            branches.insert(0, failed);
        }
        self.group_progress()
    }

    /// Joins the group once no branch waits: on after it, or back if one failed. Until
    /// then, points the saga's timer at the branch due first.
    pub(super) fn group_progress(&mut self) -> Result<(), EngineError> {
        if self.forking {
            return Ok(());
        }
        if self
            .instance
            .state
            .branches
            .iter()
            .any(Branch::is_unfinished)
        {
            self.point_timer();
            return Ok(());
        }
        let failed = self.failed_branch();
        let definition = self.definition;
        let mut names: Vec<String> = self
            .instance
            .state
            .branches
            .iter()
            .map(|b| b.step.clone())
            .collect();
        names.sort_by_key(|name| definition.step(name).map_or(usize::MAX, |(index, _)| index));
        let last = names
            .iter()
            .filter_map(|name| self.definition.step(name).map(|(index, _)| index))
            .max()
            .unwrap_or(0);
        let end = self.definition.group_of(last).end;
        let group = self.group_name(last);
        self.leave_group(&names);
        self.history.push(HistoryEvent::Joined {
            group,
            steps: names,
        });
        match failed {
            Some((step, reason)) => self.turn_back(&step, reason, true),
            None => self.run_forward_from(end),
        }
    }

    /// The name of the group of step `index`: its first step's.
    fn group_name(&self, index: usize) -> String {
        let first = self.definition.group_of(index).start;
        self.definition.steps()[first].name().to_owned()
    }

    fn failed_branch(&self) -> Option<(String, String)> {
        self.instance
            .state
            .branches
            .iter()
            .find_map(|b| match &b.state {
                BranchState::Failed { reason } => Some((b.step.clone(), reason.clone())),
                _ => None,
            })
    }

    /// Clears the branches, and puts the group's members among the completed steps in
    /// definition order, so they are compensated in the reverse of it whatever order they
    /// answered in.
    fn leave_group(&mut self, members: &[String]) {
        let definition = self.definition;
        let state = &mut self.instance.state;
        state.branches.clear();
        let from = state
            .completed_steps
            .iter()
            .position(|step| members.contains(step))
            .unwrap_or(state.completed_steps.len());
        state.completed_steps[from..]
            .sort_by_key(|step| definition.step(step).map_or(usize::MAX, |(index, _)| index));
    }

    /// The saga-wide wait mirrors the waiting branch due first (one without a deadline only
    /// when none has one).
    fn point_timer(&mut self) {
        let first = self
            .instance
            .state
            .branches
            .iter()
            .filter(|b| matches!(b.state, BranchState::Waiting { .. }))
            .min_by_key(|b| b.deadline.map_or(u64::MAX, |d| d.as_millis()))
            .cloned();
        if let Some(branch) = first {
            self.focus(&branch);
        }
    }

    /// Makes `branch` the saga's current step, with its wait and attempts.
    pub(super) fn focus(&mut self, branch: &Branch) {
        let state = &mut self.instance.state;
        state.current_step = Some(branch.step.clone());
        state.pending = match branch.state {
            BranchState::Waiting { pending } => Some(pending),
            _ => None,
        };
        state.deadline = branch.deadline;
        state.attempt = branch.attempt;
    }

    /// Saves the saga-wide wait and attempts into the branch of `step`.
    pub(super) fn save_branch(&mut self, step: &str) {
        let state = &mut self.instance.state;
        let (pending, deadline, attempt) = (state.pending, state.deadline, state.attempt);
        if let Some(branch) = state.branches.iter_mut().find(|b| b.step == step) {
            if let Some(pending) = pending {
                branch.state = BranchState::Waiting { pending };
            }
            branch.deadline = deadline;
            branch.attempt = attempt;
        }
    }

    fn set_branch(&mut self, step: &str, to: BranchState) {
        let state = &mut self.instance.state;
        let attempt = state.attempt;
        if let Some(branch) = state.branches.iter_mut().find(|b| b.step == step) {
            branch.state = to;
            branch.deadline = None;
            branch.attempt = attempt;
        }
    }

    /// The saga parks: every branch that has not succeeded waits for an operator.
    pub(super) fn halt_branches(&mut self) {
        for branch in &mut self.instance.state.branches {
            if branch.state != BranchState::Done {
                branch.state = BranchState::Halted;
                branch.deadline = None;
            }
        }
    }

    /// A reply to one of the branches.
    pub(super) fn on_branch_reply(
        &mut self,
        request_id: RequestId,
        reply: &IncomingReply,
    ) -> Result<Option<Ignored>, EngineError> {
        let branch = self
            .instance
            .state
            .branches
            .iter()
            .find(|b| b.waits_for_reply(request_id))
            .cloned();
        let stale = match &branch {
            None => true,
            // "Never handled" is about one send; after a resend it says nothing.
            Some(branch) => reply
                .undelivered_before
                .is_some_and(|deadline| branch.deadline != Some(deadline)),
        };
        if stale || self.instance.state.status == SagaStatus::Failed {
            return Ok(Some(Ignored::StaleReply { request_id }));
        }
        if let Some(branch) = branch {
            self.focus(&branch);
        }
        self.on_reply(reply)?;
        Ok(None)
    }

    /// The branch `timer` is for, if it still waits for it.
    pub(super) fn branch_for_timer(&self, timer: SagaTimer) -> Option<Branch> {
        self.instance
            .state
            .branches
            .iter()
            .find(|b| match (timer, &b.state) {
                (
                    SagaTimer::Timeout {
                        request_id,
                        attempt,
                    },
                    BranchState::Waiting {
                        pending: Pending::Reply { request_id: r },
                    },
                ) => request_id == *r && attempt == b.attempt,
                (
                    SagaTimer::RetryDue { request_id },
                    BranchState::Waiting {
                        pending: Pending::Retry { request_id: r },
                    },
                ) => request_id == *r,
                _ => false,
            })
            .cloned()
    }

    /// An operator `retry` or `skip` of a saga parked in a group: the halted branches run
    /// again with a fresh budget, or count as done.
    pub(super) fn resume_group(&mut self, request: &OperatorRequest) -> Result<(), EngineError> {
        let halted: Vec<String> = self
            .instance
            .state
            .branches
            .iter()
            .filter(|b| b.state == BranchState::Halted)
            .map(|b| b.step.clone())
            .collect();
        self.history.push(HistoryEvent::Operator {
            command: request.command,
            step: halted.join(", "),
            actor: request.actor.clone(),
            reason: request.reason.clone(),
        });
        let state = &mut self.instance.state;
        state.status = SagaStatus::Running;
        state.last_error = None;
        let members = halted
            .iter()
            .map(|name| self.step_named(name))
            .collect::<Result<Vec<_>, _>>()?;
        self.run_members(members, request.command == OperatorCommand::Skip)
    }

    /// An operator cancels the saga during a group: every branch still waiting for its reply
    /// may have taken effect, so it is compensated with those that succeeded.
    pub(super) fn abandon_group(&mut self) {
        let definition = self.definition;
        let state = &mut self.instance.state;
        let names: Vec<String> = state.branches.iter().map(|b| b.step.clone()).collect();
        for branch in &state.branches {
            let awaiting = matches!(
                branch.state,
                BranchState::Waiting {
                    pending: Pending::Reply { .. }
                }
            );
            let undoable = definition
                .step(&branch.step)
                .is_some_and(|(_, step)| step.compensation().is_some());
            if awaiting && undoable && !state.completed_steps.contains(&branch.step) {
                state.completed_steps.push(branch.step.clone());
            }
        }
        self.leave_group(&names);
        let state = &mut self.instance.state;
        state.pending = None;
        state.deadline = None;
        debug_assert_eq!(state.direction, Direction::Forward);
    }
}
