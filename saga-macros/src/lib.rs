//! # saga-macros
//!
//! Procedural macros for the saga framework. Use them through `saga_core` (they are
//! re-exported with its default `macros` feature); their full documentation lives there.
//!
//! - [`saga!`](macro@saga) declares a saga: a unit struct implementing `Saga`, with its
//!   ordered steps (`compensatable`, `pivot`, `retriable`) and their options. The step rules
//!   (unique names, at most one pivot, compensatable steps first, retriable steps after the
//!   pivot, compensations only on compensatable steps) are checked at compile time.
//! - [`#[derive(Command)]`](macro@Command) implements `Command` from
//!   `#[command(channel = "...", reply = ReplyType)]` (and an optional
//!   `type_name = "..."`).
//! - [`#[derive(Reply)]`](macro@Reply) implements `Reply`: a struct is a success unless
//!   marked `#[reply(failure)]`; each variant of an enum is marked `#[success]` or
//!   `#[failure]`. A failure's reason is its `reason` field, or its name.
//! - [`#[derive(SemanticLock)]`](macro@SemanticLock) implements `SemanticLock` for an enum
//!   of record states whose locked variants are marked `#[pending]`, with an optional
//!   `#[semantic_lock(record = "...")]`.
//!
//! Generated code refers to `::saga_core::__private`, so the crate using the macros must
//! depend on `saga_core` under that name.

mod derive;
mod errors;
mod saga;

use proc_macro::TokenStream;

/// Declares a saga: a unit struct implementing `saga_core::Saga`, with ordered
/// `compensatable`, `pivot` and `retriable` steps. The reference (step kinds, every option
/// with its signature, examples) is on `saga_core::saga!`, where the examples are compiled.
#[proc_macro]
pub fn saga(input: TokenStream) -> TokenStream {
    saga::expand(input.into()).into()
}

/// Derives `saga_core::Command` from `#[command(channel = "...", reply = ReplyType)]`, with
/// an optional `type_name = "..."` (default: the type's name).
#[proc_macro_derive(Command, attributes(command))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    derive::command::expand(&input).into()
}

/// Derives `saga_core::Reply`: a struct is a success unless marked `#[reply(failure)]`; each
/// variant of an enum is marked `#[success]` or `#[failure]`. `#[reply(type_name = "...")]`
/// overrides the type name.
#[proc_macro_derive(Reply, attributes(reply, success, failure))]
pub fn derive_reply(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    derive::reply::expand(&input).into()
}

/// Derives `saga_core::SemanticLock` for an enum of record states: variants marked
/// `#[pending]` are locked; `#[semantic_lock(record = "...")]` names the record (default:
/// the enum's name without a trailing `State`). When no variant carries data it also reads
/// stored names back (`from_state_name`) and lists the states (`all`, for a non-generic enum).
#[proc_macro_derive(SemanticLock, attributes(semantic_lock, pending))]
pub fn derive_semantic_lock(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    derive::semantic_lock::expand(&input).into()
}
