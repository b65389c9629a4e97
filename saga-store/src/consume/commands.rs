//! A participant's command handling. A batch of commands is handled in one group-committed
//! transaction: one statement records them all as received (a duplicate is skipped), each
//! handler runs in the same transaction (typed as the participant asked: [`Tx`], `PgTx` or
//! `SqliteTx`), one statement queues all replies. If any handler asks for another try, or
//! anything fails, the batch is undone and its commands are handled one by one, so one bad
//! command affects only itself.
//!
//! Each handler runs inside a savepoint ([`savepoint::HANDLER`]): a refusal or a dead letter
//! rolls back to it, so the handler's own writes are undone while the command's dedup record
//! and its failure reply commit.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::join_all;
use saga_core::participant::{Dispatch, Participant};
use saga_core::ports::{DeadLetter, Delivery, ErrorSource, StoreError, source};
use saga_core::telemetry::{self, DeadLetterReason};
use saga_core::{Message, Timestamp, trace};
use tracing::Instrument as _;

use crate::consume::{Consumer, Handling, SharedTransport, Verdict};
use crate::db::backend::{Tx, TxContext};
use crate::db::group::{Finish, WriteKind};
use crate::db::savepoint::{self, Savepoint};
use crate::db::{Database, Dialect};
use crate::options::RuntimeOptions;
use crate::sql::{self, to_i64};
use crate::store;
use crate::transport::sql::SqlTransport;

/// A participant, whatever kind of transaction its handlers take.
#[async_trait]
pub(crate) trait Commands: Send + Sync {
    /// Its name (its dedup identity).
    fn name(&self) -> &str;
    /// The channel it listens on.
    fn channel(&self) -> &str;
    /// Handles one command inside `tx`.
    async fn dispatch(&self, tx: &mut Tx, message: &Message) -> Dispatch;
}

/// A participant whose handlers take a `C`.
struct Typed<C>(Participant<C>);

#[async_trait]
impl<C: TxContext> Commands for Typed<C> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn channel(&self) -> &str {
        self.0.channel()
    }

    async fn dispatch(&self, tx: &mut Tx, message: &Message) -> Dispatch {
        match C::from_tx(tx) {
            Some(context) => self.0.dispatch(context, message).await,
            None => Dispatch {
                retry: Some(source(
                    "the participant's handlers need another backend's transaction",
                )),
                ..Dispatch::default()
            },
        }
    }
}

/// `participant` erased, for the runtime; panics when its handlers need another backend
/// than `database`'s (a wiring mistake, found when the runtime is built).
pub(crate) fn erase<C: TxContext>(
    database: &Database,
    participant: Participant<C>,
) -> Arc<dyn Commands> {
    if let Some(backend) = C::BACKEND
        && backend != database.dialect()
    {
        let wanted = match backend {
            Dialect::Postgres => "PostgreSQL",
            Dialect::Sqlite => "SQLite",
        };
        panic!(
            "participant `{}` handles commands in {wanted} transactions, but its database is \
             not {wanted}; give it the portable `saga_store::Tx` to run on either",
            participant.name(),
        );
    }
    Arc::new(Typed(participant))
}

/// What handling one command did.
pub(crate) enum CommandOutcome {
    /// Handled: how ([`Dispatch::outcome`]), and the kind of dead letter it made, if any.
    Done {
        outcome: &'static str,
        dead_letter: Option<DeadLetterReason>,
    },
    Duplicate,
    Retry(ErrorSource),
}

impl CommandOutcome {
    /// Records its metrics: once its transaction committed (or, for a retry, rolled back).
    pub(crate) fn record(&self, channel: &str) {
        let outcome = match self {
            Self::Done {
                outcome,
                dead_letter,
            } => {
                if let Some(kind) = dead_letter {
                    telemetry::dead_lettered(*kind);
                }
                outcome
            }
            Self::Duplicate => "duplicate",
            Self::Retry(_) => "transient",
        };
        telemetry::message_handled(channel, outcome);
    }
}

