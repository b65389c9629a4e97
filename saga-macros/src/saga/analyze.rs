//! Analysis: [`SagaAst`] → [`SagaModel`], checking option conflicts and the step rules.
//!
//! The step rules are `saga_rules::violations` — the same function the runtime builder
//! applies; here every violation is reported (not only the first), each at the offending
//! step, in the macro's own words.
//!
//! Whatever is wrong is reported and left out of the model (or, for rule violations, kept
//! as written), so code generation can still run and produce the saga's type.

use std::collections::BTreeSet;

use syn::{Attribute, Expr, ExprPath, Ident, Type, Visibility};

use super::Kind;
use super::parse::{OptionAst, OptionValue, SagaAst, SagaOptions, StepAst, TimeoutChoice};
use crate::errors::Errors;

/// A checked saga, ready to lower.
#[derive(Debug)]
pub(crate) struct SagaModel {
    /// Outer attributes for the struct.
    pub(crate) attrs: Vec<Attribute>,
    /// The struct's visibility.
    pub(crate) vis: Visibility,
    /// The saga's name.
    pub(crate) name: Ident,
    /// The data type, when it parsed.
    pub(crate) data: Option<Type>,
    /// The `#[saga(..)]` options, checked.
    pub(crate) options: SagaOptions,
    /// The steps, in order.
    pub(crate) steps: Vec<StepModel>,
}

/// A checked step. Each option keeps its key, whose span errors point at.
#[derive(Debug)]
pub(crate) struct StepModel {
    /// The step's name.
    pub(crate) name: Ident,
    /// The step's kind; `None` when the kind keyword was wrong (already reported).
    pub(crate) kind: Option<Kind>,
    /// What the step does going forward; `None` for a no-op step.
    pub(crate) action: Option<(Ident, ActionModel)>,
    /// The reply handler (only with an `invoke` action).
    pub(crate) on_reply: Option<(Ident, ExprPath)>,
    /// What undoes the step.
    pub(crate) compensation: Option<(Ident, CompensationModel)>,
    /// The step's condition.
    pub(crate) condition: Option<(Ident, ExprPath)>,
    /// The retry policy expression.
    pub(crate) retry: Option<(Ident, Expr)>,
    /// The timeout: an expression, or `None` inside for `timeout: none`.
    pub(crate) timeout: Option<(Ident, Option<Expr>)>,
    /// The timeout action.
    pub(crate) on_timeout: Option<(Ident, TimeoutChoice)>,
    /// Its parallel group.
    pub(crate) group: Option<usize>,
}

/// The forward action of a step.
#[derive(Debug)]
pub(crate) enum ActionModel {
    /// Send a command and wait for its reply.
    Invoke(ExprPath),
    /// Send a one-way notification.
    Notify(ExprPath),
    /// Run a local function.
    Local(ExprPath),
}

/// The compensation of a step.
#[derive(Debug)]
pub(crate) enum CompensationModel {
    /// Send a command.
    Command(ExprPath),
    /// Run a local function.
    Local(ExprPath),
}

/// Checks a parsed saga, recording every problem in `errors`.
pub(crate) fn analyze(ast: SagaAst, errors: &mut Errors) -> SagaModel {
    let steps: Vec<StepModel> = ast
        .steps
        .into_iter()
        .map(|step| analyze_step(step, errors))
        .collect();
    if steps.is_empty() {
        errors.error(
            ast.name.span(),
            format!(
                "saga `{}` has no steps; declare at least one step",
                ast.name
            ),
        );
    }
    check_step_rules(&steps, errors);
    check_versions(&ast.options, errors);
    SagaModel {
        attrs: ast.attrs,
        vis: ast.vis,
        name: ast.name,
        data: ast.data,
        options: ast.options,
        steps,
    }
}

