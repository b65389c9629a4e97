//! Code generation: [`LoweredSaga`] → Rust tokens.
//!
//! Generated code names only `::saga_core::__private::…`, `::core` and `::std` paths. For a
//! saga `S` over data `D` it emits:
//!
//! - the unit struct `S` (with the user's attributes, or a generated doc comment when there is
//!   none) deriving `Debug`, `Clone`, `Copy` and `Default`;
//! - inherent consts `S::NAME` and `S::STEPS`, with the struct's visibility and docs;
//! - `impl Saga for S`, whose definition is built once, on first use, from the builder calls
//!   the steps lowered to. Handler paths are passed as written, so rustc's errors about them
//!   (unknown function, wrong reply type…) point at the user's tokens.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::Ident;

use super::lower::{BuilderCall, CallArg, LoweredSaga, LoweredStep};

/// Generates the code for a lowered saga.
pub(crate) fn generate(saga: &LoweredSaga) -> TokenStream {
    let mut output = generate_type(saga);
    if saga.data.is_some() {
        output.extend(generate_saga_impl(saga));
        output.extend(generate_version_checks(saga));
    }
    output
}

/// The struct and its inherent consts.
fn generate_type(saga: &LoweredSaga) -> TokenStream {
    let LoweredSaga {
        attrs,
        vis,
        ident,
        name,
        ..
    } = saga;
    let step_names = saga.step_names();
    let listed = step_names
        .iter()
        .map(|step| format!("`{step}`"))
        .collect::<Vec<_>>()
        .join(" → ");
    let fallback_doc = (!attrs.iter().any(|attr| attr.path().is_ident("doc"))).then(|| {
        let doc = format!(
            " The `{}` saga (declared with `saga!`); its steps: {listed}.",
            name.value()
        );
        quote!(#[doc = #doc])
    });
    let name_doc = format!(
        " The saga's name, `{:?}`: the name of its definition, recorded with each instance.",
        name.value()
    );
    let steps_doc = format!(" The names of the saga's steps, in forward order: {listed}.");
    let version = match &saga.version {
        Some(version) => quote!(::core::option::Option::Some(#version)),
        None => quote!(::core::option::Option::None),
    };
    let version_doc = match &saga.version {
        Some(version) => format!(
            " The version id each instance records, `{:?}`{}.",
            version.value(),
            if saga.retired {
                " (retired: it only finishes the instances that started on it)"
            } else {
                ""
            }
        ),
        None => " `None`: instances record a hash of the saga's graph as its version.".to_owned(),
    };
    quote! {
        #(#attrs)*
        #fallback_doc
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::default::Default
        )]
        #vis struct #ident;

        impl #ident {
            #[doc = #name_doc]
            #vis const NAME: &'static str = #name;
            #[doc = #steps_doc]
            #vis const STEPS: &'static [&'static str] = &[#(#step_names),*];
            #[doc = #version_doc]
            #vis const VERSION: ::core::option::Option<&'static str> = #version;
        }
    }
}

