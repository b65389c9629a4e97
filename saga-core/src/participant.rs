//! Participants: services that handle a saga's commands and reply.
//!
//! A [`Participant`] maps command types to handlers. [`Participant::dispatch`] decodes a
//! command message, runs its handler against the participant's context (its state, or its
//! database transaction), and builds the reply. A refusal becomes a well-formed failure
//! reply, and what the handler wrote is undone unless it asked to keep it
//! ([`HandlerError::refused_keeping_writes`]); a transient error asks for redelivery; a
//! message that cannot be understood is dead-lettered with the reason, and when it names a
//! reply channel the saga also gets a failure reply, so it never waits forever.
//!
//! Handlers are registered three ways: a type implementing [`CommandHandler`]
//! ([`Participant::handle`]), an async closure ([`Participant::handle_async`]), or a
//! synchronous closure ([`Participant::handle_fn`]).

use std::collections::HashMap;
use std::marker::PhantomData;

use async_trait::async_trait;

use crate::ids::Timestamp;
use crate::message::{
    Command, CommandFailed, CommandMeta, InvalidName, Message, MessageError, Reply, ReplyOutcome,
    encode_payload, failure_reply_for, headers, validate_channel,
};
use crate::ports::{ErrorSource, source};
use crate::telemetry::DeadLetterReason;

/// Why a handler did not produce a reply.
///
/// `?` turns any error into a transient failure (an `sqlx::Error`, your own error types):
/// nothing the handler wrote is kept and the command is tried again. A business refusal is a
/// [`CommandFailed`] — `Err(CommandFailed::new("…"))?` or [`HandlerError::refused`] — and
/// becomes a failure reply; the handler's own writes are rolled back (to a savepoint taken
/// before it ran) while the command's dedup record and the failure reply commit. To keep
/// them, refuse with [`HandlerError::refused_keeping_writes`] (say, to record the rejected
/// request). `HandlerError` deliberately does not implement `std::error::Error`, which is
/// what lets both conversions exist side by side.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandlerError {
    /// The command is refused for a business reason: the saga gets a failure reply and the
    /// handler's writes are undone.
    Refused(CommandFailed),
    /// Refused like [`Refused`](Self::Refused), but what the handler wrote commits with the
    /// failure reply.
    RefusedKeepingWrites(CommandFailed),
    /// Something transient went wrong (a database error, a lost connection): nothing is
    /// committed and the command is tried again later.
    Transient(ErrorSource),
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(failed) | Self::RefusedKeepingWrites(failed) => {
                write!(f, "refused: {failed}")
            }
            Self::Transient(error) => write!(f, "transient failure: {error}"),
        }
    }
}

impl From<CommandFailed> for HandlerError {
    fn from(failed: CommandFailed) -> Self {
        Self::Refused(failed)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::Transient(crate::error::ErrorSource::new(error))
    }
}

impl HandlerError {
    /// A business refusal with `reason`; the handler's writes are undone.
    pub fn refused(reason: impl Into<String>) -> Self {
        Self::Refused(CommandFailed::new(reason))
    }

    /// A business refusal with `reason` that keeps what the handler wrote.
    pub fn refused_keeping_writes(reason: impl Into<String>) -> Self {
        Self::RefusedKeepingWrites(CommandFailed::new(reason))
    }

    /// A transient failure caused by `error`; the command is tried again.
    pub fn transient(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::Transient(source(error))
    }
}

/// Handles one command type for a participant whose context is `Ctx` (its state, or its
/// database transaction).
#[async_trait]
pub trait CommandHandler<C: Command, Ctx: Send>: Send + Sync {
    /// Handles `command`. `Err(Refused)` becomes a failure reply (and undoes the handler's
    /// writes); `Err(Transient)` rolls back and has the command delivered again.
    async fn handle(
        &self,
        ctx: &mut Ctx,
        command: C,
        meta: &CommandMeta,
    ) -> Result<C::Reply, HandlerError>;
}

/// What dispatching one message produced.
#[derive(Clone, Debug, Default)]
pub struct Dispatch {
    /// The reply to send, if the command expects one.
    pub reply: Option<Message>,
    /// Why the message was set aside, if it was.
    pub dead_letter: Option<String>,
    /// What kind of reason that is, for metrics.
    pub dead_letter_kind: Option<DeadLetterReason>,
    /// A transient failure: commit nothing and have the message delivered again.
    pub retry: Option<ErrorSource>,
    /// Undo what the handler wrote, but keep the rest (the dedup record, the reply, the dead
    /// letter): set for a refusal and for a dead letter.
    pub undo_writes: bool,
}

impl Dispatch {
    /// What the handling came to, as a metric label and span `error.type`: `ok`, `refused`
    /// (a failure reply), `dead_letter` or `transient`.
    pub fn outcome(&self) -> &'static str {
        if self.retry.is_some() {
            "transient"
        } else if self.dead_letter.is_some() {
            "dead_letter"
        } else if self.reply.as_ref().is_some_and(|reply| {
            reply.headers.get(headers::REPLY_OUTCOME) == Some(ReplyOutcome::Failure.as_str())
        }) {
            "refused"
        } else {
            "ok"
        }
    }

    fn retry(error: ErrorSource) -> Self {
        Self {
            retry: Some(error),
            ..Self::default()
        }
    }
}

