//! `#[derive(SemanticLock)]`: implements `SemanticLock` for an enum of record states.
//!
//! Variants marked `#[pending]` are the locked states. The record name comes from
//! `#[semantic_lock(record = "...")]`, or is the enum's name without a trailing `State`
//! (`OrderState` → `Order`). Each state's name is its variant in `SCREAMING_SNAKE_CASE`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::{Data, DeriveInput, LitStr};

use super::reply::variant_pattern;
use super::{
    check_marker, named, reject_attrs, reject_field_attrs, screaming_snake_case, string_value,
};
use crate::errors::Errors;

/// Expands `#[derive(SemanticLock)]`.
pub(crate) fn expand(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::new();
    let ident = &input.ident;
    let record = parse_record(input, &mut errors);
    reject_attrs(
        &input.attrs,
        &["pending"],
        "the enum; mark its pending variants instead",
        &mut errors,
    );

    let data = match &input.data {
        Data::Enum(data) => data,
        Data::Struct(data) => {
            errors.push(syn::Error::new_spanned(
                data.struct_token,
                "`SemanticLock` can only be derived for an enum of record states, with the \
                 pending ones marked `#[pending]`",
            ));
            return errors.into_compile_errors();
        }
        Data::Union(data) => {
            errors.push(syn::Error::new_spanned(
                data.union_token,
                "`SemanticLock` can only be derived for an enum of record states, with the \
                 pending ones marked `#[pending]`",
            ));
            return errors.into_compile_errors();
        }
    };

    let mut pending = Vec::new();
    let mut state_arms = Vec::new();
    // The data-free variants, for the name round trip and the list of states.
    let mut units = Vec::new();
    for variant in &data.variants {
        reject_attrs(&variant.attrs, &["semantic_lock"], "a variant", &mut errors);
        reject_field_attrs(&variant.fields, &["semantic_lock", "pending"], &mut errors);
        let mut markers = named(&variant.attrs, "pending");
        if let Some(marker) = markers.next() {
            errors.ok(check_marker(marker, "pending"));
            pending.push(variant_pattern(variant));
        }
        for duplicate in markers {
            errors.push(syn::Error::new_spanned(duplicate, "duplicate `#[pending]`"));
        }
        let pattern = variant_pattern(variant);
        let state = LitStr::new(
            &screaming_snake_case(&variant.ident.unraw().to_string()),
            variant.ident.span(),
        );
        if matches!(variant.fields, syn::Fields::Unit) {
            units.push((pattern.clone(), state.clone()));
        }
        state_arms.push(quote!(#pattern => #state,));
    }
    if pending.is_empty() {
        errors.error(
            ident.span(),
            format!(
                "no variant of `{ident}` is pending; mark at least one variant #[pending] (the \
                 states a saga holds the record in until it confirms or undoes its work)"
            ),
        );
    }

    let is_pending = if pending.is_empty() {
        quote!(false)
    } else {
        quote!(::core::matches!(*self, #(#pending)|*))
    };
    // Only when every state is data-free can a stored name be read back, and only without
    // generics can the list be a promoted `'static` slice.
    let all_units = units.len() == data.variants.len();
    let from_state_name = all_units.then(|| {
        let arms = units
            .iter()
            .map(|(pattern, state)| quote!(#state => Ok(#pattern),));
        quote! {
            fn from_state_name(
                name: &str,
            ) -> ::core::result::Result<Self, ::saga_core::__private::UnknownState> {
                match name {
                    #(#arms)*
                    _ => Err(::saga_core::__private::UnknownState {
                        record: #record,
                        name: ::std::borrow::ToOwned::to_owned(name),
                    }),
                }
            }
        }
    });
    let all = (all_units && input.generics.params.is_empty()).then(|| {
        let states = units.iter().map(|(pattern, _)| pattern);
        quote! {
            fn all() -> &'static [Self]
            where
                Self: 'static,
            {
                &[#(#states),*]
            }
        }
    });
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    let mut output = quote! {
        #[automatically_derived]
        impl #impl_generics ::saga_core::__private::SemanticLock for #ident #type_generics
            #where_clause
        {
            const RECORD: &'static str = #record;

            fn is_pending(&self) -> bool {
                #is_pending
            }

            fn state_name(&self) -> &'static str {
                match *self {
                    #(#state_arms)*
                }
            }

            #from_state_name
            #all
        }
    };
    output.extend(errors.into_compile_errors());
    output
}

/// The record name: `#[semantic_lock(record = "...")]`, or the enum's name without a trailing
/// `State`.
fn parse_record(input: &DeriveInput, errors: &mut Errors) -> LitStr {
    let mut record = None;
    for attr in named(&input.attrs, "semantic_lock") {
        let mut inner = Errors::new();
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("record") {
                string_value(&meta, "record", &mut record, &mut inner)
            } else {
                Err(meta.error("unknown `semantic_lock` setting; expected `record = \"...\"`"))
            }
        });
        errors.extend(inner);
        errors.ok(result);
    }
    record.unwrap_or_else(|| {
        let name = input.ident.unraw().to_string();
        let record = match name.strip_suffix("State") {
            Some(stem) if !stem.is_empty() => stem,
            _ => &name,
        };
        LitStr::new(record, input.ident.span())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(source: &str) -> String {
        let input: DeriveInput = syn::parse_str(source).expect("a type");
        expand(&input).to_string()
    }

    fn compile_errors(code: &str) -> Vec<&str> {
        code.split("compile_error !").skip(1).collect()
    }

    #[test]
    fn implements_semantic_lock() {
        let code = expand_str(
            "enum OrderState { #[pending] ApprovalPending, Approved, #[pending] CancelPending { by: u8 }, Rejected(u8) }",
        );
        assert_eq!(
            code,
            quote! {
                #[automatically_derived]
                impl ::saga_core::__private::SemanticLock for OrderState {
                    const RECORD: &'static str = "Order";
                    fn is_pending(&self) -> bool {
                        ::core::matches!(*self, Self::ApprovalPending | Self::CancelPending { .. })
                    }
                    fn state_name(&self) -> &'static str {
                        match *self {
                            Self::ApprovalPending => "APPROVAL_PENDING",
                            Self::Approved => "APPROVED",
                            Self::CancelPending { .. } => "CANCEL_PENDING",
                            Self::Rejected(..) => "REJECTED",
                        }
                    }
                }
            }
            .to_string()
        );
    }

    #[test]
    fn reads_stored_names_back_when_no_state_carries_data() {
        let code = expand_str("enum TicketState { #[pending] CreatePending, Cancelled }");
        assert!(
            code.contains(
                "\"CREATE_PENDING\" => Ok (Self :: CreatePending) , \"CANCELLED\" => Ok (Self :: Cancelled) ,"
            ),
            "{code}"
        );
        assert!(
            code.contains("& [Self :: CreatePending , Self :: Cancelled]"),
            "{code}"
        );
        // Generic: the round trip, but no `'static` list.
        let code = expand_str("enum S<T> { #[pending] P, Q }");
        assert!(code.contains("fn from_state_name"), "{code}");
        assert!(!code.contains("fn all"), "{code}");
    }

    #[test]
    fn takes_the_record_name_from_the_attribute_or_the_enum() {
        let code =
            expand_str(r#"#[semantic_lock(record = "Kitchen ticket")] enum T { #[pending] P }"#);
        assert!(code.contains("\"Kitchen ticket\""), "{code}");
        assert!(expand_str("enum Ticket { #[pending] P }").contains("= \"Ticket\""));
        assert!(expand_str("enum State { #[pending] P }").contains("= \"State\""));
    }

    #[test]
    fn supports_generics() {
        let code = expand_str("enum S<T: Copy> where T: Eq { #[pending] P(T), Q }");
        assert!(
            code.contains("impl < T : Copy > :: saga_core :: __private :: SemanticLock for S < T > where T : Eq"),
            "{code}"
        );
    }

    #[test]
    fn requires_a_pending_variant() {
        let code = expand_str("enum OrderState { Approved, Rejected }");
        let errors = compile_errors(&code);
        assert_eq!(errors.len(), 1, "{code}");
        assert!(
            errors[0].contains("mark at least one variant #[pending]"),
            "{code}"
        );
        assert!(
            code.contains("fn is_pending (& self) -> bool { false }"),
            "{code}"
        );
    }

    #[test]
    fn reports_misuse() {
        let code = expand_str("struct S;");
        assert!(code.contains("can only be derived for an enum"), "{code}");
        assert!(!code.contains("impl"), "{code}");
        let code = expand_str(
            r#"#[pending] #[semantic_lock(record = "", recrod = "x")]
               enum S { #[pending(now)] A, #[pending] #[pending] B, C { #[pending] x: u8 } }"#,
        );
        let errors = compile_errors(&code);
        assert_eq!(errors.len(), 6, "{code}");
        assert!(errors[0].contains("`record` must not be empty"), "{code}");
        assert!(
            errors[1].contains("unknown `semantic_lock` setting"),
            "{code}"
        );
        assert!(errors[2].contains("not allowed on the enum"), "{code}");
        assert!(errors[3].contains("takes no arguments"), "{code}");
        assert!(errors[4].contains("duplicate `#[pending]`"), "{code}");
        assert!(errors[5].contains("not allowed on a field"), "{code}");
    }
}