/// Checks the version options: a retired version and a saga with previous versions name
/// their version, so that the compile-time check of distinct ids has ids to compare.
fn check_versions(options: &SagaOptions, errors: &mut Errors) {
    if let Some(version) = &options.version
        && version.value().trim().is_empty()
    {
        errors.error(version.span(), "a version id cannot be empty");
    }
    if let Some(retired) = options.retired {
        if options.version.is_none() {
            errors.error(
                retired,
                "a retired saga needs `version = \"…\"`: the version id its instances recorded \
                 (`saga versions` lists them)",
            );
        }
        if let Some(previous) = options.previous_span {
            errors.error(
                previous,
                "a retired saga lists no `previous(..)`: list every earlier version in the \
                 current saga's `previous(..)`",
            );
        }
    }
    if let Some(previous) = options.previous_span
        && options.version.is_none()
    {
        errors.error(
            previous,
            "a saga with `previous(..)` versions needs its own `version = \"…\"`, so that the \
             versions' ids can be told apart at compile time",
        );
    }
}

/// Checks one step's options: duplicates, conflicting actions, `on_reply` without `invoke`.
fn analyze_step(step: StepAst, errors: &mut Errors) -> StepModel {
    let mut model = StepModel {
        name: step.name,
        kind: step.kind,
        action: None,
        on_reply: None,
        compensation: None,
        condition: None,
        retry: None,
        timeout: None,
        on_timeout: None,
        group: step.group,
    };
    let mut seen: BTreeSet<&'static str> = BTreeSet::new();
    for OptionAst { key, value } in step.options {
        let key_name = value.key_name();
        if !seen.insert(key_name) {
            errors.error(
                key.span(),
                format!(
                    "duplicate option `{key_name}` in step `{}`; each option is given at most once",
                    model.name
                ),
            );
            continue;
        }
        let action = match value {
            OptionValue::Invoke(path) => ActionModel::Invoke(path),
            OptionValue::Notify(path) => ActionModel::Notify(path),
            OptionValue::Local(path) => ActionModel::Local(path),
            OptionValue::OnReply(path) => {
                model.on_reply = Some((key, path));
                continue;
            }
            OptionValue::Compensate(path) => {
                model.compensation = Some((key, CompensationModel::Command(path)));
                continue;
            }
            OptionValue::CompensateLocal(path) => {
                model.compensation = Some((key, CompensationModel::Local(path)));
                continue;
            }
            OptionValue::When(path) => {
                model.condition = Some((key, path));
                continue;
            }
            OptionValue::Retry(expr) => {
                model.retry = Some((key, expr));
                continue;
            }
            OptionValue::NoTimeout => {
                model.timeout = Some((key, None));
                continue;
            }
            OptionValue::Timeout(expr) => {
                model.timeout = Some((key, Some(expr)));
                continue;
            }
            OptionValue::OnTimeout(choice) => {
                model.on_timeout = Some((key, choice));
                continue;
            }
        };
        if let Some((first, _)) = &model.action {
            errors.error(
                key.span(),
                format!(
                    "step `{}` has both `{first}` and `{key_name}`; a step does at most one \
                     thing: `invoke` a command, `notify` a participant, or run a `local` function",
                    model.name
                ),
            );
            continue;
        }
        model.action = Some((key, action));
    }
    if let Some((key, _)) = &model.on_reply {
        let why = match &model.action {
            Some((_, ActionModel::Invoke(_))) => None,
            Some((_, ActionModel::Notify(_))) => {
                Some("uses `notify`, which sends a one-way notification and gets no reply")
            }
            Some((_, ActionModel::Local(_))) => {
                Some("uses `local`, which runs in the orchestrator and gets no reply")
            }
            None => Some("sends no command, so it gets no reply"),
        };
        if let Some(why) = why {
            errors.error(
                key.span(),
                format!("`on_reply` needs `invoke`: step `{}` {why}", model.name),
            );
            model.on_reply = None;
        }
    }
    if model.kind == Some(Kind::Pivot)
        && let Some((key, ActionModel::Notify(_))) = &model.action
    {
        errors.error(
            key.span(),
            format!(
                "pivot `{}` uses `notify`, which cannot fail: the pivot is the step whose \
                 outcome decides whether the saga goes on or turns back; `invoke` a command \
                 whose reply can refuse, or make `{}` a retriable step",
                model.name, model.name
            ),
        );
    }
    model
}

