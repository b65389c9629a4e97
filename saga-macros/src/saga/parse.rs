//! Parsing: `saga!` tokens → [`SagaAst`], a syntax tree close to what was written.
//!
//! The grammar:
//!
//! ```text
//! saga    := outer-attribute* visibility `saga` IDENT `(` TYPE `)` `{` step* `}`
//!            (outer attributes may include `#[saga(option, ..)]`, see [`SagaOptions`])
//! step    := doc-comment* KIND IDENT `{` (option (`,` option)* `,`?)? `}`
//!          | `parallel` `{` step* `}`   (steps that run at once; no group inside a group)
//! KIND    := `compensatable` | `pivot` | `retriable`
//! option  := `invoke` `:` PATH | `notify` `:` PATH | `local` `:` PATH
//!          | `on_reply` `:` PATH | `compensate` `:` (PATH | `local` `(` PATH `)`)
//!          | `when` `:` PATH | `retry` `:` EXPR | `timeout` `:` (`none` | EXPR)
//!          | `on_timeout` `:` (`retry` | `fail`)
//! ```
//!
//! The parser recovers from mistakes: a bad option is reported and skipped up to the next
//! comma, a bad step up to the end of its braces. Once the saga's name is parsed, parsing
//! always produces a tree (possibly with fewer steps or options than written).

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, ExprPath, Ident, LitStr, Path, Token, Type, Visibility, braced, parenthesized,
    token,
};

use super::Kind;
use crate::errors::{Errors, one_of, suggestion};

/// Custom keywords of the DSL.
mod kw {
    syn::custom_keyword!(saga);
    syn::custom_keyword!(parallel);
}

/// Every option key a step accepts, in the order they are listed in messages.
pub(crate) const OPTION_KEYS: [&str; 9] = [
    "invoke",
    "notify",
    "local",
    "on_reply",
    "compensate",
    "when",
    "retry",
    "timeout",
    "on_timeout",
];

/// A whole `saga!` invocation.
#[derive(Debug)]
pub(crate) struct SagaAst {
    /// Outer attributes (doc comments included), kept on the generated struct.
    pub(crate) attrs: Vec<Attribute>,
    /// The struct's visibility.
    pub(crate) vis: Visibility,
    /// The saga's name: the struct name and the definition name.
    pub(crate) name: Ident,
    /// The saga data type; `None` when it did not parse (an error was reported).
    pub(crate) data: Option<Type>,
    /// What its `#[saga(..)]` attributes say.
    pub(crate) options: SagaOptions,
    /// The steps that parsed, in order.
    pub(crate) steps: Vec<StepAst>,
}

/// The options of `#[saga(..)]` attributes.
#[derive(Debug, Default)]
pub(crate) struct SagaOptions {
    /// `timeout = EXPR`: how long its steps wait for a reply by default.
    pub(crate) timeout: Option<Expr>,
    /// `name = "…"`: the saga type's name, when it is not the struct's (a retired version's
    /// struct is named apart from the current one).
    pub(crate) name: Option<LitStr>,
    /// `version = "…"`: the version id instances record, instead of the graph's hash.
    pub(crate) version: Option<LitStr>,
    /// `retired`: the definition only finishes instances that started on it.
    pub(crate) retired: Option<Span>,
    /// `previous(A, B)`: the retired versions registered with this one.
    pub(crate) previous: Vec<Path>,
    /// Where `previous` was written.
    pub(crate) previous_span: Option<Span>,
}

/// The keys `#[saga(..)]` accepts.
const SAGA_OPTION_KEYS: [&str; 5] = ["timeout", "name", "version", "retired", "previous"];

/// One step.
#[derive(Debug)]
pub(crate) struct StepAst {
    /// The kind; `None` when the keyword is unknown or missing (an error was reported).
    pub(crate) kind: Option<Kind>,
    /// The step's name.
    pub(crate) name: Ident,
    /// The options that parsed, in the order written.
    pub(crate) options: Vec<OptionAst>,
    /// The `parallel { .. }` group it is written in, numbered in order.
    pub(crate) group: Option<usize>,
}

/// One `key: value` option of a step.
#[derive(Debug)]
pub(crate) struct OptionAst {
    /// The key as written (its span is where option errors point).
    pub(crate) key: Ident,
    /// The value.
    pub(crate) value: OptionValue,
}

