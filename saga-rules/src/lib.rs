//! # saga-rules
//!
//! The step rules of a saga, written once: the `saga!` macro applies them at compile time
//! (reporting every violation at the offending step, in its own words) and
//! `saga_core::SagaDefinition::builder` applies them at run time to definitions built by hand
//! (reporting the first). No dependencies, so the compile-fail tests stay fast.
//!
//! - a saga has at least one step;
//! - step names are unique;
//! - at most one pivot;
//! - compensatable steps come before the pivot and before any retriable step;
//! - retriable steps come after the pivot (when the saga has one);
//! - only compensatable steps have a compensation;
//! - a parallel group has at least two steps, all compensatable or all retriable (never the
//!   pivot), one after the other.

use std::collections::BTreeMap;
use std::fmt;

/// The kind of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// May be undone later by its compensation; its failure turns the saga back.
    Compensatable,
    /// The go/no-go point (at most one); its failure turns the saga back, its success commits
    /// the saga to completing.
    Pivot,
    /// After the pivot; retried with backoff until it succeeds, never turns the saga back.
    Retriable,
}

impl StepKind {
    /// Every kind, in the order they are listed in messages.
    pub const ALL: [Self; 3] = [Self::Compensatable, Self::Pivot, Self::Retriable];
    /// Their keywords, in the same order.
    pub const KEYWORDS: [&'static str; 3] = ["compensatable", "pivot", "retriable"];

    /// The lowercase name, which is also the DSL keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compensatable => "compensatable",
            Self::Pivot => "pivot",
            Self::Retriable => "retriable",
        }
    }

    /// The kind a keyword names.
    pub fn from_keyword(keyword: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == keyword)
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the rules look at in a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepShape<'a> {
    /// The step's name.
    pub name: &'a str,
    /// Its kind; `None` when unknown (a mistake already reported elsewhere): such a step is
    /// checked for its name only.
    pub kind: Option<StepKind>,
    /// Whether it has a compensation.
    pub has_compensation: bool,
    /// The parallel group it belongs to, if any: steps of one group share the number.
    pub group: Option<usize>,
}

/// A broken rule. Steps are named by their position in the saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// The saga has no steps.
    Empty,
    /// Step `step` has the name of step `first`.
    DuplicateStep {
        /// The offending step.
        step: usize,
        /// The step that has the name already.
        first: usize,
    },
    /// Step `step` is a second pivot.
    SecondPivot {
        /// The offending step.
        step: usize,
        /// The first pivot.
        first: usize,
    },
    /// A compensatable step after the pivot.
    CompensatableAfterPivot {
        /// The offending step.
        step: usize,
        /// The pivot.
        pivot: usize,
    },
    /// A compensatable step after a retriable one.
    CompensatableAfterRetriable {
        /// The offending step.
        step: usize,
        /// The (last) retriable step before it.
        retriable: usize,
    },
    /// A retriable step before the pivot.
    RetriableBeforePivot {
        /// The offending step.
        step: usize,
        /// The pivot after it.
        pivot: usize,
    },
    /// A pivot or retriable step with a compensation.
    CompensationNotAllowed {
        /// The offending step.
        step: usize,
    },
    /// The pivot inside a parallel group.
    PivotInParallel {
        /// The pivot.
        step: usize,
    },
    /// A parallel group mixing compensatable and retriable steps.
    MixedParallel {
        /// The first step of another kind than the group's first.
        step: usize,
        /// The group's first step.
        first: usize,
    },
    /// A parallel group of one step.
    LoneParallel {
        /// The step.
        step: usize,
    },
    /// A parallel group whose steps are not next to each other.
    SplitParallel {
        /// The step apart from the rest of its group.
        step: usize,
    },
}