/// Records the metrics of a consumer's failed handling of a message.
pub(crate) fn record_failure(channel: &str, error: &StoreError) {
    let outcome = match error.is_transient() {
        true => "transient",
        false => "error",
    };
    telemetry::message_handled(channel, outcome);
}

/// What running a batch of commands inside a transaction came to.
pub(crate) enum Ran {
    /// Every command was handled (or was a duplicate); the replies went to these channels.
    Handled {
        /// Each command's outcome, in order.
        outcomes: Vec<CommandOutcome>,
        /// The channels the replies went to.
        destinations: Vec<String>,
    },
    /// A handler asked for another try: undo the batch.
    Retry(ErrorSource),
}

/// Runs a batch of commands inside `tx`: one statement records them all as received (a
/// duplicate is skipped), each handler runs (in a `process <channel>` span of messaging
/// system `system`, inside a [`savepoint::HANDLER`] savepoint), one statement queues all
/// replies — into the outbox, or in place straight into `queue`.
pub(crate) async fn run_in(
    tx: &mut Tx,
    participant: &dyn Commands,
    batch: &[Message],
    queue: Option<&SqlTransport>,
    system: &'static str,
) -> Result<Ran, StoreError> {
    let now = Timestamp::now();
    let at = to_i64(now.as_millis());
    let ids: Vec<_> = batch.iter().map(|m| m.id).collect();
    let mut savepoint = Savepoint::new(&savepoint::HANDLER);
    // The first handler's savepoint is taken with the dedup records (after them).
    let glued = savepoint.take_glued(tx);
    let mut fresh =
        sql::received::insert_fresh(tx.conn(), participant.name(), &ids, at, glued).await?;
    let mut untouched = true;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut replies = Vec::new();
    let mut dead_letters = Vec::new();
    for message in batch {
        // `remove`: a message twice in one batch runs once.
        if !fresh.remove(&message.id) {
            outcomes.push(CommandOutcome::Duplicate);
            continue;
        }
        telemetry::message_taken(message, now);
        // A savepoint nothing was written after yet serves as this handler's.
        if !std::mem::take(&mut untouched) {
            savepoint.take(tx).await?;
        }
        let span = trace::process_span(system, message, None);
        let dispatch = participant
            .dispatch(tx, message)
            .instrument(span.clone())
            .await;
        let outcome = dispatch.outcome();
        trace::record_handled(&span, outcome);
        if let Some(error) = dispatch.retry {
            return Ok(Ran::Retry(error));
        }
        if dispatch.undo_writes {
            savepoint.undo(tx).await?;
        }
        let dead_letter = dispatch.dead_letter_kind;
        replies.extend(dispatch.reply);
        dead_letters.extend(dispatch.dead_letter.map(|reason| DeadLetter {
            consumer: participant.name().to_owned(),
            message: message.clone(),
            reason,
            at: now,
        }));
        outcomes.push(CommandOutcome::Done {
            outcome,
            dead_letter,
        });
    }
    let glued = savepoint.release_glued(tx);
    let replies: Vec<&Message> = replies.iter().collect();
    store::send(tx.conn(), queue, glued, &replies, at).await?;
    for dead in &dead_letters {
        sql::dead_letters::insert(tx.conn(), dead).await?;
    }
    let destinations = store::destinations(replies.into_iter());
    Ok(Ran::Handled {
        outcomes,
        destinations,
    })
}

/// The kind of group-committed work that handles commands.
fn kind(queue: Option<&SqlTransport>) -> WriteKind {
    match queue {
        Some(_) => WriteKind::Plain,
        None => WriteKind::Outbox,
    }
}

