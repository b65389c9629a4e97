//! Collecting several [`syn::Error`]s, so that one expansion reports every mistake at once.

use std::fmt::Display;

use proc_macro2::{Span, TokenStream};

/// An accumulator of errors: each one is reported as its own `compile_error!`.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    /// The errors so far, combined into one `syn::Error` (which holds a list).
    combined: Option<syn::Error>,
}

impl Errors {
    /// An empty accumulator.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// Records an error with `message` at `span`.
    pub(crate) fn error(&mut self, span: Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    /// Records the error of `result`, if any, and returns its value.
    pub(crate) fn ok<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.push(error);
                None
            }
        }
    }

    /// Moves every error of `other` into `self`.
    pub(crate) fn extend(&mut self, other: Errors) {
        if let Some(error) = other.combined {
            self.push(error);
        }
    }

    /// Whether no error was recorded.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.combined.is_none()
    }

    /// The messages recorded so far, in order (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn messages(&self) -> Vec<String> {
        self.combined
            .iter()
            .flat_map(|error| error.clone().into_iter().map(|e| e.to_string()))
            .collect()
    }

    /// One `compile_error!` per recorded error (nothing when empty).
    pub(crate) fn into_compile_errors(self) -> TokenStream {
        self.combined
            .map(syn::Error::into_compile_error)
            .unwrap_or_default()
    }
}

/// The candidate closest to `input`, when it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let input = input.to_ascii_lowercase();
    candidates
        .iter()
        .map(|candidate| (edit_distance(&input, candidate), *candidate))
        .filter(|(distance, candidate)| {
            *distance <= (candidate.len() / 3).max(2) && *distance < candidate.len()
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// A `did you mean` suffix for an error message: `; did you mean `x`?`, or nothing.
pub(crate) fn suggestion(input: &str, candidates: &[&str]) -> String {
    did_you_mean(input, candidates)
        .map(|candidate| format!("; did you mean `{candidate}`?"))
        .unwrap_or_default()
}

/// Formats names as a list for messages: `` `a`, `b` or `c` ``.
pub(crate) fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The Levenshtein distance between two strings, over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            let insertion = current[j] + 1;
            let deletion = previous[j + 1] + 1;
            current.push(substitution.min(insertion).min(deletion));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combines_errors_in_order() {
        let mut errors = Errors::new();
        assert!(errors.is_empty());
        errors.error(Span::call_site(), "first");
        errors.push(syn::Error::new(Span::call_site(), "second"));
        let mut more = Errors::new();
        more.error(Span::call_site(), "third");
        errors.extend(more);
        assert_eq!(errors.messages(), ["first", "second", "third"]);
        let tokens = errors.into_compile_errors().to_string();
        assert_eq!(tokens.matches("compile_error").count(), 3);
    }

    #[test]
    fn suggests_close_names_only() {
        let kinds = ["compensatable", "pivot", "retriable"];
        assert_eq!(did_you_mean("retryable", &kinds), Some("retriable"));
        assert_eq!(did_you_mean("compensable", &kinds), Some("compensatable"));
        assert_eq!(did_you_mean("Pivot", &kinds), Some("pivot"));
        assert_eq!(did_you_mean("banana", &kinds), None);
        assert_eq!(suggestion("banana", &kinds), "");
        assert_eq!(suggestion("pivto", &kinds), "; did you mean `pivot`?");
    }

    #[test]
    fn lists_names() {
        assert_eq!(one_of(&["a"]), "`a`");
        assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
    }
}
