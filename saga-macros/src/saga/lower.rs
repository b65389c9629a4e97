//! Lowering: [`SagaModel`] → [`LoweredSaga`], the builder calls each step makes.
//!
//! Each step becomes `Step::<kind>::<Data>("name")` followed by method calls in a fixed
//! order: the action (`invoke` / `notify` / `local`) first, since it fixes the builder's
//! reply type, then `on_reply` (which needs that reply type), then `compensate` /
//! `compensate_local`, `when`, `retry`, `timeout` and `on_timeout`.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::{Attribute, Expr, ExprPath, Ident, LitStr, Path, Type, Visibility};

use super::Kind;
use super::analyze::{ActionModel, CompensationModel, SagaModel, StepModel};
use super::parse::TimeoutChoice;

/// A saga ready for code generation.
#[derive(Debug)]
pub(crate) struct LoweredSaga {
    /// Outer attributes for the struct.
    pub(crate) attrs: Vec<Attribute>,
    /// The struct's visibility.
    pub(crate) vis: Visibility,
    /// The struct's name.
    pub(crate) ident: Ident,
    /// The definition name: `#[saga(name = "…")]`, else the ident without `r#`.
    pub(crate) name: LitStr,
    /// The data type; without it, no `Saga` impl is generated.
    pub(crate) data: Option<Type>,
    /// The steps' default reply timeout.
    pub(crate) timeout: Option<Expr>,
    /// The explicit version id.
    pub(crate) version: Option<LitStr>,
    /// Whether it is a retired version.
    pub(crate) retired: bool,
    /// The retired versions registered with it.
    pub(crate) previous: Vec<Path>,
    /// The steps.
    pub(crate) steps: Vec<LoweredStep>,
}

/// One step: a constructor and builder calls.
#[derive(Debug)]
pub(crate) struct LoweredStep {
    /// The `Step` constructor: `compensatable`, `pivot` or `retriable`.
    pub(crate) constructor: Ident,
    /// The step's name, spanned at the name in the input.
    pub(crate) name: LitStr,
    /// The builder calls, in order.
    pub(crate) calls: Vec<BuilderCall>,
    /// Its parallel group.
    pub(crate) group: Option<usize>,
}

/// `.method(arg)`
#[derive(Debug)]
pub(crate) struct BuilderCall {
    /// The method, spanned at the option's key.
    pub(crate) method: Ident,
    /// The argument.
    pub(crate) arg: CallArg,
}

/// The argument of a builder call.
#[derive(Debug)]
pub(crate) enum CallArg {
    /// A function path, passed as written (so type errors point at it).
    Handler(ExprPath),
    /// An `on_reply` handler, checked against the reply of the step's `invoke` command so a
    /// handler for another reply type is reported in those terms.
    ReplyHandler {
        /// The `invoke` function.
        invoke: ExprPath,
        /// The `on_reply` function.
        handler: ExprPath,
    },
    /// An expression (a `RetryPolicy`, a `Duration`), evaluated in the user's scope.
    Value(Expr),
    /// A `TimeoutAction` variant: `Retry` or `Fail`.
    TimeoutAction(Ident),
    /// No argument.
    Nothing,
}

/// Lowers a checked saga.
pub(crate) fn lower(model: &SagaModel) -> LoweredSaga {
    LoweredSaga {
        attrs: model.attrs.clone(),
        vis: model.vis.clone(),
        ident: model.name.clone(),
        name: model
            .options
            .name
            .clone()
            .unwrap_or_else(|| LitStr::new(&model.name.unraw().to_string(), model.name.span())),
        data: model.data.clone(),
        timeout: model.options.timeout.clone(),
        version: model.options.version.clone(),
        retired: model.options.retired.is_some(),
        previous: model.options.previous.clone(),
        steps: model.steps.iter().map(lower_step).collect(),
    }
}

impl LoweredSaga {
    /// The step names, in order.
    pub(crate) fn step_names(&self) -> Vec<String> {
        self.steps.iter().map(|step| step.name.value()).collect()
    }
}