/// Handles one command in one (group-committed) transaction: dedup record, the handler's own
/// writes, the reply and any dead letter.
async fn handle_one(
    database: &Database,
    participant: Arc<dyn Commands>,
    message: Message,
    queue: Option<SqlTransport>,
    system: &'static str,
) -> Result<CommandOutcome, StoreError> {
    let channel = participant.channel().to_owned();
    let queue_in_tx = queue.clone();
    let written = database
        .write_as(kind(queue.as_ref()), move |tx: &mut Tx| {
            Box::pin(async move {
                let ran = run_in(
                    tx,
                    participant.as_ref(),
                    std::slice::from_ref(&message),
                    queue_in_tx.as_ref(),
                    system,
                )
                .await?;
                Ok(match ran {
                    Ran::Handled {
                        mut outcomes,
                        destinations,
                    } => match outcomes.pop() {
                        Some(done @ CommandOutcome::Done { .. }) => {
                            Finish::Commit((done, destinations))
                        }
                        // A duplicate: nothing was written.
                        _ => Finish::Rollback((CommandOutcome::Duplicate, Vec::new())),
                    },
                    Ran::Retry(error) => {
                        Finish::Rollback((CommandOutcome::Retry(error), Vec::new()))
                    }
                })
            })
        })
        .await;
    let (handled, destinations) = match written {
        Ok(written) => written,
        Err(err) => {
            record_failure(&channel, &err);
            return Err(err);
        }
    };
    handled.record(&channel);
    if let Some(queue) = &queue {
        queue.wake_channels(&destinations);
    }
    Ok(handled)
}

/// Handles a batch of commands in one transaction where it can (see the module docs).
async fn handle_batch(
    database: &Database,
    participant: &Arc<dyn Commands>,
    messages: Vec<Message>,
    queue: Option<&SqlTransport>,
    system: &'static str,
) -> Vec<Result<CommandOutcome, StoreError>> {
    if messages.len() > 1 {
        let batch = messages.clone();
        let in_tx = participant.clone();
        let queue_in_tx = queue.cloned();
        let batched = database
            .write_as(kind(queue), move |tx: &mut Tx| {
                Box::pin(async move {
                    let queue = queue_in_tx.as_ref();
                    Ok(
                        match run_in(tx, in_tx.as_ref(), &batch, queue, system).await? {
                            Ran::Handled {
                                outcomes,
                                destinations,
                            } => Finish::Commit(Some((outcomes, destinations))),
                            Ran::Retry(_) => Finish::Rollback(None),
                        },
                    )
                })
            })
            .await;
        match batched {
            Ok(Some((outcomes, destinations))) => {
                if let Some(queue) = queue {
                    queue.wake_channels(&destinations);
                }
                for outcome in &outcomes {
                    outcome.record(participant.channel());
                }
                return outcomes.into_iter().map(Ok).collect();
            }
            Ok(None) => {
                tracing::debug!("a command asked for another try; handling the batch one by one")
            }
            Err(err) => tracing::debug!(error = %err, "batch failed; handling it one by one"),
        }
    }
    // One by one, concurrently, so their transactions still share group commits.
    join_all(messages.into_iter().map(|message| {
        handle_one(
            database,
            participant.clone(),
            message,
            queue.cloned(),
            system,
        )
    }))
    .await
}

/// A participant's leased command consumer; its replies go into `queue` in place, if given,
/// else into the outbox.
pub(crate) fn consumer(
    database: Database,
    participant: Arc<dyn Commands>,
    transport: SharedTransport,
    options: Arc<RuntimeOptions>,
    queue: Option<SqlTransport>,
) -> Consumer<impl FnMut(Vec<Delivery>) -> Handling> {
    let channel = participant.channel().to_owned();
    let group = participant.name().to_owned();
    let system = transport.system();
    Consumer::new(
        channel,
        group,
        transport,
        options,
        move |deliveries| -> Handling {
            let (database, participant) = (database.clone(), participant.clone());
            let queue = queue.clone();
            Box::pin(async move {
                let messages = deliveries.iter().map(|d| d.message.clone()).collect();
                let results =
                    handle_batch(&database, &participant, messages, queue.as_ref(), system).await;
                deliveries
                    .into_iter()
                    .zip(results)
                    .map(|(delivery, result)| {
                        let verdict = match result {
                            Ok(CommandOutcome::Done { .. } | CommandOutcome::Duplicate) => {
                                Verdict::Done
                            }
                            Ok(CommandOutcome::Retry(error)) => Verdict::Retry(error),
                            Err(err) => Verdict::Failed(err),
                        };
                        (delivery, verdict)
                    })
                    .collect()
            })
        },
    )
}
