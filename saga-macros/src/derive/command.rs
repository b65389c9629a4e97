//! `#[derive(Command)]`: implements `Command` from
//! `#[command(channel = "...", reply = ReplyType, type_name = "...")]`, or for a one-way
//! command `#[command(channel = "...", notification)]` (its reply type is `NoReply`).

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::{DeriveInput, LitStr, Type};

use super::{named, set_once, string_value};
use crate::errors::Errors;

/// The `#[command(...)]` settings.
#[derive(Default)]
struct CommandArgs {
    /// The participant's channel.
    channel: Option<LitStr>,
    /// The reply type.
    reply: Option<Type>,
    /// The stable type name, when not the ident.
    type_name: Option<LitStr>,
    /// `notification`: a one-way command, answered by nothing.
    notification: Option<syn::Path>,
}

/// Expands `#[derive(Command)]`.
pub(crate) fn expand(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::new();
    let args = parse_args(input, &mut errors);
    let ident = &input.ident;

    let generic = !input.generics.params.is_empty();
    if generic {
        errors.push(syn::Error::new_spanned(
            &input.generics,
            "generic commands are not supported: a command's type name, channel and reply \
             type are fixed per type",
        ));
    }
    if let (Some(marker), Some(reply)) = (&args.notification, &args.reply) {
        errors.push(syn::Error::new_spanned(
            marker,
            format!(
                "command `{ident}` is a `notification` and has `reply = {}`; a notification \
                 gets no reply: keep one of the two",
                quote!(#reply)
            ),
        ));
    }
    let reply = match (&args.reply, &args.notification) {
        (Some(reply), _) => Some(quote!(#reply)),
        (None, Some(_)) => Some(quote!(::saga_core::__private::NoReply)),
        (None, None) => None,
    };
    match (&args.channel, &reply) {
        (Some(_), Some(_)) => {}
        (None, None) => errors.error(
            ident.span(),
            format!(
                "missing `#[command(channel = \"...\", reply = ReplyType)]` on `{ident}`: a \
                 command names the channel its participant listens on and the reply type it \
                 answers with (or `notification` for a one-way command)"
            ),
        ),
        (None, Some(_)) => errors.error(
            ident.span(),
            format!(
                "missing `channel` for command `{ident}`: add `channel = \"...\"` (the channel \
                 its participant listens on) to `#[command(...)]`"
            ),
        ),
        (Some(_), None) => errors.error(
            ident.span(),
            format!(
                "missing `reply` for command `{ident}`: add `reply = ReplyType` (the reply its \
                 participant answers with) to `#[command(...)]`, or `notification` if nothing \
                 answers it"
            ),
        ),
    }

    let mut output = TokenStream::new();
    if let (false, Some(reply)) = (generic, &reply) {
        let type_name = args
            .type_name
            .unwrap_or_else(|| LitStr::new(&ident.unraw().to_string(), ident.span()));
        let channel = args
            .channel
            .unwrap_or_else(|| LitStr::new("", ident.span()));
        let where_clause = &input.generics.where_clause;
        output.extend(quote! {
            #[automatically_derived]
            impl ::saga_core::__private::Command for #ident #where_clause {
                const TYPE: &'static str = #type_name;
                const CHANNEL: &'static str = #channel;
                type Reply = #reply;
            }
        });
    }
    output.extend(errors.into_compile_errors());
    output
}

/// Reads every `#[command(...)]` attribute.
fn parse_args(input: &DeriveInput, errors: &mut Errors) -> CommandArgs {
    let mut args = CommandArgs::default();
    for attr in named(&input.attrs, "command") {
        let mut inner = Errors::new();
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("channel") {
                string_value(&meta, "channel", &mut args.channel, &mut inner)
            } else if meta.path.is_ident("type_name") {
                string_value(&meta, "type_name", &mut args.type_name, &mut inner)
            } else if meta.path.is_ident("notification") {
                if args.notification.is_some() {
                    inner.push(meta.error("duplicate `notification`"));
                }
                args.notification = Some(meta.path.clone());
                Ok(())
            } else if meta.path.is_ident("reply") {
                let reply: Type = meta.value()?.parse()?;
                set_once(&meta, "reply", &mut args.reply, reply, &mut inner);
                Ok(())
            } else {
                Err(meta.error(
                    "unknown `command` setting; expected `channel = \"...\"`, \
                     `reply = ReplyType`, `notification` or `type_name = \"...\"`",
                ))
            }
        });
        errors.extend(inner);
        errors.ok(result);
    }
    args
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
    fn implements_command() {
        let code = expand_str(
            r#"#[command(channel = "kitchenService", reply = CreateTicketReply)]
               struct CreateTicket { id: u64 }"#,
        );
        assert_eq!(
            code,
            quote! {
                #[automatically_derived]
                impl ::saga_core::__private::Command for CreateTicket {
                    const TYPE: &'static str = "CreateTicket";
                    const CHANNEL: &'static str = "kitchenService";
                    type Reply = CreateTicketReply;
                }
            }
            .to_string()
        );
    }

    #[test]
    fn accepts_a_type_name_and_split_attributes() {
        let code = expand_str(
            r#"#[command(channel = "kitchen", type_name = "kitchen.CreateTicket")]
               #[command(reply = replies::Reply<u8>)]
               enum CreateTicket { A }"#,
        );
        assert!(code.contains("const TYPE : & 'static str = \"kitchen.CreateTicket\""));
        assert!(
            code.contains("type Reply = replies :: Reply < u8 >"),
            "{code}"
        );
        assert!(compile_errors(&code).is_empty(), "{code}");
    }

    #[test]
    fn reports_missing_settings() {
        let code = expand_str("struct C;");
        assert!(code.contains("missing `#[command(channel"), "{code}");
        assert!(!code.contains("impl"), "{code}");

        let code = expand_str("#[command(reply = R)] struct C;");
        assert!(code.contains("missing `channel` for command `C`"), "{code}");
        assert!(code.contains("impl"), "still emits the impl: {code}");

        let code = expand_str(r#"#[command(channel = "c")] struct C;"#);
        assert!(code.contains("missing `reply` for command `C`"), "{code}");
    }

    #[test]
    fn reports_bad_settings() {
        let code = expand_str(
            r#"#[command(channel = "", reply = R, channel = "x")]
               #[command(chanel = "x")]
               struct C;"#,
        );
        let errors = compile_errors(&code);
        assert_eq!(errors.len(), 3, "{code}");
        assert!(errors[0].contains("`channel` must not be empty"), "{code}");
        assert!(errors[1].contains("duplicate `channel`"), "{code}");
        assert!(errors[2].contains("unknown `command` setting"), "{code}");
    }

    #[test]
    fn a_notification_has_no_reply() {
        let code = expand_str(r#"#[command(channel = "emails", notification)] struct Email;"#);
        assert!(
            code.contains("type Reply = :: saga_core :: __private :: NoReply"),
            "{code}"
        );
        assert!(compile_errors(&code).is_empty(), "{code}");
        let code =
            expand_str(r#"#[command(channel = "emails", notification, reply = R)] struct E;"#);
        let errors = compile_errors(&code);
        assert_eq!(errors.len(), 1, "{code}");
        assert!(
            errors[0].contains("is a `notification` and has `reply = R`"),
            "{code}"
        );
    }

    #[test]
    fn rejects_generics() {
        let code = expand_str(r#"#[command(channel = "c", reply = R)] struct C<T>(T);"#);
        assert!(
            code.contains("generic commands are not supported"),
            "{code}"
        );
        assert!(!code.contains("impl"), "{code}");
    }
}