/// Every rule `steps` break, in the order of the steps (a step with a duplicate name is
/// checked for nothing else).
pub fn violations(steps: &[StepShape<'_>]) -> Vec<Violation> {
    let mut found = Vec::new();
    if steps.is_empty() {
        found.push(Violation::Empty);
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut pivot: Option<usize> = None;
    let mut last_retriable: Option<usize> = None;
    for (index, step) in steps.iter().enumerate() {
        if let Some(&first) = names.get(step.name) {
            found.push(Violation::DuplicateStep { step: index, first });
            continue;
        }
        names.insert(step.name, index);
        let Some(kind) = step.kind else { continue };
        if step.has_compensation && kind != StepKind::Compensatable {
            found.push(Violation::CompensationNotAllowed { step: index });
        }
        match kind {
            StepKind::Pivot => match pivot {
                Some(first) => found.push(Violation::SecondPivot { step: index, first }),
                None => pivot = Some(index),
            },
            StepKind::Compensatable => {
                if let Some(pivot) = pivot {
                    found.push(Violation::CompensatableAfterPivot { step: index, pivot });
                } else if let Some(retriable) = last_retriable {
                    found.push(Violation::CompensatableAfterRetriable {
                        step: index,
                        retriable,
                    });
                }
            }
            StepKind::Retriable => {
                let later_pivot = steps[index..]
                    .iter()
                    .position(|later| later.kind == Some(StepKind::Pivot))
                    .map(|offset| index + offset);
                if let (None, Some(later)) = (pivot, later_pivot) {
                    found.push(Violation::RetriableBeforePivot {
                        step: index,
                        pivot: later,
                    });
                }
                last_retriable = Some(index);
            }
        }
    }
    found.extend(group_violations(steps));
    found
}

/// The rules of parallel groups.
fn group_violations(steps: &[StepShape<'_>]) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (index, step) in steps.iter().enumerate() {
        if let Some(group) = step.group {
            groups.entry(group).or_default().push(index);
        }
    }
    for members in groups.values() {
        let first = members[0];
        if members.len() == 1 {
            found.push(Violation::LoneParallel { step: first });
        }
        for (offset, &member) in members.iter().enumerate() {
            if member != first + offset {
                found.push(Violation::SplitParallel { step: member });
            }
            match steps[member].kind {
                Some(StepKind::Pivot) => found.push(Violation::PivotInParallel { step: member }),
                Some(kind)
                    if steps[first]
                        .kind
                        .is_some_and(|k| k != StepKind::Pivot && k != kind) =>
                {
                    found.push(Violation::MixedParallel {
                        step: member,
                        first,
                    });
                }
                _ => {}
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: &str, kind: StepKind, has_compensation: bool) -> StepShape<'_> {
        StepShape {
            name,
            kind: Some(kind),
            has_compensation,
            group: None,
        }
    }

    fn grouped(name: &str, kind: StepKind, group: usize) -> StepShape<'_> {
        StepShape {
            group: Some(group),
            ..shape(name, kind, false)
        }
    }

    #[test]
    fn parallel_groups_follow_their_rules() {
        let good = [
            grouped("a", C, 0),
            grouped("b", C, 0),
            shape("p", P, false),
            grouped("r", R, 1),
            grouped("s", R, 1),
        ];
        assert!(violations(&good).is_empty(), "{:?}", violations(&good));
        let bad = [
            grouped("a", C, 0),
            grouped("p", P, 0),
            grouped("lone", R, 1),
            grouped("r", R, 2),
            shape("x", R, false),
            grouped("s", R, 2),
        ];
        assert_eq!(
            group_violations(&bad),
            [
                Violation::PivotInParallel { step: 1 },
                Violation::LoneParallel { step: 2 },
                Violation::SplitParallel { step: 5 },
            ]
        );
        let mixed = [grouped("a", C, 0), grouped("r", R, 0)];
        assert_eq!(
            group_violations(&mixed),
            [Violation::MixedParallel { step: 1, first: 0 }]
        );
    }

    use StepKind::{Compensatable as C, Pivot as P, Retriable as R};

    #[test]
    fn the_order_compensatable_pivot_retriable_is_valid() {
        let steps = [
            shape("a", C, true),
            shape("b", C, false),
            shape("c", P, false),
            shape("d", R, false),
        ];
        assert!(violations(&steps).is_empty());
        assert!(
            violations(&[shape("only", R, false)]).is_empty(),
            "no pivot: fine"
        );
    }

    #[test]
    fn every_violation_is_found_at_its_step() {
        assert_eq!(violations(&[]), [Violation::Empty]);
        let steps = [
            shape("a", R, true),
            shape("b", P, false),
            shape("c", C, false),
            shape("d", P, false),
            shape("a", C, false),
        ];
        assert_eq!(
            violations(&steps),
            [
                Violation::CompensationNotAllowed { step: 0 },
                Violation::RetriableBeforePivot { step: 0, pivot: 1 },
                Violation::CompensatableAfterPivot { step: 2, pivot: 1 },
                Violation::SecondPivot { step: 3, first: 1 },
                Violation::DuplicateStep { step: 4, first: 0 },
            ]
        );
        let after_retriable = [shape("r", R, false), shape("c", C, false)];
        assert_eq!(
            violations(&after_retriable),
            [Violation::CompensatableAfterRetriable {
                step: 1,
                retriable: 0
            }]
        );
    }

    #[test]
    fn a_step_of_unknown_kind_is_checked_for_its_name_only() {
        let steps = [
            StepShape {
                name: "x",
                kind: None,
                has_compensation: true,
                group: None,
            },
            StepShape {
                name: "x",
                kind: None,
                has_compensation: false,
                group: None,
            },
        ];
        assert_eq!(
            violations(&steps),
            [Violation::DuplicateStep { step: 1, first: 0 }]
        );
    }

    #[test]
    fn keywords_round_trip() {
        for kind in StepKind::ALL {
            assert_eq!(StepKind::from_keyword(kind.as_str()), Some(kind));
        }
        assert_eq!(StepKind::from_keyword("retryable"), None);
    }
}