/// The value of an option, by key.
#[derive(Debug)]
pub(crate) enum OptionValue {
    /// `invoke: path` — builds the command the step sends and waits on.
    Invoke(ExprPath),
    /// `notify: path` — builds a one-way notification.
    Notify(ExprPath),
    /// `local: path` — runs over the saga data in the orchestrator.
    Local(ExprPath),
    /// `on_reply: path` — applies the reply to the saga data.
    OnReply(ExprPath),
    /// `compensate: path` — builds the command that undoes the step.
    Compensate(ExprPath),
    /// `compensate: local(path)` — undoes the step locally.
    CompensateLocal(ExprPath),
    /// `when: path` — the step's condition.
    When(ExprPath),
    /// `retry: expr` — the retry policy.
    Retry(Expr),
    /// `timeout: expr` — the reply deadline.
    Timeout(Expr),
    /// `timeout: none` — no reply deadline.
    NoTimeout,
    /// `on_timeout: retry | fail`.
    OnTimeout(TimeoutChoice),
}

/// The value of `on_timeout`.
#[derive(Debug)]
pub(crate) enum TimeoutChoice {
    /// `retry`, with its span.
    Retry(Span),
    /// `fail`, with its span.
    Fail(Span),
}

impl OptionValue {
    /// The key this value belongs to.
    pub(crate) fn key_name(&self) -> &'static str {
        match self {
            Self::Invoke(_) => "invoke",
            Self::Notify(_) => "notify",
            Self::Local(_) => "local",
            Self::OnReply(_) => "on_reply",
            Self::Compensate(_) | Self::CompensateLocal(_) => "compensate",
            Self::When(_) => "when",
            Self::Retry(_) => "retry",
            Self::Timeout(_) | Self::NoTimeout => "timeout",
            Self::OnTimeout(_) => "on_timeout",
        }
    }
}

