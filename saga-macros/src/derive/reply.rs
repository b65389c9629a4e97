//! `#[derive(Reply)]`: implements `Reply`.
//!
//! A struct is a success reply unless marked `#[reply(failure)]`. Each variant of an enum is
//! marked `#[success]` or `#[failure]`. `#[reply(type_name = "...")]` overrides the type name
//! (the ident by default). A failure's reason is its `reason` field, when it has one (any
//! `Display` type), else its name.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Data, DataEnum, DeriveInput, Fields, Ident, LitStr, Variant};

use super::{check_marker, named, reject_attrs, reject_field_attrs, set_once, string_value};
use crate::errors::Errors;

/// The helper attributes of this derive.
const HELPERS: [&str; 3] = ["reply", "success", "failure"];

/// Whether a reply (or variant) reports success or failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// `ReplyOutcome::Success`.
    Success,
    /// `ReplyOutcome::Failure`.
    Failure,
}

/// The `#[reply(...)]` settings.
#[derive(Default)]
struct ReplyArgs {
    /// `success` or `failure`, with the span of the word.
    outcome: Option<(Outcome, Span)>,
    /// The stable type name, when not the ident.
    type_name: Option<LitStr>,
}

/// Expands `#[derive(Reply)]`.
pub(crate) fn expand(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::new();
    let args = parse_args(input, &mut errors);
    let ident = &input.ident;
    let generic = !input.generics.params.is_empty();
    if generic {
        errors.push(syn::Error::new_spanned(
            &input.generics,
            "generic replies are not supported: a reply's type name is fixed per type",
        ));
    }

    let body = match &input.data {
        Data::Struct(data) => {
            for marker in ["success", "failure"] {
                for attr in named(&input.attrs, marker) {
                    errors.push(syn::Error::new_spanned(
                        attr,
                        format!(
                            "`#[{marker}]` marks enum variants; on a struct, write \
                             `#[reply({marker})]`"
                        ),
                    ));
                }
            }
            reject_field_attrs(&data.fields, &HELPERS, &mut errors);
            let outcome = args
                .outcome
                .map_or(Outcome::Success, |(outcome, _)| outcome);
            Some(struct_body(ident, &data.fields, outcome))
        }
        Data::Enum(data) => {
            if let Some((_, span)) = args.outcome {
                errors.error(
                    span,
                    "on an enum, mark each variant `#[success]` or `#[failure]` instead",
                );
            }
            reject_attrs(
                &input.attrs,
                &["success", "failure"],
                "an enum; mark its variants instead",
                &mut errors,
            );
            Some(enum_body(data, &mut errors))
        }
        Data::Union(data) => {
            errors.push(syn::Error::new_spanned(
                data.union_token,
                "`Reply` cannot be derived for a union; use a struct or an enum",
            ));
            None
        }
    };

    let mut output = TokenStream::new();
    if let (false, Some(body)) = (generic, body) {
        let type_name = args
            .type_name
            .unwrap_or_else(|| LitStr::new(&ident.unraw().to_string(), ident.span()));
        let where_clause = &input.generics.where_clause;
        output.extend(quote! {
            #[automatically_derived]
            impl ::saga_core::__private::Reply for #ident #where_clause {
                const TYPE: &'static str = #type_name;
                #body
            }

            #[automatically_derived]
            impl ::saga_core::__private::AwaitedReply for #ident #where_clause {}
        });
    }
    output.extend(errors.into_compile_errors());
    output
}

