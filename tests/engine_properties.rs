//! Property tests of the engine: for random step lists — their compensatable or retriable
//! steps run as parallel groups or not — and random reply outcomes answered in random order,
//! every run ends in exactly one terminal state, a turned-back saga compensates exactly the
//! completed compensatable steps in reverse order, and nothing turns back after the pivot.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use saga_core::definition::IncomingReply;
use saga_core::engine::{
    self, BranchState, EngineError, HistoryEvent, OperatorCommand, OperatorRequest, Outcome,
    Pending, SagaAction, SagaEvent, SagaInstance, SagaStatus, SagaTimer,
};
use saga_core::{
    Command, CommandFailed, Reply, RetryPolicy, SagaDefinition, SagaId, Step, StepDefinition,
    StepFailure, StepKind, Timestamp,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Data {
    /// Local steps that fail (their first attempt).
    failing_locals: BTreeSet<String>,
    attempts: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(channel = "participant", reply = Done)]
struct Do {
    step: String,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(channel = "participant", reply = Done)]
struct Undo {
    step: String,
}

#[derive(Debug, Serialize, Deserialize, Reply)]
struct Done;

#[derive(Clone, Copy, Debug)]
enum Forward {
    Command,
    Local { fails: bool },
}

#[derive(Clone, Copy, Debug)]
enum Compensation {
    None,
    Command,
    Local,
}

#[derive(Clone, Debug)]
struct StepSpec {
    forward: Forward,
    compensation: Compensation,
    /// `Some(false)`: a condition that does not hold, so the step is skipped.
    condition: Option<bool>,
}

#[derive(Clone, Debug)]
struct Shape {
    compensatable: Vec<StepSpec>,
    pivot: Option<StepSpec>,
    retriable: Vec<StepSpec>,
    /// Run the compensatable steps as one parallel group (when there are two or more).
    parallel_compensatable: bool,
    /// Run the retriable steps as one parallel group (when there are two or more).
    parallel_retriable: bool,
}

fn forward() -> impl Strategy<Value = Forward> {
    prop_oneof![
        3 => Just(Forward::Command),
        1 => any::<bool>().prop_map(|fails| Forward::Local { fails }),
    ]
}

fn step_spec(compensations: bool) -> impl Strategy<Value = StepSpec> {
    let compensation = if compensations {
        prop_oneof![
            Just(Compensation::None),
            Just(Compensation::Command),
            Just(Compensation::Local)
        ]
        .boxed()
    } else {
        Just(Compensation::None).boxed()
    };
    (
        forward(),
        compensation,
        prop_oneof![4 => Just(None), 1 => any::<bool>().prop_map(Some)],
    )
        .prop_map(|(forward, compensation, condition)| StepSpec {
            forward,
            compensation,
            condition,
        })
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        prop::collection::vec(step_spec(true), 0..6),
        prop::option::of(step_spec(false)),
        prop::collection::vec(step_spec(false), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(compensatable, pivot, retriable, parallel_compensatable, parallel_retriable)| Shape {
                compensatable,
                pivot,
                retriable,
                parallel_compensatable,
                parallel_retriable,
            },
        )
        .prop_filter("at least one step", |s| {
            !s.compensatable.is_empty() || s.pivot.is_some() || !s.retriable.is_empty()
        })
}

fn build(shape: &Shape) -> (SagaDefinition<Data>, BTreeSet<String>) {
    let mut builder = SagaDefinition::<Data>::builder("RandomSaga");
    let mut failing = BTreeSet::new();
    let policy = RetryPolicy::fixed(Duration::from_millis(10)).max_attempts(3);
    let groups = [
        (StepKind::Compensatable, shape.compensatable.clone()),
        (StepKind::Pivot, shape.pivot.clone().into_iter().collect()),
        (StepKind::Retriable, shape.retriable.clone()),
    ];
    for (kind, specs) in groups {
        let parallel = specs.len() >= 2
            && match kind {
                StepKind::Compensatable => shape.parallel_compensatable,
                StepKind::Retriable => shape.parallel_retriable,
                StepKind::Pivot => false,
            };
        let mut members = Vec::new();
        for (index, spec) in specs.into_iter().enumerate() {
            let name = format!("{}_{index}", kind.as_str());
            let step = match kind {
                StepKind::Compensatable => Step::compensatable::<Data>(name.clone()),
                StepKind::Pivot => Step::pivot(name.clone()),
                StepKind::Retriable => Step::retriable(name.clone()),
            };
            let mut step = step.retry(policy.clone());
            if let Some(holds) = spec.condition {
                step = step.when(move |_| holds);
            }
            step = match spec.compensation {
                Compensation::None => step,
                Compensation::Command => {
                    let n = name.clone();
                    step.compensate(move |_| Undo { step: n.clone() })
                }
                Compensation::Local => step.compensate_local(|_| Ok(())),
            };
            let step: StepDefinition<Data> = match spec.forward {
                Forward::Command => {
                    let n = name.clone();
                    step.invoke(move |_| Do { step: n.clone() }).into()
                }
                Forward::Local { fails } => {
                    if fails {
                        failing.insert(name.clone());
                    }
                    let n = name.clone();
                    step.local(move |data: &mut Data| {
                        data.attempts.push(n.clone());
                        if data.failing_locals.remove(&n) {
                            Err(StepFailure::new(format!("{n} failed")))
                        } else {
                            Ok(())
                        }
                    })
                    .into()
                }
            };
            match parallel {
                true => members.push(step),
                false => builder = builder.step(step),
            }
        }
        if parallel {
            builder = builder.parallel(members);
        }
    }
    (
        builder.build().expect("generated shapes are valid"),
        failing,
    )
}

fn reply(success: bool) -> IncomingReply {
    if success {
        IncomingReply::from_reply(&Done).expect("encodes")
    } else {
        IncomingReply::from_reply(&CommandFailed::new("refused")).expect("encodes")
    }
}

/// What happens next to a saga that has not finished: the operator's retry or skip (as
/// `skip` says) when it is parked, else the reply it waits for (a success or a failure, from
/// `outcomes`), or its retry timer, with the clock moved to when that is due.
fn next_event(
    instance: &SagaInstance<Data>,
    now: &mut Timestamp,
    outcomes: &mut impl Iterator<Item = bool>,
    skip: &mut dyn FnMut() -> bool,
) -> SagaEvent {
    // In a parallel group, a branch that waits answers: the first or the last, at random.
    let waiting: Vec<_> = instance
        .state
        .branches
        .iter()
        .filter_map(|b| match b.state {
            BranchState::Waiting { pending } => Some((pending, b.deadline)),
            _ => None,
        })
        .collect();
    if instance.state.status != SagaStatus::Failed && !waiting.is_empty() {
        let (pending, deadline) = match outcomes.next().unwrap_or(true) {
            true => waiting[0],
            false => waiting[waiting.len() - 1],
        };
        return match pending {
            Pending::Reply { request_id } => SagaEvent::Reply {
                request_id,
                reply: reply(outcomes.next().unwrap_or(true)),
            },
            Pending::Retry { request_id } => {
                *now = deadline.unwrap_or(*now).max(*now);
                SagaEvent::Timer(SagaTimer::RetryDue { request_id })
            }
        };
    }
    match (instance.state.status, instance.state.pending) {
        (SagaStatus::Failed, _) => {
            let command = match skip() {
                true => OperatorCommand::Skip,
                false => OperatorCommand::Retry,
            };
            SagaEvent::Operator(OperatorRequest::new(command, "test", ""))
        }
        (_, Some(Pending::Reply { request_id })) => SagaEvent::Reply {
            request_id,
            reply: reply(outcomes.next().unwrap_or(true)),
        },
        (_, Some(Pending::Retry { request_id })) => {
            *now = instance.state.deadline.unwrap_or(*now);
            SagaEvent::Timer(SagaTimer::RetryDue { request_id })
        }
        (status, None) => panic!("saga stuck in {status} with nothing pending"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_run_ends_in_one_terminal_state_and_compensates_in_reverse(
        shape in shape(),
        outcomes in prop::collection::vec(any::<bool>(), 0..40),
        operator_skips in prop::collection::vec(any::<bool>(), 0..8),
    ) {
        let (definition, failing_locals) = build(&shape);
        let data = Data { failing_locals, attempts: Vec::new() };
        let mut now = Timestamp(1_000);
        let start = engine::start(&definition, SagaId::new(), data, now).expect("starts");
        let mut instance: SagaInstance<Data> = start.instance;
        let mut history = start.history;
        let mut actions = start.actions;
        let mut outcomes = outcomes.into_iter();
        let mut skips = operator_skips.into_iter();

        for _ in 0..10_000 {
            if instance.state.status.is_terminal() {
                break;
            }
            let event = next_event(&instance, &mut now, &mut outcomes, &mut || {
                skips.next().unwrap_or(false)
            });
            let outcome = engine::transition(&definition, &instance, &event, now).expect("applies");
            let Outcome::Applied(transition) = outcome else {
                panic!("live event ignored: {event:?}");
            };
            instance = transition.instance;
            history.extend(transition.history);
            actions.extend(transition.actions);
        }

        // Exactly one terminal state, reported once, last.
        let status = instance.state.status;
        prop_assert!(status.is_terminal(), "ended in {status}");
        let finished: Vec<_> = history
            .iter()
            .filter(|e| matches!(e, HistoryEvent::Finished { .. }))
            .collect();
        prop_assert_eq!(finished.len(), 1);
        prop_assert_eq!(history.last(), Some(&HistoryEvent::Finished { status }));
        let terminal_actions = actions
            .iter()
            .filter(|a| matches!(a, SagaAction::Finished(_)))
            .count();
        prop_assert_eq!(terminal_actions, 1);

        // Forward steps that succeeded, in order, and the compensations that ran.
        let mut succeeded = Vec::new();
        let mut compensated = Vec::new();
        let mut turned_back = false;
        for event in &history {
            match event {
                HistoryEvent::CompensationStarted { .. } => turned_back = true,
                HistoryEvent::StepSucceeded { step } if !turned_back => succeeded.push(step.clone()),
                HistoryEvent::StepCompensated { step } => compensated.push(step.clone()),
                _ => {}
            }
        }
        let has_compensation = |name: &String| {
            definition.step(name).and_then(|(_, s)| s.compensation()).is_some()
        };
        // Compensated in the reverse of definition order (the steps of a group answer in any
        // order, and are undone in the reverse of the order they are declared in).
        let position = |name: &String| definition.step(name).map_or(usize::MAX, |(i, _)| i);
        let mut expected: Vec<String> = succeeded.iter().filter(|s| has_compensation(s)).cloned().collect();
        expected.sort_by_key(|s| std::cmp::Reverse(position(s)));
        let mut succeeded_in_order = succeeded.clone();
        succeeded_in_order.sort_by_key(position);
        let forked = history.iter().filter(|e| matches!(e, HistoryEvent::Forked { .. })).count();
        let joined = history.iter().filter(|e| matches!(e, HistoryEvent::Joined { .. })).count();
        prop_assert_eq!(forked, joined, "every fork joins");
        match status {
            SagaStatus::Completed => {
                prop_assert!(!turned_back);
                prop_assert!(compensated.is_empty());
                let applicable: Vec<String> = definition
                    .steps()
                    .iter()
                    .filter(|s| s.applies_to(&instance.data))
                    .map(|s| s.name().to_owned())
                    .collect();
                prop_assert_eq!(&succeeded_in_order, &applicable);
            }
            SagaStatus::Compensated => {
                prop_assert!(turned_back);
                prop_assert_eq!(&compensated, &expected);
                // Nothing turns back once the pivot has succeeded, and retriable steps
                // never turn a saga back.
                if let Some(pivot) = definition.pivot() {
                    prop_assert!(!succeeded.iter().any(|s| s == pivot.name()));
                }
                let reason_step = history.iter().find_map(|e| match e {
                    HistoryEvent::CompensationStarted { step, .. } => Some(step.clone()),
                    _ => None,
                });
                let reason_kind = reason_step.and_then(|s| definition.step(&s).map(|(_, d)| d.kind()));
                prop_assert_ne!(reason_kind, Some(StepKind::Retriable));
                // Compensation commands went out only for steps being undone, in order
                // (retries of one compensation repeat it).
                let mut undo_commands: Vec<String> = Vec::new();
                for action in &actions {
                    if let SagaAction::Send(cmd) = action
                        && cmd.compensation
                        && undo_commands.last() != Some(&cmd.step)
                    {
                        undo_commands.push(cmd.step.clone());
                    }
                }
                let command_compensated: Vec<String> = expected
                    .iter()
                    .filter(|s| matches!(
                        definition.step(s).and_then(|(_, d)| d.compensation()),
                        Some(saga_core::Action::Command(_))
                    ))
                    .cloned()
                    .collect();
                prop_assert_eq!(undo_commands, command_compensated);
            }
            other => prop_assert!(false, "not terminal: {other}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// An operator cancel at any point of a run is either refused — only once the pivot (or a
    /// retriable step) has been reached — or turns the saga back: it ends compensated, having
    /// undone exactly the steps that ran (and the one awaiting its reply) in reverse order.
    #[test]
    fn a_cancel_is_refused_after_the_pivot_and_otherwise_undoes_what_ran(
        shape in shape(),
        outcomes in prop::collection::vec(any::<bool>(), 0..40),
        cancel_at in 0usize..12,
    ) {
        let (definition, failing_locals) = build(&shape);
        let data = Data { failing_locals, attempts: Vec::new() };
        let mut now = Timestamp(1_000);
        let start = engine::start(&definition, SagaId::new(), data, now).expect("starts");
        let mut instance: SagaInstance<Data> = start.instance;
        let mut history = start.history;
        let mut outcomes = outcomes.into_iter();
        let mut cancel: Option<Result<Vec<String>, String>> = None;

        for event_number in 0..10_000 {
            let status = instance.state.status;
            if status.is_terminal() {
                break;
            }
            if cancel.is_none() && event_number >= cancel_at && status == SagaStatus::Running {
                let request = OperatorRequest::new(OperatorCommand::Cancel, "ops", "test");
                let state = &instance.state;
                // What a cancel must undo: the steps that ran, and the one awaiting its reply.
                let mut ran = state.completed_steps.clone();
                if state.branches.is_empty() {
                    if let Some(step) = &state.current_step
                        && matches!(state.pending, Some(Pending::Reply { .. }))
                    {
                        ran.push(step.clone());
                    }
                } else {
                    // In a group: every step still awaiting its reply.
                    ran.extend(state.branches.iter().filter(|b| matches!(
                        b.state,
                        BranchState::Waiting { pending: Pending::Reply { .. } }
                    )).map(|b| b.step.clone()));
                }
                let reached_pivot = ran.iter().chain(state.current_step.iter()).any(|s| {
                    definition.step(s).is_some_and(|(_, d)| d.kind() != StepKind::Compensatable)
                });
                match engine::transition(&definition, &instance, &SagaEvent::Operator(request), now) {
                    Ok(Outcome::Applied(transition)) => {
                        prop_assert!(!reached_pivot, "cancel applied after the pivot");
                        instance = transition.instance;
                        history.extend(transition.history);
                        cancel = Some(Ok(ran));
                        continue;
                    }
                    Err(EngineError::OperatorRefused { why, .. }) => {
                        prop_assert!(reached_pivot, "cancel refused before the pivot: {}", why);
                        cancel = Some(Err(why));
                    }
                    other => prop_assert!(false, "cancel gave {:?}", other.map(|_| ())),
                }
            }
            let event = next_event(&instance, &mut now, &mut outcomes, &mut || true);
            let outcome = engine::transition(&definition, &instance, &event, now).expect("applies");
            let Outcome::Applied(transition) = outcome else {
                panic!("live event ignored: {event:?}");
            };
            instance = transition.instance;
            history.extend(transition.history);
        }
        prop_assert!(instance.state.status.is_terminal());
        if let Some(Ok(ran)) = cancel {
            // Skipped compensations (operator skips of a parked one) still count as undone.
            let undone: Vec<String> = history
                .iter()
                .skip_while(|e| !matches!(e, HistoryEvent::Operator { command: OperatorCommand::Cancel, .. }))
                .filter_map(|e| match e {
                    HistoryEvent::StepCompensated { step } => Some(step.clone()),
                    _ => None,
                })
                .collect();
            let mut expected: Vec<String> = ran
                .iter()
                .filter(|s| definition.step(s).and_then(|(_, d)| d.compensation()).is_some())
                .cloned()
                .collect();
            expected.sort_by_key(|s| std::cmp::Reverse(definition.step(s).map_or(0, |(i, _)| i)));
            prop_assert_eq!(instance.state.status, SagaStatus::Compensated);
            prop_assert_eq!(undone, expected);
        }
    }
}