/// Parses a `saga!` invocation, recording every error in `errors`. Returns `None` only when
/// nothing useful (not even the saga's name) could be parsed.
pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Option<SagaAst> {
    let mut inner = Errors::new();
    let result = (|input: ParseStream<'_>| parse_saga(input, &mut inner)).parse2(tokens);
    let ast = errors.ok(result);
    errors.extend(inner);
    ast
}

/// `outer-attribute* visibility saga IDENT ( TYPE ) { step* }`
fn parse_saga(input: ParseStream<'_>, errors: &mut Errors) -> syn::Result<SagaAst> {
    let (attrs, options) = saga_options(input.call(Attribute::parse_outer)?, errors);
    let vis: Visibility = input.parse()?;
    if !input.peek(kw::saga) {
        return Err(input.error(
            "expected `saga`, as in `pub saga MySaga(MyData) { compensatable first { ... } }`",
        ));
    }
    input.parse::<kw::saga>()?;
    if !input.peek(Ident) {
        return Err(input.error("expected the saga's name, as in `saga MySaga(MyData) { ... }`"));
    }
    let name: Ident = input.parse()?;
    let mut saga = SagaAst {
        attrs,
        vis,
        name,
        data: None,
        options,
        steps: Vec::new(),
    };
    if let Err(error) = parse_saga_rest(input, &mut saga, errors) {
        errors.push(error);
        skip_all(input)?;
    }
    Ok(saga)
}

/// Takes the `#[saga(..)]` attributes out of `attrs` (the others stay on the struct) and
/// returns their options.
fn saga_options(attrs: Vec<Attribute>, errors: &mut Errors) -> (Vec<Attribute>, SagaOptions) {
    let mut options = SagaOptions::default();
    let mut kept = Vec::with_capacity(attrs.len());
    for attr in attrs {
        if !attr.path().is_ident("saga") {
            kept.push(attr);
            continue;
        }
        let parsed = attr.parse_nested_meta(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            match key.as_str() {
                "timeout" => options.timeout = Some(meta.value()?.parse::<Expr>()?),
                "name" => options.name = Some(meta.value()?.parse::<LitStr>()?),
                "version" => options.version = Some(meta.value()?.parse::<LitStr>()?),
                "retired" => options.retired = Some(meta.path.span()),
                "previous" => {
                    options.previous_span = Some(meta.path.span());
                    meta.parse_nested_meta(|version| {
                        options.previous.push(version.path);
                        Ok(())
                    })?;
                }
                _ => {
                    return Err(meta.error(format!(
                        "unknown saga option `{key}`; expected {}, as in \
                         `#[saga(timeout = Duration::from_secs(60))]` or \
                         `#[saga(version = \"2\", previous(OrderSagaV1))]`{}",
                        one_of(&SAGA_OPTION_KEYS),
                        suggestion(&key, &SAGA_OPTION_KEYS)
                    )));
                }
            }
            Ok(())
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    (kept, options)
}

/// Everything after the saga's name: `( TYPE ) { step* }`, then nothing.
fn parse_saga_rest(
    input: ParseStream<'_>,
    saga: &mut SagaAst,
    errors: &mut Errors,
) -> syn::Result<()> {
    if !input.peek(token::Paren) {
        return Err(input.error(format!(
            "expected the saga's data type in parentheses, as in `saga {}(MyData) {{ ... }}`",
            saga.name
        )));
    }
    let content;
    parenthesized!(content in input);
    if content.is_empty() {
        errors.push(content.error("expected the saga's data type"));
    } else {
        match content.parse::<Type>() {
            Ok(data) => {
                saga.data = Some(data);
                if !content.is_empty() {
                    errors.push(content.error("unexpected tokens after the saga's data type"));
                }
            }
            Err(error) => errors.push(error),
        }
        skip_all(&content)?;
    }
    if !input.peek(token::Brace) {
        return Err(input.error(format!(
            "expected `{{` and the steps of saga `{}`",
            saga.name
        )));
    }
    let body;
    braced!(body in input);
    saga.steps = parse_steps(&body, None, &mut 0, errors)?;
    if !input.is_empty() {
        errors.push(input.error(
            "unexpected tokens after the saga; a `saga!` invocation declares exactly one saga",
        ));
        skip_all(input)?;
    }
    Ok(())
}

/// The steps in the saga body (or in a `parallel` group's braces, numbered `group`);
/// consumes the whole body. `groups` counts the groups seen so far.
fn parse_steps(
    input: ParseStream<'_>,
    group: Option<usize>,
    groups: &mut usize,
    errors: &mut Errors,
) -> syn::Result<Vec<StepAst>> {
    let mut steps = Vec::new();
    while !input.is_empty() {
        if input.peek(Token![,]) || input.peek(Token![;]) {
            errors.push(input.error("steps are not separated by `,` or `;`; remove it"));
            input.parse::<TokenTree>()?;
            continue;
        }
        if input.peek(kw::parallel) && input.peek2(token::Brace) {
            let keyword = input.parse::<kw::parallel>()?;
            let content;
            braced!(content in input);
            if group.is_some() {
                errors.push(syn::Error::new(
                    keyword.span,
                    "a parallel group cannot hold another; list its steps in the outer group",
                ));
            }
            // Inside a group (an error, reported), the steps count as the outer group's.
            let number = group.unwrap_or_else(|| {
                *groups += 1;
                *groups - 1
            });
            steps.extend(parse_steps(&content, Some(number), groups, errors)?);
            continue;
        }
        let start = input.cursor();
        match parse_step(input, errors) {
            Ok(step) => steps.push(StepAst { group, ..step }),
            Err(error) => {
                errors.push(error);
                if input.cursor() == start {
                    input.parse::<TokenTree>()?;
                }
                skip_to_next_step(input)?;
            }
        }
    }
    Ok(steps)
}

/// `doc-comment* KIND IDENT { options }`
fn parse_step(input: ParseStream<'_>, errors: &mut Errors) -> syn::Result<StepAst> {
    let attrs = input.call(Attribute::parse_outer)?;
    for attr in &attrs {
        if !attr.path().is_ident("doc") {
            errors.push(syn::Error::new_spanned(
                attr,
                "only doc comments are allowed on a step",
            ));
        }
    }
    if !input.peek(Ident::peek_any) {
        return Err(input.error(format!(
            "expected a step: {}, then the step's name and its options in `{{ ... }}`",
            one_of(&Kind::KEYWORDS)
        )));
    }
    let kind_ident = input.call(Ident::parse_any)?;
    let keyword = kind_ident.unraw().to_string();
    let kind = Kind::from_keyword(&keyword);

    // `create_order { ... }`: the kind is missing and this ident is the step's name.
    let name = if kind.is_none() && input.peek(token::Brace) {
        errors.error(
            kind_ident.span(),
            format!(
                "step `{keyword}` has no kind; write {} before its name",
                one_of(&Kind::KEYWORDS)
            ),
        );
        kind_ident.clone()
    } else {
        if kind.is_none() {
            errors.error(
                kind_ident.span(),
                format!(
                    "unknown step kind `{keyword}`; expected {}{}",
                    one_of(&Kind::KEYWORDS),
                    suggestion(&keyword, &Kind::KEYWORDS)
                ),
            );
        }
        if !input.peek(Ident) {
            let what = kind.map_or("step", Kind::as_str);
            return Err(input.error(format!("expected the name of the {what} step")));
        }
        input.parse::<Ident>()?
    };

    if !input.peek(token::Brace) {
        return Err(input.error(format!(
            "expected `{{` after step `{name}`, with its options (e.g. `{{ invoke: my_command }}`); \
             write `{{}}` for a step without any"
        )));
    }
    let content;
    braced!(content in input);
    let options = parse_options(&content, errors)?;
    Ok(StepAst {
        kind,
        name,
        options,
        group: None,
    })
}

/// The comma-separated options inside a step's braces; consumes them all.
fn parse_options(input: ParseStream<'_>, errors: &mut Errors) -> syn::Result<Vec<OptionAst>> {
    let mut options = Vec::new();
    while !input.is_empty() {
        match parse_option(input) {
            Ok(option) => options.push(option),
            Err(error) => {
                errors.push(error);
                skip_to_comma(input)?;
            }
        }
        if input.is_empty() {
            break;
        }
        if !input.peek(Token![,]) {
            errors.push(input.error("expected `,` between step options"));
            skip_to_comma(input)?;
        }
        if input.peek(Token![,]) {
            input.parse::<Token![,]>()?;
        }
    }
    Ok(options)
}

/// `key: value`
fn parse_option(input: ParseStream<'_>) -> syn::Result<OptionAst> {
    if !input.peek(Ident::peek_any) {
        return Err(input.error(format!("expected a step option: {}", one_of(&OPTION_KEYS))));
    }
    let key = input.call(Ident::parse_any)?;
    let name = key.unraw().to_string();
    if !OPTION_KEYS.contains(&name.as_str()) {
        return Err(syn::Error::new(
            key.span(),
            format!(
                "unknown step option `{name}`; expected {}{}",
                one_of(&OPTION_KEYS),
                suggestion(&name, &OPTION_KEYS)
            ),
        ));
    }
    if !input.peek(Token![:]) {
        return Err(input.error(format!("expected `:` after `{name}`")));
    }
    input.parse::<Token![:]>()?;
    if input.is_empty() || input.peek(Token![,]) {
        return Err(input.error(format!("expected a value for `{name}`")));
    }
    let value = match name.as_str() {
        "invoke" => OptionValue::Invoke(parse_handler(input, "invoke")?),
        "notify" => OptionValue::Notify(parse_handler(input, "notify")?),
        "local" => OptionValue::Local(parse_handler(input, "local")?),
        "on_reply" => OptionValue::OnReply(parse_handler(input, "on_reply")?),
        "compensate" => parse_compensation(input)?,
        "when" => OptionValue::When(parse_handler(input, "when")?),
        "retry" => OptionValue::Retry(input.parse()?),
        "timeout"
            if input.peek(Ident)
                && input.fork().parse::<Ident>().is_ok_and(|i| i == "none")
                && {
                    let fork = input.fork();
                    fork.parse::<Ident>().is_ok() && (fork.is_empty() || fork.peek(Token![,]))
                } =>
        {
            input.parse::<Ident>()?;
            OptionValue::NoTimeout
        }
        "timeout" => OptionValue::Timeout(input.parse()?),
        _ => OptionValue::OnTimeout(parse_timeout_choice(input)?),
    };
    Ok(OptionAst { key, value })
}

/// The path of a handler function.
fn parse_handler(input: ParseStream<'_>, key: &str) -> syn::Result<ExprPath> {
    let expr: Expr = input.parse()?;
    match expr {
        Expr::Path(path) if path.attrs.is_empty() => Ok(path),
        other => Err(syn::Error::new_spanned(
            other,
            format!(
                "expected the path of a function for `{key}`, e.g. `{key}: my_function` or \
                 `{key}: handlers::my_function`; closures and other expressions are not \
                 supported, write a named function instead"
            ),
        )),
    }
}

/// `path` or `local(path)`.
fn parse_compensation(input: ParseStream<'_>) -> syn::Result<OptionValue> {
    let is_local = input.peek(Ident)
        && input.peek2(token::Paren)
        && input
            .fork()
            .parse::<Ident>()
            .is_ok_and(|ident| ident == "local");
    if !is_local {
        return Ok(OptionValue::Compensate(parse_handler(input, "compensate")?));
    }
    input.parse::<Ident>()?;
    let content;
    parenthesized!(content in input);
    let result = if content.is_empty() {
        Err(content.error("expected the path of the local compensation function"))
    } else {
        parse_handler(&content, "compensate: local(..)").and_then(|path| {
            if content.is_empty() {
                Ok(path)
            } else {
                Err(content.error("expected `)` after the function's path"))
            }
        })
    };
    skip_all(&content)?;
    result.map(OptionValue::CompensateLocal)
}

/// `retry` or `fail`.
fn parse_timeout_choice(input: ParseStream<'_>) -> syn::Result<TimeoutChoice> {
    let expected = "expected `retry` (send the command again while the retry policy allows) \
                    or `fail` (treat the step as failed at once)";
    if !input.peek(Ident::peek_any) {
        return Err(input.error(expected));
    }
    let choice = input.call(Ident::parse_any)?;
    match choice.to_string().as_str() {
        "retry" => Ok(TimeoutChoice::Retry(choice.span())),
        "fail" => Ok(TimeoutChoice::Fail(choice.span())),
        other => Err(syn::Error::new(
            choice.span(),
            format!(
                "unknown timeout action `{other}`; {expected}{}",
                suggestion(other, &["retry", "fail"])
            ),
        )),
    }
}

/// Consumes the rest of `input`.
fn skip_all(input: ParseStream<'_>) -> syn::Result<()> {
    input.parse::<TokenStream>().map(drop)
}

/// Consumes tokens up to (not including) the next top-level `,`.
fn skip_to_comma(input: ParseStream<'_>) -> syn::Result<()> {
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<TokenTree>()?;
    }
    Ok(())
}

/// Consumes tokens up to the next step kind keyword or attribute, or up to and including the
/// next `{ ... }` group, whichever comes first.
fn skip_to_next_step(input: ParseStream<'_>) -> syn::Result<()> {
    while !input.is_empty() {
        let at_kind = input
            .fork()
            .call(Ident::parse_any)
            .is_ok_and(|ident| Kind::from_keyword(&ident.unraw().to_string()).is_some());
        if at_kind || input.peek(Token![#]) {
            break;
        }
        let brace = input.peek(token::Brace);
        input.parse::<TokenTree>()?;
        if brace {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::{ToTokens, quote};

    fn parse_ok(tokens: TokenStream) -> SagaAst {
        let mut errors = Errors::new();
        let ast = parse(tokens, &mut errors);
        assert!(errors.is_empty(), "{:?}", errors.messages());
        ast.expect("a saga")
    }

    fn parse_err(tokens: TokenStream) -> (Option<SagaAst>, Vec<String>) {
        let mut errors = Errors::new();
        let ast = parse(tokens, &mut errors);
        (ast, errors.messages())
    }

    fn text(tokens: &impl ToTokens) -> String {
        tokens.to_token_stream().to_string().replace(' ', "")
    }

    #[test]
    fn parses_the_full_example() {
        let ast = parse_ok(
            syn::parse_str(
                r#"
            /// Creates an order.
            #[allow(dead_code)]
            pub saga CreateOrderSaga(CreateOrderData) {
                compensatable create_order    { compensate: local(reject_order) }
                compensatable verify_consumer { invoke: validate_order_by_consumer }
                compensatable create_ticket   { invoke: create_ticket, on_reply: ticket_created, compensate: cancel_create_ticket, }
                pivot         authorize_card  { invoke: authorize_card }
                retriable     confirm_ticket  { invoke: confirm_create_ticket, retry: RetryPolicy::exponential(Duration::from_millis(100)).max_attempts(5), timeout: Duration::from_secs(30), on_timeout: fail }
                retriable     approve_order   { invoke: crate::handlers::approve_order, when: should_approve, notify: tell }
                retriable     noop            {}
            }
            "#,
            )
            .expect("tokens"),
        );
        assert_eq!(ast.name, "CreateOrderSaga");
        assert_eq!(ast.attrs.len(), 2);
        assert!(matches!(ast.vis, Visibility::Public(_)));
        assert_eq!(text(&ast.data.expect("data type")), "CreateOrderData");
        let names: Vec<String> = ast.steps.iter().map(|s| s.name.to_string()).collect();
        assert_eq!(
            names,
            [
                "create_order",
                "verify_consumer",
                "create_ticket",
                "authorize_card",
                "confirm_ticket",
                "approve_order",
                "noop"
            ]
        );
        let kinds: Vec<Option<Kind>> = ast.steps.iter().map(|s| s.kind).collect();
        assert_eq!(kinds[0], Some(Kind::Compensatable));
        assert_eq!(kinds[3], Some(Kind::Pivot));
        assert_eq!(kinds[6], Some(Kind::Retriable));

        assert!(matches!(
            &ast.steps[0].options[0].value,
            OptionValue::CompensateLocal(path) if text(path) == "reject_order"
        ));
        let keys: Vec<&str> = ast.steps[2]
            .options
            .iter()
            .map(|o| o.value.key_name())
            .collect();
        assert_eq!(keys, ["invoke", "on_reply", "compensate"]);
        let confirm = &ast.steps[4].options;
        assert!(matches!(&confirm[1].value, OptionValue::Retry(expr)
            if text(expr) == "RetryPolicy::exponential(Duration::from_millis(100)).max_attempts(5)"));
        assert!(matches!(&confirm[2].value, OptionValue::Timeout(_)));
        assert!(matches!(
            &confirm[3].value,
            OptionValue::OnTimeout(TimeoutChoice::Fail(_))
        ));
        assert!(matches!(&ast.steps[5].options[0].value,
            OptionValue::Invoke(path) if text(path) == "crate::handlers::approve_order"));
        assert!(ast.steps[6].options.is_empty());
    }

    #[test]
    fn accepts_any_visibility_and_type() {
        let ast = parse_ok(quote! {
            pub(crate) saga S(Vec<std::collections::BTreeMap<String, u32>>) { pivot p {} }
        });
        assert!(matches!(ast.vis, Visibility::Restricted(_)));
        let ast = parse_ok(quote! { saga S((u8, u16)) { pivot p {} } });
        assert!(matches!(ast.vis, Visibility::Inherited));
        assert_eq!(text(&ast.data.expect("data")), "(u8,u16)");
    }

    #[test]
    fn accepts_generic_handler_paths() {
        let ast = parse_ok(quote! {
            saga S(D) { pivot p { invoke: make::<A, B>, when: <D as Check>::check } }
        });
        assert!(matches!(&ast.steps[0].options[0].value,
            OptionValue::Invoke(path) if text(path) == "make::<A,B>"));
        assert_eq!(ast.steps[0].options.len(), 2);
    }

    #[test]
    fn a_function_named_local_is_a_command_compensation() {
        let ast = parse_ok(quote! { saga S(D) { compensatable c { compensate: local } } });
        assert!(matches!(
            &ast.steps[0].options[0].value,
            OptionValue::Compensate(path) if text(path) == "local"
        ));
    }

    #[test]
    fn reports_unknown_kinds_and_keeps_parsing() {
        let (ast, errors) = parse_err(quote! {
            saga S(D) {
                retryable a { invoke: x }
                create_order { invoke: y }
                pivot b { invoke: z }
            }
        });
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("unknown step kind `retryable`"),
            "{errors:?}"
        );
        assert!(
            errors[0].contains("did you mean `retriable`?"),
            "{errors:?}"
        );
        assert!(
            errors[0].contains("`compensatable`, `pivot` or `retriable`"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("step `create_order` has no kind"),
            "{errors:?}"
        );
        let ast = ast.expect("a saga");
        assert_eq!(ast.steps.len(), 3);
        assert_eq!(ast.steps[0].kind, None);
        assert_eq!(ast.steps[1].name, "create_order");
        assert_eq!(ast.steps[2].kind, Some(Kind::Pivot));
    }

    #[test]
    fn reports_unknown_options_and_bad_values_and_keeps_parsing() {
        let (ast, errors) = parse_err(quote! {
            saga S(D) {
                compensatable a { invoek: x, compensate: |d| undo(d), on_timeout: later, when: ok }
                pivot b { invoke: y z, on_reply: r }
            }
        });
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            errors[0].contains("unknown step option `invoek`"),
            "{errors:?}"
        );
        assert!(errors[0].contains("did you mean `invoke`?"), "{errors:?}");
        assert!(errors[1].contains("expected the path of a function for `compensate`"));
        assert!(
            errors[2].contains("unknown timeout action `later`"),
            "{errors:?}"
        );
        assert!(
            errors[3].contains("expected `,` between step options"),
            "{errors:?}"
        );
        let ast = ast.expect("a saga");
        assert_eq!(ast.steps.len(), 2);
        assert_eq!(ast.steps[0].options.len(), 1);
        assert_eq!(ast.steps[0].options[0].value.key_name(), "when");
        let keys: Vec<&str> = ast.steps[1]
            .options
            .iter()
            .map(|o| o.value.key_name())
            .collect();
        assert_eq!(keys, ["invoke", "on_reply"]);
    }

    #[test]
    fn reports_missing_values_and_colons() {
        let (_, errors) = parse_err(quote! {
            saga S(D) { pivot p { invoke, notify: , retry: } }
        });
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("expected `:` after `invoke`"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("expected a value for `notify`"),
            "{errors:?}"
        );
        assert!(
            errors[2].contains("expected a value for `retry`"),
            "{errors:?}"
        );
    }

    #[test]
    fn reports_bad_local_compensations() {
        let (ast, errors) = parse_err(quote! {
            saga S(D) { compensatable c { compensate: local(), when: w } compensatable d { compensate: local(a b) } }
        });
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("expected the path of the local compensation"));
        assert!(errors[1].contains("expected `)`"), "{errors:?}");
        let ast = ast.expect("a saga");
        assert_eq!(ast.steps[0].options.len(), 1);
    }

    #[test]
    fn recovers_from_broken_steps() {
        let (ast, errors) = parse_err(quote! {
            saga S(D) {
                compensatable { invoke: x }
                pivot p { invoke: y },
                retriable r invoke
                "nope" 1
                #[inline] retriable q {}
                retriable s pivot t {}
            }
        });
        // The tokens after `retriable r` are skipped up to the next attribute.
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].contains("expected the name of the compensatable step"));
        assert!(
            errors[1].contains("steps are not separated by `,`"),
            "{errors:?}"
        );
        assert!(
            errors[2].contains("expected `{` after step `r`"),
            "{errors:?}"
        );
        assert!(errors[3].contains("only doc comments"), "{errors:?}");
        assert!(
            errors[4].contains("expected `{` after step `s`"),
            "{errors:?}"
        );
        let names: Vec<String> = ast
            .expect("a saga")
            .steps
            .iter()
            .map(|s| s.name.to_string())
            .collect();
        assert_eq!(names, ["p", "q", "t"]);

        let (ast, errors) = parse_err(quote! {
            saga S(D) { "nope" 1 #[inline] retriable q {} }
        });
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("expected a step"), "{errors:?}");
        assert!(errors[1].contains("only doc comments"), "{errors:?}");
        assert_eq!(ast.expect("a saga").steps.len(), 1);
    }

    #[test]
    fn recovers_from_header_mistakes() {
        let (ast, errors) = parse_err(quote! { pub saga S(1 + 2) { pivot p {} } });
        assert_eq!(errors.len(), 1, "{errors:?}");
        let ast = ast.expect("a saga");
        assert!(ast.data.is_none());
        assert_eq!(ast.steps.len(), 1);

        let (ast, errors) = parse_err(quote! { pub saga S { pivot p {} } });
        assert!(errors[0].contains("expected the saga's data type in parentheses"));
        assert!(ast.expect("a saga").steps.is_empty());

        let (ast, errors) = parse_err(quote! { saga S(D) { pivot p {} } saga T(D) {} });
        assert!(errors[0].contains("exactly one saga"), "{errors:?}");
        assert_eq!(ast.expect("a saga").steps.len(), 1);

        let (ast, errors) = parse_err(quote! { pub struct S; });
        assert!(ast.is_none());
        assert!(errors[0].contains("expected `saga`"), "{errors:?}");

        let (ast, errors) = parse_err(quote! { saga (D) {} });
        assert!(ast.is_none());
        assert!(errors[0].contains("expected the saga's name"), "{errors:?}");
    }

    #[test]
    fn keeps_doc_comments_on_steps_out_of_the_way() {
        let ast = parse_ok(quote! {
            saga S(D) {
                /// The first step.
                pivot p {}
            }
        });
        assert_eq!(ast.steps.len(), 1);
    }
}