#[async_trait]
trait ErasedHandler<Ctx: Send>: Send + Sync {
    async fn call(
        &self,
        ctx: &mut Ctx,
        message: &Message,
        meta: &CommandMeta,
    ) -> Result<Dispatch, MessageError>;
}

struct Typed<C, H>(H, PhantomData<fn() -> C>);

#[async_trait]
impl<C, Ctx, H> ErasedHandler<Ctx> for Typed<C, H>
where
    C: Command,
    Ctx: Send,
    H: CommandHandler<C, Ctx>,
{
    async fn call(
        &self,
        ctx: &mut Ctx,
        message: &Message,
        meta: &CommandMeta,
    ) -> Result<Dispatch, MessageError> {
        let command: C = message.decode()?;
        let (reply, undo_writes) = match self.0.handle(ctx, command, meta).await {
            Ok(reply) => {
                let payload = encode_payload(<C::Reply as Reply>::TYPE, &reply)?;
                let reply = meta.reply_message(<C::Reply as Reply>::TYPE, reply.outcome(), payload);
                (reply, false)
            }
            Err(HandlerError::Refused(failure)) => {
                tracing::info!(command = C::TYPE, reason = %failure.reason, "command refused");
                (failure_reply(meta, &failure)?, true)
            }
            Err(HandlerError::RefusedKeepingWrites(failure)) => {
                tracing::info!(command = C::TYPE, reason = %failure.reason, "command refused; its writes are kept");
                (failure_reply(meta, &failure)?, false)
            }
            Err(HandlerError::Transient(error)) => {
                tracing::warn!(command = C::TYPE, %error, "command failed transiently; will be tried again");
                return Ok(Dispatch::retry(error));
            }
        };
        Ok(Dispatch {
            reply,
            undo_writes,
            ..Dispatch::default()
        })
    }
}

fn failure_reply(
    meta: &CommandMeta,
    failure: &CommandFailed,
) -> Result<Option<Message>, MessageError> {
    let payload = encode_payload(CommandFailed::TYPE, failure)?;
    Ok(meta.reply_message(CommandFailed::TYPE, ReplyOutcome::Failure, payload))
}

/// A synchronous closure used as a handler.
struct FnHandler<F>(F);

#[async_trait]
impl<C, Ctx, F> CommandHandler<C, Ctx> for FnHandler<F>
where
    C: Command,
    Ctx: Send,
    F: Fn(&mut Ctx, C, &CommandMeta) -> Result<C::Reply, CommandFailed> + Send + Sync,
{
    async fn handle(
        &self,
        ctx: &mut Ctx,
        command: C,
        meta: &CommandMeta,
    ) -> Result<C::Reply, HandlerError> {
        (self.0)(ctx, command, meta).map_err(HandlerError::Refused)
    }
}

/// The future an async closure handler returns: it borrows the context and the metadata.
pub type HandlerFuture<'a, R> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<R, HandlerError>> + Send + 'a>>;

/// An async closure used as a handler.
struct AsyncFnHandler<F>(F);

#[async_trait]
impl<C, Ctx, F> CommandHandler<C, Ctx> for AsyncFnHandler<F>
where
    C: Command,
    Ctx: Send,
    F: for<'a> Fn(&'a mut Ctx, C, &'a CommandMeta) -> HandlerFuture<'a, C::Reply> + Send + Sync,
{
    async fn handle(
        &self,
        ctx: &mut Ctx,
        command: C,
        meta: &CommandMeta,
    ) -> Result<C::Reply, HandlerError> {
        (self.0)(ctx, command, meta).await
    }
}

/// A participant: a name, the channel it listens on, and a handler per command type.
pub struct Participant<Ctx> {
    name: String,
    channel: String,
    handlers: HashMap<&'static str, Box<dyn ErasedHandler<Ctx>>>,
}

impl<Ctx> std::fmt::Debug for Participant<Ctx> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut commands: Vec<&&str> = self.handlers.keys().collect();
        commands.sort();
        f.debug_struct("Participant")
            .field("name", &self.name)
            .field("channel", &self.channel)
            .field("commands", &commands)
            .finish()
    }
}