/// Lowers one step; a step whose kind was wrong (already reported) lowers as compensatable.
fn lower_step(step: &StepModel) -> LoweredStep {
    let kind = step.kind.unwrap_or(Kind::Compensatable);
    let mut calls = Vec::new();
    let call = |key: &Ident, method: &str, arg: CallArg| BuilderCall {
        method: Ident::new(method, key.span()),
        arg,
    };
    if let Some((key, action)) = &step.action {
        calls.push(match action {
            ActionModel::Invoke(path) => call(key, "invoke", CallArg::Handler(path.clone())),
            ActionModel::Notify(path) => call(key, "notify", CallArg::Handler(path.clone())),
            ActionModel::Local(path) => call(key, "local", CallArg::Handler(path.clone())),
        });
    }
    if let Some((key, path)) = &step.on_reply {
        // `analyze` keeps `on_reply` only beside `invoke`.
        let arg = match &step.action {
            Some((_, ActionModel::Invoke(invoke))) => CallArg::ReplyHandler {
                invoke: invoke.clone(),
                handler: path.clone(),
            },
            _ => CallArg::Handler(path.clone()),
        };
        calls.push(call(key, "on_reply", arg));
    }
    if let Some((key, compensation)) = &step.compensation {
        calls.push(match compensation {
            CompensationModel::Command(path) => {
                call(key, "compensate", CallArg::Handler(path.clone()))
            }
            CompensationModel::Local(path) => {
                call(key, "compensate_local", CallArg::Handler(path.clone()))
            }
        });
    }
    if let Some((key, path)) = &step.condition {
        calls.push(call(key, "when", CallArg::Handler(path.clone())));
    }
    if let Some((key, expr)) = &step.retry {
        calls.push(call(key, "retry", CallArg::Value(expr.clone())));
    }
    match &step.timeout {
        Some((key, Some(expr))) => calls.push(call(key, "timeout", CallArg::Value(expr.clone()))),
        Some((key, None)) => calls.push(call(key, "no_timeout", CallArg::Nothing)),
        None => {}
    }
    if let Some((key, choice)) = &step.on_timeout {
        let variant = match choice {
            TimeoutChoice::Retry(span) => Ident::new("Retry", *span),
            TimeoutChoice::Fail(span) => Ident::new("Fail", *span),
        };
        calls.push(call(key, "on_timeout", CallArg::TimeoutAction(variant)));
    }
    LoweredStep {
        constructor: Ident::new(kind.as_str(), Span::call_site()),
        name: LitStr::new(&step.name.unraw().to_string(), step.name.span()),
        group: step.group,
        calls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::Errors;
    use crate::saga::{analyze, parse};
    use proc_macro2::TokenStream;
    use quote::{ToTokens, quote};

    fn lower_tokens(tokens: TokenStream) -> LoweredSaga {
        let mut errors = Errors::new();
        let ast = parse::parse(tokens, &mut errors).expect("a saga");
        let model = analyze::analyze(ast, &mut errors);
        assert!(errors.is_empty(), "{:?}", errors.messages());
        lower(&model)
    }

    fn methods(step: &LoweredStep) -> Vec<String> {
        step.calls.iter().map(|c| c.method.to_string()).collect()
    }

    #[test]
    fn orders_builder_calls_canonically() {
        let saga = lower_tokens(quote! {
            pub saga r#CreateOrderSaga(D) {
                compensatable a { when: w, on_reply: r, compensate: c, invoke: i }
                compensatable e { compensate: local(undo) }
                pivot b { on_timeout: retry, timeout: t(), retry: p(), local: l }
                retriable r#c { notify: n, on_timeout: fail }
                retriable d {}
            }
        });
        assert_eq!(saga.ident, "r#CreateOrderSaga");
        assert_eq!(saga.name.value(), "CreateOrderSaga");
        assert_eq!(saga.step_names(), ["a", "e", "b", "c", "d"]);
        assert_eq!(
            methods(&saga.steps[0]),
            ["invoke", "on_reply", "compensate", "when"]
        );
        assert_eq!(methods(&saga.steps[1]), ["compensate_local"]);
        assert_eq!(
            methods(&saga.steps[2]),
            ["local", "retry", "timeout", "on_timeout"]
        );
        assert_eq!(methods(&saga.steps[3]), ["notify", "on_timeout"]);
        assert!(methods(&saga.steps[4]).is_empty());
        assert_eq!(saga.steps[0].constructor, "compensatable");
        assert_eq!(saga.steps[2].constructor, "pivot");
        assert_eq!(saga.steps[4].constructor, "retriable");
        assert!(matches!(&saga.steps[2].calls[3].arg,
            CallArg::TimeoutAction(v) if v == "Retry"));
        assert!(matches!(&saga.steps[3].calls[1].arg,
            CallArg::TimeoutAction(v) if v == "Fail"));
        assert!(matches!(&saga.steps[1].calls[0].arg,
            CallArg::Handler(p) if p.to_token_stream().to_string() == "undo"));
        assert!(matches!(&saga.steps[2].calls[1].arg,
            CallArg::Value(e) if e.to_token_stream().to_string() == "p ()"));
    }
}
