//! The derives: `Command`, `Reply` and `SemanticLock`, with the helpers they share.

pub(crate) mod command;
pub(crate) mod reply;
pub(crate) mod semantic_lock;

use syn::meta::ParseNestedMeta;
use syn::{Attribute, Fields, LitStr, Meta};

use crate::errors::Errors;

/// The attributes of `attrs` named `name`.
pub(crate) fn named<'a>(
    attrs: &'a [Attribute],
    name: &'a str,
) -> impl Iterator<Item = &'a Attribute> + 'a {
    attrs.iter().filter(move |attr| attr.path().is_ident(name))
}

/// Checks that a marker attribute such as `#[pending]` has no arguments.
pub(crate) fn check_marker(attr: &Attribute, name: &str) -> syn::Result<()> {
    match &attr.meta {
        Meta::Path(_) => Ok(()),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`#[{name}]` takes no arguments; write `#[{name}]`"),
        )),
    }
}

/// Reports every attribute of `attrs` named in `names`: they do not belong where they are.
pub(crate) fn reject_attrs(attrs: &[Attribute], names: &[&str], place: &str, errors: &mut Errors) {
    for attr in attrs {
        if let Some(name) = names.iter().find(|name| attr.path().is_ident(name)) {
            errors.push(syn::Error::new_spanned(
                attr,
                format!("`#[{name}]` is not allowed on {place}"),
            ));
        }
    }
}

/// Reports helper attributes named in `names` on any field of `fields`.
pub(crate) fn reject_field_attrs(fields: &Fields, names: &[&str], errors: &mut Errors) {
    for field in fields {
        reject_attrs(&field.attrs, names, "a field", errors);
    }
}

/// Parses `key = "non-empty string"`, reporting a duplicate key in `errors`.
pub(crate) fn string_value(
    meta: &ParseNestedMeta<'_>,
    key: &str,
    slot: &mut Option<LitStr>,
    errors: &mut Errors,
) -> syn::Result<()> {
    let value: LitStr = meta.value()?.parse()?;
    if value.value().trim().is_empty() {
        errors.push(syn::Error::new(
            value.span(),
            format!("`{key}` must not be empty"),
        ));
    }
    set_once(meta, key, slot, value, errors);
    Ok(())
}

/// Stores `value` in `slot`, or reports a duplicate `key`.
pub(crate) fn set_once<T>(
    meta: &ParseNestedMeta<'_>,
    key: &str,
    slot: &mut Option<T>,
    value: T,
    errors: &mut Errors,
) {
    if slot.is_some() {
        errors.push(meta.error(format!("duplicate `{key}`; give it once")));
    } else {
        *slot = Some(value);
    }
}

/// Converts a `CamelCase` identifier to `SCREAMING_SNAKE_CASE`: `ApprovalPending` →
/// `APPROVAL_PENDING`, `HTTPError` → `HTTP_ERROR`, `Step2Done` → `STEP2_DONE`.
pub(crate) fn screaming_snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (index, &c) in chars.iter().enumerate() {
        if c == '_' {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            continue;
        }
        if index > 0 && c.is_uppercase() && !out.is_empty() && !out.ends_with('_') {
            let previous = chars[index - 1];
            let next_is_lower = chars.get(index + 1).is_some_and(|n| n.is_lowercase());
            if previous.is_lowercase()
                || previous.is_ascii_digit()
                || (previous.is_uppercase() && next_is_lower)
            {
                out.push('_');
            }
        }
        out.extend(c.to_uppercase());
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_screaming_snake_case() {
        let cases = [
            ("ApprovalPending", "APPROVAL_PENDING"),
            ("Approved", "APPROVED"),
            ("CancelPending", "CANCEL_PENDING"),
            ("HTTPError", "HTTP_ERROR"),
            ("Step2Done", "STEP2_DONE"),
            ("already_snake", "ALREADY_SNAKE"),
            ("A", "A"),
            ("AB", "AB"),
            ("Trailing_", "TRAILING"),
        ];
        for (input, expected) in cases {
            assert_eq!(screaming_snake_case(input), expected, "{input}");
        }
    }

    #[test]
    fn checks_markers() {
        let attr: Attribute = syn::parse_quote!(#[pending]);
        assert!(check_marker(&attr, "pending").is_ok());
        let attr: Attribute = syn::parse_quote!(#[pending(yes)]);
        let error = check_marker(&attr, "pending").expect_err("arguments");
        assert_eq!(
            error.to_string(),
            "`#[pending]` takes no arguments; write `#[pending]`"
        );
    }
}