/// Reads every `#[reply(...)]` attribute on the type.
fn parse_args(input: &DeriveInput, errors: &mut Errors) -> ReplyArgs {
    let mut args = ReplyArgs::default();
    for attr in named(&input.attrs, "reply") {
        let mut inner = Errors::new();
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("type_name") {
                return string_value(&meta, "type_name", &mut args.type_name, &mut inner);
            }
            let outcome = if meta.path.is_ident("success") {
                Outcome::Success
            } else if meta.path.is_ident("failure") {
                Outcome::Failure
            } else {
                return Err(meta.error(
                    "unknown `reply` setting; expected `success`, `failure` or \
                     `type_name = \"...\"`",
                ));
            };
            if let Some((previous, _)) = args.outcome
                && previous != outcome
            {
                inner.push(meta.error("a reply is either `success` or `failure`, not both"));
                return Ok(());
            }
            set_once(
                &meta,
                "success/failure",
                &mut args.outcome,
                (outcome, meta.path.span()),
                &mut inner,
            );
            Ok(())
        });
        errors.extend(inner);
        errors.ok(result);
    }
    args
}

/// `outcome` (and `failure_reason`, for a failure) of a struct reply.
fn struct_body(ident: &Ident, fields: &Fields, outcome: Outcome) -> TokenStream {
    let outcome_tokens = outcome_path(outcome);
    let reason = match outcome {
        Outcome::Success => None,
        Outcome::Failure => {
            let reason = match reason_field(fields) {
                Some(field) => quote_spanned! {field.span()=>
                    ::std::string::ToString::to_string(&self.#field)
                },
                None => name_reason(ident),
            };
            Some(quote! {
                fn failure_reason(&self) -> ::core::option::Option<::std::string::String> {
                    ::core::option::Option::Some(#reason)
                }
            })
        }
    };
    quote! {
        fn outcome(&self) -> ::saga_core::__private::ReplyOutcome {
            #outcome_tokens
        }
        #reason
    }
}

/// `outcome` and `failure_reason` of an enum reply, from its variants' markers.
fn enum_body(data: &DataEnum, errors: &mut Errors) -> TokenStream {
    let outcomes: Vec<(&Variant, Outcome)> = data
        .variants
        .iter()
        .map(|variant| (variant, variant_outcome(variant, errors)))
        .collect();

    let outcome_arms = outcomes.iter().map(|(variant, outcome)| {
        let pattern = variant_pattern(variant);
        let outcome = outcome_path(*outcome);
        quote!(#pattern => #outcome,)
    });
    let outcome_fn = quote! {
        fn outcome(&self) -> ::saga_core::__private::ReplyOutcome {
            match *self {
                #(#outcome_arms)*
            }
        }
    };
    if outcomes
        .iter()
        .all(|(_, outcome)| *outcome == Outcome::Success)
    {
        return outcome_fn;
    }

    let reason_arms = outcomes.iter().map(|(variant, outcome)| {
        let name = &variant.ident;
        match (outcome, reason_field(&variant.fields)) {
            (Outcome::Success, _) => {
                let pattern = variant_pattern(variant);
                quote!(#pattern => ::core::option::Option::None,)
            }
            (Outcome::Failure, Some(field)) => {
                let reason = quote_spanned! {field.span()=>
                    ::std::string::ToString::to_string(#field)
                };
                quote!(Self::#name { #field, .. } => ::core::option::Option::Some(#reason),)
            }
            (Outcome::Failure, None) => {
                let pattern = variant_pattern(variant);
                let reason = name_reason(name);
                quote!(#pattern => ::core::option::Option::Some(#reason),)
            }
        }
    });
    quote! {
        #outcome_fn
        fn failure_reason(&self) -> ::core::option::Option<::std::string::String> {
            match self {
                #(#reason_arms)*
            }
        }
    }
}

/// A variant's `#[success]` / `#[failure]` marker; unmarked variants are reported (and treated
/// as successes so the rest of the impl is still generated).
fn variant_outcome(variant: &Variant, errors: &mut Errors) -> Outcome {
    reject_attrs(
        &variant.attrs,
        &["reply"],
        "a variant; mark it `#[success]` or `#[failure]`",
        errors,
    );
    reject_field_attrs(&variant.fields, &HELPERS, errors);
    let mut found: Option<Outcome> = None;
    for attr in &variant.attrs {
        let outcome = if attr.path().is_ident("success") {
            Outcome::Success
        } else if attr.path().is_ident("failure") {
            Outcome::Failure
        } else {
            continue;
        };
        let name = if outcome == Outcome::Success {
            "success"
        } else {
            "failure"
        };
        errors.ok(check_marker(attr, name));
        match found {
            None => found = Some(outcome),
            Some(previous) if previous == outcome => errors.push(syn::Error::new_spanned(
                attr,
                format!("duplicate `#[{name}]`"),
            )),
            Some(_) => errors.push(syn::Error::new_spanned(
                attr,
                format!(
                    "variant `{}` is marked both `#[success]` and `#[failure]`; keep one",
                    variant.ident
                ),
            )),
        }
    }
    found.unwrap_or_else(|| {
        errors.error(
            variant.ident.span(),
            format!(
                "mark variant `{}` #[success] or #[failure]: every variant of a reply enum \
                 says which outcome it reports",
                variant.ident
            ),
        );
        Outcome::Success
    })
}

/// The `reason` field, if the fields are named and include one.
fn reason_field(fields: &Fields) -> Option<&Ident> {
    match fields {
        Fields::Named(named) => named
            .named
            .iter()
            .filter_map(|field| field.ident.as_ref())
            .find(|ident| ident.unraw() == "reason"),
        Fields::Unnamed(_) | Fields::Unit => None,
    }
}

/// The reason of a failure without a `reason` field: its name.
fn name_reason(name: &Ident) -> TokenStream {
    let name = LitStr::new(&name.unraw().to_string(), name.span());
    quote!(::std::string::String::from(#name))
}

/// `Self::Variant`, `Self::Variant(..)` or `Self::Variant { .. }`, by the variant's shape.
pub(crate) fn variant_pattern(variant: &Variant) -> TokenStream {
    let name = &variant.ident;
    match variant.fields {
        Fields::Named(_) => quote!(Self::#name { .. }),
        Fields::Unnamed(_) => quote!(Self::#name(..)),
        Fields::Unit => quote!(Self::#name),
    }
}

/// `ReplyOutcome::Success` or `ReplyOutcome::Failure`.
fn outcome_path(outcome: Outcome) -> TokenStream {
    match outcome {
        Outcome::Success => quote!(::saga_core::__private::ReplyOutcome::Success),
        Outcome::Failure => quote!(::saga_core::__private::ReplyOutcome::Failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(source: &str) -> String {
        let input: DeriveInput = syn::parse_str(source).expect("a type");
        let output = expand(&input);
        output.to_string()
    }

    fn compile_errors(code: &str) -> Vec<&str> {
        code.split("compile_error !").skip(1).collect()
    }

    #[test]
    fn a_struct_is_a_success_by_default() {
        let code = expand_str("struct TicketCreated { ticket_id: u64 }");
        assert_eq!(
            code,
            quote! {
                #[automatically_derived]
                impl ::saga_core::__private::Reply for TicketCreated {
                    const TYPE: &'static str = "TicketCreated";
                    fn outcome(&self) -> ::saga_core::__private::ReplyOutcome {
                        ::saga_core::__private::ReplyOutcome::Success
                    }
                }

                #[automatically_derived]
                impl ::saga_core::__private::AwaitedReply for TicketCreated {}
            }
            .to_string()
        );
        let code = expand_str(r#"#[reply(success, type_name = "k.Ok")] struct Ok;"#);
        assert!(code.contains("\"k.Ok\""), "{code}");
        assert!(compile_errors(&code).is_empty(), "{code}");
    }

    #[test]
    fn a_failure_struct_reports_its_reason_or_name() {
        let code = expand_str("#[reply(failure)] struct Rejected { reason: String, code: u8 }");
        assert!(code.contains("ReplyOutcome :: Failure"), "{code}");
        assert!(
            code.contains("Some (:: std :: string :: ToString :: to_string (& self . reason))"),
            "{code}"
        );
        let code = expand_str("#[reply(failure)] struct CardDeclined(u8);");
        assert!(
            code.contains("Some (:: std :: string :: String :: from (\"CardDeclined\"))"),
            "{code}"
        );
    }

    #[test]
    fn an_enum_marks_each_variant() {
        let code = expand_str(
            r#"enum AuthorizeReply {
                #[success] Authorized { id: u64 },
                #[failure] Declined { reason: Reason },
                #[failure] Expired(u8),
                #[failure] Unknown,
                #[success] Later,
            }"#,
        );
        assert!(compile_errors(&code).is_empty(), "{code}");
        let expected = [
            "match * self { Self :: Authorized { .. } => :: saga_core :: __private :: ReplyOutcome :: Success ,",
            "Self :: Expired (..) => :: saga_core :: __private :: ReplyOutcome :: Failure ,",
            "Self :: Unknown => :: saga_core :: __private :: ReplyOutcome :: Failure ,",
            "match self { Self :: Authorized { .. } => :: core :: option :: Option :: None ,",
            "Self :: Declined { reason , .. } => :: core :: option :: Option :: Some (:: std :: string :: ToString :: to_string (reason)) ,",
            "Self :: Expired (..) => :: core :: option :: Option :: Some (:: std :: string :: String :: from (\"Expired\")) ,",
            "Self :: Later => :: core :: option :: Option :: None ,",
        ];
        for snippet in expected {
            assert!(code.contains(snippet), "missing `{snippet}` in:\n{code}");
        }
        syn::parse_str::<syn::File>(&code).expect("valid code");
    }

    #[test]
    fn an_all_success_enum_has_no_failure_reason() {
        let code = expand_str("enum R { #[success] A, #[success] B(u8) }");
        assert!(!code.contains("failure_reason"), "{code}");
        let code = expand_str("enum Never {}");
        assert!(code.contains("match * self { }"), "{code}");
    }

    #[test]
    fn reports_unmarked_and_doubly_marked_variants() {
        let code = expand_str(
            "#[reply(failure)] #[failure] enum R { A, #[success] #[failure] B, #[success(x)] C }",
        );
        let errors = compile_errors(&code);
        assert_eq!(errors.len(), 5, "{code}");
        assert!(
            errors[0].contains("on an enum, mark each variant"),
            "{code}"
        );
        assert!(
            errors[1].contains("`#[failure]` is not allowed on an enum"),
            "{code}"
        );
        assert!(
            errors[2].contains("mark variant `A` #[success] or #[failure]"),
            "{code}"
        );
        assert!(errors[3].contains("marked both"), "{code}");
        assert!(errors[4].contains("takes no arguments"), "{code}");
        assert!(code.contains("impl"), "the impl is still generated: {code}");
    }

    #[test]
    fn reports_misplaced_and_bad_settings() {
        let code = expand_str(
            r#"#[failure] #[reply(success, failure)] #[reply(sucess)]
               struct R { #[failure] reason: String }"#,
        );
        let errors = compile_errors(&code);
        assert_eq!(errors.len(), 4, "{code}");
        assert!(errors[0].contains("not both"), "{code}");
        assert!(errors[1].contains("unknown `reply` setting"), "{code}");
        assert!(
            errors[2].contains("on a struct, write `#[reply(failure)]`"),
            "{code}"
        );
        assert!(errors[3].contains("not allowed on a field"), "{code}");
    }

    #[test]
    fn rejects_generics_and_unions() {
        let code = expand_str("struct R<T>(T);");
        assert!(code.contains("generic replies are not supported"), "{code}");
        assert!(!code.contains("impl"), "{code}");
        let code = expand_str("union U { a: u8 }");
        assert!(code.contains("cannot be derived for a union"), "{code}");
    }
}