/// The step rules (`saga_rules::violations`), each violation reported at the offending step.
fn check_step_rules(steps: &[StepModel], errors: &mut Errors) {
    let names: Vec<String> = steps.iter().map(|s| s.name.to_string()).collect();
    let shapes: Vec<saga_rules::StepShape<'_>> = steps
        .iter()
        .zip(&names)
        .map(|(step, name)| saga_rules::StepShape {
            name,
            kind: step.kind,
            has_compensation: step.compensation.is_some(),
            group: step.group,
        })
        .collect();
    for violation in saga_rules::violations(&shapes) {
        use saga_rules::Violation as V;
        let (at, message) = match violation {
            // Reported where the saga is named, by `analyze`.
            V::Empty => continue,
            V::DuplicateStep { step, .. } => (
                steps[step].name.span(),
                format!(
                    "duplicate step name `{}`; step names must be unique within a saga (the \
                     saga's state refers to steps by name)",
                    steps[step].name
                ),
            ),
            V::CompensationNotAllowed { step } => {
                let key = steps[step]
                    .compensation
                    .as_ref()
                    .map_or(steps[step].name.span(), |(key, _)| key.span());
                (
                    key,
                    format!(
                        "{} step `{}` cannot have a compensation: only compensatable steps \
                         can have a compensation; pivot/retriable steps are never undone",
                        steps[step].kind.map_or("this", Kind::as_str),
                        steps[step].name
                    ),
                )
            }
            V::SecondPivot { step, first } => (
                steps[step].name.span(),
                format!(
                    "step `{}` is a second pivot (the first is `{}`); a saga has at most one \
                     pivot",
                    steps[step].name, steps[first].name
                ),
            ),
            V::CompensatableAfterPivot { step, pivot } => (
                steps[step].name.span(),
                format!(
                    "compensatable step `{}` comes after the pivot `{}`; compensatable steps \
                     must come before the pivot (once the pivot succeeds, the saga is never \
                     undone)",
                    steps[step].name, steps[pivot].name
                ),
            ),
            V::CompensatableAfterRetriable { step, retriable } => (
                steps[step].name.span(),
                format!(
                    "compensatable step `{}` comes after retriable step `{}`; compensatable \
                     steps must come before any retriable step",
                    steps[step].name, steps[retriable].name
                ),
            ),
            V::PivotInParallel { step } => (
                steps[step].name.span(),
                format!(
                    "pivot `{}` cannot run in parallel: the pivot decides alone whether the saga \
                     goes on or turns back; move it out of the `parallel` group",
                    steps[step].name
                ),
            ),
            V::MixedParallel { step, first } => (
                steps[step].name.span(),
                format!(
                    "step `{}` is {} but `{}`, first of its parallel group, is {}; a group is all \
                     compensatable steps (before the pivot) or all retriable steps (after it)",
                    steps[step].name,
                    steps[step].kind.map_or("another kind", Kind::as_str),
                    steps[first].name,
                    steps[first].kind.map_or("another kind", Kind::as_str),
                ),
            ),
            V::LoneParallel { step } => (
                steps[step].name.span(),
                format!(
                    "`{}` is alone in its parallel group; a group runs two or more steps at once \
                     (or drop the `parallel {{ }}` around it)",
                    steps[step].name
                ),
            ),
            V::SplitParallel { step } => (
                steps[step].name.span(),
                format!(
                    "step `{}` is apart from the rest of its parallel group",
                    steps[step].name
                ),
            ),
            V::RetriableBeforePivot { step, pivot } => (
                steps[step].name.span(),
                format!(
                    "retriable step `{}` comes before the pivot `{}`; retriable steps must \
                     follow the pivot",
                    steps[step].name, steps[pivot].name
                ),
            ),
            _ => (
                steps
                    .first()
                    .map_or(proc_macro2::Span::call_site(), |s| s.name.span()),
                format!("step rule broken: {violation:?}"),
            ),
        };
        errors.error(at, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::parse;
    use proc_macro2::TokenStream;
    use quote::quote;

    fn analyze_tokens(tokens: TokenStream) -> (SagaModel, Vec<String>) {
        let mut errors = Errors::new();
        let ast = parse::parse(tokens, &mut errors).expect("a saga");
        assert!(errors.is_empty(), "parse errors: {:?}", errors.messages());
        let model = analyze(ast, &mut errors);
        (model, errors.messages())
    }

    fn analyze_ok(tokens: TokenStream) -> SagaModel {
        let (model, errors) = analyze_tokens(tokens);
        assert!(errors.is_empty(), "{errors:?}");
        model
    }

    #[test]
    fn accepts_the_full_example() {
        let model = analyze_ok(quote! {
            pub saga CreateOrderSaga(CreateOrderData) {
                compensatable create_order    { compensate: local(reject_order) }
                compensatable verify_consumer { invoke: validate_order_by_consumer }
                compensatable create_ticket   { invoke: create_ticket, on_reply: ticket_created, compensate: cancel_create_ticket }
                pivot         authorize_card  { invoke: authorize_card }
                retriable     confirm_ticket  { invoke: confirm_create_ticket, retry: RetryPolicy::exponential(Duration::from_millis(100)).max_attempts(5), timeout: Duration::from_secs(30) }
                retriable     approve_order   { invoke: approve_order }
            }
        });
        assert_eq!(model.steps.len(), 6);
        let ticket = &model.steps[2];
        assert!(matches!(ticket.action, Some((_, ActionModel::Invoke(_)))));
        assert!(ticket.on_reply.is_some());
        assert!(matches!(
            ticket.compensation,
            Some((_, CompensationModel::Command(_)))
        ));
        assert!(model.steps[0].action.is_none());
        assert!(matches!(
            model.steps[0].compensation,
            Some((_, CompensationModel::Local(_)))
        ));
        assert!(model.steps[4].retry.is_some());
        assert!(model.steps[4].timeout.is_some());
    }

    #[test]
    fn accepts_sagas_without_pivot() {
        analyze_ok(quote! { saga S(D) { compensatable a {} retriable b {} retriable c {} } });
        analyze_ok(quote! { saga S(D) { retriable b {} } });
        analyze_ok(quote! { saga S(D) { compensatable a { notify: n, when: w } } });
    }

    #[test]
    fn rejects_an_empty_saga() {
        let (_, errors) = analyze_tokens(quote! { saga Empty(D) {} });
        assert_eq!(
            errors,
            ["saga `Empty` has no steps; declare at least one step"]
        );
    }

    #[test]
    fn rejects_duplicate_step_names() {
        let (_, errors) = analyze_tokens(quote! {
            saga S(D) { compensatable a {} compensatable a {} pivot p {} }
        });
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("duplicate step name `a`; step names must be unique"));
    }

    #[test]
    fn rejects_a_second_pivot() {
        let (_, errors) = analyze_tokens(quote! { saga S(D) { pivot p {} pivot q {} } });
        assert_eq!(
            errors,
            ["step `q` is a second pivot (the first is `p`); a saga has at most one pivot"]
        );
    }

    #[test]
    fn rejects_compensatable_steps_after_the_pivot_or_a_retriable_step() {
        let (_, errors) = analyze_tokens(quote! {
            saga S(D) { pivot p {} compensatable late {} }
        });
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("compensatable step `late` comes after the pivot `p`"));

        let (_, errors) = analyze_tokens(quote! {
            saga S(D) { retriable r {} compensatable late {} }
        });
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("compensatable step `late` comes after retriable step `r`"));
    }

    #[test]
    fn rejects_retriable_steps_before_the_pivot() {
        let (_, errors) = analyze_tokens(quote! {
            saga S(D) { compensatable a {} retriable early {} pivot p {} retriable ok {} }
        });
        assert_eq!(
            errors,
            [
                "retriable step `early` comes before the pivot `p`; retriable steps must follow the pivot"
            ]
        );
    }

    #[test]
    fn rejects_compensations_on_pivot_and_retriable_steps() {
        let (model, errors) = analyze_tokens(quote! {
            saga S(D) { pivot p { compensate: undo } retriable r { compensate: local(undo) } }
        });
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("pivot step `p` cannot have a compensation"));
        assert!(errors[0].contains("only compensatable steps can have a compensation"));
        assert!(errors[1].starts_with("retriable step `r` cannot have a compensation"));
        assert!(model.steps[0].compensation.is_some());
    }

    #[test]
    fn rejects_on_reply_without_invoke() {
        let (model, errors) = analyze_tokens(quote! {
            saga S(D) {
                compensatable a { on_reply: r }
                compensatable b { notify: n, on_reply: r }
                compensatable c { on_reply: r, local: l }
                compensatable d { on_reply: r, invoke: i }
            }
        });
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(
            errors[0],
            "`on_reply` needs `invoke`: step `a` sends no command, so it gets no reply"
        );
        assert!(
            errors[1].contains("step `b` uses `notify`, which"),
            "{errors:?}"
        );
        assert!(
            errors[2].contains("step `c` uses `local`, which"),
            "{errors:?}"
        );
        assert!(model.steps[0].on_reply.is_none());
        assert!(model.steps[3].on_reply.is_some());
    }

    #[test]
    fn rejects_two_actions_and_duplicate_options() {
        let (model, errors) = analyze_tokens(quote! {
            saga S(D) {
                pivot p { invoke: a, notify: b, local: c, invoke: d, when: w, when: v }
            }
        });
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("step `p` has both `invoke` and `notify`"));
        assert!(errors[1].starts_with("step `p` has both `invoke` and `local`"));
        assert_eq!(
            errors[2],
            "duplicate option `invoke` in step `p`; each option is given at most once"
        );
        assert!(errors[3].starts_with("duplicate option `when`"));
        assert!(matches!(
            model.steps[0].action,
            Some((_, ActionModel::Invoke(_)))
        ));
    }

    #[test]
    fn reports_every_rule_violation_at_once() {
        let (_, errors) = analyze_tokens(quote! {
            saga S(D) {
                retriable r1 {}
                pivot p1 { compensate: x }
                pivot p2 {}
                compensatable c1 {}
                compensatable c1 {}
            }
        });
        assert_eq!(errors.len(), 5, "{errors:?}");
    }

    #[test]
    fn a_pivot_that_only_notifies_is_refused() {
        let (_, errors) = analyze_tokens(quote! {
            saga S(D) { compensatable a { invoke: x, compensate: y } pivot p { notify: n } }
        });
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("pivot `p` uses `notify`, which cannot fail"),
            "{errors:?}"
        );
        analyze_ok(quote! { saga S(D) { pivot p { invoke: i } retriable r { notify: n } } });
    }

    #[test]
    fn skips_rules_for_steps_of_unknown_kind() {
        let mut errors = Errors::new();
        let ast = parse::parse(
            quote! { saga S(D) { pivot p {} bogus b { compensate: x } } },
            &mut errors,
        )
        .expect("a saga");
        assert_eq!(errors.messages().len(), 1);
        let model = analyze(ast, &mut errors);
        assert_eq!(errors.messages().len(), 1, "{:?}", errors.messages());
        assert_eq!(model.steps[1].kind, None);
    }
}
