//! The `saga!` macro, written as a small compiler:
//!
//! 1. [`parse`]: tokens → a syntax tree close to what was written, recovering from syntax
//!    errors so that every mistake is reported at once;
//! 2. [`analyze`]: the syntax tree → a checked model (option conflicts, and the step rules of
//!    `saga-rules`, which the runtime builder applies too);
//! 3. [`lower`]: the model → the builder calls each step makes, in a fixed order;
//! 4. [`codegen`]: the lowered saga → Rust tokens.
//!
//! Errors never stop the pipeline once the saga's name is known: the generated struct (and as
//! much of the rest as can be built) is still emitted, so uses of the saga elsewhere do not
//! add follow-on errors.

pub(crate) mod analyze;
pub(crate) mod codegen;
pub(crate) mod lower;
pub(crate) mod parse;

use proc_macro2::TokenStream;

use crate::errors::Errors;

/// The kind of a step, as written in the DSL: its keyword is `Kind::as_str`, which is also
/// the name of the `Step` constructor.
pub(crate) use saga_rules::StepKind as Kind;

/// Expands a `saga!` invocation.
pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let mut errors = Errors::new();
    let Some(ast) = parse::parse(input, &mut errors) else {
        return errors.into_compile_errors();
    };
    let model = analyze::analyze(ast, &mut errors);
    let lowered = lower::lower(&model);
    let mut output = codegen::generate(&lowered);
    output.extend(errors.into_compile_errors());
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for keyword in Kind::KEYWORDS {
            let kind = Kind::from_keyword(keyword);
            assert_eq!(kind.map(Kind::as_str), Some(keyword));
        }
        assert_eq!(Kind::from_keyword("retryable"), None);
    }

    #[test]
    fn expands_a_valid_saga_without_errors() {
        let output = expand(quote::quote! {
            pub saga S(D) {
                compensatable a { compensate: local(undo_a) }
                pivot b { invoke: do_b }
            }
        });
        let text = output.to_string();
        assert!(!text.contains("compile_error"), "{text}");
        syn::parse2::<syn::File>(output).expect("generated code parses as a file");
    }

    #[test]
    fn still_emits_the_struct_on_errors() {
        let output = expand(quote::quote! {
            pub saga S(D) {
                pivot a { invoke: x }
                pivot b { invoke: y }
            }
        });
        let text = output.to_string();
        assert!(text.contains("compile_error"), "{text}");
        assert!(text.contains("struct S"), "{text}");
    }

    #[test]
    fn emits_only_errors_when_the_name_is_missing() {
        let output = expand(quote::quote! { pub saga (D) {} });
        let text = output.to_string();
        assert!(text.contains("compile_error"), "{text}");
        assert!(!text.contains("struct"), "{text}");
    }
}