/// Compile-time checks of the `previous(..)` versions: each is a retired version of the same
/// saga type, and no two of them (nor one and the current) share a version id. Each check
/// is spanned at the path it is about, so the error points there.
fn generate_version_checks(saga: &LoweredSaga) -> TokenStream {
    let LoweredSaga { ident, name, .. } = saga;
    let mut checks = Vec::new();
    for (index, path) in saga.previous.iter().enumerate() {
        let span = syn::spanned::Spanned::span(path);
        let shown = path.to_token_stream().to_string().replace(' ', "");
        let other_type = format!(
            "`{shown}` is listed in `previous` of saga `{}` but is a version of another saga \
             type; give it `#[saga(name = {:?}, ..)]`",
            name.value(),
            name.value()
        );
        let not_retired = format!(
            "`{shown}` is listed in `previous` of saga `{}` but is not marked `retired`",
            name.value()
        );
        let same_as_current = format!(
            "`{shown}` and `{ident}` have the same version id: two versions of saga `{}` \
             need different `version = \"…\"` ids",
            name.value()
        );
        checks.push(quote::quote_spanned! {span=>
            ::core::assert!(::saga_core::__private::str_eq(#path::NAME, #ident::NAME), #other_type);
            ::core::assert!(<#path as ::saga_core::__private::Saga>::RETIRED, #not_retired);
            ::core::assert!(
                !::saga_core::__private::same_version(#path::VERSION, #ident::VERSION),
                #same_as_current
            );
        });
        for earlier in &saga.previous[..index] {
            let earlier_shown = earlier.to_token_stream().to_string().replace(' ', "");
            let same = format!(
                "`{earlier_shown}` and `{shown}` have the same version id: two versions of saga \
                 `{}` need different `version = \"…\"` ids",
                name.value()
            );
            checks.push(quote::quote_spanned! {span=>
                ::core::assert!(
                    !::saga_core::__private::same_version(#earlier::VERSION, #path::VERSION),
                    #same
                );
            });
        }
    }
    if checks.is_empty() {
        return TokenStream::new();
    }
    quote! {
        const _: () = { #(#checks)* };
    }
}

/// `impl Saga for S`, when the data type is known.
fn generate_saga_impl(saga: &LoweredSaga) -> TokenStream {
    let LoweredSaga {
        ident, name, data, ..
    } = saga;
    let definition = Ident::new("DEFINITION", Span::mixed_site());
    let steps = generate_steps(&saga.steps);
    // The user's expression, in the user's scope: their own imports resolve it.
    let timeout = saga.timeout.as_ref().map(|expr| quote!(.timeout(#expr)));
    let version = saga
        .version
        .as_ref()
        .map(|version| quote!(.version(#version)));
    let retired = saga.retired.then(|| {
        quote!(
            const RETIRED: bool = true;
        )
    });
    let previous = (!saga.previous.is_empty()).then(|| {
        let previous = &saga.previous;
        quote! {
            fn previous_versions() -> ::std::vec::Vec<::saga_core::__private::SagaVersion> {
                ::std::vec![#(::saga_core::__private::SagaVersion::of::<#previous>()),*]
            }
        }
    });
    quote! {
        impl ::saga_core::__private::Saga for #ident {
            type Data = #data;
            #retired
            #previous

            fn definition() -> &'static ::saga_core::__private::SagaDefinition<Self::Data> {
                static #definition: ::saga_core::__private::OnceLock<
                    ::saga_core::__private::SagaDefinition<
                        <#ident as ::saga_core::__private::Saga>::Data
                    >
                > = ::saga_core::__private::OnceLock::new();
                #definition.get_or_init(|| {
                    ::saga_core::__private::checked(
                        ::saga_core::__private::SagaDefinition::<Self::Data>::builder(#name)
                            #version
                            #timeout
                            #(#steps)*
                    )
                })
            }
        }
    }
}

/// `.step(..)` per step, and `.parallel(vec![..])` per run of steps of one group.
fn generate_steps(steps: &[LoweredStep]) -> Vec<TokenStream> {
    let mut calls = Vec::new();
    let mut index = 0;
    while index < steps.len() {
        let Some(group) = steps[index].group else {
            let step = generate_step(&steps[index]);
            calls.push(quote!(.step(#step)));
            index += 1;
            continue;
        };
        let members: Vec<TokenStream> = steps[index..]
            .iter()
            .take_while(|step| step.group == Some(group))
            .map(|step| {
                let step = generate_step(step);
                quote!(::saga_core::__private::StepDefinition::<Self::Data>::from(#step))
            })
            .collect();
        index += members.len();
        calls.push(quote!(.parallel(::std::vec![#(#members),*])));
    }
    calls
}

/// `Step::<kind>::<Data>("name").call(..)…`
fn generate_step(step: &LoweredStep) -> TokenStream {
    let LoweredStep {
        constructor,
        name,
        calls,
        ..
    } = step;
    let calls = calls.iter().map(generate_call);
    quote! {
        ::saga_core::__private::Step::#constructor::<Self::Data>(#name)
            #(#calls)*
    }
}

/// `.method(arg)`
fn generate_call(call: &BuilderCall) -> TokenStream {
    let method = &call.method;
    let arg = match &call.arg {
        CallArg::Handler(path) => path.to_token_stream(),
        CallArg::ReplyHandler { invoke, handler } => {
            let span = syn::spanned::Spanned::span(handler);
            let checked = quote::quote_spanned!(span=> .handler(#handler));
            quote!(::saga_core::__private::ReplyCheck::new(#invoke) #checked)
        }
        // In the user's scope, like a handler path: `RetryPolicy` and `Duration` are whatever
        // the user imported.
        CallArg::Value(expr) => expr.to_token_stream(),
        CallArg::TimeoutAction(variant) => {
            quote!(::saga_core::__private::TimeoutAction::#variant)
        }
        CallArg::Nothing => TokenStream::new(),
    };
    quote!(.#method(#arg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::Errors;
    use crate::saga::{analyze, lower, parse};

    fn generate_tokens(tokens: TokenStream) -> String {
        let mut errors = Errors::new();
        let ast = parse::parse(tokens, &mut errors).expect("a saga");
        let model = analyze::analyze(ast, &mut errors);
        let output = generate(&lower::lower(&model));
        syn::parse2::<syn::File>(output.clone()).expect("generated code parses");
        output.to_string()
    }

    #[test]
    fn generates_struct_consts_and_impl() {
        let code = generate_tokens(quote! {
            /// Creates an order.
            pub saga CreateOrderSaga(CreateOrderData) {
                compensatable create_order { compensate: local(reject_order) }
                compensatable create_ticket { invoke: create_ticket, on_reply: ticket_created, compensate: cancel_create_ticket }
                pivot authorize_card { invoke: authorize_card }
                retriable confirm_ticket { invoke: confirm, retry: RetryPolicy::fixed(Duration::from_millis(5)), on_timeout: retry }
            }
        });
        let expected = [
            "# [doc = r\" Creates an order.\"]",
            "pub struct CreateOrderSaga ;",
            "pub const NAME : & 'static str = \"CreateOrderSaga\" ;",
            "pub const STEPS : & 'static [& 'static str] = & [\"create_order\" , \"create_ticket\" , \"authorize_card\" , \"confirm_ticket\"] ;",
            "impl :: saga_core :: __private :: Saga for CreateOrderSaga",
            "type Data = CreateOrderData ;",
            "SagaDefinition :: < Self :: Data > :: builder (\"CreateOrderSaga\")",
            ". step (:: saga_core :: __private :: Step :: compensatable :: < Self :: Data > (\"create_order\") . compensate_local (reject_order))",
            ". invoke (create_ticket) . on_reply (:: saga_core :: __private :: ReplyCheck :: new (create_ticket) . handler (ticket_created)) . compensate (cancel_create_ticket))",
            "Step :: pivot :: < Self :: Data > (\"authorize_card\") . invoke (authorize_card))",
            ". retry (RetryPolicy :: fixed (Duration :: from_millis (5)))",
            ". on_timeout (:: saga_core :: __private :: TimeoutAction :: Retry)",
        ];
        for snippet in expected {
            assert!(code.contains(snippet), "missing `{snippet}` in:\n{code}");
        }
        assert!(!code.contains("The `CreateOrderSaga` saga"), "{code}");
    }

    #[test]
    fn documents_undocumented_sagas_and_keeps_private_visibility() {
        let code = generate_tokens(quote! { saga S(D) { pivot a {} retriable b {} } });
        assert!(code.contains("The `S` saga (declared with `saga!`); its steps: `a` → `b`."));
        assert!(code.contains("struct S ;"), "{code}");
        assert!(code.contains(" const NAME"), "{code}");
        assert!(!code.contains("pub"), "{code}");
    }

    #[test]
    fn without_a_data_type_only_the_type_is_generated() {
        let code = generate_tokens(quote! { pub(crate) saga S(1) { pivot a {} } });
        assert!(code.contains("pub (crate) struct S ;"), "{code}");
        assert!(code.contains("pub (crate) const STEPS"), "{code}");
        assert!(!code.contains("impl :: saga_core"), "{code}");
    }
}