impl<Ctx: Send + 'static> Participant<Ctx> {
    /// A participant named `name` (its dedup identity) listening on `channel`.
    ///
    /// # Panics
    ///
    /// If `channel` is not a valid channel name (see [`validate_channel`]); use
    /// [`Participant::try_new`] for a name that comes from configuration.
    pub fn new(name: impl Into<String>, channel: impl Into<String>) -> Self {
        match Self::try_new(name, channel) {
            Ok(participant) => participant,
            Err(err) => panic!("{err}"),
        }
    }

    /// A participant named `name` listening on `channel`, or why `channel` cannot be used.
    pub fn try_new(
        name: impl Into<String>,
        channel: impl Into<String>,
    ) -> Result<Self, InvalidName> {
        let channel = channel.into();
        validate_channel(&channel)?;
        Ok(Self {
            name: name.into(),
            channel,
            handlers: HashMap::new(),
        })
    }

    /// The participant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The channel it listens on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Registers an async handler for command `C`.
    pub fn handle<C: Command>(mut self, handler: impl CommandHandler<C, Ctx> + 'static) -> Self {
        self.handlers
            .insert(C::TYPE, Box::new(Typed::<C, _>(handler, PhantomData)));
        self
    }

    /// Registers an async closure as the handler for command `C`: it gets the context (for a
    /// database participant, its transaction), the command and its metadata, and returns its
    /// body boxed — `|tx, cmd, meta| Box::pin(async move { … })`. Inside, `?` works on
    /// `sqlx::Error` and your own errors (transient) and on [`CommandFailed`] (a refusal).
    ///
    /// ```
    /// # use saga_core::participant::{HandlerError, Participant};
    /// # use saga_core::{Command, Reply};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Serialize, Deserialize, Command)]
    /// #[command(channel = "stock", reply = Reserved)]
    /// struct Reserve { sku: String, quantity: u32 }
    ///
    /// #[derive(Serialize, Deserialize, Reply)]
    /// struct Reserved;
    ///
    /// /// In-memory stock, for the example; a database participant gets its transaction.
    /// struct Stock { on_hand: u32 }
    ///
    /// let participant = Participant::new("stock", "stock").handle_async::<Reserve>(
    ///     |stock: &mut Stock, cmd, _meta| {
    ///         Box::pin(async move {
    ///             if cmd.quantity > stock.on_hand {
    ///                 return Err(HandlerError::refused(format!("only {} of {}", stock.on_hand, cmd.sku)));
    ///             }
    ///             stock.on_hand -= cmd.quantity;
    ///             Ok(Reserved)
    ///         })
    ///     },
    /// );
    /// assert!(participant.handles("Reserve"));
    /// ```
    pub fn handle_async<C: Command>(
        self,
        handler: impl for<'a> Fn(&'a mut Ctx, C, &'a CommandMeta) -> HandlerFuture<'a, C::Reply>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.handle::<C>(AsyncFnHandler(handler))
    }

    /// Registers a synchronous closure as the handler for command `C`.
    pub fn handle_fn<C: Command>(
        self,
        handler: impl Fn(&mut Ctx, C, &CommandMeta) -> Result<C::Reply, CommandFailed>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.handle::<C>(FnHandler(handler))
    }

    /// Whether a handler for `command_type` is registered.
    pub fn handles(&self, command_type: &str) -> bool {
        self.handlers.contains_key(command_type)
    }

    /// Decodes and handles one command message, now.
    pub async fn dispatch(&self, ctx: &mut Ctx, message: &Message) -> Dispatch {
        self.dispatch_at(ctx, message, Timestamp::now()).await
    }

    /// Decodes and handles one command message at time `now`. A command whose saga stopped
    /// waiting before `now` (its `saga-deadline` passed) is neither run nor answered: it is
    /// only recorded as received.
    pub async fn dispatch_at(&self, ctx: &mut Ctx, message: &Message, now: Timestamp) -> Dispatch {
        let meta = match CommandMeta::from_message(message) {
            Ok(meta) => meta,
            Err(err) => {
                let reason = format!("unusable command: {err}");
                return self.reject(message, None, DeadLetterReason::Unusable, reason);
            }
        };
        if meta.expired_at(now) {
            let reason = format!(
                "command {} expired: the saga stopped waiting at {}",
                meta.message_id,
                meta.deadline.map_or(0, Timestamp::as_millis)
            );
            // No answer: the saga has moved on (resent with the same request id, failed the
            // step, or parked), and an answer could only be mistaken for the new send's.
            tracing::info!(participant = %self.name, message_id = %message.id, %reason, "command not run");
            return Dispatch::default();
        }
        let Some(handler) = self.handlers.get(meta.command_type.as_str()) else {
            let reason = format!(
                "participant `{}` has no handler for command type `{}`",
                self.name, meta.command_type
            );
            return self.reject(message, Some(&meta), DeadLetterReason::NoHandler, reason);
        };
        match handler.call(ctx, message, &meta).await {
            Ok(dispatch) => dispatch,
            Err(err) => {
                let reason = err.to_string();
                self.reject(message, Some(&meta), DeadLetterReason::Unusable, reason)
            }
        }
    }

    fn reject(
        &self,
        message: &Message,
        meta: Option<&CommandMeta>,
        kind: DeadLetterReason,
        reason: String,
    ) -> Dispatch {
        tracing::warn!(
            participant = %self.name,
            message_id = %message.id,
            message_type = message.headers.get(headers::MESSAGE_TYPE).unwrap_or("?"),
            %reason,
            "command dead-lettered"
        );
        let reply = meta.and_then(|_| failure_reply_for(message, &format!("rejected: {reason}")));
        Dispatch {
            reply,
            dead_letter: Some(reason),
            dead_letter_kind: Some(kind),
            retry: None,
            undo_writes: true,
        }
    }
}
